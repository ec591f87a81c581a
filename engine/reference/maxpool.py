"""Float64 reference of the ``maxpool`` op (``kernels/{cpu,gpu}/maxpool.py``).

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Method: PyTorch's ``torch.nn.MaxPool2d`` (floor mode, no padding, ties -> the
first maximum of the window in row-major order, PyTorch's CPU rule): a loop
over output positions with ``argmax`` on each window; the backward scatters
each window's gradient onto its argmax (``np.add.at``). Dimension letters:
``N, C, H, W``, ``OH, OW`` (pooled output).
"""
from __future__ import annotations

import numpy as np

from ._checks import f64 as _f64

__all__ = ["maxpool2d_output_size", "maxpool2d_forward", "maxpool2d_backward"]


def maxpool2d_output_size(h, w, kernel_size, stride):
    """``OH = (H - kernel_size) // stride + 1`` (floor mode, no padding, PyTorch).

    Raises
    ------
    ValueError
        If the input is smaller than the window or ``kernel_size, stride < 1``.
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"need kernel_size >= 1 and stride >= 1, got {kernel_size}, {stride}")
    if h < kernel_size or w < kernel_size:
        raise ValueError(f"input plane ({h}, {w}) smaller than the pooling window {kernel_size}")
    return (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1



def maxpool2d_forward(x, kernel_size=2, stride=2):
    """Reference max pooling, floor mode, no padding.

    Returns
    -------
    out : np.ndarray [shape=(N, C, OH, OW)]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
        Flat index ``h*W + w`` in the input plane of the first maximum of each
        window in row-major window order (ties -> first; PyTorch's CPU rule).
    """
    x = _f64("x (N, C, H, W)", x, 4)
    n, c, h, w = x.shape
    oh, ow = maxpool2d_output_size(h, w, kernel_size, stride)
    out = np.empty((n, c, oh, ow))
    argmax = np.empty((n, c, oh, ow), dtype=np.int32)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size]
            flat = win.reshape(n, c, -1)
            k = flat.argmax(axis=2)  # numpy argmax returns the first maximum
            out[:, :, i, j] = np.take_along_axis(flat, k[..., None], axis=2)[..., 0]
            argmax[:, :, i, j] = (i * stride + k // kernel_size) * w + (j * stride + k % kernel_size)
    return out, argmax



def maxpool2d_backward(dout, argmax, in_shape):
    """Reference max-pool backward: every window sends its gradient to its argmax.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, C, OH, OW)]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int]
    in_shape : tuple (N, C, H, W)

    Returns
    -------
    dx : np.ndarray [shape=in_shape]
        Overlapping windows that share an argmax add their gradients.
    """
    dout = _f64("dout", dout, 4)
    n, c, h, w = in_shape
    dx = np.zeros((n, c, h * w))
    np.add.at(
        dx,
        (np.arange(n)[:, None, None], np.arange(c)[None, :, None], np.asarray(argmax).reshape(n, c, -1)),
        dout.reshape(n, c, -1),
    )
    return dx.reshape(n, c, h, w)
