"""Spectrogram images: audio clip -> STFT (or mel) -> dB -> image -> (C, H, W) windows in [0, 1].

The per-track chain of the paper (Figure 2): a random 10 s window of each 30 s
clip, its spectrogram in dB, resized to H x W = 102 x 159 (frequency x time),
scaled to [0, 1] per image, mono (1 channel) or RGB (3 channels through a
matplotlib colormap, 'viridis' by default).

Conventions
-----------
- dB (librosa 0.11 ``power_to_db`` / ``amplitude_to_db``):
  ``10 log10(max(amin, S)) - 10 log10(max(amin, ref))`` floored at
  ``max - top_db``; ``amin = 1e-10`` for power (``1e-5`` for amplitude, i.e.
  the same floor on ``|S|**2``), ``top_db = 80``. Digital silence gives
  ``10 log10(amin) = -100 dB``, finite. The chain applies dB exactly once, to
  the power ``|D|**2`` (equal to ``amplitude_to_db(|D|)``).
- Linear STFT (the paper's default): ``amplitude_to_db(|stft(y)|, ref=1.0)``.
  Mel: ``power_to_db(mel_filterbank @ |stft(y)|**2, ref=1.0)`` with librosa's
  Slaney filterbank (``htk=False, norm='slaney'``).
- Image: row 0 is the lowest frequency (DC / lowest mel band), column 0 the
  earliest frame. Resize by a separable linear map ``R_h @ S_db @ R_w.T``
  (applied as sparse matrices, no BLAS):
  area averaging (each output cell is the length-weighted mean of the input
  cells it covers, OpenCV's INTER_AREA) when shrinking an axis, bilinear with
  half-pixel centres (PyTorch ``align_corners=False``, edges clamped) when
  enlarging it. Then per-image min-max to [0, 1]; a constant image (silence)
  becomes zeros. NaN or inf raises.
- The transform has two halves, defined here and nowhere else: the *cached
  half* (:func:`mono_image`, :func:`track_clip`: audio -> mono image of the
  whole clip in [0, 1], stored by the dataset cache as uint8 :func:`quantize`
  = ``rint(255 x)``) and the *read-time half* (:func:`window_starts` +
  :func:`cut_windows`: the ``width``-column crop windows, then
  :func:`model_input`: uint8 mono -> model input; 'mono' is ``q / 255``,
  'rgb' the colormap applied exactly once, through the 256-entry table
  :func:`colormap_lut`, alpha dropped, channels first). The cache builder,
  ``Dataset`` batches, ``evaluate``, ``predict`` (:func:`track_images`, the
  whole chain in one call) and ``inspect`` all go through these.
- Clip: the whole file, or its centred ``n_clip`` samples (``clip_seconds``,
  default 3 crops = 30 s: an FMA clip). Only the clip is decoded (soundfile
  seek); the whole file only when the header's length proves wrong. Its image
  is ``config.columns(n)`` wide: ``width`` columns per ``crop_seconds``, dB
  floor and min-max over the clip, so a window is a plain slice.
- Windows (the paper's "random 10 s crop", cut at batch time, :class:`Windows`):
  'random' draws a new window per epoch from ``(seed, epoch, key)`` (``key`` =
  track id, or a CRC32 of the file name), 'fixed' one per track from
  ``(seed, key)``, 'even' takes ``n`` evenly spaced windows (evaluation and
  prediction average their probabilities). A clip shorter than a crop is
  placed inside the window (at a random offset in training, evenly spaced
  placements in evaluation), the rest of the window the image floor (status
  'padded'); a clip with less real audio than one STFT frame (``n_fft``
  samples: nothing to learn from, e.g. a truncated mp3 that decodes to 47
  samples) raises :class:`~pipeline.errors.PipelineError`.
- :func:`crop` decodes one seeded ``crop_seconds`` window alone (benchmarks
  and tests of the decoder's seeking); :func:`to_image` is both halves on one
  spectrogram.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zlib
from functools import lru_cache

import numpy as np

from . import audio
from .errors import PipelineError
from .stft import stft

__all__ = [
    "SpectrogramConfig", "power_to_db", "amplitude_to_db", "mel_filterbank", "hz_to_mel",
    "mel_to_hz", "resize_matrix", "resize", "spectrogram_db", "mono_image", "quantize", "model_input",
    "to_image", "colormap_lut", "crop", "clip", "track_clip", "track_images", "track_key", "Windows",
    "WINDOW_RULES", "window_starts", "cut_windows",
]

MODES = ("mono", "rgb")
SPECTROGRAMS = ("stft", "mel")


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig:
    """Every parameter of the audio -> image chain (all go into the cache hash).

    Attributes
    ----------
    sr : int
        Sample rate in Hz the audio is resampled to (22050).
    crop_seconds : float
        Length of the random crop in seconds (10.0, the paper's).
    n_fft : int
        STFT size in samples (2048 = 93 ms at 22050 Hz).
    hop_length : int
        STFT hop in samples (512 = 23 ms at 22050 Hz).
    spectrogram : {'stft', 'mel'}
        Linear STFT magnitude (the paper's) or a Slaney mel spectrogram.
    n_mels : int
        Mel bands when ``spectrogram='mel'`` (128).
    mode : {'mono', 'rgb'}
        1-channel grey image or 3-channel colormapped image.
    height, width : int
        Image size H x W (102 x 159, the paper's), frequency x time.
    colormap : str
        Matplotlib colormap name for 'rgb' ('viridis').
    top_db : float
        Dynamic range floor below the maximum, in dB (80).
    pad_mode : str
        STFT centring pad mode ('constant', librosa 0.11's).
    clip_seconds : float or None
        Longest stretch of each file that is cached (the *clip*, from which
        the ``crop_seconds`` windows are cut at batch time): the centred
        ``clip_seconds`` of a longer file. None: 3 x ``crop_seconds`` (30 s
        at the paper's settings, an FMA clip's length).
    """

    sr: int = 22050
    crop_seconds: float = 10.0
    n_fft: int = 2048
    hop_length: int = 512
    spectrogram: str = "stft"
    n_mels: int = 128
    mode: str = "mono"
    height: int = 102
    width: int = 159
    colormap: str = "viridis"
    top_db: float = 80.0
    pad_mode: str = "constant"
    clip_seconds: float | None = None

    def __post_init__(self):
        for name in ("sr", "n_fft", "hop_length", "n_mels", "height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise PipelineError(f"SpectrogramConfig.{name} must be a positive integer, got {v!r}")
        if not (math.isfinite(self.crop_seconds) and self.crop_seconds > 0):
            raise PipelineError(f"SpectrogramConfig.crop_seconds must be > 0, got {self.crop_seconds!r}")
        if self.spectrogram not in SPECTROGRAMS:
            raise PipelineError(
                f"SpectrogramConfig.spectrogram must be one of {SPECTROGRAMS}, got {self.spectrogram!r}")
        if self.mode not in MODES:
            raise PipelineError(f"SpectrogramConfig.mode must be one of {MODES}, got {self.mode!r}")
        if not (self.top_db is None or self.top_db >= 0):
            raise PipelineError(f"SpectrogramConfig.top_db must be None or >= 0, got {self.top_db!r}")
        if self.n_fft < 2:  # one STFT frame needs two samples (pipeline.stft): refuse before any decoding
            raise PipelineError(f"SpectrogramConfig.n_fft must be an integer >= 2, got {self.n_fft!r}")
        if self.n_crop < self.n_fft // 2 + 1:
            raise PipelineError(
                f"crop of {self.crop_seconds} s at {self.sr} Hz = {self.n_crop} samples is shorter than "
                f"half a frame (n_fft={self.n_fft})")
        if self.clip_seconds is not None and not (
                isinstance(self.clip_seconds, (int, float)) and math.isfinite(self.clip_seconds)
                and self.clip_seconds >= self.crop_seconds):
            raise PipelineError(f"SpectrogramConfig.clip_seconds must be None or >= crop_seconds "
                                f"({self.crop_seconds}), got {self.clip_seconds!r}")
        if self.mode == "rgb":
            colormap_lut(self.colormap)  # raises on an unknown name

    @property
    def n_crop(self) -> int:
        """Crop length in samples, ``round(crop_seconds * sr)``."""
        return int(round(self.crop_seconds * self.sr))

    @property
    def n_clip(self) -> int:
        """Longest cached clip in samples, ``round(clip_seconds * sr)`` (3 crops when ``clip_seconds`` is None)."""
        seconds = 3.0 * self.crop_seconds if self.clip_seconds is None else float(self.clip_seconds)
        return int(round(seconds * self.sr))

    def columns(self, n_samples: int) -> int:
        """Image columns of ``n_samples`` of audio: the crop's ``width`` columns per ``crop_seconds``.

        ``round(frames(n) * width / frames(n_crop))`` with ``frames(n) = 1 + n // hop_length``
        (centred STFT), at least 1: a clip is resized along time at the same
        frames-per-column ratio as one crop, so a ``crop_seconds`` window of
        the clip's image spans ``width`` columns; ``columns(n_crop) == width``.
        """
        frames = 1 + int(n_samples) // self.hop_length
        return max(1, int(round(frames * self.width / (1 + self.n_crop // self.hop_length))))

    @property
    def clip_width(self) -> int:
        """Columns of the longest clip, ``columns(n_clip)`` (>= ``width``): the cache's row width."""
        return self.columns(self.n_clip)

    @property
    def n_channels(self) -> int:
        """1 for 'mono', 3 for 'rgb'."""
        return 1 if self.mode == "mono" else 3

    @property
    def image_shape(self) -> tuple:
        """``(C, H, W)`` of one image."""
        return (self.n_channels, self.height, self.width)

    def to_dict(self) -> dict:
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpectrogramConfig":
        """Inverse of :meth:`to_dict` (unknown keys raise PipelineError)."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise PipelineError(f"unknown SpectrogramConfig fields: {sorted(extra)}")
        return cls(**d)

    def hash(self, **extra) -> str:
        """SHA-256 (hex) of the fields plus ``extra`` (sorted JSON)."""
        blob = json.dumps({**self.to_dict(), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- dB

def power_to_db(S, ref=1.0, amin: float = 1e-10, top_db: float | None = 80.0):
    """Power spectrogram to decibels (librosa.power_to_db convention).

    Parameters
    ----------
    S : np.ndarray [real, >= 0]
        Power, e.g. ``|D|**2``.
    ref : float or callable
        Reference power: ``10 log10(max(amin, |ref|))`` is subtracted; a
        callable (``np.max``) is applied to ``S``.
    amin : float > 0
        Floor on ``S`` and ``ref`` (1e-10 -> -100 dB), so silence is finite.
    top_db : float >= 0 or None
        Floor the output at ``max - top_db`` dB (80).

    Returns
    -------
    np.ndarray [shape=S.shape, dtype=float32 for float32 input]
        ``max(10 log10(max(amin, S)) - 10 log10(max(amin, ref)), max - top_db)``.

    Raises
    ------
    PipelineError
        ``amin <= 0``, ``top_db < 0`` or complex ``S``.
    """
    S = np.asarray(S)
    if amin <= 0:
        raise PipelineError(f"amin must be strictly positive, got {amin!r}")
    if np.iscomplexobj(S):
        raise PipelineError("power_to_db got a complex array: pass np.abs(D)**2 (power)")
    ref_value = ref(S) if callable(ref) else np.abs(ref)
    log_spec = 10.0 * np.log10(np.maximum(amin, S))
    log_spec -= 10.0 * np.log10(np.maximum(amin, ref_value))
    if top_db is not None:
        if top_db < 0:
            raise PipelineError(f"top_db must be non-negative, got {top_db!r}")
        np.maximum(log_spec, log_spec.max() - top_db, out=log_spec)
    return log_spec


def amplitude_to_db(S, ref=1.0, amin: float = 1e-5, top_db: float | None = 80.0):
    """Amplitude spectrogram to decibels (librosa.amplitude_to_db convention).

    ``power_to_db(|S|**2, ref=|ref|**2, amin=amin**2, top_db)``: ``20 log10``
    of the amplitude, floored at ``amin = 1e-5`` (= 1e-10 in power, -100 dB).

    Parameters
    ----------
    S : np.ndarray
        Amplitude (complex input uses its magnitude).
    ref : float or callable
        Reference amplitude (a callable is applied to ``|S|``).
    amin : float > 0
        Amplitude floor.
    top_db : float >= 0 or None
        Dynamic range in dB (80).

    Returns
    -------
    np.ndarray [shape=S.shape, real]
    """
    magnitude = np.abs(np.asarray(S))
    ref_value = ref(magnitude) if callable(ref) else np.abs(ref)
    return power_to_db(np.square(magnitude), ref=ref_value ** 2, amin=amin ** 2, top_db=top_db)


# ---------------------------------------------------------------- mel

def hz_to_mel(f):
    """Hz -> mel, Slaney scale (librosa ``htk=False``): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz,
                    min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mels)


def mel_to_hz(m):
    """Mel -> Hz, Slaney scale (inverse of :func:`hz_to_mel`)."""
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def _mel_fb(sr, n_fft, n_mels, fmin, fmax):
    fftfreqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def _sparse_mel(sr, n_fft, n_mels):
    from scipy.sparse import csr_matrix

    return csr_matrix(mel_filterbank(sr, n_fft, n_mels))


def mel_filterbank(sr: int = 22050, n_fft: int = 2048, n_mels: int = 128, fmin: float = 0.0,
                   fmax: float | None = None):
    """Slaney mel filterbank, equal to ``librosa.filters.mel(htk=False, norm='slaney')``.

    Parameters
    ----------
    sr : int > 0
        Sample rate in Hz.
    n_fft : int > 0
        FFT size; the bank applies to ``1 + n_fft // 2`` bins.
    n_mels : int > 0
        Number of triangular bands (128).
    fmin, fmax : float
        Band edges in Hz (0 and ``sr / 2`` by default).

    Returns
    -------
    np.ndarray [shape=(n_mels, 1 + n_fft // 2), dtype=float32]
        Triangles on the Slaney mel scale, each scaled by
        ``2 / (f[i + 2] - f[i])`` (area normalisation). Read-only (cached).

    Raises
    ------
    PipelineError
        Non-positive sizes or ``fmin >= fmax``.
    """
    fmax = sr / 2.0 if fmax is None else float(fmax)
    if sr <= 0 or n_fft <= 0 or n_mels <= 0 or not (0 <= fmin < fmax):
        raise PipelineError(
            f"bad mel filterbank parameters: sr={sr}, n_fft={n_fft}, n_mels={n_mels}, fmin={fmin}, fmax={fmax}")
    return _mel_fb(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax))


# ---------------------------------------------------------------- images

@lru_cache(maxsize=32)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    R = np.zeros((n_out, n_in), np.float64)
    if n_out <= n_in:  # area: overlap of [j, j+1) * n_in/n_out with input cells
        scale = n_in / n_out
        for j in range(n_out):
            a, b = j * scale, (j + 1) * scale
            i0, i1 = int(math.floor(a)), min(int(math.ceil(b)), n_in)
            for i in range(i0, i1):
                R[j, i] = min(b, i + 1) - max(a, i)
            R[j] /= scale
    else:  # bilinear, half-pixel centres, clamped edges
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        R[np.arange(n_out), i0] += 1.0 - frac
        R[np.arange(n_out), i1] += frac
    out = R.astype(np.float32)
    out.setflags(write=False)
    return out


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear resampling operator along one axis (rows sum to 1).

    Parameters
    ----------
    n_in, n_out : int > 0
        Input and output lengths.

    Returns
    -------
    np.ndarray [shape=(n_out, n_in), dtype=float32]
        Area averaging when ``n_out <= n_in`` (OpenCV INTER_AREA), bilinear
        with half-pixel centres (PyTorch ``align_corners=False``) otherwise.
    """
    if n_in <= 0 or n_out <= 0:
        raise PipelineError(f"resize lengths must be positive, got n_in={n_in}, n_out={n_out}")
    return _resize_matrix(int(n_in), int(n_out))


@lru_cache(maxsize=32)
def _sparse_matrix(n_in: int, n_out: int):
    from scipy.sparse import csr_matrix

    return csr_matrix(resize_matrix(n_in, n_out))


def resize(S, height: int, width: int) -> np.ndarray:
    """Resize a 2-D array to (height, width): ``R_h @ S @ R_w.T`` with :func:`resize_matrix`.

    The operators are applied as sparse (CSR) matrices: each output cell reads
    only the few input cells it covers, single-threaded. (A dense BLAS product
    of this size costs 50x more when OpenBLAS spreads it over the threads of a
    loaded machine.)

    Parameters
    ----------
    S : np.ndarray [shape=(n_bins, n_frames)]
    height, width : int > 0

    Returns
    -------
    np.ndarray [shape=(height, width), dtype=float32]
        Equal to ``resize_matrix(n_bins, height) @ S @ resize_matrix(n_frames, width).T``.
    """
    S = np.asarray(S, dtype=np.float32)
    if S.ndim != 2 or S.size == 0:
        raise PipelineError(f"resize expects a non-empty 2-D (n_bins, n_frames) array, got shape {S.shape}")
    if height <= 0 or width <= 0:
        raise PipelineError(f"resize size must be positive, got {(height, width)}")
    rows = _sparse_matrix(S.shape[0], int(height)) @ S                    # (height, n_frames)
    out = _sparse_matrix(S.shape[1], int(width)) @ np.ascontiguousarray(rows.T)  # (width, height)
    return np.ascontiguousarray(out.T, dtype=np.float32)


@lru_cache(maxsize=8)
def colormap_lut(name: str = "viridis") -> np.ndarray:
    """256-entry RGB table of a matplotlib colormap, alpha dropped.

    Returns
    -------
    np.ndarray [shape=(256, 3), dtype=float32]
        ``matplotlib.colormaps[name](np.arange(256) / 255)[:, :3]``; entry ``q``
        is the colour of every value in ``[q/256, (q+1)/256)`` (matplotlib
        quantises to 256 levels), so ``lut[uint8 image]`` is the colormap.

    Raises
    ------
    PipelineError
        Unknown colormap name.
    """
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as exc:
        raise PipelineError(f"unknown matplotlib colormap {name!r}") from exc
    lut = cmap(np.arange(256) / 255.0)[:, :3].astype(np.float32)
    lut.setflags(write=False)
    return lut


def spectrogram_db(y, config: SpectrogramConfig) -> np.ndarray:
    """dB spectrogram of a mono signal with the config's transform.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
        Audio at ``config.sr``.
    config : SpectrogramConfig

    Returns
    -------
    np.ndarray [shape=(n_bins, n_frames), dtype=float32]
        ``n_bins = 1 + n_fft // 2`` (stft) or ``n_mels`` (mel); row 0 lowest
        frequency; ``n_frames = 1 + n // hop_length``. dB re 1.0 (full-scale
        sine amplitude ~ n_fft/4), floored at ``max - top_db``.
    """
    D = stft(y, n_fft=config.n_fft, hop_length=config.hop_length, center=True,
             pad_mode=config.pad_mode)
    power = np.square(D.real) + np.square(D.imag)  # |D|**2, float32
    if config.spectrogram == "mel":
        power = _sparse_mel(config.sr, config.n_fft, config.n_mels) @ power  # no BLAS threads
    # power_to_db(power, ref=1.0, amin=1e-10, top_db) computed in place (power is ours)
    np.maximum(power, np.float32(1e-10), out=power)
    np.log10(power, out=power)
    power *= np.float32(10.0)
    if config.top_db is not None:
        np.maximum(power, power.max() - np.float32(config.top_db), out=power)
    return power


def mono_image(S_db, config: SpectrogramConfig, width: int | None = None) -> np.ndarray:
    """dB spectrogram -> the mono image in [0, 1]: the *cached half* of the transform.

    Parameters
    ----------
    S_db : np.ndarray [shape=(n_bins, n_frames), real]
        dB spectrogram (row 0 lowest frequency).
    config : SpectrogramConfig
        ``height`` and ``width`` are used (``mode`` and ``colormap`` are not:
        they belong to the read-time half, :func:`model_input`).
    width : int or None
        Columns of the result (None: ``config.width``); a whole clip uses
        ``config.columns(n_samples)``.

    Returns
    -------
    np.ndarray [shape=(height, width), dtype=float32] in [0, 1]
        Resized dB, min-max scaled over the whole image; a constant input gives zeros.

    Raises
    ------
    PipelineError
        Not 2-D, or NaN / inf anywhere.
    """
    S_db = np.asarray(S_db)
    if S_db.ndim != 2 or S_db.size == 0:
        raise PipelineError(f"expected a non-empty 2-D (n_bins, n_frames) spectrogram, got shape {S_db.shape}")
    if not np.all(np.isfinite(S_db)):
        raise PipelineError("spectrogram contains NaN or inf values; refusing to make an image")
    img = resize(S_db, config.height, config.width if width is None else int(width))
    lo, hi = float(img.min()), float(img.max())
    if hi - lo <= 1e-5 * max(1.0, abs(lo), abs(hi)):
        return np.zeros_like(img)
    img = (img - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(img, 0.0, 1.0, out=img)
    return img


def quantize(img) -> np.ndarray:
    """Mono image(s) in [0, 1] -> uint8 ``rint(255 x)`` (what the cache stores; error <= 1/510)."""
    return np.rint(np.asarray(img, dtype=np.float32) * np.float32(255.0)).astype(np.uint8)


def model_input(q, mode: str = "mono", colormap: str = "viridis") -> np.ndarray:
    """Quantised mono images -> model input: the *read-time half* of the transform.

    The one place the colormap is applied (exactly once): the cache builder
    stores :func:`quantize` of :func:`mono_image`, and ``Dataset`` batches,
    ``evaluate``, ``predict`` and ``inspect`` all turn those bytes into the
    network's input here.

    Parameters
    ----------
    q : np.ndarray [shape=(N, H, W) or (H, W), dtype=uint8]
        ``rint(255 x)`` of mono images ``x`` in [0, 1].
    mode : {'mono', 'rgb'}
        'mono': ``q / 255`` as one channel; 'rgb': the colormap's 256-entry
        table (:func:`colormap_lut`) indexed by ``q``, channels first.
    colormap : str
        Matplotlib colormap name (rgb only).

    Returns
    -------
    np.ndarray [shape=(N, C, H, W) (or (C, H, W) for a 2-D q), dtype=float32] in [0, 1]
        C-contiguous; ``C`` = 1 (mono) or 3 (rgb).

    Raises
    ------
    PipelineError
        ``q`` not uint8 of 2 or 3 dimensions, an unknown mode or colormap.
    """
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.ndim not in (2, 3):
        raise PipelineError(f"model_input expects uint8 (N, H, W) or (H, W) images, got {q.dtype} {q.shape}")
    single = q.ndim == 2
    if single:
        q = q[None]
    if mode == "mono":
        x = (q.astype(np.float32) * np.float32(1.0 / 255.0))[:, None]
    elif mode == "rgb":
        x = np.ascontiguousarray(colormap_lut(colormap)[q].transpose(0, 3, 1, 2))
    else:
        raise PipelineError(f"mode must be one of {MODES}, got {mode!r}")
    return x[0] if single else x


def to_image(S_db, config: SpectrogramConfig) -> np.ndarray:
    """dB spectrogram -> model input (C, H, W): both halves of the transform in one call.

    ``model_input(quantize(mono_image(S_db, config)), config.mode, config.colormap)``,
    so it equals what a ``Dataset`` batch holds for the same spectrogram.

    Parameters
    ----------
    S_db : np.ndarray [shape=(n_bins, n_frames), real]
    config : SpectrogramConfig

    Returns
    -------
    np.ndarray [shape=(C, height, width), dtype=float32] in [0, 1]
        ``C = 1`` (mono) or 3 (rgb). A constant input gives zeros (mono) or
        the colormap's first colour (rgb).

    Raises
    ------
    PipelineError
        Not 2-D, or NaN / inf anywhere.
    """
    return model_input(quantize(mono_image(S_db, config)), config.mode, config.colormap)


# ---------------------------------------------------------------- crops

def track_key(path, track_id=None) -> int:
    """Integer key that seeds a track's crop: its id, else CRC32 of its file name."""
    if track_id is not None:
        return int(track_id)
    return zlib.crc32(os.path.basename(os.fspath(path)).encode())


def _start(u: float, n_total: int, n_crop: int) -> int:
    return int(math.floor(u * (n_total - n_crop + 1))) if n_total > n_crop else 0


def _require_one_frame(path, n: int, config: SpectrogramConfig) -> None:
    """PipelineError unless ``n`` decoded samples (at ``config.sr``) fill one STFT frame.

    The one threshold and wording shared by preprocessing (:func:`crop`) and
    prediction (:func:`track_images`): fewer than ``n_fft`` real samples is
    nothing to learn from or to predict on.
    """
    if n < config.n_fft:
        raise PipelineError(
            f"no usable audio in {os.fspath(path)!r}: {n} samples ({n / config.sr * 1e3:.1f} ms) "
            f"decoded, fewer than one STFT frame (n_fft={config.n_fft})")


def crop(path, config: SpectrogramConfig, seed: int = 0, track_id=None):
    """Decode the seeded random crop of one file.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file.
    config : SpectrogramConfig
        ``sr`` and ``crop_seconds`` are used.
    seed : int
        Global seed; the crop depends on ``(seed, track_key(path, track_id))``.
    track_id : int or None
        FMA track id (else the file name's CRC32 keys the crop).

    Returns
    -------
    y : np.ndarray [shape=(config.n_crop,), dtype=float32]
        The crop at ``config.sr``, zero-padded at the end if the file is short.
    info : dict
        ``status`` ('ok' or 'padded'), ``offset_s`` (start in seconds),
        ``decoded_s`` (seconds of real audio in the crop), ``reason`` (why
        padded, or a note such as 'digital silence').

    Raises
    ------
    PipelineError
        File missing, undecodable, or with fewer than ``n_fft`` decodable
        samples (the message names it).
    """
    n_crop = config.n_crop
    u = float(np.random.default_rng([int(seed) & 0xFFFFFFFF, track_key(path, track_id)]).random())
    y = None
    try:
        hdr = audio.probe(path)
        est = int(hdr.frames * config.sr // hdr.samplerate)
    except PipelineError:
        hdr, est = None, None
    if est is not None and est > 0:
        start = _start(u, est, n_crop)
        # read two extra samples so resampling round-off never shortens the crop
        y, _ = audio.load(path, sr=config.sr, offset=start / config.sr,
                          duration=(n_crop + 2) / config.sr)
        if len(y) < min(n_crop, est - start):
            y = None  # the header lied (e.g. truncated mp3): decode it all below
    if y is None:
        full, _ = audio.load(path, sr=config.sr)
        if len(full) == 0:
            raise PipelineError(f"no decodable audio in {os.fspath(path)!r} (0 samples)")
        start = _start(u, len(full), n_crop)
        y = full[start:start + n_crop]
    _require_one_frame(path, len(y), config)
    info = {"status": "ok", "offset_s": start / config.sr, "decoded_s": min(len(y), n_crop) / config.sr,
            "reason": ""}
    if len(y) < n_crop:
        info["status"] = "padded"
        info["reason"] = f"clip is {len(y) / config.sr:.3f} s, shorter than the {config.crop_seconds} s crop"
        y = np.concatenate([y, np.zeros(n_crop - len(y), np.float32)])
    else:
        y = y[:n_crop]
    if not np.any(y):
        info["reason"] = (info["reason"] + "; " if info["reason"] else "") + "digital silence"
    return np.ascontiguousarray(y), info


def clip(path, config: SpectrogramConfig):
    """Decode the clip of one file: all of it, or its centred ``config.n_clip`` samples.

    Only the clip is decoded (soundfile seek, as :func:`crop`): a 6-hour file
    costs ``clip_seconds`` of decoding, not 6 hours. The whole file is
    decoded only when its header gives no length or a wrong one.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file.
    config : SpectrogramConfig
        ``sr``, ``crop_seconds``, ``clip_seconds`` and ``n_fft`` are used.

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32], ``n_fft <= n <= config.n_clip``
        The clip at ``config.sr`` (not padded).
    info : dict
        ``status`` ('ok', or 'padded' when the clip is shorter than one crop:
        its windows are padded with the image floor), ``offset_s`` (start of
        the clip in the file), ``duration_s`` (the file's length, from its
        header when it has one), ``decoded_s`` (seconds in the clip),
        ``reason`` (why padded, and 'digital silence' when every sample is 0).

    Raises
    ------
    PipelineError
        File missing, undecodable, or with fewer than ``n_fft`` decodable
        samples (the message names it).
    """
    n_clip = config.n_clip
    y, start, total = None, 0, None
    try:
        hdr = audio.probe(path)
        est = int(hdr.frames * config.sr // hdr.samplerate)
    except PipelineError:
        est = None
    if est is not None and est > 0:
        total = est
        start = (est - n_clip) // 2 if est > n_clip else 0
        # two extra samples so that resampling round-off never shortens the clip
        y, _ = audio.load(path, sr=config.sr, offset=start / config.sr,
                          duration=(min(n_clip, est) + 2) / config.sr)
        if len(y) < min(n_clip, est - start):
            y = None  # the header lied (e.g. a truncated mp3): decode it all below
    if y is None:
        full, _ = audio.load(path, sr=config.sr)
        if len(full) == 0:
            raise PipelineError(f"no decodable audio in {os.fspath(path)!r} (0 samples)")
        total = len(full)
        start = (len(full) - n_clip) // 2 if len(full) > n_clip else 0
        y = full[start:start + n_clip]
    y = np.ascontiguousarray(y[:n_clip])
    _require_one_frame(path, len(y), config)
    info = {"status": "ok", "offset_s": start / config.sr, "duration_s": total / config.sr,
            "decoded_s": len(y) / config.sr, "reason": ""}
    if len(y) < config.n_crop:
        info["status"] = "padded"
        info["reason"] = f"clip is {len(y) / config.sr:.3f} s, shorter than the {config.crop_seconds} s crop"
    if not np.any(y):
        info["reason"] = (info["reason"] + "; " if info["reason"] else "") + "digital silence"
    return y, info


def track_clip(path, config: SpectrogramConfig):
    """Mono image of one file's clip: the cached half of the per-track chain.

    Parameters
    ----------
    path, config
        As :func:`clip` (``config.mode`` / ``colormap`` are ignored).

    Returns
    -------
    image : np.ndarray [shape=(config.height, config.columns(len(y))), dtype=float32] in [0, 1]
        :func:`mono_image` of the clip's dB spectrogram (dB floor and min-max
        over the whole clip, so a window is a plain slice of it); the cache
        stores :func:`quantize` of it in a row ``config.clip_width`` wide.
    info : dict
        As :func:`clip`, plus ``columns`` (the image's width).

    Raises
    ------
    PipelineError
        As :func:`clip`, or a non-finite spectrogram.
    """
    y, info = clip(path, config)
    img = mono_image(spectrogram_db(y, config), config, width=config.columns(len(y)))
    info["columns"] = int(img.shape[1])
    return img, info


# ---------------------------------------------------------------- windows (cut at batch time)

#: crop-window rules: 'random' (a new window per epoch), 'fixed' (one seeded window per track),
#: 'even' (``n`` evenly spaced windows, evaluation and prediction)
WINDOW_RULES = ("random", "fixed", "even")
_KIND_RANDOM, _KIND_FIXED = 5, 6


@dataclasses.dataclass(frozen=True)
class Windows:
    """Which ``width``-column windows of each cached clip make a batch.

    Attributes
    ----------
    rule : {'random', 'fixed', 'even'}
        'random': per track and epoch, start ~ U{min(0, w - W) .. max(0, w - W)}
        (``w`` the clip's columns, ``W`` the window's) drawn from
        ``numpy.random.default_rng([seed, key, 5, epoch])``: a new crop each
        epoch, a function of ``(seed, epoch, key)`` only (resume-exact,
        order-free). A clip shorter than the window lands at a random offset
        in it. 'fixed': the same with ``[seed, key, 6]`` (one crop per track
        for the whole run, the paper's preprocessing). 'even': ``n`` windows
        at ``round(k (w - W) / (n - 1))``, ``k = 0..n-1`` (``floor((w - W) / 2)``,
        the centre, for ``n = 1``): from the clip's start to its end, or for
        a short clip ``n`` placements across the window.
    seed, epoch : int
        'random' / 'fixed' only.
    n : int
        Windows per clip ('even' only; 1 otherwise).
    """

    rule: str = "even"
    seed: int = 0
    epoch: int = 0
    n: int = 1

    def __post_init__(self):
        if self.rule not in WINDOW_RULES:
            raise PipelineError(f"window rule must be one of {WINDOW_RULES}, got {self.rule!r}")
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1:
            raise PipelineError(f"windows per clip must be a positive integer, got {self.n!r}")
        if self.rule != "even" and self.n != 1:
            raise PipelineError(f"rule {self.rule!r} gives one window per clip, got n={self.n}")
        for name in ("seed", "epoch"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise PipelineError(f"Windows.{name} must be an integer >= 0, got {v!r}")


def window_starts(columns, width: int, windows: Windows, keys=None) -> np.ndarray:
    """First column of every window (may be negative for a clip narrower than the window).

    Parameters
    ----------
    columns : array_like [shape=(N,), int]
        Columns of each clip's image (``Dataset.widths``, ``track_clip``'s ``info['columns']``).
    width : int
        Window width ``W`` (``SpectrogramConfig.width``).
    windows : Windows
    keys : array_like [shape=(N,), int >= 0] or None
        Per-track keys seeding 'random' / 'fixed' (``Dataset.keys``: FMA id or
        CRC32 of the path); needed for those rules.

    Returns
    -------
    np.ndarray [shape=(N, windows.n), dtype=int64]
        Window ``k`` of clip ``i`` covers clip columns ``starts[i, k] ..
        starts[i, k] + width - 1``; columns outside ``0 .. columns[i] - 1``
        are the image floor (level 0), see :func:`cut_windows`.
    """
    w = np.asarray(columns, dtype=np.int64).reshape(-1)
    span = w - int(width)
    if windows.rule == "even":
        if windows.n == 1:
            return (span // 2)[:, None]
        k = np.arange(windows.n, dtype=np.float64)
        return np.rint(k[None, :] * span[:, None] / (windows.n - 1)).astype(np.int64)
    if keys is None:
        raise PipelineError(f"window rule {windows.rule!r} needs the tracks' keys")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.shape != w.shape:
        raise PipelineError(f"keys {keys.shape} and columns {w.shape} differ in length")
    lo, hi = np.minimum(span, 0), np.maximum(span, 0)
    out = np.empty((len(w), 1), np.int64)
    for i in range(len(w)):
        ent = ([windows.seed, int(keys[i]), _KIND_RANDOM, windows.epoch] if windows.rule == "random"
               else [windows.seed, int(keys[i]), _KIND_FIXED])
        out[i, 0] = lo[i] + int(np.random.default_rng(ent).integers(0, hi[i] - lo[i] + 1))
    return out


def cut_windows(q, columns, starts, width: int, out=None) -> np.ndarray:
    """Cut windows from cached clip rows: ``out[i] = q[i][:, starts[i] : starts[i] + width]``, floor outside.

    Parameters
    ----------
    q : sequence of np.ndarray [shape=(H, >= columns[i]), dtype=uint8]
        Quantised clip images (rows of ``Dataset.images``, or one ``track_clip``).
    columns : array_like [shape=(N,), int]
        Valid columns of each row (the rest of a cache row is padding).
    starts : array_like [shape=(N,), int]
        From :func:`window_starts` (one column of it).
    width : int
    out : np.ndarray [shape=(N, H, width), dtype=uint8] or None
        Written in place when given.

    Returns
    -------
    np.ndarray [shape=(N, H, width), dtype=uint8]
        Columns outside ``0 .. columns[i] - 1`` are level 0 (the image floor,
        what a zero-padded crop's silence becomes).
    """
    n = len(starts)
    h = int(q[0].shape[0]) if n else 0
    if out is None:
        out = np.zeros((n, h, int(width)), np.uint8)
    else:
        out[...] = 0
    for i in range(n):
        s, w = int(starts[i]), int(columns[i])
        a, b = max(s, 0), min(s + int(width), w)
        if b > a:
            out[i, :, a - s:b - s] = q[i][:, a:b]
    return out


def track_images(path, config: SpectrogramConfig, n_crops: int = 1):
    """Model input of ``n_crops`` evenly spaced windows of one file (``predict``): the whole chain.

    The same transform and window rule as a cached row served by
    ``Dataset.batches(..., windows=Windows('even', n=n_crops))``:
    :func:`track_clip` -> :func:`quantize` -> :func:`window_starts` ->
    :func:`cut_windows` -> :func:`model_input`. So ``predict`` on a file of
    the run's data gives bit-identical logits to ``evaluate`` on its row.

    Parameters
    ----------
    path : str or os.PathLike
    config : SpectrogramConfig
        ``mode`` and ``colormap`` choose the read-time half.
    n_crops : int > 0

    Returns
    -------
    images : np.ndarray [shape=(n_crops, C, H, W), dtype=float32]
    info : dict
        As :func:`track_clip`, plus ``offsets_s`` (start of each window in
        the file, seconds; negative for a short clip placed inside it).

    Raises
    ------
    PipelineError
        As :func:`clip` (a file preprocessing skips is never predicted),
        ``n_crops < 1``.
    """
    if isinstance(n_crops, bool) or not isinstance(n_crops, (int, np.integer)) or n_crops < 1:
        raise PipelineError(f"n_crops must be a positive integer, got {n_crops!r}")
    windows = Windows("even", n=int(n_crops))
    img, info = track_clip(path, config)
    q = quantize(img)
    starts = window_starts([q.shape[1]], config.width, windows)[0]
    levels = cut_windows([q] * len(starts), [q.shape[1]] * len(starts), starts, config.width)
    col_s = config.hop_length * (1 + config.n_crop // config.hop_length) / (config.width * config.sr)  # s / column
    info["offsets_s"] = [round(info["offset_s"] + float(s) * col_s, 3) for s in starts]
    return model_input(levels, config.mode, config.colormap), info
