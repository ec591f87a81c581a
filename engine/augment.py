"""Batch-time data augmentation: settings, seeded parameters, and one function for either backend.

What it does to a training batch (definitions in :mod:`engine.reference.augment`;
kernels in ``kernels/{cpu,gpu}/augment``), on the cached uint8 mono levels
``q (N, H, W)`` before the colormap, so that mono and RGB models see the same
augmentation:

* random frequency warp (vocal-tract-length perturbation, Jaitly and Hinton
  2013): a factor ``alpha ~ U[1 - freq_warp, 1 + freq_warp]`` per image, the
  rows resampled through VTLP's piecewise-linear warp of the frequency axis
  (content scaled by ``alpha`` below 0.8 of the top row, the rest bent so the
  top stays the top; :func:`engine.reference.augment.vtlp_rows`). The axis is
  the image's rows: exact for the linear STFT image, an approximation for a
  mel image (whose rows are not linear in Hz);
* random time stretch: a factor ``beta ~ U[1 - time_stretch, 1 + time_stretch]``
  per image, the columns resampled about the window's centre (content
  ``beta`` times as long; columns read from outside are the floor;
  :func:`engine.reference.augment.stretch_columns`). With the warp it is speed
  perturbation (Ko et al. 2015) done on the image: both axes scaled;
* random stationary noise (``noise_db``), first, on the clip as cached (a
  property of the recording): with probability 1/2 a noise floor
  ``u ~ U[noise_db, top_db]`` dB below the image's peak, white in the image's
  rows and spread like a noise periodogram, is power-summed into every column
  of the clip (the padding of a short clip stays the floor;
  :func:`engine.reference.augment.augment_noise`): trained on clean speakers, a
  model sees their voices in a noisy room too;
* random time shift inside the window, up to ``time_shift`` x ``W`` columns
  either way (columns shifted in are the image's floor, level 0);
* random gain: up to ``gain_db`` dB either way, applied as the equivalent
  brightness shift of ``rint(255 g / top_db)`` levels on the [0, 1] image
  (the image spans at most ``top_db`` dB; a gain on the dB spectrogram before
  the per-image min-max scaling would be undone by the scaling);
* SpecAugment (Park et al. 2019, section 2): ``n_masks`` frequency masks of
  height ``f ~ U{0..freq_mask}`` at ``f0 ~ U{0..H-f}`` and ``n_masks`` time
  masks of width ``t ~ U{0..time_mask}`` at ``t0 ~ U{0..W-t}``, set to level 0;
* mixup (Zhang et al. 2018): ``lam ~ Beta(mixup, mixup)`` per batch, each
  sample mixed with ``perm[i]`` of a random permutation, soft targets
  ``lam onehot(y) + (1 - lam) onehot(y[perm])`` for the loss.

Determinism: the parameters of a batch are drawn on the host with NumPy from
``SeedSequence([seed, epoch, step, kind])``, one independent stream per kind
(shift, gain, masks, mixup, warp, stretch, noise), so turning one augmentation off leaves the
others' draws unchanged, the same ``(seed, epoch, step)`` gives the same
batch on the CPU and the GPU (the kernels are bit-identical for the same
parameters), and a resumed run draws exactly what an uninterrupted one did.
Evaluation and prediction never augment.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

import kernels

__all__ = ["AugmentConfig", "DEFAULT", "OFF", "draw_params", "draw_warp", "draw_stretch", "draw_noise",
           "noise_tables", "augment_batch", "config_problems"]

_KIND_SHIFT, _KIND_GAIN, _KIND_MASKS, _KIND_MIXUP, _KIND_WARP, _KIND_STRETCH, _KIND_NOISE = 1, 2, 3, 4, 5, 6, 7
#: the share of a batch's images that get noise when ``noise_db > 0`` (the others stay clean)
NOISE_SHARE = 0.5
#: VTLP: the warp bends at this fraction of the top row (Jaitly and Hinton's F_hi; engine.reference.augment's).
VTLP_BOUNDARY = 0.8


@dataclass(frozen=True)
class AugmentConfig:
    """Batch-time augmentation settings (all recorded in ``config.json``; zeros turn each off).

    Attributes
    ----------
    freq_mask : int >= 0
        SpecAugment ``F``: largest frequency-mask height, in image rows.
    time_mask : int >= 0
        SpecAugment ``T``: largest time-mask width, in image columns.
    n_masks : int >= 0
        SpecAugment masks of each kind per image (``m_F = m_T``).
    gain_db : float >= 0
        Largest random gain either way, in dB (applied as a brightness shift).
    time_shift : float in [0, 1]
        Largest random shift either way, as a fraction of the window width.
    mixup : float >= 0
        mixup's Beta(alpha, alpha) parameter (0: off).
    freq_warp : float in [0, 0.5]
        VTLP: largest warp of the frequency axis either way, the factor
        ``alpha ~ U[1 - freq_warp, 1 + freq_warp]`` (0: off; Jaitly and Hinton use 0.1).
    time_stretch : float in [0, 0.5]
        Largest time stretch either way, ``beta ~ U[1 - time_stretch, 1 + time_stretch]`` (0: off).
    noise_db : float >= 0
        Additive stationary noise: on :data:`NOISE_SHARE` of the images a noise
        floor ``u ~ U[noise_db, top_db]`` dB below the image's peak (the loudest
        noise ``noise_db`` dB down; 0: off).
    """

    freq_mask: int = 0
    time_mask: int = 0
    n_masks: int = 0
    gain_db: float = 0.0
    time_shift: float = 0.0
    mixup: float = 0.0
    freq_warp: float = 0.0
    time_stretch: float = 0.0
    noise_db: float = 0.0

    @property
    def masks_on(self) -> bool:
        return self.n_masks > 0 and (self.freq_mask > 0 or self.time_mask > 0)

    @property
    def image_on(self) -> bool:
        """Any augmentation of the image itself (warp, stretch, shift, gain or masks)."""
        return (self.masks_on or self.gain_db > 0 or self.time_shift > 0 or self.freq_warp > 0
                or self.time_stretch > 0 or self.noise_db > 0)

    @property
    def enabled(self) -> bool:
        return self.image_on or self.mixup > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "AugmentConfig":
        """From a ``config.json`` dict (unknown keys are ignored; missing ones take the off value)."""
        d = d or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: What ``train`` and ``grid`` use unless told otherwise (chosen on FSDD: see README, "Augmentation").
DEFAULT = AugmentConfig(freq_mask=12, time_mask=20, n_masks=2, gain_db=6.0, time_shift=0.1, mixup=0.2)
#: Everything off (``reproduce`` unless asked; evaluation always).
OFF = AugmentConfig()


def config_problems(cfg: AugmentConfig) -> list:
    """Every invalid setting as ``(field, value, expected)`` triples (empty: all valid)."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)

    bad = []
    for name in ("freq_mask", "time_mask", "n_masks"):
        v = getattr(cfg, name)
        if not is_int(v) or v < 0:
            bad.append((name, v, "an integer >= 0"))
    for name in ("gain_db", "mixup", "noise_db"):
        v = getattr(cfg, name)
        if not is_num(v) or v < 0:
            bad.append((name, v, "a finite number >= 0 (0: off)"))
    if not is_num(cfg.time_shift) or not 0.0 <= cfg.time_shift <= 1.0:
        bad.append(("time_shift", cfg.time_shift, "a fraction of the window in [0, 1]"))
    for name in ("freq_warp", "time_stretch"):
        v = getattr(cfg, name)
        if not is_num(v) or not 0.0 <= v <= 0.5:
            bad.append((name, v, "a factor range in [0, 0.5] (0: off)"))
    return bad


