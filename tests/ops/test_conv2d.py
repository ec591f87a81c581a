"""conv2d: the float64 reference, the Numba kernels against it, the GPU kernels against both, Conv2d's gradient check.

Tolerances:
* float64 kernels vs the float64 reference: rtol 1e-10, atol 1e-10. Both
  compute the same sums in a different order, so they differ by a few ulps
  of the largest partial sum (inputs are O(1), sums have at most ~100 terms).
* float32 kernels: rtol 1e-4, atol 1e-5 on forward and on both gradients.
  Inputs are drawn in float32 and the reference is fed the same float32
  values promoted to float64, so the only error is float32 rounding of sums
  of <= ~100 O(1) terms (~1e-6 relative), well inside the bound.
* The reference itself is checked against centred finite differences in
  float64 (h = 1e-6, relative error < 1e-7 on a linear op).
* Accumulation and determinism are checked bit-exactly.
* GPU parity (marker ``gpu``; ``HITCNN_GPU_EMULATE=1`` runs it on the CPU
  emulator): see tests/ops/helpers.py.
* Gradient check of the layer: float64 finite differences, relative error < 1e-6.
"""
import numba
import numpy as np
import pytest

from engine.layers import Conv2d
from engine.reference import conv2d as ref
from kernels import Workspace
from kernels.cpu import conv2d as K

from .helpers import F32_REDUCE, F64, cp, layer_gradcheck, noncontig, rel

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


# (N, C, H, W, F, KH, KW, stride, padding): batch 1, odd / non-square sizes, C = 1 and 3,
# odd F, kernels 3, 1, 3x2 and 5x4, stride 1 and 2, padding 0..2, overlapping windows (stride < K).
CASES = [
    (1, 1, 5, 5, 1, 3, 3, 1, 1),
    (2, 3, 7, 6, 5, 3, 3, 1, 1),
    (3, 3, 9, 11, 7, 3, 3, 2, 1),
    (1, 2, 8, 9, 3, 3, 2, 2, 0),
    (2, 1, 5, 7, 3, 1, 1, 2, 1),
    (3, 4, 6, 7, 3, 5, 4, 1, 2),
    (5, 3, 4, 3, 4, 3, 3, 1, 0),
    (2, 16, 7, 5, 5, 3, 2, 1, 1),  # C >= 16: the im2row forward by default
    (3, 17, 6, 9, 4, 3, 3, 2, 1),
]


def _data(case, dt, seed=0):
    n, c, h, w, f, kh, kw, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dt)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dt)
    b = rng.standard_normal(f).astype(dt)
    oh, ow = ref.conv2d_output_size(h, w, kh, kw, s, p)
    g = rng.standard_normal((n, f, oh, ow)).astype(dt)
    return x, wt, b, g, s, p


def _run(x, wt, b, g, s, p, ws):
    dt = x.dtype
    out = np.full(g.shape, np.nan, dt)
    K.conv2d_forward(out, x, wt, b, s, p, ws)
    dx = np.full(x.shape, np.nan, dt)  # dx is overwritten, garbage must not leak
    K.conv2d_backward_input(dx, g, wt, s, p, ws)
    dw = np.zeros(wt.shape, dt)
    db = np.zeros(b.shape, dt)
    K.conv2d_backward_weight(dw, db, g, x, s, p, ws)
    return out, dx, dw, db


# Code paths: default plan; one-row chunks inside an image (the large-layer path); the im2row
# forward on every case (by default only from 16 channels on); im2row with one-row chunks.
VARIANTS = {"default": {}, "row-chunks": {"CHUNK_BYTES": 64, "SMALL_C_CHUNK_BYTES": 64},
            "im2row": {"ROWS_MIN_CHANNELS": 1},
            "im2row-row-chunks": {"ROWS_MIN_CHANNELS": 1, "CHUNK_BYTES": 64, "SMALL_C_CHUNK_BYTES": 64}}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}C{}H{}W{}F{}k{}x{}s{}p{}".format(*c))
