"""Float64 reference of the ``adam`` op (``kernels/{cpu,gpu}/adam.py``).

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Method: ``torch.optim.Adam`` (Kingma & Ba 2015; L2 weight decay added to the
gradient, bias-corrected moments, ``eps`` added to ``sqrt(v_hat)``, no
amsgrad).
"""
from __future__ import annotations

import numpy as np

from ._checks import f64 as _f64

__all__ = ["adam_update"]


def adam_update(param, grad, m, v, step, lr=5e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """Reference Adam step (``torch.optim.Adam``, L2 weight decay, no amsgrad).

    ``g = grad + weight_decay*param; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    param -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps)``.

    Parameters
    ----------
    step : int >= 1
        The step count after increment (1 for the first update).

    Returns
    -------
    param, m, v : np.ndarray
        New arrays (float64); the inputs are not modified.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    p = _f64("param", param)
    g = _f64("grad", grad) + weight_decay * p
    m = beta1 * _f64("m", m) + (1.0 - beta1) * g
    v = beta2 * _f64("v", v) + (1.0 - beta2) * g * g
    mhat = m / (1.0 - beta1**step)
    vhat = v / (1.0 - beta2**step)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v
