"""Float64 reference of the ``relu`` op (``kernels/{cpu,gpu}/relu.py``).

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Method: PyTorch's ``torch.nn.ReLU``, ``max(x, 0)``; the backward mask is taken
from the forward output (``out > 0``), so the gradient at exactly 0 is 0.
"""
from __future__ import annotations

import numpy as np

from ._checks import f64 as _f64

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x):
    """Reference ReLU forward: ``max(x, 0)``.

    Parameters
    ----------
    x : np.ndarray [any shape]

    Returns
    -------
    out : np.ndarray [shape=x.shape, dtype=float64]
    """
    x = _f64("x", x)
    return np.where(x > 0, x, 0.0)



def relu_backward(dout, out):
    """Reference ReLU backward: ``dout * (out > 0)`` (mask from the forward output).

    Parameters
    ----------
    dout : np.ndarray [any shape]
        Upstream gradient.
    out : np.ndarray [shape=dout.shape]
        The forward output.

    Returns
    -------
    dx : np.ndarray [shape=dout.shape, dtype=float64]
    """
    return np.where(_f64("out", out) > 0, _f64("dout", dout), 0.0)
