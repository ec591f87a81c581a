"""Argument conversion shared by the reference modules (float64 copies with a rank check)."""
from __future__ import annotations

import numpy as np


def f64(name, a, ndim=None):
    """``a`` as a float64 array; ValueError naming ``name`` and the shape if its rank is not ``ndim``."""
    a = np.asarray(a, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a
