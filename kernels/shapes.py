"""Backend-neutral shape validation and output-size formulas, shared by kernels/cpu, kernels/gpu and engine/layers.

The one place of the conv and pool output-size formulas (the float64
references in engine/reference keep their own copies: they import nothing
from kernels/). Works on plain shape tuples, so it never touches array data
and imports no array module.
"""


def conv2d_output_size(h, w, kh, kw, stride, padding):
    """``(OH, OW) = ((H + 2*padding - KH)//stride + 1, (W + 2*padding - KW)//stride + 1)`` (PyTorch, dilation 1).

    Raises
    ------
    ValueError
        A padded input smaller than the kernel.
    """
    if h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(f"padded input ({h + 2 * padding}, {w + 2 * padding}) is smaller than the kernel ({kh}, {kw})")
    return (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


def conv2d_shapes(x_shape, weight_shape, stride, padding, x_name="x"):
    """Validate a Conv2d call and return its sizes.

    Parameters
    ----------
    x_shape : tuple of int, ``(N, C, H, W)``
    weight_shape : tuple of int, ``(F, C, KH, KW)``
    stride : int >= 1
    padding : int >= 0 (zero padding on every side)
    x_name : str
        Name of the input in error messages (``'x'`` or ``'dx'``).

    Returns
    -------
    (N, C, H, W, F, KH, KW, OH, OW, stride, padding) : tuple of int
        ``OH = (H + 2*padding - KH) // stride + 1`` and likewise ``OW``
        (PyTorch's ``Conv2d`` formula with dilation 1).

    Raises
    ------
    ValueError
        Wrong rank, channel mismatch, non-integer or out-of-range stride /
        padding, or a padded input smaller than the kernel; the message names
        both shapes.
    """
    x_shape = tuple(int(v) for v in x_shape)
    weight_shape = tuple(int(v) for v in weight_shape)
    if len(x_shape) != 4:
        raise ValueError(f"{x_name} must be 4-D (N, C, H, W), got shape {x_shape}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must be 4-D (F, C, KH, KW), got shape {weight_shape}")
    if int(stride) != stride or stride < 1 or int(padding) != padding or padding < 0:
        raise ValueError(f"need integer stride >= 1 and padding >= 0, got stride={stride!r}, padding={padding!r}")
    stride, padding = int(stride), int(padding)
    n, c, h, w = x_shape
    f, cw, kh, kw = weight_shape
    if c != cw:
        raise ValueError(f"{x_name} has {c} channels (shape {x_shape}) but weight expects {cw} (shape {weight_shape})")
    oh, ow = conv2d_output_size(h, w, kh, kw, stride, padding)
    return n, c, h, w, f, kh, kw, oh, ow, stride, padding


def maxpool2d_output_size(h, w, kernel_size, stride):
    """``(OH, OW) = ((H - k)//s + 1, (W - k)//s + 1)`` (floor mode, PyTorch's default).

    Raises
    ------
    ValueError
        ``kernel_size`` or ``stride`` below 1, or a plane smaller than the window.
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"need kernel_size >= 1 and stride >= 1, got {kernel_size}, {stride}")
    if h < kernel_size or w < kernel_size:
        raise ValueError(f"input plane ({h}, {w}) smaller than the pooling window {kernel_size}")
    return (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1


def dropout_scale(p):
    """Inverted-dropout scale ``1 / (1 - p)`` for a drop probability ``p`` in [0, 1).

    Raises
    ------
    ValueError
        ``p`` outside [0, 1).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    return 1.0 / (1.0 - p)