def test_conv_matches_reference(case, dt, variant, monkeypatch):
    for name, value in VARIANTS[variant].items():
        monkeypatch.setattr(K, name, value)
    x, wt, b, g, s, p = _data(case, dt)
    out, dx, dw, db = _run(x, wt, b, g, s, p, Workspace())
    r_out = ref.conv2d_forward(x, wt, b, s, p)
    r_dx = ref.conv2d_backward_input(g, wt, x.shape, s, p)
    r_dw, r_db = ref.conv2d_backward_weight(g, x, wt.shape[2:], s, p)
    for got, want in [(out, r_out), (dx, r_dx), (dw, r_dw), (db, r_db)]:
        assert got.dtype == dt
        np.testing.assert_allclose(got, want, **TOL[dt])


def test_weight_grads_accumulate_and_are_deterministic():
    x, wt, b, g, s, p = _data((9, 3, 9, 11, 7, 3, 3, 2, 1), np.float32, seed=3)  # several chunks
    ws = Workspace()
    dw = np.zeros(wt.shape, np.float32)
    db = np.zeros(b.shape, np.float32)
    K.conv2d_backward_weight(dw, db, g, x, s, p, ws)
    once_w, once_b = dw.copy(), db.copy()
    assert np.abs(once_w).max() > 0 and np.abs(once_b).max() > 0
    K.conv2d_backward_weight(dw, db, g, x, s, p, ws)
    np.testing.assert_array_equal(dw, 2 * once_w)  # += and bit-identical second pass
    np.testing.assert_array_equal(db, 2 * once_b)
    runs = [_run(x, wt, b, g, s, p, ws), _run(x, wt, b, g, s, p, Workspace())]
    old = numba.get_num_threads()
    numba.set_num_threads(1)  # results must not depend on the thread count or the scheduling
    try:
        runs.append(_run(x, wt, b, g, s, p, Workspace()))
    finally:
        numba.set_num_threads(old)
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            np.testing.assert_array_equal(a, c)


def test_bias_none():
    x, wt, b, g, s, p = _data(CASES[1], np.float64)
    out = np.empty(g.shape)
    K.conv2d_forward(out, x, wt, None, s, p, Workspace())
    np.testing.assert_allclose(out, ref.conv2d_forward(x, wt, None, s, p), **TOL[np.float64])
    dw = np.zeros(wt.shape)
    K.conv2d_backward_weight(dw, None, g, x, s, p, Workspace())
    np.testing.assert_allclose(dw, ref.conv2d_backward_weight(g, x, wt.shape[2:], s, p)[0], **TOL[np.float64])


def test_known_values_3x3():
    # x = [[1,2,3],[4,5,6],[7,8,9]], 3x3 kernel of ones, padding 1: each output is the sum of the
    # in-image 3x3 neighbourhood; dx with dout = 1 counts the windows covering each pixel.
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    wt = np.ones((1, 1, 3, 3))
    box = np.array([[12, 21, 16], [27, 45, 33], [24, 39, 28]], dtype=np.float64)
    ws = Workspace()
    for dt in (np.float32, np.float64):
        out = np.empty((1, 1, 3, 3), dt)
        K.conv2d_forward(out, x.astype(dt), wt.astype(dt), np.array([0.5], dt), 1, 1, ws)
        np.testing.assert_array_equal(out[0, 0], box + 0.5)
        dx = np.empty((1, 1, 3, 3), dt)
        K.conv2d_backward_input(dx, np.ones((1, 1, 3, 3), dt), wt.astype(dt), 1, 1, ws)
        np.testing.assert_array_equal(dx[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
        dw = np.zeros((1, 1, 3, 3), dt)
        db = np.zeros(1, dt)
        K.conv2d_backward_weight(dw, db, np.ones((1, 1, 3, 3), dt), x.astype(dt), 1, 1, ws)
        np.testing.assert_array_equal(dw[0, 0], box)
        assert db[0] == 9
    # 2x2 kernel [[1,2],[3,4]], stride 1, no padding: 1*1+2*2+3*4+4*5 = 37, ...
    out = np.empty((1, 1, 2, 2))
    K.conv2d_forward(out, x, np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), None, 1, 0, ws)
    np.testing.assert_array_equal(out[0, 0], [[37, 47], [67, 77]])
    # same kernel, stride 2: one window
    out = np.empty((1, 1, 1, 1))
    K.conv2d_forward(out, x, np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), None, 2, 0, ws)
    assert out[0, 0, 0, 0] == 37


