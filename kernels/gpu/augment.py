"""Batch-time augmentation on the GPU (``cuda/augment.cu``), same entry points as :mod:`kernels.cpu.augment`.

``augment_batch(out, q, params, lut, warp=None, stretch=None)``: VTLP frequency
warp, time stretch, time shift, brightness shift and SpecAugment masks on the uint8 levels ``q (N, H, W)``, decoded into ``out
(N, C, H, W)`` (mono ``level * float32(1/255)``, RGB ``lut[level]``), one
thread per output pixel; bit-identical to the CPU for the same ``params``
(integer arithmetic and a table look-up). ``mixup_batch(out, targets, x, y,
perm, lam)``: Zhang et al. 2018's mixup with soft targets, the CPU's float
expression (no contraction: ``--fmad=false``), bit-identical too.
The definitions and the params layout are in :mod:`engine.reference.augment`.
Inputs that are not C-contiguous are copied; outputs must be C-contiguous.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from . import _launch as L

__all__ = ["augment_batch", "mixup_batch", "augment_noise"]


def augment_batch(out, q, params, lut=None, warp=None, stretch=None):
    """Warp, stretch, shift, gain and mask ``q`` and decode it into ``out`` (see :func:`kernels.cpu.augment.augment_batch`).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, C, H, W), float32 or float64], C in {1, 3}, C-contiguous
    q : cupy.ndarray [shape=(N, H, W), dtype=uint8]
    params : cupy.ndarray [shape=(N, 2 + 4M), dtype=int32]
    lut : cupy.ndarray [shape=(256, 3), dtype=out.dtype] or None (needed for C = 3)
    warp : cupy.ndarray [shape=(N, H), dtype=int32] or None
        VTLP: fixed-point source row of each output row (entries in ``[0, 256 (H - 1)]``;
        not range-checked on the device: the host draws them; the CPU twin checks); None: no warp.
    stretch : cupy.ndarray [shape=(N, W), dtype=int32] or None
        Time stretch: fixed-point source column of each output column; None: no stretch.

    Raises
    ------
    ValueError
        On a wrong shape, dtype or layout.
    """
    dt = L.float_dtype(out, "out")
    if not isinstance(q, cp.ndarray) or q.ndim != 3 or q.dtype != np.uint8:
        raise ValueError(f"q must be a uint8 (N, H, W) CuPy array, got {getattr(q, 'dtype', type(q))} "
                         f"shape {getattr(q, 'shape', None)}")
    n, h, w = q.shape
    if out.ndim != 4 or out.shape[0] != n or tuple(out.shape[2:]) != (h, w) or out.shape[1] not in (1, 3):
        raise ValueError(f"out must be (N, 1 or 3, H, W) = ({n}, C, {h}, {w}), got {out.shape}")
    L.check_out("out", out)
    if not isinstance(params, cp.ndarray) or params.ndim != 2 or params.shape[0] != n or params.shape[1] < 2 \
            or (params.shape[1] - 2) % 4 or params.dtype != np.int32:
        raise ValueError(f"params must be int32 (N, 2 + 4M) with N = {n}, got {getattr(params, 'dtype', None)} "
                         f"{getattr(params, 'shape', None)}")
    rgb = out.shape[1] == 3
    if rgb:
        lut = L.check("lut", lut, (256, 3), dt) if lut is not None else None
        if lut is None:
            raise ValueError(f"lut must be (256, 3) {dt} for an RGB out, got None")
    else:
        lut = out  # never read for mono
    m = (params.shape[1] - 2) // 4
    warped, stretched = warp is not None, stretch is not None
    params = L.contig(params)
    warp = L.check("warp", warp, (n, h), np.int32) if warped else params  # never read without a table
    stretch = L.check("stretch", stretch, (n, w), np.int32) if stretched else params
    L.kernel("augment.cu", "augment_batch", dt)(
        L.flat_grid(out.size // out.shape[1]), (L.THREADS,),
        (out, L.contig(q), params, lut, warp, stretch, L.i32(n), L.i32(h), L.i32(w), L.i32(m),
         L.i32(int(rgb)), L.i32(int(warped)), L.i32(int(stretched))))


def mixup_batch(out, targets, x, y, perm, lam):
    """mixup: ``out = lam x + (1 - lam) x[perm]``, ``targets`` the mixed one-hot labels (overwritten).

    Parameters
    ----------
    out : cupy.ndarray [shape=x.shape, dtype=x.dtype], C-contiguous, not ``x``
    targets : cupy.ndarray [shape=(N, K), dtype=x.dtype], C-contiguous
    x : cupy.ndarray [shape=(N, ...), float32 or float64]
    y, perm : cupy.ndarray [shape=(N,), dtype=int64]
        Labels in ``[0, K)`` and partners in ``[0, N)`` (not range-checked on the
        device: the caller draws them; the CPU twin checks).
    lam : float in [0, 1]

    Raises
    ------
    ValueError
        On wrong shapes or dtypes, ``out`` being ``x``, or ``lam`` outside [0, 1].
    """
    dt = L.float_dtype(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, ...), got shape {x.shape}")
    n = x.shape[0]
    L.check_out("out", out, x.shape, dt)
    if out.data.ptr == x.data.ptr:
        raise ValueError("mixup_batch: out must not be x")
    if targets.ndim != 2 or targets.shape[0] != n:
        raise ValueError(f"targets must be ({n}, K), got {targets.shape}")
    L.check_out("targets", targets, None, dt)
    y = L.check("y", y, (n,), np.int64)
    perm = L.check("perm", perm, (n,), np.int64)
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"mixup lam must be in [0, 1], got {lam}")
    e = x.size // max(n, 1)
    L.kernel("augment.cu", "mixup_batch", dt)(
        L.flat_grid(max(out.size, targets.size)), (L.THREADS,),
        (out, targets, L.contig(x), y, perm, L.real(dt, lam), L.real(dt, 1.0 - float(lam)), L.i32(n), L.i64(e),
         L.i32(targets.shape[1])))


def augment_noise(out, q, noise, dither, add):
    """Additive stationary noise on uint8 levels, one thread per column (see :func:`kernels.cpu.augment.augment_noise`).

    Parameters
    ----------
    out : cupy.ndarray [shape=(N, H, W), dtype=uint8], C-contiguous (may be ``q``: each thread reads its
        column before writing it, and no other thread touches it)
    q : cupy.ndarray [shape=(N, H, W), dtype=uint8]
    noise : cupy.ndarray [shape=(N, 2), dtype=int32]
        Per sample ``(floor level, hash seed >= 0)`` (not range-checked on the device; the CPU twin checks).
    dither, add : cupy.ndarray [shape=(256,), dtype=int32]

    Raises
    ------
    ValueError
        On a wrong shape, dtype or layout.
    """
    if not isinstance(q, cp.ndarray) or q.ndim != 3 or q.dtype != np.uint8:
        raise ValueError(f"q must be a uint8 (N, H, W) CuPy array, got {getattr(q, 'dtype', type(q))} "
                         f"shape {getattr(q, 'shape', None)}")
    n, h, w = q.shape
    if not isinstance(out, cp.ndarray) or out.shape != q.shape or out.dtype != np.uint8 \
            or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 {q.shape} CuPy array, got "
                         f"{getattr(out, 'dtype', type(out))} {getattr(out, 'shape', None)}")
    noise = L.check("noise", noise, (n, 2), np.int32)
    dither = L.check("dither", dither, (256,), np.int32)
    add = L.check("add", add, (256,), np.int32)
    L.kernel("augment.cu", "augment_noise", np.float32)(
        L.flat_grid(n * w), (L.THREADS,), (out, L.contig(q), noise, dither, add, L.i32(n), L.i32(h), L.i32(w)))
