// BatchNorm2d forward (train, eval) and backward, PyTorch convention, with
// the CPU kernels' float expressions (kernels/cpu/batchnorm.py):
//   train:  y = (x - sub)*scale + shift, sub = mean, scale = gamma*invstd, shift = beta
//   bwd:    dx = cdy*dy + cx*(x - mean) + c0 (per-channel coefficients)
// Statistics: block (c, s) of grid (C, S) sums x - x[0, c, 0] and its square
// over a slice of positions of every image, in float64 (one pass, shifted:
// no cancellation when |mean| >> std); a finalize kernel combines the S
// partials per channel in fixed order. No atomics: deterministic.
// Elementwise passes: grid (N*C, ceil(L / blockDim)), L = H*W.
#include "common.cuh"

// part[(c*S + s)*2 + {0,1}] = sum(d), sum(d*d), d = x - x[0, c, 0].
extern "C" __global__ void batchnorm_stats_partial(double* part, const real* x, int N, int C, int L, int chunk) {
    __shared__ double sm[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int l0 = s * chunk, l1 = min(L, l0 + chunk);
    const double k = (double)x[(i64)c * L];
    double s1 = 0.0, s2 = 0.0;
    for (int n = 0; n < N; ++n) {
        const real* row = x + ((i64)n * C + c) * L;
        for (int l = l0 + threadIdx.x; l < l1; l += blockDim.x) {
            const double d = (double)row[l] - k;
            s1 += d;
            s2 += d * d;
        }
    }
    s1 = block_sum(s1, sm);
    s2 = block_sum(s2, sm);
    if (threadIdx.x == 0) {
        part[((i64)c * S + s) * 2] = s1;
        part[((i64)c * S + s) * 2 + 1] = s2;
    }
}

// Per channel: mean, biased var, invstd; coefficients sub/scale/shift (real);
// running stats updated with the unbiased variance var*M/(M-1).
extern "C" __global__ void batchnorm_stats_finalize(double* save_mean, double* save_invstd, real* coef,
                                             real* running_mean, real* running_var,
                                             const double* part, const real* x, const real* gamma,
                                             const real* beta, int C, int L, int S, double M,
                                             double momentum, double eps) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    double s1 = 0.0, s2 = 0.0;
    for (int s = 0; s < S; ++s) {
        s1 += part[((i64)c * S + s) * 2];
        s2 += part[((i64)c * S + s) * 2 + 1];
    }
    const double k = (double)x[(i64)c * L];
    const double mu = s1 / M;
    const double mean = k + mu;
    double var = s2 / M - mu * mu;
    var = var > 0.0 ? var : 0.0;
    const double inv = 1.0 / sqrt(var + eps);
    save_mean[c] = mean;
    save_invstd[c] = inv;
    coef[c] = (real)mean;                          // sub
    coef[C + c] = (real)((double)gamma[c] * inv);  // scale
    coef[2 * C + c] = beta[c];                     // shift
    running_mean[c] = (real)((1.0 - momentum) * (double)running_mean[c] + momentum * mean);
    running_var[c] = (real)((1.0 - momentum) * (double)running_var[c] + momentum * var * M / (M - 1.0));
}

// Eval coefficients from the running statistics (unchanged): sub = rm,
// scale = gamma / sqrt(rv + eps) (float64, then rounded), shift = beta.
extern "C" __global__ void batchnorm_eval_coef(real* coef, const real* gamma, const real* beta,
                                        const real* running_mean, const real* running_var, int C, double eps) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    const double inv = 1.0 / sqrt((double)running_var[c] + eps);
    coef[c] = running_mean[c];
    coef[C + c] = (real)((double)gamma[c] * inv);
    coef[2 * C + c] = beta[c];
}

// out = (x - sub)*scale + shift per channel (coef = [sub | scale | shift]).
extern "C" __global__ void batchnorm_apply(real* out, const real* x, const real* coef, int C, int L) {
    const int l = blockIdx.y * blockDim.x + threadIdx.x;
    if (l >= L) return;  // guard
    const int c = blockIdx.x % C;
    const i64 o = (i64)blockIdx.x * L + l;
    out[o] = (x[o] - coef[c]) * coef[C + c] + coef[2 * C + c];
}

// Backward partial sums: part[(c*S + s)*2 + {0,1}] = sum(dy), sum(dy*(x - mean)).
extern "C" __global__ void batchnorm_bwd_partial(double* part, const real* dout, const real* x, const double* mean,
                                          int N, int C, int L, int chunk) {
    __shared__ double sm[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int l0 = s * chunk, l1 = min(L, l0 + chunk);
    const double mu = mean[c];
    double s1 = 0.0, s2 = 0.0;
    for (int n = 0; n < N; ++n) {
        const i64 base = ((i64)n * C + c) * L;
        for (int l = l0 + threadIdx.x; l < l1; l += blockDim.x) {
            const double d = (double)dout[base + l];
            s1 += d;
            s2 += d * ((double)x[base + l] - mu);
        }
    }
    s1 = block_sum(s1, sm);
    s2 = block_sum(s2, sm);
    if (threadIdx.x == 0) {
        part[((i64)c * S + s) * 2] = s1;
        part[((i64)c * S + s) * 2 + 1] = s2;
    }
}

// Per channel: sdy, sdyx = invstd*sum(dy*(x-mean)); dgamma += sdyx; dbeta += sdy;
// coef = [cdy | cx | c0 | sub] with dx = cdy*dy + cx*(x - sub) + c0.
extern "C" __global__ void batchnorm_bwd_finalize(real* coef, real* dgamma, real* dbeta, const double* part,
                                           const double* mean, const double* invstd, const real* gamma,
                                           int C, int S, double M) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    double sdy = 0.0, sx = 0.0;
    for (int s = 0; s < S; ++s) {
        sdy += part[((i64)c * S + s) * 2];
        sx += part[((i64)c * S + s) * 2 + 1];
    }
    const double inv = invstd[c];
    const double sdyx = sx * inv;
    const double k = (double)gamma[c] * inv;
    coef[c] = (real)k;
    coef[C + c] = (real)(-k * inv * sdyx / M);
    coef[2 * C + c] = (real)(-k * sdy / M);
    coef[3 * C + c] = (real)mean[c];
    dgamma[c] = (real)((double)dgamma[c] + sdyx);  // += in float64, as the CPU
    dbeta[c] = (real)((double)dbeta[c] + sdy);
}

