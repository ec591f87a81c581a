// BatchNorm2d -> ReLU -> MaxPool2d(k, stride=k) fused, as kernels/cpu/fused.py:
// the BN statistics come from batchnorm.cu (batchnorm_stats_partial, batchnorm_stats_finalize
// or batchnorm_eval_coef give coef = [sub | scale | shift]); then ONE pass normalises,
// rectifies and pools, so the BN and ReLU outputs are never stored.
// Forward: grid (N*C, ceil(OH*OW / blockDim)), one thread per pooled output,
// window in row-major order, strict '>' on the ReLU output (ties -> first).
// Backward: per-channel float64 partial sums over the pooled positions only
// (grid (C, S)), batchnorm_bwd_finalize (batchnorm.cu) for the coefficients, then one
// gather pass writing dx: grid (N*C, ceil(H*W / blockDim)).
#include "common.cuh"

__device__ __forceinline__ real bn_relu(real xv, real sub, real scale, real shift) {
    const real v = (xv - sub) * scale + shift;
    return v > (real)0 ? v : (real)0;  // !(v > 0) -> 0, as the CPU (NaN -> 0)
}

extern "C" __global__ void bn_relu_pool_forward(real* out, int* argmax, const real* x, const real* coef,
                                                int C, int H, int W, int OH, int OW, int k) {
    const int q = blockIdx.y * blockDim.x + threadIdx.x;
    if (q >= OH * OW) return;  // guard
    const i64 plane = blockIdx.x;
    const int c = (int)(plane % C);
    const real sub = coef[c], scale = coef[C + c], shift = coef[2 * C + c];
    const real* xp = x + plane * H * W;
    const int oh = q / OW, ow = q - oh * OW;
    const int h0 = oh * k, w0 = ow * k;
    real best = bn_relu(xp[h0 * W + w0], sub, scale, shift);
    int bi = h0 * W + w0;
    for (int a = 0; a < k; ++a) {
        for (int b = 0; b < k; ++b) {
            const int t = (h0 + a) * W + w0 + b;
            const real v = bn_relu(xp[t], sub, scale, shift);
            if (v > best) { best = v; bi = t; }
        }
    }
    out[plane * OH * OW + q] = best;
    argmax[plane * OH * OW + q] = bi;
}

// part[(c*S + s)*2 + {0,1}] = sum dy, sum dy*(x - mean) over pooled positions
// whose argmax input has a positive BN output.
extern "C" __global__ void bn_relu_pool_bwd_partial(double* part, const real* dout, const int* argmax,
                                                    const real* x, const real* coef, const double* mean,
                                                    int N, int C, int HW, int Q, int chunk) {
    __shared__ double sm[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int q0 = s * chunk, q1 = min(Q, q0 + chunk);
    const real sub = coef[c], scale = coef[C + c], shift = coef[2 * C + c];
    const double mu = mean[c];
    double s1 = 0.0, s2 = 0.0;
    for (int n = 0; n < N; ++n) {
        const i64 pq = ((i64)n * C + c) * Q;
        const i64 px = ((i64)n * C + c) * HW;
        for (int q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
            const real xv = x[px + argmax[pq + q]];
            if ((xv - sub) * scale + shift > (real)0) {
                const double d = (double)dout[pq + q];
                s1 += d;
                s2 += d * ((double)xv - mu);
            }
        }
    }
    s1 = block_sum(s1, sm);
    s2 = block_sum(s2, sm);
    if (threadIdx.x == 0) {
        part[((i64)c * S + s) * 2] = s1;
        part[((i64)c * S + s) * 2 + 1] = s2;
    }
}

// dx = cdy*dy + cx*(x - msub) + c0, dy = dout of the window whose argmax this
// input is (and whose BN output is positive), else 0.
// fcoef = [sub | scale | shift] (forward), bcoef = [cdy | cx | c0 | msub].
extern "C" __global__ void bn_relu_pool_bwd_apply(real* dx, const real* dout, const int* argmax, const real* x,
                                                  const real* fcoef, const real* bcoef,
                                                  int C, int H, int W, int OH, int OW, int k) {
    const int t = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= H * W) return;  // guard
    const i64 plane = blockIdx.x;
    const int c = (int)(plane % C);
    const int y = t / W, xx = t - y * W;
    const int oh = y / k, ow = xx / k;
    const real xv = x[plane * H * W + t];
    real dy = (real)0;
    if (oh < OH && ow < OW) {
        const i64 q = plane * OH * OW + oh * OW + ow;
        if (argmax[q] == t && (xv - fcoef[c]) * fcoef[C + c] + fcoef[2 * C + c] > (real)0) dy = dout[q];
    }
    dx[plane * H * W + t] = bcoef[c] * dy + bcoef[C + c] * (xv - bcoef[3 * C + c]) + bcoef[2 * C + c];
}

