"""fused (BatchNorm2d -> ReLU -> MaxPool2d(k, k)): the Numba kernels against the unfused kernels and the float64 reference, the GPU kernels against the CPU ones.

Tolerances: the forward equals the unfused kernels bit for bit; the backward to rtol 1e-12
(float64) / 1e-5 (float32) of the unfused one (the BatchNorm sums are regrouped); against the
reference as in tests/ops/test_batchnorm.py. GPU parity: see tests/ops/helpers.py. The gradient
check of the fused path through Sequential is in tests/test_gradcheck.py.
"""
import numpy as np
import pytest

from engine import reference as R
from kernels.cpu import batchnorm as bn
from kernels.cpu import fused, maxpool, relu

from .helpers import F32_POINT, F32_REDUCE, cp, noncontig, rel, rnd

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((2, 3, 8, 9), 2), ((1, 4, 7, 5), 2), ((3, 2, 6, 6), 2), ((2, 3, 10, 7), 3)])
def test_fused_bn_relu_pool_equals_unfused(shape, k, dtype):
    c = shape[1]
    x = rnd(shape, dtype, 21)
    g, b = rnd(c, dtype, 22), rnd(c, dtype, 23)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    # unfused: batchnorm -> relu -> maxpool
    y, sm, si = np.empty_like(x), np.empty(c), np.empty(c)
    bn.batchnorm_forward_train(y, sm, si, x, g, b, rm, rv, 0.1, 1e-5)
    r = np.empty_like(x)
    relu.relu_forward(r, y)
    po_shape = (shape[0], c, shape[2] // k, shape[3] // k)
    po, pa = np.empty(po_shape, dtype), np.empty(po_shape, np.int32)
    maxpool.maxpool2d_forward(po, pa, r, k, k)
    # fused
    fo, fa, fm, fi = np.empty(po_shape, dtype), np.empty(po_shape, np.int32), np.empty(c), np.empty(c)
    rm2, rv2 = np.zeros(c, dtype), np.ones(c, dtype)
    fused.bn_relu_pool_forward_train(fo, fa, fm, fi, x, g, b, rm2, rv2, 0.1, 1e-5, k)
    assert np.array_equal(fo, po) and np.array_equal(fa, pa)
    assert np.array_equal(fm, sm) and np.array_equal(rm2, rm) and np.array_equal(rv2, rv)
    dy = rnd(po_shape, dtype, 24)
    t1, t2, dx = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    maxpool.maxpool2d_backward(t1, dy, pa, k, k)
    relu.relu_backward(t2, t1, r)
    dg, db = np.zeros(c, dtype), np.zeros(c, dtype)
    bn.batchnorm_backward(dx, dg, db, t2, x, sm, si, g)
    fdx, fdg, fdb = np.empty_like(x), np.zeros(c, dtype), np.zeros(c, dtype)
    fused.bn_relu_pool_backward(fdx, fdg, fdb, dy, fa, x, fm, fi, g, b, k)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fdx, dx, **tol)
    np.testing.assert_allclose(fdg, dg, **tol)
    np.testing.assert_allclose(fdb, db, **tol)
    # the pooled-output route of the sums (what engine.model passes in training)
    odx, odg, odb = np.empty_like(x), np.zeros(c, dtype), np.zeros(c, dtype)
    fused.bn_relu_pool_backward(odx, odg, odb, dy, fa, x, fm, fi, g, b, k, out=fo)
    np.testing.assert_allclose(odx, dx, **tol)
    np.testing.assert_allclose(odg, dg, **tol)
    np.testing.assert_allclose(odb, db, **tol)
    # eval
    eo, ea = np.empty_like(fo), np.empty_like(fa)
    fused.bn_relu_pool_forward_eval(eo, ea, x, g, b, rm, rv, 1e-5, k)
    ye = np.empty_like(x)
    bn.batchnorm_forward_eval(ye, x, g, b, rm, rv, 1e-5)
    relu.relu_forward(ye, ye)
    maxpool.maxpool2d_forward(po, pa, ye, k, k)
    assert np.array_equal(eo, po) and np.array_equal(ea, pa)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_matches_reference(dtype):
    """The fused kernels against engine.reference.fused (BatchNorm2d -> ReLU -> MaxPool2d composed in float64)."""
    shape, k = (2, 3, 8, 9), 2
    c = shape[1]
    x = rnd(shape, dtype, 41)
    g, b = rnd(c, dtype, 42), rnd(c, dtype, 43)
    rm, rv = rnd(c, dtype, 44), (np.random.default_rng(45).random(c) + 0.5).astype(dtype)
    o_r, a_r, m_r, i_r, rm_r, rv_r = R.bn_relu_pool_forward_train(x, g, b, rm, rv, 0.1, 1e-5, k)
    po_shape = o_r.shape
    fo, fa, fm, fi = np.empty(po_shape, dtype), np.empty(po_shape, np.int32), np.empty(c), np.empty(c)
    rm2, rv2 = rm.copy(), rv.copy()
    fused.bn_relu_pool_forward_train(fo, fa, fm, fi, x, g, b, rm2, rv2, 0.1, 1e-5, k)
    np.testing.assert_allclose(fo, o_r, **TOL[dtype])
    assert np.array_equal(fa, a_r)
    np.testing.assert_allclose(fm, m_r, rtol=1e-6)  # statistics in float64 even for float32 input
    np.testing.assert_allclose(fi, i_r, rtol=1e-6)
    np.testing.assert_allclose(rm2, rm_r, **TOL[dtype])
    np.testing.assert_allclose(rv2, rv_r, **TOL[dtype])
    dy = rnd(po_shape, dtype, 46)
    fdx, fdg, fdb = np.empty_like(x), np.zeros(c, dtype), np.zeros(c, dtype)
    fused.bn_relu_pool_backward(fdx, fdg, fdb, dy, fa, x, fm, fi, g, b, k)
    dx_r, dg_r, db_r = R.bn_relu_pool_backward(dy, fa, x, fm, fi, g, b, k)
    for got, want in [(fdx, dx_r), (fdg, dg_r), (fdb, db_r)]:
        np.testing.assert_allclose(got, want, **TOL[dtype])
    eo, ea = np.empty(po_shape, dtype), np.empty(po_shape, np.int32)
    fused.bn_relu_pool_forward_eval(eo, ea, x, g, b, rm, rv, 1e-5, k)
    eo_r, ea_r = R.bn_relu_pool_forward_eval(x, g, b, rm, rv, 1e-5, k)
    np.testing.assert_allclose(eo, eo_r, **TOL[dtype])
    assert np.array_equal(ea, ea_r)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_out_route(dtype):
    """The sums streamed from the pooled output equal the gathered ones; channels it must not take fall back.

    Channel 0: ordinary (beta small against gamma), streamed. Channel 1: |beta| > 4|gamma|
    (the streamed form would cancel), channel 2: gamma = 0: both take the gather route, so their
    dx and dgamma equal the gather route's bit for bit. Channel 0 agrees to float64 rounding
    (float64) / 1e-6 (float32).
    """
    shape, k = (3, 3, 12, 14), 2
    c = shape[1]
    x = rnd(shape, dtype, 51)
    g = np.array([0.9, 0.05, 0.0], dtype)
    b = np.array([-0.2, 1.5, 0.3], dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    po_shape = (shape[0], c, shape[2] // k, shape[3] // k)
    fo, fa, fm, fi = np.empty(po_shape, dtype), np.empty(po_shape, np.int32), np.empty(c), np.empty(c)
    fused.bn_relu_pool_forward_train(fo, fa, fm, fi, x, g, b, rm, rv, 0.1, 1e-5, k)
    dy = rnd(po_shape, dtype, 52)
    res = {}
    for route, out in (("gather", None), ("out", fo)):
        dx, dg, db = np.empty_like(x), np.zeros(c, dtype), np.zeros(c, dtype)
        fused.bn_relu_pool_backward(dx, dg, db, dy, fa, x, fm, fi, g, b, k, out=out)
        res[route] = dx, dg, db
    (gdx, gdg, gdb), (odx, odg, odb) = res["gather"], res["out"]
    assert np.array_equal(odx[:, 1:], gdx[:, 1:]) and np.array_equal(odg[1:], gdg[1:])
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(odg, gdg, **tol)
    np.testing.assert_allclose(odb, gdb, **tol)  # same terms, summed in another order
    np.testing.assert_allclose(odx, gdx, **tol)
    assert not np.array_equal(odx[:, 0], np.zeros_like(odx[:, 0]))
    with pytest.raises(ValueError, match="pooled output"):
        fused.bn_relu_pool_backward(odx, odg, odb, dy, fa, x, fm, fi, g, b, k, out=fo[:, :2].copy())


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_fused_bn_relu_pool(G, C):
    rng = np.random.default_rng(5)
    shape, k = (2, 8, 13, 17), 2
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    oshape = (2, 8, 6, 8)
    args_c = [np.zeros(c, np.float32), np.ones(c, np.float32)]
    out_c, am_c, sm_c, si_c = np.empty(oshape, np.float32), np.empty(oshape, np.int32), np.empty(c), np.empty(c)
    C.fused.bn_relu_pool_forward_train(out_c, am_c, sm_c, si_c, x, gamma, beta, *args_c, 0.1, 1e-5, k)
    args_g = [cp.zeros(c, np.float32), cp.ones(c, np.float32)]
    out_g, am_g, sm_g, si_g = cp.empty(oshape, np.float32), cp.empty(oshape, np.int32), cp.empty(c), cp.empty(c)
    G.fused.bn_relu_pool_forward_train(out_g, am_g, sm_g, si_g, noncontig(x), cp.asarray(gamma), cp.asarray(beta),
                                       *args_g, 0.1, 1e-5, k)
    assert rel(out_g, out_c) < F32_POINT
    assert np.array_equal(am_g.get(), am_c)
    dy = rng.standard_normal(oshape).astype(np.float32)
    dx_c, dg_c, db_c = np.empty_like(x), np.zeros(c, np.float32), np.zeros(c, np.float32)
    C.fused.bn_relu_pool_backward(dx_c, dg_c, db_c, dy, am_c, x, sm_c, si_c, gamma, beta, k)
    dx_g, dg_g, db_g = cp.empty(shape, np.float32), cp.zeros(c, np.float32), cp.zeros(c, np.float32)
    G.fused.bn_relu_pool_backward(dx_g, dg_g, db_g, cp.asarray(dy), am_g, cp.asarray(x), sm_g, si_g,
                                  cp.asarray(gamma), cp.asarray(beta), k)
    assert rel(dx_g, dx_c) < F32_REDUCE
    assert rel(dg_g, dg_c) < F32_REDUCE and rel(db_g, db_c) < F32_REDUCE
