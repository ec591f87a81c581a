"""CPU STFT: framing + periodic Hann window + real FFT (``pipeline.stft`` calls it for NumPy input).

Conventions (librosa 0.11; the pipeline's documentation of them is in
:mod:`pipeline.stft`): ``center`` pads ``n_fft // 2`` samples per side with
``pad_mode``; the window is the periodic Hann ``0.5 - 0.5 cos(2 pi n / n_fft)``.

- Frames are strided views (:func:`numpy.lib.stride_tricks.sliding_window_view`)
  of the padded signal; the only copy is the windowed frame matrix.
- Work buffer: the windowed frames are written into a per-thread buffer that
  is kept between calls (up to ``WORK_BUFFER_MAX_BYTES``; larger inputs get a
  fresh array). A fresh 10 MB array per call (a 30 s clip) costs as much as
  the FFT itself on this machine: glibc hands the freed block back to the
  kernel and the next call page-faults all of it in again (measured: 35 ms ->
  21 ms per 30 s STFT under load). The returned spectrum never aliases it.
- FFT: :func:`scipy.fft.rfft` (pocketfft, the same algorithm as ``numpy.fft``)
  in single precision: on NumPy 2.4 here ``numpy.fft.rfft`` of float32 input is
  about 4x slower than scipy's for (431, 2048) frames, and its float64 path
  costs a cast.

Bad input raises :class:`kernels.cpu._checks.StftArgumentError` (a ``ValueError``)
naming the value; the GPU twin is :mod:`kernels.gpu.stft`, same signature.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from ._checks import StftArgumentError, check_stft_params

__all__ = ["stft", "hann_window", "n_frames", "frame"]

#: Largest windowed-frame buffer kept between calls, per thread (bytes).
WORK_BUFFER_MAX_BYTES = 64 << 20

_work = threading.local()


def _work_buffer(shape, dtype) -> np.ndarray:
    """A C-contiguous array of ``shape`` / ``dtype`` carved from this thread's kept
    buffer (grown as needed), or a fresh one above ``WORK_BUFFER_MAX_BYTES``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes > WORK_BUFFER_MAX_BYTES:
        return np.empty(shape, dtype)
    buf = getattr(_work, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _work.buf = np.empty(max(nbytes, 1 << 20), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


@lru_cache(maxsize=16)
def _hann(n_fft: int, dtype: str) -> np.ndarray:
    n = np.arange(n_fft, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    w = w.astype(dtype)
    w.setflags(write=False)
    return w


def hann_window(n_fft: int, dtype=np.float32) -> np.ndarray:
    """Periodic Hann window of length ``n_fft`` (scipy ``fftbins=True``).

    Parameters
    ----------
    n_fft : int > 0
        Window length in samples.
    dtype : numpy dtype
        Output dtype (float32 default).

    Returns
    -------
    np.ndarray [shape=(n_fft,)]
        ``0.5 - 0.5 * cos(2 pi n / n_fft)``, read-only (cached).
    """
    if int(n_fft) != n_fft or n_fft <= 0:
        raise StftArgumentError(f"n_fft must be a positive integer, got {n_fft!r}")
    return _hann(int(n_fft), np.dtype(dtype).str)


def n_frames(n_samples: int, n_fft: int = 2048, hop_length: int = 512, center: bool = True) -> int:
    """Number of STFT frames for a signal of ``n_samples``.

    ``1 + n_samples // hop_length`` when centred, else
    ``1 + (n_samples - n_fft) // hop_length`` (librosa's formula).
    """
    if center:
        return 1 + int(n_samples) // int(hop_length)
    return 1 + (int(n_samples) - int(n_fft)) // int(hop_length)


def frame(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """Strided frames of ``y`` (a view, no copy).

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Signal (already padded when centring).
    n_fft, hop_length : int > 0
        Frame length and hop in samples.

    Returns
    -------
    np.ndarray [shape=(1 + (n - n_fft) // hop_length, n_fft)]
        Read-only view; row ``t`` is ``y[t * hop_length : t * hop_length + n_fft]``.
    """
    return np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop_length]


def _validate(y, n_fft, hop_length, window, center, pad_mode):
    if not isinstance(y, np.ndarray):
        raise StftArgumentError(f"y must be a numpy array, got {type(y).__name__}")
    if y.ndim != 1:
        raise StftArgumentError(f"y must be 1-D (n,) mono audio, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        raise StftArgumentError(f"y must be float32 or float64, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise StftArgumentError("y contains NaN or inf samples")
    check_stft_params(len(y), n_fft, hop_length, window, center, pad_mode)


def stft(y, n_fft: int = 2048, hop_length: int = 512, window="hann", center: bool = True,
         pad_mode: str = "constant"):
    """Short-time Fourier transform of a NumPy signal (arguments and result: :func:`pipeline.stft.stft`).

    Returns
    -------
    D : np.ndarray [shape=(1 + n_fft // 2, n_frames), dtype=complex64 (complex128 for float64 input)]
        A transposed (Fortran-ordered) view of the ``(n_frames, n_bins)`` rfft output.

    Raises
    ------
    StftArgumentError
        ``y`` not a 1-D float array, NaN/inf samples, bad ``n_fft``,
        ``hop_length``, ``window`` or ``pad_mode``, or a signal shorter than
        one frame.
    """
    _validate(y, n_fft, hop_length, window, center, pad_mode)
    import scipy.fft

    n_fft, hop_length = int(n_fft), int(hop_length)
    dtype = np.float64 if y.dtype == np.float64 else np.float32
    y = y.astype(dtype, copy=False)
    if isinstance(window, str):
        w = hann_window(n_fft, dtype)
    else:
        w = np.asarray(window, dtype=dtype)
    if center:
        y = np.pad(y, n_fft // 2, mode=pad_mode)
    frames = frame(y, n_fft, hop_length)          # (n_frames, n_fft) view
    windowed = _work_buffer(frames.shape, dtype)   # kept between calls (no page faults)
    np.multiply(frames, w, out=windowed)
    spec = scipy.fft.rfft(windowed, axis=1)        # (n_frames, n_bins), a new array
    return spec.T
