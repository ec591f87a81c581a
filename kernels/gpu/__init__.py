"""CuPy (CUDA C) kernels: same submodules and entry points as :mod:`kernels.cpu`.

Importing this package imports CuPy (ImportError without it, which
:func:`kernels.get_backend` turns into a RuntimeError saying how to install
the ``gpu`` extra); it compiles nothing. Op submodules are imported lazily
on first attribute access, and each CUDA source (``cuda/*.cu``) is compiled
by NVRTC on the first launch of one of its kernels (``_launch.kernel``).

Precision: float32 is the training dtype; every kernel is also built for
float64 (``-DREAL=double``) so gradient checks can run on the GPU.
Determinism: no float atomics anywhere; reductions run in a fixed order, so
two runs with the same seed give bit-identical results (cuBLAS GEMMs are
deterministic for a fixed shape, stream and library version).
"""
import importlib

import cupy as xp  # noqa: F401  (raises ImportError without CuPy: caught by kernels.get_backend)

OPS = ("conv2d", "batchnorm", "relu", "maxpool", "dropout", "linear", "softmax_xent", "adam", "fused", "augment",
       "stft", "device")


def __getattr__(name):
    """Import op submodule ``name`` on first use (PEP 562)."""
    if name in OPS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
