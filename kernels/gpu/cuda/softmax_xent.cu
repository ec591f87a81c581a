// Fused softmax cross-entropy (PyTorch CrossEntropyLoss, reduction 'mean',
// optional class weights: sum_i w[y_i] l_i / sum_i w[y_i]).
// One block of threads strides over the rows (N is a batch: small); each
// thread does a whole row in float64 (max, log-sum-exp, probs), then a fixed
// block reduction: deterministic. Stable for logits as large as 1e8.
// result[0] = loss, result[1] = number of targets outside [0, K) (the launcher
// raises ValueError when it is not 0), result[2] = sum of weights.
#include "common.cuh"

extern "C" __global__ void softmax_xent_forward(real* probs, double* result, const real* logits,
                                                const i64* targets, const real* cw, int weighted, int N, int K) {
    __shared__ double sm[32];
    double tot = 0.0, wsum = 0.0, bad = 0.0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const real* row = logits + (i64)i * K;
        double mx = (double)row[0];
        for (int j = 1; j < K; ++j) if (row[j] > mx) mx = (double)row[j];
        double s = 0.0;
        for (int j = 0; j < K; ++j) s += exp((double)row[j] - mx);
        const double lse = log(s);
        for (int j = 0; j < K; ++j) probs[(i64)i * K + j] = (real)exp((double)row[j] - mx - lse);
        const i64 y = targets[i];
        if (y < 0 || y >= K) { bad += 1.0; continue; }
        const double wy = weighted ? (double)cw[y] : 1.0;
        tot += wy * (lse - ((double)row[y] - mx));
        wsum += wy;
    }
    tot = block_sum(tot, sm);
    wsum = block_sum(wsum, sm);
    bad = block_sum(bad, sm);
    if (threadIdx.x == 0) {
        result[0] = tot / wsum;
        result[1] = bad;
        result[2] = wsum;
    }
}

// dlogits[i, j] = w[y_i] * (probs[i, j] - [j == y_i]) / sum_k w[y_k]; one block.
extern "C" __global__ void softmax_xent_backward(real* dlogits, const real* probs, const i64* targets,
                                                 const real* cw, int weighted, int N, int K) {
    __shared__ double sm[32];
    double wsum = 0.0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const i64 y = targets[i];
        wsum += (weighted && y >= 0 && y < K) ? (double)cw[y] : 1.0;
    }
    wsum = block_sum(wsum, sm);
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const i64 y = targets[i];
        const double c = ((weighted && y >= 0 && y < K) ? (double)cw[y] : 1.0) / wsum;
        for (int j = 0; j < K; ++j) {
            double g = (double)probs[(i64)i * K + j];
            if (j == y) g -= 1.0;
            dlogits[(i64)i * K + j] = (real)(g * c);
        }
    }
}

// Soft targets t (N, K) (class probabilities, e.g. mixup's): PyTorch's rule for probability targets,
// l_i = -sum_k w_k t_ik log p_ik, loss = sum_i l_i / N. One block, rows strided, fixed reduction order.
// result[0] = loss, result[1] = number of targets that are negative or not finite, result[2] = N.
extern "C" __global__ void softmax_xent_forward_soft(real* probs, double* result, const real* logits,
                                                     const real* targets, const real* cw, int weighted, int N, int K) {
    __shared__ double sm[32];
    double tot = 0.0, bad = 0.0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const real* row = logits + (i64)i * K;
        const real* trow = targets + (i64)i * K;
        double mx = (double)row[0];
        for (int j = 1; j < K; ++j) if (row[j] > mx) mx = (double)row[j];
        double s = 0.0;
        for (int j = 0; j < K; ++j) s += exp((double)row[j] - mx);
        const double lse = log(s);
        for (int j = 0; j < K; ++j) {
            const double z = (double)row[j] - mx;
            probs[(i64)i * K + j] = (real)exp(z - lse);
            const double t = (double)trow[j];
            if (!(t >= 0.0 && t <= 1.0e308)) { bad += 1.0; continue; }
            tot += t * (weighted ? (double)cw[j] : 1.0) * (lse - z);
        }
    }
    tot = block_sum(tot, sm);
    bad = block_sum(bad, sm);
    if (threadIdx.x == 0) {
        result[0] = tot / N;
        result[1] = bad;
        result[2] = (double)N;
    }
}

// dlogits[i, j] = (probs[i, j] * sum_k w_k t_ik - w_j t_ij) / N.
extern "C" __global__ void softmax_xent_backward_soft(real* dlogits, const real* probs, const real* targets,
                                                      const real* cw, int weighted, int N, int K) {
    for (i64 i = gtid(); i < N; i += gstride()) {
        double st = 0.0;
        for (int j = 0; j < K; ++j) st += (double)targets[i * K + j] * (weighted ? (double)cw[j] : 1.0);
        for (int j = 0; j < K; ++j) {
            const double wt = (double)targets[i * K + j] * (weighted ? (double)cw[j] : 1.0);
            dlogits[i * K + j] = (real)(((double)probs[i * K + j] * st - wt) / N);
        }
    }
}
