"""Float64 reference of the ``dropout`` op (``kernels/{cpu,gpu}/dropout.py``).

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Method: inverted dropout (PyTorch's ``torch.nn.Dropout``, Srivastava et al.
2014) given the keep mask, so the reference needs no generator; the
kernels draw the mask from their backend's generator (``make_rng``).
"""
from __future__ import annotations

import numpy as np

from ._checks import f64 as _f64

__all__ = ["dropout_forward", "dropout_backward"]


def dropout_forward(x, mask, p):
    """Reference inverted dropout given the keep mask: ``x * mask / (1 - p)``.

    Parameters
    ----------
    x : np.ndarray [any shape]
    mask : np.ndarray [shape=x.shape, dtype=uint8 or bool]
        1 for kept units and 0 for dropped ones (PyTorch ``Dropout``).
    p : float in [0, 1)
        Drop probability.

    Returns
    -------
    out : np.ndarray [shape=x.shape, dtype=float64]

    Raises
    ------
    ValueError
        If ``p`` is outside [0, 1).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    return _f64("x", x) * np.asarray(mask, dtype=np.float64) / (1.0 - p)



def dropout_backward(dout, mask, p):
    """Reference dropout backward: ``dout * mask / (1 - p)`` (the forward's mask and ``p``).

    Returns
    -------
    dx : np.ndarray [shape=dout.shape, dtype=float64]
    """
    return dropout_forward(dout, mask, p)
