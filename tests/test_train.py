"""The training loop (engine/train.py) through the CLI: run directory, determinism,
resume after SIGKILL, Ctrl-C, NaN stop, early stopping.

Everything trains cnn2_mono on a tiny synthetic dataset (40 clips of 3 s,
2 s crops, 32 x 48 images) built once per session by ``preprocess``.
Subprocess tests use the same Numba cache as this process, so they do not
recompile.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cli

REPO = Path(__file__).resolve().parents[1]
TIME_KEYS = {"seconds", "images_per_s", "data_wait_share", "peak_rss_mib"}
TINY = ["--demo-tracks", "40", "--demo-seconds", "3", "--crop-seconds", "2", "--height", "32", "--width", "48"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny demo dataset cache (built through the normal FMA path)."""
    cache = tmp_path_factory.mktemp("hitcnn-cache")
    rc = cli.main(["preprocess", "--cache-dir", str(cache), "--quiet", "--workers", "1"] + TINY)
    assert rc == 0
    (d,) = list((cache / "datasets").iterdir())
    return d


def train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--model", "cnn2_mono", "--quiet"] + list(extra)


def metrics_lines(run):
    return [json.loads(s) for s in (Path(run) / "metrics.jsonl").read_text().splitlines() if s.strip()]


def no_time(lines):
    return [{k: v for k, v in rec.items() if k not in TIME_KEYS} for rec in lines]


def weights(path):
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files if not k.startswith("meta")}


def run_cli(args, **kw):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py")] + args, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def ckpt_extra(path):
    with np.load(path) as z:
        return json.loads(str(z["meta"]))["extra"]


