"""Short-time Fourier transform: framing + periodic Hann window + real FFT.

Our own STFT, equal to ``librosa.stft`` (0.11) with the same arguments:
``D[f, t] = sum_n w[n] * y_pad[t * hop_length + n] * exp(-2j pi f n / n_fft)``
for ``f = 0 .. n_fft // 2`` (row 0 is DC, the lowest frequency).

- ``center=True`` pads ``n_fft // 2`` samples on both sides with ``pad_mode``
  (librosa 0.11's default ``'constant'``, i.e. zeros), so frame ``t`` is centred
  on sample ``t * hop_length``; ``n_frames = 1 + len(y) // hop_length``.
- ``center=False``: ``n_frames = 1 + (len(y) - n_fft) // hop_length``.
- The window is the periodic ("DFT-even") Hann window
  ``w[n] = 0.5 - 0.5 cos(2 pi n / n_fft)``, as ``scipy.signal.get_window('hann',
  n_fft, fftbins=True)`` and librosa use.
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
  costs a cast. The result agrees with librosa (which transforms in float64) to
  better than 1e-5 relative per frame (tests/test_stft.py).
- CuPy input is routed to ``kernels.gpu.stft.stft`` (same signature), written
  with the GPU backend.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from .errors import PipelineError

__all__ = ["stft", "hann_window", "n_frames", "frame"]

PAD_MODES = ("constant", "reflect", "edge", "symmetric", "wrap")

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
        raise PipelineError(f"n_fft must be a positive integer, got {n_fft!r}")
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


def check_stft_params(n_samples, n_fft, hop_length, window, center, pad_mode):
    """Validate STFT parameters for a signal of ``n_samples`` (shared by the CPU and GPU STFT).

    ``window`` is ``'hann'`` or an array (NumPy or CuPy) of shape ``(n_fft,)``.

    Raises
    ------
    PipelineError
        Non-integer or out-of-range ``n_fft`` / ``hop_length``, an unknown
        ``pad_mode`` or window, or a signal shorter than one frame allows;
        the message names the value.
    """
    if int(n_fft) != n_fft or n_fft < 2:
        raise PipelineError(f"n_fft must be an integer >= 2, got {n_fft!r}")
    if int(hop_length) != hop_length or hop_length < 1:
        raise PipelineError(f"hop_length must be a positive integer, got {hop_length!r}")
    if pad_mode not in PAD_MODES:
        raise PipelineError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if isinstance(window, str):
        if window not in ("hann", "hann_periodic"):
            raise PipelineError(f"window must be 'hann' or an array of length n_fft, got {window!r}")
    elif tuple(np.shape(window)) != (n_fft,):  # np.shape reads .shape, so CuPy windows stay on the device
        raise PipelineError(f"window array must have shape ({n_fft},), got {tuple(np.shape(window))}")
    n_min = n_fft // 2 + 1 if center and pad_mode == "reflect" else (1 if center else n_fft)
    if n_samples < n_min:
        raise PipelineError(
            f"signal too short for n_fft={n_fft}, center={center}, pad_mode={pad_mode!r}: "
            f"{n_samples} samples (need >= {n_min})"
        )


def _validate(y, n_fft, hop_length, window, center, pad_mode):
    if not isinstance(y, np.ndarray):
        raise PipelineError(f"y must be a numpy array, got {type(y).__name__}")
    if y.ndim != 1:
        raise PipelineError(f"y must be 1-D (n,) mono audio, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.floating):
        raise PipelineError(f"y must be float32 or float64, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise PipelineError("y contains NaN or inf samples")
    check_stft_params(len(y), n_fft, hop_length, window, center, pad_mode)


def stft(y, n_fft: int = 2048, hop_length: int = 512, window="hann", center: bool = True,
         pad_mode: str = "constant"):
    """Short-time Fourier transform (librosa 0.11 conventions).

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32 or float64]
        Mono signal. A CuPy array is computed on the GPU by
        ``kernels.gpu.stft.stft`` with the same arguments.
    n_fft : int >= 2
        FFT size = frame length in samples (2048 = 93 ms at 22050 Hz).
    hop_length : int > 0
        Hop between frames in samples (512 = 23 ms at 22050 Hz).
    window : 'hann' or np.ndarray [shape=(n_fft,)]
        Periodic Hann window, or explicit window samples.
    center : bool
        Pad ``n_fft // 2`` on both sides so frame ``t`` is centred on sample
        ``t * hop_length``.
    pad_mode : {'constant', 'reflect', 'edge', 'symmetric', 'wrap'}
        :func:`numpy.pad` mode for centring; ``'constant'`` pads zeros
        (librosa 0.11's default).

    Returns
    -------
    D : np.ndarray [shape=(1 + n_fft // 2, n_frames), dtype=complex64 (complex128 for float64 input)]
        ``n_frames = 1 + n // hop_length`` when centred, else
        ``1 + (n - n_fft) // hop_length``. Row 0 is DC. Fortran-ordered
        (a transposed view of the (n_frames, n_bins) FFT output), as librosa's.

    Raises
    ------
    PipelineError
        ``y`` not a 1-D float array, NaN/inf samples, bad ``n_fft``,
        ``hop_length``, ``window`` or ``pad_mode``, or a signal shorter than
        one frame.

    Examples
    --------
    >>> import numpy as np
    >>> D = stft(np.zeros(22050, np.float32))
    >>> D.shape, D.dtype
    ((1025, 44), dtype('complex64'))
    """
    import kernels

    if kernels.is_gpu_array(y):
        import importlib

        gpu_stft = importlib.import_module("kernels.gpu.stft")
        return gpu_stft.stft(y, n_fft=n_fft, hop_length=hop_length, window=window,
                             center=center, pad_mode=pad_mode)
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
