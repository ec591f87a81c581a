"""Compute kernels of hitcnn, one module per op per backend.

``kernels/cpu/`` holds Numba kernels, ``kernels/gpu/`` CuPy kernels (CUDA C).
Both packages export the same submodules (``conv2d``, ``batchnorm``, ``relu``,
``maxpool``, ``dropout``, ``linear``, ``softmax_xent``, ``adam``, ``fused``,
``augment``, ``stft``) with the same entry-point names and signatures, so that a
layer never names a backend, and the same ``device`` module: the device policy
(feeding batches, host copies, counting on the device), so that ``engine/`` and
the cli never name one either.

This module is the single dispatch point: layers call :func:`backend_for` on
their input array (NumPy -> CPU, CuPy -> GPU) or :func:`get_backend` with a
device name. CuPy is imported lazily, only when the GPU backend is asked for,
so everything works on machines without CUDA.
"""
from __future__ import annotations

import importlib
import sys

DEVICES = ("cpu", "gpu")


def get_backend(device: str):
    """Return the kernel package for ``device``.

    Parameters
    ----------
    device : {'cpu', 'gpu'}
        ``'cpu'`` gives :mod:`kernels.cpu` (Numba), ``'gpu'`` gives
        :mod:`kernels.gpu` (CuPy, imported lazily).

    Returns
    -------
    module
        A package whose submodules are the ops, plus ``xp`` (numpy or cupy).

    Raises
    ------
    ValueError
        If ``device`` is not one of ``'cpu'``, ``'gpu'``.
    RuntimeError
        If ``'gpu'`` is asked for and CuPy or a CUDA device is unavailable
        (the message says how to install the ``gpu`` extra).
    """
    if device == "cpu":
        return importlib.import_module("kernels.cpu")
    if device == "gpu":
        try:
            return importlib.import_module("kernels.gpu")
        except ImportError as exc:  # cupy missing or broken
            raise RuntimeError(
                "device 'gpu' needs CuPy and a CUDA device: pip install -e .[gpu] "
                f"(import failed: {exc})"
            ) from exc
    raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def is_gpu_array(a) -> bool:
    """True if ``a`` is a CuPy array (checked without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(a, cp.ndarray)


def backend_for(a):
    """Return the kernel package that owns array ``a``: CPU for NumPy, GPU for CuPy."""
    return get_backend("gpu" if is_gpu_array(a) else "cpu")


def to_host(a):
    """``a`` as a NumPy array wherever it lives: the owning backend's ``device.to_host`` (one copy for CuPy)."""
    return backend_for(a).device.to_host(a)


def device_of(a) -> str:
    """``'gpu'`` for a CuPy array, else ``'cpu'``."""
    return "gpu" if is_gpu_array(a) else "cpu"


class Workspace:
    """Named scratch buffers (e.g. im2col columns) grown on demand and reused.

    ``get(name, shape, dtype, xp)`` returns a C-contiguous array of exactly
    ``shape`` that is a view of a cached flat buffer, reallocated only when a
    larger one is needed, so a training step after warm-up allocates nothing
    proportional to the activations. Contents are undefined on return.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, name, shape, dtype, xp=None):
        """Return a buffer of ``shape`` and ``dtype`` (contents undefined).

        ``xp`` is the array module (numpy by default, cupy for the GPU).
        """
        import numpy as np

        xp = np if xp is None else xp
        dtype = np.dtype(dtype)
        size = 1
        for s in shape:
            size *= int(s)
        key = (name, dtype.str, xp.__name__)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = xp.empty(max(size, 1), dtype=dtype)
            self._buffers[key] = buf
        return buf[:size].reshape(shape)

    def clear(self):
        """Drop every cached buffer."""
        self._buffers.clear()
