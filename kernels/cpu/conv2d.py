"""Conv2d on the CPU: Winograd F(2x2, 3x3) or blocked im2col / col2im, in Numba around single-threaded BLAS GEMMs.

Dimension letters: ``N, C, H, W`` input, ``F`` filters, ``KH, KW`` kernel,
``OH, OW`` output, ``P = OH*OW`` output pixels per image, ``K = C*KH*KW`` the
GEMM's reduction length (row ``k = (c*KH + i)*KW + j`` of the column matrix).
Convention: PyTorch's ``conv2d`` (cross-correlation, zero padding, weight
``(F, C, KH, KW)``), ``OH = (H + 2*padding - KH)//stride + 1``.

Algorithm (chosen by measurement, see bench/conv_vs_torch.py and the report
in the commit history). The output is cut into *chunks* of whole output rows,
sized so that a chunk's column matrix (``K+1`` rows x ``L`` pixels) stays in
the core's L2 cache (:data:`CHUNK_BYTES`): inside one image when ``OH*OW`` is
large (first layers), or groups of whole images when it is small (deep
layers, where a per-image GEMM would be too thin for BLAS). One ``prange``
over tasks (chunks, images or chunk groups) with chunk size 1, so a thread
that the OS preempts (2 shared cores) simply takes fewer tasks; scratch
blocks are indexed by ``numba.get_thread_id()``:

* forward, ``C < 16`` (first layer): im2col of the chunk (plus a row of
  ones: the bias is folded into the GEMM as an extra weight column), then
  ``W (F, K+1) @ cols (K+1, L)`` written straight into ``out`` (or via a
  small buffer when the chunk spans images).
* forward, ``C >= 16``: the input is transposed to NHWC once, the chunk is
  unrolled as *rows* ``(L, K+1)`` (one contiguous run of ``KW*C`` values per
  pixel and kernel row), ``rows @ W.T`` (BLAS measured 25-30 % faster in this
  orientation), and the ``(L, F)`` result is transposed into NCHW in cache.
* backward_input: ``dcols (K, L) = W.T @ dout_chunk``, then col2im adds every
  tap into ``dx`` (correct for overlapping windows, ``stride < KH``). A task
  is one image (all its chunks, in order) or a chunk of whole images, so each
  ``dx`` plane is written by exactly one task in a fixed order: deterministic
  and race-free.
* backward_weight: the chunks are split into :data:`N_PARTIALS` fixed groups;
  each group accumulates ``cols @ dout_chunk.T`` into its own ``(K, F)``
  buffer (GEMM with beta = 1; this orientation measured 25 % faster than
  ``(F, K)`` for F = 32); the partials are then summed in group order into
  ``dweight`` (``+=``). ``dbias`` is summed in float64 per chunk inside the
  same task, while the chunk's ``dout`` is in cache (no extra pass over
  ``dout``; 1.3 ms saved on the first layer at batch 16), then over the chunks
  in order.

3x3 stride-1 layers with at least :data:`WINOGRAD_MIN_CHANNELS` input and
output channels and :data:`WINOGRAD_MIN_PIXELS` output pixels per image run
all three passes as Winograd F(2x2, 3x3) instead (Lavin & Gray 2015; kernels
in :mod:`kernels.cpu.winograd`, rule in :func:`use_winograd`, the
im2col path forced with ``CONV_ALGO = "im2col"`` or ``HITCNN_CONV_ALGO=im2col``).

Results depend only on the inputs (not on the thread count or scheduling). The GEMM is
SciPy's BLAS called from inside the Numba threads (:mod:`kernels.cpu.blas`),
so only one thread pool runs. Every scratch buffer comes from the caller's
``kernels.Workspace``: a training step allocates nothing after warm-up.
"""
from __future__ import annotations

import os

import numba
import numpy as np

from ..shapes import conv2d_shapes
from .conv2d_gemm import (_backward_input, _backward_weight, _dbias_acc, _dbias_from_partials, _forward, _forward_rows,
                          _sum_partials_acc)
from .im2col import _to_nhwc
from . import winograd as _wg

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"]

