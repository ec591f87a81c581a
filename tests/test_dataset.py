"""pipeline.cache, pipeline.dataset, pipeline.prepare: cache build (hash, resume, workers, timeout),
Dataset batches, prepare_*."""
import json
import multiprocessing
import time

import numpy as np
import pytest

import pipeline.cache as C
import pipeline.prepare as P
from audio_fixtures import sine, text_as_mp3, write_wav, zero_byte
from pipeline.clips import track_clip, track_images
from pipeline.dataset import Dataset
from pipeline.errors import PipelineError
from pipeline.spectrogram import SpectrogramConfig, colormap_lut, quantize
from pipeline.windows import Windows, window_starts

CFG = SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=256, hop_length=64)
WC = CFG.columns(12000)  # columns of a 1.5 s test clip's image (237; a 1 s window is 159)
C0 = (WC - CFG.width) // 2  # first column of the centre window
HAS_FORK = "fork" in multiprocessing.get_all_start_methods()


def _items(tmp_path, n=12, bad=()):
    """n tiny wav tracks (2 classes), with the indices in ``bad`` replaced by broken files."""
    items = []
    for i in range(n):
        p = tmp_path / f"t{i:02d}.wav"
        if i in bad:
            (zero_byte if i % 2 else text_as_mp3)(p)
        else:
            write_wav(p, sine(1.5, 8000, 200.0 + 150 * i), 8000)
        items.append({"path": str(p), "key": i, "label": i % 2, "split": ("train", "val", "test")[i % 3],
                      "id": f"t{i}"})
    return items


def test_build_and_read_back(tmp_path):
    items = _items(tmp_path, bad=(5,))
    m = C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], seed=0, workers=0, progress=False)
    assert m["status_counts"] == {"ok": 11, "padded": 0, "skipped": 1}
    assert m["tracks"][5]["status"] == "skipped" and "t05.wav" in m["tracks"][5]["reason"]
    ds = Dataset(tmp_path / "ds")
    assert WC == 237
    assert isinstance(ds.images, np.memmap) and ds.images.shape == (11, 102, WC) and ds.images.dtype == np.uint8
    assert ds.widths.tolist() == [WC] * 11 and ds.keys.tolist() == [i for i in range(12) if i != 5]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [i % 2 for i in range(12) if i != 5]
    assert ds.ids.tolist() == [f"t{i}" for i in range(12) if i != 5]
    # stored rows are exactly the quantised mono images of the whole clip (the cached half of the chain)
    img, info = track_clip(items[3]["path"], CFG)
    assert img.shape == (102, WC) and info["columns"] == WC and info["status"] == "ok"
    np.testing.assert_array_equal(ds.images[3], quantize(img))
    assert not (tmp_path / "ds" / "work").exists()
    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert on_disk["param_hash"] == m["param_hash"] and on_disk["config"]["n_fft"] == 256


def test_batches_mono_rgb_shuffle(tmp_path):
    C.build_cache(tmp_path / "ds", _items(tmp_path), CFG, ["a", "b"], workers=0, progress=False)
    ds = Dataset(tmp_path / "ds")
    assert ds.n_channels("mono") == 1 and ds.n_channels("rgb") == 3 and ds.image_shape("rgb") == (3, 102, 159)
    train = ds.indices("train")
    seen = []
    for x, y in ds.batches("train", batch_size=3, shuffle=True, seed=5, mode="mono"):
        assert x.dtype == np.float32 and x.shape[1:] == (1, 102, 159) and y.dtype == np.int64
        seen.append((x, y))
    xs = np.concatenate([x for x, _ in seen])
    ys = np.concatenate([y for _, y in seen])
    order = train[np.random.default_rng(5).permutation(len(train))]
    # no windows given: the centre window of each clip
    np.testing.assert_array_equal(xs[:, 0], ds.images[order][:, :, C0:C0 + 159].astype(np.float32)
                                  * np.float32(1 / 255))
    np.testing.assert_array_equal(ys, ds.labels[order])
    again = list(ds.batches("train", 3, True, 5, "mono"))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(seen, again))
    x_rgb, _ = next(iter(ds.batches("val", 4, shuffle=False, mode="rgb")))
    assert x_rgb.shape == (len(ds.indices("val")), 3, 102, 159)
    np.testing.assert_array_equal(x_rgb, colormap_lut("viridis")[ds.images[ds.indices("val")][:, :, C0:C0 + 159]]
                                  .transpose(0, 3, 1, 2))
    assert len(list(ds.batches("train", 3, drop_last=True))) == len(train) // 3
    gen = ds.batches("train", 1)
    next(gen)
    gen.close()  # an abandoned epoch
    with pytest.raises(PipelineError, match="mode"):
        next(ds.batches("train", 2, mode="grey"))


