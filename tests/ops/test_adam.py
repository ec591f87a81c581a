"""adam: the Numba kernel against the float64 reference over several steps, a known first step, the GPU kernels (per-tensor and multi-tensor).

Tolerances: float64 rtol 1e-12, atol 1e-14; float32 rtol 1e-4, atol 1e-6; GPU vs CPU 1e-5
(tests/ops/helpers.py), the multi-tensor launch bit-identical to the per-tensor one.
"""
import numpy as np
import pytest

from engine import reference as R
from kernels.cpu import adam

from .helpers import F32_POINT, cp, rel

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [7, 100_000])  # serial and parallel paths
def test_adam_matches_reference_over_steps(dtype, size):
    rng = np.random.default_rng(11)
    p = rng.standard_normal(size).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    P, M, V = p.astype(np.float64), np.zeros(size), np.zeros(size)
    for step in range(1, 6):
        g = rng.standard_normal(size).astype(dtype)
        adam.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, 0.01)
        P, M, V = R.adam_update(P, g, M, V, step, 1e-2, 0.9, 0.999, 1e-8, 0.01)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p, P, **tol)
    np.testing.assert_allclose(m, M, **tol)
    np.testing.assert_allclose(v, V, **tol)


def test_adam_first_step_known_value():
    # step 1 from zero moments: m_hat = g, v_hat = g**2, so the update is lr * g / (|g| + eps)
    p = np.array([1.0, -2.0, 0.5])
    g = np.array([4.0, -0.5, 0.0])
    m, v = np.zeros(3), np.zeros(3)
    adam.adam_update(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    assert m.tolist() == [(1 - 0.9) * 4.0, (1 - 0.9) * -0.5, 0.0]
    np.testing.assert_allclose(p, [1.0 - 0.1 * 4 / (4 + 1e-8), -2.0 + 0.1 * 0.5 / (0.5 + 1e-8), 0.5], rtol=1e-15)
    assert p[2] == 0.5
    with pytest.raises(ValueError, match="step must be >= 1"):
        adam.adam_update(p, g, m, v, 0, 0.1, 0.9, 0.999, 1e-8, 0.0)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_adam_single_and_multi(G, C):
    rng = np.random.default_rng(10)
    shapes = [(32, 3, 3, 3), (32,), (5000, 7), (3,)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs_steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(5)]
    cpu = [(p.copy(), np.zeros_like(p), np.zeros_like(p)) for p in ps]
    one = [tuple(cp.asarray(a) for a in t) for t in cpu]
    multi = [tuple(cp.asarray(a) for a in t) for t in cpu]
    for step, gs in enumerate(gs_steps, start=1):
        for (p, m, v), g in zip(cpu, gs):
            C.adam.adam_update(p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
        for (p, m, v), g in zip(one, gs):
            G.adam.adam_update(p, cp.asarray(g), m, v, step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
        G.adam.adam_update_multi([t[0] for t in multi], [cp.asarray(g) for g in gs], [t[1] for t in multi],
                                 [t[2] for t in multi], step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
    for (pc, mc, vc), (pg, mg, vg), (pm, mm, vm) in zip(cpu, one, multi):
        assert rel(pg, pc) < F32_POINT and rel(mg, mc) < F32_POINT and rel(vg, vc) < F32_POINT
        assert np.array_equal(pm.get(), pg.get())  # multi-tensor == per-tensor, bit for bit
