"""Shared launcher machinery of the GPU kernels: sources, compilation, argument checks.

Every CUDA C source lives in ``kernels/gpu/cuda/*.cu`` (with ``common.cuh``).
:func:`kernel` compiles a source lazily with NVRTC through
:class:`cupy.RawModule`, once per ``(source, dtype)``: the text is built with
``-DREAL=float`` for float32 and ``-DREAL=double`` for float64 (gradient
checks; float32 is what training uses), and the kernel names are
``extern "C"`` and the same in both. :data:`NVRTC_OPTIONS` are the options
used, shared with ``tests/test_gpu_compile.py`` so CI compiles exactly what a
GPU would. ``--fmad=false``: no multiply-add contraction, so elementwise
results match the CPU kernels' float expressions bit for bit where the
expression is the same (every kernel here is memory-bound, it costs nothing).

Launch conventions (cupy/cupy ``docs/source/user_guide/kernel.rst``: CuPy
does not check kernel arguments): the launchers check dtypes and shapes and
raise ValueError naming them; *inputs* that are not C-contiguous are copied
to contiguous arrays (:func:`contig`); *outputs* must be C-contiguous (a copy
would lose the result) or ValueError is raised; scalars are cast with
:func:`i32` / :func:`real` / :func:`f64`; grids are sized by ceil-division
(:func:`blocks`); every kernel body starts with a bounds guard.
"""
from __future__ import annotations

import os

import cupy as cp
import numpy as np

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")

#: Every kernel source, compiled by the CI test for sm_90 with nvcc and NVRTC.
SOURCES = ("util.cu", "conv2d.cu", "batchnorm.cu", "relu.cu", "maxpool.cu", "dropout.cu",
           "softmax_xent.cu", "adam.cu", "fused.cu", "stft.cu", "augment.cu")

#: NVRTC options (besides ``-DREAL=...``); the include path is added by :func:`options`.
NVRTC_OPTIONS = ("--fmad=false",)

#: Threads per block of the elementwise and plane kernels.
THREADS = 256
#: Cap on blocks of the grid-stride elementwise kernels (enough to fill an H200: 132 SMs x 16 blocks).
MAX_BLOCKS = 132 * 16

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_modules = {}
_functions = {}


def options(dtype):
    """NVRTC options for ``dtype`` (float32 or float64): ``NVRTC_OPTIONS`` + ``-DREAL`` + ``-I cuda/``."""
    return NVRTC_OPTIONS + (f"-DREAL={_CTYPE[np.dtype(dtype)]}", f"-I{CUDA_DIR}")


def source(name):
    """Text compiled for ``kernels/gpu/cuda/<name>``: the file with ``common.cuh`` inlined.

    Inlining (rather than ``#include`` through ``-I``) makes CuPy's on-disk
    kernel cache, keyed by the source text and options, see edits of the
    header too. The first line names the file (used by the CPU emulator, ``tests/gpu_emulate.py``).
    """
    def read(n):
        with open(os.path.join(CUDA_DIR, n), encoding="utf-8") as f:
            return f.read()

    text = read(name).replace('#include "common.cuh"', read("common.cuh"), 1)
    return f"// hitcnn kernels/gpu/cuda/{name}\n" + text


def module(name, dtype):
    """The :class:`cupy.RawModule` of source ``name`` built for ``dtype`` (cached; compiled on first use)."""
    key = (name, np.dtype(dtype).str)
    mod = _modules.get(key)
    if mod is None:
        mod = cp.RawModule(code=source(name), options=options(dtype))
        _modules[key] = mod
    return mod


def kernel(name, func, dtype):
    """The ``extern "C"`` kernel ``func`` of source ``name`` for ``dtype`` (a :class:`cupy.RawKernel`, cached)."""
    key = (name, func, np.dtype(dtype).str)
    k = _functions.get(key)
    if k is None:
        k = _functions[key] = module(name, dtype).get_function(func)
    return k


def blocks(n, threads=THREADS):
    """Ceil-division ``ceil(n / threads)`` (at least 1)."""
    return max(1, (int(n) + threads - 1) // threads)


def flat_grid(n, threads=THREADS):
    """Grid of a grid-stride elementwise kernel over ``n`` elements: ``(min(ceil(n/threads), MAX_BLOCKS),)``."""
    return (min(blocks(n, threads), MAX_BLOCKS),)


def plane_threads(length):
    """Threads per block for a plane kernel whose rows have ``length`` elements: 32..256, a multiple of 32."""
    return int(min(THREADS, max(32, (int(length) + 31) // 32 * 32)))


def plane_grid(planes, length):
    """``(grid, block)`` of a plane kernel: grid ``(planes, ceil(length / threads))``.

    ``planes`` goes to grid x (up to 2**31 - 1) and the positions to grid y
    (up to 65535 blocks, i.e. planes of up to 16.7 M elements).
    """
    t = plane_threads(length)
    gy = blocks(length, t)
    if planes > 2**31 - 1 or gy > 65535:
        raise ValueError(f"plane kernel too large: {planes} planes of {length} elements")
    return (int(planes), gy), (t,)


def split_grid(C, L, threads=THREADS, target_blocks=1024, max_split=64):
    """``(S, chunk)`` for a per-channel reduction of ``C`` channels of ``L`` positions (times N images).

    Each channel is cut into ``S`` slices of ``chunk`` positions (at least 4
    per thread) so that ``C * S`` blocks fill the GPU. ``S`` depends on the
    shape only, so the summation order, and the result, are the same every run.
    """
    L = max(int(L), 1)
    s_max = max(1, L // (4 * threads))
    s = max(1, min(max_split, s_max, -(-target_blocks // max(int(C), 1))))
    chunk = -(-L // s)
    s = -(-L // chunk)
    return int(s), int(chunk)


# ----------------------------------------------------------------------------- argument checks
def float_dtype(a, what="x"):
    """dtype of CuPy array ``a`` if float32 or float64, else ValueError."""
    if not isinstance(a, cp.ndarray):
        raise ValueError(f"{what} must be a CuPy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{what} must be float32 or float64, got {a.dtype}")
    return a.dtype


def check(name, a, shape=None, dtype=None):
    """Check a CuPy input array's shape and dtype; return it C-contiguous (copied if it is not).

    Raises
    ------
    ValueError
        If ``a`` is not a CuPy array or has the wrong shape or dtype (the
        message names the expected and the actual values).
    """
    if not isinstance(a, cp.ndarray):
        raise ValueError(f"{name} must be a CuPy array, got {type(a).__name__}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    return contig(a)


def check_out(name, a, shape=None, dtype=None):
    """Check a CuPy output array: shape, dtype and C-contiguity (ValueError otherwise); return it."""
    if not isinstance(a, cp.ndarray):
        raise ValueError(f"{name} must be a CuPy array, got {type(a).__name__}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"output {name} {a.shape} must be C-contiguous")
    return a


def contig(a):
    """``a`` itself if C-contiguous, else a C-contiguous copy (inputs only)."""
    return a if a.flags.c_contiguous else cp.ascontiguousarray(a)


def i32(v):
    """``np.int32(v)``, ValueError if it does not fit."""
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise ValueError(f"value {v} does not fit a 32-bit kernel argument")
    return np.int32(v)


def i64(v):
    """``np.int64(v)``."""
    return np.int64(int(v))


def real(dtype, v):
    """Scalar ``v`` cast to the kernel's ``real`` type (``np.float32`` or ``np.float64``)."""
    return np.dtype(dtype).type(v)


def f64(v):
    """``np.float64(v)`` (the kernels' ``double`` scalars)."""
    return np.float64(v)
