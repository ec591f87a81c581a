"""The Conv2d layer (op ``conv2d``)."""
from __future__ import annotations

import numpy as np

import kernels
from kernels.shapes import conv2d_output_size

from .base import Layer, _as_rng, workspace_for

__all__ = ["Conv2d"]


class Conv2d(Layer):
    """2-D convolution (cross-correlation), PyTorch ``torch.nn.Conv2d`` with square kernel, no dilation/groups.

    Op ``conv2d``: kernels ``conv2d_forward``, ``conv2d_backward_input``,
    ``conv2d_backward_weight`` (``kernels/{cpu,gpu}/conv2d.py``); reference
    :mod:`engine.reference.conv2d`.

    Parameters
    ----------
    in_channels, out_channels : int > 0
    kernel_size : int > 0
        Square kernel ``KH = KW = kernel_size``.
    stride : int > 0
    padding : int >= 0
        Zero padding on each side; ``OH = (H + 2*padding - KH)//stride + 1``.
    rng : int, None or numpy.random.Generator
        Seed or generator for the initialisation.
    dtype : float32 (default) or float64

    Notes
    -----
    Initialisation: He-normal (He et al. 2015), ``weight ~ N(0, 2/(in_channels*KH*KW))``;
    bias 0. ``weight (F, C, KH, KW)``, ``bias (F,)``.
    ``input_grad = False`` skips the gradient with respect to the input (the
    model's first layer does not need it); ``backward`` then returns None.

    Attributes
    ----------
    saved_input : array [shape=(N, C, H, W)] or None
        The last forward's input (the caller's array, not a copy), read by ``backward``.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, rng=None, dtype=np.float32):
        super().__init__()
        for name, v, lo in (("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                            ("kernel_size", kernel_size, 1), ("stride", stride, 1), ("padding", padding, 0)):
            if int(v) != v or v < lo:
                raise ValueError(f"Conv2d: {name} must be an integer >= {lo}, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        k = self.kernel_size
        std = np.sqrt(2.0 / (self.in_channels * k * k))
        w = _as_rng(rng).standard_normal((self.out_channels, self.in_channels, k, k)) * std
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_channels, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.input_grad = True
        self.saved_input = None

    def output_shape(self, in_shape):
        n, c, h, w = in_shape
        k = self.kernel_size
        try:
            oh, ow = conv2d_output_size(h, w, k, k, self.stride, self.padding)
        except ValueError:
            raise ValueError(f"Conv2d: input shape {tuple(in_shape)} too small for kernel {self.kernel_size} "
                             f"with padding {self.padding}") from None
        return (n, self.out_channels, oh, ow)

    def forward(self, x):
        """``(N, C, H, W) -> (N, F, OH, OW)``; raises ValueError on a wrong rank, channel count or dtype."""
        self.check_input(x, self.in_channels)
        kb = kernels.backend_for(x)
        out = self.buffer("out", self.output_shape(x.shape), x.dtype, kb.xp)
        p = self.params
        # eval mode: each image's output independent of the rest of the batch (issue 10, item 19)
        kb.conv2d.conv2d_forward(out, x, p["weight"], p["bias"], self.stride, self.padding,
                                 workspace_for(kernels.device_of(x)), batch_invariant=not self.training)
        self.saved_input = x
        return out

    def backward(self, dy):
        """Accumulate ``grads['weight']``, ``grads['bias']``; return dx ``(N, C, H, W)`` (None if ``input_grad`` is False)."""
        self._need_forward("saved_input")
        x = self.saved_input
        self.check_grad(dy, self.output_shape(x.shape))
        kb = kernels.backend_for(x)
        ws = workspace_for(kernels.device_of(x))
        kb.conv2d.conv2d_backward_weight(self.grads["weight"], self.grads["bias"], dy, x, self.stride, self.padding, ws)
        if not self.input_grad:
            return None
        dx = self.buffer("dx", x.shape, x.dtype, kb.xp)
        kb.conv2d.conv2d_backward_input(dx, dy, self.params["weight"], self.stride, self.padding, ws)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