#: Forward uses im2row (NHWC rows, GEMM ``rows @ W.T``) from this many input channels on;
#: measured faster for C >= 32 (e.g. 64->64 @12x19: 3.2 vs 4.9 ms, 1 thread) and much slower for C = 3.
ROWS_MIN_CHANNELS = 16

#: Whole-image chunks (deep layers) hold at most ceil(N / MIN_CHUNKS) images, so both cores get
#: work; a constant (not the thread count) so results do not depend on the thread count. 2, not 4:
#: on 128->128 @3x4 each extra chunk re-reads the (K, F) weight-gradient partial (1.45 vs 1.8 ms).
MIN_CHUNKS = 2

#: Number of fixed chunk groups whose weight-gradient partials are summed in order (backward_weight).
N_PARTIALS = 8

#: Target size in bytes of one thread's column block (L2-resident). Tuned on the paper's shapes.
CHUNK_BYTES = 1 << 20

#: The same for the layers with C < ROWS_MIN_CHANNELS input channels (the first layer: K + 1 = 10 or
#: 28 rows for 3x3). Their GEMM is (F, K+1) @ (K+1, L) with a short K, bound by moving the column
#: block and the output through the cache rather than by the multiplies: on a 2-core EPYC (1 MiB L2
#: per core) 128 KiB blocks measured, against 1 MiB, forward 6.5 -> 5.4 ms and backward-weight
#: 6.8 -> 5.3 ms for 3->32 @ 102x159 at batch 16 (batch 64: 31.4 -> 21.9 and 28.5 -> 21.2 ms;
#: medians of 7 alternated runs; 1->32 at batch 16: 5.8 -> 2.4 and 4.7 -> 2.0 ms). The deep layers
#: keep 1 MiB (at 128 KiB they measured 10-30 % slower).
SMALL_C_CHUNK_BYTES = 1 << 17

#: Algorithm of the 3x3 stride-1 convolutions: ``"auto"`` (the rule of :func:`use_winograd`),
#: ``"im2col"`` (always the im2col / im2row GEMM path above, the pre-Winograd engine) or
#: ``"winograd"`` (every 3x3 stride-1 conv with padding <= 2, also for 1-3 channels; for tests).
#: Read from the environment variable ``HITCNN_CONV_ALGO`` at import; may be set at run time.
CONV_ALGO = os.environ.get("HITCNN_CONV_ALGO", "auto")

#: ``"auto"`` uses Winograd F(2x2, 3x3) when both channel counts of the pass are at least this
#: (so never for the first layer, 1 or 3 input channels, where the im2col path is faster than
#: oneDNN already and the transform GEMMs would be (F, 3) @ (3, T)) ...
WINOGRAD_MIN_CHANNELS = 16

#: ... and the output has at least this many pixels per image. Below it (cnn6_rgb's 6x9 and 3x4
#: layers) a chunk is a handful of 2x2 tiles, the transforms' fixed costs dominate and Winograd
#: measured 1.5-2.7x slower than im2col (batch 16, one thread); from 12x19 on it measured
#: 0.9-1.3x per pass (1.1-1.3x on the 32- and 64-channel layers at 25x39 and 51x79).
WINOGRAD_MIN_PIXELS = 200

#: Target bytes of one thread's transformed input plus products (16*(C+F) values per tile),
#: L2-resident; 1 MiB measured faster than 256 and 512 KiB on the paper's shapes.
WINOGRAD_CHUNK_BYTES = 1 << 20


def use_winograd(c, f, kh, kw, stride, padding, oh, ow):
    """True if a conv with these sizes runs as Winograd F(2x2, 3x3) under :data:`CONV_ALGO`.

    ``c, f``: input and output channels of the forward; ``oh, ow``: its output size
    (the rule is the same for the three passes, so a layer uses one algorithm).
    Winograd needs ``kh = kw = 3``, ``stride = 1`` and ``padding <= 2`` (backward-input
    convolves with padding ``2 - padding``). Under ``"auto"`` it also needs
    ``min(c, f) >= WINOGRAD_MIN_CHANNELS`` and ``oh * ow >= WINOGRAD_MIN_PIXELS``.

    Raises
    ------
    ValueError
        If :data:`CONV_ALGO` is not one of ``"auto"``, ``"im2col"``, ``"winograd"``.
    """
    if CONV_ALGO not in ("auto", "im2col", "winograd"):
        raise ValueError(f"CONV_ALGO (HITCNN_CONV_ALGO) must be 'auto', 'im2col' or 'winograd', got {CONV_ALGO!r}")
    if CONV_ALGO == "im2col" or kh != 3 or kw != 3 or stride != 1 or padding > 2:
        return False
    return CONV_ALGO == "winograd" or (min(c, f) >= WINOGRAD_MIN_CHANNELS and oh * ow >= WINOGRAD_MIN_PIXELS)


