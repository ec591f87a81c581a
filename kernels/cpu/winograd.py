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
tests/test_winograd.py (normwise relative error at most 5.2e-7 on the paper's
shapes for the output and each gradient; the bound is 1e-4).
"""
from __future__ import annotations

import numba
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


@njit(cache=True)
def _in_transform(v, x, g0, g1, th, tw, pad, rb, sv):
    """v[xi*sv + c*Tc + (g-g0)*TP + tx] = (B^T d B)[xi] for the tiles of global tile rows [g0, g1).

    ``TP = TW + 1``: each tile row carries one dummy tile (finite values) so that the
    column step runs as one long loop over the chunk (LLVM's vector loops need about
    64 iterations; a tile row is often 2-40). ``rb`` (:func:`scratch_shape`) holds the
    row combinations ``B^T d`` of every tile row of the chunk, split into even and odd
    padded columns (``te_i[k] = (B^T d)[i, 2k]``, ``to_i[k] = (B^T d)[i, 2k+1]``).
    """
    n_, c_, h_, w_ = x.shape
    tp = tw + 1  # padded row = 2*TW + 2 columns = tp even + tp odd
    tc = (g1 - g0) * tp
    zrow = rb[16, :w_]
    zrow[:] = 0
    # k in [k0, k1): both padded columns 2k and 2k + 1 inside the image (x columns 2k - pad, 2k + 1 - pad)
    k0 = (pad + 1) // 2
    k1 = max(k0, min(tp, (w_ + pad) // 2))
    for c in range(c_):
        for g in range(g0, g1):
            n = g // th
            ty = g - n * th
            h = 2 * ty - pad
            x0 = x[n, c, h] if 0 <= h < h_ else zrow
            x1 = x[n, c, h + 1] if 0 <= h + 1 < h_ else zrow
            x2 = x[n, c, h + 2] if 0 <= h + 2 < h_ else zrow
            x3 = x[n, c, h + 3] if 0 <= h + 3 < h_ else zrow
            b = (g - g0) * tp
            te0, to0 = rb[0, b:b + tp], rb[1, b:b + tp]
            te1, to1 = rb[2, b:b + tp], rb[3, b:b + tp]
            te2, to2 = rb[4, b:b + tp], rb[5, b:b + tp]
            te3, to3 = rb[6, b:b + tp], rb[7, b:b + tp]
            for k in range(k0):  # edges (outside [k0, k1)): padded columns one by one
                _edge(te0, to0, te1, to1, te2, to2, te3, to3, x0, x1, x2, x3, k, pad, w_, zrow)
            for k in range(k1, tp):
                _edge(te0, to0, te1, to1, te2, to2, te3, to3, x0, x1, x2, x3, k, pad, w_, zrow)
            s = 2 * k0 - pad
            y0, y1, y2, y3 = x0[s:], x1[s:], x2[s:], x3[s:]
            # B^T d on the interior, even and odd columns; one row combination per loop (few
            # store streams: LLVM's runtime alias checks stay under its limit and the loops vectorise)
            _comb(te0[k0:k1], to0[k0:k1], y0, y2, True)
            _comb(te1[k0:k1], to1[k0:k1], y1, y2, False)
            _comb(te2[k0:k1], to2[k0:k1], y2, y1, True)
            _comb(te3[k0:k1], to3[k0:k1], y1, y3, True)
        for i in range(8):
            rb[i, tc] = 0  # read by the last dummy tile
        for i in range(4):  # (B^T d) B: columns 2q, 2q+1, 2q+2, 2q+3 = te[q], to[q], te[q+1], to[q+1]
            te = rb[2 * i, :tc + 1]
            to = rb[2 * i + 1, :tc + 1]
            o = 4 * i * sv + c * tc
            _lin(v[o:o + tc], te, te[1:], True)
            _lin(v[o + sv:o + sv + tc], to, te[1:], False)
            _lin(v[o + 2 * sv:o + 2 * sv + tc], te[1:], to, True)
            _lin(v[o + 3 * sv:o + 3 * sv + tc], to, to[1:], True)


def scratch_shape(tcmax, w):
    """Shape of one thread's ``rb`` scratch: 16 rows of ``tcmax + 1`` values and a zero row of ``w``."""
    return 17, max(tcmax + 1, w)


@njit(cache=True, inline="always")
def _comb(e, o, a, b, sub):
    """e[k] = a[2k] -+ b[2k], o[k] = a[2k+1] -+ b[2k+1] (minus if ``sub``)."""
    if sub:
        for k in range(e.shape[0]):
            e[k] = a[2 * k] - b[2 * k]
            o[k] = a[2 * k + 1] - b[2 * k + 1]
    else:
        for k in range(e.shape[0]):
            e[k] = a[2 * k] + b[2 * k]
            o[k] = a[2 * k + 1] + b[2 * k + 1]


@njit(cache=True, inline="always")
def _lin(d, a, b, sub):
    """d[q] = a[q] -+ b[q] over d's length (minus if ``sub``)."""
    if sub:
        for q in range(d.shape[0]):
            d[q] = a[q] - b[q]
    else:
        for q in range(d.shape[0]):
            d[q] = a[q] + b[q]


@njit(cache=True, inline="always")
def _add3(d, a, b, c):
    """d[q] = (a[q] + b[q]) + c[q]."""
    for q in range(d.shape[0]):
        d[q] = a[q] + b[q] + c[q]


@njit(cache=True, inline="always")
def _sub3(d, a, b, c):
    """d[q] = (a[q] - b[q]) - c[q]."""
    for q in range(d.shape[0]):
        d[q] = a[q] - b[q] - c[q]


