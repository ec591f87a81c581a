"""dropout: the Numba kernels (known stream, known values, reference), the GPU kernels, Dropout's gradient check.

Tolerances: float64 kernels must match the float64 reference to rtol 1e-12,
atol 1e-12 (only summation order differs); float32 kernels rtol 1e-4, atol
1e-5 (where a test states its own bound, that one). Index outputs (argmax,
masks) must be exactly equal; known values are asserted exactly (``==``).
GPU parity (marker ``gpu``; ``HITCNN_GPU_EMULATE=1`` runs it on the CPU
emulator): see tests/ops/helpers.py. Gradient check of the layer: float64
finite differences, relative error < 1e-6.
"""
import numpy as np
import pytest

from engine import reference as R
from engine.layers import Dropout
from kernels.cpu import dropout

from .helpers import cp, layer_gradcheck, noncontig, rel, rnd

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_inverted_known_values_and_reference(dtype):
    x = rnd((4, 50), dtype, 3)
    out, mask = np.empty_like(x), np.empty(x.shape, np.uint8)
    dropout.dropout_forward(out, mask, x, 0.25, dropout.make_rng(123))
    u = np.random.Generator(np.random.PCG64(123)).random(x.shape, dtype=dtype)
    assert np.array_equal(mask, (u >= dtype(0.25)).astype(np.uint8))  # the documented stream
    scale = dtype(1.0) / (dtype(1.0) - dtype(0.25))
    assert np.array_equal(out, np.where(mask == 1, x * scale, dtype(0)))
    assert scale == dtype(4.0 / 3.0)
    np.testing.assert_allclose(out, R.dropout_forward(x, mask, 0.25), **TOL[dtype])
    dy = rnd(x.shape, dtype, 4)
    dx = np.empty_like(dy)
    dropout.dropout_backward(dx, dy, mask, 0.25)
    np.testing.assert_allclose(dx, R.dropout_backward(dy, mask, 0.25), **TOL[dtype])
    assert 0.6 < mask.mean() < 0.9


def test_dropout_rejects_bad_p_and_aliasing():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="p must be in"):
        dropout.dropout_forward(np.empty_like(x), np.empty(8, np.uint8), x, 1.0, dropout.make_rng(0))
    with pytest.raises(ValueError, match="alias"):
        dropout.dropout_forward(x, np.empty(8, np.uint8), x, 0.5, dropout.make_rng(0))


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_dropout(G, C):
    x = cp.asarray(np.random.default_rng(6).standard_normal((64, 512)).astype(np.float32))
    p = 0.4
    out, mask = cp.empty_like(x), cp.empty(x.shape, np.uint8)
    G.dropout.dropout_forward(out, mask, x, p, G.dropout.make_rng(7))
    m = mask.get().astype(bool)
    assert abs(m.mean() - (1 - p)) < 0.01
    np.testing.assert_array_equal(out.get(), np.where(m, x.get() * np.float32(1 / (1 - p)), 0))
    out2, mask2 = cp.empty_like(x), cp.empty(x.shape, np.uint8)
    G.dropout.dropout_forward(out2, mask2, x, p, G.dropout.make_rng(7))
    assert np.array_equal(mask2.get(), mask.get())  # same seed, same mask
    dy = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    dx_c = np.empty_like(dy)
    C.dropout.dropout_backward(dx_c, dy, mask.get(), p)
    dx_g = cp.empty(x.shape, np.float32)
    G.dropout.dropout_backward(dx_g, noncontig(dy), mask, p)
    assert rel(dx_g, dx_c) == 0.0
    with pytest.raises(ValueError):
        G.dropout.dropout_forward(out, mask, x, 1.0, G.dropout.make_rng(0))


# ----------------------------------------------------------------------------- gradient check
GRADCHECK_LAYERS = [
    ("dropout", lambda: Dropout(0.4, seed=3), (4, 20)),
]


@pytest.mark.parametrize("name,make,shape", GRADCHECK_LAYERS, ids=[n for n, _, _ in GRADCHECK_LAYERS])
def test_dropout_layer_gradcheck(name, make, shape):
    layer_gradcheck(name, make, shape)
