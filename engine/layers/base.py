"""The layers' base class :class:`Layer` (parameters, modes, buffers, input checks, dtype and device moves)
and their shared helpers: the per-device conv workspace and the cached buffers."""
from __future__ import annotations

import numpy as np

import kernels

__all__ = ["Layer", "workspace_for", "cached_buffer"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_WORKSPACES = {}


def workspace_for(device):
    """The :class:`kernels.Workspace` shared by all layers on ``device`` ('cpu' or 'gpu').

    Layers run one at a time and the conv kernels never keep scratch contents
    between calls, so one workspace per device is enough and bounds the
    scratch memory to the largest single layer's need.
    """
    ws = _WORKSPACES.get(device)
    if ws is None:
        ws = _WORKSPACES[device] = kernels.Workspace()
    return ws


def _as_rng(rng):
    """A numpy Generator from a seed (int/None) or a Generator (returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)




def cached_buffer(cache, name, shape, dtype, xp):
    """Return ``cache``'s buffer for ``(name, shape, dtype, array module)``, allocating it once.

    Layers and the loss keep their outputs and gradients in such buffers, so
    a training step after warm-up allocates nothing proportional to the
    activations. Contents are whatever the last user left.
    """
    key = (name, tuple(shape), np.dtype(dtype).str, xp.__name__)
    b = cache.get(key)
    if b is None:
        b = cache[key] = xp.empty(shape, dtype=dtype)
    return b



def _zero(g):
    """``g.fill(0)``; a large NumPy array is zeroed by :func:`kernels.cpu._threads.fill_zero` (parallel)."""
    if isinstance(g, np.ndarray) and g.size >= (1 << 20):
        from kernels.cpu._threads import fill_zero

        fill_zero(g)
    else:
        g.fill(0)

class Layer:
    """Base class: parameter/grad/buffer bookkeeping, train/eval, cached buffers, dtype and device moves."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self._cache = {}

    # -- modes ----------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``mode=True``) or eval mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set eval mode; returns self."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter gradient to zero (in place; large CPU arrays over Numba's threads)."""
        for g in self.grads.values():
            _zero(g)

    def __call__(self, x):
        return self.forward(x)

    # -- buffers and checks -------------------------------------------------------
    def buffer(self, name, shape, dtype, xp):
        """The layer's cached buffer ``name`` of ``shape`` and ``dtype`` on array module ``xp``.

        Allocated once per (name, shape, dtype, module) and reused by every later call, so its
        contents are whatever the last user wrote. Used by the layer itself and by code that runs
        the layer's op in its place (``engine.model``'s fused block, ``engine.distributed``'s
        SyncBatchNorm), so outputs land in the same buffers either way.
        """
        return cached_buffer(self._cache, name, shape, dtype, xp)

    def _param_dtype(self):
        for p in self.params.values():
            return p.dtype
        return None

    def _check_dtype(self, x):
        if x.dtype not in _FLOATS:
            raise ValueError(f"{type(self).__name__}: input must be float32 or float64, got {x.dtype} (shape {x.shape})")
        pd = self._param_dtype()
        if pd is not None and x.dtype != pd:
            raise ValueError(
                f"{type(self).__name__}: input dtype {x.dtype} (shape {x.shape}) does not match the parameters' "
                f"{pd}; convert the model with .astype({x.dtype})"
            )

    def check_input(self, x, channels=None):
        """Raise ValueError (naming the layer and the shape) unless ``x`` is a C-contiguous float32/float64
        ``(N, channels, H, W)`` array of the parameters' dtype (any ``C`` when ``channels`` is None)."""
        if x.ndim != 4:
            want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
            raise ValueError(f"{type(self).__name__}: expected a 4-D input {want}, got shape {x.shape}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(
                f"{type(self).__name__}: expected input shape (N, {channels}, H, W), got {x.shape} "
                f"({x.shape[1]} channels)"
            )
        self._check_dtype(x)
        if not x.flags.c_contiguous:
            raise ValueError(f"{type(self).__name__}: input of shape {x.shape} must be C-contiguous")

    def _need_forward(self, attr):
        if getattr(self, attr, None) is None:
            raise ValueError(f"{type(self).__name__}.backward called before forward")

    def check_grad(self, dy, shape):
        """Raise ValueError (naming the layer) unless the upstream gradient ``dy`` is C-contiguous of ``shape``."""
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"{type(self).__name__}.backward: expected gradient of shape {tuple(shape)}, got {dy.shape}")
        if not dy.flags.c_contiguous:
            raise ValueError(f"{type(self).__name__}.backward: gradient of shape {dy.shape} must be C-contiguous")

    # -- conversions ----------------------------------------------------------------
    def _map_arrays(self, fn):
        for d in (self.params, self.grads, self.buffers):
            for k in list(d):
                d[k] = fn(d[k])
        self._cache.clear()

    def astype(self, dtype):
        """Convert parameters, gradients and buffers to ``dtype`` (float32 or float64); returns self."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self._map_arrays(lambda a: a.astype(dtype))
        return self

    def to(self, device):
        """Move parameters, gradients and buffers to ``device`` ('cpu' or 'gpu'); returns self."""
        xp = kernels.get_backend(device).xp
        if device == "cpu":
            self._map_arrays(lambda a: np.ascontiguousarray(kernels.to_host(a)))
        else:
            self._map_arrays(lambda a: xp.ascontiguousarray(xp.asarray(a)))
        return self

    def output_shape(self, in_shape):
        """Shape of the output for an input of shape ``in_shape`` (no computation)."""
        return tuple(in_shape)

    def num_params(self):
        """Number of scalar parameters."""
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"
