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

__all__ = ["batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward", "channel_stats",
           "default_shift", "batchnorm_stats", "batchnorm_stats_finish", "batchnorm_apply_train",
           "batchnorm_backward_sums", "batchnorm_backward_params", "batchnorm_backward_apply"]

# reassoc lets LLVM vectorise the float64 accumulations; the compiled order is
# fixed, so repeated runs stay bit-identical.
_FM = {"reassoc", "contract"}


@njit(parallel=True, cache=True, fastmath=_FM)
def _stat_sums(sums, shift, x3):  # x3 (N, C, HW); sums (2, C), shift (C,) float64
    n, c, hw = x3.shape
    for ch in prange(c):
        k = shift[ch]
        s = 0.0
        ss = 0.0
        for i in range(n):
            for j in range(hw):
                d = np.float64(x3[i, ch, j]) - k
                s += d
                ss += d * d
        sums[0, ch] = s
        sums[1, ch] = ss


@njit(cache=True, fastmath=_FM)  # the flags of the former one-kernel statistics pass (same FMA contraction)
def _moments(mean, var, sums, shift, m):  # mean, biased var from the shifted sums over m values
    for ch in range(mean.shape[0]):
        mu = sums[0, ch] / m
        mean[ch] = shift[ch] + mu
        v = sums[1, ch] / m - mu * mu
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


def _stat_vec(name, a, c):
    if a.shape != (c,) or a.dtype != np.float64 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous float64 of shape ({c},), got {a.dtype} {a.shape}")


def _sums_buf(name, a, c):
    if a.shape != (2, c) or a.dtype != np.float64 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous float64 of shape (2, {c}), got {a.dtype} {a.shape}")


def default_shift(x):
    """The single-process statistics shift: ``x[0, c, 0, 0]`` per channel, as float64 ``(C,)``."""
    return np.ascontiguousarray(x[0, :, 0, 0], dtype=np.float64)


def batchnorm_stats(sums, x, shift):
    """Statistics step of the BatchNorm training forward: per-channel shifted sums in float64.

    ``sums[0, c] = sum(x[:, c] - shift[c])``, ``sums[1, c] = sum((x[:, c] - shift[c])**2)``
    over ``N, H, W`` (one thread per channel, fixed order). Sums from several
    processes computed with the same ``shift`` add up to the sums of the union
    of their batches (SyncBatchNorm: ``engine.distributed``); the single-process
    forward uses :func:`default_shift`.

    Parameters
    ----------
    sums : np.ndarray [shape=(2, C), dtype=float64]
        Output, overwritten.
    x : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64], C-contiguous
    shift : np.ndarray [shape=(C,), dtype=float64]
        Subtracted before summing (a value near the mean avoids cancellation).
    """
    c = x.shape[1] if x.ndim == 4 else -1
    _check(x)
    _sums_buf("sums", sums, c)
    _stat_vec("shift", shift, c)
    _run(x.size, _stat_sums, sums, shift, _as3("x", x))


def batchnorm_stats_finish(save_mean, save_invstd, sums, shift, count, running_mean, running_var, momentum, eps):
    """Turn :func:`batchnorm_stats` sums over ``count`` values per channel into the batch statistics.

    Writes ``save_mean = shift + sums[0]/count`` and ``save_invstd =
    1/sqrt(var + eps)`` with the biased ``var = sums[1]/count - (sums[0]/count)**2``
    (clamped at 0), and updates ``running_mean``, ``running_var`` in place
    (PyTorch: unbiased ``var*count/(count-1)`` for ``running_var``).

    Raises
    ------
    ValueError
        When ``count < 2`` or on a wrong shape.
    """
    c = shift.shape[0]
    _sums_buf("sums", sums, c)
    for name, a in (("save_mean", save_mean), ("save_invstd", save_invstd), ("shift", shift)):
        _stat_vec(name, a, c)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a.shape != (c,) or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous of shape ({c},), got {a.shape}")
    m = int(count)
    if m < 2:
        raise ValueError(f"BatchNorm training needs N*H*W >= 2 values per channel, got {m}")
    var = np.empty(c)
    _moments(save_mean, var, sums, shift, m)
    dt = running_mean.dtype
    sub, scale, shift_ = np.empty(c, dt), np.empty(c, dt), np.empty(c, dt)
    _finish_train(save_mean, save_invstd, sub, scale, shift_, var, np.ones(c, dt), np.zeros(c, dt), running_mean,
                  running_var, float(momentum), float(eps), m)


