"""Loss functions of hitcnn.

``SoftmaxCrossEntropy``: PyTorch ``torch.nn.CrossEntropyLoss`` with
reduction 'mean' and optional class weights (weighted mean
``sum_i w[y_i] l_i / sum_i w[y_i]``), computed by the backend's
``softmax_xent`` kernels with a stable log-sum-exp and float64 accumulation.
Targets are class indices ``(N,)``, or soft targets ``(N, K)`` (class
probabilities, e.g. mixup's): then PyTorch's rule for probability targets,
``l_i = -sum_k w_k t_ik log p_ik`` and the loss ``sum_i l_i / N``.
"""
from __future__ import annotations

import numpy as np

import kernels

from .layers import cached_buffer

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over the batch.

    Parameters
    ----------
    class_weights : array-like [shape=(K,)] or None
        Per-class weights (PyTorch's ``weight`` argument), cast to the logits'
        dtype and device on use.

    Notes
    -----
    ``forward(logits (N, K), targets) -> float`` keeps the softmax for
    ``backward() -> dlogits (N, K)``, a buffer reused between calls.
    ``targets``: integer ``(N,)`` class indices, or float ``(N, K)`` soft
    targets (cast to the logits' dtype; finite and >= 0).
    """

    def __init__(self, class_weights=None):
        if class_weights is not None:
            class_weights = np.asarray(class_weights, dtype=np.float64)
            if class_weights.ndim != 1 or not np.all(np.isfinite(class_weights)) or np.any(class_weights < 0):
                raise ValueError(f"class_weights must be a 1-D array of finite non-negative values, got {class_weights}")
        self.class_weights = class_weights
        self._cache = {}
        self._probs = None

    def _buf(self, name, shape, dtype, xp):
        return cached_buffer(self._cache, name, shape, dtype, xp)

    def _weights(self, logits, xp):
        if self.class_weights is None:
            return None
        if self.class_weights.shape != (logits.shape[1],):
            raise ValueError(f"class_weights has shape {self.class_weights.shape}, logits have {logits.shape[1]} classes "
                             f"(shape {logits.shape})")
        key = ("w", np.dtype(logits.dtype).str, xp.__name__)
        w = self._cache.get(key)
        if w is None:
            w = self._cache[key] = xp.asarray(self.class_weights.astype(logits.dtype))
        return w

    def forward(self, logits, targets):
        """Loss of ``logits (N, K)`` against integer ``targets (N,)`` in ``[0, K)`` or soft ``(N, K)``; a Python float.

        Raises
        ------
        ValueError
            On a wrong rank, shape, dtype, or targets out of range.
        """
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (N, K), got {logits.shape}")
        kb = kernels.backend_for(logits)
        xp = kb.xp
        if targets.ndim == 2:
            if targets.shape != logits.shape:
                raise ValueError(f"SoftmaxCrossEntropy: soft targets must have the logits' shape {logits.shape}, "
                                 f"got {targets.shape}")
            if targets.dtype != logits.dtype:
                if not np.issubdtype(targets.dtype, np.floating):
                    raise ValueError(f"SoftmaxCrossEntropy: soft targets must be floats, got {targets.dtype}")
                targets = targets.astype(logits.dtype)
        elif targets.dtype != np.int64:
            if not np.issubdtype(targets.dtype, np.integer):
                raise ValueError(f"SoftmaxCrossEntropy: targets must be integers, got {targets.dtype}")
            targets = targets.astype(np.int64)
        self._probs = self._buf("probs", logits.shape, logits.dtype, xp)
        self._targets = targets
        self._w = self._weights(logits, xp)
        return kb.softmax_xent.softmax_xent_forward(self._probs, logits, targets, self._w)

    __call__ = forward

    def backward(self):
        """Gradient of the last loss with respect to the logits, shape ``(N, K)``."""
        if self._probs is None:
            raise ValueError("SoftmaxCrossEntropy.backward called before forward")
        kb = kernels.backend_for(self._probs)
        d = self._buf("dlogits", self._probs.shape, self._probs.dtype, kb.xp)
        kb.softmax_xent.softmax_xent_backward(d, self._probs, self._targets, self._w)
        return d
