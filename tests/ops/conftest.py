"""Fixtures of the per-op tests, and the GPU emulation switch.

``HITCNN_GPU_EMULATE=1``: the ``gpu`` tests run without a GPU on the CPU
emulator's CuPy stand-in (the same CUDA sources compiled for the host),
installed before any test module of this folder imports CuPy or
``kernels.gpu`` (here, unless a conftest above did it already);
tests/test_gpu_compile.py runs them so in CI.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EMULATED = bool(os.environ.get("HITCNN_GPU_EMULATE"))
_installed = getattr(sys.modules.get("cupy"), "__version__", None) == "emulated"  # e.g. by tests/conftest.py
if EMULATED and not _installed:
    _spec = importlib.util.spec_from_file_location("hitcnn_gpu_emulate", REPO / "tests" / "gpu_emulate.py")
    _emu = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_emu)
    _emu.install()


@pytest.fixture
def G():
    """The GPU backend (``kernels.gpu``; the emulated one under ``HITCNN_GPU_EMULATE=1``)."""
    import kernels

    return kernels.get_backend("gpu")


@pytest.fixture
def C():
    """The CPU backend, with ``fused`` attached (not in ``kernels.cpu.OPS``, the lazy import list)."""
    import kernels

    cpu = kernels.get_backend("cpu")
    cpu.fused = importlib.import_module("kernels.cpu.fused")
    return cpu