def _rng(seed, epoch, step, kind):
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(step), kind]))


def draw_params(cfg: AugmentConfig, seed: int, epoch: int, step: int, n: int, height: int, width: int,
                top_db: float = 80.0):
    """The augmentation parameters of batch ``step`` of ``epoch`` (host NumPy, seeded; see the module docstring).

    Returns
    -------
    params : np.ndarray [shape=(n, 2 + 4 n_masks), dtype=int32]
        Per sample: time shift (columns), brightness shift (levels), the
        frequency masks ``(f0, f)`` then the time masks ``(t0, t)``
        (:mod:`engine.reference.augment`'s layout). Zeros where a kind is off.
    perm : np.ndarray [shape=(n,), dtype=int64] or None
        mixup partners (None when mixup is off).
    lam : float or None
        mixup weight of each sample itself.
    """
    m = int(cfg.n_masks) if cfg.masks_on else 0
    params = np.zeros((n, 2 + 4 * m), np.int32)
    if cfg.time_shift > 0:
        s = int(round(cfg.time_shift * width))
        params[:, 0] = _rng(seed, epoch, step, _KIND_SHIFT).integers(-s, s + 1, n)
    if cfg.gain_db > 0:
        g = _rng(seed, epoch, step, _KIND_GAIN).uniform(-cfg.gain_db, cfg.gain_db, n)
        params[:, 1] = np.rint(255.0 * g / float(top_db)).astype(np.int32)
    if m:
        r = _rng(seed, epoch, step, _KIND_MASKS)
        for axis, big, size in ((0, cfg.freq_mask, height), (1, cfg.time_mask, width)):
            big = min(int(big), size)
            wid = r.integers(0, big + 1, (n, m))
            start = np.floor(r.random((n, m)) * (size - wid + 1)).astype(np.int64)
            col = 2 + 2 * m * axis
            params[:, col:col + 2 * m:2] = start
            params[:, col + 1:col + 2 * m:2] = wid
    perm = lam = None
    if cfg.mixup > 0:
        r = _rng(seed, epoch, step, _KIND_MIXUP)
        lam = float(r.beta(cfg.mixup, cfg.mixup))
        perm = r.permutation(n).astype(np.int64)
    return params, perm, lam


