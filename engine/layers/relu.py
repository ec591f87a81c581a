"""The ReLU layer (op ``relu``)."""
from __future__ import annotations

import kernels

from .base import Layer

__all__ = ["ReLU"]


class ReLU(Layer):
    """Rectified linear unit ``max(x, 0)`` (PyTorch ``torch.nn.ReLU``); any input shape.

    Op ``relu``: kernels ``relu_forward``, ``relu_backward`` (``kernels/{cpu,gpu}/relu.py``);
    reference :mod:`engine.reference.relu`.

    Attributes
    ----------
    output : array or None
        The last forward's output (the layer's buffer); ``backward`` masks with ``output > 0``.
    """

    def __init__(self):
        super().__init__()
        self.output = None

    def forward(self, x):
        """Elementwise ``max(x, 0)``, same shape."""
        self._check_dtype(x)
        kb = kernels.backend_for(x)
        out = self.buffer("out", x.shape, x.dtype, kb.xp)
        kb.relu.relu_forward(out, x)
        self.output = out
        return out

    def backward(self, dy):
        """``dy * (out > 0)``."""
        self._need_forward("output")
        self.check_grad(dy, self.output.shape)
        kb = kernels.backend_for(dy)
        dx = self.buffer("dx", dy.shape, dy.dtype, kb.xp)
        kb.relu.relu_backward(dx, dy, self.output)
        return dx
