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
- The computation is an op like the others: :mod:`kernels.cpu.stft` (strided
  frames, a per-thread kept work buffer, :func:`scipy.fft.rfft` in single
  precision) for NumPy input, :mod:`kernels.gpu.stft` (our framing kernel +
  cuFFT) for CuPy input, same signature; this module picks the backend and
  turns a kernel's :class:`~kernels.cpu._checks.StftArgumentError` into a
  :class:`~pipeline.errors.PipelineError` (a per-track data fault). The
  result agrees with librosa (which transforms in float64) to better than
  1e-5 relative per frame (tests/test_stft.py).
"""
from __future__ import annotations

import contextlib
import importlib

import numpy as np

from kernels.cpu import stft as _cpu
from kernels.cpu._checks import StftArgumentError

from .errors import PipelineError

__all__ = ["stft", "hann_window", "n_frames", "frame"]

#: the kernels' frame count and strided framing, as they are (they raise nothing)
n_frames = _cpu.n_frames
frame = _cpu.frame


@contextlib.contextmanager
def _pipeline_errors():
    """A kernel's StftArgumentError -> PipelineError with the same message."""
    try:
        yield
    except StftArgumentError as exc:
        raise PipelineError(str(exc)) from exc


def hann_window(n_fft: int, dtype=np.float32) -> np.ndarray:
    """Periodic Hann window of length ``n_fft`` (scipy ``fftbins=True``): :func:`kernels.cpu.stft.hann_window`.

    Returns
    -------
    np.ndarray [shape=(n_fft,)]
        ``0.5 - 0.5 * cos(2 pi n / n_fft)``, read-only (cached).

    Raises
    ------
    PipelineError
        ``n_fft`` not a positive integer.
    """
    with _pipeline_errors():
        return _cpu.hann_window(n_fft, dtype)


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

    backend = importlib.import_module("kernels.gpu.stft" if kernels.is_gpu_array(y) else "kernels.cpu.stft")
    with _pipeline_errors():
        return backend.stft(y, n_fft=n_fft, hop_length=hop_length, window=window, center=center,
                            pad_mode=pad_mode)