def test_reference_conv_matches_finite_differences():
    # loss = sum(out * g) with a random g; centred differences on every input entry.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 4))
    wt = rng.standard_normal((3, 2, 3, 2))
    b = rng.standard_normal(3)
    s, p = 2, 1
    g = rng.standard_normal(ref.conv2d_forward(x, wt, b, s, p).shape)
    dx = ref.conv2d_backward_input(g, wt, x.shape, s, p)
    dw, db = ref.conv2d_backward_weight(g, x, wt.shape[2:], s, p)
    h = 1e-6

    def numgrad(arr):
        out = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            fp = np.sum(ref.conv2d_forward(x, wt, b, s, p) * g)
            arr[idx] = old - h
            fm = np.sum(ref.conv2d_forward(x, wt, b, s, p) * g)
            arr[idx] = old
            out[idx] = (fp - fm) / (2 * h)
        return out

    for analytic, arr in [(dx, x), (dw, wt), (db, b)]:
        num = numgrad(arr)
        assert np.abs(analytic - num).max() / np.abs(num).max() < 1e-7


def test_non_contiguous_inputs_are_handled():
    x, wt, b, g, s, p = _data(CASES[1], np.float64)
    xt = np.asfortranarray(x)[:, :, ::-1, :]  # strided, negative steps
    gt = np.asfortranarray(g)
    out = np.empty(g.shape)
    ws = Workspace()
    K.conv2d_forward(out, xt, wt, b, s, p, ws)
    np.testing.assert_allclose(out, ref.conv2d_forward(xt, wt, b, s, p), **TOL[np.float64])
    dx = np.empty(x.shape)
    K.conv2d_backward_input(dx, gt, wt[..., ::-1].copy()[..., ::-1], s, p, ws)
    np.testing.assert_allclose(dx, ref.conv2d_backward_input(g, wt, x.shape, s, p), **TOL[np.float64])
    dw = np.zeros(wt.shape)
    K.conv2d_backward_weight(dw, None, gt, xt, s, p, ws)
    np.testing.assert_allclose(dw, ref.conv2d_backward_weight(g, xt, wt.shape[2:], s, p)[0], **TOL[np.float64])
    with pytest.raises(ValueError, match="C-contiguous"):
        K.conv2d_forward(np.empty(g.shape[::-1]).T, x, wt, b, s, p, ws)


def test_bad_input_raises_value_error_naming_shapes():
    x, wt, b, g, s, p = _data(CASES[1], np.float32)
    ws = Workspace()
    out = np.empty(g.shape, np.float32)
    with pytest.raises(ValueError, match=r"4-D.*\(7, 6\)"):
        K.conv2d_forward(out, x[0, 0], wt, b, s, p, ws)
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 3, 7, 6\).*expects 2"):
        K.conv2d_forward(out, x, wt[:, :2], b, s, p, ws)
    with pytest.raises(ValueError, match="float32 or float64"):
        K.conv2d_forward(out, x.astype(np.int32), wt, b, s, p, ws)
    with pytest.raises(ValueError, match="weight must be float32"):
        K.conv2d_forward(out, x, wt.astype(np.float64), b, s, p, ws)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 5, 7, 6\), got \(2, 5, 7, 5\)"):
        K.conv2d_forward(out[..., :5].copy(), x, wt, b, s, p, ws)
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        K.conv2d_forward(out, x, wt, b[:4], s, p, ws)
    with pytest.raises(ValueError, match="stride"):
        K.conv2d_forward(out, x, wt, b, 0, p, ws)
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 5, 7, 6\)"):
        K.conv2d_backward_input(np.empty(x.shape, np.float32), g[:, :4], wt, s, p, ws)
    with pytest.raises(ValueError, match=r"dout must have shape"):
        K.conv2d_backward_weight(np.zeros(wt.shape, np.float32), None, g[:1], x, s, p, ws)


