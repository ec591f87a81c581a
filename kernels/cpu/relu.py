"""ReLU forward and backward as Numba kernels (CPU).

``out = max(x, 0)``; the backward mask comes from the forward output
(``out > 0``), as in DESIGN.md, so the input need not be kept. Arrays of any
shape (C-contiguous); ``prange`` over fixed-size chunks of the flat array.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import checked_flat
from ._threads import run as _run

__all__ = ["relu_forward", "relu_backward"]

_CHUNK = 1 << 15


@njit(parallel=True, cache=True)
def _fwd(out, x):
    n = x.shape[0]
    for b in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(b * _CHUNK, min(n, (b + 1) * _CHUNK)):
            v = x[i]
            out[i] = v if v > 0 else 0.0


@njit(parallel=True, cache=True)
def _bwd(dx, dout, out):
    n = out.shape[0]
    for b in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(b * _CHUNK, min(n, (b + 1) * _CHUNK)):
            dx[i] = dout[i] if out[i] > 0 else 0.0


def relu_forward(out, x):
    """ReLU forward.

    Parameters
    ----------
    out : np.ndarray [shape=x.shape, dtype=x.dtype]
        Output, overwritten with ``max(x, 0)`` (may be ``x`` itself).
    x : np.ndarray [any shape, dtype=float32 or float64], C-contiguous

    Raises
    ------
    ValueError
        On mismatched shapes or dtypes, or non-contiguous arrays.
    """
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    _run(x.size, _fwd, checked_flat("out", out, x.shape, x.dtype), checked_flat("x", x, x.shape, x.dtype))


def relu_backward(dx, dout, out):
    """ReLU backward: ``dx = dout * (out > 0)`` (overwrites ``dx``).

    Parameters
    ----------
    dx, dout, out : np.ndarray [same shape and dtype], C-contiguous
        ``out`` is the forward output.
    """
    _run(out.size, _bwd, checked_flat("dx", dx, out.shape, out.dtype), checked_flat("dout", dout, out.shape, out.dtype),
         checked_flat("out", out, out.shape, out.dtype))
