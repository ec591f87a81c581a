"""Argument checks shared by the pointwise CPU kernels (ReLU, dropout, max-pool)."""
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
