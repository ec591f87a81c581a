"""Data-movement kernels of the CPU Conv2d: im2col, im2row, col2im on chunks of output rows.

Private helpers of :mod:`kernels.cpu.conv2d` (see its docstring for the
algorithm and the letters). A *chunk* is a range ``[g0, g1)`` of global output
rows ``g = n*OH + r``; its column matrix has ``L = (g1 - g0) * OW`` columns and
lives in a flat per-thread buffer. All but :func:`_to_nhwc` are serial: the
callers run them inside their own ``prange`` over tasks. Inner loops index slices from 0 so
that LLVM drops Numba's negative-index wraparound and vectorises them.
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, inline="always")
def _valid(o_n, pad, tap, stride, size):
    """Range [o0, o1) of output positions o with 0 <= o*stride - pad + tap < size."""
    lo = pad - tap
    o0 = 0 if lo <= 0 else (lo + stride - 1) // stride
    hi = size - 1 + pad - tap
    o1 = 0 if hi < 0 else min(o_n, hi // stride + 1)
    return o0, max(o0, o1)


@njit(cache=True, inline="always")
def _chunk(q, r, cpi, n_, oh):
    """Global output-row range [g0, g1) of chunk q (global row g = n*OH + r)."""
    if cpi > 0:
        n = q // cpi
        r0 = (q - n * cpi) * r
        return n * oh + r0, n * oh + min(oh, r0 + r)
    return q * r, min(n_ * oh, (q + 1) * r)


@njit(cache=True)
def _im2col_rows(cols, x, g0, g1, kh, kw, s, pad, oh, ow, ones):
    """cols[k, (g-g0)*OW + o] = xpad[n, c, r*s + i, o*s + j] for global rows g in [g0, g1).

    Inner loops index from 0 over slices so LLVM can drop the negative-index
    wraparound and vectorise (measured 2.3x faster than slice assignment).
    """
    n_, c_, h_, w_ = x.shape
    ll = (g1 - g0) * ow
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                base = ((c * kh + i) * kw + j) * ll
                o0, o1 = _valid(ow, pad, j, s, w_)
                for g in range(g0, g1):
                    n = g // oh
                    h = (g - n * oh) * s - pad + i
                    dst = cols[base + (g - g0) * ow:base + (g - g0 + 1) * ow]
                    if h < 0 or h >= h_:
                        for t in range(ow):
                            dst[t] = 0
                        continue
                    for t in range(o0):
                        dst[t] = 0
                    src = x[n, c, h]
                    if s == 1:
                        a = dst[o0:o1]
                        b = src[o0 + j - pad:o1 + j - pad]
                        for t in range(o1 - o0):
                            a[t] = b[t]
                    else:
                        for o in range(o0, o1):
                            dst[o] = src[o * s - pad + j]
                    for t in range(o1, ow):
                        dst[t] = 0
    if ones:
        k = c_ * kh * kw
        dst = cols[k * ll:(k + 1) * ll]
        for t in range(ll):
            dst[t] = 1


@njit(cache=True)
def _col2im_rows(dx, dcols, g0, g1, kh, kw, s, pad, oh, ow):
    """dx[n, c, r*s - pad + i, o*s - pad + j] += dcols[k, (g-g0)*OW + o], fixed order (c, i, g, j, o)."""
    n_, c_, h_, w_ = dx.shape
    ll = (g1 - g0) * ow
    for c in range(c_):
        for i in range(kh):
            for g in range(g0, g1):
                n = g // oh
                h = (g - n * oh) * s - pad + i
                if h < 0 or h >= h_:
                    continue
                row = dx[n, c, h]
                for j in range(kw):
                    d = ((c * kh + i) * kw + j) * ll + (g - g0) * ow
                    o0, o1 = _valid(ow, pad, j, s, w_)
                    if s == 1:
                        dst = row[o0 + j - pad:o1 + j - pad]
                        src = dcols[d + o0:d + o1]
                        for t in range(o1 - o0):
                            dst[t] += src[t]
                    else:
                        for o in range(o0, o1):
                            row[o * s - pad + j] += dcols[d + o]


@njit(cache=True)
def _gather_dout(buf, d3, g0, g1, oh, ow):
    """buf[f, (g-g0)*OW + o] = dout[n, f, r*OW + o]  (chunk of dout as an (F, L) matrix)."""
    f_ = d3.shape[1]
    ll = (g1 - g0) * ow
    for g in range(g0, g1):
        n = g // oh
        p0 = (g - n * oh) * ow
        for f in range(f_):
            dst = buf[f * ll + (g - g0) * ow:f * ll + (g - g0 + 1) * ow]
            src = d3[n, f, p0:p0 + ow]
            for t in range(ow):
                dst[t] = src[t]


@njit(cache=True, parallel=True)
def _to_nhwc(xh, x):
    """xh[n, h, w, c] = x[n, c, h, w] (NCHW -> NHWC, for im2row)."""
    n_, c_, h_, w_ = x.shape
    for n in prange(n_):
        for h in range(h_):
            for c in range(c_):
                src = x[n, c, h]
                for w in range(w_):
                    xh[n, h, w, c] = src[w]


@njit(cache=True)
def _im2row_rows(rows, xh, g0, g1, kh, kw, s, pad, oh, ow, k1):
    """rows[(g-g0)*OW + o, (i*KW + j)*C + c] = xpad[n, c, r*s + i, o*s + j]; last column = 1 (bias).

    From NHWC input each (pixel, i) copies one run of ``KW*C`` contiguous values
    (interior pixels in one loop; slices taken once per run, measured 2.3x
    faster than reshaping per pixel).
    """
    n_, h_, w_, c_ = xh.shape
    xhf = xh.reshape(-1)
    kwc = kw * c_
    for g in range(g0, g1):
        n = g // oh
        r = g - n * oh
        pbase = (g - g0) * ow
        for i in range(kh):
            h = r * s - pad + i
            if h < 0 or h >= h_:
                for o in range(ow):
                    seg = rows[(pbase + o) * k1 + i * kwc:(pbase + o) * k1 + (i + 1) * kwc]
                    for e in range(kwc):
                        seg[e] = 0
                continue
            xrow = xhf[(n * h_ + h) * w_ * c_:(n * h_ + h + 1) * w_ * c_]
            for o in range(ow):
                seg = rows[(pbase + o) * k1 + i * kwc:(pbase + o) * k1 + (i + 1) * kwc]
                w0 = o * s - pad
                j0 = max(0, -w0)
                j1 = min(kw, w_ - w0)
                if j0 == 0 and j1 == kw:
                    src = xrow[w0 * c_:w0 * c_ + kwc]
                    for e in range(kwc):
                        seg[e] = src[e]
                    continue
                for e in range(j0 * c_):
                    seg[e] = 0
                if j1 > j0:
                    src = xrow[(w0 + j0) * c_:(w0 + j1) * c_]
                    part = seg[j0 * c_:j1 * c_]
                    for e in range((j1 - j0) * c_):
                        part[e] = src[e]
                for e in range(max(j1, j0) * c_, kwc):
                    seg[e] = 0
        for o in range(ow):
            rows[(pbase + o) * k1 + k1 - 1] = 1
