"""CuPy (CUDA C) kernels: same submodules and entry points as :mod:`kernels.cpu`.

Importing this package imports CuPy; :func:`kernels.get_backend` does so lazily.
"""
import cupy as xp  # noqa: F401  (raises ImportError without CuPy: caught by kernels.get_backend)
