"""Float64 reference of the ``fused`` op (``kernels/{cpu,gpu}/fused.py``): BatchNorm2d -> ReLU -> MaxPool2d(k, k).

Plain NumPy; nothing here imports ``kernels/``. Method: the composition of
the three references (:mod:`.batchnorm`, :mod:`.relu`, :mod:`.maxpool`) in
that order, and the chain rule back through them; the kernels do the same
in one pass each way (the pooled output and the argmax are the unfused
ones, bit for bit). Every function computes in float64 and returns new
float64 arrays. Dimension letters: ``N, C, H, W``, ``OH, OW`` (pooled).
"""
from __future__ import annotations

from ._checks import f64
from .batchnorm import batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train
from .maxpool import maxpool2d_backward, maxpool2d_forward
from .relu import relu_backward, relu_forward

__all__ = ["bn_relu_pool_forward_train", "bn_relu_pool_forward_eval", "bn_relu_pool_backward"]


def bn_relu_pool_forward_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5, kernel_size=2):
    """Reference fused forward in training mode (batch statistics).

    Parameters
    ----------
    x : np.ndarray [shape=(N, C, H, W)]
    gamma, beta, running_mean, running_var : np.ndarray [shape=(C,)]
        As for :func:`batchnorm_forward_train` (the running statistics are not modified).
    momentum, eps : float
    kernel_size : int >= 1
        Pooling window and stride.

    Returns
    -------
    out : np.ndarray [shape=(N, C, OH, OW)]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
        Flat index ``h*W + w`` of each window's (first) maximum.
    mean, invstd, new_running_mean, new_running_var : np.ndarray [shape=(C,)]
    """
    y, mean, invstd, rm, rv = batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps)
    out, argmax = maxpool2d_forward(relu_forward(y), kernel_size, kernel_size)
    return out, argmax, mean, invstd, rm, rv


def bn_relu_pool_forward_eval(x, gamma, beta, running_mean, running_var, eps=1e-5, kernel_size=2):
    """Reference fused forward in eval mode (running statistics).

    Returns
    -------
    out : np.ndarray [shape=(N, C, OH, OW)]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
    """
    y = batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps)
    return maxpool2d_forward(relu_forward(y), kernel_size, kernel_size)


def bn_relu_pool_backward(dout, argmax, x, mean, invstd, gamma, beta, kernel_size=2):
    """Reference fused backward (after a training-mode forward).

    Parameters
    ----------
    dout, argmax : np.ndarray [shape=(N, C, OH, OW)]
        Upstream gradient and the forward's argmax.
    x : np.ndarray [shape=(N, C, H, W)]
        The forward input; the ReLU mask is recomputed from it (as the kernels do).
    mean, invstd, gamma, beta : np.ndarray [shape=(C,)]
    kernel_size : int

    Returns
    -------
    dx : np.ndarray [shape=(N, C, H, W)]
    dgamma, dbeta : np.ndarray [shape=(C,)]
    """
    b = lambda a: f64("stat", a)[None, :, None, None]  # noqa: E731
    y = (f64("x", x, 4) - b(mean)) * b(invstd) * b(gamma) + b(beta)
    dr = maxpool2d_backward(dout, argmax, y.shape)
    return batchnorm_backward(relu_backward(dr, relu_forward(y)), x, mean, invstd, gamma)