@pytest.mark.parametrize("mode", ["rgb", "mono"])
def test_cached_row_is_the_mono_image_of_the_chain(tmp_path, mode):
    """Issue 8 (a): built in rgb or mono mode, every row is the chain's mono image to 1/255, and an
    rgb batch is the colormap applied once to it (format 1 stored red(viridis(x)))."""
    items = _items(tmp_path, n=6)
    cfg = SpectrogramConfig(**{**CFG.to_dict(), "mode": mode})
    C.build_cache(tmp_path / "ds", items, cfg, ["a", "b"], seed=3, workers=0, progress=False)
    ds = Dataset(tmp_path / "ds")
    rows = np.arange(len(ds))
    x_rgb = ds.decode(rows, "rgb")
    x_mono = ds.decode(rows, "mono")
    for i, it in enumerate(items):
        mono, _ = track_clip(it["path"], CFG)
        assert mono.dtype == np.float32 and mono.shape == (102, WC) and 0 <= mono.min() and mono.max() <= 1
        assert np.abs(ds.images[i] / 255.0 - mono).max() <= 0.5 / 255 + 1e-6
        win = mono[:, C0:C0 + 159]  # the centre window
        assert np.abs(x_mono[i, 0] - win).max() <= 0.5 / 255 + 1e-6
        np.testing.assert_array_equal(x_rgb[i], colormap_lut("viridis")[np.rint(win * 255).astype(np.uint8)]
                                      .transpose(2, 0, 1))
        img, _ = track_images(it["path"], cfg, n_crops=1)  # the whole chain in one call
        np.testing.assert_array_equal(img[0], (x_rgb if mode == "rgb" else x_mono)[i])
    assert np.ptp(ds.images) > 200  # real images, not a constant


def test_floor_norm_cache_row_batch_and_chain_agree(tmp_path):
    """norm='floor' (each row's noise floor subtracted) is in the cached half: a row is track_clip's image to
    1/255, a batch of it the same bytes as the whole chain (track_images), and the cache hash names it."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        n = int(8000 * (0.5 + 0.25 * i))  # 0.5 .. 1.75 s: padded and longer than the 1 s window
        t = np.arange(n) / 8000
        y = 0.3 * np.sin(2 * np.pi * (300 + 100 * i + 400 * t) * t) + 0.02 * rng.standard_normal(n)
        p = write_wav(tmp_path / f"c{i}.wav", y.astype(np.float32), 8000)
        items.append({"path": str(p), "key": i, "label": i % 2, "split": ("train", "val", "test")[i % 3],
                      "id": f"c{i}"})
    cfg = SpectrogramConfig(**{**CFG.to_dict(), "norm": "floor", "mode": "rgb"})
    assert C.cache_hash(items, cfg, ["a", "b"]) != C.cache_hash(items, SpectrogramConfig(
        **{**CFG.to_dict(), "mode": "rgb"}), ["a", "b"])
    C.build_cache(tmp_path / "ds", items, cfg, ["a", "b"], workers=0, progress=False)
    ds = Dataset(tmp_path / "ds")
    assert ds.config.norm == "floor"
    x = ds.decode(np.arange(len(ds)), windows=Windows("even", n=3))
    for i, it in enumerate(items):
        mono, _ = track_clip(it["path"], cfg)
        w = mono.shape[1]
        assert ds.widths[i] == w and np.abs(ds.images[i, :, :w] / 255.0 - mono).max() <= 0.5 / 255 + 1e-6
        assert ((mono == 0).mean(axis=1) >= 0.1 - 1e-9).all()  # each row's floor is level 0
        img, _ = track_images(it["path"], cfg, n_crops=3)
        np.testing.assert_array_equal(img, x[3 * i:3 * i + 3])


def test_old_format_cache_is_never_reused(tmp_path, capsys):
    """A format-1 cache (the red-channel bug) is refused by Dataset and rebuilt by prepare_folder, saying so."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(20):
        write_wav(audio / f"{i % 2}_x_{i}.wav", sine(1.0, 8000, 300.0 + 400 * (i % 2)), 8000)
    kw = dict(config=CFG, label_regex=r"^(\d)_", workers=0, progress=True)
    new = P.prepare_folder(audio, tmp_path / "cache", **kw)
    old = new.parent / "audio-0123456789ab"
    new.rename(old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PipelineError, match="format 1.*never reused.*rebuild"):
        Dataset(old)
    capsys.readouterr()
    again = P.prepare_folder(audio, tmp_path / "cache", **kw)
    assert again == new and (again / "manifest.json").is_file()
    err = capsys.readouterr().err
    assert "not reused" in err and str(old) in err and "format 1" in err
    assert Dataset(again).manifest["format_version"] == C.FORMAT_VERSION


