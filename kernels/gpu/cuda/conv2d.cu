// Conv2d helpers for the GEMM formulation: conv2d_im2col, conv2d_col2im (gather) and the
// two transposes between NCHW and the GEMM layout.
//
// Column matrix cols[k, n*P + p] (K = C*KH*KW rows, row k = (c*KH + i)*KW + j;
// P = OH*OW): the whole batch is ONE cuBLAS GEMM W (F, K) @ cols (K, N*P).
// Offsets are passed as strides (sn, sk) = (P, N*P) and are 64-bit: an conv2d_im2col
// buffer at batch 256 can pass 2^31 elements.
// conv2d_im2col: grid (N*K, ceil(P / blockDim)), one thread per column element,
// coalesced along P. conv2d_col2im: grid (N*C, ceil(H*W / blockDim)), one thread per
// input pixel gathers the (at most KH*KW) entries that read it, taps in fixed
// (i, j) order as the CPU: no atomics, deterministic, overlapping windows ok.
#include "common.cuh"

extern "C" __global__ void conv2d_im2col(real* cols, const real* x, int C, int H, int W, int KH, int KW,
                                  int stride, int pad, int OH, int OW, i64 sn, i64 sk) {
    const int P = OH * OW;
    const int p = blockIdx.y * blockDim.x + threadIdx.x;
    if (p >= P) return;  // guard
    const int K = C * KH * KW;
    const int row = blockIdx.x;  // n*K + k
    const int n = row / K, k = row - n * K;
    const int c = k / (KH * KW), r = k - c * (KH * KW);
    const int i = r / KW, j = r - i * KW;
    const int oh = p / OW, ow = p - oh * OW;
    const int h = oh * stride - pad + i, w = ow * stride - pad + j;
    real v = (real)0;
    if (h >= 0 && h < H && w >= 0 && w < W) v = x[(((i64)n * C + c) * H + h) * W + w];
    cols[n * sn + k * sk + p] = v;
}

extern "C" __global__ void conv2d_col2im(real* dx, const real* dcols, int C, int H, int W, int KH, int KW,
                                  int stride, int pad, int OH, int OW, i64 sn, i64 sk) {
    const int hw = blockIdx.y * blockDim.x + threadIdx.x;
    if (hw >= H * W) return;  // guard
    const int plane = blockIdx.x;  // n*C + c
    const int n = plane / C, c = plane - n * C;
    const int h = hw / W, w = hw - h * W;
    const real* base = dcols + n * sn + (i64)c * KH * KW * sk;
    real acc = (real)0;
    for (int i = 0; i < KH; ++i) {
        const int t = h + pad - i;
        if (t < 0 || t % stride != 0) continue;
        const int oh = t / stride;
        if (oh >= OH) continue;
        for (int j = 0; j < KW; ++j) {
            const int u = w + pad - j;
            if (u < 0 || u % stride != 0) continue;
            const int ow = u / stride;
            if (ow >= OW) continue;
            acc += base[(i * KW + j) * sk + oh * OW + ow];
        }
    }
    dx[(i64)plane * H * W + hw] = acc;
}

// out[n, f, p] = big[f, n*P + p] (+ bias[f] when has_bias): the batch GEMM's
// result to NCHW, bias fused. grid (N*F, ceil(P / blockDim)).
extern "C" __global__ void conv2d_fnp_to_nfp_bias(real* out, const real* big, const real* bias, int has_bias,
                                           int N, int F, int P) {
    const int p = blockIdx.y * blockDim.x + threadIdx.x;
    if (p >= P) return;  // guard
    const int plane = blockIdx.x;
    const int n = plane / F, f = plane - n * F;
    real v = big[((i64)f * N + n) * P + p];
    if (has_bias) v += bias[f];
    out[(i64)plane * P + p] = v;
}

// big[f, n*P + p] = dout[n, f, p]. grid (N*F, ceil(P / blockDim)).
extern "C" __global__ void conv2d_nfp_to_fnp(real* big, const real* dout, int N, int F, int P) {
    const int p = blockIdx.y * blockDim.x + threadIdx.x;
    if (p >= P) return;  // guard
    const int plane = blockIdx.x;
    const int n = plane / F, f = plane - n * F;
    big[((i64)f * N + n) * P + p] = dout[(i64)plane * P + p];
}

// out[p, l] += bias[p % F] for p < planes (NCHW conv bias, L = OH*OW): the
// bias of the batch-invariant forward (one GEMM per image). grid (N*F, ceil(L / blockDim)).
extern "C" __global__ void conv2d_bias_add_planes(real* out, const real* bias, int F, int L) {
    const int l = blockIdx.y * blockDim.x + threadIdx.x;
    if (l >= L) return;  // guard
    const int p = blockIdx.x;
    out[(i64)p * L + l] += bias[p % F];
}