def draw_warp(cfg: AugmentConfig, seed: int, epoch: int, step: int, n: int, height: int):
    """The VTLP warp of batch ``step`` of ``epoch``: ``(table, alpha)`` or ``(None, None)`` when off.

    ``alpha (n,)`` float64 ``~ U[1 - freq_warp, 1 + freq_warp]`` from its own
    stream ``SeedSequence([seed, epoch, step, 5])``; ``table (n, height)``
    int32 the fixed-point source row of each output row,
    ``rint(256 u(r))`` of VTLP's inverse warp ``u`` (see
    :func:`engine.reference.augment.vtlp_rows`, which defines it in float64;
    this is the same arithmetic, kept here so the product does not import the reference).
    """
    if not cfg.freq_warp > 0:
        return None, None
    w = float(cfg.freq_warp)
    alpha = _rng(seed, epoch, step, _KIND_WARP).uniform(1.0 - w, 1.0 + w, n)
    t = float(height - 1)
    r = np.arange(height, dtype=np.float64)
    if t <= 0:
        return np.zeros((n, height), np.int32), alpha
    a = alpha[:, None]
    out_b = VTLP_BOUNDARY * t * np.minimum(a, 1.0)
    src_b = out_b / a
    u = np.where(r <= out_b, r / a, t - (t - r) * (t - src_b) / (t - out_b))
    return np.rint(256.0 * np.clip(u, 0.0, t)).astype(np.int32), alpha


