"""Float64 references of the batch-time augmentation kernels (``kernels/{cpu,gpu}/augment``).

Plain NumPy, slow and obviously correct; nothing here imports ``kernels/``.

``augment_batch``: the cached mono image of each sample (uint8 levels
``q = rint(255 x)``, ``(N, H, W)``) is turned into the model input
``(N, C, H, W)`` in four steps, per sample ``n`` with the integer parameters
of row ``params[n]`` (layout: :data:`P_SHIFT`, :data:`P_LEVEL`, then ``M``
frequency masks ``(start, width)``, then ``M`` time masks ``(start, width)``)
and, optionally, the fixed-point resampling tables ``warp[n]`` (rows) and
``stretch[n]`` (columns):

0. resampling (no table: the identity), in fixed point with 8 fraction bits:
   output row ``r`` reads the input at row ``warp[n, r] / 256`` and output
   column ``c`` at column ``stretch[n, c] / 256``, bilinearly interpolated in
   integers (:func:`resample_levels`; columns outside the image read level 0).
   ``warp`` is the frequency warp of vocal-tract-length perturbation (Jaitly
   and Hinton 2013, "Vocal tract length perturbation (VTLP) improves speech
   recognition"; :func:`vtlp_rows`); ``stretch`` a time stretch about the
   window's centre (:func:`stretch_columns`); together they are speed
   perturbation (Ko et al. 2015, "Audio augmentation for speech
   recognition": resampling the audio scales both axes);
1. time shift by ``s = params[n, 0]`` columns: output column ``w`` reads input
   column ``w - s``; columns shifted in from outside the window are level 0
   (the image's floor: silence);
2. brightness (gain) shift by ``g = params[n, 1]`` levels on every pixel,
   clipped to ``[0, 255]``: a gain of ``G`` dB is ``rint(255 G / top_db)``
   levels (the image spans at most ``top_db`` dB; a gain applied to the dB
   spectrogram *before* the per-image min-max scaling would be undone by it,
   hence the shift on the image);
3. SpecAugment masks (Park et al. 2019, "SpecAugment: a simple data
   augmentation method for automatic speech recognition", section 2): rows
   ``[f0, f0 + f)`` and columns ``[t0, t0 + t)`` set to level 0; a width of 0
   is no mask; ranges are clipped to the image.

The result is decoded as ``Dataset.decode`` does: mono ``q / 255`` (computed
as ``q * float32(1/255)``), RGB ``lut[q]`` (the 256-entry colormap
table). With all parameters 0 it is exactly the un-augmented batch.

``augment_noise`` (before step 0, on the cached levels: a property of the
recording): additive stationary noise, the power sum of the image and a noise
image, in levels. Per sample ``n`` with ``noise[n] = (floor, seed)``
(``floor < 0``: none), every pixel of a column that is not all level 0 (a
column of the clip; the padding of a short clip stays the floor) becomes
``min(255, max(a, b) + add[|a - b|])``, ``a`` the level, ``b = clip(floor +
dither[hash(seed, r, c) & 255], 0, 255)`` the noise's level there
(:func:`noise_hash`; ``dither`` the noise periodogram's spread in levels,
:func:`noise_tables`), ``add[k] = rint(L 10 log10(1 + 10^(-k / (10 L))))``
with ``L = 255 / top_db`` levels per dB: ``10 log10(10^(A/10) + 10^(B/10))``
in levels. Integer arithmetic and two host tables: bit-identical on both
backends.

``mixup_batch`` (Zhang et al. 2018, "mixup: beyond empirical risk
minimization"): ``x' = lam x + (1 - lam) x[perm]``, soft targets
``t = lam onehot(y) + (1 - lam) onehot(y[perm])``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["P_SHIFT", "P_LEVEL", "WARP_ONE", "VTLP_BOUNDARY", "n_params", "vtlp_rows", "warp_table",
           "stretch_columns", "stretch_table", "resample_levels", "augment_levels", "augment_batch", "mixup_batch",
           "noise_hash", "noise_tables", "augment_noise"]

#: Column of the time shift (in image columns) and of the brightness shift (in levels) in a params row.
P_SHIFT, P_LEVEL = 0, 1
#: One image row in the fixed-point warp table (8 fraction bits).
WARP_ONE = 256
#: Where VTLP's piecewise-linear warp bends, as a fraction of the top row (Jaitly and Hinton's F_hi).
VTLP_BOUNDARY = 0.8


def vtlp_rows(alpha, height: int, boundary: float = VTLP_BOUNDARY):
    """Source row of each output row under a VTLP frequency warp by ``alpha``, in float64.

    Jaitly and Hinton (2013), eq. 1, maps frequency ``f`` of the source to
    ``alpha f`` below ``F_b = F_hi min(alpha, 1) / alpha`` and linearly above,
    so that the top (Nyquist) stays the top. Here the frequency axis is the
    image's row index (row 0 the lowest frequency, ``T = height - 1`` the
    top, ``F_hi = boundary T``) and the image is resampled through the
    inverse map: output row ``r`` reads source row

    * ``u = r / alpha`` for ``r <= F_hi min(alpha, 1)``,
    * ``u = T - (T - r) (T - F_b) / (T - F_hi min(alpha, 1))`` above,

    continuous, increasing, ``u(0) = 0``, ``u(T) = T``; ``alpha > 1`` moves
    the content up (formants scaled by ``alpha``), ``alpha < 1`` down.

    Parameters
    ----------
    alpha : float > 0
    height : int >= 1
    boundary : float in (0, 1)

    Returns
    -------
    np.ndarray [shape=(height,), dtype=float64] in ``[0, height - 1]``
    """
    alpha = float(alpha)
    if not alpha > 0 or not 0.0 < boundary < 1.0:
        raise ValueError(f"vtlp_rows: alpha must be > 0 and boundary in (0, 1), got {alpha}, {boundary}")
    t = float(height - 1)
    r = np.arange(height, dtype=np.float64)
    if t <= 0:
        return r
    out_b = boundary * t * min(alpha, 1.0)  # output row of the bend
    src_b = out_b / alpha  # its source row (<= boundary t < t)
    u = np.where(r <= out_b, r / alpha, t - (t - r) * (t - src_b) / (t - out_b))
    return np.clip(u, 0.0, t)


def warp_table(alphas, height: int, boundary: float = VTLP_BOUNDARY):
    """The fixed-point warp table of :func:`augment_levels`: ``rint(256 vtlp_rows(alpha))`` per sample, int32 ``(N, H)``."""
    return np.stack([np.rint(WARP_ONE * vtlp_rows(a, height, boundary)) for a in np.asarray(alphas, np.float64)]
                    ).astype(np.int32).reshape(len(alphas), height)


def n_params(n_masks: int) -> int:
    """Columns of a params row for ``n_masks`` masks of each kind: ``2 + 4 n_masks``."""
    return 2 + 4 * int(n_masks)


def _check(q, params):
    q = np.asarray(q)
    if q.ndim != 3 or q.dtype != np.uint8:
        raise ValueError(f"q must be uint8 (N, H, W), got {q.dtype} shape {q.shape}")
    params = np.asarray(params)
    if params.ndim != 2 or params.shape[0] != q.shape[0] or (params.shape[1] - 2) % 4 or params.shape[1] < 2:
        raise ValueError(f"params must be (N, 2 + 4M) integers for N = {q.shape[0]}, got shape {params.shape}")
    return q, params.astype(np.int64)


def stretch_columns(beta, width: int):
    """Source column of each output column under a time stretch by ``beta`` about the centre, in float64.

    ``u = m + (c - m) / beta`` with ``m = (width - 1) / 2``: ``beta > 1``
    lengthens the content (slower speech), ``beta < 1`` shortens it; columns
    read from outside ``[0, width - 1]`` are the floor (level 0).
    """
    beta = float(beta)
    if not beta > 0:
        raise ValueError(f"stretch_columns: beta must be > 0, got {beta}")
    m = (width - 1) / 2.0
    return m + (np.arange(width, dtype=np.float64) - m) / beta


def stretch_table(betas, width: int):
    """Fixed-point stretch table: ``rint(256 stretch_columns(beta))`` per sample, int32 ``(N, W)``."""
    return np.stack([np.rint(WARP_ONE * stretch_columns(b, width)) for b in np.asarray(betas, np.float64)]
                    ).astype(np.int32).reshape(len(betas), width)


def resample_levels(q, warp=None, stretch=None):
    """Step 0: int64 ``(N, H, W)`` levels of ``q`` read at the fixed-point positions of the tables.

    With ``ur = warp[n, r]`` (in ``[0, 256 (H - 1)]``) and ``uc = stretch[n, c]``
    (any int32; ``r * 256`` and ``c * 256`` without a table): ``r0 = ur >> 8``,
    ``fr = ur & 255``, ``r1 = min(r0 + 1, H - 1)``, ``c0 = uc >> 8`` (floor),
    ``fc = uc & 255``, ``L(r, c) = q[r, c]`` inside the image and 0 for a
    column outside; ``A(c) = L(r0, c) (256 - fr) + L(r1, c) fr`` and the level
    is ``(A(c0) (256 - fc) + A(c0 + 1) fc + 32768) >> 16``. Without tables it
    is ``q`` exactly; with one table it is the 1-D linear interpolation
    ``(a (256 - f) + b f + 128) >> 8``.
    """
    q = np.asarray(q)
    n, h, w = q.shape
    if warp is None:
        ur = np.broadcast_to(np.arange(h, dtype=np.int64) * WARP_ONE, (n, h))
    else:
        ur = np.asarray(warp)
        if ur.shape != (n, h):
            raise ValueError(f"warp must be ({n}, {h}) integers, got shape {ur.shape}")
        ur = ur.astype(np.int64)
        if ur.min(initial=0) < 0 or ur.max(initial=0) > WARP_ONE * (h - 1):
            raise ValueError(f"warp entries must be in [0, {WARP_ONE * (h - 1)}]")
    if stretch is None:
        uc = np.broadcast_to(np.arange(w, dtype=np.int64) * WARP_ONE, (n, w))
    else:
        uc = np.asarray(stretch)
        if uc.shape != (n, w):
            raise ValueError(f"stretch must be ({n}, {w}) integers, got shape {uc.shape}")
        uc = uc.astype(np.int64)
    r0, fr = ur >> 8, ur & (WARP_ONE - 1)
    r1 = np.minimum(r0 + 1, h - 1)
    c0, fc = uc >> 8, uc & (WARP_ONE - 1)
    pad = np.zeros((n, h, w + 2), np.int64)  # L: columns -1 and w are the floor
    pad[:, :, 1:w + 1] = q
    out = np.empty((n, h, w), np.int64)
    for i in range(n):
        a0 = np.clip(c0[i], -1, w) + 1  # column index into pad (outside -> a floor column)
        a1 = np.clip(c0[i] + 1, -1, w) + 1
        rows0, rows1 = pad[i, r0[i]], pad[i, r1[i]]  # (h, w + 2)
        wr0, wr1 = (WARP_ONE - fr[i])[:, None], fr[i][:, None]
        A0 = rows0[:, a0] * wr0 + rows1[:, a0] * wr1
        A1 = rows0[:, a1] * wr0 + rows1[:, a1] * wr1
        out[i] = (A0 * (WARP_ONE - fc[i])[None] + A1 * fc[i][None] + 32768) >> 16
    return out


def augment_levels(q, params, warp=None, stretch=None):
    """Steps 0-3 of the module docstring on the levels: int64 ``(N, H, W)`` in ``[0, 255]``."""
    q, params = _check(q, params)
    n, h, w = q.shape
    m = (params.shape[1] - 2) // 4
    if warp is not None or stretch is not None:
        q = resample_levels(q, warp, stretch)
    out = np.zeros((n, h, w), np.int64)
    for i in range(n):
        s = int(params[i, P_SHIFT])
        src = np.arange(w) - s
        ok = (src >= 0) & (src < w)
        out[i][:, ok] = q[i][:, src[ok]]
        out[i] = np.clip(out[i] + int(params[i, P_LEVEL]), 0, 255)
        for k in range(m):
            f0, fw = int(params[i, 2 + 2 * k]), int(params[i, 3 + 2 * k])
            if fw > 0:
                out[i, max(f0, 0):max(min(f0 + fw, h), 0), :] = 0
            t0, tw = int(params[i, 2 + 2 * m + 2 * k]), int(params[i, 3 + 2 * m + 2 * k])
            if tw > 0:
                out[i, :, max(t0, 0):max(min(t0 + tw, w), 0)] = 0
    return out


def augment_batch(q, params, lut=None, warp=None, stretch=None):
    """Reference of ``kernels.*.augment.augment_batch``: float64 ``(N, C, H, W)``.

    Parameters
    ----------
    q : np.ndarray [shape=(N, H, W), dtype=uint8]
        Cached mono image levels.
    params : np.ndarray [shape=(N, 2 + 4M), integer]
        Per sample: time shift (columns), brightness shift (levels), M frequency
        masks (start row, height), M time masks (start column, width).
    lut : np.ndarray [shape=(256, 3)] or None
        Colormap table (RGB output, ``C = 3``); None gives mono (``C = 1``).
    warp : np.ndarray [shape=(N, H), integer] or None
        Fixed-point source row of each output row (:func:`warp_table`); None: no warp.
    stretch : np.ndarray [shape=(N, W), integer] or None
        Fixed-point source column of each output column (:func:`stretch_table`); None: no stretch.

    Returns
    -------
    np.ndarray [shape=(N, C, H, W), dtype=float64]
        Mono: ``level * float32(1/255)``, exact in float64 (rounded to
        float32 it is ``Dataset.decode``'s value); RGB: ``lut[level]``.

    Raises
    ------
    ValueError
        On a wrong dtype or shape.
    """
    lev = augment_levels(q, params, warp, stretch)
    if lut is None:
        return (lev * np.float64(np.float32(1.0 / 255.0)))[:, None]
    lut = np.asarray(lut, dtype=np.float64)
    if lut.shape != (256, 3):
        raise ValueError(f"lut must be (256, 3), got {lut.shape}")
    return lut[lev].transpose(0, 3, 1, 2).copy()


def mixup_batch(x, y, perm, lam, n_classes):
    """Reference mixup: ``(lam x + (1 - lam) x[perm], lam onehot(y) + (1 - lam) onehot(y[perm]))`` in float64.

    Parameters
    ----------
    x : np.ndarray [shape=(N, ...)]
    y : np.ndarray [shape=(N,), integer] in ``[0, n_classes)``
    perm : np.ndarray [shape=(N,), integer]
        Partner of each sample (a permutation of ``range(N)``).
    lam : float in [0, 1]
    n_classes : int

    Returns
    -------
    x_mix : np.ndarray [shape=x.shape, dtype=float64]
    targets : np.ndarray [shape=(N, n_classes), dtype=float64]
    """
    x = np.asarray(x, dtype=np.float64)
    y, perm = np.asarray(y), np.asarray(perm)
    if perm.shape != (x.shape[0],) or y.shape != (x.shape[0],):
        raise ValueError(f"y and perm must have shape ({x.shape[0]},), got {y.shape}, {perm.shape}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    eye = np.eye(n_classes)
    return lam * x + (1.0 - lam) * x[perm], lam * eye[y] + (1.0 - lam) * eye[y[perm]]


_M32 = 0xFFFFFFFF


def noise_hash(seed, r, c):
    """The noise's per-pixel index in ``[0, 255]``: a 32-bit integer hash of ``(seed, row, column)``.

    ``x = (seed 0x9E3779B1 + r 0x85EBCA77 + c 0xC2B2AE3D) mod 2^32`` (each product
    taken mod 2^32 first), then ``x ^= x >> 16; x = x 0x7FEB352D mod 2^32;
    x ^= x >> 15; x = x 0x68E31DA5 mod 2^32; x ^= x >> 16``; the low 8 bits.
    Works elementwise on integer arrays (int64; ``seed`` in ``[0, 2^31)``).
    """
    seed, r, c = (np.asarray(v, dtype=np.int64) for v in (seed, r, c))
    x = (((seed * 0x9E3779B1) & _M32) + ((r * 0x85EBCA77) & _M32) + ((c * 0xC2B2AE3D) & _M32)) & _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x68E31DA5) & _M32
    x ^= x >> 16
    return x & 255


def noise_tables(top_db: float = 80.0):
    """``(dither, add)``: int32 ``(256,)`` tables of :func:`augment_noise` for an image spanning ``top_db`` dB.

    ``dither[j] = rint(L 10 log10(g_j))``, ``g_j`` the ``(j + 0.5) / 256``
    quantile of a Gamma(2, 1/2) variable (unit mean: the power of white noise
    in one image pixel, about two STFT cells averaged by the resize), so the
    noise's mean power is its ``floor`` level; ``add[k] = rint(L 10 log10(1 +
    10^(-k / (10 L))))``, the power sum of two levels ``k`` apart above the
    louder; ``L = 255 / top_db``.
    """
    from scipy.stats import gamma

    lv = 255.0 / float(top_db)
    g = gamma.ppf((np.arange(256) + 0.5) / 256.0, a=2.0, scale=0.5)
    dither = np.rint(lv * 10.0 * np.log10(g)).astype(np.int32)
    k = np.arange(256, dtype=np.float64)
    add = np.rint(lv * 10.0 * np.log10(1.0 + 10.0 ** (-k / (10.0 * lv)))).astype(np.int32)
    return dither, add


def augment_noise(q, noise, dither, add):
    """Reference of ``kernels.*.augment.augment_noise``: uint8 ``(N, H, W)``, the levels with the noise added.

    Parameters
    ----------
    q : np.ndarray [shape=(N, H, W), dtype=uint8]
    noise : np.ndarray [shape=(N, 2), integer]
        Per sample ``(floor level, hash seed)``; ``floor < 0``: this sample is unchanged.
    dither, add : np.ndarray [shape=(256,), integer]
        :func:`noise_tables`.
    """
    q = np.asarray(q)
    if q.ndim != 3 or q.dtype != np.uint8:
        raise ValueError(f"q must be uint8 (N, H, W), got {q.dtype} shape {q.shape}")
    noise = np.asarray(noise, dtype=np.int64)
    n, h, w = q.shape
    if noise.shape != (n, 2):
        raise ValueError(f"noise must be ({n}, 2) integers, got shape {noise.shape}")
    dither, add = np.asarray(dither, np.int64), np.asarray(add, np.int64)
    out = q.copy()
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for i in range(n):
        floor, seed = int(noise[i, 0]), int(noise[i, 1])
        if floor < 0:
            continue
        a = q[i].astype(np.int64)
        b = np.clip(floor + dither[noise_hash(seed, rr, cc)], 0, 255)
        v = np.minimum(255, np.maximum(a, b) + add[np.abs(a - b)])
        cols = q[i].any(axis=0)  # columns of the clip (a padding column is all level 0)
        out[i][:, cols] = v[:, cols].astype(np.uint8)
    return out
