"""Shared helpers of the per-op tests: tolerances, the GPU comparison metric, input makers, the layer gradcheck.

GPU tolerance policy (relative to the largest magnitude of the expected array,
``max|got - want| / max|want|``, :func:`rel`):

* pointwise ops (ReLU, dropout, maxpool, Adam): :data:`F32_POINT` = 1e-5 in
  float32; most are bit-identical (same float expression, no FMA
  contraction: ``--fmad=false``);
* convolutions, Linear, reductions (BatchNorm, softmax CE):
  :data:`F32_REDUCE` = 1e-4 in float32: cuBLAS and BLAS sum in different orders;
* float64 GPU against the float64 reference: :data:`F64` = 1e-10.

Awkward shapes throughout: batch 1, odd and non-square planes, stride 2,
padding 0 and 1, overlapping pooling windows, and non-contiguous inputs
given to the GPU launchers (which copy them; outputs must be contiguous).
"""
from __future__ import annotations

import numpy as np

try:  # the real CuPy, or the emulator's stand-in (installed by conftest.py); None without either
    import cupy as cp
except ImportError:
    cp = None

F32_POINT = 1e-5
F32_REDUCE = 1e-4
F64 = 1e-10

#: Gradient checks: max relative error per parameter tensor and for the input (engine.gradcheck).
GRADCHECK_TOL = 1e-6


def rel(got, want):
    """Normwise relative error ``max|got - want| / max|want|`` (``got`` may be a CuPy array)."""
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0


def noncontig(a):
    """A non-C-contiguous CuPy array with the values of ``a`` (every other element of a wider array)."""
    wide = cp.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = cp.asarray(a)
    v = wide[..., ::2]
    assert a.shape[-1] == 1 or not v.flags.c_contiguous
    return v


def rnd(shape, dtype, seed=0, loc=0.0, scale=1.0):
    """Seeded normal values ``loc + scale * N(0, 1)`` of ``dtype``."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(dtype)


def away_from_zero(shape, seed):
    """Seeded float64 normal values with ``|x| >= 0.1`` (away from a ReLU kink)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 0.1, np.sign(x) * 0.1 + x, x)


def layer_gradcheck(name, make, shape):
    """Float64 finite-difference check of one layer (``engine.gradcheck``): every parameter and the input.

    Criterion: max relative error < :data:`GRADCHECK_TOL` per tensor, with a random upstream gradient;
    elements whose perturbation crosses a ReLU kink or a max-pool tie are left out (see
    ``engine/gradcheck.py``); inputs keep away from kinks by construction.
    """
    from engine.gradcheck import gradcheck

    layer = make().astype(np.float64)
    x = away_from_zero(shape, 7)
    if name == "batchnorm":
        layer.params["weight"][:] = [0.5, 1.5, -2.0]
        layer.params["bias"][:] = [0.1, -0.3, 0.2]
    err = gradcheck(layer, x, seed=1)
    assert set(err) == set(layer.params) | {"input"}
    assert max(err.values()) < GRADCHECK_TOL, err
