"""adam: the Numba kernel against the float64 reference over several steps, bit for bit against a NumPy emulation
in the parameter's dtype, a float32 kernel with no float64 value in it, a known first step, the GPU kernels
(per-tensor and multi-tensor).

Tolerances: float64 rtol 1e-12, atol 1e-14; float32 rtol 1e-4, atol 1e-6 (5 and 40 steps); the NumPy
emulation (same expression, every scalar of the parameter's dtype): bit-identical; GPU vs CPU 1e-5
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


def emulate(p, g, m, v, step, lr, beta1, beta2, eps, wd):
    """The kernel's update in NumPy, every scalar explicitly of the parameters' dtype; returns new (p, m, v)."""
    t = p.dtype.type
    step_size = t(lr / (1.0 - beta1**step))  # bias corrections in float64 on the host, rounded once
    bc2_sqrt = t(np.sqrt(1.0 - beta2**step))
    b1, b2 = t(beta1), t(beta2)
    omb1, omb2 = t(1) - b1, t(1) - b2
    gi = g + t(wd) * p
    mi = b1 * m + omb1 * gi
    vi = b2 * v + omb2 * gi * gi
    out = p - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + t(eps)))
    assert out.dtype == mi.dtype == vi.dtype == p.dtype  # no promotion anywhere
    return out, mi, vi


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [7, 4 * adam._CHUNK, 100_003])  # serial, parallel, parallel with a ragged chunk
def test_adam_bit_identical_to_emulation(dtype, size):
    rng = np.random.default_rng(12)
    p = rng.standard_normal(size).astype(dtype)
    p[:3] = [0.0, 1e-30, -3.5]
    m, v = np.zeros_like(p), np.zeros_like(p)
    P, M, V = p.copy(), m.copy(), v.copy()
    for step in range(1, 7):
        g = (rng.standard_normal(size) * 10.0 ** rng.integers(-6, 2, size)).astype(dtype)
        g[:2] = 0.0
        adam.adam_update(p, g, m, v, step, 3e-3, 0.9, 0.999, 1e-8, 1e-4)
        P, M, V = emulate(P, g, M, V, step, 3e-3, 0.9, 0.999, 1e-8, 1e-4)
        for got, want in ((p, P), (m, M), (v, V)):
            assert got.dtype == dtype
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (step, rel(got, want))


def test_adam_float32_long_run_within_reference_tolerance():
    rng = np.random.default_rng(13)
    size = 100_000
    p = rng.standard_normal(size).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    P, M, V = p.astype(np.float64), np.zeros(size), np.zeros(size)
    for step in range(1, 41):
        g = rng.standard_normal(size).astype(np.float32)
        adam.adam_update(p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
        P, M, V = R.adam_update(P, g, M, V, step, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
    np.testing.assert_allclose(p, P, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m, M, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(v, V, rtol=1e-4, atol=1e-6)


def test_adam_float32_kernel_has_no_float64():
    # recompile the loop uncached (the cache keeps no type annotations) and read every variable's type
    import numba

    fresh = numba.njit(error_model="numpy")(adam._update_ser.py_func)
    p = np.ones(8, np.float32)
    fresh(p, p.copy(), p.copy(), p.copy(), *adam._scalars(np.float32, 3, 1e-3, 0.9, 0.999, 1e-8, 1e-4))
    (sig,) = fresh.signatures
    types = {str(t) for t in fresh.overloads[sig].type_annotation.typemap.values()}
    assert "float32" in types and not any("float64" in t for t in types), sorted(types)
    assert all(type(x) is np.float32 for x in adam._scalars(np.float32, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0))
    assert all(type(x) is np.float64 for x in adam._scalars(np.float64, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0))


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
        if cp.__version__ == "emulated":  # same float32 expression, no FMA contraction (host g++): bit for bit
            assert np.array_equal(pg.get(), pc) and np.array_equal(mg.get(), mc) and np.array_equal(vg.get(), vc)