@njit(cache=True, inline="always")
def _edge(te0, to0, te1, to1, te2, to2, te3, to3, x0, x1, x2, x3, k, pad, w_, zrow):
    """B^T d at padded columns 2k and 2k + 1 where one of them may be outside the image."""
    for par in range(2):
        e = 2 * k + par - pad
        if 0 <= e < w_:
            a0, a1, a2, a3 = x0[e], x1[e], x2[e], x3[e]
        else:
            a0 = a1 = a2 = a3 = zrow[0]  # a zero of the input's dtype
        if par == 0:
            te0[k], te1[k], te2[k], te3[k] = a0 - a2, a1 + a2, a2 - a1, a1 - a3
        else:
            to0[k], to1[k], to2[k], to3[k] = a0 - a2, a1 + a2, a2 - a1, a1 - a3


@njit(cache=True)
def _out_transform(out4, m, bias, g0, g1, th, tw, sm, rb):
    """out[n, f, 2*ty + a, 2*tx + b] = (A^T M[:, f, t] A)[a, b] + bias[f]; rows/columns past OH/OW dropped.

    Per filter: the 2x2 outputs of every tile of the chunk in long loops (into ``rb``),
    then one short interleaving loop per output row.
    """
    n_, f_, oh, ow = out4.shape
    tp = tw + 1
    tc = (g1 - g0) * tp
    full = ow // 2
    s = [rb[i, :tc] for i in range(12)]
    for f in range(f_):
        o = f * tc
        mm = [m[o + xi * sm:o + xi * sm + tc] for xi in range(16)]
        for j in range(4):  # rows of A^T M: s0j = m0j + m1j + m2j, s1j = m1j - m2j - m3j
            _add3(s[j], mm[j], mm[4 + j], mm[8 + j])
            _sub3(s[4 + j], mm[4 + j], mm[8 + j], mm[12 + j])
        bf = bias[f]
        for a in range(2):  # (A^T M) A: y_a0 = s_a0 + s_a1 + s_a2 + b, y_a1 = s_a1 - s_a2 - s_a3 + b
            y0, y1 = s[8 + 2 * a], s[9 + 2 * a]
            sa0, sa1, sa2, sa3 = s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]
            for q in range(tc):
                y0[q] = sa0[q] + sa1[q] + sa2[q] + bf
                y1[q] = sa1[q] - sa2[q] - sa3[q] + bf
        for g in range(g0, g1):
            n = g // th
            ty = g - n * th
            b = (g - g0) * tp
            for a in range(2):
                if 2 * ty + a >= oh:
                    break
                row = out4[n, f, 2 * ty + a]
                ye = s[8 + 2 * a][b:b + tp]
                yo = s[9 + 2 * a][b:b + tp]
                for q in range(full):
                    row[2 * q] = ye[q]
                    row[2 * q + 1] = yo[q]
                if ow % 2 == 1:
                    row[ow - 1] = ye[full]


@njit(cache=True)
def _dout_transform(m, d4, g0, g1, th, tw, sm, rb):
    """m[xi*sm + f*Tc + t] = (A dY_t A^T)[xi], dY_t the 2x2 tile of dout (zeros past OH/OW and for
    the dummy tile of each tile row).

    Per filter: the tiles' four values into ``rb`` (short loops per row), then the 16
    outputs in long loops over the chunk.
    """
    n_, f_, oh, ow = d4.shape
    tp = tw + 1
    tc = (g1 - g0) * tp
    full = ow // 2
    s = [rb[i, :tc] for i in range(8)]
    ta, tb, tcc, td, p, r, pm, rm = s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
    rb[16, 0] = 0
    z = rb[16, 0]
    for f in range(f_):
        for g in range(g0, g1):
            n = g // th
            ty = g - n * th
            b = (g - g0) * tp
            for a in range(2):
                ye = s[2 * a][b:b + tp]
                yo = s[2 * a + 1][b:b + tp]
                if 2 * ty + a >= oh:
                    ye[:] = z
                    yo[:] = z
                    continue
                row = d4[n, f, 2 * ty + a]
                for q in range(full):
                    ye[q] = row[2 * q]
                    yo[q] = row[2 * q + 1]
                for q in range(full, tp):
                    ye[q] = z
                    yo[q] = z
                if ow % 2 == 1:
                    ye[full] = row[ow - 1]
        # rows of A dY: (a, b), (a + c, b + d), (a - c, b - d), (-c, -d); the same on columns
        _lin(p, ta, tcc, False)
        _lin(r, tb, td, False)
        _lin(pm, ta, tcc, True)
        _lin(rm, tb, td, True)
        o = f * tc
        mm = [m[o + xi * sm:o + xi * sm + tc] for xi in range(16)]
        rows = ((ta, tb), (p, r), (pm, rm))
        for i in range(3):
            e, od = rows[i]
            d0, d1, d2, d3 = mm[4 * i], mm[4 * i + 1], mm[4 * i + 2], mm[4 * i + 3]
            for q in range(tc):
                d0[q] = e[q]
            _lin(d1, e, od, False)
            _lin(d2, e, od, True)
            for q in range(tc):
                d3[q] = -od[q]
        d0, d1, d2, d3 = mm[12], mm[13], mm[14], mm[15]
        for q in range(tc):
            d0[q] = -tcc[q]
            d3[q] = td[q]
        for q in range(tc):
            d1[q] = -tcc[q] - td[q]
        _lin(d2, td, tcc, True)


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
    ``vbuf (T, 16*skew(C*Tc))``, ``mbuf (T, 16*skew(F*Tc))`` with ``Tc = R*(TW + 1)``
    (a dummy tile per tile row), ``rbuf (T,) + scratch_shape(Tc, W)``.
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
        tc = (g1 - g0) * (tw + 1)
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
            tc = (g1 - g0) * (tw + 1)
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
