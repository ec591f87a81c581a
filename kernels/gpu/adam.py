"""Adam on the GPU (``cuda/adam.cu``): :func:`adam_update` (one tensor, as :mod:`kernels.cpu.adam`)
and :func:`adam_update_multi` (every parameter in ONE launch).

PyTorch ``torch.optim.Adam`` (amsgrad=False, L2 ``weight_decay`` added to the
gradient), in the CPU kernel's order of operations::

    g = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    param -= (lr / (1 - beta1**step)) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

Reference: https://pytorch.org/docs/stable/generated/torch.optim.Adam.html
The bias corrections are computed in float64 on the host and passed in the
parameter dtype (as the CPU). Elementwise, so the result does not depend on
the launch shape; compiled without FMA contraction (``--fmad=false``) so the
update matches the CPU's expression rounding for rounding.

:func:`adam_update_multi` takes lists of tensors; the launch tables (device
arrays of pointers, sizes, and the block -> (tensor, offset) map) are built
once per parameter set and cached by their pointers, so a training step
uploads nothing. All tensors must be C-contiguous (they are updated in place).
"""
from __future__ import annotations

import math

import cupy as cp
import numpy as np

from . import _launch as L

__all__ = ["adam_update", "adam_update_multi"]

#: Elements per block of the multi-tensor kernel.
CHUNK = 4096
_tables = {}


def _scalars(dt, step, lr, beta1, beta2, eps, weight_decay):
    if step < 1:
        raise ValueError(f"step must be >= 1 (1-based, after increment), got {step}")
    t = np.dtype(dt).type
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return (t(lr / bc1), t(math.sqrt(bc2)), t(beta1), t(beta2), t(eps), t(weight_decay))


def _check(param, grad, m, v):
    dt = L.float_dtype(param, "param")
    for name, a in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        L.check_out(name, a, param.shape, dt)
    return dt


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam step on one tensor, in place (``param``, ``m``, ``v``; ``grad`` unchanged).

    Parameters
    ----------
    param, grad, m, v : cupy.ndarray [same shape, float32 or float64], C-contiguous
    step : int >= 1
        Step count after increment.
    lr, beta1, beta2, eps, weight_decay : float

    Raises
    ------
    ValueError
        On ``step < 1`` or mismatched shapes/dtypes, or non-contiguous arrays.
    """
    dt = _check(param, grad, m, v)
    n = param.size
    L.kernel("adam.cu", "adam_update", dt)(
        L.flat_grid(n), (L.THREADS,),
        (param, grad, m, v, L.i64(n)) + _scalars(dt, step, lr, beta1, beta2, eps, weight_decay))


def _table(params, grads, ms, vs):
    key = tuple((a.data.ptr, a.size) for group in (params, grads, ms, vs) for a in group)
    tab = _tables.get(key)
    if tab is None:
        sizes = [int(p.size) for p in params]
        blk_t, blk_off = [], []
        for t, n in enumerate(sizes):
            for off in range(0, n, CHUNK):
                blk_t.append(t)
                blk_off.append(off)
        ptrs = [cp.asarray(np.array([a.data.ptr for a in group], dtype=np.uint64)) for group in (params, grads, ms, vs)]
        tab = (*ptrs, cp.asarray(np.array(sizes, np.int64)), cp.asarray(np.array(blk_t, np.int32)),
               cp.asarray(np.array(blk_off, np.int64)), len(blk_t))
        if len(_tables) > 64:
            _tables.clear()
        _tables[key] = tab
    return tab


def adam_update_multi(params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam step on every tensor of ``params`` in a single kernel launch.

    Parameters
    ----------
    params, grads, ms, vs : list of cupy.ndarray
        Same length; ``grads[i]``, ``ms[i]``, ``vs[i]`` match ``params[i]`` in
        shape and dtype; all the same dtype, C-contiguous. Updated in place
        exactly as :func:`adam_update` would update each.
    step, lr, beta1, beta2, eps, weight_decay
        As :func:`adam_update`.

    Raises
    ------
    ValueError
        On mismatched lengths, shapes or dtypes, or non-contiguous arrays.
    """
    if not (len(params) == len(grads) == len(ms) == len(vs)) or not params:
        raise ValueError(f"need equal non-empty lists, got {len(params)}, {len(grads)}, {len(ms)}, {len(vs)}")
    dt = params[0].dtype
    for p, g, m, v in zip(params, grads, ms, vs):
        if _check(p, g, m, v) != dt:
            raise ValueError(f"all parameters must share one dtype, got {dt} and {p.dtype}")
    pp, gp, mp, vp, sizes, blk_t, blk_off, nblk = _table(params, grads, ms, vs)
    L.kernel("adam.cu", "adam_update_multi", dt)(
        (nblk,), (L.THREADS,),
        (pp, gp, mp, vp, sizes, blk_t, blk_off, L.i32(CHUNK)) + _scalars(dt, step, lr, beta1, beta2, eps, weight_decay))
