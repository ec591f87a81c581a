"""BatchNorm2d -> ReLU -> MaxPool2d(k, stride=k) fused on the GPU, as :mod:`kernels.cpu.fused`.

Same entry points, signatures and float expressions as the CPU's fused op
(``cuda/fused.cu`` + the statistics kernels of ``cuda/batchnorm.cu``):

forward
    BatchNorm statistics (float64, deterministic block reduction), then ONE
    pass that normalises, rectifies and pools, writing only the pooled output
    and its argmax (first maximum of the ReLU output in row-major order).
backward
    per-channel float64 sums over the pooled positions only, then ONE gather
    pass writing ``dx`` of the BatchNorm input (no atomics).

Inputs that are not C-contiguous are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from ..shapes import maxpool2d_output_size
from . import _launch as L
from . import batchnorm as _bn

__all__ = ["bn_relu_pool_forward_train", "bn_relu_pool_forward_eval", "bn_relu_pool_backward",
           "bn_relu_pool_apply_train", "bn_relu_pool_backward_sums", "bn_relu_pool_backward_apply"]


def _check(x, out, argmax, k):
    dt = L.float_dtype(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    shape = (n, c) + maxpool2d_output_size(h, w, k, k)
    L.check_out("out", out, shape, dt)
    L.check_out("argmax", argmax, shape, np.int32)
    return dt, L.contig(x), shape


def _pool(out, argmax, x, coef, k):
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    grid, block = L.plane_grid(n * c, oh * ow)
    L.kernel("fused.cu", "bn_relu_pool_forward", x.dtype)(
        grid, block, (out, argmax, x, coef, L.i32(c), L.i32(h), L.i32(w), L.i32(oh), L.i32(ow), L.i32(k)))


def bn_relu_pool_forward_train(out, argmax, save_mean, save_invstd, x, gamma, beta, running_mean, running_var,
                               momentum, eps, kernel_size):
    """Fused BatchNorm2d (training) -> ReLU -> MaxPool2d(kernel_size, stride=kernel_size).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, C, OH, OW), dtype=x.dtype], ``OH = H // k`` (floor mode)
    argmax : cupy.ndarray [shape=(N, C, OH, OW), dtype=int32]
    save_mean, save_invstd : cupy.ndarray [shape=(C,), dtype=float64]
    x : cupy.ndarray [shape=(N, C, H, W), float32 or float64]
    gamma, beta, running_mean, running_var : cupy.ndarray [shape=(C,)]
        Running statistics updated in place (PyTorch convention).
    momentum, eps : float
    kernel_size : int >= 1

    Raises
    ------
    ValueError
        On wrong shapes, dtypes, or a window larger than the plane, or ``N*H*W < 2``.
    """
    dt, x, _ = _check(x, out, argmax, kernel_size)
    n, c, h, w = x.shape
    if n * h * w < 2:
        raise ValueError(f"BatchNorm training needs N*H*W >= 2 values per channel, got x shape {x.shape}")
    gamma, beta = _bn._vec("gamma", gamma, c, dt), _bn._vec("beta", beta, c, dt)
    L.check_out("running_mean", running_mean, (c,), dt)
    L.check_out("running_var", running_var, (c,), dt)
    mean64, inv64 = _bn._stat_buf("save_mean", save_mean, c), _bn._stat_buf("save_invstd", save_invstd, c)
    coef = _bn._stats(x, n, c, h * w, gamma, beta, running_mean, running_var, momentum, eps, mean64, inv64)
    if mean64 is not save_mean:
        save_mean[...] = mean64
    if inv64 is not save_invstd:
        save_invstd[...] = inv64
    _pool(out, argmax, x, coef, int(kernel_size))


def bn_relu_pool_forward_eval(out, argmax, x, gamma, beta, running_mean, running_var, eps, kernel_size):
    """Fused BatchNorm2d (eval, running statistics) -> ReLU -> MaxPool2d(k, stride=k); see the train version."""
    dt, x, _ = _check(x, out, argmax, kernel_size)
    c = x.shape[1]
    vecs = [_bn._vec(nm, a, c, dt) for nm, a in (("gamma", gamma), ("beta", beta),
                                                  ("running_mean", running_mean), ("running_var", running_var))]
    coef = _bn.eval_coefficients(*vecs, eps, c, dt)
    _pool(out, argmax, x, coef, int(kernel_size))


def bn_relu_pool_backward(dx, dgamma, dbeta, dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size,
                           out=None):
    """Backward of :func:`bn_relu_pool_forward_train` (overwrites ``dx``; ``dgamma``, ``dbeta`` ``+=``).

    Parameters
    ----------
    dx : cupy.ndarray [shape=(N, C, H, W), dtype=x.dtype], C-contiguous
    dgamma, dbeta : cupy.ndarray [shape=(C,)], accumulated
    dout, argmax : cupy.ndarray [shape=(N, C, OH, OW)]
    x : cupy.ndarray [shape=(N, C, H, W)]
        The forward's BatchNorm input.
    save_mean, save_invstd : cupy.ndarray [shape=(C,), dtype=float64]
    gamma, beta : cupy.ndarray [shape=(C,)]
    kernel_size : int
    out : cupy.ndarray or None
        The forward's pooled output; accepted for the CPU signature and not
        used here (the GPU reduction reads ``x`` at the argmaxes, one thread
        block per channel, where the gather costs no more than a stream).

    Raises
    ------
    ValueError
        On wrong shapes or dtypes.
    """
    k = int(kernel_size)
    dt = L.float_dtype(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    oh, ow = maxpool2d_output_size(h, w, k, k)
    x = L.contig(x)
    dout = L.check("dout", dout, (n, c, oh, ow), dt)
    argmax = L.check("argmax", argmax, (n, c, oh, ow), np.int32)
    L.check_out("dx", dx, x.shape, dt)
    L.check_out("dgamma", dgamma, (c,), dt)
    L.check_out("dbeta", dbeta, (c,), dt)
    gamma, beta = _bn._vec("gamma", gamma, c, dt), _bn._vec("beta", beta, c, dt)
    mean64, inv64 = _bn.saved64("save_mean", save_mean, c), _bn.saved64("save_invstd", save_invstd, c)
    fcoef = _bn._WS.get("fcoef_" + dt.str, (3, c), dt, cp)
    L.kernel("batchnorm.cu", "batchnorm_coef_from_saved", dt)((L.blocks(c),), (L.THREADS,),
                                                    (fcoef, mean64, inv64, gamma, beta, L.i32(c)))
    q = oh * ow
    S, chunk = L.split_grid(c, q)
    part = _bn._WS.get("part", (c, S, 2), np.float64, cp)
    L.kernel("fused.cu", "bn_relu_pool_bwd_partial", dt)(
        (c, S), (L.THREADS,), (part, dout, argmax, x, fcoef, mean64, L.i32(n), L.i32(c), L.i32(h * w), L.i32(q),
                               L.i32(chunk)))
    bcoef = _bn.backward_coefficients(part, S, mean64, inv64, gamma, dgamma, dbeta, n * h * w, dt)
    grid, block = L.plane_grid(n * c, h * w)
    L.kernel("fused.cu", "bn_relu_pool_bwd_apply", dt)(
        grid, block, (dx, dout, argmax, x, fcoef, bcoef, L.i32(c), L.i32(h), L.i32(w), L.i32(oh), L.i32(ow), L.i32(k)))


# ---- the split steps (SyncBatchNorm in engine/distributed.py), as kernels.cpu.fused -------------------


def bn_relu_pool_apply_train(out, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size):
    """Normalise with the saved statistics, rectify and pool in one pass (shapes as the train forward)."""
    dt, x, _ = _check(x, out, argmax, kernel_size)
    c = x.shape[1]
    gamma, beta = _bn._vec("gamma", gamma, c, dt), _bn._vec("beta", beta, c, dt)
    coef = _bn.train_coefficients(_bn.saved64("save_mean", save_mean, c), _bn.saved64("save_invstd", save_invstd, c),
                                  gamma, beta, c, dt)
    _pool(out, argmax, x, coef, int(kernel_size))


def _bwd_prep(dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size):
    k = int(kernel_size)
    dt = L.float_dtype(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    oh, ow = maxpool2d_output_size(h, w, k, k)
    x = L.contig(x)
    dout = L.check("dout", dout, (n, c, oh, ow), dt)
    argmax = L.check("argmax", argmax, (n, c, oh, ow), np.int32)
    gamma, beta = _bn._vec("gamma", gamma, c, dt), _bn._vec("beta", beta, c, dt)
    mean64, inv64 = _bn.saved64("save_mean", save_mean, c), _bn.saved64("save_invstd", save_invstd, c)
    fcoef = _bn._WS.get("fcoef_" + dt.str, (3, c), dt, cp)
    L.kernel("batchnorm.cu", "batchnorm_coef_from_saved", dt)((L.blocks(c),), (L.THREADS,),
                                                    (fcoef, mean64, inv64, gamma, beta, L.i32(c)))
    return dt, x, dout, argmax, gamma, mean64, inv64, fcoef, (n, c, h, w, oh, ow, k)


def bn_relu_pool_backward_sums(sums, dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size):
    """``sums (2, C) float64 = [sum(dy), sum(dy*(x - mean))]`` over the positions the pool and ReLU pass."""
    dt, x, dout, argmax, gamma, mean64, inv64, fcoef, (n, c, h, w, oh, ow, k) = _bwd_prep(
        dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size)
    _bn._sums("sums", sums, c)
    q = oh * ow
    S, chunk = L.split_grid(c, q)
    part = _bn._WS.get("part", (c, S, 2), np.float64, cp)
    L.kernel("fused.cu", "bn_relu_pool_bwd_partial", dt)(
        (c, S), (L.THREADS,), (part, dout, argmax, x, fcoef, mean64, L.i32(n), L.i32(c), L.i32(h * w), L.i32(q),
                               L.i32(chunk)))
    _bn._k("batchnorm_sums_combine", dt)((L.blocks(c),), (L.THREADS,), (sums, part, L.i32(c), L.i32(S)))


def bn_relu_pool_backward_apply(dx, dout, argmax, x, save_mean, save_invstd, gamma, beta, sums, count, kernel_size):
    """``dx`` of the BatchNorm input from the whole batch's backward ``sums`` over ``count`` values."""
    dt, x, dout, argmax, gamma, mean64, inv64, fcoef, (n, c, h, w, oh, ow, k) = _bwd_prep(
        dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size)
    L.check_out("dx", dx, x.shape, dt)
    _bn._sums("sums", sums, c)
    bcoef = _bn.backward_coefficients_from_sums(sums, mean64, inv64, gamma, count, c, dt)
    grid, block = L.plane_grid(n * c, h * w)
    L.kernel("fused.cu", "bn_relu_pool_bwd_apply", dt)(
        grid, block, (dx, dout, argmax, x, fcoef, bcoef, L.i32(c), L.i32(h), L.i32(w), L.i32(oh), L.i32(ow), L.i32(k)))
