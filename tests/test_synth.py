"""The embedded synthetic demo dataset (pipeline/synth.py): FMA layout, labels, content."""
import json

import numpy as np
import pytest

from pipeline import fma, labels, synth
from pipeline.stft import stft


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "demo"
    info = synth.generate(root, n_tracks=30, seconds=1.5, sr=22050, seed=3, workers=1, progress=False)
    return root, info


def test_layout_is_read_by_pipeline_fma(small_demo):
    root, info = small_demo
    meta = root / "fma_metadata" / "tracks.csv"
    lines = meta.read_text().splitlines()
    # FMA's three header rows: groups, column names, then the track_id row
    assert lines[0].startswith(",album,")
    assert lines[1].startswith(",listens,")
    assert lines[2].split(",")[0] == "track_id" and set(lines[2].split(",")[1:]) == {""}
    tracks = fma.load_tracks(meta, needed=list(fma.COLUMNS.values()))
    assert tracks.index.dtype.kind == "i"
    sel, report = fma.select(tracks, root / "fma_small", subset="small", needed=[fma.COLUMNS["listens"]])
    assert len(sel) == 30 and report["missing_audio"] == []
    assert len(tracks) == 33  # 3 medium/large rows without audio, as in a real fma_small download
    for tid in sel.index:
        p = fma.audio_path(root / "fma_small", tid)
        assert p.is_file() and p.suffix == ".mp3" and p.parent.name == f"{tid:06d}"[:3]
    assert set(sel[fma.COLUMNS["split"]]) == {"training", "validation", "test"}


def test_labels_follow_paper_shares_and_edges(small_demo):
    root, info = small_demo
    tracks = fma.load_tracks(root / "fma_metadata" / "tracks.csv", needed=[fma.COLUMNS["listens"]])
    sel, _ = fma.select(tracks, root / "fma_small", subset="small")
    listens = sel[fma.COLUMNS["listens"]].to_numpy(np.float64)
    by_edges, _ = labels.popularity_buckets(listens, edges=tuple(synth.BUCKET_EDGES))
    by_shares, _ = labels.popularity_buckets(listens)  # quantiles at the paper's shares
    np.testing.assert_array_equal(by_edges, by_shares)
    counts = np.bincount(by_edges, minlength=3)
    assert counts.tolist() == [5, 14, 11]  # round(30 * (0.168, 0.467, 0.365)) with the rest to medium
    assert counts.max() / counts.sum() < 0.5
    # the title records the class the audio was synthesised for: it matches the listens bucket
    titles = sel[("track", "title")].tolist()
    names = [t.split()[1] for t in titles]
    assert [synth.CLASSES.index(n) for n in names] == by_edges.tolist()


def test_decodes_and_is_deterministic(small_demo):
    import soundfile as sf

    root, info = small_demo
    p = next((root / "fma_small").rglob("*.mp3"))
    y, sr = sf.read(str(p))
    assert sr == 22050 and y.ndim == 1
    assert abs(len(y) / sr - 1.5) < 0.1
    assert 0.3 < np.abs(y).max() <= 1.0
    a = synth.synth_clip(2, seed=11, seconds=1.0)
    b = synth.synth_clip(2, seed=11, seconds=1.0)
    c = synth.synth_clip(2, seed=12, seconds=1.0)
    assert a.dtype == np.float32 and a.shape == (22050,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _centroid(y, sr=22050):
    S = np.abs(stft(y, n_fft=1024, hop_length=512)) ** 2
    f = np.linspace(0, sr / 2, S.shape[0])
    return float((f[:, None] * S).sum() / S.sum())


def test_class_follows_content():
    # brightness (spectral centroid) rises from low to high, on average over seeds
    cents = [np.mean([_centroid(synth.synth_clip(k, seed=s, seconds=3.0)) for s in range(4)]) for k in range(3)]
    assert cents[0] < cents[1] < cents[2], cents


def test_idempotent_and_bad_args(tmp_path):
    info = synth.ensure_demo(tmp_path, progress=False, n_tracks=30, seconds=1.0, seed=1)
    marker = (tmp_path / next(p.name for p in tmp_path.iterdir())) / "synth.json"
    m0 = marker.stat().st_mtime_ns
    again = synth.ensure_demo(tmp_path, progress=False, n_tracks=30, seconds=1.0, seed=1)
    assert again == info and marker.stat().st_mtime_ns == m0
    assert json.loads(marker.read_text())["n_tracks"] == 30
    with pytest.raises(ValueError, match="n_tracks"):
        synth.generate(tmp_path / "x", n_tracks=5)
    with pytest.raises(ValueError, match="label"):
        synth.synth_clip(3, seed=0)