def test_run_dir_files_and_report(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_args(tiny_data, out, "--epochs", "2", "--batch-size", "8")) == 0
    text = capsys.readouterr().out
    assert "| Parameter" in text and "cnn2_mono" in text  # the configuration table
    for f in ("config.json", "metrics.jsonl", "report.json", "curves.png", "confusion.png",
              "checkpoints/last.npz", "checkpoints/best.npz"):
        assert (out / f).is_file(), f
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["model"] == "cnn2_mono" and conf["train"]["batch_size"] == 8
    assert len(conf["dataset_manifest_hash"]) == 64 and conf["code_version"] != "unknown"
    assert conf["classes"] == ["low", "medium", "high"]
    lines = metrics_lines(out)
    assert [r["epoch"] for r in lines] == [1, 2]
    assert set(lines[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
                             "data_wait_share"}
    assert 0 <= lines[0]["data_wait_share"] < 1 and lines[0]["images_per_s"] > 0
    rep = json.loads((out / "report.json").read_text())
    n_test = conf["n_images"]["test"]
    assert rep["n"] == n_test and rep["split"] == "test"
    assert sum(map(sum, rep["confusion_matrix"])) == n_test
    assert 0 <= rep["accuracy"] <= 1 and "majority_baseline" in rep
    best = max(lines, key=lambda r: r["val_acc"])  # first maximum = the best checkpoint's epoch
    assert rep["best_epoch"] == best["epoch"] and rep["val_accuracy"] == best["val_acc"]


def test_same_seed_same_metrics_and_weights(tiny_data, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["--epochs", "2", "--batch-size", "8", "--seed", "5"]
    assert cli.main(train_args(tiny_data, a, *args)) == 0
    assert cli.main(train_args(tiny_data, b, *args)) == 0
    assert no_time(metrics_lines(a)) == no_time(metrics_lines(b))
    wa, wb = weights(a / "checkpoints/last.npz"), weights(b / "checkpoints/last.npz")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # a different seed gives a different run
    assert cli.main(train_args(tiny_data, c, "--epochs", "2", "--batch-size", "8", "--seed", "6")) == 0
    assert no_time(metrics_lines(a)) != no_time(metrics_lines(c))


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tiny_data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "killed"
    common = ["--epochs", "2", "--batch-size", "4", "--checkpoint-every", "1", "--seed", "2"]
    assert cli.main(train_args(tiny_data, ref, *common)) == 0
    p = run_cli(train_args(tiny_data, run, *common, "--step-delay", "0.15"))
    try:
        t0 = time.time()
        last = run / "checkpoints" / "last.npz"
        while True:  # wait for the checkpoint of a step inside epoch 2, then kill at once
            assert p.poll() is None, p.communicate()
            assert time.time() - t0 < 180, "the run never reached epoch 2"
            try:
                e = ckpt_extra(last)
                if e["epoch"] == 1 and e["step_in_epoch"] >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    extra = ckpt_extra(run / "checkpoints/last.npz")
    steps_per_epoch = 8  # 32 training images / batch 4
    assert extra["epoch"] == 1 and 1 <= extra["step_in_epoch"] < steps_per_epoch, extra  # killed mid-epoch 2
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert no_time(metrics_lines(run)) == no_time(metrics_lines(ref))
    wr, wk = weights(ref / "checkpoints/last.npz"), weights(run / "checkpoints/last.npz")
    for k in wr:
        np.testing.assert_array_equal(wr[k], wk[k], err_msg=k)
    assert ckpt_extra(run / "checkpoints/last.npz")["global_step"] == 16


def test_sigint_saves_and_says_how_to_resume(tiny_data, tmp_path):
    run = tmp_path / "int"
    p = run_cli(train_args(tiny_data, run, "--epochs", "3", "--batch-size", "4", "--checkpoint-every", "0",
                           "--step-delay", "0.15"))
    try:
        t0 = time.time()
        while not (run / "config.json").is_file():
            assert p.poll() is None, p.communicate()
            assert time.time() - t0 < 120
            time.sleep(0.05)
        time.sleep(1.0)  # inside epoch 1: no checkpoint has been written yet (--checkpoint-every 0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert f"Resume with: python cli.py train --resume --out {run}" in err
    assert (run / "checkpoints/last.npz").is_file()
    extra = ckpt_extra(run / "checkpoints/last.npz")
    assert extra["epoch"] == 0 and extra["step_in_epoch"] == extra["global_step"] < 8  # saved inside epoch 1
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert [r["epoch"] for r in metrics_lines(run)] == [1, 2, 3]


def test_nan_loss_stops_names_step_and_keeps_good_checkpoint(tiny_data, tmp_path, capsys):
    run = tmp_path / "nan"
    rc = cli.main(train_args(tiny_data, run, "--epochs", "2", "--batch-size", "8", "--lr", "1e30",
                             "--checkpoint-every", "1"))
    err = capsys.readouterr().err
    assert rc == 3
    assert "loss became" in err and "at step 2 " in err and "lower learning rate" in err and "--lr 1e+29" in err
    last = run / "checkpoints/last.npz"
    assert last.is_file() and ckpt_extra(last)["global_step"] == 1  # written before the bad step
    for k, v in weights(last).items():
        assert np.all(np.isfinite(v)), k


def test_patience_stops_early(tiny_data, tmp_path, capsys):
    run = tmp_path / "pat"
    assert cli.main(train_args(tiny_data, run, "--epochs", "30", "--batch-size", "16", "--patience", "1",
                               "--lr", "1e-7")) == 0
    lines = metrics_lines(run)
    assert "early stopping" in capsys.readouterr().out
    assert len(lines) < 30
    accs = [r["val_acc"] for r in lines]
    # patience 1: every epoch but the last improved on all before it; the last did not
    for i in range(1, len(accs) - 1):
        assert accs[i] > max(accs[:i]), accs
    assert accs[-1] <= max(accs[:-1]), accs


def test_overfit_batch_reaches_full_accuracy(tiny_data, tmp_path):
    run = tmp_path / "of"
    assert cli.main(train_args(tiny_data, run, "--overfit-batch", "--epochs", "60", "--batch-size", "8",
                               "--dropout", "0", "--lr", "1e-3")) == 0
    lines = metrics_lines(run)
    assert lines[-1]["train_acc"] == 1.0 and lines[-1]["train_loss"] < 0.05


@pytest.mark.slow
def test_default_demo_end_to_end(tmp_path):
    """`python cli.py train` with no data flags: synthesise, preprocess, train cnn6_rgb, test (a few minutes)."""
    env = dict(os.environ, HITCNN_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "demo"
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--out", str(out), "--quiet"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SYNTHETIC" in r.stdout
    lines = metrics_lines(out)
    assert len(lines) == cli.DEMO_EPOCHS
    rep = json.loads((out / "report.json").read_text())
    assert rep["majority_baseline"] < 0.5
    assert max(x["val_acc"] for x in lines) >= 0.85 and rep["accuracy"] >= 0.85, (lines, rep)
    print(f"default demo: {time.time() - t0:.0f} s wall, test accuracy {rep['accuracy']:.3f}")


# ---------------------------------------------------------------- robustness (new-user trial)


def test_fit_rejects_invalid_config_before_writing(tiny_data, tmp_path):
    from engine import config as ec
    from engine import train as tr
    from pipeline.dataset import Dataset

    ds = Dataset(tiny_data)
    for bad, field in ((dict(epochs=0), "epochs = 0"), (dict(batch_size=0), "batch_size = 0"),
                       (dict(lr=float("inf")), "lr = inf"), (dict(dropout=1.0), "dropout = 1.0"),
                       (dict(patience=0), "patience = 0"), (dict(weight_decay=-1.0), "weight_decay = -1.0")):
        cfg = ec.TrainConfig(model="cnn2_mono", progress=False, **bad)
        with pytest.raises(ValueError, match=field):
            tr.fit(ds, cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    assert ec.config_problems(ec.TrainConfig()) == []


def test_exploding_loss_warns_but_trains_on(tiny_data, tmp_path, capsys):
    run = tmp_path / "boom"
    assert cli.main(train_args(tiny_data, run, "--epochs", "1", "--batch-size", "8", "--lr", "1e6")) == 0
    out = capsys.readouterr().out
    assert out.count("warning: loss is exploding") == 1 and "try a lower --lr, e.g. --lr 100000" in out
    assert "training done: 1 epoch (reached --epochs 1)" in out
    assert [r["epoch"] for r in metrics_lines(run)] == [1]
    assert cli.main(train_args(tiny_data, tmp_path / "calm", "--epochs", "1", "--batch-size", "8")) == 0
    assert "loss is exploding" not in capsys.readouterr().out


def test_resume_reports_time_of_all_sessions(tiny_data, tmp_path, capsys):
    run = tmp_path / "two"
    assert cli.main(train_args(tiny_data, run, "--epochs", "1", "--batch-size", "8")) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    total = sum(r["seconds"] for r in metrics_lines(run))
    assert "training done: 2 epochs (reached --epochs 2)" in out
    assert f" s in this session, {total:.1f} s of training over all sessions" in out
    # resuming the finished run says it is complete (no "epoch 3" that never runs) and trains nothing
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "the run is already complete (2 of 2 epochs" in out and "epoch 3" not in out
    assert [r["epoch"] for r in metrics_lines(run)] == [1, 2]


def test_resume_without_checkpoint_starts_over(tiny_data, tmp_path, capsys):
    """Killed before the first checkpoint: config.json exists, nothing was trained; --resume starts it afresh."""
    import shutil

    ref, run = tmp_path / "ref", tmp_path / "early"
    assert cli.main(train_args(tiny_data, ref, "--epochs", "1", "--batch-size", "8", "--seed", "3")) == 0
    run.mkdir()
    shutil.copy(ref / "config.json", run / "config.json")
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "has no checkpoint yet" in out and "starting it from scratch" in out
    assert no_time(metrics_lines(run)) == no_time(metrics_lines(ref))
    assert json.loads((run / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    wr, wk = weights(ref / "checkpoints/last.npz"), weights(run / "checkpoints/last.npz")
    for k in wr:
        np.testing.assert_array_equal(wr[k], wk[k], err_msg=k)


def test_resume_from_truncated_checkpoint_is_a_clean_error(tiny_data, tmp_path, capsys):
    run = tmp_path / "cut"
    assert cli.main(train_args(tiny_data, run, "--epochs", "1", "--batch-size", "8")) == 0
    last = run / "checkpoints" / "last.npz"
    last.write_bytes(last.read_bytes()[:200])
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {last}") and "Traceback" not in err
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "0"]) == 2
    assert "--epochs 0: expected an integer >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- batch-time augmentation (issue 8 part 3)


def test_resume_with_augmentation_is_bit_exact(tiny_data, tmp_path):
    """Every augmentation on (mixup too): stopped mid-epoch and resumed = uninterrupted; and it is really applied."""
    aug = ["--freq-mask", "6", "--time-mask", "8", "--n-masks", "2", "--gain-db", "6", "--time-shift", "0.2",
           "--mixup", "0.4", "--freq-warp", "0.1", "--time-stretch", "0.2"]
    common = ["--epochs", "2", "--batch-size", "4", "--checkpoint-every", "1", "--seed", "3", *aug]
    ref, run, off = tmp_path / "ref", tmp_path / "stopped", tmp_path / "off"
    assert cli.main(train_args(tiny_data, ref, *common)) == 0
    assert cli.main(train_args(tiny_data, run, *common, "--max-steps", "11")) == 0  # stops in epoch 2, step 3
    extra = ckpt_extra(run / "checkpoints/last.npz")
    assert extra["epoch"] == 1 and extra["step_in_epoch"] == 3, extra
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert no_time(metrics_lines(run)) == no_time(metrics_lines(ref))
    wr, wk = weights(ref / "checkpoints/last.npz"), weights(run / "checkpoints/last.npz")
    for k in wr:
        np.testing.assert_array_equal(wr[k], wk[k], err_msg=k)
    conf = json.loads((ref / "config.json").read_text())
    assert conf["train"]["augment"] == dict(freq_mask=6, time_mask=8, n_masks=2, gain_db=6.0, time_shift=0.2,
                                            mixup=0.4, freq_warp=0.1, time_stretch=0.2, noise_db=0.0)
    assert cli.main(train_args(tiny_data, off, "--epochs", "2", "--batch-size", "4", "--seed", "3",
                               "--augment", "off")) == 0
    off_aug = json.loads((off / "config.json").read_text())["train"]["augment"]
    assert off_aug["mixup"] == 0.0 and off_aug["freq_warp"] == 0.0 and off_aug["time_stretch"] == 0.0
    assert metrics_lines(off)[0]["train_loss"] != metrics_lines(ref)[0]["train_loss"]


def test_augment_off_feeds_exactly_the_dataset_batches(tiny_data):
    """The augmentation path with everything off (levels -> augment kernel) = Dataset.batches, bit for bit."""
    from engine import augment as A
    from pipeline.dataset import Dataset
    from pipeline.spectrogram import colormap_lut

    ds = Dataset(tiny_data)
    lut = np.ascontiguousarray(colormap_lut(ds.config.colormap))
    plain = list(ds.batches("train", 5, shuffle=True, seed=11, mode="rgb"))
    levels = list(A.LevelBatches(ds).batches("train", 5, shuffle=True, seed=11))
    assert len(plain) == len(levels) > 1
    for step, ((x, y), (q, yq)) in enumerate(zip(plain, levels)):
        xa, ya = A.augment_batch(q, yq, A.OFF, 0, 0, step, len(ds.classes), lut=lut)
        assert np.array_equal(xa, x) and np.array_equal(ya, y)


@pytest.mark.parametrize("crops", ["random", "fixed"])
def test_training_cuts_a_new_window_each_epoch(tiny_data, tmp_path, monkeypatch, crops):
    """--crops random: epoch e's training batches use Windows('random', seed, e); fixed: one window for the run;
    validation averages eval_crops evenly spaced windows."""
    from engine import train as tr
    from engine.config import TrainConfig
    from pipeline.dataset import Dataset

    seen = []
    real = Dataset.levels

    def spy(self, rows, windows=None):
        seen.append(windows)
        return real(self, rows, windows)

    monkeypatch.setattr(Dataset, "levels", spy)
    ds = Dataset(tiny_data)
    cfg = TrainConfig(model="cnn2_mono", epochs=2, batch_size=16, seed=3, progress=False, crops=crops,
                         eval_crops=2, checkpoint_every=0)
    tr.fit(ds, cfg, tmp_path / "run", log=lambda m: None)
    train_w = {w for w in seen if w.rule != "even"}
    assert {w.rule for w in train_w} == {crops}
    assert {w.epoch for w in train_w} == ({0, 1} if crops == "random" else {0}) and {w.seed for w in train_w} == {3}
    assert {w.n for w in seen if w.rule == "even"} == {2}
    first = [real(ds, ds.indices("train")[:4], w) for w in sorted(train_w, key=lambda w: w.epoch)]
    assert len(first) == (2 if crops == "random" else 1)
    if crops == "random":
        assert not np.array_equal(first[0], first[1])  # 3 s clips, 2 s windows: the crops move