def draw_stretch(cfg: AugmentConfig, seed: int, epoch: int, step: int, n: int, width: int):
    """The time stretch of batch ``step`` of ``epoch``: ``(table, beta)`` or ``(None, None)`` when off.

    ``beta (n,)`` float64 ``~ U[1 - time_stretch, 1 + time_stretch]`` from
    ``SeedSequence([seed, epoch, step, 6])``; ``table (n, width)`` int32
    ``rint(256 u(c))`` with ``u(c) = m + (c - m) / beta``, ``m = (width - 1) / 2``
    (:func:`engine.reference.augment.stretch_columns`).
    """
    if not cfg.time_stretch > 0:
        return None, None
    s = float(cfg.time_stretch)
    beta = _rng(seed, epoch, step, _KIND_STRETCH).uniform(1.0 - s, 1.0 + s, n)
    m = (width - 1) / 2.0
    u = m + (np.arange(width, dtype=np.float64)[None, :] - m) / beta[:, None]
    return np.rint(256.0 * u).astype(np.int32), beta


def noise_tables(top_db: float = 80.0):
    """``(dither, add)`` int32 ``(256,)``: the noise's per-pixel spread and the power-sum table, in levels.

    The same arithmetic as :func:`engine.reference.augment.noise_tables` (which
    defines them; kept here so the product does not import the reference), cached per ``top_db``.
    """
    return _noise_tables(float(top_db))


@lru_cache(maxsize=4)
def _noise_tables(top_db):
    from scipy.stats import gamma

    lv = 255.0 / top_db
    g = gamma.ppf((np.arange(256) + 0.5) / 256.0, a=2.0, scale=0.5)
    dither = np.rint(lv * 10.0 * np.log10(g)).astype(np.int32)
    k = np.arange(256, dtype=np.float64)
    add = np.rint(lv * 10.0 * np.log10(1.0 + 10.0 ** (-k / (10.0 * lv)))).astype(np.int32)
    dither.setflags(write=False)
    add.setflags(write=False)
    return dither, add


def draw_noise(cfg: AugmentConfig, seed: int, epoch: int, step: int, n: int, top_db: float = 80.0):
    """The noise of batch ``step`` of ``epoch``: int32 ``(n, 2)`` rows ``(floor level, hash seed)``, or None when off.

    From ``SeedSequence([seed, epoch, step, 7])``: each image is noisy with
    probability :data:`NOISE_SHARE`; its floor ``u ~ U[min(noise_db, top_db), top_db]``
    dB below the peak is the level ``rint(255 (1 - u / top_db))`` (-1 for a clean image); the
    seed ``~ U{0 .. 2^31 - 1}`` keys the per-pixel spread.
    """
    if not cfg.noise_db > 0:
        return None
    r = _rng(seed, epoch, step, _KIND_NOISE)
    top = float(top_db)
    on = r.random(n) < NOISE_SHARE
    u = r.uniform(min(float(cfg.noise_db), top), top, n)
    seeds = r.integers(0, 2 ** 31, n)
    out = np.empty((n, 2), np.int32)
    out[:, 0] = np.where(on, np.rint(255.0 * (1.0 - u / top)), -1).astype(np.int32)
    out[:, 1] = seeds
    return out


