"""Linear (fully connected) layer on the GPU: cuBLAS GEMMs (``cupy.matmul``) plus our bias kernels.

Same entry points as :mod:`kernels.cpu.linear`. PyTorch layout:
``weight (out_features, in_features)``, ``out = x @ weight.T + bias``.
The 2-D ``cupy.matmul`` calls go straight to cuBLAS with transpose flags (no
copies). ``dweight`` and ``dbias`` accumulate (``+=``): the GEMM writes a
scratch ``(out, in)`` that one kernel adds in; ``dbias`` sums the rows of
``dout`` in fixed order in float64 (deterministic, no atomics). Inputs that
are not C-contiguous are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import cupy as cp

from . import _launch as L

__all__ = ["linear_forward", "linear_backward_input", "linear_backward_weight"]

#: GEMM scratch for dweight, per dtype and shape (reused in stream order).
_scratch = {}


def _dims(x, weight, xname="x"):
    if x.ndim != 2 or weight.ndim != 2:
        raise ValueError(f"{xname} must be (N, in_features) and weight (out_features, in_features); "
                         f"got {xname} {x.shape}, weight {weight.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{xname} has {x.shape[1]} features (shape {x.shape}), weight expects "
                         f"{weight.shape[1]} (shape {weight.shape})")
    return x.shape[0], weight.shape[1], weight.shape[0]


def linear_forward(out, x, weight, bias, batch_invariant=False, ws=None):
    """``out = x @ weight.T + bias`` (overwrites ``out``).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, out_features)], C-contiguous
    x : cupy.ndarray [shape=(N, in_features), float32 or float64]
    weight : cupy.ndarray [shape=(out_features, in_features)]
    bias : cupy.ndarray [shape=(out_features,)] or None
    batch_invariant : bool
        True (eval mode): one ``(1, in) @ (in, out)`` GEMM per row, the same
        shape for every row, so row ``r`` depends only on ``x[r]`` (a GEMM's
        rounding of a row may change with its row count and position).
        False: one GEMM over the batch.
    ws : ignored (the CPU kernel's scratch; same signature)

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    dt = L.float_dtype(x)
    n, fin, fout = _dims(x, weight)
    x, weight = L.contig(x), L.check("weight", weight, dtype=dt)
    L.check_out("out", out, (n, fout), dt)
    if batch_invariant:
        for r in range(n):
            cp.matmul(x[r:r + 1], weight.T, out=out[r:r + 1])
    else:
        cp.matmul(x, weight.T, out=out)
    if bias is not None:
        bias = L.check("bias", bias, (fout,), dt)
        L.kernel("util.cu", "util_bias_add_rows", dt)(L.flat_grid(n * fout), (L.THREADS,),
                                                 (out, bias, L.i64(n * fout), L.i32(fout)))


def linear_backward_input(dx, dout, weight):
    """``dx = dout @ weight`` (overwrites ``dx``).

    Parameters
    ----------
    dx : cupy.ndarray [shape=(N, in_features)], C-contiguous
    dout : cupy.ndarray [shape=(N, out_features)]
    weight : cupy.ndarray [shape=(out_features, in_features)]

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    dt = L.float_dtype(dout, "dout")
    if weight.ndim != 2 or dout.ndim != 2 or dout.shape[1] != weight.shape[0]:
        raise ValueError(f"dout must be (N, {weight.shape[0] if weight.ndim == 2 else '?'}) for weight "
                         f"{weight.shape}, got {dout.shape}")
    L.check_out("dx", dx, (dout.shape[0], weight.shape[1]), dt)
    cp.matmul(L.contig(dout), L.check("weight", weight, dtype=dt), out=dx)


def linear_backward_weight(dweight, dbias, dout, x):
    """``dweight += dout.T @ x``, ``dbias += dout.sum(0)`` (float64 sum, fixed order).

    Parameters
    ----------
    dweight : cupy.ndarray [shape=(out_features, in_features)], C-contiguous
    dbias : cupy.ndarray [shape=(out_features,)] or None, C-contiguous
    dout : cupy.ndarray [shape=(N, out_features)]
    x : cupy.ndarray [shape=(N, in_features)]

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    dt = L.float_dtype(x)
    n, fin, fout = _dims(x, dweight)
    L.check_out("dweight", dweight, (fout, fin), dt)
    dout = L.check("dout", dout, (n, fout), dt)
    x = L.contig(x)
    key = (dt.str, fout, fin)
    tmp = _scratch.get(key)
    if tmp is None:
        tmp = _scratch[key] = cp.empty((fout, fin), dt)
    cp.matmul(dout.T, x, out=tmp)
    L.kernel("util.cu", "util_add_inplace", dt)(L.flat_grid(tmp.size), (L.THREADS,), (dweight, tmp, L.i64(tmp.size)))
    if dbias is not None:
        L.check_out("dbias", dbias, (fout,), dt)
        L.kernel("util.cu", "util_sum_rows_add", dt)(L.flat_grid(fout), (L.THREADS,),
                                                (dbias, dout, L.i32(n), L.i64(fout)))
