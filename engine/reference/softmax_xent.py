"""Float64 reference of the ``softmax_xent`` op (``kernels/{cpu,gpu}/softmax_xent.py``).

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Method: PyTorch's ``torch.nn.CrossEntropyLoss`` (reduction 'mean', optional
class weights, integer or probability targets) with a stable log-sum-exp.
``N`` rows, ``K`` classes.
"""
from __future__ import annotations

import numpy as np

from ._checks import f64 as _f64

__all__ = ["softmax_xent_forward", "softmax_xent_backward"]


def _check_xent(logits, targets, class_weights):
    logits = _f64("logits (N, K)", logits, 2)
    targets = np.asarray(targets)
    w = np.ones(logits.shape[1]) if class_weights is None else _f64("class_weights", class_weights, 1)
    if targets.ndim == 2 and np.issubdtype(targets.dtype, np.floating):  # soft targets (probabilities)
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {logits.shape}, got {targets.shape}")
        if not np.all(np.isfinite(targets)) or targets.min() < 0:
            raise ValueError("soft targets must be finite and >= 0")
        return logits, targets.astype(np.float64), w
    if targets.shape != (logits.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer of shape ({logits.shape[0]},), got {targets.dtype} {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"targets must be in [0, {logits.shape[1]}), got range [{targets.min()}, {targets.max()}]")
    return logits, targets, w


def softmax_xent_forward(logits, targets, class_weights=None):
    """Reference softmax cross-entropy (PyTorch ``CrossEntropyLoss``, reduction 'mean').

    Parameters
    ----------
    logits : np.ndarray [shape=(N, K)]
    targets : np.ndarray [shape=(N,), dtype=int] or [shape=(N, K), dtype=float]
        Class indices, or soft targets (class probabilities, e.g. mixup's):
        then ``l_i = -sum_k w_k t_ik log p_ik`` and the loss is ``sum_i l_i / N``
        (PyTorch's rule for probability targets, with or without weights).
    class_weights : np.ndarray [shape=(K,)] or None
        Weighted mean ``sum_i w[y_i] l_i / sum_i w[y_i]`` when given (class indices).

    Returns
    -------
    loss : float
    probs : np.ndarray [shape=(N, K)]
        Softmax, computed with the max subtracted (stable log-sum-exp).
    """
    logits, targets, w = _check_xent(logits, targets, class_weights)
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    probs = np.exp(z - lse[:, None])
    if targets.ndim == 2:
        return float(-(w[None] * targets * (z - lse[:, None])).sum() / len(targets)), probs
    nll = lse - z[np.arange(len(targets)), targets]
    wy = w[targets]
    return float((wy * nll).sum() / wy.sum()), probs



def softmax_xent_backward(probs, targets, class_weights=None):
    """Reference gradient of :func:`softmax_xent_forward` with respect to the logits.

    Returns
    -------
    dlogits : np.ndarray [shape=(N, K)]
        ``w[y_i] * (probs_i - onehot(y_i)) / sum_j w[y_j]``; for soft targets
        ``(probs_ij * sum_k w_k t_ik - w_j t_ij) / N``.
    """
    probs, targets, w = _check_xent(probs, targets, class_weights)
    if targets.ndim == 2:
        wt = w[None] * targets
        return (probs * wt.sum(axis=1, keepdims=True) - wt) / len(targets)
    d = probs.copy()
    d[np.arange(len(targets)), targets] -= 1.0
    wy = w[targets]
    return d * (wy / wy.sum())[:, None]
