"""BatchNorm2d -> ReLU -> MaxPool2d(k, stride=k) fused into one pass each way (CPU).

The first block's activations (N x 32 x 102 x 159) are large and every
unfused elementwise pass over them is memory-bound, so the pattern
BN -> ReLU -> MaxPool with non-overlapping windows runs as:

forward
    the BatchNorm statistics pass (:func:`kernels.cpu.batchnorm.channel_stats`,
    float64), then ONE pass that normalises, rectifies and pools, writing only
    the pooled output and its argmax. The BN and ReLU outputs are never stored.
backward
    one reduction pass over the pooled positions only (the gradient of the pool
    is non-zero only at argmaxes whose ReLU output is positive; given the
    forward's pooled output it streams that instead of gathering ``x``, see
    :func:`_sums`), then ONE pass writing ``dx`` of the BN input.

Results equal the unfused path (batchnorm -> relu -> maxpool kernels): the
forward bit for bit (same float expressions, same tie rule on the ReLU output:
first maximum in row-major order), the backward to float64 rounding of the
per-channel sums (summation order differs). ``prange`` over channels for the
reductions and over ``N*C`` planes for the passes. Dimension letters: ``N, C,
H, W``, ``OH, OW`` (pooled).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..shapes import maxpool2d_output_size
from . import batchnorm as _bn
from ._threads import run as _run

__all__ = ["bn_relu_pool_forward_train", "bn_relu_pool_forward_eval", "bn_relu_pool_backward",
           "bn_relu_pool_apply_train", "bn_relu_pool_backward_sums", "bn_relu_pool_backward_apply"]


@njit(parallel=True, cache=True)
def _fwd(out, argmax, x, sub, scale, shift, k):  # x (N,C,H,W), out/argmax (N,C,OH,OW)
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for p in prange(n * c):
        i_n = p // c
        ch = p % c
        s = sub[ch]
        sc = scale[ch]
        b = shift[ch]
        for i in range(oh):
            for j in range(ow):
                h0 = i * k
                w0 = j * k
                best = (x[i_n, ch, h0, w0] - s) * sc + b
                if not best > 0:
                    best = 0.0
                bi = h0 * w + w0
                for a in range(k):
                    for bb in range(k):
                        v = (x[i_n, ch, h0 + a, w0 + bb] - s) * sc + b
                        if not v > 0:
                            v = 0.0
                        if v > best:
                            best = v
                            bi = (h0 + a) * w + w0 + bb
                out[i_n, ch, i, j] = best
                argmax[i_n, ch, i, j] = bi


@njit(parallel=True, cache=True)
def _fwd2(out, argmax, x3, w, sub, scale, shift):  # 2x2 windows, stride 2; x3 (N, C, H*W), out/argmax (N, C, OH, OW)
    # Branch-free: the ReLU and the running maximum are selects, so random signs cost no
    # mispredictions and LLVM vectorises the row loop (cnn6_rgb's first block at batch 16:
    # 6.4 -> 2.5 ms on a 2-core EPYC, same bits as the branchy form and the unfused path).
    n, c, oh, ow = out.shape
    for p in prange(n * c):
        i_n = p // c
        ch = p % c
        s = sub[ch]
        sc = scale[ch]
        b = shift[ch]
        z = out.dtype.type(0)
        xp = x3[i_n, ch]
        op = out[i_n, ch]
        ap = argmax[i_n, ch]
        for i in range(oh):
            row = 2 * i * w
            r0 = xp[row:row + w]
            r1 = xp[row + w:row + 2 * w]
            o = op[i]
            a = ap[i]
            for j in range(ow):
                v0 = (r0[2 * j] - s) * sc + b
                v1 = (r0[2 * j + 1] - s) * sc + b
                v2 = (r1[2 * j] - s) * sc + b
                v3 = (r1[2 * j + 1] - s) * sc + b
                v0 = v0 if v0 > z else z
                v1 = v1 if v1 > z else z
                v2 = v2 if v2 > z else z
                v3 = v3 if v3 > z else z
                c1 = v1 > v0  # strict: ties keep the first maximum in row-major order
                best = v1 if c1 else v0
                off = np.int32(1) if c1 else np.int32(0)
                c2 = v2 > best
                best = v2 if c2 else best
                off = np.int32(w) if c2 else off
                c3 = v3 > best
                best = v3 if c3 else best
                off = np.int32(w + 1) if c3 else off
                o[j] = best
                a[j] = np.int32(row + 2 * j) + off


def _pool(out, argmax, x, sub, scale, shift, k):
    if k == 2:
        n, c, h, w = x.shape
        _run(x.size, _fwd2, out, argmax, x.reshape(n, c, h * w), w, sub, scale, shift)
    else:
        _run(x.size, _fwd, out, argmax, x, sub, scale, shift, k)


def _check(x, out, argmax, k):
    if x.ndim != 4 or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        raise ValueError(f"x must be a C-contiguous 4-D (N, C, H, W) float32/float64 array, got {x.dtype} {x.shape}")
    n, c, h, w = x.shape
    shape = (n, c) + maxpool2d_output_size(h, w, k, k)
    for name, a, dt in (("out", out, x.dtype), ("argmax", argmax, np.int32)):
        if a.shape != shape or a.dtype != dt or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous {np.dtype(dt)} of shape {shape}, got {a.dtype} {a.shape}")


def bn_relu_pool_forward_train(out, argmax, save_mean, save_invstd, x, gamma, beta, running_mean, running_var,
                               momentum, eps, kernel_size):
    """Fused BatchNorm2d (training) -> ReLU -> MaxPool2d(kernel_size, stride=kernel_size).

    Parameters
    ----------
    out : np.ndarray [shape=(N, C, OH, OW), dtype=x.dtype]
        Pooled output, ``OH = H // k``, ``OW = W // k`` (floor mode).
    argmax : np.ndarray [shape=(N, C, OH, OW), dtype=int32]
        Flat index ``h*W + w`` of each window's first maximum of the ReLU output.
    save_mean, save_invstd : np.ndarray [shape=(C,), dtype=float64]
        Batch statistics for the backward (as :func:`batchnorm_forward_train`).
    x : np.ndarray [shape=(N, C, H, W)]
        BatchNorm input (e.g. the conv output).
    gamma, beta, running_mean, running_var : np.ndarray [shape=(C,)]
        Running statistics are updated in place (PyTorch convention).
    momentum, eps : float
    kernel_size : int >= 1
        Pool window and stride.

    Raises
    ------
    ValueError
        On wrong shapes, dtypes, or a window larger than the plane.
    """
    _check(x, out, argmax, kernel_size)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if m < 2:
        raise ValueError(f"BatchNorm training needs N*H*W >= 2 values per channel, got x shape {x.shape}")
    c = x.shape[1]
    var = np.empty(c)
    _bn.channel_stats(save_mean, var, x)
    sub = np.empty(c, x.dtype)
    scale = np.empty(c, x.dtype)
    shift = np.empty(c, x.dtype)
    _bn._finish_train(save_mean, save_invstd, sub, scale, shift, var, gamma, beta, running_mean, running_var,
                      float(momentum), float(eps), m)
    _pool(out, argmax, x, sub, scale, shift, int(kernel_size))


def bn_relu_pool_apply_train(out, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size):
    """Apply step of the fused training forward, from statistics already computed.

    Under SyncBatchNorm the statistics come from :func:`kernels.cpu.batchnorm.batchnorm_stats`
    summed over processes and :func:`kernels.cpu.batchnorm.batchnorm_stats_finish`;
    this then normalises (the single-process forward's float expressions),
    rectifies and pools in one pass. Shapes as :func:`bn_relu_pool_forward_train`.
    """
    _check(x, out, argmax, kernel_size)
    sub, scale, shift = _bn.train_coefficients(save_mean, save_invstd, gamma, beta, x.dtype)
    _pool(out, argmax, x, sub, scale, shift, int(kernel_size))


def bn_relu_pool_forward_eval(out, argmax, x, gamma, beta, running_mean, running_var, eps, kernel_size):
    """Fused BatchNorm2d (eval, running statistics) -> ReLU -> MaxPool2d(k, stride=k); see the train version."""
    _check(x, out, argmax, kernel_size)
    sub, scale, shift = _bn.eval_coefficients(gamma, beta, running_mean, running_var, eps, x.dtype)
    _pool(out, argmax, x, sub, scale, shift, int(kernel_size))


@njit(parallel=True, cache=True)
def _bwd_sums(sums, dout, argmax, x3, sub, scale, shift, mean):  # x3 (N, C, H*W); sums (2, C)
    # One channel per task, its N planes in order; within a plane four interleaved
    # float64 accumulators (position q goes to q % 4, combined as (a0 + a1) + (a2 + a3))
    # and a branch-free ReLU mask: 5.5 -> 3.9 ms for cnn6_rgb's first block at batch 16
    # on a 2-core EPYC. The order depends only on the shape, never on the thread count.
    n, c = x3.shape[0], x3.shape[1]
    m = dout.shape[2] * dout.shape[3]
    for ch in prange(c):
        s_ = sub[ch]
        sc = scale[ch]
        b = shift[ch]
        mu = mean[ch]
        acc = np.zeros(8)
        for i_n in range(n):
            xp = x3[i_n, ch]
            dp = dout[i_n, ch].ravel()
            ap = argmax[i_n, ch].ravel()
            q = 0
            while q + 4 <= m:
                for u in range(4):
                    xv = xp[ap[q + u]]
                    d = np.float64(dp[q + u]) if (xv - s_) * sc + b > 0 else 0.0
                    acc[u] += d
                    acc[4 + u] += d * (np.float64(xv) - mu)
                q += 4
            while q < m:
                xv = xp[ap[q]]
                d = np.float64(dp[q]) if (xv - s_) * sc + b > 0 else 0.0
                acc[0] += d
                acc[4] += d * (np.float64(xv) - mu)
                q += 1
        sums[0, ch] = (acc[0] + acc[1]) + (acc[2] + acc[3])
        sums[1, ch] = (acc[4] + acc[5]) + (acc[6] + acc[7])


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _bwd_sums_out(sums, dout, out, use):  # dout, out (N, C, OH, OW); sums (2, C): channels with use[ch] only
    # Streams dout and the forward's pooled output, no gather: at a window's argmax the ReLU
    # passed iff out > 0, and there out is the BatchNorm output y. Writes sum(dy) and
    # sum(dy * y); the caller turns the second into sum(dy * (x - mean)). The lane split is
    # fixed at compile time (reassoc), so results do not depend on the thread count.
    n, c = dout.shape[0], dout.shape[1]
    for ch in prange(c):
        if not use[ch]:
            continue
        s = 0.0
        sy = 0.0
        for i_n in range(n):
            dp = dout[i_n, ch].ravel()
            op = out[i_n, ch].ravel()
            for q in range(dp.size):
                o = op[q]
                d = np.float64(dp[q]) if o > 0 else 0.0
                s += d
                sy += d * np.float64(o)
        sums[0, ch] = s
        sums[1, ch] = sy


#: The pooled-output route of the backward sums is taken for a channel when ``|beta| <= this * |gamma|``
#: (and ``gamma*invstd`` is a nonzero finite number). ``x - mean`` is then recovered from the float32
#: output ``y`` as ``(y - beta)/(gamma*invstd) + (sub - mean)``, with a relative error of about
#: ``ulp(y) / |y - beta|``, i.e. ~3e-7 at this bound for |x_hat| ~ 1 (float32); larger shifts would
#: cancel, so such channels gather x at the argmax instead.
OUT_ROUTE_MAX_SHIFT = 4.0


def _sums(sums, dout, argmax, x3, out, sub, scale, shift, mean, gamma, size):
    """Per-channel ``[sum(dy), sum(dy*(x - mean))]`` (float64) into ``sums`` (2, C), by the fastest exact-enough route.

    With the forward's pooled ``out`` (CPU training): channels that pass
    :data:`OUT_ROUTE_MAX_SHIFT` stream ``dout`` and ``out`` (:func:`_bwd_sums_out`;
    cnn6_rgb's first block at batch 16 on a 2-core EPYC: 3.9 -> 0.2 ms), the
    others (and every channel without ``out``) gather ``x`` at the argmax
    (:func:`_bwd_sums`).
    """
    use = None
    if out is not None:
        sc64 = scale.astype(np.float64)
        b64 = shift.astype(np.float64)
        g = np.abs(np.asarray(gamma, np.float64))
        with np.errstate(invalid="ignore"):
            use = np.isfinite(sc64) & (sc64 != 0) & np.isfinite(b64) & (np.abs(b64) <= OUT_ROUTE_MAX_SHIFT * g)
    if use is None or not use.all():
        _run(size, _bwd_sums, sums, dout, argmax, x3, sub, scale, shift, mean)
    if use is not None and use.any():
        part = np.empty_like(sums)
        _run(size, _bwd_sums_out, part, dout, out, use)
        # sum(dy*(x - mean)) = sum(dy*(y - shift))/scale + (sub - mean)*sum(dy)
        sx = (part[1] - b64 * part[0]) / np.where(use, sc64, 1.0) + (sub.astype(np.float64) - mean) * part[0]
        sums[0] = np.where(use, part[0], sums[0])
        sums[1] = np.where(use, sx, sums[1])


@njit(parallel=True, cache=True)
def _bwd_apply(dx3, dout, argmax, x3, sub, scale, shift, cdy, cx, c0, csub):  # dx3, x3 (N, C, H*W)
    n, c, hw = x3.shape
    oh, ow = dout.shape[2], dout.shape[3]
    zero = dx3.dtype.type(0)
    for p in prange(n * c):
        i_n = p // c
        ch = p % c
        a = cdy[ch]
        bx = cx[ch]
        z = c0[ch]
        ms = csub[ch]
        az = a * zero  # the unfused path computes a*dy with dy = 0 off the argmaxes
        for t in range(hw):
            dx3[i_n, ch, t] = az + bx * (x3[i_n, ch, t] - ms) + z
        s_ = sub[ch]
        sc = scale[ch]
        b = shift[ch]
        for i in range(oh):
            for j in range(ow):
                t = argmax[i_n, ch, i, j]
                xv = x3[i_n, ch, t]
                if (xv - s_) * sc + b > 0:
                    dx3[i_n, ch, t] = a * dout[i_n, ch, i, j] + bx * (xv - ms) + z


def _check_bwd(dx, dout, argmax, x, kernel_size):
    _check(x, dout, argmax, kernel_size)
    if dx is not None and (dx.shape != x.shape or dx.dtype != x.dtype or not dx.flags.c_contiguous):
        raise ValueError(f"dx must be C-contiguous {x.dtype} of shape {x.shape}, got {dx.dtype} {dx.shape}")
    n, c, h, w = x.shape
    return n, c, h, w, x.reshape(n, c, h * w)


def bn_relu_pool_backward_sums(sums, dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size):
    """Statistics step of the fused backward: ``sums = [sum(dy), sum(dy*(x - mean))]`` per channel (float64).

    ``dy`` is the gradient reaching the BatchNorm output (``dout`` at each
    window's argmax where the ReLU passed, else 0). Shapes as
    :func:`bn_relu_pool_backward`; ``sums`` (2, C) float64, overwritten.
    """
    n, c, h, w, x3 = _check_bwd(None, dout, argmax, x, kernel_size)
    _bn._sums_buf("sums", sums, c)
    sub, scale, shift = _bn.train_coefficients(save_mean, save_invstd, gamma, beta, x.dtype)
    _run(x.size, _bwd_sums, sums, dout, argmax, x3, sub, scale, shift, save_mean)


def bn_relu_pool_backward_apply(dx, dout, argmax, x, save_mean, save_invstd, gamma, beta, sums, count, kernel_size):
    """Apply step of the fused backward: writes ``dx`` from the whole batch's ``sums`` over ``count`` values.

    Parameter gradients are not touched (:func:`kernels.cpu.batchnorm.batchnorm_backward_params`).
    """
    n, c, h, w, x3 = _check_bwd(dx, dout, argmax, x, kernel_size)
    _bn._sums_buf("sums", sums, c)
    sub, scale, shift = _bn.train_coefficients(save_mean, save_invstd, gamma, beta, x.dtype)
    cdy, cx, c0, csub = _bn.backward_coefficients(sums, save_mean, save_invstd, gamma, count, x.dtype)
    _run(x.size, _bwd_apply, dx.reshape(n, c, h * w), dout, argmax, x3, sub, scale, shift, cdy, cx, c0, csub)


def bn_relu_pool_backward(dx, dgamma, dbeta, dout, argmax, x, save_mean, save_invstd, gamma, beta, kernel_size,
                           out=None):
    """Backward of :func:`bn_relu_pool_forward_train` (overwrites ``dx``; ``dgamma``, ``dbeta`` ``+=``).

    :func:`bn_relu_pool_backward_sums`, the parameter gradients, then
    :func:`bn_relu_pool_backward_apply` with this batch's own sums.

    Parameters
    ----------
    dx : np.ndarray [shape=(N, C, H, W), dtype=x.dtype]
        Gradient with respect to the BatchNorm input.
    dgamma, dbeta : np.ndarray [shape=(C,)]
        Accumulated parameter gradients.
    dout, argmax : np.ndarray [shape=(N, C, OH, OW)]
        Upstream gradient of the pooled output and the forward's argmax.
    x : np.ndarray [shape=(N, C, H, W)]
        The forward's BatchNorm input.
    save_mean, save_invstd : np.ndarray [shape=(C,), dtype=float64]
    gamma, beta : np.ndarray [shape=(C,)]
        The values used in the forward (the ReLU mask is recomputed from them).
    kernel_size : int
    out : np.ndarray [shape=(N, C, OH, OW), dtype=x.dtype] or None
        The forward's pooled output, unchanged since. Given, the per-channel
        sums stream it instead of gathering ``x`` at the argmaxes (see
        :func:`_sums`: float64 results differ from the gather route by
        rounding, float32 by ~1e-7 relative); None: the gather route.

    Raises
    ------
    ValueError
        On wrong shapes or dtypes (``out`` must have ``dout``'s shape and ``x``'s dtype).
    """
    n, c, h, w, x3 = _check_bwd(dx, dout, argmax, x, kernel_size)
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != dout.shape or out.dtype != x.dtype
                            or not out.flags.c_contiguous):
        raise ValueError(f"out must be the forward's C-contiguous {x.dtype} pooled output of shape {dout.shape}, "
                         f"got {getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    m = n * h * w
    # the forward's normalisation coefficients, recomputed exactly as _finish_train made them
    sub, scale, shift = _bn.train_coefficients(save_mean, save_invstd, gamma, beta, x.dtype)
    sums = np.empty((2, c))
    _sums(sums, dout, argmax, x3, out, sub, scale, shift, save_mean, gamma, x.size)
    cdy, cx, c0, csub = _bn.backward_coefficients(sums, save_mean, save_invstd, gamma, m, x.dtype)
    _bn._bwd_params(dgamma, dbeta, sums, save_invstd)
    _run(x.size, _bwd_apply, dx.reshape(n, c, h * w), dout, argmax, x3, sub, scale, shift, cdy, cx, c0, csub)
