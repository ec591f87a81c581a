"""Batch-time augmentation (issue 8 part 3): reference vs CPU vs (emulated) GPU, seeding, mixup's soft-target loss.

* ``engine.reference.augment`` by hand: shift, gain and masks land where the
  parameters say; the VTLP frequency warp moves a spectral line to ``alpha`` times its row;
* ``kernels.cpu.augment`` against the reference, bit for bit (integer levels
  and a table look-up; mixup one float expression), and with all parameters 0
  equal to the un-augmented decode;
* ``engine.augment.draw_params``: determinism per (seed, epoch, step),
  independent streams per kind, values inside their ranges;
* soft targets in the loss: kernel vs reference, float64 finite differences,
  one-hot soft targets equal to the hard-label loss, PyTorch oracle;
* GPU tests (marker ``gpu``): the CUDA kernels against the CPU ones, bitwise;
  they run on a real GPU, and here under the CPU emulator
  (``tests/gpu_emulate.py``) through :func:`test_gpu_tests_pass_under_cpu_emulation`.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import augment as A
from engine.gradcheck import rel_error
from engine.losses import SoftmaxCrossEntropy
from engine.reference import augment as RA
from engine.reference import softmax_xent as RO

EMULATED = bool(os.environ.get("HITCNN_GPU_EMULATE"))
if EMULATED:
    _spec = importlib.util.spec_from_file_location(
        "hitcnn_gpu_emulate", Path(__file__).resolve().parent / "gpu_emulate.py")
    _emu = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_emu)
    _emu.install()

LUT = None


def lut32():
    from pipeline.spectrogram import colormap_lut

    return np.ascontiguousarray(colormap_lut("viridis"))


def cpu():
    import kernels

    return kernels.get_backend("cpu")


def levels(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w)).astype(np.uint8)


def params_row(shift=0, level=0, fmasks=(), tmasks=(), m=None):
    m = max(len(fmasks), len(tmasks)) if m is None else m
    row = [shift, level]
    for k in range(m):
        row += list(fmasks[k]) if k < len(fmasks) else [0, 0]
    for k in range(m):
        row += list(tmasks[k]) if k < len(tmasks) else [0, 0]
    return row


# ----------------------------------------------------------------------------- reference by hand
def test_reference_shift_gain_masks_land_where_the_params_say():
    q = np.full((1, 6, 8), 100, np.uint8)
    q[0, :, 0] = 7  # a marked first column, to see the shift
    p = np.array([params_row(shift=2, level=30, fmasks=[(1, 2)], tmasks=[(6, 5)])], np.int32)
    lev = RA.augment_levels(q, p)[0]
    assert np.all(lev[[0, 3, 4, 5], :2] == 30)         # shifted-in columns: floor 0, then the gain
    assert np.all(lev[[0, 3, 4, 5], 2] == 37)          # old column 0 now at column 2, +30
    assert np.all(lev[[0, 3, 4, 5], 3:6] == 130)       # content + gain
    assert np.all(lev[1:3] == 0)                       # frequency mask rows 1, 2
    assert np.all(lev[:, 6:] == 0)                     # time mask from column 6, clipped at the edge
    # clipping of the gain, both ways; negative shift
    q2 = np.array([[[0, 250, 10]]], np.uint8)
    assert RA.augment_levels(q2, np.array([[0, 10]], np.int32)).tolist() == [[[10, 255, 20]]]
    assert RA.augment_levels(q2, np.array([[-1, -20]], np.int32)).tolist() == [[[230, 0, 0]]]


def test_reference_zero_params_is_the_plain_decode():
    q = levels(3, 5, 7)
    z = np.zeros((3, 2), np.int32)
    mono = RA.augment_batch(q, z)
    assert np.array_equal(mono.astype(np.float32), (q.astype(np.float32) * np.float32(1.0 / 255.0))[:, None])
    lut = lut32()
    assert np.array_equal(RA.augment_batch(q, z, lut), lut[q].transpose(0, 3, 1, 2).astype(np.float64))


def test_vtlp_rows_values():
    """Jaitly and Hinton's warp, inverted: r / alpha up to the bend (0.8 T min(alpha, 1)), then linear to the top."""
    h, t = 102, 101.0
    assert np.array_equal(RA.vtlp_rows(1.0, h), np.arange(h, dtype=np.float64))
    up = RA.vtlp_rows(1.1, h)  # bend at output row 0.8 * 101 = 80.8, source 80.8 / 1.1 = 73.4545...
    assert up[0] == 0.0 and up[44] == pytest.approx(40.0, abs=1e-12) and up[77] == pytest.approx(70.0, abs=1e-12)
    assert up[-1] == t and up[90] == pytest.approx(t - 11 * (t - 80.8 / 1.1) / (t - 80.8), abs=1e-12)
    down = RA.vtlp_rows(0.9, h)  # bend at output row 0.8 * 101 * 0.9 = 72.72, source 80.8
    assert down[36] == pytest.approx(40.0, abs=1e-12) and down[72] == pytest.approx(80.0, abs=1e-12)
    assert down[-1] == t and down[90] == pytest.approx(t - 11 * (t - 80.8) / (t - 72.72), abs=1e-12)
    for a in (0.8, 0.93, 1.0, 1.07, 1.2):  # continuous and increasing, ends fixed
        u = RA.vtlp_rows(a, h)
        assert u[0] == 0.0 and u[-1] == t and np.all(np.diff(u) > 0), a
    assert RA.vtlp_rows(1.1, 1).tolist() == [0.0]
    tab = RA.warp_table([1.1, 0.9], h)
    assert tab.dtype == np.int32 and tab.shape == (2, h) and tab[0, 44] == 40 * 256 and tab[1, 36] == 40 * 256


