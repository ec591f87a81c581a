"""MaxPool2d forward and backward on the GPU (``cuda/maxpool.cu``), as :mod:`kernels.cpu.maxpool`.

Floor mode, no padding: ``OH = (H - kernel_size)//stride + 1``. ``argmax``
(int32) holds the flat index ``h*W + w`` in the input plane of the first
maximum of each window in row-major order (strict ``>``): on ties the
gradient goes to exactly one input, as on the CPU. The backward is a gather
(one thread per input element sums the windows whose argmax it is, in fixed
order): deterministic, no atomics, overlapping windows correct. Inputs that
are not C-contiguous are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import numpy as np

from ..shapes import maxpool2d_output_size
from . import _launch as L

__all__ = ["maxpool2d_output_size", "maxpool2d_forward", "maxpool2d_backward"]


def maxpool2d_forward(out, argmax, x, kernel_size, stride):
    """Max pooling forward (floor mode, ties -> first maximum in row-major order).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, C, OH, OW), dtype=x.dtype], C-contiguous
    argmax : cupy.ndarray [shape=(N, C, OH, OW), dtype=int32], C-contiguous
        Flat index ``h*W + w`` of each window's maximum in its input plane.
    x : cupy.ndarray [shape=(N, C, H, W), float32 or float64]
    kernel_size, stride : int >= 1

    Raises
    ------
    ValueError
        On a wrong rank, dtype, shape, or a plane smaller than the window.
    """
    dt = L.float_dtype(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    oh, ow = maxpool2d_output_size(h, w, kernel_size, stride)
    L.check_out("out", out, (n, c, oh, ow), dt)
    L.check_out("argmax", argmax, (n, c, oh, ow), np.int32)
    x = L.contig(x)
    grid, block = L.plane_grid(n * c, oh * ow)
    L.kernel("maxpool.cu", "maxpool2d_forward", dt)(
        grid, block, (out, argmax, x, L.i32(h), L.i32(w), L.i32(oh), L.i32(ow), L.i32(kernel_size), L.i32(stride)))


def maxpool2d_backward(dx, dout, argmax, kernel_size, stride):
    """Max pooling backward as a gather (overwrites ``dx``).

    Parameters
    ----------
    dx : cupy.ndarray [shape=(N, C, H, W)], C-contiguous
        Each element: sum of ``dout`` over the windows whose argmax it is, else 0.
    dout : cupy.ndarray [shape=(N, C, OH, OW), dtype=dx.dtype]
    argmax : cupy.ndarray [shape=(N, C, OH, OW), dtype=int32]
    kernel_size, stride : int >= 1

    Raises
    ------
    ValueError
        On mismatched shapes or dtypes.
    """
    dt = L.float_dtype(dx, "dx")
    if dx.ndim != 4:
        raise ValueError(f"dx must be 4-D (N, C, H, W), got shape {dx.shape}")
    n, c, h, w = dx.shape
    oh, ow = maxpool2d_output_size(h, w, kernel_size, stride)
    L.check_out("dx", dx, dx.shape, dt)
    dout = L.check("dout", dout, (n, c, oh, ow), dt)
    argmax = L.check("argmax", argmax, (n, c, oh, ow), np.int32)
    grid, block = L.plane_grid(n * c, h * w)
    L.kernel("maxpool.cu", "maxpool2d_backward", dt)(
        grid, block, (dx, dout, argmax, L.i32(h), L.i32(w), L.i32(oh), L.i32(ow), L.i32(kernel_size), L.i32(stride)))
