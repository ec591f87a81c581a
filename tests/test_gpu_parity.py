"""The GPU backend as a whole against the CPU: whole training steps, repeatability, prefetch, batch invariance, STFT.

The GPU parity tests of each op (its kernels against the CPU kernels and the
float64 reference) are in ``tests/ops/test_<op>.py``.

Marker ``gpu``: skipped without CuPy and a CUDA device (tests/conftest.py).
Tolerance policy (relative to the largest magnitude of the expected array,
``max|got - want| / max|want|``):

* STFT: 1e-4 in float32 (cuFFT and pocketfft sum in different orders);
  spectrogram images: under 1 % of the pixels off by more than 1e-3 (a
  colormap bucket may flip at its edge), median error below 1e-4;
* one whole training step (forward, backward, Adam) per model, GPU vs CPU:
  1e-4 on the loss, every gradient and every updated parameter;
* 20 GPU steps repeated with the same seed: bit-identical (no float atomics,
  fixed reduction orders, deterministic cuBLAS for a fixed shape).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

#: HITCNN_GPU_EMULATE=1: run these tests without a GPU on tests/gpu_emulate.py's CuPy stand-in
#: (the same CUDA sources compiled for the host); tests/test_gpu_compile.py does so in CI.
EMULATED = bool(os.environ.get("HITCNN_GPU_EMULATE"))
if EMULATED:
    _spec = importlib.util.spec_from_file_location(
        "hitcnn_gpu_emulate", Path(__file__).resolve().parent / "gpu_emulate.py")
    _emu = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_emu)
    _emu.install()

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

F32_REDUCE = 1e-4


def rel(got, want):
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0


# ----------------------------------------------------------------------------- STFT and images
@pytest.mark.parametrize("center,pad_mode", [(True, "constant"), (True, "reflect"), (False, "constant")])
def test_stft(center, pad_mode):
    from kernels.gpu import stft as gstft
    from pipeline.stft import stft

    y = np.random.default_rng(11).standard_normal(22050 + 37).astype(np.float32)
    want = stft(y, n_fft=2048, hop_length=512, center=center, pad_mode=pad_mode)
    got = gstft.stft(cp.asarray(y), n_fft=2048, hop_length=512, center=center, pad_mode=pad_mode)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel(cp.abs(got), np.abs(want)) < F32_REDUCE
    assert rel(got.real, want.real) < F32_REDUCE and rel(got.imag, want.imag) < F32_REDUCE
    routed = stft(cp.asarray(y), n_fft=2048, hop_length=512, center=center, pad_mode=pad_mode)
    assert isinstance(routed, cp.ndarray)


@pytest.mark.parametrize("mode,spec", [("mono", "stft"), ("rgb", "stft"), ("rgb", "mel")])
def test_spectrogram_image(mode, spec):
    import types

    from kernels.gpu import stft as gstft
    from pipeline import spectral
    from pipeline import spectrogram as sp

    cfg = sp.SpectrogramConfig(mode=mode, spectrogram=spec, crop_seconds=3.0)
    t = np.arange(cfg.n_crop) / cfg.sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(12).standard_normal(t.size)).astype(np.float32)
    want = sp.to_image(sp.spectrogram_db(y, cfg), cfg)
    tables = types.SimpleNamespace(mel_filterbank=spectral.mel_filterbank, resize_matrix=spectral.resize_matrix,
                                   colormap_lut=sp.colormap_lut)
    got = gstft.spectrogram_image(cp.asarray(y), cfg, tables)
    assert got.shape == want.shape
    diff = np.abs(got.get() - want)
    # colormap buckets may flip where the scaled value sits on a bucket edge: allow a few pixels
    assert np.mean(diff > 1e-3) < 0.01 and float(np.median(diff)) < 1e-4


# ----------------------------------------------------------------------------- whole training step
def _step(model, loss_fn, opt, x, y):
    opt.zero_grad()
    logits = model.forward(x)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())
    grads = {n: (g.get() if hasattr(g, "get") else g).copy() for n, _, g in model.parameters()}
    opt.step()
    return loss, grads


@pytest.mark.parametrize("name", ["cnn2_mono", "cnn4_mono", "cnn4_rgb", "cnn6_rgb"])
def test_training_step_matches_cpu(name):
    from engine.losses import SoftmaxCrossEntropy
    from engine.models import MODELS, build
    from engine.optim import Adam

    c = MODELS[name][0]
    rng = np.random.default_rng(13)
    x = rng.random((4, c, 102, 159)).astype(np.float32)
    y = np.array([0, 1, 2, 1], np.int64)
    # dropout=0: the CPU (PCG64) and GPU (cupy) generators draw different masks
    mc = build(name, dropout=0.0, seed=3)
    mg = build(name, dropout=0.0, seed=3).to("gpu")
    oc, og = Adam(mc), Adam(mg)
    lc, gc = _step(mc, SoftmaxCrossEntropy(), oc, x, y)
    lg, gg = _step(mg, SoftmaxCrossEntropy(), og, cp.asarray(x), cp.asarray(y))
    assert abs(lg - lc) <= F32_REDUCE * max(1.0, abs(lc))
    # The bias of a conv that feeds BatchNorm has an analytically zero gradient (BN removes the
    # mean): its value is rounding noise of a sum over N*H*W, so every gradient also gets an
    # absolute allowance of 1e-5 of the largest gradient of the model.
    gmax = max(float(np.max(np.abs(g))) for g in gc.values())
    for n in gc:
        err = float(np.max(np.abs(gg[n].astype(np.float64) - gc[n])))
        assert err <= F32_REDUCE * float(np.max(np.abs(gc[n]))) + 1e-5 * gmax, n
    # Adam's first step moves every parameter by about lr * sign(grad): where the gradient is
    # rounding noise (those BN-fed conv biases) the sign is arbitrary, so there the two engines
    # may differ by up to 2 * lr; everywhere else the updated parameters agree to 1e-4.
    pc = {n: p for n, p, _ in mc.parameters()}
    lr = oc.lr
    for n, p, _ in mg.parameters():
        noise = np.abs(gc[n]) <= 1e-4 * gmax
        err = np.abs(p.get().astype(np.float64) - pc[n])
        scale = float(np.max(np.abs(pc[n])))
        assert np.all(err[~noise] <= F32_REDUCE * scale), n
        assert np.all(err[noise] <= 2.0001 * lr + F32_REDUCE * scale), n


def _run(name, steps, seed):
    from engine.losses import SoftmaxCrossEntropy
    from engine.models import MODELS, build
    from engine.optim import Adam

    c = MODELS[name][0]
    rng = np.random.default_rng(seed)
    m = build(name, dropout=0.4, seed=seed).to("gpu")
    opt, loss_fn = Adam(m), SoftmaxCrossEntropy()
    losses = []
    for _ in range(steps):
        x = cp.asarray(rng.random((8, c, 102, 159)).astype(np.float32))
        y = cp.asarray(rng.integers(0, 3, 8).astype(np.int64))
        losses.append(_step(m, loss_fn, opt, x, y)[0])
    return losses, {n: p.get() for n, p, _ in m.parameters()}


def test_twenty_gpu_steps_are_bit_identical():
    name, steps = ("cnn2_mono", 3) if EMULATED else ("cnn6_rgb", 20)  # emulation is slow; the GPU does all 20
    l1, p1 = _run(name, steps, seed=5)
    l2, p2 = _run(name, steps, seed=5)
    assert l1 == l2
    for n in p1:
        assert np.array_equal(p1[n], p2[n]), n


# ----------------------------------------------------------------------------- prefetch
def test_prefetcher_delivers_every_batch_in_order():
    """Slot bookkeeping (emulated: synchronous streams); the asynchronous overlap needs a GPU."""
    from kernels.gpu.device import PinnedPrefetcher, device_batches

    rng = np.random.default_rng(14)
    host = [(rng.random((b, 3, 5, 7)).astype(np.float32), rng.integers(0, 3, b).astype(np.int64))
            for b in (4, 4, 4, 3)]
    got = []
    for xb, yb in PinnedPrefetcher(iter(host)):
        got.append((xb.get(), yb.get()))  # copy before the buffers are reused
    assert len(got) == len(host)
    for (xg, yg), (xh, yh) in zip(got, host):
        assert np.array_equal(xg, xh) and np.array_equal(yg, yh)
    imgs, labs = cp.asarray(np.concatenate([h[0] for h in host])), cp.asarray(np.concatenate([h[1] for h in host]))
    seen = np.concatenate([yb.get() for _, yb in device_batches(imgs, labs, 4, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == sorted(labs.get().tolist())


# ----------------------------------------------------------------------------- batch invariance
@pytest.mark.parametrize("name, shape", [("cnn2_mono", (1, 16, 24)), ("cnn4_rgb", (3, 32, 48))])
def test_eval_output_of_an_image_does_not_depend_on_the_rest_of_the_batch(name, shape):
    """On the GPU path too: eval-mode logits of an image are bit-identical in any batch."""
    from engine.models import build

    m = build(name, in_shape=shape, dropout=0.4, seed=2).to("gpu")
    rng = np.random.default_rng(4)
    for _ in range(2):
        m.forward(cp.asarray(rng.standard_normal((6,) + shape).astype(np.float32)))
    m.eval()
    x = rng.standard_normal((7,) + shape).astype(np.float32)
    full = m.forward(cp.asarray(x)).get().copy()
    for idx in ([1, 2, 3, 4, 5], [6, 0], [3]):
        assert np.array_equal(m.forward(cp.asarray(x[idx])).get(), full[idx]), idx