def test_reference_frequency_warp_moves_a_line_to_alpha_times_its_row():
    """A bright row 40 (and a dimmer one 20) land at rows 44 and 22 for alpha = 1.1, at 36 and 18 for 0.9."""
    h, w = 102, 9
    q = np.full((2, h, w), 10, np.uint8)
    q[:, 40], q[:, 20] = 250, 130
    z = np.zeros((2, 2), np.int32)
    lev = RA.augment_levels(q, z, RA.warp_table([1.1, 0.9], h))
    # alpha 1.1: rows 43 and 45 read 39.09 and 40.91 (partly the line); alpha 0.9: rows 35 and 37 read 38.9, 41.1
    for i, (r40, r20, lit) in enumerate(((44, 22, [21, 22, 23, 43, 44, 45]), (36, 18, [18, 36]))):
        col = lev[i, :, 0]
        assert col[r40] == 250 and col[r20] == 130 and np.all(lev[i] == lev[i, :, :1])
        assert np.flatnonzero(col > 10).tolist() == lit
    # between the lines the interpolation is integer: row 43 for alpha 1.1 reads source 39.0909 (x 256 = 10007)
    u = int(RA.warp_table([1.1], h)[0, 43])
    assert u == 10007 and lev[0, 43, 0] == (10 * (256 - (u & 255)) + 250 * (u & 255) + 128) >> 8
    # the identity table is no warp; the warp composes with shift, gain and masks (warp first)
    ident = RA.warp_table([1.0, 1.0], h)
    p = np.array([params_row(shift=1, level=5, fmasks=[(44, 1)]), params_row(m=1)], np.int32)
    assert np.array_equal(RA.augment_levels(q, p, ident), RA.augment_levels(q, p))
    lw = RA.augment_levels(q, p, RA.warp_table([1.1, 1.0], h))
    assert np.all(lw[0, 44] == 0) and lw[0, 22, 0] == 5 and np.all(lw[0, 22, 1:] == 135)
    with pytest.raises(ValueError, match="warp"):
        RA.augment_levels(q, z, np.full((2, h), 256 * h, np.int32))


def test_reference_time_stretch_and_bilinear_resampling():
    """Columns read at m + (c - m) / beta about the centre m; outside the image is the floor; with the warp, bilinear."""
    assert np.array_equal(RA.stretch_columns(1.0, 9), np.arange(9.0))
    assert RA.stretch_columns(2.0, 9).tolist() == [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]
    assert RA.stretch_columns(0.5, 5).tolist() == [-2.0, 0.0, 2.0, 4.0, 6.0]
    assert RA.stretch_table([2.0], 9).tolist() == [[512, 640, 768, 896, 1024, 1152, 1280, 1408, 1536]]
    q = np.zeros((1, 1, 9), np.uint8)
    q[0, 0, 3], q[0, 0, 5] = 200, 100
    z = np.zeros((1, 2), np.int32)
    # beta = 2 (twice as long): column c reads 2 + c / 2, so the 200 at 3 covers columns 1-3, the 100 at 5 columns 5-7
    lev = RA.augment_levels(q, z, stretch=RA.stretch_table([2.0], 9))[0, 0]
    assert lev.tolist() == [0, 100, 200, 100, 0, 50, 100, 50, 0]
    # beta = 0.5 on 5 columns: reads -2 (floor), 0, 2, 4, 6 (floor)
    q5 = np.array([[[10, 20, 30, 40, 50]]], np.uint8)
    assert RA.augment_levels(q5, z, stretch=RA.stretch_table([0.5], 5)).tolist() == [[[0, 10, 30, 50, 0]]]
    # a position just left of column 0 interpolates with the floor: -0.5 -> (0 * 128 + 10 * 128 + 128) >> 8 = 5
    assert RA.augment_levels(q5, z, stretch=np.array([[-128, 0, 256, 512, 1152]], np.int32)).tolist() == \
        [[[5, 10, 20, 30, 25]]]
    # both tables: bilinear; the identity tables are the plain image
    qb = levels(2, 6, 7, seed=4)
    pb = np.zeros((2, 2), np.int32)
    ident_w, ident_s = RA.warp_table([1.0, 1.0], 6), RA.stretch_table([1.0, 1.0], 7)
    assert np.array_equal(RA.augment_levels(qb, pb, ident_w, ident_s), qb)
    wt, st = np.array([[128] * 6, [0] * 6], np.int32), np.array([[128] * 7, [64] * 7], np.int32)
    lb = RA.augment_levels(qb, pb, wt, st)
    qi = qb.astype(np.int64)
    a0 = qi[0, 0, 0] * 128 + qi[0, 1, 0] * 128
    a1 = qi[0, 0, 1] * 128 + qi[0, 1, 1] * 128
    assert lb[0, 3, 2] == (a0 * 128 + a1 * 128 + 32768) >> 16
    assert lb[1, 4, 5] == (qi[1, 0, 0] * 256 * 192 + qi[1, 0, 1] * 256 * 64 + 32768) >> 16


