"""Linear (fully connected) layer on the CPU: BLAS GEMMs called from Numba.

Convention: PyTorch's ``torch.nn.functional.linear``: ``x (N, in_features)``,
``weight (out_features, in_features)``, ``y = x @ weight.T + bias``.
Parameter gradients accumulate (``+=``; the GEMM runs with beta = 1 straight
into ``dweight``, so no scratch is needed), ``dx`` is overwritten, ``dbias``
is summed in float64 in a fixed order. The GEMM is the single-threaded BLAS
of :mod:`kernels.cpu.blas`, so NumPy's BLAS thread pool is never woken during
a training step. Small layers (the classifier heads, ``Linear(256, 512)``)
run one GEMM per pass; a weight of at least :data:`PARALLEL_MIN_WEIGHT`
elements (cnn2_mono's ``Linear(62400, 512)``: 128 MB, memory-bound on one
core) runs each pass as :data:`PARALLEL_TASKS` GEMMs on fixed column blocks
in a Numba ``prange`` (forward: blocks of outputs; both backward passes:
blocks of input features), so the result depends on the shapes only, never
on the thread count. Each output element is the same dot product in either
form: with OpenBLAS 0.3.31 float32 results are bit-identical to the single
GEMM (float64 within 1e-13 relative on awkward shapes: dgemm's edge kernels).
float32 and float64.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import _threads
from .blas import gemm

#: Outputs computed side by side by the batch-invariant forward (each its own sequential sum).
LANES = 256
#: Input features per tile of the batch-invariant forward (a 256 KiB weight tile, in L2).
TILE_IN = 256

#: Weights with at least this many elements split each GEMM into column blocks over the threads
#: (cnn2_mono's 62400 x 512 at batch 16, 2 threads: forward 17.7 -> 10 ms, backward-input
#: 30 -> 16 ms, backward-weight 11 -> 5.5 ms; bench/train_throughput.py --profile).
PARALLEL_MIN_WEIGHT = 1 << 20
#: Column blocks per pass (a constant, not the thread count, so results do not depend on it).
PARALLEL_TASKS = 8

__all__ = ["linear_forward", "linear_backward_input", "linear_backward_weight"]


def _block(total):
    """Width of one of the :data:`PARALLEL_TASKS` column blocks of ``total`` columns (a multiple of 16)."""
    w = -(-total // PARALLEL_TASKS)
    return -(-w // 16) * 16


@njit(cache=True, parallel=True)
def _forward_par(out, x, weight, bias, has_bias, bo):
    """``_forward`` as one GEMM per block of ``bo`` outputs: ``out[:, o0:o1] = x @ weight[o0:o1].T``."""
    n, i = x.shape
    o = weight.shape[0]
    of = out.reshape(-1)
    xf = x.reshape(-1)
    wf = weight.reshape(-1)
    for t in prange(-(-o // bo)):
        o0 = t * bo
        m = min(o, o0 + bo) - o0
        gemm(of, o0, o, xf, 0, i, False, wf, o0 * i, i, True, n, m, i, 0.0)
        if has_bias:
            for r in range(n):
                for e in range(o0, o0 + m):
                    out[r, e] += bias[e]


@njit(cache=True, parallel=True)
def _backward_input_par(dx, dout, weight, bi):
    """``dx[:, i0:i1] = dout @ weight[:, i0:i1]`` per block of ``bi`` input features."""
    n, o = dout.shape
    i = weight.shape[1]
    dxf = dx.reshape(-1)
    df = dout.reshape(-1)
    wf = weight.reshape(-1)
    for t in prange(-(-i // bi)):
        i0 = t * bi
        m = min(i, i0 + bi) - i0
        gemm(dxf, i0, i, df, 0, o, False, wf, i0, i, False, n, m, o, 0.0)


@njit(cache=True, parallel=True)
def _backward_weight_par(dweight, dout, x, bi):
    """``dweight[:, i0:i1] += dout.T @ x[:, i0:i1]`` per block of ``bi`` input features."""
    n, o = dout.shape
    i = x.shape[1]
    dwf = dweight.reshape(-1)
    df = dout.reshape(-1)
    xf = x.reshape(-1)
    for t in prange(-(-i // bi)):
        i0 = t * bi
        m = min(i, i0 + bi) - i0
        gemm(dwf, i0, i, df, 0, o, True, xf, i0, i, False, o, m, n, 1.0)


@njit(cache=True)
def _dbias(dbias, dout):
    n, o = dout.shape
    for f in range(o):
        acc = 0.0
        for r in range(n):
            acc += dout[r, f]
        dbias[f] += acc


@njit(cache=True)
def _forward(out, x, weight, bias, has_bias):
    n, i = x.shape
    o = weight.shape[0]
    gemm(out.reshape(-1), 0, o, x.reshape(-1), 0, i, False, weight.reshape(-1), 0, i, True, n, o, i, 0.0)
    if has_bias:
        for r in range(n):
            out[r] += bias


@njit(cache=True, parallel=True)
def _forward_invariant(out, x, weight, bias, has_bias, acc, wt):
    """out[r, o] = sum_i x[r, i] * weight[o, i] (+ bias[o]), the same float operations for every row.

    Each ``(r, o)`` is one sequential sum over ``i = 0, 1, ...`` (then + bias),
    vectorised across a block of LANES outputs: tiles of TILE_IN features of
    LANES weight rows are transposed into ``wt[block]`` (zero rows pad the
    last block) and every row of ``x`` runs over the tile, its LANES running
    sums in ``acc`` (wide enough that the store-to-load chains of the
    accumulators overlap). Tiling only reorders *which* (r, o) is worked on,
    never the operations of one, so a row's result does not depend on the
    other rows, their number or its index (no FMA contraction: Numba
    compiles without fastmath).
    """
    n, ni = x.shape
    no = weight.shape[0]
    nob = -(-no // LANES)
    for ob in prange(nob):
        o0 = ob * LANES
        m = min(no, o0 + LANES) - o0
        w = wt[ob]
        for r in range(n):
            a = acc[r, o0:o0 + LANES]
            for e in range(LANES):
                a[e] = 0
        for t0 in range(0, ni, TILE_IN):
            t1 = min(ni, t0 + TILE_IN)
            for e in range(LANES):
                if e < m:
                    src = weight[o0 + e, t0:t1]
                    for i in range(t1 - t0):
                        w[i, e] = src[i]
                else:
                    for i in range(t1 - t0):
                        w[i, e] = 0
            for r in range(n):
                a = acc[r, o0:o0 + LANES]
                xr = x[r, t0:t1]
                for i in range(t1 - t0):
                    xi = xr[i]
                    wi = w[i]
                    for e in range(LANES):
                        a[e] += xi * wi[e]
        for r in range(n):
            for e in range(m):
                v = acc[r, o0 + e]
                if has_bias:
                    v += bias[o0 + e]
                out[r, o0 + e] = v


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


def linear_forward(out, x, weight, bias, batch_invariant=False, ws=None):
    """``out = x @ weight.T + bias`` (overwritten).

    Parameters
    ----------
    out : np.ndarray [shape=(N, out_features), C-contiguous, dtype of x]
    x : np.ndarray [shape=(N, in_features), float32 or float64]
    weight : np.ndarray [shape=(out_features, in_features)]
    bias : np.ndarray [shape=(out_features,)] or None
    batch_invariant : bool
        False (training): one BLAS GEMM over the batch; BLAS may round a row
        differently with the batch size or the row's index. True (eval mode):
        :func:`_forward_invariant`, whose row ``r`` depends only on ``x[r]``
        (bit-identical whatever else is in the batch), at some speed cost.
    ws : kernels.Workspace or None
        Scratch ``lin_acc`` (N, out_features) and ``lin_wt`` for
        ``batch_invariant`` (fresh arrays when None).

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
    if batch_invariant:
        get = (lambda name, shape: np.empty(shape, dt)) if ws is None else (lambda name, shape: ws.get(name, shape, dt))
        acc = get("lin_acc", (n, -(-o // LANES) * LANES))
        wt = get("lin_wt", (-(-o // LANES), min(TILE_IN, x.shape[1]), LANES))
        _threads.run(x.size, _forward_invariant, out, np.ascontiguousarray(x), np.ascontiguousarray(weight), b,
                     bias is not None, acc, wt)
        return
    if weight.size >= PARALLEL_MIN_WEIGHT:
        with numba.parallel_chunksize(1):
            _forward_par(out, np.ascontiguousarray(x), np.ascontiguousarray(weight), b, bias is not None, _block(o))
        return
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
    if weight.size >= PARALLEL_MIN_WEIGHT:
        with numba.parallel_chunksize(1):
            _backward_input_par(dx, np.ascontiguousarray(dout), np.ascontiguousarray(weight), _block(weight.shape[1]))
        return
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
    if dweight.size >= PARALLEL_MIN_WEIGHT:
        dout = np.ascontiguousarray(dout)
        with numba.parallel_chunksize(1):
            _backward_weight_par(dweight, dout, np.ascontiguousarray(x), _block(x.shape[1]))
        if dbias is not None:
            _dbias(dbias, dout)
        return
    _backward_weight(dweight, b, np.ascontiguousarray(dout), np.ascontiguousarray(x), dbias is not None)
