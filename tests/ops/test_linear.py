"""linear: the Numba kernels against the float64 reference, the batch-invariant forward, the GPU kernels, Linear's gradient check.

Tolerances: float64 rtol 1e-10, atol 1e-10; float32 rtol 1e-4, atol 1e-4 (sums of up to 256
terms); the weight gradient accumulates (``+=``) bit-exactly. GPU parity (marker ``gpu``;
``HITCNN_GPU_EMULATE=1`` runs it on the CPU emulator): see tests/ops/helpers.py. Gradient check
of the layer: float64 finite differences, relative error < 1e-6.
"""
import numpy as np
import pytest

from engine.layers import Linear
from engine.reference import linear as ref
from kernels.cpu import linear as L

from .helpers import F32_REDUCE, cp, layer_gradcheck, noncontig, rel

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,i,o", [(1, 5, 3), (16, 256, 512), (7, 13, 1)])
def test_linear_matches_reference(n, i, o, dt):
    rng = np.random.default_rng(n + i + o)
    x = rng.standard_normal((n, i)).astype(dt)
    wt = rng.standard_normal((o, i)).astype(dt)
    b = rng.standard_normal(o).astype(dt)
    g = rng.standard_normal((n, o)).astype(dt)
    out = np.full((n, o), np.nan, dt)
    L.linear_forward(out, x, wt, b)
    dx = np.full((n, i), np.nan, dt)
    L.linear_backward_input(dx, g, wt)
    dw = np.zeros((o, i), dt)
    db = np.zeros(o, dt)
    L.linear_backward_weight(dw, db, g, x)
    r_dx = ref.linear_backward_input(g, wt)
    r_dw, r_db = ref.linear_backward_weight(g, x)
    tol = TOL[dt] if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)  # sums of 256 terms
    for got, want in [(out, ref.linear_forward(x, wt, b)), (dx, r_dx), (dw, r_dw), (db, r_db)]:
        np.testing.assert_allclose(got, want, **tol)
    first_w, first_b = dw.copy(), db.copy()
    L.linear_backward_weight(dw, db, g, x)
    np.testing.assert_array_equal(dw, 2 * first_w)
    np.testing.assert_array_equal(db, 2 * first_b)


def test_linear_bad_input():
    x = np.zeros((4, 6), np.float32)
    wt = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match=r"x has 5 features \(shape \(4, 5\)\).*expects 6"):
        L.linear_forward(np.empty((4, 3), np.float32), x[:, :5], wt, None)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\), got \(4, 2\)"):
        L.linear_forward(np.empty((4, 2), np.float32), x, wt, None)
    with pytest.raises(ValueError, match="weight.*must be float32"):
        L.linear_forward(np.empty((4, 3), np.float32), x, wt.astype(np.float64), None)
    with pytest.raises(ValueError, match="2-D"):
        L.linear_backward_input(np.empty((4, 6), np.float32), np.zeros(3, np.float32), wt)
    with pytest.raises(ValueError, match="same batch size"):
        L.linear_backward_weight(np.zeros((3, 6), np.float32), None, np.zeros((2, 3), np.float32), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, fin, fout", [(1, 5, 3), (7, 4100, 37), (3, 2048, 16)])
def test_linear_batch_invariant_forward(dtype, n, fin, fout):
    """The eval-mode Linear kernel: the reference's values, and row r identical alone or shifted (eval mode)."""
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


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (3, 7, 5), (64, 256, 512)])
def test_gpu_linear(G, C, n, fin, fout):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, fin)).astype(np.float32)
    wt = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    out_g = cp.empty((n, fout), np.float32)
    G.linear.linear_forward(out_g, noncontig(x), cp.asarray(wt), cp.asarray(b))
    assert rel(out_g, ref.linear_forward(x, wt, b)) < F32_REDUCE
    dy = rng.standard_normal((n, fout)).astype(np.float32)
    dx_r = ref.linear_backward_input(dy, wt)
    dw_r, db_r = ref.linear_backward_weight(dy, x)
    dx_g = cp.empty((n, fin), np.float32)
    G.linear.linear_backward_input(dx_g, noncontig(dy), cp.asarray(wt))
    dw_g, db_g = cp.ones((fout, fin), np.float32), cp.ones(fout, np.float32)
    G.linear.linear_backward_weight(dw_g, db_g, cp.asarray(dy), noncontig(x))
    assert rel(dx_g, dx_r) < F32_REDUCE
    assert rel(dw_g, 1.0 + dw_r) < F32_REDUCE
    assert rel(db_g, 1.0 + db_r) < F32_REDUCE