# ----------------------------------------------------------------------------- CPU kernel
def random_warp(n, h, seed):
    return RA.warp_table(np.random.default_rng(seed).uniform(0.85, 1.15, n), h)


def random_stretch(n, w, seed):
    return RA.stretch_table(np.random.default_rng(seed).uniform(0.7, 1.3, n), w)


def random_params(n, h, w, m, seed):
    r = np.random.default_rng(seed)
    p = np.zeros((n, 2 + 4 * m), np.int32)
    p[:, 0] = r.integers(-w, w + 1, n)  # shifts beyond the window too: all floor
    p[:, 1] = r.integers(-300, 301, n)
    for k in range(m):  # masks partly outside the image, zero widths
        p[:, 2 + 2 * k] = r.integers(-3, h + 2, n)
        p[:, 3 + 2 * k] = r.integers(0, h // 2 + 2, n)
        p[:, 2 + 2 * m + 2 * k] = r.integers(-3, w + 2, n)
        p[:, 3 + 2 * m + 2 * k] = r.integers(0, w // 2 + 2, n)
    return p


SHAPES = [(1, 1, 1, 0), (2, 5, 7, 1), (3, 17, 31, 2), (16, 102, 159, 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,h,w,m", SHAPES)
def test_cpu_augment_equals_reference_bitwise(n, h, w, m, dtype):
    q, p = levels(n, h, w, seed=n + h), random_params(n, h, w, m, seed=w)
    C = cpu()
    out = np.empty((n, 1, h, w), dtype)
    C.augment.augment_batch(out, q, p)
    assert np.array_equal(out, RA.augment_batch(q, p).astype(dtype))
    lut = lut32().astype(dtype)
    out3 = np.empty((n, 3, h, w), dtype)
    C.augment.augment_batch(out3, q, p, lut)
    assert np.array_equal(out3, RA.augment_batch(q, p, lut).astype(dtype))
    wt = random_warp(n, h, seed=h + w)  # with the VTLP warp
    C.augment.augment_batch(out, q, p, None, wt)
    assert np.array_equal(out, RA.augment_batch(q, p, None, wt).astype(dtype))
    C.augment.augment_batch(out3, q, p, lut, wt)
    assert np.array_equal(out3, RA.augment_batch(q, p, lut, wt).astype(dtype))
    st = random_stretch(n, w, seed=n + w)  # with the time stretch, alone and with the warp
    C.augment.augment_batch(out, q, p, None, None, st)
    assert np.array_equal(out, RA.augment_batch(q, p, None, None, st).astype(dtype))
    C.augment.augment_batch(out3, q, p, lut, wt, st)
    assert np.array_equal(out3, RA.augment_batch(q, p, lut, wt, st).astype(dtype))


def test_cpu_augment_rejects_bad_warps():
    C = cpu()
    q, p, out = levels(2, 4, 5), np.zeros((2, 2), np.int32), np.empty((2, 1, 4, 5), np.float32)
    with pytest.raises(ValueError, match="warp must be int32"):
        C.augment.augment_batch(out, q, p, None, np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match="warp must be int32"):
        C.augment.augment_batch(out, q, p, None, np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="warp entries"):
        C.augment.augment_batch(out, q, p, None, np.full((2, 4), 3 * 256 + 1, np.int32))
    with pytest.raises(ValueError, match="stretch must be int32"):
        C.augment.augment_batch(out, q, p, None, None, np.zeros((2, 4), np.int32))


def test_cpu_augment_rejects_bad_arguments():
    C = cpu()
    q = levels(2, 4, 5)
    p = np.zeros((2, 2), np.int32)
    with pytest.raises(ValueError, match="q must be"):
        C.augment.augment_batch(np.empty((2, 1, 4, 5), np.float32), q.astype(np.int32), p)
    with pytest.raises(ValueError, match="params"):
        C.augment.augment_batch(np.empty((2, 1, 4, 5), np.float32), q, np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="lut"):
        C.augment.augment_batch(np.empty((2, 3, 4, 5), np.float32), q, p)
    with pytest.raises(ValueError, match="out must be"):
        C.augment.augment_batch(np.empty((2, 2, 4, 5), np.float32), q, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_mixup_equals_reference(dtype):
    r = np.random.default_rng(3)
    x = r.random((5, 3, 4, 6)).astype(dtype)
    y = r.integers(0, 4, 5).astype(np.int64)
    perm = r.permutation(5).astype(np.int64)
    out, t = np.empty_like(x), np.empty((5, 4), dtype)
    cpu().augment.mixup_batch(out, t, x, y, perm, 0.3)
    xr, tr = RA.mixup_batch(x, y, perm, 0.3, 4)
    tol = 1e-6 if dtype == np.float32 else 1e-15
    assert rel_error(out, xr) < tol and rel_error(t, tr) < tol
    lam, mlam = dtype(0.3), dtype(1 - 0.3)
    assert np.array_equal(out, lam * x + mlam * x[perm])  # the documented float expression, exactly
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="share memory"):
        cpu().augment.mixup_batch(x, t, x, y, perm, 0.3)
    with pytest.raises(ValueError, match="lam"):
        cpu().augment.mixup_batch(out, t, x, y, perm, 1.5)
    with pytest.raises(ValueError, match="y must be in"):
        cpu().augment.mixup_batch(out, t, x, y + 4, perm, 0.3)


# ----------------------------------------------------------------------------- parameters and the engine function
CFG = A.AugmentConfig(freq_mask=10, time_mask=20, n_masks=2, gain_db=6.0, time_shift=0.1, mixup=0.4)


def test_draw_params_deterministic_and_per_step():
    a = A.draw_params(CFG, 0, 1, 2, 16, 102, 159)
    b = A.draw_params(CFG, 0, 1, 2, 16, 102, 159)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    for other in ((1, 1, 2), (0, 2, 2), (0, 1, 3)):
        c = A.draw_params(CFG, *other, 16, 102, 159)
        assert not np.array_equal(a[0], c[0])


def test_draw_params_ranges_and_independent_kinds():
    h, w = 102, 159
    p, perm, lam = A.draw_params(CFG, 5, 0, 0, 400, h, w)
    s = round(0.1 * w)
    assert p.shape == (400, 2 + 4 * 2) and p.dtype == np.int32
    assert p[:, 0].min() == -s and p[:, 0].max() == s           # 400 draws reach both ends of {-16..16}
    g = round(255 * 6.0 / 80.0)
    assert -g <= p[:, 1].min() < 0 < p[:, 1].max() <= g
    f0, fw = p[:, 2:6:2], p[:, 3:6:2]
    t0, tw = p[:, 6:10:2], p[:, 7:10:2]
    assert fw.min() == 0 and fw.max() == 10 and tw.max() == 20
    assert f0.min() >= 0 and np.all(f0 + fw <= h) and t0.min() >= 0 and np.all(t0 + tw <= w)
    assert sorted(perm.tolist()) == list(range(400)) and 0.0 <= lam <= 1.0
    # turning one kind off leaves the others' draws as they were
    no_gain = A.draw_params(A.AugmentConfig(10, 20, 2, 0.0, 0.1, 0.4), 5, 0, 0, 400, h, w)
    assert np.all(no_gain[0][:, 1] == 0)
    assert np.array_equal(np.delete(no_gain[0], 1, axis=1), np.delete(p, 1, axis=1))
    assert np.array_equal(no_gain[1], perm) and no_gain[2] == lam
    off = A.draw_params(A.OFF, 5, 0, 0, 4, h, w)
    assert off[0].shape == (4, 2) and not off[0].any() and off[1] is None and off[2] is None


def test_draw_warp_seeded_in_range_and_equal_to_the_reference():
    cfg = A.AugmentConfig(freq_warp=0.1)
    tab, alpha = A.draw_warp(cfg, 5, 1, 2, 400, 102)
    assert tab.shape == (400, 102) and tab.dtype == np.int32 and alpha.shape == (400,)
    assert 0.9 <= alpha.min() < 0.92 and 1.08 < alpha.max() <= 1.1     # U[0.9, 1.1]
    assert np.array_equal(tab, RA.warp_table(alpha, 102))                 # the engine's table = the reference's
    t2, a2 = A.draw_warp(cfg, 5, 1, 2, 400, 102)
    assert np.array_equal(t2, tab) and np.array_equal(a2, alpha)
    for other in ((6, 1, 2), (5, 2, 2), (5, 1, 3)):
        assert not np.array_equal(A.draw_warp(cfg, *other, 400, 102)[1], alpha)
    assert A.draw_warp(CFG, 5, 1, 2, 4, 102) == (None, None)
    # its own stream: the other kinds' draws do not change when the warp is turned on
    with_warp = A.AugmentConfig(**{**CFG.to_dict(), "freq_warp": 0.1})
    a, b = A.draw_params(CFG, 5, 1, 2, 16, 102, 159), A.draw_params(with_warp, 5, 1, 2, 16, 102, 159)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_draw_stretch_seeded_in_range_and_equal_to_the_reference():
    cfg = A.AugmentConfig(time_stretch=0.2)
    tab, beta = A.draw_stretch(cfg, 5, 1, 2, 300, 159)
    assert tab.shape == (300, 159) and tab.dtype == np.int32
    assert 0.8 <= beta.min() < 0.82 and 1.18 < beta.max() <= 1.2
    assert np.array_equal(tab, RA.stretch_table(beta, 159))
    assert np.array_equal(A.draw_stretch(cfg, 5, 1, 2, 300, 159)[0], tab)
    assert not np.array_equal(A.draw_stretch(cfg, 5, 1, 3, 300, 159)[1], beta)
    assert A.draw_stretch(CFG, 5, 1, 2, 4, 159) == (None, None)
    both = A.AugmentConfig(freq_warp=0.1, time_stretch=0.2)  # independent streams
    assert np.array_equal(A.draw_warp(both, 5, 1, 2, 300, 102)[1], A.draw_warp(A.AugmentConfig(freq_warp=0.1), 5, 1,
                                                                                2, 300, 102)[1])
    assert np.array_equal(A.draw_stretch(both, 5, 1, 2, 300, 159)[1], beta)


def test_augment_batch_applies_the_seeded_warp_and_stretch():
    cfg = A.AugmentConfig(freq_warp=0.1, gain_db=6.0, n_masks=1, freq_mask=4, time_mask=4)
    q, y = levels(5, 30, 16, seed=3), np.arange(5, dtype=np.int64) % 3
    lut = lut32()
    x, t = A.augment_batch(q, y, cfg, 2, 1, 4, 3, lut=lut)
    p, _, _ = A.draw_params(cfg, 2, 1, 4, 5, 30, 16)
    tab, _ = A.draw_warp(cfg, 2, 1, 4, 5, 30)
    assert t is y and np.array_equal(x, RA.augment_batch(q, p, lut, tab).astype(np.float32))
    assert not np.array_equal(x, RA.augment_batch(q, p, lut).astype(np.float32))  # really warped
    assert cfg.image_on and A.AugmentConfig(freq_warp=0.1).enabled and A.AugmentConfig(time_stretch=0.1).enabled
    cfg2 = A.AugmentConfig(**{**cfg.to_dict(), "time_stretch": 0.2, "time_shift": 0.1})
    x2, _ = A.augment_batch(q, y, cfg2, 2, 1, 4, 3)
    p2, _, _ = A.draw_params(cfg2, 2, 1, 4, 5, 30, 16)
    st, _ = A.draw_stretch(cfg2, 2, 1, 4, 5, 16)
    assert np.array_equal(x2, RA.augment_batch(q, p2, None, tab, st).astype(np.float32))


def test_augment_batch_masks_land_where_the_seed_says():
    """The engine function on the CPU: the seeded masks are at level 0, everything else is the shifted+gained image."""
    cfg = A.AugmentConfig(freq_mask=8, time_mask=12, n_masks=2, gain_db=6.0, time_shift=0.1)
    q = np.full((4, 30, 40), 120, np.uint8)
    y = np.arange(4, dtype=np.int64)
    x, t = A.augment_batch(q, y, cfg, seed=3, epoch=2, step=7, n_classes=4)
    assert t is y and x.shape == (4, 1, 30, 40) and x.dtype == np.float32
    p, _, _ = A.draw_params(cfg, 3, 2, 7, 4, 30, 40)
    lev = np.rint(x[:, 0].astype(np.float64) * 255).astype(int)
    for i in range(4):
        want = np.full((30, 40), 120 + p[i, 1])
        s = p[i, 0]
        if s > 0:
            want[:, :s] = p[i, 1]
        elif s < 0:
            want[:, 40 + s:] = p[i, 1]
        for k in range(2):
            want[p[i, 2 + 2 * k]:p[i, 2 + 2 * k] + p[i, 3 + 2 * k]] = 0
            want[:, p[i, 6 + 2 * k]:p[i, 6 + 2 * k] + p[i, 7 + 2 * k]] = 0
        assert np.array_equal(lev[i], np.clip(want, 0, 255)), i
    x2, _ = A.augment_batch(q, y, cfg, seed=3, epoch=2, step=7, n_classes=4)
    assert np.array_equal(x, x2)


def test_augment_batch_rgb_mixup_and_buffers():
    cfg = A.AugmentConfig(freq_mask=5, time_mask=5, n_masks=1, mixup=0.5)
    q, y = levels(6, 12, 14), np.array([0, 1, 2, 0, 1, 2], np.int64)
    lut = lut32()
    bufs = {}
    x, t = A.augment_batch(q, y, cfg, 0, 0, 1, 3, lut=lut, bufs=bufs)
    p, perm, lam = A.draw_params(cfg, 0, 0, 1, 6, 12, 14)
    xa = RA.augment_batch(q, p, lut)
    xr, tr = RA.mixup_batch(xa, y, perm, lam, 3)
    assert x.shape == (6, 3, 12, 14) and t.shape == (6, 3)
    assert rel_error(x, xr) < 1e-6 and rel_error(t, tr) < 1e-6
    x2, _ = A.augment_batch(q, y, cfg, 0, 0, 1, 3, lut=lut, bufs=bufs)
    assert x2 is x  # reused buffer
    assert A.augment_batch(q, y, A.OFF, 0, 0, 1, 3, lut=lut)[0].tolist() == lut[q].transpose(0, 3, 1, 2).tolist()


def test_augment_config_checks_and_round_trip():
    assert A.config_problems(A.DEFAULT) == [] and A.DEFAULT.enabled and not A.OFF.enabled
    assert A.AugmentConfig.from_dict(A.DEFAULT.to_dict()) == A.DEFAULT
    assert A.AugmentConfig.from_dict(None) == A.OFF
    bad = A.config_problems(A.AugmentConfig(freq_mask=-1, gain_db=float("nan"), time_shift=2.0, mixup=-1,
                                            freq_warp=0.6))
    assert [b[0] for b in bad] == ["freq_mask", "gain_db", "mixup", "time_shift", "freq_warp"]
    assert A.config_problems(A.AugmentConfig(freq_warp=-0.1))[0][0] == "freq_warp"
    assert A.config_problems(A.AugmentConfig(time_stretch=0.7))[0][0] == "time_stretch"
    old = {k: v for k, v in A.DEFAULT.to_dict().items() if k not in ("freq_warp", "time_stretch")}  # older config.json
    assert A.AugmentConfig.from_dict(old) == A.AugmentConfig(**{**A.DEFAULT.to_dict(), "freq_warp": 0.0,
                                                                "time_stretch": 0.0})
    with pytest.raises(ValueError, match="freq_mask"):
        A.augment_batch(levels(1, 2, 2), np.zeros(1, np.int64), A.AugmentConfig(freq_mask=-1), 0, 0, 0, 2)


def test_cli_freq_warp_flag_and_reproduce_default_off():
    """--freq-warp reaches the config; `reproduce` keeps every augmentation off unless a flag asks for one."""
    import cli

    p = cli.build_parser()
    train = cli.augment_config(p.parse_args(["train", "--freq-warp", "0.1"]))
    assert train == {**A.DEFAULT.to_dict(), "freq_warp": 0.1}
    assert cli.augment_config(p.parse_args(["train", "--time-stretch", "0.2"]))["time_stretch"] == 0.2
    assert cli.augment_config(p.parse_args(["train"])) == A.DEFAULT.to_dict()
    assert cli.augment_config(p.parse_args(["reproduce", "--audio-dir", "x", "--metadata", "y"])) == A.OFF.to_dict()
    only = cli.augment_config(p.parse_args(["reproduce", "--audio-dir", "x", "--metadata", "y", "--freq-warp", "0.1"]))
    assert only == {**A.OFF.to_dict(), "freq_warp": 0.1}


# ----------------------------------------------------------------------------- soft targets in the loss
def soft(n, k, seed):
    t = np.random.default_rng(seed).random((n, k))
    return t / t.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_xent_kernel_matches_reference(dtype, weighted):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((7, 4)) * 3).astype(dtype)
    t = soft(7, 4, 2).astype(dtype)
    w = np.array([1.0, 2.0, 0.5, 3.0], dtype) if weighted else None
    sx = cpu().softmax_xent
    probs, d = np.empty_like(logits), np.empty_like(logits)
    loss = sx.softmax_xent_forward(probs, logits, t, w)
    loss_r, probs_r = RO.softmax_xent_forward(logits, t, w)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert abs(loss - loss_r) <= tol * max(1.0, abs(loss_r)) and rel_error(probs, probs_r) < tol
    sx.softmax_xent_backward(d, probs, t, w)
    assert rel_error(d, RO.softmax_xent_backward(probs_r, t, w)) < tol
    with pytest.raises(ValueError, match="soft targets"):
        sx.softmax_xent_forward(probs, logits, -t, w)


def test_soft_xent_gradient_vs_finite_differences():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4))
    t = rng.random((5, 4))  # not normalised: the general formula
    for w in (None, np.array([1.0, 2.0, 0.5, 3.0])):
        loss = SoftmaxCrossEntropy(w)
        loss.forward(logits, t)
        d = loss.backward().copy()
        num = np.empty_like(logits)
        h = 1e-6
        for i in np.ndindex(logits.shape):
            lp, lm = logits.copy(), logits.copy()
            lp[i] += h
            lm[i] -= h
            num[i] = (loss.forward(lp, t) - loss.forward(lm, t)) / (2 * h)
        assert rel_error(d, num) < 1e-6


def test_one_hot_soft_targets_equal_the_hard_label_loss():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 1, 0, 2], np.int64)
    crit = SoftmaxCrossEntropy()
    hard = crit.forward(logits, y)
    dh = crit.backward().copy()
    softl = crit.forward(logits, np.eye(3, dtype=np.float32)[y])
    ds = crit.backward().copy()
    assert abs(hard - softl) < 1e-6 and rel_error(ds, dh) < 1e-6
    # the hard-label path is the old kernel: equal to the reference as before
    loss_r, _ = RO.softmax_xent_forward(logits, y)
    assert abs(hard - loss_r) < 1e-6


