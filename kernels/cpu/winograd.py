"""Winograd F(2x2, 3x3) convolution kernels (3x3, stride 1) of the CPU Conv2d.

Method: Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016 (arXiv:1509.09308, 2015), section 4.1, with their matrices
(also NNPACK's ``winograd_f6k3`` family uses the same scheme, with larger tiles)::

    B^T = [[1, 0,-1, 0],     G = [[1,   0,   0 ],     A^T = [[1, 1, 1, 0],
           [0, 1, 1, 0],          [1/2, 1/2, 1/2],            [0, 1,-1,-1]]
           [0,-1, 1, 0],          [1/2,-1/2, 1/2],
           [0, 1, 0,-1]]          [0,   0,   1 ]]

The output is cut into 2x2 tiles (``TH = ceil(OH/2)`` by ``TW = ceil(OW/2)``
per image; tile ``(ty, tx)`` reads the 4x4 input patch at padded rows
``2*ty .. 2*ty+3`` and columns ``2*tx .. 2*tx+3``, zeros outside the image)::

    U[xi, f, c] = (G g[f, c] G^T)[xi]             weight transform, xi = 4*i + j in 0..15
    V[xi, c, t] = (B^T d[c, t] B)[xi]             input transform, t = tile
    M[xi]       = U[xi] @ V[xi]                   16 GEMMs (F, C) @ (C, T)
    y[f, t]     = A^T M[:, f, t] A  (+ bias)      output transform, 2x2 per tile

2.25x fewer multiplies than direct convolution; the GEMMs are SciPy's BLAS
(:mod:`kernels.cpu.blas`) called from inside the Numba threads. The
backward-input pass is the same forward convolution of ``dout`` with the
flipped, channel-swapped weight ``w'[c, f, i, j] = w[f, c, 2-i, 2-j]`` and
padding ``2 - padding``. The backward-weight pass is the transpose of the
forward (the transforms are linear): ``dU[xi] = sum_t (A dY_t A^T)[xi] V[xi, :, t]^T``
(a GEMM ``(F, T) @ (T, C)`` accumulated with beta = 1), then
``dg[f, c] = G^T dU[:, f, c] G``.

Tiles are processed in *chunks* of whole tile rows (global tile row
``g = n*TH + ty``) sized so a chunk's ``V`` and ``M`` stay in L2, with the
same plan as the im2col path (:func:`kernels.cpu.conv2d.plan_chunks`); one
``prange`` over chunks, scratch indexed by ``numba.get_thread_id()``. Chunk
boundaries depend only on the shapes (and, in eval mode, never span images),
never on the thread count, and backward-weight sums a fixed number of
partials in a fixed order, so results are bit-identical for any thread count.
float32 error against the float64 reference is measured in
tests/test_winograd.py (about 1e-6 relative, the bound is 1e-4).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .blas import gemm
from .im2col import _chunk

__all__ = ["weight_transform", "weight_transform_flipped", "winograd_conv", "winograd_backward_weight"]


@njit(cache=True)
def weight_transform(u, w):
    """u[4*i + j, f, c] = (G w[f, c] G^T)[i, j]; ``w (F, C, 3, 3)`` -> ``u (16, F, C)``."""
    f_, c_ = w.shape[0], w.shape[1]
    for f in range(f_):
        for c in range(c_):
            _g_tile(u, f, c, w[f, c])


@njit(cache=True)
def weight_transform_flipped(u, w):
    """u[xi, c, f] = (G w'[c, f] G^T)[xi] with ``w'[c, f, i, j] = w[f, c, 2-i, 2-j]`` (backward-input)."""
    f_, c_ = w.shape[0], w.shape[1]
    for f in range(f_):
        for c in range(c_):
            _g_tile(u, c, f, w[f, c, ::-1, ::-1])


@njit(cache=True, inline="always")
def _g_tile(u, a, b, g):
    """u[:, a, b] = G g G^T for one 3x3 ``g`` (rows first: G g is 4x3)."""
    for j in range(3):
        g0, g1, g2 = g[0, j], g[1, j], g[2, j]
        u[j, a, b] = g0  # temporarily: row i of G g in u[4*i + j] for j < 3
        u[4 + j, a, b] = 0.5 * (g0 + g1 + g2)
        u[8 + j, a, b] = 0.5 * (g0 - g1 + g2)
        u[12 + j, a, b] = g2
    for i in range(4):
        t0, t1, t2 = u[4 * i, a, b], u[4 * i + 1, a, b], u[4 * i + 2, a, b]
        u[4 * i + 0, a, b] = t0
        u[4 * i + 1, a, b] = 0.5 * (t0 + t1 + t2)
        u[4 * i + 2, a, b] = 0.5 * (t0 - t1 + t2)
        u[4 * i + 3, a, b] = t2


@njit(cache=True, inline="always")
def _half_range(k_n, pad, par, w_):
    """Range [k0, k1) of k < k_n with 0 <= 2*k + par - pad < w_."""
    lo = pad - par
    k0 = 0 if lo <= 0 else (lo + 1) // 2
    hi = w_ - 1 + pad - par
    k1 = 0 if hi < 0 else min(k_n, hi // 2 + 1)
    return k0, max(k0, k1)


@njit(cache=True)
def _in_transform(v, x, g0, g1, th, tw, pad, rb, sv):
    """v[xi*sv + c*Tc + (g-g0)*TW + tx] = (B^T d B)[xi] for the tiles of global tile rows [g0, g1).

    ``rb`` (>= 16 * (TW + 1)) holds the 4 zero-padded input rows split into even
    and odd columns (so the loops below are contiguous and vectorise), then
    their row combinations ``B^T d``.
    """
    n_, c_, h_, w_ = x.shape
    tc = (g1 - g0) * tw
    hw = tw + 1  # padded row = 2*TW + 2 columns = hw even + hw odd
    for c in range(c_):
        for g in range(g0, g1):
            n = g // th
            ty = g - n * th
            for rr in range(4):
                h = 2 * ty + rr - pad
                for par in range(2):
                    row = rb[(2 * rr + par) * hw:(2 * rr + par + 1) * hw]
                    if h < 0 or h >= h_:
                        for e in range(hw):
                            row[e] = 0
                        continue
                    k0, k1 = _half_range(hw, pad, par, w_)
                    for e in range(k0):
                        row[e] = 0
                    src = x[n, c, h, 2 * k0 + par - pad::2]  # indexed from 0: no wraparound checks
                    seg = row[k0:k1]
                    for e in range(k1 - k0):
                        seg[e] = src[e]
                    for e in range(k1, hw):
                        row[e] = 0
            r0, r1, r2, r3 = rb[0:2 * hw], rb[2 * hw:4 * hw], rb[4 * hw:6 * hw], rb[6 * hw:8 * hw]
            t0, t1, t2, t3 = rb[8 * hw:10 * hw], rb[10 * hw:12 * hw], rb[12 * hw:14 * hw], rb[14 * hw:16 * hw]
            for e in range(2 * hw):  # B^T d: row combinations
                t0[e] = r0[e] - r2[e]
                t1[e] = r1[e] + r2[e]
                t2[e] = r2[e] - r1[e]
                t3[e] = r1[e] - r3[e]
            base = (g - g0) * tw
            for i in range(4):  # (B^T d) B: columns 2q, 2q+1, 2q+2, 2q+3 = te[q], to[q], te[q+1], to[q+1]
                te = rb[(8 + 2 * i) * hw:(9 + 2 * i) * hw]
                to = rb[(9 + 2 * i) * hw:(10 + 2 * i) * hw]
                te1 = te[1:]
                to1 = to[1:]
                o = 4 * i * sv + c * tc + base
                d0 = v[o:o + tw]
                d1 = v[o + sv:o + sv + tw]
                d2 = v[o + 2 * sv:o + 2 * sv + tw]
                d3 = v[o + 3 * sv:o + 3 * sv + tw]
                for q in range(tw):
                    d0[q] = te[q] - te1[q]
                    d1[q] = to[q] + te1[q]
                    d2[q] = te1[q] - to[q]
                    d3[q] = to[q] - to1[q]


@njit(cache=True)
def _out_transform(out4, m, bias, g0, g1, th, tw, sm, rb):
    """out[n, f, 2*ty + a, 2*tx + b] = (A^T M[:, f, t] A)[a, b] + bias[f]; rows/columns past OH/OW dropped.

    ``rb`` (>= 4*TW values) receives rows of 2*TW values where OW is odd or a second row is past OH,
    so the loop over tiles has no branch and vectorises.
    """
    n_, f_, oh, ow = out4.shape
    tc = (g1 - g0) * tw
    odd = ow % 2 == 1
    for f in range(f_):
        bf = bias[f]
        for g in range(g0, g1):
            n = g // th
            ty = g - n * th
            o = f * tc + (g - g0) * tw
            two = 2 * ty + 1 < oh
            y0 = out4[n, f, 2 * ty]
            y1 = out4[n, f, 2 * ty + 1] if two else y0
            z0 = rb[:2 * tw] if odd else y0
            z1 = y1 if two and not odd else rb[2 * tw:4 * tw]
            m0, m1, m2, m3 = m[o:o + tw], m[o + sm:o + sm + tw], m[o + 2 * sm:o + 2 * sm + tw], m[o + 3 * sm:o + 3 * sm + tw]
            o4 = o + 4 * sm
            m4, m5, m6, m7 = m[o4:o4 + tw], m[o4 + sm:o4 + sm + tw], m[o4 + 2 * sm:o4 + 2 * sm + tw], m[o4 + 3 * sm:o4 + 3 * sm + tw]
            o8 = o + 8 * sm
            m8, m9, m10, m11 = m[o8:o8 + tw], m[o8 + sm:o8 + sm + tw], m[o8 + 2 * sm:o8 + 2 * sm + tw], m[o8 + 3 * sm:o8 + 3 * sm + tw]
            o12 = o + 12 * sm
            m12, m13, m14, m15 = m[o12:o12 + tw], m[o12 + sm:o12 + sm + tw], m[o12 + 2 * sm:o12 + 2 * sm + tw], m[o12 + 3 * sm:o12 + 3 * sm + tw]
            for q in range(tw):
                s00 = m0[q] + m4[q] + m8[q]
                s01 = m1[q] + m5[q] + m9[q]
                s02 = m2[q] + m6[q] + m10[q]
                s03 = m3[q] + m7[q] + m11[q]
                s10 = m4[q] - m8[q] - m12[q]
                s11 = m5[q] - m9[q] - m13[q]
                s12 = m6[q] - m10[q] - m14[q]
                s13 = m7[q] - m11[q] - m15[q]
                z0[2 * q] = s00 + s01 + s02 + bf
                z0[2 * q + 1] = s01 - s02 - s03 + bf
                z1[2 * q] = s10 + s11 + s12 + bf
                z1[2 * q + 1] = s11 - s12 - s13 + bf
            if odd:  # the last tile's second column is dropped
                for e in range(ow):
                    y0[e] = z0[e]
            if odd and two:
                for e in range(ow):
                    y1[e] = z1[e]


@njit(cache=True)
def _dout_transform(m, d4, g0, g1, th, tw, sm, rb):
    """m[xi*sm + f*Tc + t] = (A dY_t A^T)[xi], dY_t the 2x2 tile of dout (zeros past OH/OW).

    ``rb`` (>= 4*TW values) holds zero-padded copies of rows where OW is odd or past OH, so
    the loop over tiles has no branch and vectorises.
    """
    n_, f_, oh, ow = d4.shape
    tc = (g1 - g0) * tw
    odd = ow % 2 == 1
    z0 = rb[:2 * tw]
    z1 = rb[2 * tw:4 * tw]
    z0[:] = 0
    z1[:] = 0
    for f in range(f_):
        for g in range(g0, g1):
            n = g // th
            ty = g - n * th
            two = 2 * ty + 1 < oh
            y0 = d4[n, f, 2 * ty]
            y1 = d4[n, f, 2 * ty + 1] if two else y0
            if odd:
                for e in range(ow):
                    z0[e] = y0[e]
                y0 = z0
            if odd and two:
                for e in range(ow):
                    z1[e] = y1[e]
            if not two:
                z1[:] = 0
            if odd or not two:
                y1 = z1
            o = f * tc + (g - g0) * tw
            m0, m1, m2, m3 = m[o:o + tw], m[o + sm:o + sm + tw], m[o + 2 * sm:o + 2 * sm + tw], m[o + 3 * sm:o + 3 * sm + tw]
            o4 = o + 4 * sm
            m4, m5, m6, m7 = m[o4:o4 + tw], m[o4 + sm:o4 + sm + tw], m[o4 + 2 * sm:o4 + 2 * sm + tw], m[o4 + 3 * sm:o4 + 3 * sm + tw]
            o8 = o + 8 * sm
            m8, m9, m10, m11 = m[o8:o8 + tw], m[o8 + sm:o8 + sm + tw], m[o8 + 2 * sm:o8 + 2 * sm + tw], m[o8 + 3 * sm:o8 + 3 * sm + tw]
            o12 = o + 12 * sm
            m12, m13, m14, m15 = m[o12:o12 + tw], m[o12 + sm:o12 + sm + tw], m[o12 + 2 * sm:o12 + 2 * sm + tw], m[o12 + 3 * sm:o12 + 3 * sm + tw]
            for q in range(tw):
                # the tile (a b; c d); b = d = 0 for the last tile of an odd OW
                a = y0[2 * q]
                b = y0[2 * q + 1]
                c = y1[2 * q]
                d = y1[2 * q + 1]
                # rows of A dY: (a, b), (a + c, b + d), (a - c, b - d), (-c, -d); the same on columns
                m0[q], m1[q], m2[q], m3[q] = a, a + b, a - b, -b
                p, r = a + c, b + d
                m4[q], m5[q], m6[q], m7[q] = p, p + r, p - r, -r
                p, r = a - c, b - d
                m8[q], m9[q], m10[q], m11[q] = p, p + r, p - r, -r
                m12[q], m13[q], m14[q], m15[q] = -c, -c - d, d - c, d


@njit(cache=True, inline="always")
def skew(k):
    """Stride between the 16 matrices of a chunk: ``k`` rounded up to 16 values plus 16.

    Without the extra cache line the 16 streams of a transform can be a
    multiple of 4 KiB apart and fall into the same L1 sets (measured: the
    dout transform of 32->64 @51x79 took 76 ms instead of 8).
    """
    return (k + 15) // 16 * 16 + 16


@njit(cache=True, parallel=True)
def winograd_conv(out4, x, u, bias, pad, r, cpi, vbuf, mbuf, rbuf):
    """out4 = conv3x3(x, w) + bias (F,), stride 1, ``u`` = :func:`weight_transform` of w (16, F, C).

    ``out4 (N, F, OH, OW)``, ``x (N, C, H, W)`` C-contiguous, ``OH = H + 2*pad - 2``; chunks of
    ``r`` tile rows (``cpi`` chunks per image, 0 = chunks of whole images); per-thread scratch
    ``vbuf (T, 16*skew(C*Tc))``, ``mbuf (T, 16*skew(F*Tc))``, ``rbuf (T, 16*(TW + 1))``.
    """
    n_, f_, oh, ow = out4.shape
    c_ = x.shape[1]
    th = (oh + 1) // 2
    tw = (ow + 1) // 2
    nc = n_ * cpi if cpi > 0 else -(-n_ * th // r)
    uf = u.reshape(-1)
    for q in prange(nc):
        tid = numba.get_thread_id()
        v = vbuf[tid]
        m = mbuf[tid]
        g0, g1 = _chunk(q, r, cpi, n_, th)
        tc = (g1 - g0) * tw
        sv, sm = skew(c_ * tc), skew(f_ * tc)
        _in_transform(v, x, g0, g1, th, tw, pad, rbuf[tid], sv)
        for xi in range(16):
            gemm(m, xi * sm, tc, uf, xi * f_ * c_, c_, False, v, xi * sv, tc, False, f_, tc, c_, 0.0)
        _out_transform(out4, m, bias, g0, g1, th, tw, sm, rbuf[tid])


@njit(cache=True, parallel=True)
def winograd_backward_weight(dut, d4, x, pad, r, cpi, vbuf, mbuf, rbuf):
    """dut[grp] = sum over the chunks of group grp of dU (16, F, C); fixed groups, fixed order.

    ``d4 (N, F, OH, OW)`` dout, ``x (N, C, H, W)`` the forward input, scratch as in :func:`winograd_conv`.
    """
    n_, f_, oh, ow = d4.shape
    c_ = x.shape[1]
    ng = dut.shape[0]
    th = (oh + 1) // 2
    tw = (ow + 1) // 2
    nc = n_ * cpi if cpi > 0 else -(-n_ * th // r)
    for grp in prange(ng):
        tid = numba.get_thread_id()
        acc = dut[grp].reshape(-1)
        acc[:] = 0
        v = vbuf[tid]
        m = mbuf[tid]
        for q in range(grp * nc // ng, (grp + 1) * nc // ng):
            g0, g1 = _chunk(q, r, cpi, n_, th)
            tc = (g1 - g0) * tw
            sv, sm = skew(c_ * tc), skew(f_ * tc)
            _in_transform(v, x, g0, g1, th, tw, pad, rbuf[tid], sv)
            _dout_transform(m, d4, g0, g1, th, tw, sm, rbuf[tid])
            for xi in range(16):
                gemm(acc, xi * f_ * c_, c_, m, xi * sm, tc, False, v, xi * sv, tc, True, f_, c_, tc, 1.0)


@njit(cache=True)
def weight_grad_acc(dw, dut):
    """dw[f, c] += G^T dU G with dU = sum_grp dut[grp, :, f, c] (4x4), partials summed in group order.

    ``dw (F, C, 3, 3)``, ``dut (groups, 16, F, C)``; ``dut[0]`` is overwritten with the sum.
    """
    ng = dut.shape[0]
    f_, c_ = dw.shape[0], dw.shape[1]
    acc = dut[0]
    for k in range(1, ng):
        acc += dut[k]
    for f in range(f_):
        for c in range(c_):
            u = acc[:, f, c]
            # G^T dU (3 x 4): rows 0..2, column j
            a0 = u[0] + 0.5 * (u[4] + u[8])
            a1 = u[1] + 0.5 * (u[5] + u[9])
            a2 = u[2] + 0.5 * (u[6] + u[10])
            a3 = u[3] + 0.5 * (u[7] + u[11])
            b0, b1, b2, b3 = 0.5 * (u[4] - u[8]), 0.5 * (u[5] - u[9]), 0.5 * (u[6] - u[10]), 0.5 * (u[7] - u[11])
            c0 = 0.5 * (u[4] + u[8]) + u[12]
            c1 = 0.5 * (u[5] + u[9]) + u[13]
            c2 = 0.5 * (u[6] + u[10]) + u[14]
            c3 = 0.5 * (u[7] + u[11]) + u[15]
            # (G^T dU) G: columns x0 + (x1 + x2)/2, (x1 - x2)/2, (x1 + x2)/2 + x3
            g = dw[f, c]
            g[0, 0] += a0 + 0.5 * (a1 + a2)
            g[0, 1] += 0.5 * (a1 - a2)
            g[0, 2] += 0.5 * (a1 + a2) + a3
            g[1, 0] += b0 + 0.5 * (b1 + b2)
            g[1, 1] += 0.5 * (b1 - b2)
            g[1, 2] += 0.5 * (b1 + b2) + b3
            g[2, 0] += c0 + 0.5 * (c1 + c2)
            g[2, 1] += 0.5 * (c1 - c2)
            g[2, 2] += 0.5 * (c1 + c2) + c3
