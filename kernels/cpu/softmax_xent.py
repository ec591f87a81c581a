"""Softmax cross-entropy loss forward and backward as Numba kernels (CPU).

PyTorch ``torch.nn.CrossEntropyLoss`` (reduction 'mean'): the loss is the mean
over the batch of ``-log softmax(logits)[y]``, or the weighted mean
``sum_i w[y_i] l_i / sum_i w[y_i]`` with class weights. Stable log-sum-exp:
the row maximum is subtracted before ``exp``, and the log-sum-exp, per-row
loss and batch sum are accumulated in float64, so float32 logits as large as
1e8 give a finite loss and gradient. Dimension letters: ``N`` (batch), ``K`` (classes).

Soft targets (``targets`` float ``(N, K)``, class probabilities such as
mixup's, Zhang et al. 2018): PyTorch's rule for probability targets,
``l_i = -sum_k w_k t_ik log softmax(logits_i)_k`` and the loss
``sum_i l_i / N`` (with or without weights). Separate kernels: the integer
path is unchanged, bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["softmax_xent_forward", "softmax_xent_backward"]


@njit(cache=True)
def _fwd(probs, logits, targets, w, weighted):
    n, k = logits.shape
    total = 0.0
    wsum = 0.0
    for i in range(n):
        mx = np.float64(logits[i, 0])
        for j in range(1, k):
            if logits[i, j] > mx:
                mx = np.float64(logits[i, j])
        s = 0.0
        for j in range(k):
            s += np.exp(np.float64(logits[i, j]) - mx)
        lse = np.log(s)
        for j in range(k):
            probs[i, j] = np.exp(np.float64(logits[i, j]) - mx - lse)
        y = targets[i]
        wy = np.float64(w[y]) if weighted else 1.0
        total += wy * (lse - (np.float64(logits[i, y]) - mx))
        wsum += wy
    return total / wsum


@njit(cache=True)
def _bwd(dlogits, probs, targets, w, weighted):
    n, k = probs.shape
    wsum = 0.0
    for i in range(n):
        wsum += np.float64(w[targets[i]]) if weighted else 1.0
    for i in range(n):
        y = targets[i]
        c = (np.float64(w[y]) if weighted else 1.0) / wsum
        for j in range(k):
            g = np.float64(probs[i, j])
            if j == y:
                g -= 1.0
            dlogits[i, j] = g * c


@njit(cache=True)
def _fwd_soft(probs, logits, targets, w, weighted):
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        mx = np.float64(logits[i, 0])
        for j in range(1, k):
            if logits[i, j] > mx:
                mx = np.float64(logits[i, j])
        s = 0.0
        for j in range(k):
            s += np.exp(np.float64(logits[i, j]) - mx)
        lse = np.log(s)
        for j in range(k):
            z = np.float64(logits[i, j]) - mx
            probs[i, j] = np.exp(z - lse)
            wt = np.float64(targets[i, j]) * (np.float64(w[j]) if weighted else 1.0)
            total += wt * (lse - z)
    return total / n


@njit(cache=True)
def _bwd_soft(dlogits, probs, targets, w, weighted):
    n, k = probs.shape
    for i in range(n):
        st = 0.0
        for j in range(k):
            st += np.float64(targets[i, j]) * (np.float64(w[j]) if weighted else 1.0)
        for j in range(k):
            wt = np.float64(targets[i, j]) * (np.float64(w[j]) if weighted else 1.0)
            dlogits[i, j] = (np.float64(probs[i, j]) * st - wt) / n


def _check_soft(logits, targets):
    if targets.shape != logits.shape or targets.dtype != logits.dtype:
        raise ValueError(f"soft targets must be {logits.dtype} of shape {logits.shape}, got {targets.dtype} "
                         f"{targets.shape}")
    if not np.all(np.isfinite(targets)) or float(targets.min()) < 0.0:
        raise ValueError("soft targets must be finite and >= 0")
    return np.ascontiguousarray(targets)


def _check(logits, targets, class_weights, name="logits"):
    if logits.ndim != 2 or logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be 2-D (N, K) float32/float64, got {logits.dtype} shape {logits.shape}")
    n, k = logits.shape
    if n == 0:
        raise ValueError(f"{name} must have a non-empty batch, got shape {logits.shape}")
    if targets.ndim == 2:
        targets = _check_soft(logits, targets)
        if class_weights is None:
            return np.empty(1, logits.dtype), False
        cw = np.ascontiguousarray(class_weights, dtype=logits.dtype)
        if cw.shape != (k,):
            raise ValueError(f"class_weights must have shape ({k},), got {cw.shape}")
        return cw, True
    if targets.shape != (n,) or targets.dtype != np.int64:
        raise ValueError(f"targets must be int64 of shape ({n},), got {targets.dtype} {targets.shape}")
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"targets must be in [0, {k}), got range [{lo}, {hi}]")
    if class_weights is None:
        return np.empty(1, logits.dtype), False
    cw = np.ascontiguousarray(class_weights, dtype=logits.dtype)
    if cw.shape != (k,):
        raise ValueError(f"class_weights must have shape ({k},), got {cw.shape}")
    if float(cw[targets].sum()) <= 0.0:
        raise ValueError("class_weights of the batch's targets sum to <= 0; the weighted mean is undefined")
    return cw, True


def softmax_xent_forward(probs, logits, targets, class_weights=None):
    """Softmax cross-entropy forward; returns the loss as a Python float.

    Parameters
    ----------
    probs : np.ndarray [shape=(N, K), dtype=logits.dtype]
        Output, overwritten with ``softmax(logits)`` (kept for the backward).
    logits : np.ndarray [shape=(N, K), dtype=float32 or float64]
    targets : np.ndarray [shape=(N,), dtype=int64] or [shape=(N, K), dtype=logits.dtype]
        Class indices in ``[0, K)``, or soft targets (finite, >= 0; rows
        normally sum to 1): loss ``-sum_ik w_k t_ik log p_ik / N``.
    class_weights : np.ndarray [shape=(K,)] or None
        Per-class weights; weighted mean over the batch as in PyTorch.

    Returns
    -------
    loss : float
        Mean (or weighted mean) negative log-likelihood, accumulated in float64.

    Raises
    ------
    ValueError
        On wrong shapes/dtypes, targets out of range (negative or non-finite
        soft targets), or weights summing to <= 0.
    """
    cw, weighted = _check(logits, targets, class_weights)
    if probs.shape != logits.shape or probs.dtype != logits.dtype:
        raise ValueError(f"probs must be {logits.dtype} of shape {logits.shape}, got {probs.dtype} {probs.shape}")
    if targets.ndim == 2:
        return float(_fwd_soft(probs, logits, np.ascontiguousarray(targets), cw, weighted))
    return float(_fwd(probs, logits, targets, cw, weighted))


def softmax_xent_backward(dlogits, probs, targets, class_weights=None):
    """Gradient of the loss with respect to the logits (overwrites ``dlogits``).

    ``dlogits[i] = w[y_i] * (probs[i] - onehot(y_i)) / sum_j w[y_j]``
    (``w = 1`` without class weights, giving ``(probs - onehot) / N``); soft
    targets: ``dlogits[i, j] = (probs[i, j] * sum_k w_k t_ik - w_j t_ij) / N``.

    Parameters
    ----------
    dlogits, probs : np.ndarray [shape=(N, K)]
    targets : np.ndarray [shape=(N,), dtype=int64] or [shape=(N, K), dtype=probs.dtype]
    class_weights : np.ndarray [shape=(K,)] or None
    """
    cw, weighted = _check(probs, targets, class_weights, "probs")
    if dlogits.shape != probs.shape or dlogits.dtype != probs.dtype:
        raise ValueError(f"dlogits must be {probs.dtype} of shape {probs.shape}, got {dlogits.dtype} {dlogits.shape}")
    if targets.ndim == 2:
        _bwd_soft(dlogits, probs, np.ascontiguousarray(targets), cw, weighted)
        return
    _bwd(dlogits, probs, targets, cw, weighted)
