"""``--device gpu`` as a whole: one-launch Adam, the GPU training loop, resumable GPU Dropout, checkpoints.

Two kinds of tests:

* CPU tests (always run): Adam's dispatch between one multi-tensor launch
  and the per-tensor loop, Dropout states kept across devices, and
  ``python cli.py train --device gpu`` without CUDA (clear error, exit 2).
* ``gpu`` tests: run on a real GPU, or without one under the CPU emulation
  of ``tests/gpu_emulate.py`` (the real launchers over NumPy and the CUDA
  sources compiled for the host): :func:`test_gpu_tests_pass_under_cpu_emulation`
  runs this file again in a subprocess with ``HITCNN_GPU_EMULATE=1``. They
  train tiny models through ``engine.train.fit`` on an in-memory dataset
  (30 images of 1 x 16 x 24), check bit-exact resume of a GPU run, the
  number of host reads per step, and checkpoint / ``to()`` round trips.

The emulation cannot check asynchrony (its streams are synchronous) or speed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EMULATED = bool(os.environ.get("HITCNN_GPU_EMULATE"))
if EMULATED:
    _spec = importlib.util.spec_from_file_location("hitcnn_gpu_emulate", REPO / "tests" / "gpu_emulate.py")
    _emu = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_emu)
    _emu.install()

TIME_KEYS = {"seconds", "images_per_s", "data_wait_share", "peak_rss_mib"}


# ============================================================================ CPU tests
def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(8, 3, 3, 3), (8,), (300, 7), (3,)]
    return [(f"{i}.w", rng.standard_normal(s).astype(np.float32), np.zeros(s, np.float32))
            for i, s in enumerate(shapes)], rng


def test_adam_uses_one_multi_launch_when_the_backend_has_it(monkeypatch):
    """A backend with adam_update_multi gets ONE call per step, with the same result as the per-tensor loop."""
    import kernels
    from engine.optim import Adam

    cpu_adam = kernels.get_backend("cpu").adam
    assert not hasattr(cpu_adam, "adam_update_multi")  # the CPU backend has none: per-tensor path
    params_a, rng = _tensors()
    params_b = [(n, p.copy(), g) for n, p, g in params_a]
    oa, ob = Adam(params_a, lr=1e-2, weight_decay=1e-3), Adam(params_b, lr=1e-2, weight_decay=1e-3)
    calls = []

    def multi(ps, gs, ms, vs, *args):  # a stand-in multi-tensor kernel: the per-tensor kernel in a loop
        calls.append(len(ps))
        for p, g, m, v in zip(ps, gs, ms, vs):
            cpu_adam.adam_update(p, g, m, v, *args)

    for _ in range(3):
        for (_, _, ga), (_, _, gb) in zip(params_a, params_b):
            ga[...] = gb[...] = rng.standard_normal(ga.shape).astype(np.float32)
        oa.step()  # per-tensor (no multi yet)
        monkeypatch.setattr(cpu_adam, "adam_update_multi", multi, raising=False)
        ob.step()  # one "launch"
        monkeypatch.delattr(cpu_adam, "adam_update_multi")
    assert calls == [4, 4, 4]
    for (n, pa, _), (_, pb, _) in zip(params_a, params_b):
        assert np.array_equal(pa, pb), n
        assert np.array_equal(oa.m[n], ob.m[n]) and np.array_equal(oa.v[n], ob.v[n]), n
    assert oa.step_count == ob.step_count == 3


def test_adam_falls_back_to_per_tensor_on_mixed_dtypes(monkeypatch):
    """Parameters of two dtypes cannot share one launch: the per-tensor loop runs (no multi call)."""
    import kernels
    from engine.optim import Adam

    params, _ = _tensors()
    params[1] = (params[1][0], params[1][1].astype(np.float64), params[1][2].astype(np.float64))
    called = []
    monkeypatch.setattr(kernels.get_backend("cpu").adam, "adam_update_multi", lambda *a: called.append(1),
                        raising=False)
    opt = Adam(params)
    before = [p.copy() for _, p, _ in params]
    for _, _, g in params:
        g[...] = 1.0
    opt.step()
    assert not called
    assert all(not np.array_equal(b, p) for b, (_, p, _) in zip(before, params))


def test_dropout_keeps_a_state_of_the_other_device_for_later():
    """A GPU-generator state loaded into a CPU layer leaves the CPU stream alone (applied on a later move)."""
    from engine.layers import Dropout

    a, b = Dropout(0.5, seed=4), Dropout(0.5, seed=4)
    x = np.ones((4, 16), np.float32)
    a.set_rng_state({"bit_generator": "hitcnn-splitmix64-counter", "seed": 4, "offset": 96})
    assert a._pending["gpu"]["offset"] == 96
    assert a.rng_state() == b.rng_state()  # the CPU state is untouched
    assert np.array_equal(a.forward(x), b.forward(x).copy())
    with pytest.raises(ValueError, match="bit_generator"):
        a.set_rng_state([1, 2])


def _cuda_present():
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(EMULATED, reason="the emulation stands in for CuPy: the CLI would see a 'GPU'")
def test_cli_train_device_gpu_without_cuda_exits_2_with_a_clear_message(tmp_path):
    if _cuda_present():
        pytest.skip("a CUDA device is present")
    res = subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--device", "gpu", "--out",
                          str(tmp_path / "run"), "--epochs", "1"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert "--device gpu" in res.stderr and ("CuPy" in res.stderr or "CUDA" in res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.skipif(EMULATED or shutil.which("g++") is None, reason="g++ not installed (or already emulated)")
def test_gpu_tests_pass_under_cpu_emulation():
    env = dict(os.environ, HITCNN_GPU_EMULATE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", str(Path(__file__))]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    tail = "\n".join(res.stdout.splitlines()[-30:])
    assert res.returncode == 0, f"emulated GPU integration tests failed:\n{tail}\n{res.stderr[-2000:]}"
    m = re.search(r"(\d+) passed", tail)
    assert m and int(m.group(1)) >= 8 and " failed" not in tail and "skipped" not in tail, tail


# ============================================================================ GPU tests (real or emulated)
@pytest.fixture
def cp():
    return pytest.importorskip("cupy")


class TinyData:
    """In-memory stand-in for pipeline.dataset.Dataset: 30 images 1 x 16 x 24, 3 learnable classes."""

    def __init__(self):
        r = np.random.default_rng(0)
        self.classes = ["a", "b", "c"]
        self.labels = r.integers(0, 3, 30).astype(np.int64)
        self.images = r.random((30, 1, 16, 24)).astype(np.float32)
        self.images[:, 0, :4, :] += self.labels[:, None, None] * 0.5
        self.split = np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5)

    def image_shape(self, mode=None):
        return (1, 16, 24)

    def batches(self, split, batch_size, shuffle=True, seed=0, mode=None, drop_last=False, prefetch=2,
                windows=None):
        n = 1 if windows is None else windows.n  # 'even' windows of a clip: here copies of its one image
        idx = np.flatnonzero(self.split == split)
        if shuffle:
            idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        for i in range(0, len(idx), batch_size):
            j = idx[i:i + batch_size]
            yield np.repeat(self.images[j], n, axis=0), np.repeat(self.labels[j], n)


def _cfg(**kw):
    from engine.config import TrainConfig

    base = dict(model="cnn2_mono", epochs=2, batch_size=6, device="gpu", progress=False, checkpoint_every=0, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _fit(out, quiet=True, resume=False, max_steps=None, **kw):
    from engine.train import fit

    return fit(TinyData(), _cfg(**kw), out, resume=resume, log=(lambda *a: None) if quiet else print,
               max_steps=max_steps)


def _npz(path):
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files}


def _no_time(hist):
    return [{k: v for k, v in h.items() if k not in TIME_KEYS} for h in hist]


@pytest.mark.gpu
def test_counter_rng_is_splitmix64_by_counter(cp):
    """Device draws equal a plain-Python SplitMix64 at the same counters, however the draws are split."""
    from kernels.gpu.dropout import CounterRNG, make_rng

    mask = (1 << 64) - 1

    def mix(z):
        z &= mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    key = mix(11)
    want64 = np.array([(mix(key + (k + 1) * 0x9E3779B97F4A7C15) >> 11) * 2.0 ** -53 for k in range(40)])
    want32 = np.array([(mix(key + (k + 1) * 0x9E3779B97F4A7C15) >> 40) * 2.0 ** -24 for k in range(40)], np.float32)
    r = make_rng(11)
    got = np.concatenate([r.random(n, dtype=np.float64).get() for n in (7, 1, 32)])
    assert np.array_equal(got, want64)
    assert r.state == {"bit_generator": CounterRNG.KIND, "seed": 11, "offset": 40}
    assert np.array_equal(make_rng(11).random(40, dtype=np.float32).get(), want32)
    r2 = make_rng(0)
    r2.state = {"bit_generator": CounterRNG.KIND, "seed": 11, "offset": 7}
    assert np.array_equal(r2.random(33, np.float64).get(), want64[7:])
    u = make_rng(3).random(200_000, np.float32).get()
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
    with pytest.raises(ValueError, match="bit_generator"):
        r2.state = {"bit_generator": "PCG64", "state": {}}


@pytest.mark.gpu
def test_gpu_dropout_layer_resumes_its_masks_exactly(cp):
    from engine.layers import Dropout

    x = cp.asarray(np.random.default_rng(2).standard_normal((6, 64)).astype(np.float32))
    a = Dropout(0.4, seed=9).to("gpu")
    for _ in range(3):
        a.forward(x)
    st = json.loads(json.dumps(a.rng_state()))  # what a checkpoint stores
    assert st["offset"] == 3 * x.size
    want = [a.forward(x).get() for _ in range(2)]
    b = Dropout(0.4, seed=9).to("gpu")
    b.set_rng_state(st)
    got = [b.forward(x).get() for _ in range(2)]
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    keep = (want[0] != 0).mean()
    assert 0.4 < keep < 0.8  # ~0.6 of 384 units kept


@pytest.mark.gpu
def test_adam_one_launch_on_gpu_is_bit_identical_to_per_tensor(cp, monkeypatch):
    import kernels
    from engine.losses import SoftmaxCrossEntropy
    from engine.models import build
    from engine.optim import Adam

    gadam = kernels.get_backend("gpu").adam
    launches = []
    real_multi = gadam.adam_update_multi
    monkeypatch.setattr(gadam, "adam_update_multi", lambda *a: (launches.append(1), real_multi(*a)))
    rng = np.random.default_rng(4)
    x = cp.asarray(rng.random((4, 1, 16, 24)).astype(np.float32))
    y = cp.asarray(np.array([0, 1, 2, 1], np.int64))
    ma, mb = build("cnn2_mono", in_shape=(1, 16, 24), seed=2).to("gpu"), build("cnn2_mono", in_shape=(1, 16, 24),
                                                                           seed=2).to("gpu")
    oa, ob = Adam(ma, weight_decay=1e-4), Adam(mb, weight_decay=1e-4)
    ob._multi_args = None  # force the per-tensor loop
    for m, o in ((ma, oa), (mb, ob)):
        loss = SoftmaxCrossEntropy()
        for _ in range(3):
            m.zero_grad()
            loss.forward(m.forward(x), y)
            m.backward(loss.backward())
            o.step()
    assert len(launches) == 3  # one launch per step for the whole model
    for (n, pa, _), (_, pb, _) in zip(ma.parameters(), mb.parameters()):
        assert np.array_equal(pa.get(), pb.get()), n
        assert np.array_equal(oa.m[n].get(), ob.m[n].get()) and np.array_equal(oa.v[n].get(), ob.v[n].get()), n


def _steps(model, opt, batches):
    from engine.losses import SoftmaxCrossEntropy

    crit, out = SoftmaxCrossEntropy(), []
    for x, y in batches:
        model.zero_grad()
        out.append(crit.forward(model.forward(x), y))
        model.backward(crit.backward())
        opt.step()
    return out


@pytest.mark.gpu
def test_model_to_gpu_and_back_round_trips(cp):
    """cpu -> gpu -> cpu keeps every array and the CPU Dropout stream: training continues bit for bit."""
    from engine.models import build
    from engine.optim import Adam

    rng = np.random.default_rng(5)
    batches = [(rng.random((4, 1, 16, 24)).astype(np.float32), rng.integers(0, 3, 4).astype(np.int64))
               for _ in range(2)]
    ref = build("cnn2_mono", in_shape=(1, 16, 24), seed=6)
    moved = build("cnn2_mono", in_shape=(1, 16, 24), seed=6)
    _steps(ref, Adam(ref), batches[:1])  # both draw one dropout mask on the CPU first
    _steps(moved, Adam(moved), batches[:1])
    moved.to("gpu")
    assert all(isinstance(p, cp.ndarray) for _, p, _ in moved.parameters())
    moved.to("cpu")
    assert all(type(p) is np.ndarray for _, p, _ in moved.parameters())
    sa, sb = ref.state_dict(), moved.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa) and ref.rng_states() == moved.rng_states()
    assert _steps(ref, Adam(ref), batches) == _steps(moved, Adam(moved), batches)
    for (n, pa, _), (_, pb, _) in zip(ref.parameters(), moved.parameters()):
        assert np.array_equal(pa, pb), n


@pytest.mark.gpu
def test_gpu_checkpoint_round_trip_continues_bit_exactly(cp, tmp_path):
    from engine.checkpoint import load_checkpoint, save_checkpoint
    from engine.models import build
    from engine.optim import Adam

    rng = np.random.default_rng(7)
    batches = [(cp.asarray(rng.random((4, 1, 16, 24)).astype(np.float32)),
                cp.asarray(rng.integers(0, 3, 4).astype(np.int64))) for _ in range(4)]
    a = build("cnn2_mono", in_shape=(1, 16, 24), seed=8).to("gpu")
    oa = Adam(a)
    _steps(a, oa, batches[:2])
    save_checkpoint(tmp_path / "c.npz", a, oa, {"step": 2})
    b = build("cnn2_mono", in_shape=(1, 16, 24), seed=99).to("gpu")  # other weights and dropout stream
    ob = Adam(b)
    assert load_checkpoint(tmp_path / "c.npz", b, ob) == {"step": 2}
    assert b.rng_states() == a.rng_states() and ob.step_count == oa.step_count == 2
    assert all(isinstance(p, cp.ndarray) for _, p, _ in b.parameters())
    assert _steps(a, oa, batches[2:]) == _steps(b, ob, batches[2:])
    for (n, pa, _), (_, pb, _) in zip(a.parameters(), b.parameters()):
        assert np.array_equal(pa.get(), pb.get()), n


@pytest.mark.gpu
def test_fit_on_gpu_trains_and_resumes_bit_exactly(cp, tmp_path):
    """engine.train.fit on the GPU (dropout on): a run stopped mid-epoch and resumed equals an uninterrupted one."""
    full = _fit(tmp_path / "full", checkpoint_every=2)
    assert all(isinstance(p, cp.ndarray) for _, p, _ in full["model"].parameters())
    hist = full["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and all(np.isfinite(h["train_loss"]) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    # 20 train images, batch 6: 4 steps per epoch; stop after step 5 (epoch 2, batch 1), then resume
    part = _fit(tmp_path / "split", checkpoint_every=2, max_steps=5)
    assert part["stopped"] == "max_steps" and part["global_step"] == 5
    extra = json.loads(str(_npz(tmp_path / "split" / "checkpoints" / "last.npz")["meta"]))
    assert extra["extra"]["step_in_epoch"] == 1 and extra["rng"]  # the Dropout counter state is in the file
    assert next(iter(extra["rng"].values()))["bit_generator"] == "hitcnn-splitmix64-counter"
    resumed = _fit(tmp_path / "split", resume=True, checkpoint_every=2)
    assert _no_time(resumed["history"]) == _no_time(hist)
    wa, wb = _npz(tmp_path / "full" / "checkpoints" / "last.npz"), _npz(tmp_path / "split" / "checkpoints" / "last.npz")
    for k in wa:
        if k != "meta":
            assert np.array_equal(wa[k], wb[k]), k


@pytest.mark.gpu
def test_fit_on_gpu_matches_cpu_without_dropout(cp, tmp_path):
    """Same data order and initial weights: GPU and CPU epochs agree to float32 rounding (dropout off)."""
    g = _fit(tmp_path / "g", dropout=0.0, epochs=1)["history"][0]
    c = _fit(tmp_path / "c", dropout=0.0, epochs=1, device="cpu")["history"][0]
    assert abs(g["train_loss"] - c["train_loss"]) <= 1e-3 * abs(c["train_loss"])
    assert abs(g["val_loss"] - c["val_loss"]) <= 1e-3 * abs(c["val_loss"])
    # accuracies are counts of argmax hits: allow one image to flip on a near-tie (cuBLAS vs BLAS rounding)
    assert abs(g["train_acc"] - c["train_acc"]) <= 1 / 20 + 1e-12 and abs(g["val_acc"] - c["val_acc"]) <= 1 / 5 + 1e-12
    if EMULATED:  # NumPy stands in for cuBLAS: the same argmaxes here
        assert g["train_acc"] == c["train_acc"] and g["val_acc"] == c["val_acc"]


@pytest.mark.gpu
@pytest.mark.skipif(not EMULATED, reason="counts host reads by patching the emulated array class")
def test_fit_on_gpu_reads_the_host_once_per_step(cp, tmp_path, monkeypatch):
    """Per step exactly one device->host read (the loss); correct predictions are read once per epoch."""
    import engine.session as T

    reads = {"get": 0, "int": 0}
    real_get = cp.ndarray.get

    def get(self):
        reads["get"] += 1
        return real_get(self)

    def as_int(self):
        reads["int"] += 1
        return int(np.asarray(self).item())

    monkeypatch.setattr(cp.ndarray, "get", get)
    monkeypatch.setattr(cp.ndarray, "__int__", as_int, raising=False)
    # checkpoints copy every array to the host by design; count only the loop's reads (the correct count is
    # still read at the checkpoint, as in the real one)
    monkeypatch.setattr(T.Session, "checkpoint", lambda self, path=None: self.flush_correct() or True)
    monkeypatch.setattr(T, "evaluate_split", lambda *a, **k: (1.0, np.zeros(1, np.int64), np.zeros(1, np.int64),
                                                               np.zeros((1, 3), np.float32)))
    res = _fit(tmp_path / "r", epochs=1, checkpoint_every=0)
    steps = res["global_step"]
    assert steps == 4
    assert reads == {"get": steps, "int": 1}, reads
    acc = res["history"][0]["train_acc"]
    assert 0.0 <= acc <= 1.0 and acc * 20 == round(acc * 20)  # a count of the 20 train images


@pytest.mark.gpu
def test_cli_train_device_gpu_end_to_end(cp, tmp_path):
    """``python cli.py train --device gpu`` on a tiny demo dataset: run directory, report, GPU checkpoints."""
    import cli

    run = tmp_path / "run"
    rc = cli.main(["train", "--device", "gpu", "--out", str(run), "--model", "cnn2_mono", "--epochs", "2",
                   "--cache-dir", str(tmp_path / "cache"), "--demo-tracks", "40", "--demo-seconds", "3",
                   "--crop-seconds", "2", "--height", "32", "--width", "48", "--quiet"])
    assert rc == 0
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(0.0 <= r["train_acc"] <= 1.0 for r in lines)
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "gpu"
    rep = json.loads((run / "report.json").read_text())
    assert rep["split"] == "test" and 0.0 <= rep["accuracy"] <= 1.0
    meta = json.loads(str(_npz(run / "checkpoints" / "last.npz")["meta"]))
    assert all(s["bit_generator"] == "hitcnn-splitmix64-counter" for s in meta["rng"].values())
