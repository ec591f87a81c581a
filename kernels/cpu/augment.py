"""Batch-time augmentation as Numba kernels (CPU): frequency warp, shift, gain, SpecAugment masks + decode; mixup.

Same entry points and signatures as :mod:`kernels.gpu.augment`; the float64
references are in :mod:`engine.reference.augment` (whose docstring defines
the three steps and the params layout). Everything is integer arithmetic on
the uint8 levels followed by a table look-up, so the CPU and the GPU give
bit-identical batches for the same params; mixup is one float expression
per element (``lam * a + (1 - lam) * b`` in the output dtype, no
contraction), bit-identical too.

Entry points (outputs first, preallocated by the caller and reused):

* ``augment_batch(out, q, params, lut, warp=None)``: ``out (N, C, H, W)``
  float32/64, ``q (N, H, W)`` uint8, ``params (N, 2 + 4M)`` int32, ``lut
  (256, 3)`` of ``out``'s dtype for ``C = 3`` (ignored, may be None, for
  ``C = 1``), ``warp (N, H)`` int32 the fixed-point source row of each output
  row (VTLP; None: no warp), ``stretch (N, W)`` int32 the fixed-point source
  column of each output column (time stretch; None: none).
* ``augment_noise(out, q, noise, dither, add)``: ``out``, ``q`` uint8 ``(N, H, W)``
  (``out`` may be ``q``), ``noise (N, 2)`` int32 (floor level, hash seed),
  ``dither``, ``add`` int32 ``(256,)``: additive stationary noise on the
  levels (``engine.reference.augment.augment_noise``).
* ``mixup_batch(out, targets, x, y, perm, lam)``: ``out`` like ``x``
  ``(N, ...)`` (must not be ``x``), ``targets (N, K)`` soft labels of
  ``out``'s dtype, ``y (N,)`` int64, ``perm (N,)`` int64, ``lam`` a float.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._threads import run as _run

__all__ = ["augment_batch", "mixup_batch", "augment_noise", "MONO_SCALE"]

#: Mono decode factor: ``float32(1/255)`` (``Dataset.decode``'s), applied to a level exactly in float64.
MONO_SCALE = float(np.float32(1.0 / 255.0))


@njit(cache=True, inline="always")
def _level(q, i, r, c, w):
    if 0 <= c < w:
        return np.int32(q[i, r, c])
    return np.int32(0)


@njit(parallel=True, cache=True)
def _augment(out, q, params, lut, n_masks, rgb, scale, warp, warped, stretch, stretched):
    n, h, w = q.shape
    for i in prange(n):
        s = params[i, 0]
        g = params[i, 1]
        for r in range(h):
            r0 = r
            r1 = r
            fr = np.int32(0)
            if warped:  # VTLP: read the source row warp / 256 (engine.reference.augment.resample_levels)
                u = np.int32(warp[i, r])
                r0 = u >> 8
                fr = u & 255
                r1 = min(r0 + 1, h - 1)
            masked_row = False
            for k in range(n_masks):
                f0 = params[i, 2 + 2 * k]
                fw = params[i, 3 + 2 * k]
                if fw > 0 and f0 <= r < f0 + fw:
                    masked_row = True
            for c in range(w):
                src = c - s
                v = np.int32(0)
                if 0 <= src < w:
                    if stretched:  # time stretch: the source column stretch / 256 (floor outside the image)
                        uc = np.int32(stretch[i, src])
                        c0 = uc >> 8
                        fc = uc & 255
                        a0 = _level(q, i, r0, c0, w) * (256 - fr) + _level(q, i, r1, c0, w) * fr
                        a1 = _level(q, i, r0, c0 + 1, w) * (256 - fr) + _level(q, i, r1, c0 + 1, w) * fr
                        v = np.int32((a0 * (256 - fc) + a1 * fc + 32768) >> 16)
                    elif warped:
                        v = np.int32((np.int32(q[i, r0, src]) * (256 - fr) + np.int32(q[i, r1, src]) * fr + 128) >> 8)
                    else:
                        v = np.int32(q[i, r, src])
                v += g
                if v < 0:
                    v = 0
                elif v > 255:
                    v = 255
                if masked_row:
                    v = 0
                else:
                    for k in range(n_masks):
                        t0 = params[i, 2 + 2 * n_masks + 2 * k]
                        tw = params[i, 3 + 2 * n_masks + 2 * k]
                        if tw > 0 and t0 <= c < t0 + tw:
                            v = 0
                if rgb:
                    out[i, 0, r, c] = lut[v, 0]
                    out[i, 1, r, c] = lut[v, 1]
                    out[i, 2, r, c] = lut[v, 2]
                else:
                    out[i, 0, r, c] = v * scale  # exact in float64, rounded once on the store


@njit(parallel=True, cache=True)
def _mixup(out, targets, x, y, perm, lam, mlam):
    n = x.shape[0]
    for i in prange(n):
        j = perm[i]
        for e in range(x.shape[1]):
            out[i, e] = lam * x[i, e] + mlam * x[j, e]
        for k in range(targets.shape[1]):
            targets[i, k] = 0.0
        targets[i, y[i]] += lam
        targets[i, y[j]] += mlam


def _check_augment(out, q, params, lut, warp=None, stretch=None):
    if not isinstance(q, np.ndarray) or q.ndim != 3 or q.dtype != np.uint8 or not q.flags.c_contiguous:
        raise ValueError(f"q must be a C-contiguous uint8 (N, H, W) array, got {getattr(q, 'dtype', type(q))} "
                         f"shape {getattr(q, 'shape', None)}")
    n, h, w = q.shape
    if out.ndim != 4 or out.shape[0] != n or out.shape[2:] != (h, w) or out.shape[1] not in (1, 3):
        raise ValueError(f"out must be (N, 1 or 3, H, W) = ({n}, C, {h}, {w}), got {out.shape}")
    if out.dtype not in (np.float32, np.float64) or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32/float64, got {out.dtype}")
    if (params.ndim != 2 or params.shape[0] != n or params.shape[1] < 2 or (params.shape[1] - 2) % 4
            or params.dtype != np.int32):
        raise ValueError(f"params must be int32 (N, 2 + 4M) with N = {n}, got {params.dtype} {params.shape}")
    rgb = out.shape[1] == 3
    if rgb:
        if lut is None or lut.shape != (256, 3) or lut.dtype != out.dtype:
            raise ValueError(f"lut must be (256, 3) {out.dtype} for an RGB out, got "
                             f"{None if lut is None else (lut.dtype, lut.shape)}")
    if warp is not None:
        if not isinstance(warp, np.ndarray) or warp.shape != (n, h) or warp.dtype != np.int32:
            raise ValueError(f"warp must be int32 ({n}, {h}), got {getattr(warp, 'dtype', type(warp))} "
                             f"{getattr(warp, 'shape', None)}")
        if warp.size and (int(warp.min()) < 0 or int(warp.max()) > 256 * (h - 1)):
            raise ValueError(f"warp entries must be in [0, {256 * (h - 1)}] (source rows x 256), got range "
                             f"[{int(warp.min())}, {int(warp.max())}]")
    if stretch is not None:
        if not isinstance(stretch, np.ndarray) or stretch.shape != (n, w) or stretch.dtype != np.int32:
            raise ValueError(f"stretch must be int32 ({n}, {w}), got {getattr(stretch, 'dtype', type(stretch))} "
                             f"{getattr(stretch, 'shape', None)}")
        if stretch.size and (int(np.abs(stretch).max()) > 2 ** 30):
            raise ValueError("stretch entries must be within +-2**30 (source columns x 256)")
    return rgb, (params.shape[1] - 2) // 4


def augment_batch(out, q, params, lut=None, warp=None, stretch=None):
    """Warp, stretch, shift, gain and mask the uint8 levels ``q`` and decode them into ``out`` (see the module docstring).

    Parameters
    ----------
    out : np.ndarray [shape=(N, C, H, W), dtype=float32 or float64], C in {1, 3}
        Overwritten with the model input: mono ``level * (1/255)``, RGB ``lut[level]``.
    q : np.ndarray [shape=(N, H, W), dtype=uint8], C-contiguous
    params : np.ndarray [shape=(N, 2 + 4M), dtype=int32]
        Per sample: time shift (columns), brightness shift (levels), M
        frequency masks (start row, height), M time masks (start column, width).
    lut : np.ndarray [shape=(256, 3), dtype=out.dtype] or None
        Colormap table; needed for C = 3.
    warp : np.ndarray [shape=(N, H), dtype=int32] or None
        VTLP frequency warp: output row ``r`` of sample ``n`` reads source row
        ``warp[n, r] / 256``, linearly interpolated in integers
        (``engine.reference.augment``, step 0); None: no warp.
    stretch : np.ndarray [shape=(N, W), dtype=int32] or None
        Time stretch: output column ``c`` reads source column ``stretch[n, c] / 256``
        (the floor outside the image), bilinear with the warp; None: no stretch.

    Raises
    ------
    ValueError
        On a wrong shape, dtype or layout, or warp rows outside the image.
    """
    rgb, m = _check_augment(out, q, params, lut, warp, stretch)
    lut_a = lut if rgb else np.zeros((1, 3), out.dtype)
    warped, stretched = warp is not None, stretch is not None
    warp_a = np.ascontiguousarray(warp) if warped else np.zeros((1, 1), np.int32)
    stretch_a = np.ascontiguousarray(stretch) if stretched else np.zeros((1, 1), np.int32)
    _run(out.size, _augment, out, q, np.ascontiguousarray(params), lut_a, m, rgb, MONO_SCALE, warp_a, warped,
         stretch_a, stretched)


def mixup_batch(out, targets, x, y, perm, lam):
    """mixup (Zhang et al. 2018): ``out = lam x + (1 - lam) x[perm]``, ``targets`` the mixed one-hot labels.

    Parameters
    ----------
    out : np.ndarray [shape=x.shape, dtype=x.dtype], C-contiguous, not ``x``
    targets : np.ndarray [shape=(N, K), dtype=x.dtype]
        Overwritten with ``lam onehot(y) + (1 - lam) onehot(y[perm])``.
    x : np.ndarray [shape=(N, ...), float32 or float64], C-contiguous
    y, perm : np.ndarray [shape=(N,), dtype=int64]
        Labels in ``[0, K)``; each sample's partner (a permutation of ``range(N)``).
    lam : float in [0, 1]

    Raises
    ------
    ValueError
        On wrong shapes or dtypes, ``out`` sharing memory with ``x``, labels
        or partners out of range, or ``lam`` outside [0, 1].
    """
    if x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous or x.ndim < 2:
        raise ValueError(f"x must be C-contiguous float32/float64 (N, ...), got {x.dtype} {x.shape}")
    n = x.shape[0]
    if out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {x.dtype} {x.shape}, got {out.dtype} {out.shape}")
    if np.shares_memory(out, x):
        raise ValueError("mixup_batch: out must not share memory with x")
    if targets.ndim != 2 or targets.shape[0] != n or targets.dtype != x.dtype or not targets.flags.c_contiguous:
        raise ValueError(f"targets must be C-contiguous {x.dtype} ({n}, K), got {targets.dtype} {targets.shape}")
    k = targets.shape[1]
    for name, a, hi in (("y", y, k), ("perm", perm, n)):
        if a.shape != (n,) or a.dtype != np.int64:
            raise ValueError(f"{name} must be int64 of shape ({n},), got {a.dtype} {a.shape}")
        if n and (int(a.min()) < 0 or int(a.max()) >= hi):
            raise ValueError(f"{name} must be in [0, {hi}), got range [{int(a.min())}, {int(a.max())}]")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"mixup lam must be in [0, 1], got {lam}")
    t = x.dtype.type
    _run(out.size, _mixup, out.reshape(n, -1), targets, x.reshape(n, -1), y, perm, t(lam), t(1.0 - float(lam)))


_M32 = 0xFFFFFFFF


@njit(cache=True, inline="always")
def _noise_hash(seed, r, c):
    x = (((seed * 0x9E3779B1) & _M32) + ((r * 0x85EBCA77) & _M32) + ((c * 0xC2B2AE3D) & _M32)) & _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x68E31DA5) & _M32
    x ^= x >> 16
    return x & 255


@njit(parallel=True, cache=True)
def _augment_noise(out, q, noise, dither, add):
    n, h, w = q.shape
    for i in prange(n):
        floor = np.int64(noise[i, 0])
        seed = np.int64(noise[i, 1])
        for c in range(w):
            clip_col = False
            for r in range(h):
                if q[i, r, c] != 0:
                    clip_col = True
                    break
            for r in range(h):
                a = np.int64(q[i, r, c])
                if floor >= 0 and clip_col:
                    b = floor + np.int64(dither[_noise_hash(seed, np.int64(r), np.int64(c))])
                    b = min(max(b, 0), 255)
                    hi = max(a, b)
                    a = min(hi + np.int64(add[abs(a - b)]), 255)
                out[i, r, c] = np.uint8(a)


def augment_noise(out, q, noise, dither, add):
    """Additive stationary noise on uint8 levels (``engine.reference.augment.augment_noise``), into ``out``.

    Parameters
    ----------
    out : np.ndarray [shape=(N, H, W), dtype=uint8], C-contiguous (may be ``q``)
    q : np.ndarray [shape=(N, H, W), dtype=uint8], C-contiguous
    noise : np.ndarray [shape=(N, 2), dtype=int32]
        Per sample ``(floor level, hash seed >= 0)``; ``floor < 0``: copied unchanged.
    dither, add : np.ndarray [shape=(256,), dtype=int32]
        ``engine.augment.noise_tables``: the noise's per-pixel spread and the power-sum table, in levels.

    Raises
    ------
    ValueError
        On a wrong shape, dtype or layout, or a negative seed.
    """
    for name, a in (("q", q), ("out", out)):
        if not isinstance(a, np.ndarray) or a.ndim != 3 or a.dtype != np.uint8 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous uint8 (N, H, W) array, got "
                             f"{getattr(a, 'dtype', type(a))} shape {getattr(a, 'shape', None)}")
    if out.shape != q.shape:
        raise ValueError(f"out {out.shape} and q {q.shape} differ")
    n = q.shape[0]
    if not isinstance(noise, np.ndarray) or noise.shape != (n, 2) or noise.dtype != np.int32:
        raise ValueError(f"noise must be int32 ({n}, 2), got {getattr(noise, 'dtype', type(noise))} "
                         f"{getattr(noise, 'shape', None)}")
    if n and int(noise[:, 1].min()) < 0:
        raise ValueError("noise seeds must be >= 0")
    for name, t in (("dither", dither), ("add", add)):
        if not isinstance(t, np.ndarray) or t.shape != (256,) or t.dtype != np.int32:
            raise ValueError(f"{name} must be int32 (256,), got {getattr(t, 'dtype', type(t))} "
                             f"{getattr(t, 'shape', None)}")
    _run(q.size, _augment_noise, out, q, np.ascontiguousarray(noise), dither, add)
