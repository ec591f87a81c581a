"""Float64 reference of the ``batchnorm`` op (``kernels/{cpu,gpu}/batchnorm.py``).

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Method: PyTorch's ``torch.nn.BatchNorm2d`` (Ioffe & Szegedy 2015): batch
statistics over ``N, H, W`` per channel, biased variance to normalise,
unbiased for ``running_var``; the backward is the closed form of the
gradient through the batch mean and variance. Dimension letters:
``N, C, H, W`` (batch, channels, height, width).
"""
from __future__ import annotations

import numpy as np

from ._checks import f64 as _f64

__all__ = ["batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward"]


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    """Reference BatchNorm2d forward in training mode (PyTorch convention).

    Parameters
    ----------
    x : np.ndarray [shape=(N, C, H, W)]
    gamma, beta : np.ndarray [shape=(C,)]
        Scale and shift.
    running_mean, running_var : np.ndarray [shape=(C,)]
        Current running statistics (not modified).
    momentum : float in [0, 1]
        ``running = (1 - momentum) * running + momentum * batch_stat``.
    eps : float > 0
        Added to the variance before the square root.

    Returns
    -------
    out : np.ndarray [shape=(N, C, H, W)]
        ``gamma * (x - mean) / sqrt(var_biased + eps) + beta``.
    mean : np.ndarray [shape=(C,)]
        Batch mean over ``N, H, W``.
    invstd : np.ndarray [shape=(C,)]
        ``1 / sqrt(var_biased + eps)``.
    new_running_mean, new_running_var : np.ndarray [shape=(C,)]
        Updated running statistics; ``running_var`` uses the unbiased variance
        ``var_biased * M / (M - 1)`` with ``M = N*H*W`` (PyTorch).

    Raises
    ------
    ValueError
        If ``x`` is not 4-D or ``N*H*W < 2`` (unbiased variance undefined).
    """
    x = _f64("x (N, C, H, W)", x, 4)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m < 2:
        raise ValueError(f"BatchNorm needs N*H*W >= 2 values per channel, got x shape {x.shape}")
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
    out = xhat * _f64("gamma", gamma)[None, :, None, None] + _f64("beta", beta)[None, :, None, None]
    rm = (1.0 - momentum) * _f64("running_mean", running_mean) + momentum * mean
    rv = (1.0 - momentum) * _f64("running_var", running_var) + momentum * var * m / (m - 1)
    return out, mean, invstd, rm, rv



def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Reference BatchNorm2d forward in eval mode: normalise with the running statistics.

    Returns
    -------
    out : np.ndarray [shape=(N, C, H, W)]
        ``gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.
    """
    x = _f64("x (N, C, H, W)", x, 4)
    b = lambda a: _f64("stat", a)[None, :, None, None]  # noqa: E731
    return (x - b(running_mean)) / np.sqrt(b(running_var) + eps) * b(gamma) + b(beta)



def batchnorm_backward(dout, x, mean, invstd, gamma):
    """Reference BatchNorm2d backward (training mode, batch statistics).

    Parameters
    ----------
    dout, x : np.ndarray [shape=(N, C, H, W)]
    mean, invstd : np.ndarray [shape=(C,)]
        As returned by :func:`batchnorm_forward_train`.
    gamma : np.ndarray [shape=(C,)]

    Returns
    -------
    dx : np.ndarray [shape=(N, C, H, W)]
        ``gamma*invstd * (dout - mean(dout) - xhat * mean(dout * xhat))``.
    dgamma : np.ndarray [shape=(C,)]
        ``sum(dout * xhat)`` over ``N, H, W``.
    dbeta : np.ndarray [shape=(C,)]
        ``sum(dout)`` over ``N, H, W``.
    """
    dout = _f64("dout (N, C, H, W)", dout, 4)
    x = _f64("x (N, C, H, W)", x, 4)
    b = lambda a: _f64("stat", a)[None, :, None, None]  # noqa: E731
    xhat = (x - b(mean)) * b(invstd)
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    m = x.shape[0] * x.shape[2] * x.shape[3]
    dx = b(gamma) * b(invstd) * (dout - b(dbeta) / m - xhat * b(dgamma) / m)
    return dx, dgamma, dbeta
