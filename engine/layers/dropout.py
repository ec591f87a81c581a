"""The Dropout layer (op ``dropout``), with its per-device generators and their saved states."""
from __future__ import annotations

import numpy as np

import kernels

from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Inverted dropout, PyTorch ``torch.nn.Dropout(p)``; any input shape.

    Op ``dropout``: kernels ``make_rng``, ``dropout_forward``, ``dropout_backward``
    (``kernels/{cpu,gpu}/dropout.py``); reference :mod:`engine.reference.dropout`.

    Training: each unit is kept with probability ``1 - p`` and scaled by
    ``1/(1 - p)``; eval: identity (returns ``x`` itself). The random stream is
    the backend's generator, held by the layer, one per device it has been on:
    ``Generator(PCG64(seed))`` on the CPU, a counter-based SplitMix64 stream
    (``kernels.gpu.dropout.CounterRNG``, state ``(seed, offset)``) on the GPU.
    :meth:`rng_state` / :meth:`set_rng_state` save and restore the current
    device's generator as a JSON-serialisable dict for bit-exact resume.

    Parameters
    ----------
    p : float in [0, 1)
        Drop probability.
    seed : int or None
        Seed of the layer's generators.

    Attributes
    ----------
    mask : array [dtype=uint8] or None
        The last training forward's keep mask (1 kept, 0 dropped); None after an eval or
        ``p = 0`` forward (identity).
    in_shape : tuple or None
        That forward's input shape.
    rng : generator
        The current device's generator (see :meth:`rng_state`).
    draws : callable or None
        ``engine.distributed``'s hook ``(rng, x) -> draws`` (masks a function of the global sample index).
    """

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = seed
        self._device = "cpu"
        self.rng = kernels.get_backend("cpu").dropout.make_rng(seed)
        self._rngs = {"cpu": self.rng}  # device -> generator (kept across moves: to('gpu').to('cpu') resumes it)
        self._pending = {}  # device -> state of a generator not created yet (set_rng_state on another device)
        self.mask = None
        self.in_shape = None
        self.draws = None  # engine.distributed: (rng, x) -> the draws of this rank's rows of the global batch

    def forward(self, x):
        """Same shape as ``x``; draws ``x.size`` uniforms from the layer's generator in training mode."""
        self._check_dtype(x)
        if not self.training or self.p == 0.0:
            self.mask = None
            self.in_shape = x.shape
            return x
        kb = kernels.backend_for(x)
        out = self.buffer("out", x.shape, x.dtype, kb.xp)
        self.mask = self.buffer("mask", x.shape, np.uint8, kb.xp)
        rng = self.rng if self.draws is None else self.draws(self.rng, x)
        kb.dropout.dropout_forward(out, self.mask, x, self.p, rng)
        self.in_shape = x.shape
        return out

    def backward(self, dy):
        """``dy * mask / (1 - p)`` with the forward's mask (identity after an eval/p=0 forward)."""
        self._need_forward("in_shape")
        self.check_grad(dy, self.in_shape)
        if self.mask is None:
            return dy
        kb = kernels.backend_for(dy)
        dx = self.buffer("dx", dy.shape, dy.dtype, kb.xp)
        kb.dropout.dropout_backward(dx, dy, self.mask, self.p)
        return dx

    @staticmethod
    def _kind(rng):
        bg = getattr(rng, "bit_generator", None)
        if bg is not None:
            return type(bg).__name__  # NumPy: 'PCG64', as in bit_generator.state['bit_generator']
        st = getattr(rng, "state", None)
        return st.get("bit_generator") if isinstance(st, dict) else None

    def rng_state(self):
        """JSON-serialisable state of the current device's generator (a dict with key ``"bit_generator"``).

        CPU: NumPy's ``bit_generator.state``; GPU: ``{"bit_generator":
        "hitcnn-splitmix64-counter", "seed", "offset"}``.

        Raises
        ------
        ValueError
            If the generator exposes no serialisable state.
        """
        bg = getattr(self.rng, "bit_generator", None)
        if bg is not None:
            return bg.state
        st = getattr(self.rng, "state", None)
        if not isinstance(st, dict):
            raise ValueError(f"Dropout: cannot read the state of generator {type(self.rng).__name__}")
        return dict(st)

    def set_rng_state(self, state):
        """Restore a state returned by :meth:`rng_state`.

        A state of the other device's generator (e.g. a GPU checkpoint loaded
        into a model on the CPU) is kept and applied when the layer moves to
        that device; the current generator is left as it is.

        Raises
        ------
        ValueError
            If ``state`` is not a dict with a ``"bit_generator"`` key.
        """
        if not isinstance(state, dict) or "bit_generator" not in state:
            raise ValueError(f"Dropout.set_rng_state: expected a dict with key 'bit_generator', got {state!r}")
        if state["bit_generator"] != self._kind(self.rng):
            other = "cpu" if self._device != "cpu" else "gpu"
            if other in self._rngs and state["bit_generator"] == self._kind(self._rngs[other]):
                self._set(self._rngs[other], state)
            else:
                self._pending[other] = state
            return
        self._set(self.rng, state)

    @staticmethod
    def _set(rng, state):
        bg = getattr(rng, "bit_generator", None)
        if bg is not None:
            bg.state = state
        else:
            rng.state = state

    def to(self, device):
        """Move to ``device``; each device keeps its own generator (created on the first move, seeded with ``seed``).

        So ``to('gpu').to('cpu')`` continues the CPU stream where it was.
        """
        super().to(device)
        if device != self._device:
            rng = self._rngs.get(device)
            if rng is None:
                rng = self._rngs[device] = kernels.get_backend(device).dropout.make_rng(self.seed)
            self.rng = rng
            self._device = device
            pending = self._pending.pop(device, None)
            if pending is not None:
                self.set_rng_state(pending)
        return self

    def extra_repr(self):
        return f"p={self.p}"
