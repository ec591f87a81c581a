"""Spectral building blocks of the image transform: dB scales, the mel filterbank, resize operators.

Pure functions of arrays and sizes (librosa 0.11 conventions), used by
:mod:`pipeline.spectrogram`, which composes them into the transform:

- :func:`power_to_db` / :func:`amplitude_to_db`: ``10 log10(max(amin, S)) -
  10 log10(max(amin, ref))`` floored at ``max - top_db``;
- :func:`mel_filterbank` (Slaney, ``htk=False, norm='slaney'``), :func:`hz_to_mel`,
  :func:`mel_to_hz`;
- :func:`resize_matrix` / :func:`resize`: the separable linear resize, area
  averaging when shrinking an axis, bilinear with half-pixel centres when
  enlarging it (applied as sparse matrices, no BLAS).

Errors raise :class:`pipeline.errors.PipelineError` naming the value.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .errors import PipelineError

__all__ = ["power_to_db", "amplitude_to_db", "hz_to_mel", "mel_to_hz", "mel_filterbank", "sparse_mel_filterbank",
           "resize_matrix", "resize"]


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
def sparse_mel_filterbank(sr, n_fft, n_mels):
    """:func:`mel_filterbank` as a (cached) CSR matrix: ``fb @ power`` reads only the nonzero weights."""
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
