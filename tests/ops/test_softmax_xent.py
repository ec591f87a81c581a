"""softmax_xent: the Numba kernels against the float64 reference, stability, the GPU kernels, the gradient against finite differences.

Tolerances: float64 kernels must match the float64 reference to rtol 1e-12,
atol 1e-12 (only summation order differs); float32 kernels rtol 1e-4, atol
1e-5 (where a test states its own bound, that one). Index outputs (argmax,
masks) must be exactly equal; known values are asserted exactly (``==``).
GPU parity (marker ``gpu``; ``HITCNN_GPU_EMULATE=1`` runs it on the CPU
emulator): see tests/ops/helpers.py. Gradient check of the loss: float64
finite differences, relative error < 1e-6.
"""
import numpy as np
import pytest

from engine import reference as R
from engine.gradcheck import rel_error
from engine.losses import SoftmaxCrossEntropy
from kernels.cpu import softmax_xent as sx

from .helpers import F32_POINT, F32_REDUCE, GRADCHECK_TOL, cp, noncontig, rel, rnd

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_xent_matches_reference(dtype, weighted):
    logits = rnd((7, 5), dtype, 9, scale=3.0)
    t = np.array([0, 4, 2, 2, 1, 3, 0], np.int64)
    w = np.array([1.0, 2.0, 0.5, 3.0, 1.5], dtype) if weighted else None
    probs = np.empty_like(logits)
    loss = sx.softmax_xent_forward(probs, logits, t, w)
    loss_r, probs_r = R.softmax_xent_forward(logits, t, w)
    assert abs(loss - loss_r) <= 1e-6 * abs(loss_r)
    np.testing.assert_allclose(probs, probs_r, **TOL[dtype])
    d = np.empty_like(logits)
    sx.softmax_xent_backward(d, probs, t, w)
    np.testing.assert_allclose(d, R.softmax_xent_backward(probs_r, t, w), **TOL[dtype])


def test_softmax_xent_stable_for_1e8_logits_float32():
    logits = np.array([[1e8, 0.0, -1e8], [0.0, 1e8, 1e8]], np.float32)
    t = np.array([1, 0], np.int64)
    probs = np.empty_like(logits)
    loss = sx.softmax_xent_forward(probs, logits, t)
    # row 0: -log softmax = 1e8 exactly; row 1: 1e8 + log 2
    assert loss == (1e8 + (1e8 + np.log(2.0))) / 2
    assert probs.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]
    d = np.empty_like(logits)
    sx.softmax_xent_backward(d, probs, t)
    assert np.all(np.isfinite(d))
    assert d.tolist() == [[0.5, -0.5, 0.0], [-0.5, 0.25, 0.25]]


def test_softmax_xent_rejects_bad_targets():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\), got range \[0, 3\]"):
        sx.softmax_xent_forward(np.empty_like(logits), logits, np.array([0, 3], np.int64))
    with pytest.raises(ValueError, match=r"int64 of shape \(2,\)"):
        sx.softmax_xent_forward(np.empty_like(logits), logits, np.array([0, 1, 2], np.int64))


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n,k,scale", [(1, 3, 1.0), (17, 3, 5.0), (64, 10, 1e8)])
def test_gpu_softmax_xent(G, C, n, k, scale, weighted):
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    t = rng.integers(0, k, n).astype(np.int64)
    cw = (rng.random(k) + 0.5).astype(np.float32) if weighted else None
    pc = np.empty_like(logits)
    loss_c = C.softmax_xent.softmax_xent_forward(pc, logits, t, cw)
    pg = cp.empty((n, k), np.float32)
    cwg = None if cw is None else cp.asarray(cw)
    loss_g = G.softmax_xent.softmax_xent_forward(pg, noncontig(logits), cp.asarray(t), cwg)
    assert np.isfinite(loss_g) and abs(loss_g - loss_c) <= F32_REDUCE * max(1.0, abs(loss_c))
    assert rel(pg, pc) < F32_POINT
    dc = np.empty_like(logits)
    C.softmax_xent.softmax_xent_backward(dc, pc, t, cw)
    dg = cp.empty((n, k), np.float32)
    G.softmax_xent.softmax_xent_backward(dg, pg, cp.asarray(t), cwg)
    assert np.all(np.isfinite(dg.get())) and rel(dg, dc) < F32_POINT


@pytest.mark.gpu
def test_gpu_softmax_xent_bad_target(G):
    with pytest.raises(ValueError, match="targets"):
        G.softmax_xent.softmax_xent_forward(cp.empty((2, 3), np.float32), cp.zeros((2, 3), np.float32),
                                            cp.asarray(np.array([0, 3], np.int64)))


# ----------------------------------------------------------------------------- gradient check
def test_softmax_xent_gradient_vs_finite_differences():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4))
    t = np.array([0, 3, 1, 1, 2], np.int64)
    for w in (None, np.array([1.0, 2.0, 0.5, 3.0])):
        loss = SoftmaxCrossEntropy(w)
        loss.forward(logits, t)
        d = loss.backward().copy()
        num = np.empty_like(logits)
        h = 1e-6
        for i in np.ndindex(logits.shape):
            lp = logits.copy()
            lp[i] += h
            lm = logits.copy()
            lm[i] -= h
            num[i] = (loss.forward(lp, t) - loss.forward(lm, t)) / (2 * h)
        assert rel_error(d, num) < GRADCHECK_TOL