// dx = cdy*dy + cx*(x - sub) + c0.
extern "C" __global__ void batchnorm_bwd_apply(real* dx, const real* dout, const real* x, const real* coef, int C, int L) {
    const int l = blockIdx.y * blockDim.x + threadIdx.x;
    if (l >= L) return;  // guard
    const int c = blockIdx.x % C;
    const i64 o = (i64)blockIdx.x * L + l;
    dx[o] = coef[c] * dout[o] + coef[C + c] * (x[o] - coef[3 * C + c]) + coef[2 * C + c];
}

// ---- the split steps (SyncBatchNorm, engine/distributed.py): statistics as float64 sums that add
// up over processes, then finish / apply from the (summed) sums. Same float expressions as above.

// part[(c*S + s)*2 + {0,1}] = sum(d), sum(d*d), d = x - shift[c] (a shift common to every process).
extern "C" __global__ void batchnorm_stats_partial_shift(double* part, const real* x, const double* shift,
                                                  int N, int C, int L, int chunk) {
    __shared__ double sm[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int l0 = s * chunk, l1 = min(L, l0 + chunk);
    const double k = shift[c];
    double s1 = 0.0, s2 = 0.0;
    for (int n = 0; n < N; ++n) {
        const real* row = x + ((i64)n * C + c) * L;
        for (int l = l0 + threadIdx.x; l < l1; l += blockDim.x) {
            const double d = (double)row[l] - k;
            s1 += d;
            s2 += d * d;
        }
    }
    s1 = block_sum(s1, sm);
    s2 = block_sum(s2, sm);
    if (threadIdx.x == 0) {
        part[((i64)c * S + s) * 2] = s1;
        part[((i64)c * S + s) * 2 + 1] = s2;
    }
}

// sums[c] = sum_s part[c, s, 0], sums[C + c] = sum_s part[c, s, 1] (fixed order).
extern "C" __global__ void batchnorm_sums_combine(double* sums, const double* part, int C, int S) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    double s1 = 0.0, s2 = 0.0;
    for (int s = 0; s < S; ++s) {
        s1 += part[((i64)c * S + s) * 2];
        s2 += part[((i64)c * S + s) * 2 + 1];
    }
    sums[c] = s1;
    sums[C + c] = s2;
}

// Batch statistics from sums over M values per channel; running stats updated (unbiased var*M/(M-1)).
extern "C" __global__ void batchnorm_stats_from_sums(double* save_mean, double* save_invstd, real* running_mean,
                                              real* running_var, const double* sums, const double* shift,
                                              int C, double M, double momentum, double eps) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    const double mu = sums[c] / M;
    const double mean = shift[c] + mu;
    double var = sums[C + c] / M - mu * mu;
    var = var > 0.0 ? var : 0.0;
    save_mean[c] = mean;
    save_invstd[c] = 1.0 / sqrt(var + eps);
    running_mean[c] = (real)((1.0 - momentum) * (double)running_mean[c] + momentum * mean);
    running_var[c] = (real)((1.0 - momentum) * (double)running_var[c] + momentum * var * M / (M - 1.0));
}

// dgamma += sums[C + c]*invstd (sum dy*xhat), dbeta += sums[c] (sum dy), in float64.
extern "C" __global__ void batchnorm_bwd_params(real* dgamma, real* dbeta, const double* sums, const double* invstd, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    dgamma[c] = (real)((double)dgamma[c] + sums[C + c] * invstd[c]);
    dbeta[c] = (real)((double)dbeta[c] + sums[c]);
}

// coef = [cdy | cx | c0 | sub] from the whole batch's sums (sum dy, sum dy*(x - mean)) over M values.
extern "C" __global__ void batchnorm_bwd_coef_from_sums(real* coef, const double* sums, const double* mean,
                                                 const double* invstd, const real* gamma, int C, double M) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    const double inv = invstd[c];
    const double sdy = sums[c];
    const double sdyx = sums[C + c] * inv;
    const double k = (double)gamma[c] * inv;
    coef[c] = (real)k;
    coef[C + c] = (real)(-k * inv * sdyx / M);
    coef[2 * C + c] = (real)(-k * sdy / M);
    coef[3 * C + c] = (real)mean[c];
}

// Forward coefficients from the saved statistics (as the CPU backward
// recomputes them; used by the split steps and by fused.py): sub = mean, scale = gamma*invstd (float64, rounded), shift = beta.
extern "C" __global__ void batchnorm_coef_from_saved(real* coef, const double* mean, const double* invstd,
                                                     const real* gamma, const real* beta, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;  // guard
    coef[c] = (real)mean[c];
    coef[C + c] = (real)((double)gamma[c] * invstd[c]);
    coef[2 * C + c] = beta[c];
}
