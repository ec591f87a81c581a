"""Fused softmax cross-entropy forward and backward on the GPU (``cuda/softmax_xent.cu``).

Same entry points as :mod:`kernels.cpu.softmax_xent`: PyTorch
``CrossEntropyLoss`` (reduction 'mean'; with class weights the weighted mean
``sum_i w[y_i] l_i / sum_i w[y_i]``), stable log-sum-exp in float64 (finite
for float32 logits as large as 1e8). One block of 256 threads strides over
the rows and reduces in a fixed order: deterministic.

The forward returns the loss as a Python float: reading it is the one host
synchronisation of a training step. The same read carries a count of targets
outside ``[0, K)`` (checked on the device, so that validation costs no extra
sync) and the weight sum: either raises ValueError there. The backward
checks nothing that needs the host (the forward of the same batch did).

Soft targets (``targets`` float ``(N, K)`` of the logits' dtype, e.g.
mixup's): PyTorch's rule for probability targets, ``l_i = -sum_k w_k t_ik
log p_ik``, loss ``sum_i l_i / N``; separate kernels (``*_soft``), so the
integer path is unchanged. Negative or non-finite targets are counted on
the device and raise ValueError at the loss read.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from . import _launch as L

__all__ = ["softmax_xent_forward", "softmax_xent_backward"]

_result = {}


def _check(logits, targets, class_weights, name="logits"):
    dt = L.float_dtype(logits, name)
    if logits.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, K), got shape {logits.shape}")
    n, k = logits.shape
    if n == 0:
        raise ValueError(f"{name} must have a non-empty batch, got shape {logits.shape}")
    if targets.ndim == 2:
        targets = L.check("soft targets", targets, (n, k), dt)
    else:
        targets = L.check("targets", targets, (n,), np.int64)
    if class_weights is None:
        return dt, n, k, targets, None, 0
    cw = cp.ascontiguousarray(class_weights, dtype=dt)
    if cw.shape != (k,):
        raise ValueError(f"class_weights must have shape ({k},), got {cw.shape}")
    return dt, n, k, targets, cw, 1


def softmax_xent_forward(probs, logits, targets, class_weights=None):
    """Softmax cross-entropy forward; returns the loss as a Python float (one device-to-host read).

    Parameters
    ----------
    probs : cupy.ndarray [shape=(N, K), dtype=logits.dtype], C-contiguous
        Overwritten with ``softmax(logits)``.
    logits : cupy.ndarray [shape=(N, K), float32 or float64]
    targets : cupy.ndarray [shape=(N,), dtype=int64] or [shape=(N, K), dtype=logits.dtype] (soft)
    class_weights : cupy.ndarray [shape=(K,)] or None

    Returns
    -------
    loss : float

    Raises
    ------
    ValueError
        On wrong shapes/dtypes, targets outside ``[0, K)``, or weights of the batch summing to <= 0.
    """
    dt, n, k, targets, cw, weighted = _check(logits, targets, class_weights)
    L.check_out("probs", probs, (n, k), dt)
    logits = L.contig(logits)
    if cw is None:
        cw = logits  # any array of the right dtype: never read when weighted == 0
    res = _result.get(cp.cuda.Device().id)
    if res is None:
        res = _result[cp.cuda.Device().id] = cp.empty(3, np.float64)
    if targets.ndim == 2:
        L.kernel("softmax_xent.cu", "softmax_xent_forward_soft", dt)(
            (1,), (L.THREADS,), (probs, res, logits, targets, cw, L.i32(weighted), L.i32(n), L.i32(k)))
        loss, bad, _ = (float(v) for v in res.get())
        if bad:
            raise ValueError(f"soft targets must be finite and >= 0; {int(bad)} of {n * k} are not")
        return loss
    L.kernel("softmax_xent.cu", "softmax_xent_forward", dt)(
        (1,), (L.THREADS,), (probs, res, logits, targets, cw, L.i32(weighted), L.i32(n), L.i32(k)))
    loss, bad, wsum = (float(v) for v in res.get())
    if bad:
        raise ValueError(f"targets must be in [0, {k}); {int(bad)} of {n} are not")
    if not wsum > 0.0:
        raise ValueError("class_weights of the batch's targets sum to <= 0; the weighted mean is undefined")
    return loss


def softmax_xent_backward(dlogits, probs, targets, class_weights=None):
    """Gradient with respect to the logits (overwrites ``dlogits``).

    ``dlogits[i] = w[y_i] * (probs[i] - onehot(y_i)) / sum_j w[y_j]`` (``w = 1``
    without class weights: ``(probs - onehot) / N``); soft targets:
    ``(probs[i, j] * sum_k w_k t_ik - w_j t_ij) / N``.

    Raises
    ------
    ValueError
        On wrong shapes or dtypes.
    """
    dt, n, k, targets, cw, weighted = _check(probs, targets, class_weights, "probs")
    L.check_out("dlogits", dlogits, (n, k), dt)
    probs = L.contig(probs)
    if cw is None:
        cw = probs  # never read when weighted == 0
    if targets.ndim == 2:
        L.kernel("softmax_xent.cu", "softmax_xent_backward_soft", dt)(
            L.flat_grid(n), (L.THREADS,), (dlogits, probs, targets, cw, L.i32(weighted), L.i32(n), L.i32(k)))
        return
    L.kernel("softmax_xent.cu", "softmax_xent_backward", dt)(
        (1,), (L.THREADS,), (dlogits, probs, targets, cw, L.i32(weighted), L.i32(n), L.i32(k)))
