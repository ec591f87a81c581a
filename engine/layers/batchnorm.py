"""The BatchNorm2d layer (op ``batchnorm``)."""
from __future__ import annotations

import numpy as np

import kernels

from .base import Layer

__all__ = ["BatchNorm2d"]


class BatchNorm2d(Layer):
    """Batch normalisation over ``(N, H, W)`` per channel, PyTorch ``torch.nn.BatchNorm2d``.

    Op ``batchnorm``: kernels ``batchnorm_forward_train``, ``batchnorm_forward_eval``,
    ``batchnorm_backward`` (``kernels/{cpu,gpu}/batchnorm.py``; the split steps with
    :attr:`sync`); reference :mod:`engine.reference.batchnorm`.

    Parameters
    ----------
    num_features : int > 0
        Channels ``C``.
    momentum : float in [0, 1]
        ``running = (1 - momentum)*running + momentum*batch_stat``.
    eps : float > 0
        Added to the variance.
    dtype : float32 (default) or float64

    Notes
    -----
    Training normalises with the biased batch variance and updates
    ``running_var`` with the unbiased one; eval uses the running statistics and
    never changes them. ``params``: ``weight`` (gamma, init 1), ``bias`` (beta,
    init 0); ``buffers``: ``running_mean`` (init 0), ``running_var`` (init 1).

    Attributes
    ----------
    saved_input : array [shape=(N, C, H, W)] or None
        The last training-mode forward's input (None after an eval forward: no backward then).
    save_mean, save_invstd : array [shape=(C,), dtype=float64] or None
        That forward's batch mean and ``1/sqrt(var + eps)`` (the kernels' ``save_*`` buffers).
    sync : engine.distributed.SyncBatchNorm or None
        Set by data-parallel training: batch statistics summed over MPI ranks.
    """

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype=np.float32):
        super().__init__()
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be a positive integer, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0 or not eps > 0:
            raise ValueError(f"BatchNorm2d: need 0 <= momentum <= 1 and eps > 0, got {momentum}, {eps}")
        c = self.num_features = int(num_features)
        self.momentum, self.eps = float(momentum), float(eps)
        self.params = {"weight": np.ones(c, dtype), "bias": np.zeros(c, dtype)}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.buffers = {"running_mean": np.zeros(c, dtype), "running_var": np.ones(c, dtype)}
        self.saved_input = None
        self.save_mean = self.save_invstd = None
        self.sync = None  # engine.distributed.SyncBatchNorm: batch statistics summed over MPI ranks

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H, W)``; training mode needs ``N*H*W >= 2``."""
        self.check_input(x, self.num_features)
        kb = kernels.backend_for(x)
        out = self.buffer("out", x.shape, x.dtype, kb.xp)
        p, b = self.params, self.buffers
        if self.training:
            self.save_mean = self.buffer("save_mean", (self.num_features,), np.float64, kb.xp)
            self.save_invstd = self.buffer("save_invstd", (self.num_features,), np.float64, kb.xp)
            if self.sync is not None:
                self.sync.bn_forward(self, kb, x, out)
            else:
                kb.batchnorm.batchnorm_forward_train(out, self.save_mean, self.save_invstd, x, p["weight"], p["bias"],
                                                     b["running_mean"], b["running_var"], self.momentum, self.eps)
            self.saved_input = x
        else:
            kb.batchnorm.batchnorm_forward_eval(out, x, p["weight"], p["bias"], b["running_mean"],
                                                b["running_var"], self.eps)
            self.saved_input = None
        return out

    def backward(self, dy):
        """Accumulate ``grads``; return dx. Only after a training-mode forward (batch statistics)."""
        if self.saved_input is None:
            raise ValueError("BatchNorm2d.backward needs a preceding forward in training mode")
        x = self.saved_input
        self.check_grad(dy, x.shape)
        kb = kernels.backend_for(x)
        dx = self.buffer("dx", x.shape, x.dtype, kb.xp)
        if self.sync is not None:
            self.sync.bn_backward(self, kb, dy, x, dx)
            return dx
        kb.batchnorm.batchnorm_backward(dx, self.grads["weight"], self.grads["bias"], dy, x, self.save_mean,
                                        self.save_invstd, self.params["weight"])
        return dx

    def extra_repr(self):
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"