@pytest.mark.torch
def test_soft_xent_against_torch():
    import torch

    rng = np.random.default_rng(6)
    logits = rng.standard_normal((8, 5))
    t = soft(8, 5, 7)
    w = rng.random(5) + 0.5
    for weights in (None, w):
        crit = SoftmaxCrossEntropy(weights)
        loss = crit.forward(logits, t)
        d = crit.backward()
        lt = torch.tensor(logits, requires_grad=True)
        ref = torch.nn.functional.cross_entropy(lt, torch.tensor(t),
                                                weight=None if weights is None else torch.tensor(weights))
        ref.backward()
        assert abs(loss - ref.item()) < 1e-12 and rel_error(d, lt.grad.numpy()) < 1e-12


# ----------------------------------------------------------------------------- additive noise
def noise_rows(n, seed=0):
    r = np.random.default_rng(seed)
    rows = np.stack([r.integers(-1, 256, n), r.integers(0, 2 ** 31, n)], axis=1).astype(np.int32)
    rows[0] = (-1, 5)  # a clean image
    return rows


def test_reference_noise_is_a_power_sum_on_the_clip_columns_only():
    """augment_noise by hand: the padding columns (all level 0) and a clean image are unchanged; elsewhere the
    level is the power sum of the image and the noise (at least the louder, at most 3 dB above it)."""
    q = levels(3, 16, 20, seed=4)
    q[:, :, 14:] = 0  # a short clip: its padding
    noise = np.array([[-1, 3], [120, 7], [255, 11]], np.int32)
    dither, add = RA.noise_tables(80.0)
    assert add[0] == round(255 / 80 * 10 * np.log10(2)) and add[255] == 0 and (np.diff(add) <= 0).all()
    assert dither[0] < 0 < dither[-1] and (np.diff(dither) >= 0).all()
    out = RA.augment_noise(q, noise, dither, add)
    assert np.array_equal(out[0], q[0]) and not out[:, :, 14:].any()
    rr, cc = np.meshgrid(np.arange(16), np.arange(14), indexing="ij")
    b = np.clip(120 + dither[RA.noise_hash(7, rr, cc)], 0, 255)
    a = q[1, :, :14].astype(np.int64)
    assert (out[1, :, :14] >= np.maximum(a, b)).all() and (out[1, :, :14] <= np.maximum(a, b) + add[0]).all()
    assert out[2, :, :14].min() >= 255 + dither.min() and out[2, :, :14].mean() > 240  # noise at the peak level
    assert 50 < len(np.unique(RA.noise_hash(9, rr, cc))) <= 256  # the spread is spread


