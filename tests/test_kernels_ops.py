"""Numba kernels (batchnorm, relu, maxpool, dropout, softmax_xent, adam, fused) vs the float64 references.

Tolerance policy (STYLE.md): float64 kernels must match the float64 reference
to 1e-12 relative (only summation order differs); float32 forward rtol 1e-5
(BatchNorm statistics are float64, the elementwise pass is float32) and
backward through reductions rtol 1e-4. Index outputs (argmax, masks) must be
exactly equal. Known values are asserted exactly (``==``).
"""
import numpy as np
import pytest

from engine import reference as R
from kernels.cpu import adam, dropout, fused, maxpool, relu
from kernels.cpu import batchnorm as bn
from kernels.cpu import softmax_xent as sx

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
SHAPES = [(1, 1, 5, 7), (3, 4, 9, 6), (2, 3, 1, 11), (5, 2, 8, 8)]


def rnd(shape, dtype, seed=0, loc=0.0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(dtype)


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [7, 100_000])  # serial and parallel paths
def test_adam_matches_reference_over_steps(dtype, size):
    rng = np.random.default_rng(11)
    p = rng.standard_normal(size).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    P, M, V = p.astype(np.float64), np.zeros(size), np.zeros(size)
    for step in range(1, 6):
        g = rng.standard_normal(size).astype(dtype)
        adam.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, 0.01)
        P, M, V = R.adam_update(P, g, M, V, step, 1e-2, 0.9, 0.999, 1e-8, 0.01)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p, P, **tol)
    np.testing.assert_allclose(m, M, **tol)
    np.testing.assert_allclose(v, V, **tol)


def test_adam_first_step_known_value():
    # step 1 from zero moments: m_hat = g, v_hat = g**2, so the update is lr * g / (|g| + eps)
    p = np.array([1.0, -2.0, 0.5])
    g = np.array([4.0, -0.5, 0.0])
    m, v = np.zeros(3), np.zeros(3)
    adam.adam_update(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    assert m.tolist() == [(1 - 0.9) * 4.0, (1 - 0.9) * -0.5, 0.0]
    np.testing.assert_allclose(p, [1.0 - 0.1 * 4 / (4 + 1e-8), -2.0 + 0.1 * 0.5 / (0.5 + 1e-8), 0.5], rtol=1e-15)
    assert p[2] == 0.5
    with pytest.raises(ValueError, match="step must be >= 1"):
        adam.adam_update(p, g, m, v, 0, 0.1, 0.9, 0.999, 1e-8, 0.0)


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
    # eval
    eo, ea = np.empty_like(fo), np.empty_like(fa)
    fused.bn_relu_pool_forward_eval(eo, ea, x, g, b, rm, rv, 1e-5, k)
    ye = np.empty_like(x)
    bn.batchnorm_forward_eval(ye, x, g, b, rm, rv, 1e-5)
    relu.relu_forward(ye, ye)
    maxpool.maxpool2d_forward(po, pa, ye, k, k)
    assert np.array_equal(eo, po) and np.array_equal(ea, pa)


def test_results_do_not_depend_on_thread_count(monkeypatch):
    """Parallel (all Numba threads) and single-threaded runs of every kernel give bit-identical results."""
    import kernels.cpu._threads as th

    x = rnd((3, 5, 12, 11), np.float32, 31)
    dy = rnd((3, 5, 6, 5), np.float32, 32)
    g, b = rnd(5, np.float32, 33), rnd(5, np.float32, 34)

    def everything():
        rm, rv, sm, si = np.zeros(5, np.float32), np.ones(5, np.float32), np.empty(5), np.empty(5)
        y = np.empty_like(x)
        bn.batchnorm_forward_train(y, sm, si, x, g, b, rm, rv, 0.1, 1e-5)
        dx, dg, db = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
        bn.batchnorm_backward(dx, dg, db, x, x, sm, si, g)
        r = np.empty_like(x)
        relu.relu_forward(r, y)
        po, pa = np.empty(dy.shape, np.float32), np.empty(dy.shape, np.int32)
        maxpool.maxpool2d_forward(po, pa, r, 2, 2)
        pdx = np.empty_like(x)
        maxpool.maxpool2d_backward(pdx, dy, pa, 2, 2)
        fo, fa, fm, fi = np.empty_like(po), np.empty_like(pa), np.empty(5), np.empty(5)
        fused.bn_relu_pool_forward_train(fo, fa, fm, fi, x, g, b, rm, rv, 0.1, 1e-5, 2)
        fdx, fdg, fdb = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
        fused.bn_relu_pool_backward(fdx, fdg, fdb, dy, fa, x, fm, fi, g, b, 2)
        do, dm = np.empty_like(x), np.empty(x.shape, np.uint8)
        dropout.dropout_forward(do, dm, x, 0.3, dropout.make_rng(1))
        return [y, sm, si, dx, dg, db, r, po, pa, pdx, fo, fa, fdx, fdg, fdb, do, dm, rm, rv]

    serial = everything()
    monkeypatch.setattr(th, "PARALLEL_MIN", 0)
    parallel = everything()
    for i, (s, p) in enumerate(zip(serial, parallel)):
        assert np.array_equal(s, p), i


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, fin, fout", [(1, 5, 3), (7, 4100, 37), (3, 2048, 16)])
def test_linear_batch_invariant_forward(dtype, n, fin, fout):
    """The eval-mode Linear kernel: the reference's values, and row r identical alone or shifted (issue 10.19)."""
    from kernels.cpu import linear

    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype)
    out = np.empty((n, fout), dtype)
    linear.linear_forward(out, x, w, b, batch_invariant=True)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.max(np.abs(out - want)) <= tol * np.max(np.abs(want))
    for r in range(n):
        one = np.empty((2, fout), dtype)
        linear.linear_forward(one, np.stack([x[(r + 1) % n], x[r]]), w, b, batch_invariant=True)
        assert np.array_equal(one[1], out[r])
