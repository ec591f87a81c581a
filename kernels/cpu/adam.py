"""Adam update as one fused Numba kernel per parameter tensor (CPU).

PyTorch ``torch.optim.Adam`` (amsgrad=False, L2 ``weight_decay`` added to the
gradient), in the order PyTorch's single-tensor implementation computes it::

    g = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    param -= (lr / (1 - beta1**step)) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

Reference: https://pytorch.org/docs/stable/generated/torch.optim.Adam.html
Every scalar is formed on the host and passed in the parameter's dtype, so the
elementwise loop runs entirely in that dtype (float32 parameters: no float64
operation in the loop; float64 parameters, for the gradient checks: all
float64): ``step_size = dtype(lr / (1 - beta1**step))`` and
``bc2_sqrt = dtype(sqrt(1 - beta2**step))`` are computed in float64 and
rounded once; ``1 - beta1`` and ``1 - beta2`` are ``dtype(1) - dtype(beta)``,
as the GPU kernel (``kernels/gpu/cuda/adam.cu``) computes them. Same
expression order as the GPU, no FMA contraction (Numba does not contract
without fastmath). ``prange`` over fixed-size chunks (elementwise, so the
result does not depend on the thread count).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["adam_update"]

_CHUNK = 1 << 14


@njit(cache=True, error_model="numpy")
def _update_ser(p, g, m, v, step_size, bc2_sqrt, b1, omb1, b2, omb2, eps, wd):
    # error_model="numpy": IEEE division (no zero-divisor branch), so LLVM vectorises the loop
    for i in range(p.shape[0]):
        pi = p[i]
        gi = g[i] + wd * pi
        mi = b1 * m[i] + omb1 * gi
        vi = b2 * v[i] + omb2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


@njit(parallel=True, cache=True, error_model="numpy")
def _update_par(p, g, m, v, step_size, bc2_sqrt, b1, omb1, b2, omb2, eps, wd):
    # one chunk = the serial kernel on slices (its loop starts at 0, so it vectorises as the serial one)
    n = p.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        _update_ser(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], step_size, bc2_sqrt, b1, omb1, b2, omb2, eps, wd)


def _scalars(dtype, step, lr, beta1, beta2, eps, weight_decay):
    """The kernel's scalar arguments, each already of ``dtype`` (float32 or float64).

    Returns ``(step_size, bc2_sqrt, b1, omb1, b2, omb2, eps, wd)`` with
    ``step_size = dtype(lr / (1 - beta1**step))`` and
    ``bc2_sqrt = dtype(sqrt(1 - beta2**step))`` (float64 on the host, rounded
    once), ``omb1 = dtype(1) - dtype(beta1)``, ``omb2 = dtype(1) - dtype(beta2)``.
    """
    t = np.dtype(dtype).type
    bc1 = 1.0 - float(beta1) ** step
    bc2 = 1.0 - float(beta2) ** step
    b1, b2 = t(beta1), t(beta2)
    return (t(lr / bc1), t(np.sqrt(bc2)), b1, t(1) - b1, b2, t(1) - b2, t(eps), t(weight_decay))


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
    args = (param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1)) + _scalars(
        param.dtype, step, lr, beta1, beta2, eps, weight_decay)
    if param.size >= 4 * _CHUNK:
        _update_par(*args)
    else:
        _update_ser(*args)
