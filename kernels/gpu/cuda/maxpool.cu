// MaxPool2d (floor mode, no padding) forward and backward.
// Forward: grid (N*C, ceil(OH*OW / blockDim)), one thread per output scans its
// window in row-major order with a strict '>' (ties -> first maximum, as the
// CPU), writing the max and its flat index h*W + w (int32) in the input plane.
// Backward (gather): grid (N*C, ceil(H*W / blockDim)), one thread per input
// element sums, in (oh, ow) order, dout of the windows that contain it and
// whose argmax it is; no atomics, deterministic, overlapping windows correct.
#include "common.cuh"

extern "C" __global__ void maxpool2d_forward(real* out, int* argmax, const real* x, int H, int W,
                                             int OH, int OW, int k, int s) {
    const int q = blockIdx.y * blockDim.x + threadIdx.x;
    if (q >= OH * OW) return;  // guard
    const i64 plane = blockIdx.x;
    const real* xp = x + plane * H * W;
    const int oh = q / OW, ow = q - oh * OW;
    const int h0 = oh * s, w0 = ow * s;
    real best = xp[h0 * W + w0];
    int bi = h0 * W + w0;
    for (int a = 0; a < k; ++a) {
        for (int b = 0; b < k; ++b) {
            const int t = (h0 + a) * W + w0 + b;
            const real v = xp[t];
            if (v > best) { best = v; bi = t; }
        }
    }
    out[plane * OH * OW + q] = best;
    argmax[plane * OH * OW + q] = bi;
}

extern "C" __global__ void maxpool2d_backward(real* dx, const real* dout, const int* argmax, int H, int W,
                                              int OH, int OW, int k, int s) {
    const int t = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= H * W) return;  // guard
    const i64 plane = blockIdx.x;
    const int y = t / W, x = t - y * W;
    const int i_lo = y >= k ? (y - k) / s + 1 : 0, i_hi = min(OH - 1, y / s);
    const int j_lo = x >= k ? (x - k) / s + 1 : 0, j_hi = min(OW - 1, x / s);
    const int* am = argmax + plane * OH * OW;
    const real* dp = dout + plane * OH * OW;
    real acc = (real)0;
    for (int i = i_lo; i <= i_hi; ++i)
        for (int j = j_lo; j <= j_hi; ++j)
            if (am[i * OW + j] == t) acc += dp[i * OW + j];
    dx[plane * H * W + t] = acc;
}
