"""Float64 reference of the ``conv2d`` op (``kernels/{cpu,gpu}/conv2d.py``): forward, backward-input, backward-weight.

Plain NumPy, slow and obviously correct: every Numba and CuPy conv kernel is
tested against these functions. Nothing here imports ``kernels/``.

Method: PyTorch's ``torch.nn.functional.conv2d`` (cross-correlation, zero
padding, dilation 1, one group, weight ``(F, C, KH, KW)``), written as one
``einsum`` over channels per kernel tap ``(a, b)`` on strided views of the
zero-padded input; the backward passes are the same sums transposed
(``dx``: every tap scatters ``dout @ weight[:, :, a, b]`` back onto its
window, ``dweight``: ``dout`` against the window, ``dbias``: ``dout`` summed).

Dimension letters: ``N, C, H, W`` (batch, channels, height, width), ``F``
(filters), ``KH, KW`` (kernel), ``OH, OW`` (output). Every function
computes in float64 and returns new float64 arrays (inputs are never modified).
"""
from __future__ import annotations

import numpy as np

from ._checks import f64

__all__ = ["conv2d_output_size", "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]


def _check(x_shape, w_shape, stride, padding):
    if len(x_shape) != 4:
        raise ValueError(f"x (N, C, H, W) must be 4-D, got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"weight (F, C, KH, KW) must be 4-D, got shape {tuple(w_shape)}")
    if x_shape[1] != w_shape[1]:
        raise ValueError(f"x has {x_shape[1]} channels (shape {tuple(x_shape)}) but weight expects "
                         f"{w_shape[1]} (shape {tuple(w_shape)})")
    if int(stride) < 1 or int(padding) < 0:
        raise ValueError(f"need stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    return int(stride), int(padding)


def conv2d_output_size(h, w, kh, kw, stride, padding):
    """Output height and width of a convolution.

    ``OH = (H + 2*padding - KH) // stride + 1`` (same for ``OW``), PyTorch's
    formula with dilation 1.

    Raises
    ------
    ValueError
        If the padded input is smaller than the kernel.
    """
    if h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(
            f"padded input ({h + 2 * padding}, {w + 2 * padding}) smaller than kernel ({kh}, {kw})"
        )
    return (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


def _taps(kh, kw, s, oh, ow):
    """``(a, b, index)``: kernel tap and the strided window it reads of the padded input."""
    for a in range(kh):
        for b in range(kw):
            yield a, b, (slice(None), slice(None), slice(a, a + s * (oh - 1) + 1, s), slice(b, b + s * (ow - 1) + 1, s))


def conv2d_forward(x, weight, bias, stride=1, padding=0):
    """Reference 2-D convolution (cross-correlation), float64.

    Parameters
    ----------
    x : np.ndarray [shape=(N, C, H, W)]
    weight : np.ndarray [shape=(F, C, KH, KW)]
    bias : np.ndarray [shape=(F,)] or None
    stride : int >= 1
    padding : int >= 0
        Zero padding on each side of H and W.

    Returns
    -------
    out : np.ndarray [shape=(N, F, OH, OW), dtype=float64]
        ``out[n, f, i, j] = b[f] + sum_{c,p,q} w[f,c,p,q] * xpad[n, c, i*s+p, j*s+q]``.

    Raises
    ------
    ValueError
        On a wrong rank, mismatched channels or bias shape, bad stride/padding.
    """
    x, weight = f64("x (N, C, H, W)", x, 4), f64("weight (F, C, KH, KW)", weight, 4)
    s, p = _check(x.shape, weight.shape, stride, padding)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    if bias is not None:
        bias = f64("bias", bias)
        if bias.shape != (f,):
            raise ValueError(f"bias must have shape ({f},), got {bias.shape}")
    oh, ow = conv2d_output_size(h, w, kh, kw, s, p)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, f, oh, ow))
    for a, b, win in _taps(kh, kw, s, oh, ow):
        out += np.einsum("nchw,fc->nfhw", xp[win], weight[:, :, a, b])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def _check_dout(dout, n, f, oh, ow):
    dout = f64("dout (N, F, OH, OW)", dout, 4)
    if dout.shape != (n, f, oh, ow):
        raise ValueError(f"dout must have shape {(n, f, oh, ow)}, got {dout.shape}")
    return dout


def conv2d_backward_input(dout, weight, in_shape, stride=1, padding=0):
    """Reference gradient of :func:`conv2d_forward` with respect to ``x``, float64.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, F, OH, OW)]
        Upstream gradient.
    weight : np.ndarray [shape=(F, C, KH, KW)]
    in_shape : tuple (N, C, H, W)
        Shape of the forward input (a strided conv's ``OH`` does not determine ``H``;
        the kernels read it from their ``dx`` buffer).
    stride, padding : int

    Returns
    -------
    dx : np.ndarray [shape=in_shape, dtype=float64]
        ``dx[n, c, h, w] = sum_{f,i,j: i*s+p-padding = h, ...} dout[n, f, i, j] * w[f, c, p, q]``
        (the transposed convolution; taps landing in the padding are dropped).

    Raises
    ------
    ValueError
        On wrong ranks, mismatched channels or a ``dout`` shape that does not match.
    """
    weight = f64("weight (F, C, KH, KW)", weight, 4)
    in_shape = tuple(int(v) for v in in_shape)
    s, p = _check(in_shape, weight.shape, stride, padding)
    n, c, h, w = in_shape
    f, _, kh, kw = weight.shape
    oh, ow = conv2d_output_size(h, w, kh, kw, s, p)
    dout = _check_dout(dout, n, f, oh, ow)
    dxp = np.zeros((n, c, h + 2 * p, w + 2 * p))
    for a, b, win in _taps(kh, kw, s, oh, ow):
        dxp[win] += np.einsum("nfhw,fc->nchw", dout, weight[:, :, a, b])
    return dxp[:, :, p : p + h, p : p + w].copy()


def conv2d_backward_weight(dout, x, kernel_size, stride=1, padding=0):
    """Reference gradients of :func:`conv2d_forward` with respect to the weight and the bias, float64.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, F, OH, OW)]
        Upstream gradient.
    x : np.ndarray [shape=(N, C, H, W)]
        The forward input.
    kernel_size : int or tuple (KH, KW)
        The kernels read it from their ``dweight`` buffer.
    stride, padding : int

    Returns
    -------
    dweight : np.ndarray [shape=(F, C, KH, KW), dtype=float64]
        ``dweight[f, c, p, q] = sum_{n,i,j} dout[n, f, i, j] * xpad[n, c, i*s+p, j*s+q]``.
    dbias : np.ndarray [shape=(F,), dtype=float64]
        ``dbias[f] = sum_{n,i,j} dout[n, f, i, j]``.
    (The kernels add both to their output buffers; these are the plain gradients.)

    Raises
    ------
    ValueError
        On wrong ranks or a ``dout`` shape that does not match the forward output.
    """
    x = f64("x (N, C, H, W)", x, 4)
    kh, kw = (kernel_size, kernel_size) if np.ndim(kernel_size) == 0 else kernel_size
    kh, kw = int(kh), int(kw)
    n, c, h, w = x.shape
    dout = np.asarray(dout)
    if dout.ndim != 4:
        raise ValueError(f"dout (N, F, OH, OW) must be 4-D, got shape {dout.shape}")
    f = dout.shape[1]
    s, p = _check(x.shape, (f, c, kh, kw), stride, padding)
    oh, ow = conv2d_output_size(h, w, kh, kw, s, p)
    dout = _check_dout(dout, n, f, oh, ow)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dweight = np.zeros((f, c, kh, kw))
    for a, b, win in _taps(kh, kw, s, oh, ow):
        dweight[:, :, a, b] = np.einsum("nfhw,nchw->fc", dout, xp[win])
    return dweight, dout.sum(axis=(0, 2, 3))