@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (5, 20, 30), (4, 102, 159)])
def test_cpu_add_noise_equals_reference_bitwise(n, h, w):
    q = levels(n, h, w, seed=w)
    q[:, :, w // 2:] = 0
    noise = noise_rows(n, seed=h)
    dither, add = A.noise_tables(80.0)
    assert np.array_equal(dither, RA.noise_tables(80.0)[0]) and np.array_equal(add, RA.noise_tables(80.0)[1])
    out = np.empty_like(q)
    cpu().augment.augment_noise(out, q, noise, dither, add)
    assert np.array_equal(out, RA.augment_noise(q, noise, dither, add))
    q2 = q.copy()
    cpu().augment.augment_noise(q2, q2, noise, dither, add)  # in place
    assert np.array_equal(q2, out)
    with pytest.raises(ValueError, match="noise"):
        cpu().augment.augment_noise(out, q, noise[:, :1].copy(), dither, add)
    with pytest.raises(ValueError, match="dither"):
        cpu().augment.augment_noise(out, q, noise, dither[:10].copy(), add)


def test_draw_noise_seeded_share_and_range():
    cfg = A.AugmentConfig(noise_db=30.0)
    a = A.draw_noise(cfg, 1, 2, 3, 4000, 80.0)
    assert np.array_equal(a, A.draw_noise(cfg, 1, 2, 3, 4000, 80.0))
    assert not np.array_equal(a, A.draw_noise(cfg, 1, 2, 4, 4000, 80.0))
    on = a[:, 0] >= 0
    assert abs(on.mean() - A.NOISE_SHARE) < 0.03 and (a[~on, 0] == -1).all()
    assert a[on, 0].min() >= 0 and a[on, 0].max() <= round(255 * (1 - 30 / 80))
    assert (a[:, 1] >= 0).all() and A.draw_noise(A.AugmentConfig(), 1, 2, 3, 4, 80.0) is None
    # the other kinds' draws do not move when noise is turned on
    base = A.AugmentConfig(freq_mask=5, time_mask=5, n_masks=1, gain_db=6, time_shift=0.1, mixup=0.2)
    noisy = A.AugmentConfig(**{**base.to_dict(), "noise_db": 30.0})
    pa, pb = A.draw_params(base, 0, 1, 2, 8, 20, 24), A.draw_params(noisy, 0, 1, 2, 8, 20, 24)
    assert np.array_equal(pa[0], pb[0]) and np.array_equal(pa[1], pb[1]) and pa[2] == pb[2]
    assert A.config_problems(A.AugmentConfig(noise_db=-1.0))[0][0] == "noise_db"
    assert A.AugmentConfig(noise_db=30.0).image_on and A.AugmentConfig.from_dict({}).noise_db == 0.0


def test_augment_batch_with_noise_is_noise_then_the_rest():
    """engine.augment_batch with noise: the reference's noise on the levels, then the other steps on the result."""
    q, y = levels(6, 20, 24, seed=3), np.arange(6, dtype=np.int64) % 3
    q[:, :, 18:] = 0
    cfg = A.AugmentConfig(freq_mask=4, time_mask=4, n_masks=1, gain_db=6.0, time_shift=0.1, noise_db=20.0)
    x, _ = A.augment_batch(q, y, cfg, 5, 1, 2, 3)
    noise = A.draw_noise(cfg, 5, 1, 2, 6, 80.0)
    assert (noise[:, 0] >= 0).any() and (noise[:, 0] < 0).any()
    qn = RA.augment_noise(q, noise, *RA.noise_tables(80.0))
    p, _, _ = A.draw_params(cfg, 5, 1, 2, 6, 20, 24)
    assert np.array_equal(x, RA.augment_batch(qn, p).astype(np.float32))
    x0, _ = A.augment_batch(q, y, A.AugmentConfig(**{**cfg.to_dict(), "noise_db": 0.0}), 5, 1, 2, 3)
    assert not np.array_equal(x, x0)


def test_cli_noise_db_flag_and_reproduce_default_off():
    import cli

    p = cli.build_parser()
    a = p.parse_args(["train", "--noise-db", "25"])
    assert cli.augment_config(a)["noise_db"] == 25.0
    assert cli.augment_config(p.parse_args(["train"]))["noise_db"] == A.DEFAULT.noise_db
    assert cli.augment_config(p.parse_args(["train", "--augment", "off"]))["noise_db"] == 0.0


# ----------------------------------------------------------------------------- GPU (real or emulated)
@pytest.fixture
def G():
    pytest.importorskip("cupy")
    import kernels

    return kernels.get_backend("gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,h,w,m", SHAPES[:3] + [(4, 102, 159, 2)])
def test_gpu_augment_equals_cpu_bitwise(G, n, h, w, m, dtype):
    import cupy as cp

    q, p = levels(n, h, w, seed=n), random_params(n, h, w, m, seed=h)
    C = cpu()
    lut = lut32().astype(dtype)
    for c, lt in ((1, None), (3, lut)):
        oc = np.empty((n, c, h, w), dtype)
        C.augment.augment_batch(oc, q, p, lt)
        og = cp.empty((n, c, h, w), dtype)
        G.augment.augment_batch(og, cp.asarray(q), cp.asarray(p), None if lt is None else cp.asarray(lt))
        assert np.array_equal(og.get(), oc), c
        wt, st = random_warp(n, h, seed=w), random_stretch(n, w, seed=h)  # with the VTLP warp and the stretch
        for wa, sa in ((wt, None), (None, st), (wt, st)):
            C.augment.augment_batch(oc, q, p, lt, wa, sa)
            G.augment.augment_batch(og, cp.asarray(q), cp.asarray(p), None if lt is None else cp.asarray(lt),
                                    None if wa is None else cp.asarray(wa), None if sa is None else cp.asarray(sa))
            assert np.array_equal(og.get(), oc), c
            assert np.array_equal(oc, RA.augment_batch(q, p, lt, wa, sa).astype(dtype)), c


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_mixup_equals_cpu_bitwise(G, dtype):
    import cupy as cp

    r = np.random.default_rng(8)
    x = r.random((7, 3, 5, 9)).astype(dtype)
    y = r.integers(0, 3, 7).astype(np.int64)
    perm = r.permutation(7).astype(np.int64)
    oc, tc = np.empty_like(x), np.empty((7, 3), dtype)
    cpu().augment.mixup_batch(oc, tc, x, y, perm, 0.37)
    og, tg = cp.empty(x.shape, dtype), cp.empty((7, 3), dtype)
    G.augment.mixup_batch(og, tg, cp.asarray(x), cp.asarray(y), cp.asarray(perm), 0.37)
    assert np.array_equal(og.get(), oc) and np.array_equal(tg.get(), tc)


@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [False, True])
def test_gpu_soft_xent_matches_cpu(G, weighted):
    import cupy as cp

    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((17, 3)) * 4).astype(np.float32)
    t = soft(17, 3, 10).astype(np.float32)
    cw = np.array([0.5, 1.0, 2.0], np.float32) if weighted else None
    pc, dc = np.empty_like(logits), np.empty_like(logits)
    lc = cpu().softmax_xent.softmax_xent_forward(pc, logits, t, cw)
    cpu().softmax_xent.softmax_xent_backward(dc, pc, t, cw)
    pg, dg = cp.empty((17, 3), np.float32), cp.empty((17, 3), np.float32)
    cwg = None if cw is None else cp.asarray(cw)
    lg = G.softmax_xent.softmax_xent_forward(pg, cp.asarray(logits), cp.asarray(t), cwg)
    G.softmax_xent.softmax_xent_backward(dg, pg, cp.asarray(t), cwg)
    assert abs(lg - lc) <= 1e-6 * max(1.0, abs(lc))
    assert rel_error(pg.get(), pc) < 1e-6 and rel_error(dg.get(), dc) < 1e-6
    with pytest.raises(ValueError, match="soft targets"):
        G.softmax_xent.softmax_xent_forward(pg, cp.asarray(logits), cp.asarray(-t), cwg)


