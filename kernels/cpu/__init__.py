"""CPU backend of hitcnn: Numba kernels (plus NumPy's BLAS for the GEMMs).

One submodule per op (``conv2d``, ``batchnorm``, ``relu``, ``maxpool``,
``dropout``, ``linear``, ``softmax_xent``, ``adam``, ``fused``, ``augment``, ``stft``, and ``device``: the
device policy the training loop uses), each exporting the entry
points listed in DESIGN.md with the same signatures as ``kernels.gpu``.
``xp`` is this backend's array module (NumPy).

Submodules are imported lazily on first attribute access
(``kernels.cpu.conv2d``), so importing the package compiles nothing and a
layer can write ``backend.conv2d.conv2d_forward(...)`` without importing the
submodule itself.
"""
import importlib

import numpy as xp  # noqa: F401  (the backend's array module, read as kernels.cpu.xp)

OPS = ("conv2d", "batchnorm", "relu", "maxpool", "dropout", "linear", "softmax_xent", "adam", "fused", "augment",
       "stft", "device")


def __getattr__(name):
    """Import op submodule ``name`` on first use (PEP 562)."""
    if name in OPS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
