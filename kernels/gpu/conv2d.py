"""Conv2d on the GPU: im2col / col2im CUDA kernels (``cuda/conv2d.cu``, prefix ``conv2d_``), the GEMMs in cuBLAS.

Same entry points and signatures as :mod:`kernels.cpu.conv2d`. Dimension
letters: ``N, C, H, W`` input, ``F`` filters, ``KH, KW`` kernel, ``OH, OW``
output, ``P = OH*OW``, ``K = C*KH*KW`` (row ``k = (c*KH + i)*KW + j``).
Convention: PyTorch ``conv2d`` (cross-correlation, zero padding,
``OH = (H + 2*padding - KH)//stride + 1``).

Column layout ``(K, N*P)``: every training pass is ONE
2-D cuBLAS GEMM (``cupy.matmul``) over the whole batch (2-D ``cupy.matmul`` uses cuBLAS with
transpose flags and copies nothing; batched 3-D matmul would copy transposed
operands). Forward: im2col, ``W (F, K) @ cols -> big (F, N*P)``, then one
kernel transposes to NCHW and adds the bias. Backward to the input:
``dout`` to ``big (F, N*P)``, ``W.T @ big -> dcols``, then col2im as a
*gather* (each input pixel adds its taps in fixed order: deterministic, no
atomics). Backward to the weight: ``big @ cols.T -> (F, K)`` added into
``dweight``; ``dbias`` is a per-channel float64 block reduction of ``big``.
The eval-mode forward (``batch_invariant``) runs one GEMM per image instead
(layout ``(N, K, P)``) and adds the bias with ``conv2d_bias_add_planes``.
Parameter gradients accumulate (``+=``), ``dx`` is
overwritten. Scratch buffers come from the caller's :class:`kernels.Workspace`
(names ``gconv_*``). float32 for training, float64 accepted (gradient checks).
Inputs that are not C-contiguous are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import cupy as cp

from ..shapes import conv2d_shapes
from . import _launch as L

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]


def _im2col(cols, x, c, h, w, kh, kw, s, p, oh, ow, per_image=False):
    """cols (K, N*P) from x (N, C, H, W); with ``per_image`` the layout is (N, K, P) instead."""
    n = x.shape[0]
    pp = oh * ow
    sn, sk = (c * kh * kw * pp, pp) if per_image else (pp, n * pp)
    grid, block = L.plane_grid(n * c * kh * kw, pp)
    L.kernel("conv2d.cu", "conv2d_im2col", x.dtype)(
        grid, block, (cols, x, L.i32(c), L.i32(h), L.i32(w), L.i32(kh), L.i32(kw), L.i32(s), L.i32(p),
                      L.i32(oh), L.i32(ow), L.i64(sn), L.i64(sk)))


def _to_big(big, dout, n, f, pp):
    """big (F, N*P) from dout (N, F, P)."""
    grid, block = L.plane_grid(n * f, pp)
    L.kernel("conv2d.cu", "conv2d_nfp_to_fnp", dout.dtype)(grid, block, (big, dout, L.i32(n), L.i32(f), L.i32(pp)))


def conv2d_forward(out, x, weight, bias, stride, padding, ws, batch_invariant=False):
    """Forward convolution, ``out = conv2d(x, weight) + bias`` (PyTorch convention).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, F, OH, OW), C-contiguous, dtype of x]
        Overwritten.
    x : cupy.ndarray [shape=(N, C, H, W), float32 or float64]
    weight : cupy.ndarray [shape=(F, C, KH, KW)]
    bias : cupy.ndarray [shape=(F,)] or None
    stride : int >= 1
    padding : int >= 0
    ws : kernels.Workspace
        Scratch buffers ``gconv_cols`` (K, N*P) and ``gconv_big`` (F, N*P).
    batch_invariant : bool
        True (eval mode): columns in the per-image layout (N, K, P) and one
        ``W (F, K) @ cols[n] (K, P)`` GEMM per image written straight into
        ``out[n]``, then the bias added: every GEMM has the same shape, so
        ``out[n]`` depends only on ``x[n]`` (not on the batch). False: one
        GEMM over the whole batch.

    Raises
    ------
    ValueError
        On a wrong rank, channel count, dtype or shape, or a non-contiguous ``out``.
    """
    dt = L.float_dtype(x)
    n, c, h, w, f, kh, kw, oh, ow, s, p = conv2d_shapes(x.shape, weight.shape, stride, padding)
    x = L.check("x", x, dtype=dt)
    weight = L.check("weight", weight, dtype=dt)
    if bias is not None:
        bias = L.check("bias", bias, (f,), dt)
    L.check_out("out", out, (n, f, oh, ow), dt)
    k, pp = c * kh * kw, oh * ow
    cols = ws.get("gconv_cols", (k, n * pp), dt, cp)
    if batch_invariant:
        _im2col(cols, x, c, h, w, kh, kw, s, p, oh, ow, per_image=True)
        cols3, out3, w2 = cols.reshape(n, k, pp), out.reshape(n, f, pp), weight.reshape(f, k)
        for i in range(n):
            cp.matmul(w2, cols3[i], out=out3[i])
        if bias is not None:
            grid, block = L.plane_grid(n * f, pp)
            L.kernel("conv2d.cu", "conv2d_bias_add_planes", dt)(grid, block, (out, bias, L.i32(f), L.i32(pp)))
        return
    _im2col(cols, x, c, h, w, kh, kw, s, p, oh, ow)
    big = ws.get("gconv_big", (f, n * pp), dt, cp)
    cp.matmul(weight.reshape(f, k), cols, out=big)
    grid, block = L.plane_grid(n * f, pp)
    L.kernel("conv2d.cu", "conv2d_fnp_to_nfp_bias", dt)(
        grid, block, (out, big, weight if bias is None else bias, L.i32(bias is not None),
                      L.i32(n), L.i32(f), L.i32(pp)))


def conv2d_backward_input(dx, dout, weight, stride, padding, ws):
    """Gradient with respect to the input, ``dx`` overwritten (``=``).

    Parameters
    ----------
    dx : cupy.ndarray [shape=(N, C, H, W), C-contiguous]
        Output; its shape gives ``H, W``.
    dout : cupy.ndarray [shape=(N, F, OH, OW)]
    weight : cupy.ndarray [shape=(F, C, KH, KW)]
    stride, padding : int
    ws : kernels.Workspace
        Scratch buffers ``gconv_big`` (F, N*P) and ``gconv_dcols`` (K, N*P).

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    dt = L.float_dtype(dout, "dout")
    if not isinstance(dx, cp.ndarray):
        raise ValueError(f"dx must be a CuPy array, got {type(dx).__name__}")
    n, c, h, w, f, kh, kw, oh, ow, s, p = conv2d_shapes(dx.shape, weight.shape, stride, padding, "dx")
    L.check_out("dx", dx, dx.shape, dt)
    weight = L.check("weight", weight, dtype=dt)
    dout = L.check("dout", dout, (n, f, oh, ow), dt)
    k, pp = c * kh * kw, oh * ow
    big = ws.get("gconv_big", (f, n * pp), dt, cp)
    _to_big(big, dout, n, f, pp)
    dcols = ws.get("gconv_dcols", (k, n * pp), dt, cp)
    cp.matmul(weight.reshape(f, k).T, big, out=dcols)
    grid, block = L.plane_grid(n * c, h * w)
    L.kernel("conv2d.cu", "conv2d_col2im", dt)(
        grid, block, (dx, dcols, L.i32(c), L.i32(h), L.i32(w), L.i32(kh), L.i32(kw), L.i32(s), L.i32(p),
                      L.i32(oh), L.i32(ow), L.i64(pp), L.i64(n * pp)))