def augment_batch(q, y, cfg: AugmentConfig, seed: int, epoch: int, step: int, n_classes: int, lut=None,
                  top_db: float = 80.0, bufs=None, dtype=np.float32):
    """Augment and decode one training batch on the backend that holds ``q`` (``kernels.backend_for``).

    Parameters
    ----------
    q : np.ndarray or cupy.ndarray [shape=(N, H, W), dtype=uint8]
        The batch's cached mono levels (crop windows already cut).
    y : array [shape=(N,), dtype=int64], same backend as ``q``
        Class indices.
    cfg : AugmentConfig
    seed, epoch, step : int
        The run seed, the 0-based epoch and the 0-based batch index within it.
    n_classes : int
    lut : array [shape=(256, 3), dtype] or None
        Colormap table on ``q``'s backend for RGB models (None: mono).
    top_db : float
        dB span of the image (``SpectrogramConfig.top_db``), for the gain.
    bufs : dict or None
        Reused output buffers (keyed by shape; e.g. one per training loop on
        the GPU); None allocates fresh arrays (safe in a prefetch thread that
        prepares batches ahead).
    dtype : float32 or float64

    Returns
    -------
    x : array [shape=(N, C, H, W), dtype], C = 3 with ``lut`` else 1
    targets : array
        ``y`` itself when mixup is off; else float ``(N, n_classes)`` soft targets.

    Raises
    ------
    ValueError
        On bad shapes or dtypes (from the kernels) or an invalid ``cfg``.
    """
    bad = config_problems(cfg)
    if bad:
        raise ValueError("AugmentConfig: " + "; ".join(f"{f} = {v!r}, expected {e}" for f, v, e in bad))
    kb = kernels.backend_for(q)
    xp = kb.xp
    n, h, w = q.shape
    c = 1 if lut is None else 3

    def buf(name, shape, dt):
        if bufs is None:
            return xp.empty(shape, dtype=dt)
        from engine.layers import cached_buffer

        return cached_buffer(bufs, name, shape, dt, xp)

    noise = draw_noise(cfg, seed, epoch, step, n, top_db)
    if noise is not None:  # first, on the cached levels (a property of the recording)
        dither, add = noise_tables(top_db)
        qn = buf("q_noise", (n, h, w), np.uint8)
        kb.augment.augment_noise(qn, q, _to_backend(noise, xp, bufs, "noise"), _to_backend(dither, xp, bufs, "dither"),
                             _to_backend(add, xp, bufs, "add"))
        q = qn
    params, perm, lam = draw_params(cfg, seed, epoch, step, n, h, w, top_db)
    params_d = _to_backend(params, xp, bufs, "params")
    warp, _ = draw_warp(cfg, seed, epoch, step, n, h)
    warp_d = None if warp is None else _to_backend(warp, xp, bufs, "warp")
    stretch, _ = draw_stretch(cfg, seed, epoch, step, n, w)
    stretch_d = None if stretch is None else _to_backend(stretch, xp, bufs, "stretch")
    x = buf("x", (n, c, h, w), dtype)
    kb.augment.augment_batch(x, q, params_d, lut, warp_d, stretch_d)
    if perm is None:
        return x, y
    xm = buf("x_mix", (n, c, h, w), dtype)
    t = buf("targets", (n, int(n_classes)), dtype)
    kb.augment.mixup_batch(xm, t, x, y, _to_backend(perm, xp, bufs, "perm"), lam)
    return xm, t


def _to_backend(a, xp, bufs, name):
    """Host array ``a`` on ``xp``'s device: NumPy as is; CuPy into a reused buffer when ``bufs`` is given."""
    if xp is np:
        return a
    if bufs is None:
        return xp.asarray(a)
    from engine.layers import cached_buffer

    b = cached_buffer(bufs, "h2d_" + name, a.shape, a.dtype, xp)
    b.set(a)
    return b


class LevelBatches:
    """A view of a ``pipeline.dataset.Dataset`` whose batches are the cached uint8 levels, not decoded images.

    ``batches(split, batch_size, shuffle, seed, ..., windows=)`` yields ``(q uint8 (N, H, W), y int64 (N,))``:
    ``Dataset.batches(..., levels=True)``, the same rows and crop windows in the same
    order, so :func:`augment_batch` with :data:`OFF` gives ``Dataset.batches``' ``x`` bit
    for bit. The training loop feeds these to :func:`augment_batch` on its device.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def batches(self, split="train", batch_size=32, shuffle=True, seed=0, mode=None, drop_last=False, windows=None):
        return self.dataset.batches(split, batch_size, shuffle=shuffle, seed=seed, mode=mode, drop_last=drop_last,
                                    windows=windows, levels=True)
