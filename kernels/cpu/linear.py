"""Linear (fully connected) layer on the CPU: BLAS GEMMs called from Numba.

Convention: PyTorch's ``torch.nn.functional.linear``: ``x (N, in_features)``,
``weight (out_features, in_features)``, ``y = x @ weight.T + bias``.
Parameter gradients accumulate (``+=``; the GEMM runs with beta = 1 straight
into ``dweight``, so no scratch is needed), ``dx`` is overwritten, ``dbias``
is summed in float64 in a fixed order. The GEMM is the single-threaded BLAS
of :mod:`kernels.cpu.blas` (the paper's dense layers are at most
64 x 256 x 512, far too small to split over threads), so NumPy's BLAS thread
pool is never woken during a training step. float32 and float64.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .blas import gemm

__all__ = ["linear_forward", "linear_backward_input", "linear_backward_weight"]


@njit(cache=True)
def _forward(out, x, weight, bias, has_bias):
    n, i = x.shape
    o = weight.shape[0]
    gemm(out.reshape(-1), 0, o, x.reshape(-1), 0, i, False, weight.reshape(-1), 0, i, True, n, o, i, 0.0)
    if has_bias:
        for r in range(n):
            out[r] += bias


@njit(cache=True)
def _backward_input(dx, dout, weight):
    n, o = dout.shape
    i = weight.shape[1]
    gemm(dx.reshape(-1), 0, i, dout.reshape(-1), 0, o, False, weight.reshape(-1), 0, i, False, n, i, o, 0.0)


@njit(cache=True)
def _backward_weight(dweight, dbias, dout, x, has_bias):
    n, o = dout.shape
    i = x.shape[1]
    gemm(dweight.reshape(-1), 0, i, dout.reshape(-1), 0, o, True, x.reshape(-1), 0, i, False, o, i, n, 1.0)
    if has_bias:
        for f in range(o):
            acc = 0.0
            for r in range(n):
                acc += dout[r, f]
            dbias[f] += acc


def _arr(name, a, ndim, dtype=None):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if dtype is None:
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise ValueError(f"{name} must be {dtype} like the input, got {a.dtype}")
    return a


def _expect(name, a, shape, out=False):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if out and not a.flags.c_contiguous:
        raise ValueError(f"output {name} {a.shape} must be C-contiguous")


def linear_forward(out, x, weight, bias):
    """``out = x @ weight.T + bias`` (overwritten).

    Parameters
    ----------
    out : np.ndarray [shape=(N, out_features), C-contiguous, dtype of x]
    x : np.ndarray [shape=(N, in_features), float32 or float64]
    weight : np.ndarray [shape=(out_features, in_features)]
    bias : np.ndarray [shape=(out_features,)] or None

    Raises
    ------
    ValueError
        On a wrong rank, feature count, dtype or shape (naming expected and actual).
    """
    x = _arr("x (N, in_features)", x, 2)
    dt = x.dtype
    weight = _arr("weight (out_features, in_features)", weight, 2, dt)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features (shape {x.shape}) but weight expects {weight.shape[1]} (shape {weight.shape})")
    n, o = x.shape[0], weight.shape[0]
    _expect("out", _arr("out", out, 2, dt), (n, o), out=True)
    if bias is not None:
        _expect("bias", _arr("bias", bias, 1, dt), (o,))
    b = np.zeros(1, dt) if bias is None else bias
    _forward(out, np.ascontiguousarray(x), np.ascontiguousarray(weight), b, bias is not None)


def linear_backward_input(dx, dout, weight):
    """``dx = dout @ weight`` (overwritten).

    Parameters
    ----------
    dx : np.ndarray [shape=(N, in_features), C-contiguous]
    dout : np.ndarray [shape=(N, out_features)]
    weight : np.ndarray [shape=(out_features, in_features)]

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    dout = _arr("dout (N, out_features)", dout, 2)
    dt = dout.dtype
    weight = _arr("weight (out_features, in_features)", weight, 2, dt)
    if weight.shape[0] != dout.shape[1]:
        raise ValueError(f"dout has {dout.shape[1]} features (shape {dout.shape}) but weight has {weight.shape[0]} outputs (shape {weight.shape})")
    _expect("dx", _arr("dx", dx, 2, dt), (dout.shape[0], weight.shape[1]), out=True)
    _backward_input(dx, np.ascontiguousarray(dout), np.ascontiguousarray(weight))


def linear_backward_weight(dweight, dbias, dout, x):
    """``dweight += dout.T @ x``, ``dbias += dout.sum(0)`` (float64 sum).

    Parameters
    ----------
    dweight : np.ndarray [shape=(out_features, in_features), C-contiguous]
    dbias : np.ndarray [shape=(out_features,)] or None
    dout : np.ndarray [shape=(N, out_features)]
    x : np.ndarray [shape=(N, in_features)]

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    x = _arr("x (N, in_features)", x, 2)
    dt = x.dtype
    dout = _arr("dout (N, out_features)", dout, 2, dt)
    if dout.shape[0] != x.shape[0]:
        raise ValueError(f"dout {dout.shape} and x {x.shape} must have the same batch size")
    _expect("dweight", _arr("dweight", dweight, 2, dt), (dout.shape[1], x.shape[1]), out=True)
    if dbias is not None:
        _expect("dbias", _arr("dbias", dbias, 1, dt), (dout.shape[1],), out=True)
    b = np.zeros(1, dt) if dbias is None else dbias
    _backward_weight(dweight, b, np.ascontiguousarray(dout), np.ascontiguousarray(x), dbias is not None)
