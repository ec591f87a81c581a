"""maxpool: the Numba kernels against the float64 reference, tie and floor rules, the GPU kernels, MaxPool2d's gradient check.

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
from engine.layers import MaxPool2d
from kernels.cpu import maxpool

from .helpers import F32_POINT, cp, layer_gradcheck, noncontig, rel, rnd

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 9, 6), (3, 2, 4, 11)])
@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (2, 1), (3, 3), (1, 1)])
def test_maxpool_matches_reference(shape, k, s, dtype):
    x = rnd(shape, dtype, 7)
    if shape[2] < k or shape[3] < k:
        pytest.skip("window larger than the plane")
    ref_out, ref_arg = R.maxpool2d_forward(x, k, s)
    out, arg = np.empty(ref_out.shape, dtype), np.empty(ref_out.shape, np.int32)
    maxpool.maxpool2d_forward(out, arg, x, k, s)
    assert np.array_equal(arg, ref_arg)
    assert np.array_equal(out, ref_out.astype(dtype))
    dy = rnd(out.shape, dtype, 8)
    dx = np.full(x.shape, np.nan, dtype)
    maxpool.maxpool2d_backward(dx, dy, arg, k, s)
    np.testing.assert_allclose(dx, R.maxpool2d_backward(dy, arg, x.shape), **TOL[dtype])


def test_maxpool_tie_goes_to_first_maximum_in_row_major_order():
    x = np.array([[1.0, 5.0, 5.0], [5.0, 2.0, 5.0], [0.0, 0.0, 9.0]]).reshape(1, 1, 3, 3)
    out, arg = np.empty((1, 1, 2, 2)), np.empty((1, 1, 2, 2), np.int32)
    maxpool.maxpool2d_forward(out, arg, x, 2, 1)
    assert out.ravel().tolist() == [5.0, 5.0, 5.0, 9.0]
    assert arg.ravel().tolist() == [1, 1, 3, 8]  # window 0 ties (0,1),(1,0) -> (0,1); window 1 ties -> (0,1)
    dx = np.empty_like(x)
    maxpool.maxpool2d_backward(dx, np.array([1.0, 10.0, 100.0, 1000.0]).reshape(1, 1, 2, 2), arg, 2, 1)
    assert dx.ravel().tolist() == [0, 11.0, 0, 100.0, 0, 0, 0, 0, 1000.0]
    # floor mode: the last row/column of an odd plane is never read
    x = np.arange(15.0).reshape(1, 1, 3, 5)
    out, arg = np.empty((1, 1, 1, 2)), np.empty((1, 1, 1, 2), np.int32)
    maxpool.maxpool2d_forward(out, arg, x, 2, 2)
    assert out.ravel().tolist() == [6.0, 8.0]


def test_maxpool_rejects_bad_shapes():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 1, 2, 2\), got \(1, 1, 3, 3\)"):
        maxpool.maxpool2d_forward(np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.int32), x, 2, 2)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("shape,k,s", [((1, 1, 2, 2), 2, 2), ((2, 3, 7, 9), 2, 2), ((2, 3, 9, 8), 3, 2),
                                       ((1, 4, 102, 159), 2, 2)])
def test_gpu_maxpool(G, C, shape, k, s):
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, size=shape).astype(np.float32)  # many ties
    n, c, h, w = shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out_c, am_c = np.empty((n, c, oh, ow), np.float32), np.empty((n, c, oh, ow), np.int32)
    C.maxpool.maxpool2d_forward(out_c, am_c, x, k, s)
    out_g, am_g = cp.empty((n, c, oh, ow), np.float32), cp.empty((n, c, oh, ow), np.int32)
    G.maxpool.maxpool2d_forward(out_g, am_g, noncontig(x), k, s)
    assert rel(out_g, out_c) == 0.0
    assert np.array_equal(am_g.get(), am_c)
    dy = rng.standard_normal((n, c, oh, ow)).astype(np.float32)
    dx_c = np.empty_like(x)
    C.maxpool.maxpool2d_backward(dx_c, dy, am_c, k, s)
    dx_g = cp.empty(shape, np.float32)
    G.maxpool.maxpool2d_backward(dx_g, noncontig(dy), am_g, k, s)
    assert rel(dx_g, dx_c) < F32_POINT


# ----------------------------------------------------------------------------- gradient check
GRADCHECK_LAYERS = [
    ("maxpool_2_2", lambda: MaxPool2d(2, 2), (2, 2, 5, 7)),
    ("maxpool_3_2_overlap", lambda: MaxPool2d(3, 2), (1, 2, 7, 6)),
]


@pytest.mark.parametrize("name,make,shape", GRADCHECK_LAYERS, ids=[n for n, _, _ in GRADCHECK_LAYERS])
def test_maxpool_layer_gradcheck(name, make, shape):
    layer_gradcheck(name, make, shape)
