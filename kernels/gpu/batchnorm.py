"""BatchNorm2d forward (train / eval) and backward on the GPU (CUDA C in ``cuda/batchnorm.cu``).

Same entry points and signatures as :mod:`kernels.cpu.batchnorm`, and the
same float expressions (PyTorch convention: normalise with the biased batch
variance, update ``running_var`` with the unbiased one ``var*M/(M-1)``,
``M = N*H*W``; eval uses the running statistics and never changes them).

Statistics: per-channel sums of ``x - x[0, c, 0]`` and its square accumulated
in float64 (one pass, shifted: accurate far beyond 1e-4 for ``M > 2**24``)
by a ``(C, S)`` grid of blocks, each reducing a slice with a fixed shuffle
tree, then one thread per channel combines the ``S`` partials in order: no
atomics, bit-identical run to run. ``S`` depends only on the shape.
``save_mean`` / ``save_invstd`` are float64 ``(C,)`` (float32 accepted: the
kernels then write a float64 scratch and it is rounded into them).
Inputs that are not C-contiguous are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from kernels import Workspace

from . import _launch as L

__all__ = ["batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward", "channel_stats",
           "default_shift", "batchnorm_stats", "batchnorm_stats_finish", "batchnorm_apply_train",
           "batchnorm_backward_sums", "batchnorm_backward_params", "batchnorm_backward_apply"]

#: Small per-channel scratch (partials, coefficients); reused in stream order.
_WS = Workspace()


def _k(func, dtype):
    return L.kernel("batchnorm.cu", func, dtype)


def _check_x(x):
    dt = L.float_dtype(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    return dt, L.contig(x)


def _vec(name, a, c, dt):
    return L.check(name, a, (c,), dt)


def _stat_buf(name, a, c):
    """A float64 (C,) buffer the kernels can write for output ``a`` (itself if float64)."""
    L.check_out(name, a, (c,))
    if a.dtype == np.float64:
        return a
    if a.dtype != np.float32:
        raise ValueError(f"{name} must be float64 (or float32), got {a.dtype}")
    return _WS.get(name, (c,), np.float64, cp)


def _stats(x, n, c, hw, gamma, beta, running_mean, running_var, momentum, eps, mean64, inv64):
    """Run the statistics kernels; returns coef = [sub | scale | shift] (3, C)."""
    dt = x.dtype
    S, chunk = L.split_grid(c, hw)
    part = _WS.get("part", (c, S, 2), np.float64, cp)
    _k("batchnorm_stats_partial", dt)((c, S), (L.THREADS,), (part, x, L.i32(n), L.i32(c), L.i32(hw), L.i32(chunk)))
    coef = _WS.get("coef_" + dt.str, (3, c), dt, cp)
    _k("batchnorm_stats_finalize", dt)(
        (L.blocks(c),), (L.THREADS,),
        (mean64, inv64, coef, running_mean, running_var, part, x, gamma, beta, L.i32(c), L.i32(hw), L.i32(S),
         L.f64(n * hw), L.f64(momentum), L.f64(eps)))
    return coef


def _apply(out, x, coef, n, c, hw):
    grid, block = L.plane_grid(n * c, hw)
    _k("batchnorm_apply", x.dtype)(grid, block, (out, x, coef, L.i32(c), L.i32(hw)))


def batchnorm_forward_train(out, save_mean, save_invstd, x, gamma, beta, running_mean, running_var, momentum, eps):
    """BatchNorm2d training forward; updates the running statistics in place.

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, C, H, W), dtype=x.dtype], C-contiguous
        Overwritten: ``(x - mean) * (gamma * invstd) + beta``.
    save_mean, save_invstd : cupy.ndarray [shape=(C,), dtype=float64]
        Outputs: batch mean and ``1/sqrt(var_biased + eps)``, for the backward.
    x : cupy.ndarray [shape=(N, C, H, W), dtype=float32 or float64]
    gamma, beta : cupy.ndarray [shape=(C,), dtype=x.dtype]
    running_mean, running_var : cupy.ndarray [shape=(C,), dtype=x.dtype], C-contiguous
        Updated in place: ``r = (1-momentum)*r + momentum*stat`` (unbiased variance for ``running_var``).
    momentum : float
    eps : float > 0

    Raises
    ------
    ValueError
        On a wrong rank, dtype, shape, non-contiguous output or ``N*H*W < 2``.
    """
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    hw = h * w
    if n * hw < 2:
        raise ValueError(f"BatchNorm training needs N*H*W >= 2 values per channel, got x shape {x.shape}")
    L.check_out("out", out, x.shape, dt)
    gamma, beta = _vec("gamma", gamma, c, dt), _vec("beta", beta, c, dt)
    L.check_out("running_mean", running_mean, (c,), dt)
    L.check_out("running_var", running_var, (c,), dt)
    mean64, inv64 = _stat_buf("save_mean", save_mean, c), _stat_buf("save_invstd", save_invstd, c)
    coef = _stats(x, n, c, hw, gamma, beta, running_mean, running_var, momentum, eps, mean64, inv64)
    if mean64 is not save_mean:
        save_mean[...] = mean64
    if inv64 is not save_invstd:
        save_invstd[...] = inv64
    _apply(out, x, coef, n, c, hw)


def eval_coefficients(gamma, beta, running_mean, running_var, eps, c, dt):
    """coef = [running_mean | gamma/sqrt(running_var + eps) | beta] (3, C) in ``dt`` (scratch buffer)."""
    coef = _WS.get("coef_" + np.dtype(dt).str, (3, c), dt, cp)
    _k("batchnorm_eval_coef", dt)((L.blocks(c),), (L.THREADS,),
                           (coef, gamma, beta, running_mean, running_var, L.i32(c), L.f64(eps)))
    return coef


def batchnorm_forward_eval(out, x, gamma, beta, running_mean, running_var, eps):
    """BatchNorm2d eval forward: normalise with the running statistics (unchanged).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, C, H, W)], C-contiguous
        Overwritten: ``(x - running_mean) * (gamma / sqrt(running_var + eps)) + beta``.
    x : cupy.ndarray [shape=(N, C, H, W), dtype=float32 or float64]
    gamma, beta, running_mean, running_var : cupy.ndarray [shape=(C,)]
    eps : float > 0

    Raises
    ------
    ValueError
        On a wrong rank, dtype or shape.
    """
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    L.check_out("out", out, x.shape, dt)
    vecs = [_vec(nm, a, c, dt) for nm, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                                              ("running_var", running_var))]
    coef = eval_coefficients(*vecs, eps, c, dt)
    _apply(out, x, coef, n, c, h * w)


def channel_stats(mean, var, x):
    """Per-channel batch mean and biased variance of ``x`` (float64 outputs ``(C,)``), as the CPU's."""
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    L.check_out("mean", mean, (c,), np.float64)
    L.check_out("var", var, (c,), np.float64)
    inv = _WS.get("inv_tmp", (c,), np.float64, cp)
    rm = _WS.get("rm_tmp_" + dt.str, (c,), dt, cp)
    rv = _WS.get("rv_tmp_" + dt.str, (c,), dt, cp)
    rm.fill(0)
    rv.fill(0)
    one = cp.ones(c, dt)
    _stats(x, n, c, h * w, one, one, rm, rv, 1.0, 0.0, mean, inv)
    var[...] = 1.0 / (inv * inv)


