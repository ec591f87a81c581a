"""Conv2d on the CPU: im2col / col2im in Numba, the GEMMs in NumPy's BLAS.

Dimension letters: ``N, C, H, W`` input, ``F`` filters, ``KH, KW`` kernel,
``OH, OW`` output, ``P = OH*OW`` output pixels per image, ``K = C*KH*KW`` the
GEMM's reduction length (row ``k = (c*KH + i)*KW + j`` of the column matrix).
Convention: PyTorch's ``conv2d`` (cross-correlation, zero padding, weight
``(F, C, KH, KW)``), ``OH = (H + 2*padding - KH)//stride + 1``.

Two layouts of the column matrix, chosen per shape by :func:`choose_layout`
(measured on the paper's shapes, see bench/conv_vs_torch.py):

``'image'``  cols ``(N, K+1, P)``: one GEMM per image, ``W (F, K+1) @ cols[n]``,
             written straight into ``out[n]`` (NCHW, no transpose). Best when
             ``P`` is large (first layers).
``'batch'``  cols ``(K+1, N*P)``: one GEMM for the whole batch, then a Numba
             transpose ``(F, N, P) -> (N, F, P)``. Best when ``P`` is small
             (deep layers), where per-image GEMMs are too thin for BLAS.

The bias is folded into the forward GEMM as a row of ones in ``cols`` and a
column ``bias`` in the weight matrix. Backward to the input is a GEMM to
``dcols`` and then col2im as a *gather*: one thread owns each ``(n, c)`` plane
of ``dx`` and adds the taps that read it in fixed ``(i, j, oh, ow)`` order, so
it is deterministic and correct for overlapping windows (``stride < KH``).
Parameter gradients accumulate (``+=``), ``dx`` is overwritten; ``dbias`` is
summed in float64. Every scratch buffer comes from the caller's
``kernels.Workspace`` so a training step allocates nothing after warm-up.
Parallelism: ``prange`` over ``N*C`` planes (im2col, col2im), ``N`` (transposes)
or ``F`` (reductions); BLAS uses its own threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "choose_layout"]

#: Force a layout for every call ('image' or 'batch'); None = :func:`choose_layout`. For benchmarks.
FORCE_LAYOUT = None


def choose_layout(n, c, f, oh, ow, kh, kw):
    """Pick the column layout: ``'image'`` for ``P = OH*OW >= 2048``, else ``'batch'``.

    Measured (2 cores, OpenBLAS SkylakeX kernels, batch 16): per-image GEMMs
    write NCHW directly and win on 102x159 (P = 16218); from 51x79 down the
    single batch GEMM is faster than per-image GEMMs even after the transpose.
    """
    return "image" if oh * ow >= 2048 and n > 1 else "batch"


# ----------------------------------------------------------------------------- Numba kernels
@njit(cache=True, inline="always")
def _valid(o_n, pad, tap, stride, size):
    """Range [o0, o1) of output positions o with 0 <= o*stride - pad + tap < size."""
    lo = pad - tap
    o0 = 0 if lo <= 0 else (lo + stride - 1) // stride
    hi = size - 1 + pad - tap
    o1 = 0 if hi < 0 else min(o_n, hi // stride + 1)
    return o0, max(o0, o1)


@njit(cache=True, parallel=True)
def _im2col(cols, x, kh, kw, stride, pad, oh, ow, sn, sk):
    """cols[n*sn + k*sk + r*OW + o] = xpad[n, c, r*s + i, o*s + j]; row K = ones."""
    n_, c_, h_, w_ = x.shape
    kk = c_ * kh * kw
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        for i in range(kh):
            r0, r1 = _valid(oh, pad, i, stride, h_)
            for j in range(kw):
                base = n * sn + ((c * kh + i) * kw + j) * sk
                o0, o1 = _valid(ow, pad, j, stride, w_)
                for r in range(oh):
                    d = base + r * ow
                    if r < r0 or r >= r1:
                        for o in range(ow):
                            cols[d + o] = 0
                        continue
                    h = r * stride - pad + i
                    for o in range(o0):
                        cols[d + o] = 0
                    if stride == 1:
                        src = x[n, c, h]
                        off = j - pad
                        for o in range(o0, o1):
                            cols[d + o] = src[o + off]
                    else:
                        for o in range(o0, o1):
                            cols[d + o] = x[n, c, h, o * stride - pad + j]
                    for o in range(o1, ow):
                        cols[d + o] = 0
        if c == 0:  # the ones row that folds the bias into the GEMM
            d = n * sn + kk * sk
            for p in range(oh * ow):
                cols[d + p] = 1


@njit(cache=True, parallel=True)
def _col2im(dx, dcols, kh, kw, stride, pad, oh, ow, sn, sk):
    """dx[n, c] = sum over taps (i, j) of dcols rows reading it (gather, fixed order)."""
    n_, c_, h_, w_ = dx.shape
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        plane = dx[n, c]
        plane[:, :] = 0
        for i in range(kh):
            r0, r1 = _valid(oh, pad, i, stride, h_)
            for j in range(kw):
                base = n * sn + ((c * kh + i) * kw + j) * sk
                o0, o1 = _valid(ow, pad, j, stride, w_)
                for r in range(r0, r1):
                    row = plane[r * stride - pad + i]
                    s = base + r * ow
                    if stride == 1:
                        off = j - pad
                        for o in range(o0, o1):
                            row[o + off] += dcols[s + o]
                    else:
                        for o in range(o0, o1):
                            row[o * stride - pad + j] += dcols[s + o]


@njit(cache=True, parallel=True)
def _fnp_to_nfp(out, big):
    """out[n, f, p] = big[f, n*P + p]  (batch-GEMM result to NCHW)."""
    n_, f_, p_ = out.shape
    for n in prange(n_):
        for f in range(f_):
            src = big[f, n * p_:(n + 1) * p_]
            dst = out[n, f]
            for p in range(p_):
                dst[p] = src[p]


@njit(cache=True, parallel=True)
def _nfp_to_fnp(big, dout):
    """big[f, n*P + p] = dout[n, f, p]  (NCHW gradient to the batch-GEMM layout)."""
    n_, f_, p_ = dout.shape
    for f in prange(f_):
        dst = big[f]
        for n in range(n_):
            src = dout[n, f]
            for p in range(p_):
                dst[n * p_ + p] = src[p]


@njit(cache=True, parallel=True)
def _dbias_acc(dbias, dout):
    """dbias[f] += sum_{n,p} dout[n, f, p], accumulated in float64 in fixed order."""
    n_, f_, p_ = dout.shape
    for f in prange(f_):
        acc = 0.0
        for n in range(n_):
            s = 0.0
            src = dout[n, f]
            for p in range(p_):
                s += src[p]
            acc += s
        dbias[f] += acc


@njit(cache=True, parallel=True)
def _sum_batch_acc(dw, tmp):
    """dw[f, k] += sum_n tmp[n, f, k] (fixed order over n)."""
    n_, f_, k_ = tmp.shape
    for f in prange(f_):
        for k in range(k_):
            s = tmp[0, f, k]
            for n in range(1, n_):
                s += tmp[n, f, k]
            dw[f, k] += s


# ----------------------------------------------------------------------------- validation
def _shapes(x_shape, weight, stride, padding, dtype, x_name="x"):
    if len(x_shape) != 4:
        raise ValueError(f"{x_name} must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (F, C, KH, KW), got shape {weight.shape}")
    if int(stride) != stride or stride < 1 or int(padding) != padding or padding < 0:
        raise ValueError(f"need integer stride >= 1 and padding >= 0, got stride={stride!r}, padding={padding!r}")
    n, c, h, w = x_shape
    f, cw, kh, kw = weight.shape
    if c != cw:
        raise ValueError(f"{x_name} has {c} channels (shape {tuple(x_shape)}) but weight expects {cw} (shape {weight.shape})")
    if h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(f"padded input ({h + 2 * padding}, {w + 2 * padding}) is smaller than the kernel ({kh}, {kw})")
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    return n, c, h, w, f, kh, kw, oh, ow, int(stride), int(padding)


def _check(name, a, shape, dtype, out=False):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {dtype} like the input, got {a.dtype}")
    if out and not a.flags.c_contiguous:
        raise ValueError(f"output {name} {a.shape} must be C-contiguous")


def _dtype(x):
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"conv2d needs a float32 or float64 NumPy array, got {getattr(x, 'dtype', type(x).__name__)}")
    return x.dtype


def _contig(a, ws, name):
    """C-contiguous version of input ``a`` (copied into a workspace buffer if needed)."""
    if a.flags.c_contiguous:
        return a
    buf = ws.get(name, a.shape, a.dtype)
    np.copyto(buf, a)
    return buf


def _layout(n, c, f, oh, ow, kh, kw):
    return FORCE_LAYOUT or choose_layout(n, c, f, oh, ow, kh, kw)


# ----------------------------------------------------------------------------- entry points
def conv2d_forward(out, x, weight, bias, stride, padding, ws):
    """Forward convolution, ``out = conv2d(x, weight) + bias`` (PyTorch convention).

    Parameters
    ----------
    out : np.ndarray [shape=(N, F, OH, OW), C-contiguous, dtype of x]
        Overwritten. ``OH = (H + 2*padding - KH)//stride + 1``, same for ``OW``.
    x : np.ndarray [shape=(N, C, H, W), float32 or float64]
    weight : np.ndarray [shape=(F, C, KH, KW)]
    bias : np.ndarray [shape=(F,)] or None
    stride : int >= 1
    padding : int >= 0
        Zero padding on each side.
    ws : kernels.Workspace
        Scratch buffers ('conv_cols', 'conv_w', 'conv_big').

    Raises
    ------
    ValueError
        On a wrong rank, channel count, dtype or shape (the message names the
        expected and the actual shape), or a non-contiguous ``out``.
    """
    dt = _dtype(x)
    n, c, h, w, f, kh, kw, oh, ow, s, p = _shapes(x.shape, weight, stride, padding, dt)
    _check("weight", weight, weight.shape, dt)
    if bias is not None:
        _check("bias", bias, (f,), dt)
    _check("out", out, (n, f, oh, ow), dt, out=True)
    x = _contig(x, ws, "conv_x")
    k, pp = c * kh * kw, oh * ow
    wa = ws.get("conv_w", (f, k + 1), dt)
    wa[:, :k] = weight.reshape(f, k)
    wa[:, k] = 0 if bias is None else bias
    if _layout(n, c, f, oh, ow, kh, kw) == "image":
        cols = ws.get("conv_cols", (n, k + 1, pp), dt)
        _im2col(cols.reshape(-1), x, kh, kw, s, p, oh, ow, (k + 1) * pp, pp)
        np.matmul(wa, cols, out=out.reshape(n, f, pp))
    else:
        cols = ws.get("conv_cols", (k + 1, n * pp), dt)
        _im2col(cols.reshape(-1), x, kh, kw, s, p, oh, ow, pp, n * pp)
        big = ws.get("conv_big", (f, n * pp), dt)
        np.matmul(wa, cols, out=big)
        _fnp_to_nfp(out.reshape(n, f, pp), big)


def conv2d_backward_input(dx, dout, weight, stride, padding, ws):
    """Gradient with respect to the input, ``dx`` overwritten (``=``).

    Parameters
    ----------
    dx : np.ndarray [shape=(N, C, H, W), C-contiguous]
        Output; its shape gives ``H, W`` (several ``H`` map to one ``OH`` when ``stride > 1``).
    dout : np.ndarray [shape=(N, F, OH, OW)]
    weight : np.ndarray [shape=(F, C, KH, KW)]
    stride, padding : int
    ws : kernels.Workspace
        Scratch buffers ('conv_dcols', 'conv_big').

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes (naming expected and actual shapes).
    """
    dt = _dtype(dout)
    if not isinstance(dx, np.ndarray):
        raise ValueError(f"dx must be a NumPy array, got {type(dx).__name__}")
    n, c, h, w, f, kh, kw, oh, ow, s, p = _shapes(dx.shape, weight, stride, padding, dt, "dx")
    _check("dx", dx, dx.shape, dt, out=True)
    _check("weight", weight, weight.shape, dt)
    _check("dout", dout, (n, f, oh, ow), dt)
    dout = _contig(dout, ws, "conv_dout")
    k, pp = c * kh * kw, oh * ow
    w2 = weight.reshape(f, k)
    if _layout(n, c, f, oh, ow, kh, kw) == "image":
        dcols = ws.get("conv_dcols", (n, k, pp), dt)
        np.matmul(w2.T, dout.reshape(n, f, pp), out=dcols)
        _col2im(dx, dcols.reshape(-1), kh, kw, s, p, oh, ow, k * pp, pp)
    else:
        big = ws.get("conv_big", (f, n * pp), dt)
        _nfp_to_fnp(big, dout.reshape(n, f, pp))
        dcols = ws.get("conv_dcols", (k, n * pp), dt)
        np.matmul(w2.T, big, out=dcols)
        _col2im(dx, dcols.reshape(-1), kh, kw, s, p, oh, ow, pp, n * pp)


def conv2d_backward_weight(dweight, dbias, dout, x, stride, padding, ws):
    """Gradients with respect to weight and bias, accumulated (``+=``).

    Parameters
    ----------
    dweight : np.ndarray [shape=(F, C, KH, KW), C-contiguous]
        ``+= sum_{n,oh,ow} dout[n,f,oh,ow] * xpad[n,c,oh*s+i,ow*s+j]``.
    dbias : np.ndarray [shape=(F,)] or None
        ``+= sum_{n,oh,ow} dout[n,f,oh,ow]`` (summed in float64).
    dout : np.ndarray [shape=(N, F, OH, OW)]
    x : np.ndarray [shape=(N, C, H, W)]
        The forward input.
    stride, padding : int
    ws : kernels.Workspace
        Scratch buffers ('conv_cols', 'conv_big', 'conv_dw').

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes (naming expected and actual shapes).
    """
    dt = _dtype(x)
    if not isinstance(dweight, np.ndarray):
        raise ValueError(f"dweight must be a NumPy array, got {type(dweight).__name__}")
    n, c, h, w, f, kh, kw, oh, ow, s, p = _shapes(x.shape, dweight, stride, padding, dt)
    _check("dweight", dweight, dweight.shape, dt, out=True)
    if dbias is not None:
        _check("dbias", dbias, (f,), dt, out=True)
    _check("dout", dout, (n, f, oh, ow), dt)
    x = _contig(x, ws, "conv_x")
    dout = _contig(dout, ws, "conv_dout")
    k, pp = c * kh * kw, oh * ow
    d3 = dout.reshape(n, f, pp)
    if dbias is not None:
        _dbias_acc(dbias, d3)
    dw2 = dweight.reshape(f, k)
    if _layout(n, c, f, oh, ow, kh, kw) == "image":
        cols = ws.get("conv_cols", (n, k + 1, pp), dt)
        _im2col(cols.reshape(-1), x, kh, kw, s, p, oh, ow, (k + 1) * pp, pp)
        tmp = ws.get("conv_dw", (n, f, k), dt)
        np.matmul(d3, cols[:, :k, :].transpose(0, 2, 1), out=tmp)
        _sum_batch_acc(dw2, tmp)
    else:
        cols = ws.get("conv_cols", (k + 1, n * pp), dt)
        _im2col(cols.reshape(-1), x, kh, kw, s, p, oh, ow, pp, n * pp)
        big = ws.get("conv_big", (f, n * pp), dt)
        _nfp_to_fnp(big, d3)
        tmp = ws.get("conv_dw", (f, k), dt)
        np.matmul(big, cols[:k].T, out=tmp)
        dw2 += tmp
