"""Inverted dropout forward and backward as Numba kernels (CPU).

PyTorch ``torch.nn.Dropout`` convention: in training each unit is kept with
probability ``1 - p`` and kept units are scaled by ``1/(1 - p)``, so eval is
the identity. The random numbers come from a NumPy ``Generator(PCG64(seed))``
held by the layer (:func:`make_rng`); its state is saved in checkpoints for
bit-exact resume. The uniform draws are written into ``out`` itself (no
scratch allocation), then one fused pass builds the uint8 mask and the output.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..shapes import dropout_scale
from ._checks import checked_flat
from ._threads import run as _run

__all__ = ["make_rng", "dropout_forward", "dropout_backward"]

_CHUNK = 1 << 15


def make_rng(seed):
    """Return this backend's generator: ``numpy.random.Generator(PCG64(seed))``."""
    return np.random.Generator(np.random.PCG64(seed))


@njit(parallel=True, cache=True)
def _fwd(out, mask, x, p, scale):  # out holds uniform [0, 1) draws on entry
    n = x.shape[0]
    for b in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(b * _CHUNK, min(n, (b + 1) * _CHUNK)):
            keep = out[i] >= p
            mask[i] = 1 if keep else 0
            out[i] = x[i] * scale if keep else 0.0


@njit(parallel=True, cache=True)
def _bwd(dx, dout, mask, scale):
    n = dout.shape[0]
    for b in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(b * _CHUNK, min(n, (b + 1) * _CHUNK)):
            dx[i] = dout[i] * scale if mask[i] != 0 else 0.0


def dropout_forward(out, mask, x, p, rng):
    """Inverted dropout forward (training mode).

    Parameters
    ----------
    out : np.ndarray [shape=x.shape, dtype=x.dtype]
        Output, overwritten: ``x * mask / (1 - p)``. Must not alias ``x``.
    mask : np.ndarray [shape=x.shape, dtype=uint8]
        Output: 1 where the unit is kept (uniform draw ``u >= p``), else 0.
    x : np.ndarray [dtype=float32 or float64], C-contiguous
    p : float in [0, 1)
        Drop probability.
    rng : numpy.random.Generator
        Advanced by ``x.size`` draws of ``rng.random(dtype=x.dtype)``.

    Raises
    ------
    ValueError
        On ``p`` outside [0, 1), mismatched shapes/dtypes, or ``out is x``.
    """
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    scale = dropout_scale(p)
    if out is x or np.shares_memory(out, x):
        raise ValueError("dropout out must not alias x")
    o = checked_flat("out", out, x.shape, x.dtype)
    m = checked_flat("mask", mask, x.shape, np.uint8)
    rng.random(dtype=x.dtype, out=o)
    _run(x.size, _fwd, o, m, checked_flat("x", x, x.shape, x.dtype), x.dtype.type(p), x.dtype.type(scale))


def dropout_backward(dx, dout, mask, p):
    """Dropout backward with the forward's mask: ``dx = dout * mask / (1 - p)`` (overwrites ``dx``)."""
    scale = dropout_scale(p)
    _run(dout.size, _bwd, checked_flat("dx", dx, dout.shape, dout.dtype), checked_flat("dout", dout, dout.shape, dout.dtype),
         checked_flat("mask", mask, dout.shape, np.uint8), dout.dtype.type(scale))
