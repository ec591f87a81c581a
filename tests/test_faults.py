"""Faults (issue 10, items 1-7): full disks, concurrent and killed preprocess runs, damaged caches,
non-finite and unwritable checkpoints. Nothing lost, no crash without a one-line message, no stray
processes. Disks are small tmpfs mounts in a private mount namespace (skipped where that is not
permitted) or injected ``OSError(ENOSPC)``."""
import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cli
from faults import REPO, SPEC, alive, cli_cmd, cli_env, make_folder, prep_args, processes_mentioning, run_on_tmpfs
from pipeline import cachefile
from pipeline.dataset import Dataset

FULL_SPEC = SPEC[:8] + SPEC[12:]  # no --height / --width: 102 x 159, 475 KiB of images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("faults") / "S")


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    """(out root, dataset dir) of the tiny folder's cache (32 x 48 images)."""
    root = tmp_path_factory.mktemp("built")
    assert cli.main(prep_args(folder, root)) == 0
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return root, d


# ---------------------------------------------------------------- 1. disk full during preprocess

@pytest.mark.parametrize("size,bad_file,needed", [("256k", "work/images.npy", "1.4 MiB"),
                                                  ("1700k", "images.npy.tmp", "475.1 KiB")])
def test_disk_full_preprocess_is_one_line_exit_2_and_stops_workers(folder, tmp_path, size, bad_file, needed):
    """256 KiB: the work file (30 rows of 3 s clips, 102 x 476) cannot be allocated; 1700 KiB: every track is
    done, the final file (rows as wide as the widest clip kept: 102 x 159) cannot be."""
    mnt = tmp_path / f"disk{size}"
    r = run_on_tmpfs(mnt, size, cli_cmd(prep_args(folder, mnt, spec=FULL_SPEC, workers="2")))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: cannot write "), r.stderr
    assert bad_file in r.stderr and f"No space left on device (needs {needed}" in r.stderr
    assert "Bus error" not in r.stderr and "Traceback" not in r.stderr
    time.sleep(0.5)
    assert processes_mentioning(str(mnt)) == []  # no worker left behind


def test_injected_enospc_at_the_final_file_stops_the_workers(folder, tmp_path, monkeypatch):
    import multiprocessing

    real = os.posix_fallocate
    calls = []

    def fallocate(fd, off, n):
        calls.append(n)
        if len(calls) == 2:  # the final images.npy, after every track was decoded by the workers
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, off, n)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    from pipeline import prepare as pprep
    from pipeline.spectrogram import SpectrogramConfig

    cfg = SpectrogramConfig(sr=8000, crop_seconds=1.0, n_fft=256, hop_length=32, height=32, width=48)
    with pytest.raises(cachefile.CacheWriteError, match=r"images\.npy\.tmp: No space left on device \(needs 45\.0"):
        pprep.prepare_folder(folder, tmp_path, config=cfg, label_regex=r"^(\d)_", workers=2, progress=False)
    assert multiprocessing.active_children() == []
    (d,) = list(tmp_path.iterdir())
    assert list((d / "work" / "chunks").iterdir())  # finished tracks are kept for the rerun
    monkeypatch.setattr(os, "posix_fallocate", real)
    pprep.prepare_folder(folder, tmp_path, config=cfg, label_regex=r"^(\d)_", workers=0, progress=False)
    assert len(Dataset(d)) == 30


def test_create_npy_allocates_before_mapping(tmp_path):
    m = cachefile.create_npy(tmp_path / "a.npy", (3, 4, 5), np.uint8)
    assert os.stat(tmp_path / "a.npy").st_blocks * 512 >= 60  # blocks exist before any write
    m[:] = 7
    m.flush()
    del m
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.full((3, 4, 5), 7, np.uint8))


# ---------------------------------------------------------------- 3. two preprocess runs at once

def _dataset_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("dataset ready:"))