def channel_sum_add(dst, a, n, c, length, ws):
    """``dst[c] += sum_{n, l} a[n, c, l]`` in float64, fixed order (deterministic).

    ``a`` is a C-contiguous (N, C, L) CuPy array, ``dst`` (C,) of its dtype.
    Grid ``(C, S)`` of partial sums, then one fixed-order combine per channel.
    """
    S, chunk = L.split_grid(c, length)
    part = ws.get("gconv_part", (c, S), "float64", cp)
    L.kernel("util.cu", "util_chan_partial_sum", a.dtype)(
        (c, S), (L.THREADS,), (part, a, L.i32(n), L.i32(c), L.i32(length), L.i32(chunk)))
    L.kernel("util.cu", "util_chan_finalize_add", a.dtype)((L.blocks(c),), (L.THREADS,), (dst, part, L.i32(c), L.i32(S)))


def sum_rows_add(dst, src, rows, m):
    """``dst[j] += sum_r src[r, j]`` (float64, rows in order); ``src`` C-contiguous (rows, m)."""
    L.kernel("util.cu", "util_sum_rows_add", src.dtype)(L.flat_grid(m), (L.THREADS,), (dst, src, L.i32(rows), L.i64(m)))


def conv2d_backward_weight(dweight, dbias, dout, x, stride, padding, ws):
    """Gradients with respect to weight and bias, accumulated (``+=``).

    Parameters
    ----------
    dweight : cupy.ndarray [shape=(F, C, KH, KW), C-contiguous]
        ``+= sum_{n,oh,ow} dout[n,f,oh,ow] * xpad[n,c,oh*s+i,ow*s+j]``.
    dbias : cupy.ndarray [shape=(F,)] or None
        ``+= sum_{n,oh,ow} dout[n,f,oh,ow]`` (float64 accumulation).
    dout : cupy.ndarray [shape=(N, F, OH, OW)]
    x : cupy.ndarray [shape=(N, C, H, W)]
        The forward input.
    stride, padding : int
    ws : kernels.Workspace
        Scratch ``gconv_cols`` (recomputed from ``x``), ``gconv_big``, ``gconv_dw`` (F, K), ``gconv_part``.

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes.
    """
    dt = L.float_dtype(x)
    if not isinstance(dweight, cp.ndarray):
        raise ValueError(f"dweight must be a CuPy array, got {type(dweight).__name__}")
    n, c, h, w, f, kh, kw, oh, ow, s, p = conv2d_shapes(x.shape, dweight.shape, stride, padding)
    L.check_out("dweight", dweight, dweight.shape, dt)
    if dbias is not None:
        L.check_out("dbias", dbias, (f,), dt)
    x = L.check("x", x, dtype=dt)
    dout = L.check("dout", dout, (n, f, oh, ow), dt)
    k, pp = c * kh * kw, oh * ow
    big = ws.get("gconv_big", (f, n * pp), dt, cp)
    _to_big(big, dout, n, f, pp)
    if dbias is not None:
        channel_sum_add(dbias, big, 1, f, n * pp, ws)
    cols = ws.get("gconv_cols", (k, n * pp), dt, cp)
    _im2col(cols, x, c, h, w, kh, kw, s, p, oh, ow)
    tmp = ws.get("gconv_dw", (f, k), dt, cp)
    cp.matmul(big, cols.T, out=tmp)
    sum_rows_add(dweight, tmp, 1, f * k)
