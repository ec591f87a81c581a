"""Float64 references of BatchNorm2d, ReLU, MaxPool2d, Dropout, softmax cross-entropy and Adam.

Plain NumPy, slow and obviously correct: the Numba (``kernels/cpu``) and CuPy
(``kernels/gpu``) kernels are tested against these functions. Nothing here
imports ``kernels/``. Every function computes in float64 and returns new
float64 arrays (inputs are never modified).

Dimension letters: ``N, C, H, W`` (batch, channels, height, width),
``OH, OW`` (pooled output), ``K`` (classes). Conventions are PyTorch's
(``torch.nn.BatchNorm2d``, ``MaxPool2d``, ``Dropout``, ``CrossEntropyLoss``,
``torch.optim.Adam``), cited per function.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "batchnorm_forward_train",
    "batchnorm_forward_eval",
    "batchnorm_backward",
    "relu_forward",
    "relu_backward",
    "maxpool2d_output_size",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "dropout_forward",
    "dropout_backward",
    "softmax_xent_forward",
    "softmax_xent_backward",
    "adam_update",
]


def _f64(name, a, ndim=None):
    a = np.asarray(a, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


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


def relu_forward(x):
    """Reference ReLU: ``max(x, 0)``."""
    x = _f64("x", x)
    return np.where(x > 0, x, 0.0)


def relu_backward(dout, out):
    """Reference ReLU backward: ``dout * (out > 0)`` (mask from the forward output)."""
    return np.where(_f64("out", out) > 0, _f64("dout", dout), 0.0)


def maxpool2d_output_size(h, w, kernel_size, stride):
    """``OH = (H - kernel_size) // stride + 1`` (floor mode, no padding, PyTorch).

    Raises
    ------
    ValueError
        If the input is smaller than the window or ``kernel_size, stride < 1``.
    """
    if kernel_size < 1 or stride < 1:
        raise ValueError(f"need kernel_size >= 1 and stride >= 1, got {kernel_size}, {stride}")
    if h < kernel_size or w < kernel_size:
        raise ValueError(f"input plane ({h}, {w}) smaller than the pooling window {kernel_size}")
    return (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1


def maxpool2d_forward(x, kernel_size=2, stride=2):
    """Reference max pooling, floor mode, no padding.

    Returns
    -------
    out : np.ndarray [shape=(N, C, OH, OW)]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
        Flat index ``h*W + w`` in the input plane of the first maximum of each
        window in row-major window order (ties -> first; PyTorch's CPU rule).
    """
    x = _f64("x (N, C, H, W)", x, 4)
    n, c, h, w = x.shape
    oh, ow = maxpool2d_output_size(h, w, kernel_size, stride)
    out = np.empty((n, c, oh, ow))
    argmax = np.empty((n, c, oh, ow), dtype=np.int32)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * stride : i * stride + kernel_size, j * stride : j * stride + kernel_size]
            flat = win.reshape(n, c, -1)
            k = flat.argmax(axis=2)  # numpy argmax returns the first maximum
            out[:, :, i, j] = np.take_along_axis(flat, k[..., None], axis=2)[..., 0]
            argmax[:, :, i, j] = (i * stride + k // kernel_size) * w + (j * stride + k % kernel_size)
    return out, argmax


def maxpool2d_backward(dout, argmax, in_shape):
    """Reference max-pool backward: every window sends its gradient to its argmax.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, C, OH, OW)]
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int]
    in_shape : tuple (N, C, H, W)

    Returns
    -------
    dx : np.ndarray [shape=in_shape]
        Overlapping windows that share an argmax add their gradients.
    """
    dout = _f64("dout", dout, 4)
    n, c, h, w = in_shape
    dx = np.zeros((n, c, h * w))
    np.add.at(
        dx,
        (np.arange(n)[:, None, None], np.arange(c)[None, :, None], np.asarray(argmax).reshape(n, c, -1)),
        dout.reshape(n, c, -1),
    )
    return dx.reshape(n, c, h, w)


def dropout_forward(x, mask, p):
    """Reference inverted dropout given the keep mask: ``x * mask / (1 - p)``.

    ``mask`` is 1 for kept units and 0 for dropped ones (PyTorch ``Dropout``).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    return _f64("x", x) * np.asarray(mask, dtype=np.float64) / (1.0 - p)


def dropout_backward(dout, mask, p):
    """Reference dropout backward: ``dout * mask / (1 - p)``."""
    return dropout_forward(dout, mask, p)


def _check_xent(logits, targets, class_weights):
    logits = _f64("logits (N, K)", logits, 2)
    targets = np.asarray(targets)
    w = np.ones(logits.shape[1]) if class_weights is None else _f64("class_weights", class_weights, 1)
    if targets.ndim == 2 and np.issubdtype(targets.dtype, np.floating):  # soft targets (probabilities)
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {logits.shape}, got {targets.shape}")
        if not np.all(np.isfinite(targets)) or targets.min() < 0:
            raise ValueError("soft targets must be finite and >= 0")
        return logits, targets.astype(np.float64), w
    if targets.shape != (logits.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integer of shape ({logits.shape[0]},), got {targets.dtype} {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"targets must be in [0, {logits.shape[1]}), got range [{targets.min()}, {targets.max()}]")
    return logits, targets, w


def softmax_xent_forward(logits, targets, class_weights=None):
    """Reference softmax cross-entropy (PyTorch ``CrossEntropyLoss``, reduction 'mean').

    Parameters
    ----------
    logits : np.ndarray [shape=(N, K)]
    targets : np.ndarray [shape=(N,), dtype=int] or [shape=(N, K), dtype=float]
        Class indices, or soft targets (class probabilities, e.g. mixup's):
        then ``l_i = -sum_k w_k t_ik log p_ik`` and the loss is ``sum_i l_i / N``
        (PyTorch's rule for probability targets, with or without weights).
    class_weights : np.ndarray [shape=(K,)] or None
        Weighted mean ``sum_i w[y_i] l_i / sum_i w[y_i]`` when given (class indices).

    Returns
    -------
    loss : float
    probs : np.ndarray [shape=(N, K)]
        Softmax, computed with the max subtracted (stable log-sum-exp).
    """
    logits, targets, w = _check_xent(logits, targets, class_weights)
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    probs = np.exp(z - lse[:, None])
    if targets.ndim == 2:
        return float(-(w[None] * targets * (z - lse[:, None])).sum() / len(targets)), probs
    nll = lse - z[np.arange(len(targets)), targets]
    wy = w[targets]
    return float((wy * nll).sum() / wy.sum()), probs


def softmax_xent_backward(probs, targets, class_weights=None):
    """Reference gradient of :func:`softmax_xent_forward` with respect to the logits.

    Returns
    -------
    dlogits : np.ndarray [shape=(N, K)]
        ``w[y_i] * (probs_i - onehot(y_i)) / sum_j w[y_j]``; for soft targets
        ``(probs_ij * sum_k w_k t_ik - w_j t_ij) / N``.
    """
    probs, targets, w = _check_xent(probs, targets, class_weights)
    if targets.ndim == 2:
        wt = w[None] * targets
        return (probs * wt.sum(axis=1, keepdims=True) - wt) / len(targets)
    d = probs.copy()
    d[np.arange(len(targets)), targets] -= 1.0
    wy = w[targets]
    return d * (wy / wy.sum())[:, None]


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