def train_coefficients(save_mean, save_invstd, gamma, beta, dtype):
    """``(sub, scale, shift)`` of the training forward, ``out = (x - sub) * scale + shift``, from the saved statistics.

    The same float expressions as the single-process forward (``scale`` is
    ``gamma * invstd`` in float64, rounded once to ``dtype``).
    """
    return (save_mean.astype(dtype), (gamma * save_invstd).astype(dtype), beta.astype(dtype))


def batchnorm_apply_train(out, x, save_mean, save_invstd, gamma, beta):
    """Apply step of the BatchNorm training forward: ``out = gamma * (x - save_mean) * save_invstd + beta``.

    Parameters
    ----------
    out : np.ndarray [shape=(N, C, H, W), dtype=x.dtype], overwritten
    x : np.ndarray [shape=(N, C, H, W)]
    save_mean, save_invstd : np.ndarray [shape=(C,), dtype=float64]
        From :func:`batchnorm_stats_finish`.
    gamma, beta : np.ndarray [shape=(C,)]
    """
    _check(x, ("out", out, x.shape), ("save_mean", save_mean, None), ("save_invstd", save_invstd, None),
           ("gamma", gamma, None), ("beta", beta, None))
    sub, scale, shift = train_coefficients(save_mean, save_invstd, gamma, beta, x.dtype)
    _run(x.size, _apply, _as3("out", out), _as3("x", x), sub, scale, shift)


def channel_stats(mean, var, x):
    """Per-channel batch mean and biased variance of ``x``, accumulated in float64.

    Parameters
    ----------
    mean, var : np.ndarray [shape=(C,), dtype=float64]
        Outputs (overwritten).
    x : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64]
    """
    _check(x, ("mean", mean, None), ("var", var, None))
    c = x.shape[1]
    sums = np.empty((2, c))
    shift = default_shift(x)
    _run(x.size, _stat_sums, sums, shift, _as3("x", x))
    _moments(mean, var, sums, shift, x.shape[0] * x.shape[2] * x.shape[3])


