"""Float64 reference of the ``linear`` op (``kernels/{cpu,gpu}/linear.py``): forward, backward-input, backward-weight.

Plain NumPy, slow and obviously correct; nothing here imports ``kernels/``.
Method: PyTorch's ``torch.nn.functional.linear`` (weight ``(out_features,
in_features)``, ``y = x @ W.T + b``) and its gradients, one NumPy matmul
each. Every function computes in float64 and returns new float64 arrays.
"""
from __future__ import annotations

from ._checks import f64

__all__ = ["linear_forward", "linear_backward_input", "linear_backward_weight"]


def _check(x, weight, xname="x"):
    x, weight = f64(xname, x), f64("weight", weight)
    if x.ndim != 2 or weight.ndim != 2:
        raise ValueError(
            f"{xname} must be (N, in_features) and weight (out_features, in_features); "
            f"got {xname} {x.shape}, weight {weight.shape}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{xname} has {x.shape[1]} features (shape {x.shape}), weight expects {weight.shape[1]} "
                         f"(shape {weight.shape})")
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
    x, weight = _check(x, weight)
    out = x @ weight.T
    if bias is not None:
        out = out + f64("bias", bias)[None, :]
    return out


def linear_backward_input(dout, weight):
    """Reference gradient of :func:`linear_forward` with respect to ``x``: ``dout @ weight``.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, out_features)]
    weight : np.ndarray [shape=(out_features, in_features)]

    Returns
    -------
    dx : np.ndarray [shape=(N, in_features), dtype=float64]

    Raises
    ------
    ValueError
        On wrong ranks or shapes.
    """
    dout, weight = f64("dout", dout), f64("weight", weight)
    if dout.ndim != 2 or weight.ndim != 2 or dout.shape[1] != weight.shape[0]:
        raise ValueError(f"dout must be (N, {weight.shape[0] if weight.ndim == 2 else 'out_features'}) for weight "
                         f"{weight.shape}, got {dout.shape}")
    return dout @ weight


def linear_backward_weight(dout, x):
    """Reference gradients of :func:`linear_forward` with respect to the weight and the bias.

    Parameters
    ----------
    dout : np.ndarray [shape=(N, out_features)]
    x : np.ndarray [shape=(N, in_features)]

    Returns
    -------
    dweight : np.ndarray [shape=(out_features, in_features), dtype=float64]  ``dout.T @ x``
    dbias : np.ndarray [shape=(out_features,), dtype=float64]  ``dout.sum(0)``
    (The kernels add both to their output buffers; these are the plain gradients.)

    Raises
    ------
    ValueError
        On wrong ranks or different batch sizes.
    """
    dout, x = f64("dout", dout), f64("x", x)
    if dout.ndim != 2 or x.ndim != 2 or dout.shape[0] != x.shape[0]:
        raise ValueError(f"dout (N, out_features) and x (N, in_features) must be 2-D with the same batch size, "
                         f"got dout {dout.shape}, x {x.shape}")
    return dout.T @ x, dout.sum(axis=0)
