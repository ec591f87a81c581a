"""ReLU forward and backward on the GPU (``cuda/relu.cu``), same entry points as :mod:`kernels.cpu.relu`.

``out = max(x, 0)``; the backward mask is the forward output (``out > 0``).
Grid-stride elementwise kernels over the flat array (64-bit index). ``out``
may be ``x`` itself. Inputs that are not C-contiguous are copied; outputs
must be C-contiguous. float32 (training) or float64.
"""
from __future__ import annotations

from . import _launch as L

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(out, x):
    """ReLU forward: ``out = max(x, 0)``.

    Parameters
    ----------
    out : cupy.ndarray [shape=x.shape, dtype=x.dtype], C-contiguous (may be ``x``)
    x : cupy.ndarray [any shape, float32 or float64]

    Raises
    ------
    ValueError
        On mismatched shapes or dtypes, or a non-contiguous ``out``.
    """
    dt = L.float_dtype(x)
    L.check_out("out", out, x.shape, dt)
    x = L.contig(x)
    n = x.size
    L.kernel("relu.cu", "relu_forward", dt)(L.flat_grid(n), (L.THREADS,), (out, x, L.i64(n)))


def relu_backward(dx, dout, out):
    """ReLU backward: ``dx = dout * (out > 0)`` (overwrites ``dx``).

    Parameters
    ----------
    dx : cupy.ndarray [shape=out.shape], C-contiguous
    dout : cupy.ndarray [shape=out.shape, dtype=out.dtype]
    out : cupy.ndarray
        The forward output.

    Raises
    ------
    ValueError
        On mismatched shapes or dtypes.
    """
    dt = L.float_dtype(out, "out")
    L.check_out("dx", dx, out.shape, dt)
    dout = L.check("dout", dout, out.shape, dt)
    out = L.contig(out)
    n = out.size
    L.kernel("relu.cu", "relu_backward", dt)(L.flat_grid(n), (L.THREADS,), (dx, dout, out, L.i64(n)))
