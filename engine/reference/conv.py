"""Float64 references of Conv2d and Linear (forward and both backward passes).

Plain NumPy, slow and obviously correct: every Numba and CuPy kernel is tested
against these functions. They import nothing from ``kernels/``.

Dimension letters: ``N, C, H, W`` (batch, channels, height, width), ``F``
(filters), ``KH, KW`` (kernel), ``OH, OW`` (output). Conventions follow
PyTorch's ``torch.nn.functional.conv2d`` (cross-correlation, zero padding,
weight ``(F, C, KH, KW)``) and ``torch.nn.functional.linear``
(weight ``(out_features, in_features)``, ``y = x @ W.T + b``).
Every function computes in float64 and returns float64 arrays.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "conv2d_output_size",
    "conv2d_forward",
    "conv2d_backward",
    "linear_forward",
    "linear_backward",
]


def _as4d(name, a):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D, got shape {a.shape}")
    return a


def _check_conv(x, weight, bias, stride, padding):
    x = _as4d("x (N, C, H, W)", x)
    weight = _as4d("weight (F, C, KH, KW)", weight)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} channels (shape {x.shape}) but weight expects "
            f"{weight.shape[1]} (shape {weight.shape})"
        )
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if int(stride) < 1 or int(padding) < 0:
        raise ValueError(f"need stride >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    return x, weight, bias, int(stride), int(padding)


def conv2d_output_size(h, w, kh, kw, stride, padding):
    """Output height and width of a convolution.

    ``OH = (H + 2*padding - KH) // stride + 1`` (same for ``OW``), PyTorch's
    formula with dilation 1.

    Raises
    ------
    ValueError
        If the padded input is smaller than the kernel.
    """
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    if h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(
            f"padded input ({h + 2 * padding}, {w + 2 * padding}) smaller than kernel ({kh}, {kw})"
        )
    return oh, ow


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
    x, weight, bias, s, p = _check_conv(x, weight, bias, stride, padding)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    oh, ow = conv2d_output_size(h, w, kh, kw, s, p)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, f, oh, ow))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s]  # (N,C,OH,OW)
            out += np.einsum("nchw,fc->nfhw", patch, weight[:, :, a, b])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def conv2d_backward(dout, x, weight, stride=1, padding=0):
    """Reference gradients of :func:`conv2d_forward`, float64.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, F, OH, OW)]
        Upstream gradient.
    x : np.ndarray [shape=(N, C, H, W)]
    weight : np.ndarray [shape=(F, C, KH, KW)]
    stride, padding : int

    Returns
    -------
    dx : np.ndarray [shape=(N, C, H, W)]
    dweight : np.ndarray [shape=(F, C, KH, KW)]
    dbias : np.ndarray [shape=(F,)]
        ``dbias[f] = sum_{n,i,j} dout[n, f, i, j]``.

    Raises
    ------
    ValueError
        On wrong ranks or a ``dout`` shape that does not match the forward output.
    """
    x, weight, _, s, p = _check_conv(x, weight, None, stride, padding)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    oh, ow = conv2d_output_size(h, w, kh, kw, s, p)
    dout = _as4d("dout (N, F, OH, OW)", dout)
    if dout.shape != (n, f, oh, ow):
        raise ValueError(f"dout must have shape {(n, f, oh, ow)}, got {dout.shape}")
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp = np.zeros_like(xp)
    dweight = np.zeros_like(weight)
    for a in range(kh):
        for b in range(kw):
            sl = (slice(None), slice(None), slice(a, a + s * (oh - 1) + 1, s), slice(b, b + s * (ow - 1) + 1, s))
            dweight[:, :, a, b] = np.einsum("nfhw,nchw->fc", dout, xp[sl])
            dxp[sl] += np.einsum("nfhw,fc->nchw", dout, weight[:, :, a, b])
    dx = dxp[:, :, p : p + h, p : p + w].copy()
    dbias = dout.sum(axis=(0, 2, 3))
    return dx, dweight, dbias


def _check_linear(x, weight):
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if x.ndim != 2 or weight.ndim != 2:
        raise ValueError(
            f"x must be (N, in_features) and weight (out_features, in_features); "
            f"got x {x.shape}, weight {weight.shape}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features (shape {x.shape}), weight expects {weight.shape[1]} (shape {weight.shape})")
    return x, weight


def linear_forward(x, weight, bias):
    """Reference fully connected layer, ``y = x @ weight.T + bias`` (PyTorch layout), float64.

    Parameters
    ----------
    x : np.ndarray [shape=(N, in_features)]
    weight : np.ndarray [shape=(out_features, in_features)]
    bias : np.ndarray [shape=(out_features,)] or None

    Returns
    -------
    out : np.ndarray [shape=(N, out_features), dtype=float64]

    Raises
    ------
    ValueError
        On wrong ranks or mismatched feature counts.
    """
    x, weight = _check_linear(x, weight)
    out = x @ weight.T
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[None, :]
    return out


def linear_backward(dout, x, weight):
    """Reference gradients of :func:`linear_forward`, float64.

    Returns
    -------
    dx : np.ndarray [shape=(N, in_features)]  ``dout @ weight``
    dweight : np.ndarray [shape=(out_features, in_features)]  ``dout.T @ x``
    dbias : np.ndarray [shape=(out_features,)]  ``dout.sum(0)``

    Raises
    ------
    ValueError
        On wrong ranks or shapes.
    """
    x, weight = _check_linear(x, weight)
    dout = np.asarray(dout, dtype=np.float64)
    if dout.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"dout must have shape {(x.shape[0], weight.shape[0])}, got {dout.shape}")
    return dout @ weight, dout.T @ x, dout.sum(axis=0)