# ----------------------------------------------------------------------------- GPU
CONV_CASES = [((1, 1, 5, 5), 1, 3, 1, 1), ((2, 3, 7, 9), 4, 3, 1, 1), ((2, 3, 8, 7), 5, 3, 2, 0),
              ((3, 4, 6, 11), 2, 2, 2, 1), ((2, 32, 51, 79), 32, 3, 1, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("xshape,f,k,s,p", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_conv2d(G, C, xshape, f, k, s, p, dtype):
    rng = np.random.default_rng(2)
    n, c, h, w = xshape
    x = rng.standard_normal(xshape).astype(dtype)
    wt = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    want = ref.conv2d_forward(x, wt, b, s, p)
    out_g = cp.empty(want.shape, dtype)
    ws = Workspace()
    G.conv2d.conv2d_forward(out_g, noncontig(x), cp.asarray(wt), cp.asarray(b), s, p, ws)
    dy = rng.standard_normal(want.shape).astype(dtype)
    dx_r = ref.conv2d_backward_input(dy, wt, x.shape, s, p)
    dw_r, db_r = ref.conv2d_backward_weight(dy, x, wt.shape[2:], s, p)
    dx_g = cp.empty(xshape, dtype)
    G.conv2d.conv2d_backward_input(dx_g, noncontig(dy), cp.asarray(wt), s, p, ws)
    dw0 = rng.standard_normal(wt.shape).astype(dtype)  # accumulation (+=) onto existing values
    db0 = rng.standard_normal(f).astype(dtype)
    dw_g, db_g = cp.asarray(dw0), cp.asarray(db0)
    G.conv2d.conv2d_backward_weight(dw_g, db_g, cp.asarray(dy), cp.asarray(x), s, p, ws)
    tol = F64 if dtype == np.float64 else F32_REDUCE
    assert rel(out_g, want) < tol
    assert rel(dx_g, dx_r) < tol
    assert rel(dw_g, dw0 + dw_r) < tol
    assert rel(db_g, db0 + db_r) < tol
    if dtype == np.float32:  # and against the CPU kernels
        out_c = np.empty(want.shape, dtype)
        C.conv2d.conv2d_forward(out_c, x, wt, b, s, p, Workspace())
        assert rel(out_g, out_c) < F32_REDUCE


@pytest.mark.gpu
def test_gpu_conv2d_rejects_bad_input(G):
    x = cp.zeros((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="channels"):
        G.conv2d.conv2d_forward(cp.zeros((1, 2, 5, 5), np.float32), x, cp.zeros((2, 4, 3, 3), np.float32), None,
                                1, 1, Workspace())
    with pytest.raises(ValueError):
        G.conv2d.conv2d_forward(cp.zeros((1, 2, 5, 5), np.float16), x.astype(np.float16),
                                cp.zeros((2, 3, 3, 3), np.float16), None, 1, 1, Workspace())


# ----------------------------------------------------------------------------- gradient check
GRADCHECK_LAYERS = [
    ("conv_s1_p1", lambda: Conv2d(2, 3, 3, 1, 1, rng=0), (2, 2, 6, 7)),
    ("conv_s2_p0", lambda: Conv2d(2, 3, 3, 2, 0, rng=1), (1, 2, 7, 8)),
]


@pytest.mark.parametrize("name,make,shape", GRADCHECK_LAYERS, ids=[n for n, _, _ in GRADCHECK_LAYERS])
def test_conv2d_layer_gradcheck(name, make, shape):
    layer_gradcheck(name, make, shape)
