"""The Linear layer (op ``linear``)."""
from __future__ import annotations

import numpy as np

import kernels

from .base import Layer, _as_rng, workspace_for

__all__ = ["Linear"]


class Linear(Layer):
    """Fully connected layer ``y = x @ weight.T + bias`` (PyTorch ``torch.nn.Linear`` layout).

    Op ``linear``: kernels ``linear_forward``, ``linear_backward_input``,
    ``linear_backward_weight`` (``kernels/{cpu,gpu}/linear.py``); reference
    :mod:`engine.reference.linear`.

    Parameters
    ----------
    in_features, out_features : int > 0
    rng : int, None or numpy.random.Generator
        Seed or generator for the initialisation.
    dtype : float32 (default) or float64

    Notes
    -----
    Initialisation (our choice, documented because PyTorch's differs): He-normal
    ``weight ~ N(0, 2/in_features)``, bias 0, the same rule as :class:`Conv2d`
    (the hidden Linear feeds a ReLU). PyTorch's default is
    ``U(-1/sqrt(in), 1/sqrt(in))`` for both weight and bias.
    ``weight (out_features, in_features)``, ``bias (out_features,)``.

    Attributes
    ----------
    saved_input : array [shape=(N, in_features)] or None
        The last forward's input (the caller's array, not a copy), read by ``backward``.
    """

    def __init__(self, in_features, out_features, rng=None, dtype=np.float32):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if int(v) != v or v < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        w = _as_rng(rng).standard_normal((self.out_features, self.in_features)) * np.sqrt(2.0 / self.in_features)
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_features, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.input_grad = True
        self.saved_input = None

    def output_shape(self, in_shape):
        return (in_shape[0], self.out_features)

    def forward(self, x):
        """``(N, in_features) -> (N, out_features)``; ValueError on a wrong rank, width or dtype."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected input shape (N, {self.in_features}), got {x.shape}")
        self._check_dtype(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"Linear: input of shape {x.shape} must be C-contiguous")
        kb = kernels.backend_for(x)
        out = self.buffer("out", (x.shape[0], self.out_features), x.dtype, kb.xp)
        kb.linear.linear_forward(out, x, self.params["weight"], self.params["bias"], batch_invariant=not self.training,
                                 ws=workspace_for(kernels.device_of(x)))
        self.saved_input = x
        return out

    def backward(self, dy):
        """Accumulate ``grads``; return dx ``(N, in_features)`` (None if ``input_grad`` is False)."""
        self._need_forward("saved_input")
        x = self.saved_input
        self.check_grad(dy, (x.shape[0], self.out_features))
        kb = kernels.backend_for(x)
        kb.linear.linear_backward_weight(self.grads["weight"], self.grads["bias"], dy, x)
        if not self.input_grad:
            return None
        dx = self.buffer("dx", x.shape, x.dtype, kb.xp)
        kb.linear.linear_backward_input(dx, dy, self.params["weight"])
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"
