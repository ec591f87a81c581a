"""STFT and spectrogram image on the GPU, same conventions as :mod:`kernels.cpu.stft` / ``pipeline.spectrogram``.

:func:`stft` has the signature of :func:`kernels.cpu.stft.stft` (librosa 0.11
conventions: periodic Hann window, ``center`` pads ``n_fft // 2`` per side
with ``pad_mode``, ``n_frames = 1 + n // hop_length`` when centred); it
frames and windows with our kernel (``cuda/stft.cu``) and transforms with
``cupy.fft.rfft`` (cuFFT). :func:`spectrogram_image` runs the pipeline's
``spectrogram_db`` + ``to_image`` on the device: power, (mel filterbank GEMM),
dB (librosa ``power_to_db``, ref 1.0, amin 1e-10, top_db floor), area /
bilinear resize as two GEMMs with the pipeline's own resize matrices, min-max
scaling and the 256-entry colormap (matplotlib's quantisation), the min / max
read on the device (no host sync). The host tables (mel filterbank, resize
matrices, colormap) come from the caller's ``tables`` (``pipeline.spectral``'s
``mel_filterbank`` / ``resize_matrix``, ``pipeline.spectrogram``'s ``colormap_lut``):
this module imports nothing from ``pipeline``. Bad input raises
:class:`kernels.cpu._checks.StftArgumentError` (``pipeline.stft`` re-raises it
as a ``PipelineError``).
"""
from __future__ import annotations

import math

import cupy as cp
import numpy as np

from ..cpu._checks import StftArgumentError, check_stft_params
from ..cpu.stft import hann_window
from . import _launch as L

__all__ = ["stft", "spectrogram_db", "spectrogram_image"]

_consts = {}


def _const(key, make):
    """Device copy of a host constant (window, LUT, resize / mel matrix), uploaded once."""
    a = _consts.get(key)
    if a is None:
        a = _consts[key] = cp.asarray(make())
    return a


def _validate(y, n_fft, hop_length, window, center, pad_mode):
    if not isinstance(y, cp.ndarray):
        raise StftArgumentError(f"y must be a CuPy array, got {type(y).__name__}")
    if y.ndim != 1:
        raise StftArgumentError(f"y must be 1-D (n,) mono audio, got shape {y.shape}")
    if y.dtype not in (np.float32, np.float64):
        raise StftArgumentError(f"y must be float32 or float64, got dtype {y.dtype}")
    check_stft_params(len(y), n_fft, hop_length, window, center, pad_mode)
    if not bool(cp.isfinite(y).all()):  # one host sync; the pipeline is not the training loop
        raise StftArgumentError("y contains NaN or inf samples")


