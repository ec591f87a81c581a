"""batchnorm: the Numba kernels against the float64 reference, the GPU kernels (one-call and SyncBatchNorm's split steps), BatchNorm2d's gradient check.

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
from engine.layers import BatchNorm2d
from kernels.cpu import batchnorm as bn

from .helpers import F32_POINT, F32_REDUCE, cp, layer_gradcheck, noncontig, rel, rnd

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


SHAPES = [(1, 1, 5, 7), (3, 4, 9, 6), (2, 3, 1, 11), (5, 2, 8, 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_train_fwd_bwd_matches_reference(shape, dtype):
    c = shape[1]
    x = rnd(shape, dtype, 1, loc=3.0, scale=2.0)
    g, b = rnd(c, dtype, 2), rnd(c, dtype, 3)
    rm, rv = rnd(c, dtype, 4), (np.random.default_rng(5).random(c) + 0.5).astype(dtype)
    out, sm, si, rm2, rv2 = np.empty_like(x), np.empty(c), np.empty(c), rm.copy(), rv.copy()
    bn.batchnorm_forward_train(out, sm, si, x, g, b, rm2, rv2, 0.1, 1e-5)
    o_r, m_r, i_r, rm_r, rv_r = R.batchnorm_forward_train(x, g, b, rm, rv, 0.1, 1e-5)
    np.testing.assert_allclose(out, o_r, **TOL[dtype])
    np.testing.assert_allclose(sm, m_r, rtol=1e-6)  # statistics in float64 even for float32 input
    np.testing.assert_allclose(si, i_r, rtol=1e-6)
    np.testing.assert_allclose(rm2, rm_r, **TOL[dtype])
    np.testing.assert_allclose(rv2, rv_r, **TOL[dtype])
    dy = rnd(shape, dtype, 6)
    dx, dg, db = np.empty_like(x), np.full(c, 0.5, dtype), np.full(c, -0.25, dtype)
    bn.batchnorm_backward(dx, dg, db, dy, x, sm, si, g)
    dx_r, dg_r, db_r = R.batchnorm_backward(dy, x, sm, si, g)
    np.testing.assert_allclose(dx, dx_r, **TOL[dtype])
    np.testing.assert_allclose(dg, dg_r + 0.5, **TOL[dtype])  # accumulated (+=)
    np.testing.assert_allclose(db, db_r - 0.25, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_eval_matches_reference_and_keeps_running_stats(dtype):
    x = rnd((2, 3, 5, 4), dtype, 1)
    g, b, rm = rnd(3, dtype, 2), rnd(3, dtype, 3), rnd(3, dtype, 4)
    rv = np.array([0.5, 1.5, 2.0], dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    out = np.empty_like(x)
    bn.batchnorm_forward_eval(out, x, g, b, rm, rv, 1e-5)
    np.testing.assert_allclose(out, R.batchnorm_forward_eval(x, g, b, rm, rv, 1e-5), **TOL[dtype])
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)


def test_batchnorm_running_var_uses_unbiased_variance_known_value():
    # one channel, values 1, 2, 3, 4: mean 2.5, biased var 1.25, unbiased 5/3
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    rm, rv = np.zeros(1), np.ones(1)
    out, sm, si = np.empty_like(x), np.empty(1), np.empty(1)
    bn.batchnorm_forward_train(out, sm, si, x, np.ones(1), np.zeros(1), rm, rv, 0.1, 0.0)
    assert sm[0] == 2.5
    assert si[0] == 1.0 / np.sqrt(1.25)
    assert rm[0] == 0.1 * 2.5
    assert rv[0] == 0.9 * 1.0 + 0.1 * (1.25 * 4 / 3)
    np.testing.assert_allclose(out.ravel(), (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25), rtol=1e-15)


def test_batchnorm_mean_accurate_beyond_2_pow_24_values():
    # N*H*W = 2**24 + 2**12 values per channel near 1.0: a float32 running sum stalls at 2**24
    m = 2**12 + 1
    x = (1.0 + 1e-3 * np.random.default_rng(0).standard_normal((1, 1, 2**12, m))).astype(np.float32)
    assert x.size > 2**24
    mean, var = np.empty(1), np.empty(1)
    bn.channel_stats(mean, var, x)
    x64 = x.astype(np.float64)
    assert abs(mean[0] - x64.mean()) / x64.mean() < 1e-10
    assert abs(var[0] - x64.var()) / x64.var() < 1e-6


def test_batchnorm_rejects_bad_input():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        bn.batchnorm_forward_eval(x, x, np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32),
                                  np.ones(3, np.float32), 1e-5)
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\), got \(4,\)"):
        bn.batchnorm_forward_eval(np.empty_like(x), x, np.ones(4, np.float32), np.zeros(3, np.float32),
                                  np.zeros(3, np.float32), np.ones(3, np.float32), 1e-5)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 7), (4, 32, 102, 159)])
def test_gpu_batchnorm(G, C, shape):
    rng = np.random.default_rng(4)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 50).astype(np.float32)  # |mean| >> std
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    rm_c, rv_c = rng.standard_normal(c).astype(np.float32), rng.random(c).astype(np.float32) + 0.5
    rm_g, rv_g = cp.asarray(rm_c), cp.asarray(rv_c)
    out_c, sm_c, si_c = np.empty_like(x), np.empty(c), np.empty(c)
    C.batchnorm.batchnorm_forward_train(out_c, sm_c, si_c, x, gamma, beta, rm_c, rv_c, 0.1, 1e-5)
    out_g, sm_g, si_g = cp.empty(shape, np.float32), cp.empty(c), cp.empty(c)
    G.batchnorm.batchnorm_forward_train(out_g, sm_g, si_g, noncontig(x), cp.asarray(gamma), cp.asarray(beta),
                                        rm_g, rv_g, 0.1, 1e-5)
    assert rel(sm_g, sm_c) < 1e-12 and rel(si_g, si_c) < 1e-10
    assert rel(out_g, out_c) < F32_POINT
    assert rel(rm_g, rm_c) < F32_POINT and rel(rv_g, rv_c) < F32_POINT
    dy = rng.standard_normal(shape).astype(np.float32)
    dx_c, dg_c, db_c = np.empty_like(x), np.ones(c, np.float32), np.ones(c, np.float32)
    C.batchnorm.batchnorm_backward(dx_c, dg_c, db_c, dy, x, sm_c, si_c, gamma)
    dx_g, dg_g, db_g = cp.empty(shape, np.float32), cp.ones(c, np.float32), cp.ones(c, np.float32)
    G.batchnorm.batchnorm_backward(dx_g, dg_g, db_g, noncontig(dy), cp.asarray(x), sm_g, si_g, cp.asarray(gamma))
    assert rel(dx_g, dx_c) < F32_REDUCE
    assert rel(dg_g, dg_c) < F32_REDUCE and rel(db_g, db_c) < F32_REDUCE
    ev_c = np.empty_like(x)
    C.batchnorm.batchnorm_forward_eval(ev_c, x, gamma, beta, rm_c, rv_c, 1e-5)
    ev_g = cp.empty(shape, np.float32)
    G.batchnorm.batchnorm_forward_eval(ev_g, cp.asarray(x), cp.asarray(gamma), cp.asarray(beta), rm_g, rv_g, 1e-5)
    assert rel(ev_g, ev_c) < F32_POINT
    with pytest.raises(ValueError, match="N\\*H\\*W"):
        G.batchnorm.batchnorm_forward_train(cp.empty((1, c, 1, 1), np.float32), sm_g, si_g,
                                            cp.zeros((1, c, 1, 1), np.float32), cp.asarray(gamma),
                                            cp.asarray(beta), rm_g, rv_g, 0.1, 1e-5)


@pytest.mark.gpu
def test_gpu_batchnorm_split_steps_over_two_shards_equal_one_batch(G, C):
    """SyncBatchNorm's steps on the GPU: two shards' sums with a common shift, then finish / apply, equal the
    CPU's one-call forward and backward of the whole batch (plain BN and fused BN-ReLU-pool)."""
    rng = np.random.default_rng(11)
    shape, k = (4, 6, 9, 10), 2
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 5).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    m = shape[0] * shape[2] * shape[3]
    out_c, sm_c, si_c = np.empty_like(x), np.empty(c), np.empty(c)
    rm_c, rv_c = np.zeros(c, np.float32), np.ones(c, np.float32)
    C.batchnorm.batchnorm_forward_train(out_c, sm_c, si_c, x, gamma, beta, rm_c, rv_c, 0.1, 1e-5)
    shift = cp.asarray(np.full(c, 4.0))
    parts = [cp.asarray(np.ascontiguousarray(x[:2])), cp.asarray(np.ascontiguousarray(x[2:]))]
    tot = cp.zeros((2, c))
    for xp_ in parts:
        s_ = cp.empty((2, c))
        G.batchnorm.batchnorm_stats(s_, xp_, shift)
        tot += s_
    sm_g, si_g, rm_g, rv_g = cp.empty(c), cp.empty(c), cp.zeros(c, np.float32), cp.ones(c, np.float32)
    G.batchnorm.batchnorm_stats_finish(sm_g, si_g, tot, shift, m, rm_g, rv_g, 0.1, 1e-5)
    assert rel(sm_g, sm_c) < 1e-12 and rel(si_g, si_c) < 1e-10
    assert rel(rm_g, rm_c) < F32_POINT and rel(rv_g, rv_c) < F32_POINT
    g_g, b_g, x_g = cp.asarray(gamma), cp.asarray(beta), cp.asarray(x)
    out_g = cp.empty(shape, np.float32)
    G.batchnorm.batchnorm_apply_train(out_g, x_g, sm_g, si_g, g_g, b_g)
    assert rel(out_g, out_c) < F32_POINT
    dy = rng.standard_normal(shape).astype(np.float32)
    dx_c, dg_c, db_c = np.empty_like(x), np.zeros(c, np.float32), np.zeros(c, np.float32)
    C.batchnorm.batchnorm_backward(dx_c, dg_c, db_c, dy, x, sm_c, si_c, gamma)
    sums, dg_g, db_g, dx_g = cp.empty((2, c)), cp.zeros(c, np.float32), cp.zeros(c, np.float32), cp.empty(shape, np.float32)
    G.batchnorm.batchnorm_backward_sums(sums, cp.asarray(dy), x_g, sm_g)
    G.batchnorm.batchnorm_backward_params(dg_g, db_g, sums, si_g)
    G.batchnorm.batchnorm_backward_apply(dx_g, cp.asarray(dy), x_g, sm_g, si_g, g_g, sums, m)
    assert rel(dx_g, dx_c) < F32_REDUCE
    assert rel(dg_g, dg_c) < F32_REDUCE and rel(db_g, db_c) < F32_REDUCE
    # fused BN -> ReLU -> MaxPool with the same statistics
    oshape = (4, 6, 4, 5)
    fo_c, fa_c, fm_c, fi_c = np.empty(oshape, np.float32), np.empty(oshape, np.int32), np.empty(c), np.empty(c)
    C.fused.bn_relu_pool_forward_train(fo_c, fa_c, fm_c, fi_c, x, gamma, beta, np.zeros(c, np.float32),
                                       np.ones(c, np.float32), 0.1, 1e-5, k)
    fo_g, fa_g = cp.empty(oshape, np.float32), cp.empty(oshape, np.int32)
    G.fused.bn_relu_pool_apply_train(fo_g, fa_g, x_g, sm_g, si_g, g_g, b_g, k)
    assert rel(fo_g, fo_c) < F32_POINT and np.array_equal(fa_g.get(), fa_c)
    fdy = rng.standard_normal(oshape).astype(np.float32)
    fdx_c, fdg_c, fdb_c = np.empty_like(x), np.zeros(c, np.float32), np.zeros(c, np.float32)
    C.fused.bn_relu_pool_backward(fdx_c, fdg_c, fdb_c, fdy, fa_c, x, fm_c, fi_c, gamma, beta, k)
    fs, fdg_g, fdb_g, fdx_g = cp.empty((2, c)), cp.zeros(c, np.float32), cp.zeros(c, np.float32), cp.empty(shape, np.float32)
    G.fused.bn_relu_pool_backward_sums(fs, cp.asarray(fdy), fa_g, x_g, sm_g, si_g, g_g, b_g, k)
    G.batchnorm.batchnorm_backward_params(fdg_g, fdb_g, fs, si_g)
    G.fused.bn_relu_pool_backward_apply(fdx_g, cp.asarray(fdy), fa_g, x_g, sm_g, si_g, g_g, b_g, fs, m, k)
    assert rel(fdx_g, fdx_c) < F32_REDUCE
    assert rel(fdg_g, fdg_c) < F32_REDUCE and rel(fdb_g, fdb_c) < F32_REDUCE


# ----------------------------------------------------------------------------- gradient check
GRADCHECK_LAYERS = [
    ("batchnorm", lambda: BatchNorm2d(3), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("name,make,shape", GRADCHECK_LAYERS, ids=[n for n, _, _ in GRADCHECK_LAYERS])
def test_batchnorm_layer_gradcheck(name, make, shape):
    layer_gradcheck(name, make, shape)
