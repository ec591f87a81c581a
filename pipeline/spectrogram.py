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
  Slaney filterbank (``htk=False, norm='slaney'``). The dB, mel and resize
  functions are in :mod:`pipeline.spectral`.
- Image: row 0 is the lowest frequency (DC / lowest mel band), column 0 the
  earliest frame. Resize by a separable linear map ``R_h @ S_db @ R_w.T``
  (applied as sparse matrices, no BLAS):
  area averaging (each output cell is the length-weighted mean of the input
  cells it covers, OpenCV's INTER_AREA) when shrinking an axis, bilinear with
  half-pixel centres (PyTorch ``align_corners=False``, edges clamped) when
  enlarging it. Then per-image min-max to [0, 1]; a constant image (silence)
  becomes zeros. NaN or inf raises.
- The transform has two halves, defined here and nowhere else: the *cached
  half* (:func:`mono_image`, and :func:`pipeline.clips.track_clip` for a
  file: audio -> mono image of the whole clip in [0, 1], stored by the
  dataset cache as uint8 :func:`quantize` = ``rint(255 x)``) and the
  *read-time half* (:func:`pipeline.windows.window_starts` +
  :func:`~pipeline.windows.cut_windows`: the ``width``-column crop windows, then
  :func:`model_input`: uint8 mono -> model input; 'mono' is ``q / 255``,
  'rgb' the colormap applied exactly once, through the 256-entry table
  :func:`colormap_lut`, alpha dropped, channels first). The cache builder,
  ``Dataset`` batches, ``evaluate``, ``predict`` (:func:`pipeline.clips.track_images`,
  the whole chain in one call) and ``inspect`` all go through these.
- Clip (:mod:`pipeline.clips`): the whole file, or its centred ``n_clip`` samples (``clip_seconds``,
  default 3 crops = 30 s: an FMA clip). Only the clip is decoded (soundfile
  seek); the whole file only when the header's length proves wrong. Its image
  is ``config.columns(n)`` wide: ``width`` columns per ``crop_seconds``, dB
  floor and min-max over the clip, so a window is a plain slice.
- Windows (the paper's "random 10 s crop", cut at batch time,
  :class:`pipeline.windows.Windows`):
  'random' draws a new window per epoch from ``(seed, epoch, key)`` (``key`` =
  track id, or a CRC32 of the file name), 'fixed' one per track from
  ``(seed, key)``, 'even' takes ``n`` evenly spaced windows (evaluation and
  prediction average their probabilities). A clip shorter than a crop is
  placed inside the window (at a random offset in training, evenly spaced
  placements in evaluation), the rest of the window the image floor (status
  'padded'); a clip with less real audio than one STFT frame (``n_fft``
  samples: nothing to learn from, e.g. a truncated mp3 that decodes to 47
  samples) raises :class:`~pipeline.errors.PipelineError`.
- :func:`pipeline.clips.crop` decodes one seeded ``crop_seconds`` window alone
  (benchmarks and tests of the decoder's seeking); :func:`to_image` is both
  halves on one spectrogram.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from functools import lru_cache

import numpy as np

from .errors import PipelineError
from .spectral import resize, sparse_mel_filterbank
from .stft import stft

__all__ = ["SpectrogramConfig", "spectrogram_db", "mono_image", "quantize", "model_input", "to_image",
           "colormap_lut", "MODES", "SPECTROGRAMS", "NORMS", "FLOOR_PERCENTILE"]

MODES = ("mono", "rgb")
SPECTROGRAMS = ("stft", "mel")
#: how the resized dB image becomes [0, 1] (:func:`mono_image`): 'minmax' (the paper's), or 'floor'
#: (each frequency row's noise floor, its FLOOR_PERCENTILE-th percentile over the clip, subtracted first)
NORMS = ("minmax", "floor")
#: the percentile of a row's values over the clip's columns taken as that frequency's noise floor ('floor')
FLOOR_PERCENTILE = 10.0


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
    norm : {'minmax', 'floor'}
        How the resized dB image of the clip becomes [0, 1] (:func:`mono_image`):
        'minmax' (the paper's) scales it by its minimum and maximum; 'floor'
        first subtracts each frequency row's noise floor (its
        :data:`FLOOR_PERCENTILE`-th percentile over the clip's columns),
        clipped at 0, then scales by the maximum: a stationary background and
        a fixed per-frequency colouring (microphone, room, speaker level)
        become the image floor, the level the padding and the masks use.
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
    norm: str = "minmax"

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
        if self.norm not in NORMS:
            raise PipelineError(f"SpectrogramConfig.norm must be one of {NORMS}, got {self.norm!r}")
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
        power = sparse_mel_filterbank(config.sr, config.n_fft, config.n_mels) @ power  # no BLAS threads
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
        ``height``, ``width`` and ``norm`` are used (``mode`` and ``colormap``
        are not: they belong to the read-time half, :func:`model_input`).
    width : int or None
        Columns of the result (None: ``config.width``); a whole clip uses
        ``config.columns(n_samples)``.

    Returns
    -------
    np.ndarray [shape=(height, width), dtype=float32] in [0, 1]
        Resized dB, min-max scaled over the whole image ('minmax'); or
        ('floor') ``max(img - floor_r, 0)`` with ``floor_r`` row ``r``'s
        :data:`FLOOR_PERCENTILE`-th percentile (linear interpolation, numpy's
        default) over the columns, divided by its maximum. A constant input
        (or, for 'floor', one with no value above its rows' floors) gives zeros.

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
    scale = max(1.0, abs(lo), abs(hi))  # of the dB values: what "constant" is measured against
    if config.norm == "floor":
        floor = np.percentile(img, FLOOR_PERCENTILE, axis=1, keepdims=True).astype(np.float32)
        img = np.maximum(img - floor, np.float32(0.0))
        lo, hi = 0.0, float(img.max())
    if hi - lo <= 1e-5 * scale:
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
