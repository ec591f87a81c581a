"""Argument checks shared by the CPU kernels (ReLU, dropout, max-pool) and by both backends' STFT."""
import numpy as np


def checked_flat(name, a, shape, dtype):
    """Check that ``a`` has ``shape``, ``dtype`` and C order; return its flat view.

    Raises
    ------
    ValueError
        Naming ``name`` with the expected and the actual shape, dtype or layout.
    """
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a.reshape(-1)


# ---------------------------------------------------------------- STFT (both backends)

#: ``numpy.pad`` / ``cupy.pad`` modes the STFT's centring accepts
PAD_MODES = ("constant", "reflect", "edge", "symmetric", "wrap")


class StftArgumentError(ValueError):
    """A bad STFT input or parameter; the message names the value (``pipeline.stft`` re-raises it as a
    ``PipelineError``, a per-track data fault)."""


def check_stft_params(n_samples, n_fft, hop_length, window, center, pad_mode):
    """Validate STFT parameters for a signal of ``n_samples`` (shared by the CPU and GPU STFT).

    ``window`` is ``'hann'`` or an array (NumPy or CuPy) of shape ``(n_fft,)``.

    Raises
    ------
    StftArgumentError
        Non-integer or out-of-range ``n_fft`` / ``hop_length``, an unknown
        ``pad_mode`` or window, or a signal shorter than one frame allows;
        the message names the value.
    """
    if int(n_fft) != n_fft or n_fft < 2:
        raise StftArgumentError(f"n_fft must be an integer >= 2, got {n_fft!r}")
    if int(hop_length) != hop_length or hop_length < 1:
        raise StftArgumentError(f"hop_length must be a positive integer, got {hop_length!r}")
    if pad_mode not in PAD_MODES:
        raise StftArgumentError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if isinstance(window, str):
        if window not in ("hann", "hann_periodic"):
            raise StftArgumentError(f"window must be 'hann' or an array of length n_fft, got {window!r}")
    elif tuple(np.shape(window)) != (n_fft,):  # np.shape reads .shape, so CuPy windows stay on the device
        raise StftArgumentError(f"window array must have shape ({n_fft},), got {tuple(np.shape(window))}")
    n_min = n_fft // 2 + 1 if center and pad_mode == "reflect" else (1 if center else n_fft)
    if n_samples < n_min:
        raise StftArgumentError(
            f"signal too short for n_fft={n_fft}, center={center}, pad_mode={pad_mode!r}: "
            f"{n_samples} samples (need >= {n_min})"
        )