@pytest.mark.gpu
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (5, 20, 30), (4, 102, 159)])
def test_gpu_add_noise_equals_cpu_bitwise(G, n, h, w):
    import cupy as cp

    q = levels(n, h, w, seed=h)
    q[:, :, (2 * w) // 3:] = 0
    noise = noise_rows(n, seed=w)
    dither, add = A.noise_tables(80.0)
    oc = np.empty_like(q)
    cpu().augment.augment_noise(oc, q, noise, dither, add)
    og = cp.empty(q.shape, np.uint8)
    G.augment.augment_noise(og, cp.asarray(q), cp.asarray(noise), cp.asarray(dither), cp.asarray(add))
    assert np.array_equal(og.get(), oc)
    assert np.array_equal(oc, RA.augment_noise(q, noise, dither, add))


@pytest.mark.gpu
def test_gpu_engine_augment_batch_equals_cpu(G):
    """The one engine function on a CuPy batch gives the CPU's batch, bit for bit (mixup included)."""
    import cupy as cp

    q, y = levels(8, 20, 24), np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int64)
    lut = lut32()
    for cfg in (CFG, A.AugmentConfig(**{**CFG.to_dict(), "freq_warp": 0.1, "time_stretch": 0.2}),
                A.AugmentConfig(**{**CFG.to_dict(), "noise_db": 20.0})):
        xc, tc = A.augment_batch(q, y, cfg, 1, 3, 5, 3, lut=lut)
        bufs = {}
        for _ in range(2):  # the second call reuses the device buffers
            xg, tg = A.augment_batch(cp.asarray(q), cp.asarray(y), cfg, 1, 3, 5, 3, lut=cp.asarray(lut), bufs=bufs)
            assert np.array_equal(xg.get(), xc) and np.array_equal(tg.get(), tc)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_gpu_tests_pass_under_cpu_emulation():
    if EMULATED:
        pytest.skip("already emulated")
    env = dict(os.environ, HITCNN_GPU_EMULATE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", __file__]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                         cwd=Path(__file__).resolve().parents[1])
    tail = "\n".join(res.stdout.splitlines()[-30:])
    assert res.returncode == 0, f"emulated GPU augmentation tests failed:\n{tail}\n{res.stderr[-2000:]}"
    m = re.search(r"(\d+) passed", tail)
    assert m and int(m.group(1)) >= 16 and " failed" not in tail and "skipped" not in tail, tail