def stft(y, n_fft: int = 2048, hop_length: int = 512, window="hann", center: bool = True,
         pad_mode: str = "constant"):
    """Short-time Fourier transform of a CuPy signal (see :func:`kernels.cpu.stft.stft`).

    Parameters
    ----------
    y : cupy.ndarray [shape=(n,), dtype=float32 or float64]
    n_fft : int >= 2
        Frame length in samples (2048 = 93 ms at 22050 Hz).
    hop_length : int > 0
        Hop in samples (512 = 23 ms at 22050 Hz).
    window : 'hann' or array [shape=(n_fft,)]
        Periodic Hann ``0.5 - 0.5 cos(2 pi n / n_fft)`` or explicit samples.
    center : bool
        Pad ``n_fft // 2`` samples on both sides with ``pad_mode``.
    pad_mode : {'constant', 'reflect', 'edge', 'symmetric', 'wrap'}

    Returns
    -------
    D : cupy.ndarray [shape=(1 + n_fft // 2, n_frames), dtype=complex64 (complex128 for float64)]
        A transposed (Fortran-ordered) view of the ``(n_frames, n_bins)`` rfft, as the CPU's.

    Raises
    ------
    StftArgumentError
        Not a 1-D float CuPy array, NaN / inf samples, bad parameters, or a signal shorter than one frame.
    """
    _validate(y, n_fft, hop_length, window, center, pad_mode)
    n_fft, hop_length = int(n_fft), int(hop_length)
    dt = y.dtype
    if isinstance(window, str):
        w = _const(("hann", n_fft, dt.str), lambda: np.asarray(hann_window(n_fft, dt)))
    else:
        w = cp.ascontiguousarray(cp.asarray(window), dtype=dt)
    if center:
        y = cp.pad(y, n_fft // 2, mode=pad_mode)
    y = L.contig(y)
    n_frames = 1 + (len(y) - n_fft) // hop_length
    frames = cp.empty((n_frames, n_fft), dt)
    grid, block = L.plane_grid(n_frames, n_fft)
    L.kernel("stft.cu", "stft_frame_window", dt)(grid, block, (frames, y, w, L.i32(n_fft), L.i32(hop_length),
                                                          L.i32(n_frames)))
    return cp.fft.rfft(frames, axis=1).T


def spectrogram_db(y, config, tables):
    """dB spectrogram of a CuPy signal, as ``pipeline.spectrogram.spectrogram_db`` (float32, (n_bins, n_frames)).

    ``config`` is a ``pipeline.spectrogram.SpectrogramConfig`` (read by attribute); ``tables`` gives the
    host constants: ``tables.mel_filterbank(sr, n_fft, n_mels)`` for a mel spectrogram.
    """
    D = stft(y.astype(np.float32, copy=False), n_fft=config.n_fft, hop_length=config.hop_length, center=True,
             pad_mode=config.pad_mode)
    n_bins, n_frames = D.shape
    spec = cp.ascontiguousarray(D.T)  # (n_frames, n_bins) complex64, already contiguous: no copy
    P = cp.empty((n_bins, n_frames), np.float32)
    L.kernel("stft.cu", "stft_power_t", np.float32)(L.flat_grid(P.size), (L.THREADS,),
                                               (P, spec.view(np.float32), L.i32(n_bins), L.i32(n_frames)))
    if config.spectrogram == "mel":
        fb = _const(("mel", config.sr, config.n_fft, config.n_mels),
                    lambda: np.asarray(tables.mel_filterbank(config.sr, config.n_fft, config.n_mels), np.float32))
        P = cp.matmul(fb, P)
    out = cp.empty_like(P)
    amin = 1e-10
    ref_db = 10.0 * math.log10(max(amin, 1.0))
    L.kernel("stft.cu", "stft_to_db", np.float32)(L.flat_grid(P.size), (L.THREADS,),
                                             (out, P, np.float32(amin), np.float32(ref_db), L.i64(P.size)))
    if config.top_db is not None:
        smax = out.max()
        L.kernel("stft.cu", "stft_floor_db", np.float32)(L.flat_grid(out.size), (L.THREADS,),
                                                    (out, smax, np.float32(config.top_db), L.i64(out.size)))
    return out


def spectrogram_image(y, config, tables):
    """Audio (CuPy, at ``config.sr``) -> model input in [0, 1], as ``to_image(spectrogram_db(y, config), config)``
    (the mono image quantised to ``rint(255 x)``, then ``q/255`` or the colormap row ``q``).

    Parameters
    ----------
    y : cupy.ndarray [shape=(n,), float32]
    config : pipeline.spectrogram.SpectrogramConfig
    tables : module or object
        The host tables, ``mel_filterbank(sr, n_fft, n_mels)``, ``resize_matrix(n_in, n_out)`` and
        ``colormap_lut(name)`` (the pipeline's; each table uploaded once per key).

    Returns
    -------
    cupy.ndarray [shape=(C, height, width), dtype=float32]
        ``C = 1`` (mono) or 3 (rgb, the config's colormap).

    Raises
    ------
    StftArgumentError
        As :func:`stft`.
    """
    S = spectrogram_db(y, config, tables)
    n_bins, n_frames = S.shape
    H, W = config.height, config.width
    Rh = _const(("rz", n_bins, H), lambda: np.asarray(tables.resize_matrix(n_bins, H)))
    Rw = _const(("rz", n_frames, W), lambda: np.asarray(tables.resize_matrix(n_frames, W)))
    if H * n_frames <= n_bins * W:  # the CPU's cheaper order, same rounding
        img = cp.matmul(cp.matmul(Rh, S), Rw.T)
    else:
        img = cp.matmul(Rh, cp.matmul(S, Rw.T))
    img = L.contig(img)
    lohi = cp.stack([img.min(), img.max()])
    n = H * W
    if config.mode == "mono":
        out = cp.empty((1, H, W), np.float32)
        L.kernel("stft.cu", "stft_image_mono", np.float32)(L.flat_grid(n), (L.THREADS,), (out, img, lohi, L.i64(n)))
        return out
    lut = _const(("lut", config.colormap), lambda: np.asarray(tables.colormap_lut(config.colormap)))
    out = cp.empty((3, H, W), np.float32)
    L.kernel("stft.cu", "stft_image_rgb", np.float32)(L.flat_grid(n), (L.THREADS,), (out, img, lohi, lut, L.i64(n)))
    return out
