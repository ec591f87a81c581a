"""The MaxPool2d layer (op ``maxpool``)."""
from __future__ import annotations

import numpy as np

import kernels
from kernels.shapes import maxpool2d_output_size

from .base import Layer

__all__ = ["MaxPool2d"]


class MaxPool2d(Layer):
    """Max pooling, PyTorch ``torch.nn.MaxPool2d(kernel_size, stride)`` (floor mode, no padding).

    Op ``maxpool``: kernels ``maxpool2d_forward``, ``maxpool2d_backward``
    (``kernels/{cpu,gpu}/maxpool.py``); reference :mod:`engine.reference.maxpool`.

    ``OH = (H - kernel_size)//stride + 1``. On ties the gradient goes to exactly
    one input: the first maximum of the window in row-major order.

    Parameters
    ----------
    kernel_size : int > 0
    stride : int > 0 or None
        Defaults to ``kernel_size`` (PyTorch).

    Attributes
    ----------
    argmax : array [shape=(N, C, OH, OW), dtype=int32] or None
        The last forward's flat index ``h*W + w`` of each window's maximum (not set when
        ``Sequential`` ran this layer inside its fused block).
    in_shape : tuple or None
        That forward's input shape; ``in_dtype`` its dtype.
    """

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        stride = kernel_size if stride is None else stride
        if int(kernel_size) != kernel_size or kernel_size < 1 or int(stride) != stride or stride < 1:
            raise ValueError(f"MaxPool2d: kernel_size and stride must be positive integers, got {kernel_size}, {stride}")
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.argmax = self.in_shape = self.in_dtype = None

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        try:
            oh, ow = maxpool2d_output_size(h, w, self.kernel_size, self.stride)
        except ValueError:
            raise ValueError(f"MaxPool2d: input shape {tuple(in_shape)} smaller than the window "
                             f"{self.kernel_size}") from None
        return (n, c, oh, ow)

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, OH, OW)``."""
        self.check_input(x)
        kb = kernels.backend_for(x)
        shape = self.output_shape(x.shape)
        out = self.buffer("out", shape, x.dtype, kb.xp)
        self.argmax = self.buffer("argmax", shape, np.int32, kb.xp)
        kb.maxpool.maxpool2d_forward(out, self.argmax, x, self.kernel_size, self.stride)
        self.in_shape, self.in_dtype = x.shape, x.dtype
        return out

    def backward(self, dy):
        """Gather the gradient to each window's argmax; return dx ``(N, C, H, W)``."""
        self._need_forward("in_shape")
        self.check_grad(dy, self.output_shape(self.in_shape))
        kb = kernels.backend_for(dy)
        dx = self.buffer("dx", self.in_shape, self.in_dtype, kb.xp)
        kb.maxpool.maxpool2d_backward(dx, dy, self.argmax, self.kernel_size, self.stride)
        return dx

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