def batchnorm_forward_train(out, save_mean, save_invstd, x, gamma, beta, running_mean, running_var, momentum, eps):
    """BatchNorm2d training forward; updates the running statistics in place.

    :func:`batchnorm_stats` (shift :func:`default_shift`), :func:`batchnorm_stats_finish`,
    then the normalisation pass (as :func:`batchnorm_apply_train`).

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
    sums = np.empty((2, c))
    shift = default_shift(x)
    _run(x.size, _stat_sums, sums, shift, _as3("x", x))
    var = np.empty(c)
    _moments(save_mean, var, sums, shift, m)
    sub = np.empty(c, x.dtype)
    scale = np.empty(c, x.dtype)
    shift_ = np.empty(c, x.dtype)
    _finish_train(save_mean, save_invstd, sub, scale, shift_, var, gamma, beta, running_mean, running_var,
                  float(momentum), float(eps), m)
    _run(x.size, _apply, _as3("out", out), _as3("x", x), sub, scale, shift_)


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
def _bwd_sums(sums, dout3, x3, mean):  # float64 sums of dy and dy*(x - mean) per channel
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
        sums[0, ch] = s
        sums[1, ch] = sx


@njit(cache=True)
def _bwd_coefs(cdy, cx, c0, sub, sums, mean, invstd, gamma, m):
    # dx = k*(dy - sdy/m - xhat*sdyx/m), k = gamma*invstd  ==  cdy*dy + cx*(x - mean) + c0
    for ch in range(sums.shape[1]):
        sdy = sums[0, ch]
        sdyx = sums[1, ch] * invstd[ch]
        k = gamma[ch] * invstd[ch]
        cdy[ch] = k
        cx[ch] = -k * invstd[ch] * sdyx / m
        c0[ch] = -k * sdy / m
        sub[ch] = mean[ch]


@njit(cache=True)
def _bwd_params(dgamma, dbeta, sums, invstd):
    for ch in range(sums.shape[1]):
        dgamma[ch] += sums[1, ch] * invstd[ch]
        dbeta[ch] += sums[0, ch]


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


def backward_coefficients(sums, save_mean, save_invstd, gamma, m, dtype):
    """Per-channel coefficients ``(cdy, cx, c0, sub)`` in ``dtype`` with ``dx = cdy*dy + cx*(x - sub) + c0``.

    ``sums`` (2, C) float64 are ``sum(dy)`` and ``sum(dy*(x - mean))`` over the
    ``m`` values of each channel (the whole batch: summed over processes under
    SyncBatchNorm). Used by the unfused and the fused backward.
    """
    c = sums.shape[1]
    cdy = np.empty(c, dtype)
    cx = np.empty(c, dtype)
    c0 = np.empty(c, dtype)
    sub = np.empty(c, dtype)
    _bwd_coefs(cdy, cx, c0, sub, sums, save_mean, save_invstd, gamma, float(m))
    return cdy, cx, c0, sub


def batchnorm_backward_sums(sums, dout, x, save_mean):
    """Statistics step of the BatchNorm backward: ``sums = [sum(dy), sum(dy*(x - mean))]`` per channel, float64.

    Parameters
    ----------
    sums : np.ndarray [shape=(2, C), dtype=float64], overwritten
    dout, x : np.ndarray [shape=(N, C, H, W)]
    save_mean : np.ndarray [shape=(C,), dtype=float64]
    """
    _check(x, ("dout", dout, x.shape), ("save_mean", save_mean, None))
    _sums_buf("sums", sums, x.shape[1])
    _run(x.size, _bwd_sums, sums, _as3("dout", dout), _as3("x", x), save_mean)


def batchnorm_backward_params(dgamma, dbeta, sums, save_invstd):
    """Accumulate the parameter gradients from :func:`batchnorm_backward_sums`.

    ``dgamma += sums[1] * invstd`` (``sum(dy*xhat)``), ``dbeta += sums[0]``
    (``sum(dy)``), added in float64 and rounded once. Under SyncBatchNorm pass
    this process's own sums: the gradient Allreduce adds the processes'
    contributions.
    """
    c = sums.shape[1]
    _sums_buf("sums", sums, c)
    _stat_vec("save_invstd", save_invstd, c)
    _bwd_params(dgamma, dbeta, sums, save_invstd)


def batchnorm_backward_apply(dx, dout, x, save_mean, save_invstd, gamma, sums, count):
    """Apply step of the BatchNorm backward: ``dx = gamma*invstd*(dy - sdy/M - xhat*sdyx/M)``.

    Parameters
    ----------
    dx : np.ndarray [shape=(N, C, H, W)], overwritten
    dout, x : np.ndarray [shape=(N, C, H, W)]
    save_mean, save_invstd : np.ndarray [shape=(C,), dtype=float64]
    gamma : np.ndarray [shape=(C,)]
    sums : np.ndarray [shape=(2, C), dtype=float64]
        :func:`batchnorm_backward_sums` over the whole batch (all processes).
    count : int
        ``M``, the values per channel the sums cover.
    """
    _check(x, ("dx", dx, x.shape), ("dout", dout, x.shape), ("save_mean", save_mean, None),
           ("save_invstd", save_invstd, None), ("gamma", gamma, None))
    _sums_buf("sums", sums, x.shape[1])
    cdy, cx, c0, sub = backward_coefficients(sums, save_mean, save_invstd, gamma, count, x.dtype)
    _run(x.size, _bwd_apply, _as3("dx", dx), _as3("dout", dout), _as3("x", x), cdy, cx, c0, sub)


def batchnorm_backward(dx, dgamma, dbeta, dout, x, save_mean, save_invstd, gamma):
    """BatchNorm2d training backward (batch statistics).

    :func:`batchnorm_backward_sums`, :func:`batchnorm_backward_params`, then
    :func:`batchnorm_backward_apply` with this batch's own sums.

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
    sums = np.empty((2, c))
    x3 = _as3("x", x)
    d3 = _as3("dout", dout)
    _run(x.size, _bwd_sums, sums, d3, x3, save_mean)
    cdy, cx, c0, sub = backward_coefficients(sums, save_mean, save_invstd, gamma, m, x.dtype)
    _bwd_params(dgamma, dbeta, sums, save_invstd)
    _run(x.size, _bwd_apply, _as3("dx", dx), d3, x3, cdy, cx, c0, sub)
