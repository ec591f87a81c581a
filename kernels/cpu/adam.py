"""Adam update as one fused Numba kernel per parameter tensor (CPU).

PyTorch ``torch.optim.Adam`` (amsgrad=False, L2 ``weight_decay`` added to the
gradient), in the order PyTorch's single-tensor implementation computes it::

    g = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    param -= (lr / (1 - beta1**step)) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

Reference: https://pytorch.org/docs/stable/generated/torch.optim.Adam.html
Bias corrections are computed in float64 on the host; the elementwise update
runs in the parameter's dtype, ``prange`` over fixed-size chunks (elementwise,
so the result does not depend on the thread count).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["adam_update"]

_CHUNK = 1 << 14


@njit(parallel=True, cache=True)
def _update_par(p, g, m, v, step_size, bc2_sqrt, b1, b2, eps, wd):
    n = p.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            gi = g[i] + wd * p[i]
            mi = b1 * m[i] + (1.0 - b1) * gi
            vi = b2 * v[i] + (1.0 - b2) * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


@njit(cache=True)
def _update_ser(p, g, m, v, step_size, bc2_sqrt, b1, b2, eps, wd):
    n = p.shape[0]
    for i in range(n):
        gi = g[i] + wd * p[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam step on one tensor, in place.

    Parameters
    ----------
    param : np.ndarray [any shape, dtype=float32 or float64], C-contiguous
        Updated in place.
    grad : np.ndarray [same shape and dtype]
        Not modified (weight decay is added on the fly).
    m, v : np.ndarray [same shape and dtype]
        First and second moments, updated in place (start at zero).
    step : int >= 1
        Step count after increment (1 for the first update).
    lr, beta1, beta2, eps, weight_decay : float
        Hyper-parameters (PyTorch names and meaning).

    Raises
    ------
    ValueError
        On ``step < 1`` or mismatched shapes/dtypes.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1 (1-based, after increment), got {step}")
    if param.dtype not in (np.float32, np.float64):
        raise ValueError(f"param must be float32 or float64, got {param.dtype}")
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        if a.shape != param.shape or a.dtype != param.dtype:
            raise ValueError(f"{name} must be {param.dtype} of shape {param.shape}, got {a.dtype} {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    t = param.dtype.type
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    args = (param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), t(lr / bc1),
            t(np.sqrt(bc2)), t(beta1), t(beta2), t(eps), t(weight_decay))
    if param.size >= 4 * _CHUNK:
        _update_par(*args)
    else:
        _update_ser(*args)
