"""Conv2d on the CPU, im2col path: the Numba task kernels (one ``prange`` task per chunk, image or chunk group).

Called only by :mod:`kernels.cpu.conv2d`, which validates the arguments,
plans the chunks (``r`` rows per chunk, ``cpi`` chunks per image, ``0`` =
chunks of whole images) and hands every scratch block in; the algorithm is
described there. Shapes: ``out3 / d3 (N, F, P)`` with ``P = OH*OW``,
``x (N, C, H, W)`` (``xh (N, H, W, C)`` for the row form), ``wa (F, K+1)``
(bias folded in as the last column), ``w2 (F, K)``, ``dwt (N_PARTIALS, K, F)``
weight-gradient partials, ``dbp`` float64 bias-gradient partials
``(n_chunks, F)`` per chunk and filter. Scratch blocks are indexed by ``numba.get_thread_id()``.
The GEMMs are SciPy's single-threaded BLAS (:func:`kernels.cpu.blas.gemm`).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .blas import gemm
from .im2col import _chunk, _col2im_rows, _gather_dout, _im2col_rows, _im2row_rows


@njit(cache=True, parallel=True)
def _forward(out3, x, wa, kh, kw, s, pad, oh, ow, r, cpi, cols, obuf):
    n_, f_, pp = out3.shape
    k1 = wa.shape[1]
    nc = n_ * cpi if cpi > 0 else -(-n_ * oh // r)
    wflat = wa.reshape(-1)
    oflat = out3.reshape(-1)
    for q in prange(nc):  # one task per chunk; scratch belongs to the running thread
        tid = numba.get_thread_id()
        cb = cols[tid]
        ob = obuf[tid]
        g0, g1 = _chunk(q, r, cpi, n_, oh)
        ll = (g1 - g0) * ow
        _im2col_rows(cb, x, g0, g1, kh, kw, s, pad, oh, ow, True)
        if cpi > 0:  # one image: write into out[n, :, rows] directly (row stride P)
            n = g0 // oh
            gemm(oflat, n * f_ * pp + (g0 - n * oh) * ow, pp, wflat, 0, k1, False, cb, 0, ll, False, f_, ll, k1, 0.0)
        else:
            gemm(ob, 0, ll, wflat, 0, k1, False, cb, 0, ll, False, f_, ll, k1, 0.0)
            for g in range(g0, g1):
                n = g // oh
                p0 = (g - n * oh) * ow
                for f in range(f_):
                    dst = out3[n, f, p0:p0 + ow]
                    src = ob[f * ll + (g - g0) * ow:f * ll + (g - g0 + 1) * ow]
                    for e in range(ow):
                        dst[e] = src[e]


@njit(cache=True, parallel=True)
def _forward_rows(out3, xh, wr, kh, kw, s, pad, oh, ow, r, cpi, rows, obuf):
    n_, f_, pp = out3.shape
    k1 = wr.shape[1]
    nc = n_ * cpi if cpi > 0 else -(-n_ * oh // r)
    wflat = wr.reshape(-1)
    for q in prange(nc):
        tid = numba.get_thread_id()
        rb = rows[tid]
        ob = obuf[tid]
        g0, g1 = _chunk(q, r, cpi, n_, oh)
        ll = (g1 - g0) * ow
        _im2row_rows(rb, xh, g0, g1, kh, kw, s, pad, oh, ow, k1)
        gemm(ob, 0, f_, rb, 0, k1, False, wflat, 0, k1, True, ll, f_, k1, 0.0)
        for g in range(g0, g1):
            n = g // oh
            p0 = (g - n * oh) * ow
            for f in range(f_):
                dst = out3[n, f, p0:p0 + ow]
                src = ob[(g - g0) * ow * f_ + f:]
                for e in range(ow):
                    dst[e] = src[e * f_]


@njit(cache=True, parallel=True)
def _backward_input(dx, d3, w2, kh, kw, s, pad, oh, ow, r, cpi, dcols, dbuf):
    n_, f_, pp = d3.shape
    k = w2.shape[1]
    wflat = w2.reshape(-1)
    dflat = d3.reshape(-1)
    # one task per image (all its row chunks, in order) or per chunk of whole images:
    # each task owns its dx planes, so no two threads write the same element.
    ntask = n_ if cpi > 0 else -(-n_ * oh // r)
    for task in prange(ntask):
        tid = numba.get_thread_id()
        qa, qb = (task * cpi, (task + 1) * cpi) if cpi > 0 else (task, task + 1)
        db = dbuf[tid]
        dc = dcols[tid]
        for q in range(qa, qb):
            g0, g1 = _chunk(q, r, cpi, n_, oh)
            ll = (g1 - g0) * ow
            if cpi == 0:
                dx[g0 // oh:g1 // oh] = 0
            elif q % cpi == 0:
                dx[g0 // oh] = 0
            if cpi > 0:
                n = g0 // oh
                gemm(dc, 0, ll, wflat, 0, k, True, dflat, n * f_ * pp + (g0 - n * oh) * ow, pp, False, k, ll, f_, 0.0)
            else:
                _gather_dout(db, d3, g0, g1, oh, ow)
                gemm(dc, 0, ll, wflat, 0, k, True, db, 0, ll, False, k, ll, f_, 0.0)
            _col2im_rows(dx, dc, g0, g1, kh, kw, s, pad, oh, ow)


@njit(cache=True, fastmath={"reassoc"})
def _sum8(src):
    """float64 sum of a 1-D float32/float64 array, vectorised (LLVM reassociates into lanes).

    The lane split is fixed when the function is compiled, so the result
    depends only on the values and the machine's vector width, never on the
    thread count (the float32 first layer at batch 16: 0.3 ms per 8.3 M values
    instead of 2.3 ms for the strict sequential sum).
    """
    acc = 0.0
    for p in range(src.size):
        acc += np.float64(src[p])
    return acc


@njit(cache=True, parallel=True)
def _backward_weight(dwt, dbp, d3, x, kh, kw, s, pad, oh, ow, r, cpi, cols, dbuf):
    n_, f_, pp = d3.shape
    ng, k, _ = dwt.shape
    nc = n_ * cpi if cpi > 0 else -(-n_ * oh // r)
    dflat = d3.reshape(-1)
    with_bias = dbp.shape[0] == nc
    # ng partial sums, each over a fixed range of chunks: the result does not depend on
    # which thread runs which group, nor on the thread count. The bias gradient is summed
    # per chunk (dbp[q, f], float64) while the chunk's dout is in cache.
    for grp in prange(ng):
        tid = numba.get_thread_id()
        acc = dwt[grp].reshape(-1)
        acc[:] = 0
        cb = cols[tid]
        db = dbuf[tid]
        for q in range(grp * nc // ng, (grp + 1) * nc // ng):
            g0, g1 = _chunk(q, r, cpi, n_, oh)
            ll = (g1 - g0) * ow
            _im2col_rows(cb, x, g0, g1, kh, kw, s, pad, oh, ow, False)
            if cpi > 0:
                n = g0 // oh
                o0 = n * f_ * pp + (g0 - n * oh) * ow
                gemm(acc, 0, f_, cb, 0, ll, False, dflat, o0, pp, True, k, f_, ll, 1.0)
                if with_bias:
                    for f in range(f_):
                        dbp[q, f] = _sum8(dflat[o0 + f * pp:o0 + f * pp + ll])
            else:
                _gather_dout(db, d3, g0, g1, oh, ow)
                gemm(acc, 0, f_, cb, 0, ll, False, db, 0, ll, True, k, f_, ll, 1.0)
                if with_bias:
                    for f in range(f_):
                        dbp[q, f] = _sum8(db[f * ll:(f + 1) * ll])


@njit(cache=True)
def _dbias_from_partials(dbias, dbp):
    """dbias[f] += sum_q dbp[q, f], chunks in order (float64)."""
    nc, f_ = dbp.shape
    for f in range(f_):
        acc = 0.0
        for q in range(nc):
            acc += dbp[q, f]
        dbias[f] += acc


@njit(cache=True, parallel=True)
def _sum_partials_acc(dw, dwt):
    """dw[f, k] += sum_t dwt[t, k, f] in fixed order (the partials are transposed).

    Tiles of 16 ``k`` so the partials are read along cache lines (a plain
    ``f``-outer loop measured 2 ms slower on 128->128 @3x4).
    """
    nt, k_, f_ = dwt.shape
    nb = -(-k_ // 16)
    for b in prange(nb):
        k0 = b * 16
        k1 = min(k_, k0 + 16)
        for f in range(f_):
            for kk in range(k0, k1):
                acc = dwt[0, kk, f]
                for t in range(1, nt):
                    acc += dwt[t, kk, f]
                dw[f, kk] += acc


@njit(cache=True, parallel=True)
def _dbias_acc(dbias, dout):
    """dbias[f] += sum_{n,p} dout[n, f, p] in float64: per plane by :func:`_sum8`, planes in order.

    Used by the Winograd layers (the im2col path sums the bias gradient inside
    its weight-gradient tasks).
    """
    n_, f_, p_ = dout.shape
    for f in prange(f_):
        acc = 0.0
        for n in range(n_):
            acc += _sum8(dout[n, f])
        dbias[f] += acc
