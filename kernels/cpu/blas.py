"""BLAS GEMM callable from inside Numba kernels (and so from inside ``prange``).

Why: on 2 cores, calling NumPy's multithreaded OpenBLAS between parallel
Numba kernels makes two thread pools spin against each other (measured: a
64->128 conv took 8 ms instead of 1.5 ms). The conv and linear kernels
therefore run *one* pool, Numba's: each Numba thread calls a
single-threaded ``sgemm``/``dgemm`` on its own cache-sized block.

The GEMM is SciPy's ``scipy.linalg.cython_blas`` (the BLAS SciPy ships,
OpenBLAS in the wheels), reached through Numba's own C helper
``numba_xxgemm`` (the one behind ``np.dot`` in Numba), so kernels that call
it stay cacheable. Importing this module sets *SciPy's* OpenBLAS to one thread
(NumPy's BLAS is a different library and is left alone); parallelism comes
from the callers' ``prange``.

:func:`gemm` computes, on row-major matrices stored in flat 1-D arrays,
``C[m, n] = beta * C + op(A) @ op(B)`` with leading dimensions (row strides)
``ldc, lda, ldb`` and offsets in elements; ``op(X) = X.T`` when ``tX``.
float32 and float64 (all three arrays of one dtype).
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from numba import njit
from numba.core import types

__all__ = ["gemm", "scipy_blas_single_thread"]

# Numba's own C helper (numba/_lapack.c), which resolves scipy.linalg.cython_blas
# sgemm/dgemm by name at run time; referenced by symbol, so callers stay cacheable.
_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
               types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
               types.voidptr, types.voidptr, types.intp),
)


def scipy_blas_single_thread():
    """Set SciPy's OpenBLAS to one thread; return True if it was found.

    Looks for the OpenBLAS that ``scipy.linalg.cython_blas`` loaded (wheel
    layout ``scipy.libs/libscipy_openblas*.so``, else any OpenBLAS mapped by
    this process whose path mentions scipy). Without it the kernels stay
    correct, only slower (BLAS threads would compete with Numba's).
    """
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library we look for)

    cands = glob.glob(os.path.join(os.path.dirname(scipy.__file__), "..", "scipy.libs", "*openblas*.so*"))
    try:
        with open("/proc/self/maps") as fh:
            cands += sorted({ln.split()[-1] for ln in fh if "openblas" in ln and "scipy" in ln and "numpy" not in ln})
    except OSError:
        pass
    for path in cands:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(1)
                return True
    return False


SCIPY_BLAS_SINGLE = scipy_blas_single_thread()


@njit(cache=True, nogil=True)
def gemm(c, c_off, ldc, a, a_off, lda, ta, b, b_off, ldb, tb, m, n, k, beta):
    """Row-major ``C[m,n] = beta*C + op(A)[m,k] @ op(B)[k,n]`` on flat arrays (see module doc).

    Column-major BLAS sees a row-major matrix as its transpose, so this calls
    ``gemm(op(B)^T, op(A)^T) = C^T``. No bounds checks: callers pass sizes that fit.
    """
    sc = np.empty(2, c.dtype)
    sc[0] = 1.0
    sc[1] = beta
    kind = 115 if c.itemsize == 4 else 100  # 's' / 'd'
    # column-major call computing C^T = op(B)^T @ op(A)^T
    _xxgemm(kind, 84 if tb else 78, 84 if ta else 78, n, m, k,
            sc[0:].ctypes, b[b_off:].ctypes, ldb, a[a_off:].ctypes, lda,
            sc[1:].ctypes, c[c_off:].ctypes, ldc)


def _warm_up():
    """Resolve the BLAS pointers on the main thread (the lookup takes the GIL)."""
    for dt in (np.float32, np.float64):
        a = np.ones(4, dt)
        c = np.zeros(4, dt)
        gemm(c, 0, 2, a, 0, 2, False, a, 0, 2, False, 2, 2, 2, 0.0)
        if c[0] != 2.0:
            raise RuntimeError(f"BLAS gemm self-test failed for {np.dtype(dt).name}")


_warm_up()
