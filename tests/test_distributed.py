"""Data-parallel training over MPI ranks (engine/distributed.py, ``train --distributed``).

The unit tests need nothing; the MPI tests launch ``mpirun -n 2`` on the tiny
cnn2_mono dataset of tests/test_train.py (32 training images of 1 x 32 x 48)
and skip when mpi4py or mpirun is absent (CI installs both: .ci/run).
Every rank runs one Numba thread.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import distributed as D
from test_train import REPO, ckpt_extra, metrics_lines, no_time, tiny_data, weights  # noqa: F401 (fixture)


def test_shard_bounds_are_disjoint_contiguous_and_cover_the_batch():
    for n, k in ((16, 2), (17, 4), (5, 5), (32, 3)):
        b = [D.shard_bounds(n, r, k) for r in range(k)]
        assert b[0][0] == 0 and b[-1][1] == n
        assert all(b[i][1] == b[i + 1][0] for i in range(k - 1))
        assert max(s - a for a, s in b) - min(s - a for a, s in b) <= 1
    with pytest.raises(D.DistributedError, match="cannot be split over 4 ranks"):
        D.shard_bounds(3, 0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shard_draws_give_the_rows_of_one_global_draw(dtype):
    """Dropout masks are a function of the global sample index: rank r's draws are rows of the global draw."""
    from kernels.cpu.dropout import make_rng

    n_global, feat = 7, 5
    full = make_rng(3).random(n_global * feat, dtype=dtype).reshape(n_global, feat)
    rngs = [make_rng(3) for _ in range(3)]
    for r, rng in enumerate(rngs):
        a, b = D.shard_bounds(n_global, r, 3)
        x = np.zeros((b - a, feat), dtype)
        out = np.empty_like(x).reshape(-1)
        D.shard_draws(rng, x, a, n_global).random(dtype=dtype, out=out)
        np.testing.assert_array_equal(out.reshape(b - a, feat), full[a:b])
    states = [rng.bit_generator.state for rng in rngs]
    assert states[0] == states[1] == states[2]  # every rank's generator ends where one process's does


def test_batchnorm_stats_split_adds_up_over_shards():
    """Sums of two shards with a common shift give the whole batch's statistics (the SyncBatchNorm identity)."""
    from kernels.cpu import batchnorm as bn

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 4, 5, 6)) * 2 + 3).astype(np.float32)
    g, b = rng.random(4).astype(np.float32) + 0.5, rng.standard_normal(4).astype(np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    out, sm, si = np.empty_like(x), np.empty(4), np.empty(4)
    bn.batchnorm_forward_train(out, sm, si, x, g, b, rm.copy(), rv.copy(), 0.1, 1e-5)
    shift = np.full(4, 2.5)
    tot = np.zeros((2, 4))
    for part in (x[:3], x[3:]):
        s = np.empty((2, 4))
        bn.batchnorm_stats(s, np.ascontiguousarray(part), shift)
        tot += s
    sm2, si2, rm2, rv2 = np.empty(4), np.empty(4), rm.copy(), rv.copy()
    bn.batchnorm_stats_finish(sm2, si2, tot, shift, 8 * 30, rm2, rv2, 0.1, 1e-5)
    np.testing.assert_allclose(sm2, sm, rtol=1e-12)
    np.testing.assert_allclose(si2, si, rtol=1e-10)
    out2 = np.empty_like(x)
    bn.batchnorm_apply_train(out2, x, sm2, si2, g, b)
    np.testing.assert_allclose(out2, out, atol=1e-5)
    # backward: split sums + apply == the one-call backward
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dg, db = np.empty_like(x), np.zeros(4, np.float32), np.zeros(4, np.float32)
    bn.batchnorm_backward(dx, dg, db, dy, x, sm, si, g)
    sums, dg2, db2, dx2 = np.empty((2, 4)), np.zeros(4, np.float32), np.zeros(4, np.float32), np.empty_like(x)
    bn.batchnorm_backward_sums(sums, dy, x, sm)
    bn.batchnorm_backward_params(dg2, db2, sums, si)
    bn.batchnorm_backward_apply(dx2, dy, x, sm, si, g, sums, 8 * 30)
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(dg2, dg)
    np.testing.assert_array_equal(db2, db)


def test_distributed_without_mpi4py_is_a_clear_error(monkeypatch, capsys):
    import cli

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert cli.main(["train", "--distributed", "--quiet"]) == 2
    assert "--distributed needs mpi4py" in capsys.readouterr().err


# ----------------------------------------------------------------------------- under mpirun

MPIRUN = shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not (MPIRUN and HAVE_MPI4PY), reason="needs mpirun and mpi4py (pip install -e '.[mpi]')")

