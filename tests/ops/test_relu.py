"""relu: the Numba kernels against the float64 reference, the GPU kernels against the CPU ones, ReLU's gradient check.

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
from engine.layers import ReLU
from kernels.cpu import relu

from .helpers import cp, layer_gradcheck, noncontig, rel, rnd

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_reference(dtype):
    x = rnd((3, 5, 7, 2), dtype)
    x.ravel()[:4] = 0.0
    out = np.empty_like(x)
    relu.relu_forward(out, x)
    assert np.array_equal(out, R.relu_forward(x).astype(dtype))
    dy = rnd(x.shape, dtype, 1)
    dx = np.empty_like(x)
    relu.relu_backward(dx, dy, out)
    assert np.array_equal(dx, R.relu_backward(dy, out).astype(dtype))
    assert np.all(dx.ravel()[:4] == 0)  # gradient at exactly 0 is 0 (mask out > 0)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (2, 32, 51, 79)])
def test_gpu_relu(G, C, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    out_c = np.empty_like(x)
    C.relu.relu_forward(out_c, x)
    out_g = cp.empty(shape, np.float32)
    G.relu.relu_forward(out_g, noncontig(x))
    assert rel(out_g, out_c) == 0.0
    dy = rng.standard_normal(shape).astype(np.float32)
    dx_c = np.empty_like(x)
    C.relu.relu_backward(dx_c, dy, out_c)
    dx_g = cp.empty(shape, np.float32)
    G.relu.relu_backward(dx_g, noncontig(dy), out_g)
    assert rel(dx_g, dx_c) == 0.0
    with pytest.raises(ValueError, match="contiguous"):
        G.relu.relu_forward(cp.zeros((4, 6), np.float32)[:, ::2], cp.zeros((4, 3), np.float32))


# ----------------------------------------------------------------------------- gradient check
GRADCHECK_LAYERS = [
    ("relu", lambda: ReLU(), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("name,make,shape", GRADCHECK_LAYERS, ids=[n for n, _, _ in GRADCHECK_LAYERS])
def test_relu_layer_gradcheck(name, make, shape):
    layer_gradcheck(name, make, shape)