def saved64(name, a, c):
    """``a`` as a float64 (C,) CuPy array (a converted scratch copy if it is float32)."""
    if not isinstance(a, cp.ndarray) or a.shape != (c,):
        raise ValueError(f"{name} must be a CuPy array of shape ({c},), got {getattr(a, 'shape', type(a).__name__)}")
    if a.dtype == np.float64:
        return L.contig(a)
    buf = _WS.get(name, (c,), np.float64, cp)
    buf[...] = a
    return buf


def backward_coefficients(part, S, save_mean, save_invstd, gamma, dgamma, dbeta, m, dt):
    """bcoef = [cdy | cx | c0 | sub] (4, C) from the partial sums; accumulates ``dgamma``, ``dbeta``."""
    c = save_mean.shape[0]
    bcoef = _WS.get("bcoef_" + np.dtype(dt).str, (4, c), dt, cp)
    _k("batchnorm_bwd_finalize", dt)((L.blocks(c),), (L.THREADS,),
                              (bcoef, dgamma, dbeta, part, save_mean, save_invstd, gamma, L.i32(c), L.i32(S),
                               L.f64(m)))
    return bcoef


def batchnorm_backward(dx, dgamma, dbeta, dout, x, save_mean, save_invstd, gamma):
    """BatchNorm2d training backward (batch statistics).

    Parameters
    ----------
    dx : cupy.ndarray [shape=(N, C, H, W)], C-contiguous
        Overwritten: ``gamma*invstd*(dout - mean(dout) - xhat*mean(dout*xhat))``.
    dgamma, dbeta : cupy.ndarray [shape=(C,)], C-contiguous
        Accumulated (``+=``): ``sum(dout*xhat)`` and ``sum(dout)`` over ``N, H, W`` (float64 sums).
    dout, x : cupy.ndarray [shape=(N, C, H, W)]
    save_mean, save_invstd : cupy.ndarray [shape=(C,), dtype=float64]
        From :func:`batchnorm_forward_train`.
    gamma : cupy.ndarray [shape=(C,)]

    Raises
    ------
    ValueError
        On a wrong rank, dtype or shape.
    """
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    hw = h * w
    L.check_out("dx", dx, x.shape, dt)
    dout = L.check("dout", dout, x.shape, dt)
    L.check_out("dgamma", dgamma, (c,), dt)
    L.check_out("dbeta", dbeta, (c,), dt)
    gamma = _vec("gamma", gamma, c, dt)
    mean64, inv64 = saved64("save_mean", save_mean, c), saved64("save_invstd", save_invstd, c)
    S, chunk = L.split_grid(c, hw)
    part = _WS.get("part", (c, S, 2), np.float64, cp)
    _k("batchnorm_bwd_partial", dt)((c, S), (L.THREADS,),
                             (part, dout, x, mean64, L.i32(n), L.i32(c), L.i32(hw), L.i32(chunk)))
    bcoef = backward_coefficients(part, S, mean64, inv64, gamma, dgamma, dbeta, n * hw, dt)
    grid, block = L.plane_grid(n * c, hw)
    _k("batchnorm_bwd_apply", dt)(grid, block, (dx, dout, x, bcoef, L.i32(c), L.i32(hw)))


