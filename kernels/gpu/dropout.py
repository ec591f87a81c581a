"""Inverted dropout on the GPU (``cuda/dropout.cu``), same entry points as :mod:`kernels.cpu.dropout`.

PyTorch convention: each unit kept with probability ``1 - p`` (uniform draw
``u >= p``, the CPU's rule), kept units scaled by ``1/(1 - p)``; the backward
reuses the uint8 mask. The draws come from a seeded
``cupy.random.Generator`` (:func:`make_rng`, the GPU's stream of numbers: it
differs from the CPU's NumPy PCG64, so masks are equal in law, not bitwise).
Same seed, same masks: runs are reproducible. Inputs that are not C-contiguous
are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from . import _launch as L

__all__ = ["make_rng", "dropout_forward", "dropout_backward"]


def make_rng(seed):
    """Return this backend's generator: ``cupy.random.default_rng(seed)`` (cupy's XORWOW bit generator)."""
    return cp.random.default_rng(seed)


def _scale(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    return 1.0 / (1.0 - p)


def dropout_forward(out, mask, x, p, rng):
    """Inverted dropout forward (training mode).

    Parameters
    ----------
    out : cupy.ndarray [shape=x.shape, dtype=x.dtype], C-contiguous
        Overwritten: ``x * mask / (1 - p)``.
    mask : cupy.ndarray [shape=x.shape, dtype=uint8], C-contiguous
        1 where the unit is kept (``u >= p``), else 0.
    x : cupy.ndarray [float32 or float64]
    p : float in [0, 1)
    rng : cupy.random.Generator
        From :func:`make_rng`; advanced by ``x.size`` draws.

    Raises
    ------
    ValueError
        On ``p`` outside [0, 1) or mismatched shapes/dtypes.
    """
    dt = L.float_dtype(x)
    scale = _scale(p)
    L.check_out("out", out, x.shape, dt)
    L.check_out("mask", mask, x.shape, np.uint8)
    x = L.contig(x)
    n = x.size
    u = rng.random(n, dtype=dt)
    L.kernel("dropout.cu", "dropout_forward", dt)(
        L.flat_grid(n), (L.THREADS,), (out, mask, x, u, L.real(dt, p), L.real(dt, scale), L.i64(n)))


def dropout_backward(dx, dout, mask, p):
    """Dropout backward with the forward's mask: ``dx = dout * mask / (1 - p)`` (overwrites ``dx``)."""
    dt = L.float_dtype(dout, "dout")
    scale = _scale(p)
    L.check_out("dx", dx, dout.shape, dt)
    dout = L.contig(dout)
    mask = L.check("mask", mask, dout.shape, np.uint8)
    n = dout.size
    L.kernel("dropout.cu", "dropout_backward", dt)(
        L.flat_grid(n), (L.THREADS,), (dx, dout, mask, L.real(dt, scale), L.i64(n)))
