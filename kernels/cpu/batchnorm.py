"""BatchNorm2d forward (train / eval) and backward as Numba kernels (CPU).

Convention: PyTorch ``torch.nn.BatchNorm2d``. Training normalises with the
biased batch variance and updates ``running_var`` with the unbiased one
(``var * M / (M - 1)``, ``M = N*H*W``); eval normalises with the running
statistics and never changes them.

Accuracy: per-channel sums are accumulated in float64, shifted by the
channel's first value (one pass, no catastrophic cancellation when
``|mean| >> std``), so ``M > 2**24`` still gives a mean accurate far beyond
1e-4 relative. Parallelism: ``prange`` over channels for the reductions (one
thread owns a channel, its sum runs in a fixed order, so results are
deterministic and independent of the thread count) and over the ``N*C``
planes for the elementwise passes. Dimension letters: ``N, C, H, W``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._threads import run as _run

__all__ = ["batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward", "channel_stats"]

# reassoc lets LLVM vectorise the float64 accumulations; the compiled order is
# fixed, so repeated runs stay bit-identical.
_FM = {"reassoc", "contract"}


@njit(parallel=True, cache=True, fastmath=_FM)
def _stats(mean, var, x3):  # x3 (N, C, HW); mean, var (C,) float64: biased variance
    n, c, hw = x3.shape
    m = n * hw
    for ch in prange(c):
        k = np.float64(x3[0, ch, 0])
        s = 0.0
        ss = 0.0
        for i in range(n):
            for j in range(hw):
                d = np.float64(x3[i, ch, j]) - k
                s += d
                ss += d * d
        mu = s / m
        mean[ch] = k + mu
        v = ss / m - mu * mu
        var[ch] = v if v > 0.0 else 0.0


@njit(cache=True)
def _finish_train(save_mean, save_invstd, sub, scale, shift, var, gamma, beta, running_mean, running_var, momentum, eps, m):
    for ch in range(var.shape[0]):
        inv = 1.0 / np.sqrt(var[ch] + eps)
        save_invstd[ch] = inv
        sub[ch] = save_mean[ch]
        scale[ch] = gamma[ch] * inv
        shift[ch] = beta[ch]
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * save_mean[ch]
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * var[ch] * m / (m - 1)


@njit(parallel=True, cache=True)
def _apply(out3, x3, sub, scale, shift):  # out = (x - sub) * scale + shift, per channel
    n, c, hw = x3.shape
    for p in prange(n * c):
        i = p // c
        ch = p % c
        s = sub[ch]
        k = scale[ch]
        b = shift[ch]
        for j in range(hw):
            out3[i, ch, j] = (x3[i, ch, j] - s) * k + b


def _as3(name, a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def _check(x, *pairs):
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")
    c = x.shape[1]
    for name, a, shape in pairs:
        want = (c,) if shape is None else shape
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")


def channel_stats(mean, var, x):
    """Per-channel batch mean and biased variance of ``x``, accumulated in float64.

    Parameters
    ----------
    mean, var : np.ndarray [shape=(C,), dtype=float64]
        Outputs (overwritten).
    x : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64]
    """
    _check(x, ("mean", mean, None), ("var", var, None))
    _run(x.size, _stats, mean, var, _as3("x", x))


def batchnorm_forward_train(out, save_mean, save_invstd, x, gamma, beta, running_mean, running_var, momentum, eps):
    """BatchNorm2d training forward; updates the running statistics in place.

    Parameters
    ----------
    out : np.ndarray [shape=(N, C, H, W), dtype=x.dtype]
        Output, overwritten: ``gamma * (x - mean) * invstd + beta``.
    save_mean, save_invstd : np.ndarray [shape=(C,), dtype=float64]
        Outputs: batch mean and ``1/sqrt(var_biased + eps)``, for the backward.
    x : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64], C-contiguous
    gamma, beta : np.ndarray [shape=(C,), dtype=x.dtype]
    running_mean, running_var : np.ndarray [shape=(C,), dtype=x.dtype]
        Updated in place: ``r = (1-momentum)*r + momentum*stat``, with the
        unbiased variance for ``running_var`` (PyTorch).
    momentum : float
    eps : float > 0

    Raises
    ------
    ValueError
        On a wrong rank, dtype, shape, non-contiguous array or ``N*H*W < 2``.
    """
    _check(x, ("out", out, x.shape), ("save_mean", save_mean, None), ("save_invstd", save_invstd, None),
           ("gamma", gamma, None), ("beta", beta, None), ("running_mean", running_mean, None),
           ("running_var", running_var, None))
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m < 2:
        raise ValueError(f"BatchNorm training needs N*H*W >= 2 values per channel, got x shape {x.shape}")
    c = x.shape[1]
    var = np.empty(c)
    _run(x.size, _stats, save_mean, var, _as3("x", x))
    sub = np.empty(c, x.dtype)
    scale = np.empty(c, x.dtype)
    shift = np.empty(c, x.dtype)
    _finish_train(save_mean, save_invstd, sub, scale, shift, var, gamma, beta, running_mean, running_var,
                  float(momentum), float(eps), m)
    _run(x.size, _apply, _as3("out", out), _as3("x", x), sub, scale, shift)


def eval_coefficients(gamma, beta, running_mean, running_var, eps, dtype):
    """``(sub, scale, shift)`` such that eval output is ``(x - sub) * scale + shift``."""
    inv = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    return (running_mean.astype(dtype), (gamma * inv).astype(dtype), beta.astype(dtype))


def batchnorm_forward_eval(out, x, gamma, beta, running_mean, running_var, eps):
    """BatchNorm2d eval forward: normalise with the running statistics (unchanged).

    Parameters
    ----------
    out : np.ndarray [shape=(N, C, H, W)]
        Output, overwritten: ``gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.
    x : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64]
    gamma, beta, running_mean, running_var : np.ndarray [shape=(C,)]
    eps : float > 0

    Raises
    ------
    ValueError
        On a wrong rank, dtype or shape.
    """
    _check(x, ("out", out, x.shape), ("gamma", gamma, None), ("beta", beta, None),
           ("running_mean", running_mean, None), ("running_var", running_var, None))
    sub, scale, shift = eval_coefficients(gamma, beta, running_mean, running_var, eps, x.dtype)
    _run(x.size, _apply, _as3("out", out), _as3("x", x), sub, scale, shift)


@njit(parallel=True, cache=True, fastmath=_FM)
def _bwd_sums(sdy, sdyx, dout3, x3, mean, invstd):  # float64 sums of dy and dy*xhat per channel
    n, c, hw = x3.shape
    for ch in prange(c):
        mu = mean[ch]
        s = 0.0
        sx = 0.0
        for i in range(n):
            for j in range(hw):
                d = np.float64(dout3[i, ch, j])
                s += d
                sx += d * (np.float64(x3[i, ch, j]) - mu)
        sdy[ch] = s
        sdyx[ch] = sx * invstd[ch]


@njit(cache=True)
def _bwd_coefs(cdy, cx, c0, sub, dgamma, dbeta, sdy, sdyx, mean, invstd, gamma, m):
    # dx = k*(dy - sdy/m - xhat*sdyx/m), k = gamma*invstd  ==  cdy*dy + cx*(x - mean) + c0
    for ch in range(sdy.shape[0]):
        k = gamma[ch] * invstd[ch]
        cdy[ch] = k
        cx[ch] = -k * invstd[ch] * sdyx[ch] / m
        c0[ch] = -k * sdy[ch] / m
        sub[ch] = mean[ch]
        dgamma[ch] += sdyx[ch]
        dbeta[ch] += sdy[ch]


@njit(parallel=True, cache=True)
def _bwd_apply(dx3, dout3, x3, cdy, cx, c0, sub):
    n, c, hw = x3.shape
    for p in prange(n * c):
        i = p // c
        ch = p % c
        a = cdy[ch]
        b = cx[ch]
        z = c0[ch]
        s = sub[ch]
        for j in range(hw):
            dx3[i, ch, j] = a * dout3[i, ch, j] + b * (x3[i, ch, j] - s) + z


def backward_coefficients(sdy, sdyx, save_mean, save_invstd, gamma, dgamma, dbeta, m, dtype):
    """Turn the float64 sums into per-channel coefficients and accumulate ``dgamma``, ``dbeta``.

    Returns ``(cdy, cx, c0, sub)`` in ``dtype`` with
    ``dx = cdy*dy + cx*(x - sub) + c0`` (used by the unfused and fused backward).
    """
    c = sdy.shape[0]
    cdy = np.empty(c, dtype)
    cx = np.empty(c, dtype)
    c0 = np.empty(c, dtype)
    sub = np.empty(c, dtype)
    _bwd_coefs(cdy, cx, c0, sub, dgamma, dbeta, sdy, sdyx, save_mean, save_invstd, gamma, float(m))
    return cdy, cx, c0, sub


def batchnorm_backward(dx, dgamma, dbeta, dout, x, save_mean, save_invstd, gamma):
    """BatchNorm2d training backward (batch statistics).

    Parameters
    ----------
    dx : np.ndarray [shape=(N, C, H, W)]
        Output, overwritten: ``gamma*invstd*(dout - mean(dout) - xhat*mean(dout*xhat))``.
    dgamma, dbeta : np.ndarray [shape=(C,)]
        Accumulated (``+=``): ``sum(dout*xhat)`` and ``sum(dout)`` over ``N, H, W``.
    dout, x : np.ndarray [shape=(N, C, H, W)]
    save_mean, save_invstd : np.ndarray [shape=(C,), dtype=float64]
        From :func:`batchnorm_forward_train`.
    gamma : np.ndarray [shape=(C,)]

    Raises
    ------
    ValueError
        On a wrong rank, dtype or shape.
    """
    _check(x, ("dx", dx, x.shape), ("dout", dout, x.shape), ("dgamma", dgamma, None), ("dbeta", dbeta, None),
           ("save_mean", save_mean, None), ("save_invstd", save_invstd, None), ("gamma", gamma, None))
    c = x.shape[1]
    m = x.shape[0] * x.shape[2] * x.shape[3]
    sdy = np.empty(c)
    sdyx = np.empty(c)
    x3 = _as3("x", x)
    d3 = _as3("dout", dout)
    _run(x.size, _bwd_sums, sdy, sdyx, d3, x3, save_mean, save_invstd)
    cdy, cx, c0, sub = backward_coefficients(sdy, sdyx, save_mean, save_invstd, gamma, dgamma, dbeta, m, x.dtype)
    _run(x.size, _bwd_apply, _as3("dx", dx), d3, x3, cdy, cx, c0, sub)