# ---- the split steps (SyncBatchNorm in engine/distributed.py), as kernels.cpu.batchnorm -------------


def _sums(name, a, c):
    L.check_out(name, a, (2, c), np.float64)
    return a


def default_shift(x):
    """The single-process statistics shift ``x[0, c, 0, 0]`` per channel, float64 ``(C,)``."""
    return cp.ascontiguousarray(x[0, :, 0, 0], dtype=np.float64)


def batchnorm_stats(sums, x, shift):
    """``sums (2, C) float64 = [sum(x - shift), sum((x - shift)**2)]`` per channel (deterministic blocks)."""
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    hw = h * w
    _sums("sums", sums, c)
    shift = L.check("shift", shift, (c,), np.float64)
    S, chunk = L.split_grid(c, hw)
    part = _WS.get("part", (c, S, 2), np.float64, cp)
    _k("batchnorm_stats_partial_shift", dt)((c, S), (L.THREADS,),
                                     (part, x, shift, L.i32(n), L.i32(c), L.i32(hw), L.i32(chunk)))
    _k("batchnorm_sums_combine", dt)((L.blocks(c),), (L.THREADS,), (sums, part, L.i32(c), L.i32(S)))


def batchnorm_stats_finish(save_mean, save_invstd, sums, shift, count, running_mean, running_var, momentum, eps):
    """Batch statistics from :func:`batchnorm_stats` sums over ``count`` values; updates the running stats."""
    c = int(shift.shape[0])
    if int(count) < 2:
        raise ValueError(f"BatchNorm training needs N*H*W >= 2 values per channel, got {count}")
    dt = L.float_dtype(running_mean)
    _sums("sums", sums, c)
    for name, a in (("save_mean", save_mean), ("save_invstd", save_invstd)):
        L.check_out(name, a, (c,), np.float64)
    L.check_out("running_mean", running_mean, (c,), dt)
    L.check_out("running_var", running_var, (c,), dt)
    shift = L.check("shift", shift, (c,), np.float64)
    _k("batchnorm_stats_from_sums", dt)((L.blocks(c),), (L.THREADS,),
                                 (save_mean, save_invstd, running_mean, running_var, sums, shift, L.i32(c),
                                  L.f64(count), L.f64(momentum), L.f64(eps)))