def test_same_parameters_reuse_changed_parameters_refuse(tmp_path):
    items = _items(tmp_path, n=6)
    C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=0, progress=False)
    stamp = (tmp_path / "ds" / "images.npy").stat().st_mtime_ns
    m = C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=0, progress=False)
    assert (tmp_path / "ds" / "images.npy").stat().st_mtime_ns == stamp and m["computed_this_run"] == 6
    other = SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=512, hop_length=64)
    assert C.cache_hash(items, other, ["a", "b"]) != C.cache_hash(items, CFG, ["a", "b"])
    assert C.cache_hash(items, SpectrogramConfig(**{**CFG.to_dict(), "mode": "rgb"}), ["a", "b"]) == \
        C.cache_hash(items, CFG, ["a", "b"])  # read-time only
    with pytest.raises(PipelineError, match="other parameters"):
        C.build_cache(tmp_path / "ds", items, other, ["a", "b"], workers=0, progress=False)
    with pytest.raises(PipelineError, match="other parameters"):
        C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], seed=1, workers=0, progress=False)


def test_interrupted_build_resumes_without_recomputing(tmp_path, monkeypatch):
    items = _items(tmp_path, n=12, bad=(2,))
    assert C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=0, chunk_size=4,
                         progress=False, stop_after_chunks=2) is None
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert len(list((tmp_path / "ds" / "work" / "chunks").glob("*.json"))) == 2
    calls = []
    real = C._process_one
    monkeypatch.setattr(C, "_process_one", lambda p, *a: calls.append(p) or real(p, *a))
    m = C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=0, chunk_size=4, progress=False)
    assert m["computed_this_run"] == 4 and sorted(calls) == [it["path"] for it in items[8:]]
    assert m["tracks"][2]["status"] == "skipped"  # the status from before the interruption survives
    fresh = C.build_cache(tmp_path / "fresh", items, CFG, ["a", "b"], workers=0, progress=False)
    np.testing.assert_array_equal(Dataset(tmp_path / "ds").images, Dataset(tmp_path / "fresh").images)
    assert fresh["param_hash"] == m["param_hash"]


@pytest.mark.skipif(not HAS_FORK, reason="the patched worker needs the fork start method")
def test_workers_match_serial_and_hung_track_times_out(tmp_path, monkeypatch):
    items = _items(tmp_path, n=8, bad=(1,))
    serial = C.build_cache(tmp_path / "serial", items, CFG, ["a", "b"], workers=0, progress=False)
    real = C._process_one

    def maybe_hang(path, *a):
        if path.endswith("t06.wav"):
            time.sleep(60)  # a decoder stuck forever
        return real(path, *a)

    monkeypatch.setattr(C, "_process_one", maybe_hang)  # inherited by forked workers
    t0 = time.monotonic()
    par = C.build_cache(tmp_path / "par", items, CFG, ["a", "b"], workers=2, timeout=1.5, progress=False)
    assert time.monotonic() - t0 < 30
    assert par["tracks"][6]["status"] == "skipped" and "timeout" in par["tracks"][6]["reason"]
    assert par["tracks"][1]["status"] == "skipped"
    a, b = Dataset(tmp_path / "serial"), Dataset(tmp_path / "par")
    keep = [i for i in range(len(a)) if a.ids[i] != "t6"]
    np.testing.assert_array_equal(a.images[keep], b.images)
    assert serial["status_counts"]["ok"] == 7 and par["status_counts"]["ok"] == 6


def test_all_skipped_is_an_error(tmp_path):
    items = _items(tmp_path, n=3, bad=(0, 1, 2))
    with pytest.raises(PipelineError, match="every one of the 3 tracks"):
        C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=0, progress=False)


def test_unfinished_dataset_cannot_be_opened(tmp_path):
    with pytest.raises(PipelineError, match="manifest.json"):
        Dataset(tmp_path)