def plan_chunks(n, oh, ow, k1, itemsize, min_chunks=1, chunk_bytes=None, per_image=False):
    """Rows per chunk ``R`` and chunks per image (``0`` = chunks of ``R // OH`` whole images).

    ``R = max(1, chunk_bytes // ((K+1) * OW * itemsize))``. If ``R < OH`` each
    image is cut into ``ceil(OH / R)`` chunks of ``ceil(OH / ceil(OH / R))``
    rows; otherwise a chunk holds ``min(R // OH, ceil(N / min_chunks))`` whole
    images, so that there are enough tasks for the threads. With ``per_image``
    a chunk never holds more than one image (``R = OH``, one chunk per image):
    then every GEMM's shape, and an image's place in it, depend only on the
    layer and the image, not on ``N`` or the image's index in the batch.
    """
    cb = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    r = max(1, cb // (k1 * ow * itemsize))
    if r < oh:
        cpi = -(-oh // r)
        return -(-oh // cpi), cpi
    if per_image:
        return oh, 1
    return min(r // oh, -(-n // min_chunks)) * oh, 0


# ----------------------------------------------------------------------------- validation
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


def _plan(n, k1, oh, ow, dt, f, c, per_image=False):
    """Chunk plan plus the scratch count: one block per thread of Numba's pool (get_thread_id).

    Column blocks of :data:`SMALL_C_CHUNK_BYTES` for ``C < ROWS_MIN_CHANNELS``
    input channels, else :data:`CHUNK_BYTES`.
    """
    cb = SMALL_C_CHUNK_BYTES if c < ROWS_MIN_CHANNELS else None
    r, cpi = plan_chunks(n, oh, ow, k1, dt.itemsize, MIN_CHUNKS, chunk_bytes=cb, per_image=per_image)
    nc = n * cpi if cpi > 0 else -(-n * oh // r)
    return r, cpi, min(r, n * oh) * ow, numba.config.NUMBA_NUM_THREADS, nc


def _wino_scratch(ws, n, oh, ow, c, f, dt, per_image=False):
    """Chunk plan (tile rows per chunk, chunks per image, chunk count) and per-thread scratch."""
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    r, cpi = plan_chunks(n, th, tw, 16 * (c + f), dt.itemsize, MIN_CHUNKS, WINOGRAD_CHUNK_BYTES, per_image)
    nc = n * cpi if cpi > 0 else -(-n * th // r)
    tcmax = min(r, n * th) * (tw + 1)  # a dummy tile per tile row (kernels.cpu.winograd)
    nt = numba.config.NUMBA_NUM_THREADS
    v = ws.get("wino_v", (nt, 16 * _wg.skew(c * tcmax)), dt)
    m = ws.get("wino_m", (nt, 16 * _wg.skew(f * tcmax)), dt)
    rb = ws.get("wino_r", (nt,) + _wg.scratch_shape(tcmax, ow + 2), dt)
    return r, cpi, nc, v, m, rb


def _wino_forward(out, x, weight, bias, padding, ws, per_image, flipped=False):
    """out = conv3x3(x, weight) + bias by Winograd (``flipped``: the backward-input convolution)."""
    dt = x.dtype
    n, c = x.shape[:2]
    f = out.shape[1]
    u = ws.get("wino_u", (16, f, c), dt)
    (_wg.weight_transform_flipped if flipped else _wg.weight_transform)(u, weight)
    if bias is None:
        bias = ws.get("wino_b0", (f,), dt)
        bias[:] = 0
    r, cpi, nc, v, m, rb = _wino_scratch(ws, n, out.shape[2], out.shape[3], c, f, dt, per_image)
    with numba.parallel_chunksize(1):
        _wg.winograd_conv(out, x, u, bias, padding, r, cpi, v, m, rb)


# ----------------------------------------------------------------------------- entry points
def conv2d_forward(out, x, weight, bias, stride, padding, ws, batch_invariant=False):
    """Forward convolution, ``out = conv2d(x, weight) + bias`` (PyTorch convention).

    Parameters
    ----------
    out : np.ndarray [shape=(N, F, OH, OW), C-contiguous, dtype of x]
        Overwritten. ``OH = (H + 2*padding - KH)//stride + 1``, same for ``OW``.
    x : np.ndarray [shape=(N, C, H, W), float32 or float64]
        Non-contiguous input is copied into a workspace buffer first.
    weight : np.ndarray [shape=(F, C, KH, KW)]
    bias : np.ndarray [shape=(F,)] or None
    stride : int >= 1
    padding : int >= 0
        Zero padding on each side of H and W.
    ws : kernels.Workspace
        Scratch buffers ('conv_w', 'conv_cols', 'conv_obuf').
    batch_invariant : bool
        True (eval mode): chunks never span images (``plan_chunks(per_image=True)``),
        so every GEMM's shape and an image's place in it depend only on the
        layer and the image: ``out[i]`` is bit-identical whatever else is in
        the batch (BLAS rounds a column differently with the GEMM's width and
        the column's position). False (training): deep layers group whole
        images into wider GEMMs (faster; BatchNorm couples the batch anyway).

    Raises
    ------
    ValueError
        On a wrong rank, channel count, dtype or shape (the message names the
        expected and the actual shape), or a non-contiguous ``out``.
    """
    dt = _dtype(x)
    n, c, h, w, f, kh, kw, oh, ow, s, p = conv2d_shapes(x.shape, weight.shape, stride, padding)
    _check("weight", weight, weight.shape, dt)
    if bias is not None:
        _check("bias", bias, (f,), dt)
    _check("out", out, (n, f, oh, ow), dt, out=True)
    if use_winograd(c, f, kh, kw, s, p, oh, ow):
        _wino_forward(out, _contig(x, ws, "conv_x"), weight, bias, p, ws, batch_invariant)
        return
    k = c * kh * kw
    r, cpi, lmax, nt, nc = _plan(n, k + 1, oh, ow, dt, f, c, per_image=batch_invariant)
    if c >= ROWS_MIN_CHANNELS:  # im2row from NHWC, GEMM rows @ W.T (see module doc)
        xh = ws.get("conv_xh", (n, h, w, c), dt)
        _to_nhwc(xh, x)
        wr = ws.get("conv_w", (f, k + 1), dt)
        wr[:, :k] = weight.transpose(0, 2, 3, 1).reshape(f, k)
        wr[:, k] = 0 if bias is None else bias
        rows = ws.get("conv_cols", (nt, (k + 1) * lmax), dt)
        obuf = ws.get("conv_obuf", (nt, f * lmax), dt)
        with numba.parallel_chunksize(1):
            _forward_rows(out.reshape(n, f, oh * ow), xh, wr, kh, kw, s, p, oh, ow, r, cpi, rows, obuf)
        return
    x = _contig(x, ws, "conv_x")
    wa = ws.get("conv_w", (f, k + 1), dt)
    wa[:, :k] = weight.reshape(f, k)
    wa[:, k] = 0 if bias is None else bias
    cols = ws.get("conv_cols", (nt, (k + 1) * lmax), dt)
    obuf = ws.get("conv_obuf", (nt, f * lmax if cpi == 0 else 1), dt)
    with numba.parallel_chunksize(1):
        _forward(out.reshape(n, f, oh * ow), x, wa, kh, kw, s, p, oh, ow, r, cpi, cols, obuf)


def conv2d_backward_input(dx, dout, weight, stride, padding, ws):
    """Gradient with respect to the input, ``dx`` overwritten (``=``).

    Parameters
    ----------
    dx : np.ndarray [shape=(N, C, H, W), C-contiguous]
        Output; its shape gives ``H, W`` (with ``stride > 1`` several ``H`` give
        the same ``OH``; rows no window reads get 0).
    dout : np.ndarray [shape=(N, F, OH, OW)]
    weight : np.ndarray [shape=(F, C, KH, KW)]
    stride, padding : int
    ws : kernels.Workspace
        Scratch buffers ('conv_dcols', 'conv_dbuf').

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes (naming expected and actual shapes).
    """
    dt = _dtype(dout)
    if not isinstance(dx, np.ndarray):
        raise ValueError(f"dx must be a NumPy array, got {type(dx).__name__}")
    n, c, h, w, f, kh, kw, oh, ow, s, p = conv2d_shapes(dx.shape, weight.shape, stride, padding, "dx")
    _check("dx", dx, dx.shape, dt, out=True)
    _check("weight", weight, weight.shape, dt)
    _check("dout", dout, (n, f, oh, ow), dt)
    dout = _contig(dout, ws, "conv_dout")
    if use_winograd(c, f, kh, kw, s, p, oh, ow):  # dx = conv3x3(dout, flipped weight.T, padding 2 - p)
        _wino_forward(dx, dout, weight, None, 2 - p, ws, False, flipped=True)
        return
    weight = _contig(weight, ws, "conv_wc")
    k = c * kh * kw
    r, cpi, lmax, nt, nc = _plan(n, k + 1, oh, ow, dt, f, c)
    dcols = ws.get("conv_dcols", (nt, k * lmax), dt)
    dbuf = ws.get("conv_dbuf", (nt, f * lmax if cpi == 0 else 1), dt)
    with numba.parallel_chunksize(1):
        _backward_input(dx, dout.reshape(n, f, oh * ow), weight.reshape(f, k), kh, kw, s, p, oh, ow, r, cpi, dcols, dbuf)


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
        Scratch buffers ('conv_cols', 'conv_dbuf', 'conv_dwt').

    Raises
    ------
    ValueError
        On wrong ranks, shapes or dtypes (naming expected and actual shapes).
    """
    dt = _dtype(x)
    if not isinstance(dweight, np.ndarray):
        raise ValueError(f"dweight must be a NumPy array, got {type(dweight).__name__}")
    n, c, h, w, f, kh, kw, oh, ow, s, p = conv2d_shapes(x.shape, dweight.shape, stride, padding)
    _check("dweight", dweight, dweight.shape, dt, out=True)
    if dbias is not None:
        _check("dbias", dbias, (f,), dt, out=True)
    _check("dout", dout, (n, f, oh, ow), dt)
    x = _contig(x, ws, "conv_x")
    dout = _contig(dout, ws, "conv_dout")
    k = c * kh * kw
    d3 = dout.reshape(n, f, oh * ow)
    if use_winograd(c, f, kh, kw, s, p, oh, ow):
        if dbias is not None:
            _dbias_acc(dbias, d3)
        r, cpi, nc, v, m, rb = _wino_scratch(ws, n, oh, ow, c, f, dt)
        dut = ws.get("wino_dut", (min(N_PARTIALS, nc), 16, f, c), dt)
        with numba.parallel_chunksize(1):
            _wg.winograd_backward_weight(dut, dout, x, p, r, cpi, v, m, rb)
        _wg.weight_grad_acc(dweight, dut)
        return
    r, cpi, lmax, nt, nc = _plan(n, k + 1, oh, ow, dt, f, c)
    cols = ws.get("conv_cols", (nt, (k + 1) * lmax), dt)
    dbuf = ws.get("conv_dbuf", (nt, f * lmax if cpi == 0 else 1), dt)
    dwt = ws.get("conv_dwt", (min(N_PARTIALS, nc), k, f), dt)
    dbp = ws.get("conv_dbp", (nc if dbias is not None else 0, f), np.float64)
    with numba.parallel_chunksize(1):
        _backward_weight(dwt, dbp, d3, x, kh, kw, s, p, oh, ow, r, cpi, cols, dbuf)
    _sum_partials_acc(dweight.reshape(f, k), dwt)
    if dbias is not None:
        _dbias_from_partials(dbias, dbp)