# ----------------------------------------------------------------------------- gradient check
GRADCHECK_LAYERS = [
    ("linear", lambda: Linear(6, 4, rng=2), (3, 6)),
]


@pytest.mark.parametrize("name,make,shape", GRADCHECK_LAYERS, ids=[n for n, _, _ in GRADCHECK_LAYERS])
def test_linear_layer_gradcheck(name, make, shape):
    layer_gradcheck(name, make, shape)


def _linear_passes(x, wt, b, g):
    out = np.full((x.shape[0], wt.shape[0]), np.nan, x.dtype)
    L.linear_forward(out, x, wt, b)
    dx = np.full(x.shape, np.nan, x.dtype)
    L.linear_backward_input(dx, g, wt)
    dw = np.ones(wt.shape, x.dtype)  # accumulates onto 1
    db = np.ones(wt.shape[0], x.dtype)
    L.linear_backward_weight(dw, db, g, x)
    return out, dx, dw, db


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,i,o", [(3, 1000, 37), (5, 77, 130), (1, 16, 1), (16, 2051, 512)])
def test_linear_parallel_blocks(monkeypatch, n, i, o, dt):
    """Large weights run as PARALLEL_TASKS column-block GEMMs: the reference's values, the single
    GEMM's bits in float32 (to 1e-12 in float64), and the same bits on one thread and on all of them."""
    import numba

    rng = np.random.default_rng(n * i + o)
    x = rng.standard_normal((n, i)).astype(dt)
    wt = rng.standard_normal((o, i)).astype(dt)
    b = rng.standard_normal(o).astype(dt)
    g = rng.standard_normal((n, o)).astype(dt)
    monkeypatch.setattr(L, "PARALLEL_MIN_WEIGHT", 1 << 62)
    single = _linear_passes(x, wt, b, g)
    monkeypatch.setattr(L, "PARALLEL_MIN_WEIGHT", 1)  # every shape takes the blocked path
    blocked = _linear_passes(x, wt, b, g)
    tol = TOL[dt] if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)
    want = [ref.linear_forward(x, wt, b), ref.linear_backward_input(g, wt)]
    want += [1 + w for w in ref.linear_backward_weight(g, x)]
    for got, w, s in zip(blocked, want, single):
        np.testing.assert_allclose(got, w, **tol)
        if dt == np.float32:  # sgemm: the same bits (what training runs in)
            assert np.array_equal(got, s)
        else:  # dgemm's edge kernels may round a column block differently
            np.testing.assert_allclose(got, s, rtol=1e-12, atol=0)
    nt = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one_thread = _linear_passes(x, wt, b, g)
    finally:
        numba.set_num_threads(nt)
    for a, c in zip(one_thread, blocked):
        assert np.array_equal(a, c)


def test_fill_zero():
    """kernels.cpu._threads.fill_zero: zeroes large contiguous arrays in parallel blocks (the last one
    partial), and small or non-contiguous ones through NumPy."""
    from kernels.cpu._threads import FILL_PARALLEL_MIN, fill_zero

    for shape in [(FILL_PARALLEL_MIN + 12345,), (1031, 1023), (3, 5)]:
        a = np.ones(shape, np.float32)
        fill_zero(a)
        assert not a.any()
    a = np.ones((2048, 1024), np.float64)
    fill_zero(a[:, ::2])
    assert not a[:, ::2].any() and a[:, 1::2].all()