ARGS = ["--model", "cnn2_mono", "--quiet", "--epochs", "10", "--batch-size", "16", "--dropout", "0.4", "--sync-bn",
        "--lr", "1e-3"]
ENV = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))


def mpirun(n, args, **kw):
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return subprocess.Popen(cmd + ["-x", "NUMBA_NUM_THREADS", "-x", "PYTHONPATH", "-x", "NUMBA_CACHE_DIR",
                                   sys.executable, str(REPO / "cli.py"), "train"] + list(args) + ["--distributed"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(p, timeout=300):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def dist_run(tiny_data, tmp_path_factory):
    """One uninterrupted 2-rank --sync-bn run (20 Adam steps) and one identical run."""
    base = tmp_path_factory.mktemp("dist")
    runs = []
    for name in ("a", "b"):
        rc, out, err = finish(mpirun(2, ["--data", str(tiny_data), "--out", str(base / name)] + ARGS))
        assert rc == 0, err[-3000:]
        runs.append(base / name)
    return runs


@needs_mpi
@pytest.mark.slow
def test_two_ranks_sync_bn_match_one_process_after_20_adam_steps(dist_run, tiny_data, tmp_path):
    """K=2, per-rank batch 8, --sync-bn, dropout 0.4 == one process, batch 16, within float32 rounding.

    Not bit-exact: the GEMMs of 8 rows and the float32 sum of two ranks'
    gradients round differently from one GEMM over 16 rows, and the BN sums
    run in another order (and around another shift). Tolerance: 99 % of the
    elements of every weight within 1e-6 + 1e-5|w|; every element within
    2 * lr * steps, the most Adam can move a weight whose gradient is rounding
    noise. The conv biases before a BatchNorm have an exact gradient of 0
    (BN removes any per-channel offset), so their Adam updates are pure noise
    and they (and the running means they shift) get only the Adam bound.
    """
    single = tmp_path / "single"
    p = subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--data", str(tiny_data), "--out", str(single)]
                       + ARGS, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, s = weights(dist_run[0] / "checkpoints" / "last.npz"), weights(single / "checkpoints" / "last.npz")
    assert ckpt_extra(dist_run[0] / "checkpoints" / "last.npz")["global_step"] == 20
    bound = 2 * 1e-3 * 20
    pre_bn_bias = {"model/0.bias", "model/4.bias", "model/1.running_mean", "model/5.running_mean"}
    for k in a:
        if not k.startswith("model/"):
            continue
        d = np.abs(a[k].astype(np.float64) - s[k])
        assert d.max() <= bound, (k, d.max())
        if k not in pre_bn_bias:
            ok = d <= 1e-6 + 1e-5 * np.abs(s[k])
            assert ok.mean() >= 0.99, (k, ok.mean(), d.max())
    la, ls = metrics_lines(dist_run[0]), metrics_lines(single)
    np.testing.assert_allclose([r["train_loss"] for r in la], [r["train_loss"] for r in ls], rtol=1e-4)
    assert [r["train_acc"] for r in la] == [r["train_acc"] for r in ls]


@needs_mpi
@pytest.mark.slow
def test_two_identical_distributed_runs_are_bit_identical_and_rank0_writes(dist_run):
    a, b = (weights(r / "checkpoints" / "last.npz") for r in dist_run)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert no_time(metrics_lines(dist_run[0])) == no_time(metrics_lines(dist_run[1]))
    assert ckpt_extra(dist_run[0] / "checkpoints" / "last.npz")["world_size"] == 2
    for f in ("config.json", "report.json", "curves.png", "checkpoints/best.npz"):
        assert (dist_run[0] / f).is_file(), f
    assert json.loads((dist_run[0] / "config.json").read_text())["train"]["sync_bn"] is True


def _rank_pid(parent, rank, timeout=60):
    """PID of MPI rank ``rank`` among the descendants of ``parent`` (from its OMPI_COMM_WORLD_RANK)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                env = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and b"NUMBA_NUM_THREADS=1" in env:
                cmd = (d / "cmdline").read_bytes()
                if b"cli.py" in cmd and str(parent).encode() in cmd:
                    return int(d.name)
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} not found")


@needs_mpi
@pytest.mark.slow
def test_killed_rank_stops_the_job_naming_it_and_resume_gives_the_same_weights(dist_run, tiny_data, tmp_path):
    out = tmp_path / "killed"
    p = mpirun(2, ["--data", str(tiny_data), "--out", str(out)] + ARGS + ["--step-delay", "0.3"])
    last = out / "checkpoints" / "last.npz"
    t0 = time.time()
    while not (last.is_file() and ckpt_extra(last)["global_step"] >= 3):
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < 240
        time.sleep(0.2)
    os.kill(_rank_pid(out, 1), signal.SIGKILL)
    rc, _, err = finish(p, timeout=120)
    assert rc != 0
    assert "rank 1" in err, err[-3000:]  # mpirun: "process rank 1 with PID ... exited on signal 9 (Killed)"
    step = ckpt_extra(last)["global_step"]  # the checkpoint on disk is complete and loadable
    assert 3 <= step < 20
    rc, _, err = finish(mpirun(2, ["--resume", "--out", str(out), "--quiet"]))
    assert rc == 0, err[-3000:]
    a, b = weights(dist_run[0] / "checkpoints" / "last.npz"), weights(last)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert no_time(metrics_lines(out)) == no_time(metrics_lines(dist_run[0]))


@needs_mpi
def test_batch_that_does_not_divide_by_the_ranks_is_a_clear_error(tiny_data, tmp_path):
    rc, _, err = finish(mpirun(2, ["--data", str(tiny_data), "--out", str(tmp_path / "r"), "--model", "cnn2_mono",
                                   "--quiet", "--batch-size", "15", "--epochs", "1"]))
    assert rc == 2
    assert "--batch-size 15 does not divide by the 2 ranks" in err


class _TwinComm:
    """A stand-in communicator of two identical ranks: Allreduce(SUM) doubles the buffer."""

    def Allreduce(self, sendbuf, recvbuf, op=None):
        recvbuf *= 2


def _fake_dist(device_allreduce=None):
    import types

    d = object.__new__(D.Distributed)
    d.comm, d.MPI, d.device_allreduce, d.allreduce_seconds, d._flat = \
        _TwinComm(), types.SimpleNamespace(IN_PLACE=None, SUM=None), \
        device_allreduce, 0.0, None
    return d


def test_allreduce_grads_packs_in_parameter_order_and_unpacks_every_gradient():
    from engine import models

    m = models.build("cnn2_mono", in_shape=(1, 16, 24), n_classes=3, dropout=0.0, seed=0)
    rng = np.random.default_rng(0)
    before = []
    for _, _, g in m.parameters():
        g[...] = rng.standard_normal(g.shape)
        before.append(g.copy())
    _fake_dist().allreduce_grads(m)
    for (_, _, g), b in zip(m.parameters(), before):
        np.testing.assert_array_equal(g, 2 * b)


@needs_mpi
@pytest.mark.slow
def test_grid_distributed_divides_the_runs_and_rank0_writes_the_table(tiny_data, tmp_path):
    cmd = [MPIRUN, "-n", "2", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    p = subprocess.run(cmd + ["-x", "NUMBA_NUM_THREADS", "-x", "PYTHONPATH", "-x", "NUMBA_CACHE_DIR", sys.executable,
                              str(REPO / "cli.py"), "grid", "--data", str(tiny_data), "--model", "cnn2_mono",
                              "--lr", "1e-3,5e-4", "--batch-size", "16", "--dropout", "0.4", "--epochs", "1",
                              "--quiet", "--out", str(tmp_path / "g"), "--distributed"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d.name for d in (tmp_path / "g").iterdir() if d.is_dir())
    assert runs == ["cnn2_mono_lr0.0005_bs16_do0.4_wd0", "cnn2_mono_lr0.001_bs16_do0.4_wd0"]
    for r in runs:  # each run single-process, complete
        assert (tmp_path / "g" / r / "report.json").is_file()
        assert ckpt_extra(tmp_path / "g" / r / "checkpoints" / "last.npz")["world_size"] == 1
    table = (tmp_path / "g" / "grid.md").read_text()
    assert all(r in table for r in runs)
