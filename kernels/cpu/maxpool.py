"""MaxPool2d forward and backward as Numba kernels (CPU).

Floor mode, no padding (PyTorch ``MaxPool2d`` defaults with ``ceil_mode=False``):
``OH = (H - kernel_size) // stride + 1``. The forward records, per output,
the flat index ``h*W + w`` in the input plane of the first maximum of the
window in row-major order (strict ``>``), so on ties the gradient goes to
exactly one input. The backward is a gather: every input element sums, in a
fixed order, the windows whose argmax it is (no atomics, deterministic);
non-overlapping windows (``kernel_size <= stride``) take a fast path where
each input belongs to at most one window. ``prange`` over the ``N*C`` planes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..shapes import maxpool2d_output_size
from ._checks import checked_flat
from ._threads import run as _run

__all__ = ["maxpool2d_output_size", "maxpool2d_forward", "maxpool2d_backward"]


@njit(parallel=True, cache=True)
def _fwd(out, argmax, x, k, s):  # x (P, H, W), out/argmax (P, OH, OW)
    p_, h, w = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for p in prange(p_):
        for i in range(oh):
            for j in range(ow):
                h0 = i * s
                w0 = j * s
                best = x[p, h0, w0]
                bi = h0 * w + w0
                for a in range(k):
                    for b in range(k):
                        v = x[p, h0 + a, w0 + b]
                        if v > best:
                            best = v
                            bi = (h0 + a) * w + w0 + b
                out[p, i, j] = best
                argmax[p, i, j] = bi


@njit(parallel=True, cache=True)
def _fwd2(out, argmax, x, w):  # 2x2 windows, stride 2; x (P, H*W) flat planes, out/argmax (P, OH, OW)
    p_, oh, ow = out.shape
    for p in prange(p_):
        for i in range(oh):
            row = 2 * i * w
            for j in range(ow):
                t = row + 2 * j
                best = x[p, t]
                bi = t
                v = x[p, t + 1]
                if v > best:
                    best = v
                    bi = t + 1
                v = x[p, t + w]
                if v > best:
                    best = v
                    bi = t + w
                v = x[p, t + w + 1]
                if v > best:
                    best = v
                    bi = t + w + 1
                out[p, i, j] = best
                argmax[p, i, j] = bi


@njit(parallel=True, cache=True)
def _bwd_disjoint(dx, dout, argmax):  # dx (P, H*W); windows never overlap
    p_, oh, ow = dout.shape
    hw = dx.shape[1]
    for p in prange(p_):
        for t in range(hw):
            dx[p, t] = 0.0
        for i in range(oh):
            for j in range(ow):
                dx[p, argmax[p, i, j]] = dout[p, i, j]


@njit(parallel=True, cache=True)
def _bwd_gather(dx, dout, argmax, k, s):  # dx (P, H, W); overlapping windows
    p_, h, w = dx.shape
    oh, ow = dout.shape[1], dout.shape[2]
    for p in prange(p_):
        for y in range(h):
            i_lo = max(0, (y - k + s) // s)  # = ceil((y - k + 1) / s), clipped
            i_hi = min(oh - 1, y // s)
            for x_ in range(w):
                j_lo = max(0, (x_ - k + s) // s)
                j_hi = min(ow - 1, x_ // s)
                idx = y * w + x_
                acc = 0.0
                for i in range(i_lo, i_hi + 1):
                    for j in range(j_lo, j_hi + 1):
                        if argmax[p, i, j] == idx:
                            acc += dout[p, i, j]
                dx[p, y, x_] = acc


def maxpool2d_forward(out, argmax, x, kernel_size, stride):
    """Max pooling forward (floor mode, ties -> first maximum in row-major order).

    Parameters
    ----------
    out : np.ndarray [shape=(N, C, OH, OW), dtype=x.dtype]
        Output, overwritten.
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
        Output: flat index ``h*W + w`` of each window's maximum in its input plane.
    x : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64], C-contiguous
    kernel_size, stride : int >= 1

    Raises
    ------
    ValueError
        On a wrong rank, dtype, shape, or a plane smaller than the window.
    """
    if x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be 4-D (N, C, H, W) float32/float64, got {x.dtype} shape {x.shape}")
    n, c, h, w = x.shape
    oh, ow = maxpool2d_output_size(h, w, kernel_size, stride)
    checked_flat("x", x, x.shape, x.dtype)
    checked_flat("out", out, (n, c, oh, ow), x.dtype)
    checked_flat("argmax", argmax, (n, c, oh, ow), np.int32)
    o3, a3 = out.reshape(n * c, oh, ow), argmax.reshape(n * c, oh, ow)
    if kernel_size == 2 and stride == 2:  # the paper's pool: specialised, no inner window loops
        _run(x.size, _fwd2, o3, a3, x.reshape(n * c, h * w), w)
    else:
        _run(x.size, _fwd, o3, a3, x.reshape(n * c, h, w), int(kernel_size), int(stride))


def maxpool2d_backward(dx, dout, argmax, kernel_size, stride):
    """Max pooling backward as a gather (overwrites ``dx``).

    Parameters
    ----------
    dx : np.ndarray [shape=(N, C, H, W)]
        Output: each element is the sum of ``dout`` over the windows whose argmax it is, else 0.
    dout : np.ndarray [shape=(N, C, OH, OW), dtype=dx.dtype]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
        From :func:`maxpool2d_forward`.
    kernel_size, stride : int >= 1

    Raises
    ------
    ValueError
        On mismatched shapes or dtypes.
    """
    if dx.ndim != 4 or dx.dtype not in (np.float32, np.float64):
        raise ValueError(f"dx must be 4-D (N, C, H, W) float32/float64, got {dx.dtype} shape {dx.shape}")
    n, c, h, w = dx.shape
    oh, ow = maxpool2d_output_size(h, w, kernel_size, stride)
    checked_flat("dx", dx, dx.shape, dx.dtype)
    checked_flat("dout", dout, (n, c, oh, ow), dx.dtype)
    checked_flat("argmax", argmax, (n, c, oh, ow), np.int32)
    d3, a3 = dout.reshape(n * c, oh, ow), argmax.reshape(n * c, oh, ow)
    if kernel_size <= stride:
        _run(dx.size, _bwd_disjoint, dx.reshape(n * c, h * w), d3, a3)
    else:
        _run(dx.size, _bwd_gather, dx.reshape(n * c, h, w), d3, a3, int(kernel_size), int(stride))
