"""GPU kernels (kernels.gpu) against the CPU kernels (kernels.cpu) and the float64 reference.

Marker ``gpu``: skipped without CuPy and a CUDA device (tests/conftest.py).
Awkward shapes: batch 1, odd and non-square planes, stride 2, padding 0 and
1, overlapping pooling windows, and non-contiguous inputs given to the
launchers (which copy them; outputs must be contiguous).

Tolerance policy (relative to the largest magnitude of the expected array,
``max|got - want| / max|want|``):

* pointwise ops (ReLU, dropout, maxpool, Adam): 1e-5 in float32; most are
  bit-identical (same float expression, no FMA contraction: ``--fmad=false``);
* convolutions, Linear, reductions (BatchNorm, softmax CE): 1e-4 in float32:
  cuBLAS and BLAS sum in different orders;
* float64 GPU against the float64 reference: 1e-10;
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

from engine import reference as ref
from kernels import Workspace

#: HITCNN_GPU_EMULATE=1: run these tests without a GPU on kernels/gpu/_emulate.py's CuPy stand-in
#: (the same CUDA sources compiled for the host); tests/test_gpu_compile.py does so in CI.
EMULATED = bool(os.environ.get("HITCNN_GPU_EMULATE"))
if EMULATED:
    _spec = importlib.util.spec_from_file_location(
        "hitcnn_gpu_emulate", Path(__file__).resolve().parents[1] / "kernels" / "gpu" / "_emulate.py")
    _emu = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_emu)
    _emu.install()

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

F32_POINT = 1e-5
F32_REDUCE = 1e-4
F64 = 1e-10


def rel(got, want):
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0


def noncontig(a):
    """A non-C-contiguous CuPy array with the values of ``a`` (every other element of a wider array)."""
    wide = cp.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = cp.asarray(a)
    v = wide[..., ::2]
    assert a.shape[-1] == 1 or not v.flags.c_contiguous
    return v


@pytest.fixture
def G():
    import kernels

    return kernels.get_backend("gpu")


@pytest.fixture
def C():
    import importlib

    import kernels

    cpu = kernels.get_backend("cpu")
    cpu.fused = importlib.import_module("kernels.cpu.fused")  # not in kernels.cpu.OPS (lazy import list)
    return cpu


# ----------------------------------------------------------------------------- ReLU
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (2, 32, 51, 79)])
def test_relu(G, C, shape):
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


# ----------------------------------------------------------------------------- MaxPool
@pytest.mark.parametrize("shape,k,s", [((1, 1, 2, 2), 2, 2), ((2, 3, 7, 9), 2, 2), ((2, 3, 9, 8), 3, 2),
                                       ((1, 4, 102, 159), 2, 2)])
def test_maxpool(G, C, shape, k, s):
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


# ----------------------------------------------------------------------------- Conv2d
CONV_CASES = [((1, 1, 5, 5), 1, 3, 1, 1), ((2, 3, 7, 9), 4, 3, 1, 1), ((2, 3, 8, 7), 5, 3, 2, 0),
              ((3, 4, 6, 11), 2, 2, 2, 1), ((2, 32, 51, 79), 32, 3, 1, 1)]


@pytest.mark.parametrize("xshape,f,k,s,p", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d(G, C, xshape, f, k, s, p, dtype):
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


def test_conv2d_rejects_bad_input(G):
    x = cp.zeros((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="channels"):
        G.conv2d.conv2d_forward(cp.zeros((1, 2, 5, 5), np.float32), x, cp.zeros((2, 4, 3, 3), np.float32), None,
                                1, 1, Workspace())
    with pytest.raises(ValueError):
        G.conv2d.conv2d_forward(cp.zeros((1, 2, 5, 5), np.float16), x.astype(np.float16),
                                cp.zeros((2, 3, 3, 3), np.float16), None, 1, 1, Workspace())


# ----------------------------------------------------------------------------- Linear
@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (3, 7, 5), (64, 256, 512)])
def test_linear(G, C, n, fin, fout):
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


# ----------------------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 7), (4, 32, 102, 159)])
def test_batchnorm(G, C, shape):
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


def test_fused_bn_relu_pool(G, C):
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


def test_batchnorm_split_steps_over_two_shards_equal_one_batch(G, C):
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


# ----------------------------------------------------------------------------- Dropout
def test_dropout(G, C):
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


# ----------------------------------------------------------------------------- softmax cross-entropy
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n,k,scale", [(1, 3, 1.0), (17, 3, 5.0), (64, 10, 1e8)])
def test_softmax_xent(G, C, n, k, scale, weighted):
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


def test_softmax_xent_bad_target(G):
    with pytest.raises(ValueError, match="targets"):
        G.softmax_xent.softmax_xent_forward(cp.empty((2, 3), np.float32), cp.zeros((2, 3), np.float32),
                                            cp.asarray(np.array([0, 3], np.int64)))


# ----------------------------------------------------------------------------- Adam
def test_adam_single_and_multi(G, C):
    rng = np.random.default_rng(10)
    shapes = [(32, 3, 3, 3), (32,), (5000, 7), (3,)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs_steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(5)]
    cpu = [(p.copy(), np.zeros_like(p), np.zeros_like(p)) for p in ps]
    one = [tuple(cp.asarray(a) for a in t) for t in cpu]
    multi = [tuple(cp.asarray(a) for a in t) for t in cpu]
    for step, gs in enumerate(gs_steps, start=1):
        for (p, m, v), g in zip(cpu, gs):
            C.adam.adam_update(p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
        for (p, m, v), g in zip(one, gs):
            G.adam.adam_update(p, cp.asarray(g), m, v, step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
        G.adam.adam_update_multi([t[0] for t in multi], [cp.asarray(g) for g in gs], [t[1] for t in multi],
                                 [t[2] for t in multi], step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
    for (pc, mc, vc), (pg, mg, vg), (pm, mm, vm) in zip(cpu, one, multi):
        assert rel(pg, pc) < F32_POINT and rel(mg, mc) < F32_POINT and rel(vg, vc) < F32_POINT
        assert np.array_equal(pm.get(), pg.get())  # multi-tensor == per-tensor, bit for bit


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
    from kernels.gpu import stft as gstft
    from pipeline import spectrogram as sp

    cfg = sp.SpectrogramConfig(mode=mode, spectrogram=spec, crop_seconds=3.0)
    t = np.arange(cfg.n_crop) / cfg.sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(12).standard_normal(t.size)).astype(np.float32)
    want = sp.to_image(sp.spectrogram_db(y, cfg), cfg)
    got = gstft.spectrogram_image(cp.asarray(y), cfg)
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
    from kernels.gpu.prefetch import PinnedPrefetcher, device_batches

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
    """Issue 10 item 19 on the GPU path: eval-mode logits of an image are bit-identical in any batch."""
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