def test_second_preprocess_waits_for_the_lock_then_reuses(folder, built, tmp_path):
    root, d = built
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    dd = copy / d.name
    with open(dd / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # another run holds the cache
        f.truncate(0)
        f.write("4242")
        f.flush()
        p = subprocess.Popen(cli_cmd(prep_args(folder, copy)), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        line = p.stderr.readline()
        assert line.startswith("waiting: another preprocess (pid 4242) is building") and str(dd) in line
        time.sleep(0.3)
        assert p.poll() is None  # it waits
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert _dataset_line(out) == f"dataset ready: {dd}  classes ['0', '1', '2']  images " \
                                 f"{{'train': 24, 'val': 3, 'test': 3}}  windows 32x48 cut from clips of up to 48 columns"


def test_two_preprocess_runs_at_once_both_succeed(folder, tmp_path):
    procs = [subprocess.Popen(cli_cmd(prep_args(folder, tmp_path, workers="1")), cwd=REPO, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, res):
        assert p.returncode == 0, err
        assert "Bus error" not in err and "Traceback" not in err
    assert _dataset_line(res[0][0]) == _dataset_line(res[1][0])
    (d,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    ds = Dataset(d)
    assert len(ds) == 30 and ds.manifest["computed_this_run"] == 30  # built once, by one of them


# ---------------------------------------------------------------- 4. a killed parent takes its workers along

def test_workers_exit_when_the_preprocess_parent_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from pipeline.cache import _worker_main\n"
        "from pipeline.spectrogram import SpectrogramConfig\n"
        "from pipeline.workers import Supervisor\n"
        "sup = Supervisor(2, _worker_main, (SpectrogramConfig().to_dict(), 0), 60.0)\n"
        "print(' '.join(str(pid) for pid in sup.pids), flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                              text=True)
    pids = [int(x) for x in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:  # do not leave them behind when the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, "workers outlived their killed parent"
    assert parent.stdout.read() == ""  # EOF: no worker keeps the parent's stdout open


# ---------------------------------------------------------------- 5, 6. damaged cache files

def _damaged_copy(built, tmp_path, name, damage):
    root, d = built
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    p = copy / d.name / name
    data = p.read_bytes()
    p.write_bytes(damage(data))
    return copy, copy / d.name, p


DAMAGES = {
    "truncated images": ("images.npy", lambda b: b[: len(b) // 2], "is truncated or padded"),
    "random images": ("images.npy", lambda b: np.random.default_rng(0).bytes(len(b)), "is not a NumPy .npy array"),
    "flipped label": ("labels.npy", lambda b: b[:-1] + bytes([b[-1] ^ 1]), "content checksum differs"),
    "truncated manifest": ("manifest.json", lambda b: b[: len(b) // 3], "is damaged (JSONDecodeError"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_damaged_cache_is_named_then_rebuilt(folder, built, tmp_path, capsys, case):
    name, damage, what = DAMAGES[case]
    copy, d, bad = _damaged_copy(built, tmp_path, name, damage)
    with pytest.raises(cachefile.DamagedCache) as e:
        Dataset(d)
    assert str(e.value).startswith(f"{bad} {what}") or str(e.value).startswith(f"{bad}: {what}"), str(e.value)
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(d), "--out", str(tmp_path / "run"), "--model", "cnn2_mono", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}") and err.count("\n") == 1, err
    assert "rebuild" in err and not (tmp_path / "run").exists()
    # the next preprocess (same command) rebuilds it, to the same data
    assert cli.main(prep_args(folder, copy)) == 0
    assert f"{bad}" in capsys.readouterr().err
    fresh, orig = Dataset(d), Dataset(built[1])
    np.testing.assert_array_equal(fresh.images, orig.images)
    np.testing.assert_array_equal(fresh.labels, orig.labels)


def test_manifest_records_the_files(built):
    man = json.loads((built[1] / "manifest.json").read_text())
    assert set(man["files"]) == set(cachefile.ARRAY_FILES)
    assert man["files"]["images.npy"]["shape"] == [30, 32, 48]
    assert man["files"]["images.npy"]["bytes"] == (built[1] / "images.npy").stat().st_size


# ---------------------------------------------------------------- 2, 7. checkpoints

def _train(data, out, *extra):
    return cli.main(["train", "--data", str(data), "--out", str(out), "--model", "cnn2_mono", "--quiet",
                     "--batch-size", "8", "--epochs", "2", *extra])


def _weights(path):
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files if k != "meta"}


def _meta(path):
    with np.load(path) as z:
        return json.loads(str(z["meta"]))["extra"]


def _failing_savez(monkeypatch, fail):
    """np.savez raising ENOSPC on the calls whose 1-based number is in ``fail`` (a container or a predicate)."""
    real = np.savez
    n = [0]

    def savez(f, **arrays):
        n[0] += 1
        if (fail(n[0]) if callable(fail) else n[0] in fail):
            f.write(b"x" * 100)  # a partial archive, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    return n


def test_checkpoint_enospc_keeps_training_in_memory(built, tmp_path, capsys, monkeypatch):
    """Writes 3-5 fail (the previous last.npz stays readable), later ones succeed: nothing is lost."""
    data = built[1]
    assert _train(data, tmp_path / "ref", "--checkpoint-every", "1") == 0
    capsys.readouterr()
    run = tmp_path / "run"
    _failing_savez(monkeypatch, {3, 4, 5})
    assert _train(data, run, "--checkpoint-every", "1") == 0
    out = capsys.readouterr().out
    last = run / "checkpoints" / "last.npz"
    best = run / "checkpoints" / "best.npz"
    # write 3 = last.npz at step 3, write 4 = the first best.npz, write 5 = last.npz again: one line per file
    warn = [ln for ln in out.splitlines() if ln.startswith("warning: cannot write checkpoint")]
    assert len(warn) == 2 and all("No space left on device" in w and "kept in memory" in w for w in warn)
    assert warn[0].startswith(f"warning: cannot write checkpoint {last}:") and "the previous one is intact" in warn[0]
    assert warn[1].startswith(f"warning: cannot write checkpoint {best}:") and "there is no earlier one" in warn[1]
    assert f"checkpoint {last} written" in out and f"checkpoint {best} written" in out
    assert not list((run / "checkpoints").glob(".tmp-*"))  # no partial archives left
    ref, got = _weights(tmp_path / "ref" / "checkpoints" / "last.npz"), _weights(last)
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)


def test_checkpoint_enospc_to_the_end_stops_with_the_resume_command(built, tmp_path, capsys, monkeypatch):
    data = built[1]
    run = tmp_path / "run"
    _failing_savez(monkeypatch, lambda k: k >= 3)  # steps 1, 2 are written, nothing after
    assert _train(data, run, "--checkpoint-every", "1") == 4
    err = capsys.readouterr().err
    last = run / "checkpoints" / "last.npz"
    assert f"could not write {last}" in err and f"{last} holds step 2" in err
    assert f"resume with: python cli.py train --resume --out {run}" in err
    assert _meta(last)["global_step"] == 2  # the previous checkpoint is intact
    monkeypatch.undo()
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_resume_after_every_write_failed_does_not_say_nothing_was_trained(built, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _failing_savez(monkeypatch, lambda k: True)
    assert _train(data := built[1], run, "--checkpoint-every", "0") == 4
    assert "no checkpoint is on disk, so a resume starts the run over" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nothing was trained" not in out
    assert "metrics.jsonl records 2 finished epochs, but no checkpoint was written" in out
    assert data.is_dir()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_non_finite_weights_are_never_checkpointed(built, tmp_path, capsys):
    run = tmp_path / "run"
    rc = _train(built[1], run, "--lr", "1e38", "--checkpoint-every", "1")
    err = capsys.readouterr().err
    last = run / "checkpoints" / "last.npz"
    # the float32 Adam step overflows at step 1: caught at its checkpoint, before the write
    assert rc == 3 and "NonFiniteWeights: the weights / optimizer state became non-finite by step 1" in err, err
    assert f"{last} not saved: non-finite values (NaN or inf) in model/0.weight" in err
    assert "The last good checkpoint is kept: (none saved yet)" in err
    assert not last.exists()


def test_save_checkpoint_refuses_non_finite_state(tmp_path):
    from engine import models
    from engine.checkpoint import NonFiniteState, save_checkpoint

    m = models.build("cnn2_mono", in_shape=(1, 16, 24))
    save_checkpoint(tmp_path / "a.npz", m)
    before = (tmp_path / "a.npz").read_bytes()
    m.layers[0].params["weight"][0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteState, match=r"a\.npz not saved: non-finite values \(NaN or inf\) in model/0\.weight"):
        save_checkpoint(tmp_path / "a.npz", m)
    assert (tmp_path / "a.npz").read_bytes() == before


def test_checkpoint_on_a_full_20mb_disk_is_named_and_the_run_says_how_to_resume(built, tmp_path):
    """A real full disk: cnn2_mono's checkpoint (weights + Adam moments, about 38 MiB) never fits a 20 MB tmpfs."""
    mnt = tmp_path / "disk"
    run = mnt / "run"
    r = run_on_tmpfs(mnt, "20m", cli_cmd(["train", "--data", built[1], "--out", run, "--model", "cnn2_mono",
                                          "--quiet", "--batch-size", "8", "--epochs", "1"]))
    assert r.returncode == 4, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"warning: cannot write checkpoint {run / 'checkpoints' / 'last.npz'}: No space left on device" in r.stdout
    assert f"could not write {run / 'checkpoints'}" in r.stderr and "no checkpoint is on disk" in r.stderr
    assert f"resume with: python cli.py train --resume --out {run}" in r.stderr
