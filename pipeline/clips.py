"""One file's clip: decoded (seeking, only the clip), then its mono image; and ``predict``'s whole chain.

- :func:`clip`: the whole file, or its centred ``config.n_clip`` samples
  (``clip_seconds``, default 3 crops = 30 s), decoded by seeking; the whole
  file only when the header's length proves wrong. Fewer than ``n_fft`` real
  samples raise :class:`~pipeline.errors.PipelineError` (nothing to learn from).
- :func:`track_clip`: the cached half of the transform for one file, the clip's
  :func:`~pipeline.spectrogram.mono_image` ``config.columns(n)`` wide (what
  the dataset cache stores, quantised).
- :func:`track_images`: the whole chain for one file (``predict``): the same
  windows and pixels as ``Dataset.batches(..., windows=Windows('even', n))``
  on its cached row.
- :func:`crop`: one seeded ``crop_seconds`` window decoded alone (benchmarks
  and tests of the decoder's seeking); :func:`track_key` seeds it.
"""
from __future__ import annotations

import math
import os
import zlib

import numpy as np

from . import audio
from .errors import PipelineError
from .spectrogram import SpectrogramConfig, model_input, mono_image, quantize, spectrogram_db
from .windows import Windows, cut_windows, window_starts

__all__ = ["clip", "track_clip", "track_images", "crop", "track_key"]


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