def test_prepare_folder_from_csv(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    lines = ["path,label"]
    for i in range(9):
        write_wav(audio / f"c{i}.wav", sine(0.8, 8000, 300.0 * (1 + i % 3)), 8000)
        lines.append(f"c{i}.wav,{['low', 'mid', 'high'][i % 3]}")
    (audio / "labels.csv").write_text("\n".join(lines) + "\n")
    out = P.prepare_folder(audio, tmp_path / "cache", CFG, labels_csv=audio / "labels.csv", workers=0,
                           progress=False)
    ds = Dataset(out)
    assert out.name.startswith("audio-") and ds.classes == ["high", "low", "mid"]
    assert ds.manifest["status_counts"] == {"ok": 0, "padded": 9, "skipped": 0}  # 0.8 s < 1 s crop
    for s in ("train", "val", "test"):
        assert sorted(ds.labels[ds.indices(s)].tolist()) == [0, 1, 2]
    with pytest.raises(PipelineError, match="exactly one label source"):
        P.prepare_folder(audio, tmp_path / "cache", CFG)


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.skipif(
    not HAS_FORK, reason="fd 2 inherited by a forked worker"))])
def test_decoder_messages_go_to_the_skip_reason_not_the_terminal(tmp_path, capfd, workers):
    items = _items(tmp_path, n=4)
    bad = text_as_mp3(tmp_path / "text.mp3")  # mpg123 prints "Note: Illegal Audio-MPEG-Header ..." on fd 2
    items.append({"path": str(bad), "key": 99, "label": 0, "split": "train", "id": "text"})
    m = C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=workers, progress=False)
    assert "Illegal Audio-MPEG-Header" not in capfd.readouterr().err
    rec = m["tracks"][4]
    assert rec["status"] == "skipped" and "not a recognised audio format" in rec["reason"]
    assert "decoder messages: Note: Illegal Audio-MPEG-Header" in rec["reason"]
    assert m["status_counts"] == {"ok": 4, "padded": 0, "skipped": 1}


def test_decoder_messages_join_a_too_short_skip(tmp_path, monkeypatch, capfd):
    """A track refused after decoding (too short) also carries what the decoder printed."""
    import os

    import pipeline.audio as A

    real = A._read_soundfile

    def noisy(path, offset, duration):
        os.write(2, b"[src/libmpg123/parse.c:do_readahead():1099] error: bad data\n")
        return real(path, offset, duration)

    monkeypatch.setattr(A, "_read_soundfile", noisy)
    p = write_wav(tmp_path / "short.wav", sine(0.01, 8000), 8000)  # 80 samples < n_fft = 256
    img, info = C._process_one(str(p), 1, CFG, 0)
    assert img is None and info["status"] == "skipped"
    assert info["reason"].startswith(f"no usable audio in {str(p)!r}: 80 samples")
    assert info["reason"].endswith("decoder messages: [src/libmpg123/parse.c:do_readahead():1099] error: bad data")
    assert "bad data" not in capfd.readouterr().err


