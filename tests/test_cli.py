"""The command line (cli.py): help, errors, evaluate / predict / inspect / gradcheck / models."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cli
import cli_args
from pipeline import sources

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "preprocess", "evaluate", "predict", "grid", "reproduce", "models", "gradcheck", "inspect")
TINY = ["--demo-tracks", "40", "--demo-seconds", "3", "--crop-seconds", "2", "--height", "32", "--width", "48"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-epoch cnn2_mono run on the tiny synthetic demo data (built through the FMA path)."""
    base = tmp_path_factory.mktemp("cli")
    out = base / "run"
    rc = cli.main(["train", "--cache-dir", str(base / "cache"), "--out", str(out), "--model", "cnn2_mono",
                   "--epochs", "2", "--batch-size", "8", "--quiet", "--workers", "1"] + TINY)
    assert rc == 0
    return out, base / "cache"


def test_help_of_every_command():
    out = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for c in COMMANDS:
        assert c in out.stdout
    for c in COMMANDS:
        with pytest.raises(SystemExit) as e:
            cli.main([c, "--help"])
        assert e.value.code == 0


def test_every_flag_has_help_and_default(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.dest == "help" or a.help == "==SUPPRESS==":
                continue
            assert a.help, f"{name} {a.option_strings} has no help"
            if a.option_strings and not isinstance(a.default, bool):
                assert "default" in a.help or p.formatter_class is not cli_args.argparse.RawDescriptionHelpFormatter, \
                    f"{name} {a.option_strings}: help does not state the default"
        fmt = p._get_formatter()
        for a in p._actions:
            if a.option_strings and a.help and a.help != "==SUPPRESS==":
                shown = fmt._get_help_string(a)  # what the help prints, before %(default)s is filled in
                assert shown.count("(default") - shown.count("%(default)") <= 1, f"{name} {a.option_strings}: the default is printed twice: {shown}"
    train = sub.choices["train"].parse_args([])
    assert (train.model, train.batch_size, train.lr, train.dropout, train.weight_decay, train.patience,
            train.device, train.epochs) == ("cnn6_rgb", 16, 5e-4, 0.4, 0.0, None, "cpu", None)
    assert cli.DEMO_EPOCHS < 100  # demo default; 100 (the paper's cap) otherwise
    pred = sub.choices["predict"].parse_args(["RUN", "a.mp3"])
    assert pred.crops is None  # None: the run's --eval-crops, as evaluate


def test_bad_dataset_path_exit_code_and_layout(tmp_path, capsys):
    rc = cli.main(["train", "--audio-dir", str(tmp_path / "nope"), "--metadata", "x.csv"])
    err = capsys.readouterr().err
    assert rc == 2 and "no such directory" in err and "fma_metadata/tracks.csv" in err
    rc = cli.main(["train", "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a dataset cache" in err and "expected dataset layouts" in err
    # malformed FMA metadata: a tracks.csv without the needed columns
    (tmp_path / "audio").mkdir()
    bad = tmp_path / "tracks.csv"
    bad.write_text(",a\n,b\ntrack_id,\n2,1\n")
    rc = cli.main(["preprocess", "--audio-dir", str(tmp_path / "audio"), "--metadata", str(bad), "--quiet",
                   "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing" in err and "expected dataset layouts" in err
    rc = cli.main(["evaluate", str(tmp_path)])
    assert rc == 2 and "not a run directory" in capsys.readouterr().err


def test_gpu_without_cuda_is_a_clear_error(capsys):
    has_cuda = False
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            has_cuda = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            has_cuda = False
    if has_cuda:
        pytest.skip("a CUDA device is present")
    rc = cli.main(["train", "--device", "gpu", "--data", "/nonexistent"])
    err = capsys.readouterr().err
    assert rc == 2 and "--device gpu" in err and ("CuPy" in err or "CUDA" in err)


def test_evaluate_matches_report(tiny_run, capsys):
    out, _ = tiny_run
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "report.json").read_text())
    assert rep["accuracy"] == saved["accuracy"] and rep["confusion_matrix"] == saved["confusion_matrix"]
    assert [p["class"] for p in rep["per_class"]] == ["low", "medium", "high"]
    cm = np.array(rep["confusion_matrix"])
    assert rep["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert rep["majority_baseline"] == pytest.approx(cm.sum(axis=1).max() / cm.sum())
    assert cli.main(["evaluate", str(out), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "majority baseline" in text and "confusion matrix" in text


def test_predict_table_and_json(tiny_run, capsys):
    out, cache = tiny_run
    files = sorted((next(cache.glob("demo-*")) / "fma_small").rglob("*.mp3"))[:2]
    capsys.readouterr()
    assert cli.main(["predict", str(out)] + [str(f) for f in files] + ["--json", "--crops", "2"]) == 0
    recs = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in recs] == [str(f) for f in files]
    for r in recs:
        p = r["probabilities"]
        assert set(p) == {"low", "medium", "high"} and sum(p.values()) == pytest.approx(1.0, abs=1e-6)
        assert r["class"] == max(p, key=p.get) and len(r["offsets_s"]) == 2
    assert cli.main(["predict", str(out), str(files[0]), str(out / "missing.mp3")]) == 2
    captured = capsys.readouterr()
    assert "low" in captured.out and "missing.mp3" in captured.err


def test_inspect_writes_table_and_plot(tiny_run, capsys):
    out, _ = tiny_run
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dead ReLU" in text and "update/weight" in text
    rows = json.loads((out / "inspect.json").read_text())
    assert (out / "inspect.png").is_file() and (out / "inspect.md").is_file()
    kinds = [r["layer"].split(":")[1] for r in rows]
    assert kinds[0] == "Conv2d" and kinds[-1] == "Linear"
    for r in rows:
        if r["layer"].endswith("ReLU"):
            assert 0 <= r["dead_frac"] <= r["zero_frac"] <= 1
        if r["layer"].endswith(("Conv2d", "Linear")):
            assert r["grad_norm"] > 0 and 0 < r["update_ratio"] < 1
        if r["layer"].endswith("BatchNorm2d"):  # training-mode BN output: mean ~0, std ~1
            assert abs(r["act_mean"]) < 1e-2 and abs(r["act_std"] - 1) < 2e-2


def test_models_lists_shapes_and_params(capsys):
    assert cli.main(["models"]) == 0
    text = capsys.readouterr().out
    for name in cli.MODEL_NAMES:
        assert f"== {name}" in text
    assert "(N, 256)" in text  # cnn6_rgb's flatten size on 102 x 159
    assert "421,027" in text  # cnn6_rgb parameters with our widths


def test_gradcheck_passes(capsys):
    assert cli.main(["gradcheck", "--model", "cnn2_mono"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "0.weight" in text
    errs = [float(line.split()[-1]) for line in text.splitlines() if line[:1].isdigit()]
    assert errs and max(errs) < 1e-6


def _dataset_dir(tiny_run):
    out, _ = tiny_run
    return json.loads((out / "config.json").read_text())["data"]["dataset_dir"]


def test_grid_table_best_first(tiny_run, tmp_path, capsys):
    data = _dataset_dir(tiny_run)
    rc = cli.main(["grid", "--data", data, "--model", "cnn2_mono", "--lr", "1e-3,1e-7", "--batch-size", "8",
                   "--dropout", "0.4", "--epochs", "1", "--quiet", "--out", str(tmp_path / "g")])
    assert rc == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "g" / "grid.csv")))
    assert len(rows) == 2 and {r["lr"] for r in rows} == {"0.001", "1e-07"}
    accs = [float(r["val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    for r in rows:  # each trial is a normal run directory
        assert (tmp_path / "g" / r["run"] / "report.json").is_file()
    md = (tmp_path / "g" / "grid.md").read_text()
    assert md.count("| cnn2_mono_lr") == 2


def test_reproduce_writes_paper_table(tiny_run, tmp_path, capsys):
    data = _dataset_dir(tiny_run)
    rc = cli.main(["reproduce", "--data", data, "--models", "cnn2_mono", "--epochs", "1", "--quiet",
                   "--out", str(tmp_path / "r")])
    assert rc == 0
    md = (tmp_path / "r" / "results.md").read_text()
    line = next(s for s in md.splitlines() if s.startswith("| cnn2_mono"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:7] == ["44", "41", "42"]  # the paper's numbers beside ours
    rep = json.loads((tmp_path / "r" / "cnn2_mono" / "report.json").read_text())
    assert float(cells[3]) == pytest.approx(100 * rep["accuracy"], abs=0.05)
    assert "61 %" in md


# ---------------------------------------------------------------- robustness (new-user trial)

BAD_TRAIN_FLAGS = [
    (["--batch-size", "0"], "--batch-size 0"),
    (["--epochs", "0"], "--epochs 0"),
    (["--epochs", "-1"], "--epochs -1"),
    (["--lr", "-1"], "--lr -1.0"),
    (["--lr", "0"], "--lr 0.0"),
    (["--lr", "nan"], "--lr nan"),
    (["--lr", "inf"], "--lr inf"),
    (["--weight-decay", "-1"], "--weight-decay -1.0"),
    (["--dropout", "1.5"], "--dropout 1.5"),
    (["--dropout", "1"], "--dropout 1.0"),
    (["--patience", "0"], "--patience 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1"),
    (["--workers", "-1"], "--workers -1"),
]


@pytest.mark.parametrize("flags,named", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_bad_hyperparameter_is_one_line_error_before_anything(flags, named, tmp_path, capsys):
    rc = cli.main(["train", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")] + flags)
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.err.startswith(f"error: {named}: expected") and cap.err.count("\n") == 1, cap.err
    assert "Traceback" not in cap.err and "| Parameter" not in cap.out  # no config table printed
    assert list(tmp_path.iterdir()) == []  # no run folder, no cache, no demo data


def test_grid_rejects_bad_values_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["grid", "--lr", "1e-3,abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --lr: expected comma-separated numbers, got 'abc'" in err and "_floats" not in err
    rc = cli.main(["grid", "--lr", "1e-3", "--dropout", "0.3,2", "--out", str(tmp_path / "g")])
    assert rc == 2 and "--dropout 2.0" in capsys.readouterr().err
    rc = cli.main(["grid", "--model", "cnn3", "--out", str(tmp_path / "g")])
    assert rc == 2 and "unknown architecture 'cnn3'" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_fma_parent_folder_gets_a_short_hint(tmp_path, capsys):
    (tmp_path / "fma_small" / "000").mkdir(parents=True)
    (tmp_path / "fma_metadata").mkdir()
    meta = tmp_path / "fma_metadata" / "tracks.csv"
    meta.write_text("x\n")
    rc = cli.main(["preprocess", "--audio-dir", str(tmp_path), "--metadata", str(meta), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"pass --audio-dir {tmp_path / 'fma_small'}" in err and err.count("\n") == 1


def test_interrupted_preprocess_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from pipeline import prepare

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare_folder", interrupt)
    (tmp_path / "a").mkdir()
    rc = cli.main(["preprocess", "--audio-dir", str(tmp_path / "a"), "--label-regex", "^(x)", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 130 and "run the same command again to resume; finished tracks are kept" in err


def test_training_done_message_wording():
    from engine.config import TrainConfig

    cfg = TrainConfig(epochs=1, patience=2)
    res = dict(history=[{"epoch": 1, "seconds": 2.5}], stopped="epochs", best_val_acc=0.5, best_epoch=1,
               seconds=3.0)
    msg = cli.training_done_message(res, cfg)
    assert msg.startswith("training done: 1 epoch (reached --epochs 1), best validation accuracy 0.5000 at epoch 1")
    assert "all sessions" not in msg
    res = dict(res, history=[{"epoch": 1, "seconds": 2.5}, {"epoch": 2, "seconds": 4.0}], stopped="patience")
    msg = cli.training_done_message(res, cfg, resumed=True)
    assert "2 epochs (early stopping: no better validation accuracy for 2 epochs)" in msg
    assert msg.endswith("3.0 s in this session, 6.5 s of training over all sessions")


def test_data_flags_are_the_ones_the_source_reads():
    """pipeline.sources.DATA_FLAGS (recorded in config.json) names every flag of cli_args.add_data_args, in order."""
    p = cli_args.argparse.ArgumentParser(add_help=False)
    cli_args.add_data_args(p)
    assert tuple(a.dest for a in p._actions) == sources.DATA_FLAGS


def test_status_report_printed_once(tmp_path, capsys):
    class DS:
        path = "D"
        manifest = {"tracks": [{"status": "padded", "path": "a.mp3", "reason": "short"},
                               {"status": "skipped", "path": "b.mp3", "reason": "broken"}]}

    sources.status_report(DS(), {"reported": True})
    assert capsys.readouterr().out == ""  # the pipeline has just printed it while building
    sources.status_report(DS(), {"reported": False})
    out = capsys.readouterr().out
    assert out.count("a.mp3") == 1 and out.count("b.mp3") == 1


def test_status_report_once_through_preprocess(tiny_run, tmp_path, capsys):
    """A fresh cache (crop longer than the 3 s clips: every track padded) is reported once, not twice."""
    _, cache = tiny_run
    args = ["preprocess", "--cache-dir", str(cache), "--workers", "0", "--out", str(tmp_path)] + TINY[:4] + \
        ["--crop-seconds", "4", "--height", "32", "--width", "48"]
    assert cli.main(args) == 0
    cap = capsys.readouterr()
    assert (cap.out + cap.err).count("shorter than the 4.0 s crop") <= 20  # pipeline lists at most 20, once
    assert cap.out.count("zero-padded") == 0
    assert cli.main(args) == 0  # reused cache: the pipeline prints nothing, the CLI's summary is shown once
    cap = capsys.readouterr()
    assert cap.out.count("40 track(s) shorter than the crop, zero-padded") == 1 and "shorter than" not in cap.err


def _copy_run(tiny_run, tmp_path):
    import shutil

    out, _ = tiny_run
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return dst


def test_damaged_run_files_are_clean_errors(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path)
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(22050, np.float32), 22050)
    best = run / "checkpoints" / "best.npz"
    best.write_bytes(best.read_bytes()[:100])  # truncated
    for cmd in (["evaluate", str(run)], ["predict", str(run), str(wav)]):
        assert cli.main(cmd) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(best) in err and "Traceback" not in err, err
    (run / "config.json").write_text('{"train": {"model": ')  # truncated JSON
    for cmd in (["evaluate", str(run)], ["predict", str(run), str(wav)], ["train", "--resume", "--out", str(run)]):
        assert cli.main(cmd) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run / 'config.json'}: unreadable config.json"), err


def test_predict_status_column_widths_and_failures(tiny_run, tmp_path, capsys, monkeypatch):
    import soundfile as sf

    from pipeline import clips
    from pipeline.errors import PipelineError

    out, _ = tiny_run
    long_name = tmp_path / ("a_rather_long_folder_name_for_the_table" * 2) / "clip.wav"
    long_name.parent.mkdir()
    sf.write(long_name, 0.1 * np.random.default_rng(0).standard_normal(22050).astype(np.float32), 22050)  # 1 s
    full = tmp_path / "full.wav"
    sf.write(full, 0.1 * np.random.default_rng(1).standard_normal(3 * 22050).astype(np.float32), 22050)  # 3 s
    capsys.readouterr()
    assert cli.main(["predict", str(out), str(long_name), str(full)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["file", "class", "status"] and len(lines) == 3
    assert lines[1].startswith(str(long_name) + "  ") and "padded 1.0 s" in lines[1] and "ok 3.0 s" in lines[2]
    col = lines[0].index("class")
    assert lines[1][col - 2:col] == "  " and lines[2][col - 2:col] == "  " and lines[2][col] != " "
    assert len({len(s) for s in lines}) == 1  # every row as wide as the header: aligned
    # a file the pipeline refuses (e.g. shorter than one STFT frame) is a named failure, exit code 2
    real = clips.track_images

    def refuse_short(path, *a, **k):
        if str(path).endswith("short.wav"):
            raise PipelineError(f"{path}: 100 samples, shorter than one STFT frame (n_fft 2048)")
        return real(path, *a, **k)

    monkeypatch.setattr(clips, "track_images", refuse_short)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 22050)
    assert cli.main(["predict", str(out), str(full), str(short)]) == 2
    cap = capsys.readouterr()
    assert f"error: {short}: 100 samples" in cap.err and cap.out.startswith("file") and str(short) not in cap.out
    assert cli.main(["predict", str(out), str(short)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and str(short) in cap.err  # every file failed: no table header


def test_predict_refuses_audio_shorter_than_one_frame(tiny_run, tmp_path, capsys):
    """Real pipeline: once track_images refuses a clip shorter than one STFT frame, predict names it (rc 2)."""
    import dataclasses

    import soundfile as sf

    from pipeline.clips import track_images
    from pipeline.errors import PipelineError
    from pipeline.spectrogram import SpectrogramConfig

    out, _ = tiny_run
    short = tmp_path / "tiny.wav"
    sf.write(short, np.full(100, 0.1, np.float32), 22050)
    spec = json.loads((out / "config.json").read_text())["spectrogram"]
    try:
        track_images(short, dataclasses.replace(SpectrogramConfig.from_dict(spec), mode="mono"))
    except PipelineError:
        pass
    else:
        pytest.skip("this pipeline version still pads clips shorter than one STFT frame")
    assert cli.main(["predict", str(out), str(short)]) == 2
    cap = capsys.readouterr()
    assert str(short) in cap.err and cap.out == ""


DIGIT_FLAGS = ["--label-regex", r"^(\d)_", "--sr", "8000", "--crop-seconds", "1", "--n-fft", "256",
               "--hop-length", "32", "--height", "32", "--width", "48", "--quiet", "--workers", "0"]


@pytest.fixture(scope="module")
def digit_runs(tmp_path_factory):
    """A tiny labelled wav folder (two tone classes, clips of 0.6 to 2.5 s around the 1 s crop: short ones
    padded inside the window, long ones with distinct windows) and a 1-epoch run of a mono and an rgb model
    (the rgb one with ``--image-norm floor``, so that predict / evaluate agreement covers both image norms)."""
    from audio_fixtures import write_wav

    base = tmp_path_factory.mktemp("digits")
    audio = base / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        c = i % 2
        f0 = (300 + 200 * rng.random()) if c == 0 else (1000 + 500 * rng.random())
        n = int(8000 * (0.6 + 1.9 * rng.random()))
        t = np.arange(n) / 8000
        y = 0.4 * np.sin(2 * np.pi * f0 * t) * np.minimum(1, 4 * t) + 0.05 * rng.standard_normal(n)
        write_wav(audio / f"{c}_s{i % 3}_{i}.wav", y.astype(np.float32), 8000)
    runs = {}
    for model in ("cnn2_mono", "cnn4_rgb"):
        out = base / model
        rc = cli.main(["train", "--audio-dir", str(audio), "--cache-dir", str(base / "cache"), "--out", str(out),
                       "--model", model, "--epochs", "1", "--batch-size", "8"] + DIGIT_FLAGS
                      + (["--image-norm", "floor"] if model == "cnn4_rgb" else []))
        assert rc == 0
        runs[model] = out
    return audio, runs


@pytest.mark.parametrize("model", ["cnn2_mono", "cnn4_rgb"])
def test_predict_logits_equal_evaluate_on_the_cached_window(digit_runs, model, capsys):
    """Issue 8 (b) and (c): predict on a test file gives the probabilities evaluate computes for that row
    (the same evenly spaced windows of the cached clip; bit-identical on the CPU, at batch size 1 and
    at the run's), so the accuracy of predict over the test files equals evaluate's."""
    from engine import config as ec
    from engine import evaluate as ev

    audio, runs = digit_runs
    conf, cfg, net, _ = cli._load_run(runs[model])
    ds = cli._run_dataset(runs[model], conf)
    assert conf["spectrogram"]["norm"] == ds.config.norm == ("floor" if model == "cnn4_rgb" else "minmax")
    test_rows = ds.indices("test")
    assert len(test_rows) >= 4
    files = [str(audio / ds.ids[r]) for r in test_rows]
    assert cfg.eval_crops == 3 and ds.widths[test_rows].min() < 48 < ds.widths[test_rows].max()
    for crops in (None, 1):
        capsys.readouterr()
        assert cli.main(["predict", str(runs[model])] + files + ["--json"]
                        + ([] if crops is None else ["--crops", str(crops)])) == 0
        recs = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
        k = cfg.eval_crops if crops is None else crops
        assert [r["crops"] for r in recs] == [k] * len(files)
        pred = np.array([[r["probabilities"][c] for c in ds.classes] for r in recs], np.float64)
        _, yt, yp, probs = ev.evaluate_split(net, ds, "test", 1, "cpu", ec.model_mode(model), eval_crops=k)
        np.testing.assert_array_equal(pred.astype(np.float32), probs)  # same logits -> same probabilities
        _, yt_b, yp_b, probs_b = ev.evaluate_split(net, ds, "test", cfg.batch_size, "cpu", ec.model_mode(model),
                                                   eval_crops=k)
        np.testing.assert_array_equal(probs_b, probs)  # eval outputs do not depend on the rest of the batch
        assert float((pred.argmax(axis=1) == yt).mean()) == float((yt_b == yp_b).mean())
    assert cli.main(["evaluate", str(runs[model]), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    _, yt, yp, _ = ev.evaluate_split(net, ds, "test", 1, "cpu", ec.model_mode(model), eval_crops=3)
    assert rep["crops"] == 3 and rep["accuracy"] == float((yt == yp).mean())


def test_evaluate_on_new_labelled_audio(digit_runs, tmp_path, capsys):
    """Issue 8 part 4: evaluate --audio-dir preprocesses a folder with the run's settings; on copies of the
    run's test files it reports exactly what evaluate reports for the test split; an unknown label is
    a one-line error naming it and the file."""
    import shutil

    audio, runs = digit_runs
    run = runs["cnn4_rgb"]
    conf, _, _, _ = cli._load_run(run)
    ds = cli._run_dataset(run, conf)
    new = tmp_path / "new"
    new.mkdir()
    for r in ds.indices("test"):
        shutil.copy(audio / ds.ids[r], new / ds.ids[r])
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert cli.main(["evaluate", str(run), "--audio-dir", str(new), "--label-regex", r"^(\d)_", "--json",
                     "--cache-dir", str(tmp_path / "cache"), "--quiet", "--workers", "0"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["confusion_matrix"] == want["confusion_matrix"] and got["accuracy"] == want["accuracy"]
    assert got["majority_baseline"] == want["majority_baseline"] and got["audio_dir"] == str(new.resolve())
    assert cli.main(["evaluate", str(run), "--audio-dir", str(new), "--label-regex", r"^(\d)_",
                     "--cache-dir", str(tmp_path / "cache"), "--quiet", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "confusion matrix" in text and "majority baseline" in text
    shutil.copy(audio / ds.ids[0], new / "7_s0_99.wav")
    assert cli.main(["evaluate", str(run), "--audio-dir", str(new), "--label-regex", r"^(\d)_",
                     "--cache-dir", str(tmp_path / "cache"), "--quiet", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "'7'" in err and "7_s0_99.wav" in err and "classes" in err
    assert cli.main(["evaluate", str(run), "--label-regex", "x"]) == 2
    assert "--audio-dir" in capsys.readouterr().err


def test_predict_and_evaluate_work_after_the_cache_is_deleted(digit_runs, capsys):
    """Issue 10 item 8: predict needs only the run directory; evaluate rebuilds the run's missing cache
    (same hash) and says so."""
    import shutil

    audio, runs = digit_runs
    run = runs["cnn2_mono"]
    conf = json.loads((run / "config.json").read_text())
    files = [str(audio / "0_s0_0.wav"), str(audio / "1_s1_1.wav")]
    capsys.readouterr()
    assert cli.main(["predict", str(run)] + files + ["--json"]) == 0
    before_pred = capsys.readouterr().out
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    before_eval = json.loads(capsys.readouterr().out)
    shutil.rmtree(conf["data"]["dataset_dir"])
    assert cli.main(["predict", str(run)] + files + ["--json"]) == 0
    assert capsys.readouterr().out == before_pred
    assert not Path(conf["data"]["dataset_dir"]).exists()  # predict did not need it
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out) == before_eval
    assert "missing" in cap.err and "rebuilding" in cap.err
    assert (Path(conf["data"]["dataset_dir"]) / "manifest.json").is_file()


def test_predict_on_a_long_silent_recording(digit_runs, tmp_path, capsys, monkeypatch):
    """Issue 10 item 18: a long silent file is decoded only where the windows need it (its centred clip)
    and predict says it is silence, in the status and on stderr."""
    from audio_fixtures import write_wav
    from pipeline import audio as audio_mod

    _, runs = digit_runs
    long = write_wav(tmp_path / "silent hour.wav", np.zeros(600 * 8000, np.float32), 8000)  # 10 minutes
    decoded = []
    real = audio_mod.load
    monkeypatch.setattr(audio_mod, "load", lambda *a, **kw: decoded.append(kw) or real(*a, **kw))
    capsys.readouterr()
    assert cli.main(["predict", str(runs["cnn2_mono"]), str(long)]) == 0
    out, err = capsys.readouterr()
    assert "ok 600.0 s (3.0 s analysed, digital silence)" in out
    assert "digital silence" in err and "silent hour.wav" in err
    assert len(decoded) == 1 and decoded[0]["duration"] < 3.01 and decoded[0]["offset"] == pytest.approx(298.5)
    assert cli.main(["predict", str(runs["cnn2_mono"]), str(long), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["reason"] == "digital silence" and rec["duration_s"] == 600.0 and rec["analysed_s"] == 3.0


def test_bad_input_of_evaluate_predict_and_resume(digit_runs, tmp_path, capsys):
    """What a breaking session found: absurd --crops, a file as the cache folder, a replaced audio file,
    skipped files on a re-run, flags that --resume ignores, a run whose cache was deleted before --resume,
    a hand-edited config.json: one clean message each (no traceback), nothing reused that is stale."""
    import os
    import shutil

    from engine.config import MAX_EVAL_CROPS

    audio, runs = digit_runs
    run = runs["cnn2_mono"]
    wav = str(audio / "0_s0_0.wav")
    capsys.readouterr()
    for cmd in (["predict", str(run), wav, "--crops", "1000000"], ["evaluate", str(run), "--crops", "100000"]):
        assert cli.main(cmd) == 2
        err = capsys.readouterr().err
        assert f"from 1 to {MAX_EVAL_CROPS}" in err and "Traceback" not in err, err
    new = tmp_path / "new"
    new.mkdir()
    for name in ("0_s0_0.wav", "1_s1_1.wav"):
        shutil.copy(audio / name, new / name)
    (new / "0_s2_empty.wav").write_bytes(b"")
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    ev = ["evaluate", str(run), "--audio-dir", str(new), "--label-regex", r"^(\d)_", "--json", "--quiet",
          "--workers", "0"]
    assert cli.main(ev + ["--cache-dir", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert str(a_file) in err and "not a folder" in err and "Traceback" not in err, err
    reports = []
    for again in range(2):
        assert cli.main(ev + ["--cache-dir", str(tmp_path / "cache")]) == 0
        cap = capsys.readouterr()
        reports.append(json.loads(cap.out))
        assert "skipped" in cap.err and "0_s2_empty.wav" in cap.err, (again, cap.err)  # listed on the re-run too
    assert reports[0]["dataset_dir"] == reports[1]["dataset_dir"]  # nothing changed: the cache is reused
    shutil.copy(audio / "0_s1_10.wav", new / "0_s0_0.wav")  # replaced in place by another recording
    st = os.stat(new / "0_s0_0.wav")
    os.utime(new / "0_s0_0.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cli.main(ev + ["--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads(capsys.readouterr().out)["dataset_dir"] != reports[0]["dataset_dir"]

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    conf = json.loads((copy / "config.json").read_text())
    shutil.rmtree(conf["data"]["dataset_dir"])
    assert cli.main(["train", "--resume", "--out", str(copy), "--epochs", "2", "--lr", "0.1", "--batch-size", "4",
                     "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "ignored: --lr, --batch-size" in err and "--epochs" not in err.split("ignored:")[1].split("(")[0], err
    assert (Path(conf["data"]["dataset_dir"]) / "manifest.json").is_file()  # rebuilt with the run's settings
    assert json.loads((copy / "config.json").read_text())["train"]["lr"] == conf["train"]["lr"]
    for key, value in (("image_shape", [1, 2, 3]), ("model", "nosuch")):  # too small for the pools; unknown
        bad = json.loads(json.dumps(conf))
        if key == "model":
            bad["train"]["model"] = value
        else:
            bad[key] = value
        (copy / "config.json").write_text(json.dumps(bad))
        assert cli.main(["predict", str(copy), wav]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {copy / 'config.json'}") and "Traceback" not in err, (key, err)