def train_coefficients(save_mean, save_invstd, gamma, beta, c, dt):
    """coef = [mean | gamma*invstd | beta] (3, C) in ``dt``, as the single-process forward makes them."""
    coef = _WS.get("coef_" + np.dtype(dt).str, (3, c), dt, cp)
    L.kernel("batchnorm.cu", "batchnorm_coef_from_saved", dt)((L.blocks(c),), (L.THREADS,),
                                                    (coef, save_mean, save_invstd, gamma, beta, L.i32(c)))
    return coef


def batchnorm_apply_train(out, x, save_mean, save_invstd, gamma, beta):
    """``out = (x - mean) * (gamma * invstd) + beta`` from the saved (e.g. summed over processes) statistics."""
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    L.check_out("out", out, x.shape, dt)
    gamma, beta = _vec("gamma", gamma, c, dt), _vec("beta", beta, c, dt)
    coef = train_coefficients(saved64("save_mean", save_mean, c), saved64("save_invstd", save_invstd, c),
                              gamma, beta, c, dt)
    _apply(out, x, coef, n, c, h * w)


def batchnorm_backward_sums(sums, dout, x, save_mean):
    """``sums (2, C) float64 = [sum(dy), sum(dy*(x - mean))]`` per channel."""
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    hw = h * w
    _sums("sums", sums, c)
    dout = L.check("dout", dout, x.shape, dt)
    mean64 = saved64("save_mean", save_mean, c)
    S, chunk = L.split_grid(c, hw)
    part = _WS.get("part", (c, S, 2), np.float64, cp)
    _k("batchnorm_bwd_partial", dt)((c, S), (L.THREADS,),
                             (part, dout, x, mean64, L.i32(n), L.i32(c), L.i32(hw), L.i32(chunk)))
    _k("batchnorm_sums_combine", dt)((L.blocks(c),), (L.THREADS,), (sums, part, L.i32(c), L.i32(S)))


def batchnorm_backward_params(dgamma, dbeta, sums, save_invstd):
    """``dgamma += sums[1]*invstd``, ``dbeta += sums[0]`` (float64, rounded once)."""
    c = int(sums.shape[1])
    dt = L.float_dtype(dgamma)
    L.check_out("dgamma", dgamma, (c,), dt)
    L.check_out("dbeta", dbeta, (c,), dt)
    _sums("sums", sums, c)
    _k("batchnorm_bwd_params", dt)((L.blocks(c),), (L.THREADS,),
                            (dgamma, dbeta, sums, saved64("save_invstd", save_invstd, c), L.i32(c)))


def backward_coefficients_from_sums(sums, mean64, inv64, gamma, count, c, dt):
    """bcoef = [cdy | cx | c0 | sub] (4, C) from the whole batch's backward sums over ``count`` values."""
    bcoef = _WS.get("bcoef_" + np.dtype(dt).str, (4, c), dt, cp)
    _k("batchnorm_bwd_coef_from_sums", dt)((L.blocks(c),), (L.THREADS,),
                                    (bcoef, sums, mean64, inv64, gamma, L.i32(c), L.f64(count)))
    return bcoef


def batchnorm_backward_apply(dx, dout, x, save_mean, save_invstd, gamma, sums, count):
    """``dx`` from the whole batch's backward ``sums`` over ``count`` values (parameter gradients untouched)."""
    dt, x = _check_x(x)
    n, c, h, w = x.shape
    L.check_out("dx", dx, x.shape, dt)
    dout = L.check("dout", dout, x.shape, dt)
    gamma = _vec("gamma", gamma, c, dt)
    _sums("sums", sums, c)
    mean64, inv64 = saved64("save_mean", save_mean, c), saved64("save_invstd", save_invstd, c)
    bcoef = backward_coefficients_from_sums(sums, mean64, inv64, gamma, count, c, dt)
    grid, block = L.plane_grid(n * c, h * w)
    _k("batchnorm_bwd_apply", dt)(grid, block, (dx, dout, x, bcoef, L.i32(c), L.i32(h * w)))
