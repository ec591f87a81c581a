"""The Flatten layer (a reshape, no kernel)."""
from __future__ import annotations

import numpy as np

from .base import Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` (PyTorch ``torch.nn.Flatten``); returns a view, no copy.

    No kernel (a reshape). Attribute ``in_shape``: the last forward's input shape (None before).
    """

    def __init__(self):
        super().__init__()
        self.in_shape = None

    def output_shape(self, in_shape):
        return (in_shape[0], int(np.prod(in_shape[1:])))

    def forward(self, x):
        """Reshape to ``(N, -1)``; needs a C-contiguous input of rank >= 2."""
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected an input of rank >= 2 (N, ...), got shape {x.shape}")
        self._check_dtype(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"Flatten: input of shape {x.shape} must be C-contiguous")
        self.in_shape = x.shape
        return x.reshape(self.output_shape(x.shape))

    def backward(self, dy):
        """Reshape the gradient back to the input shape (a view)."""
        self._need_forward("in_shape")
        self.check_grad(dy, self.output_shape(self.in_shape))
        return dy.reshape(self.in_shape)