def test_prepare_fma_mini_reports_faults_and_goes_on(fma_mini, tmp_path, capfd):
    out = P.prepare_fma(fma_mini / "fma_small", fma_mini / "fma_metadata" / "tracks.csv", tmp_path,
                        workers=2, progress=False)
    err = capfd.readouterr().err  # the workers inherit fd 2: libmpg123's lines must not reach it
    assert "libmpg123" not in err and "Xing" not in err and "Audio-MPEG-Header" not in err
    ds = Dataset(out)
    m = ds.manifest
    status = {t["id"]: t for t in m["tracks"]}
    assert len(status) == 58 and len(ds) == 57
    assert status["194"]["status"] == "skipped" and "000194.mp3" in status["194"]["reason"]
    assert "24 samples" in status["194"]["reason"] and "decoder messages: Warning: Xing" in status["194"]["reason"]
    assert status["190"]["status"] == "padded" and "1.200 s" in status["190"]["reason"]
    assert m["status_counts"] == {"ok": 56, "padded": 1, "skipped": 1}
    report = C.format_report(m).splitlines()
    assert len(report) == 3 and "skipped 194" in report[1] and "padded  190" in report[2]
    e1, e2 = m["bucket_edges"]
    listens = {t["id"]: t for t in m["tracks"]}
    assert e1 < e2 and ds.classes == ["low", "medium", "high"]
    np.testing.assert_allclose(m["bucket_shares"], (0.168, 0.467, 0.365), atol=0.02)
    splits_seen = set(ds.split.tolist())
    assert splits_seen == {"train", "val", "test"} and set(listens) >= set(ds.ids.tolist())
    x, y = next(iter(ds.batches("train", 8, mode="rgb")))
    assert x.shape == (8, 3, 102, 159) and 0 <= x.min() and x.max() <= 1
    again = P.prepare_fma(fma_mini / "fma_small", fma_mini / "fma_metadata" / "tracks.csv", tmp_path,
                          workers=2, progress=False)
    assert again == out
    other = P.prepare_fma(fma_mini / "fma_small", fma_mini / "fma_metadata" / "tracks.csv", tmp_path,
                          SpectrogramConfig(crop_seconds=3.0), target="genre", split="group", workers=2,
                          progress=False)
    assert other != out
    dg = Dataset(other)
    groups = {t["id"]: t["group"] for t in dg.manifest["tracks"]}
    by_split = {s: {groups[i] for i in dg.ids[dg.split == s]} for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert dg.classes == sorted(["Folk", "Rock", "International", "Hip-Hop", "Pop", "Experimental"])
    assert "bucket_edges" not in dg.manifest and len(dg) == 57


def test_prepare_fsdd_subset_speaker_disjoint(fsdd, tmp_path):
    files = [fsdd / f"{d}_{s}_{t}.wav" for d in range(10)
             for s in ("george", "jackson", "lucas", "nicolas", "yweweler") for t in (0, 1)]
    out = P.prepare_folder(fsdd, tmp_path, CFG, label_regex=r"^(\d)_", group_regex=r"^\d_([a-z]+)_",
                           split="group", files=files, workers=2, progress=False)
    ds = Dataset(out)
    assert len(ds) == 100 and ds.classes == [str(d) for d in range(10)]
    speakers = {s: {i.split("_")[1] for i in ds.ids[ds.split == s]} for s in ("train", "val", "test")}
    assert sum(len(v) for v in speakers.values()) == 5  # every speaker in exactly one split
    assert all(np.bincount(ds.labels[ds.indices(s)], minlength=10).min() == 2 * len(speakers[s])
               for s in ("train", "val", "test"))
    counts = ds.manifest["status_counts"]
    assert counts["skipped"] == 0 and counts["ok"] + counts["padded"] == 100


def test_windows_cut_at_batch_time(tmp_path):
    """Issue 8 part 2: the cache holds whole clips; training batches get a new seeded window per epoch,
    evaluation K evenly spaced ones, and predict's per-file chain gives the same pixels."""
    items = _items(tmp_path, n=6)
    short = tmp_path / "short.wav"
    write_wav(short, sine(0.5, 8000, 900.0), 8000)  # half a crop: padded, placed inside the window
    items.append({"path": str(short), "key": 99, "label": 0, "split": "train", "id": "short"})
    m = C.build_cache(tmp_path / "ds", items, CFG, ["a", "b"], workers=0, progress=False)
    assert m["tracks"][6]["status"] == "padded"
    ds = Dataset(tmp_path / "ds")
    assert ds.widths.tolist() == [WC] * 6 + [CFG.columns(4000)] and ds.widths[6] < 159
    rows = ds.indices("train")

    def epoch(e, rule="random"):
        x, _ = next(ds.batches("train", 10, shuffle=False, windows=Windows(rule, seed=1, epoch=e), levels=True))
        return x

    e0, e0b, e1 = epoch(0), epoch(0), epoch(1)
    assert e0.dtype == np.uint8 and e0.shape == (len(rows), 102, 159)
    np.testing.assert_array_equal(e0, e0b)  # a function of (seed, epoch, track): resumable
    assert not np.array_equal(e0, e1)  # a new crop each epoch
    np.testing.assert_array_equal(epoch(0, "fixed"), epoch(5, "fixed"))
    starts = window_starts(ds.widths[rows], 159, Windows("random", seed=1, epoch=0), ds.keys[rows])[:, 0]
    for i, (r, s0) in enumerate(zip(rows, starts)):
        if ds.widths[r] >= 159:
            np.testing.assert_array_equal(e0[i], ds.images[r][:, s0:s0 + 159])
        else:  # the short clip sits at offset -s0 of the window, the rest is the floor
            w = ds.widths[r]
            np.testing.assert_array_equal(e0[i][:, -s0:-s0 + w], ds.images[r][:, :w])
            assert not e0[i][:, :-s0].any() and not e0[i][:, -s0 + w:].any()
    # evaluation: 3 windows per row, consecutive, label repeated; equal to predict's chain for the file
    for mode in ("mono", "rgb"):
        x, y = next(ds.batches("val", 10, shuffle=False, mode=mode, windows=Windows("even", n=3)))
        val = ds.indices("val")
        assert x.shape == (3 * len(val), 1 if mode == "mono" else 3, 102, 159)
        np.testing.assert_array_equal(y, np.repeat(ds.labels[val], 3))
        for j, r in enumerate(val):
            cfg = SpectrogramConfig(**{**CFG.to_dict(), "mode": mode})
            imgs, _ = track_images(items[r]["path"], cfg, n_crops=3)
            np.testing.assert_array_equal(imgs, x[3 * j:3 * j + 3])
