// Small kernels shared by conv2d.py and linear.py (prefix util_): the Linear
// bias add, per-channel and per-column sums and an in-place add (parameter
// gradients, accumulated +=). Reductions are gathers in a fixed order (no
// atomics): deterministic.
#include "common.cuh"

// out[r, j] += bias[j] (Linear bias, out (rows, M)), grid-stride over rows*M.
extern "C" __global__ void util_bias_add_rows(real* out, const real* bias, i64 total, int M) {
    for (i64 i = gtid(); i < total; i += gstride()) out[i] += bias[(int)(i % M)];
}

// dst[j] += sum_r src[r, j] for j < M, r < R: one thread per column, rows in
// order, float64 accumulation, one rounding. (conv2d: dweight += the GEMM's
// (F, K) result, R = 1; Linear: dbias += the sum of dout's rows.)
extern "C" __global__ void util_sum_rows_add(real* dst, const real* src, int R, i64 M) {
    for (i64 j = gtid(); j < M; j += gstride()) {
        double s = 0.0;
        for (int r = 0; r < R; ++r) s += (double)src[(i64)r * M + j];
        dst[j] = (real)((double)dst[j] + s);  // add in float64, round once (as the CPU)
    }
}

// Per-channel partial sums of a (N, C, L) array: block (c, s) sums positions
// [s*chunk, min(L, (s+1)*chunk)) of every image n, float64, and writes
// part[c*S + s]. grid = (C, S).
extern "C" __global__ void util_chan_partial_sum(double* part, const real* a, int N, int C, int L, int chunk) {
    __shared__ double sm[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int l0 = s * chunk, l1 = min(L, l0 + chunk);
    double acc = 0.0;
    for (int n = 0; n < N; ++n) {
        const real* row = a + ((i64)n * C + c) * L;
        for (int l = l0 + threadIdx.x; l < l1; l += blockDim.x) acc += (double)row[l];
    }
    acc = block_sum(acc, sm);
    if (threadIdx.x == 0) part[(i64)c * S + s] = acc;
}

// dst[c] += sum_s part[c*S + s] (fixed order), one thread per channel.
extern "C" __global__ void util_chan_finalize_add(real* dst, const double* part, int C, int S) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    double t = 0.0;
    for (int s = 0; s < S; ++s) t += part[(i64)c * S + s];
    dst[c] = (real)((double)dst[c] + t);
}

// a[i] += b[i].
extern "C" __global__ void util_add_inplace(real* a, const real* b, i64 n) {
    for (i64 i = gtid(); i < n; i += gstride()) a[i] += b[i];
}
