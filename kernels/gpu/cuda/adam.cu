// Adam (PyTorch torch.optim.Adam, L2 weight decay added to the gradient), in
// the CPU kernel's order of operations (kernels/cpu/adam.py):
//   g = grad + wd*param; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g
//   param -= step_size * (m / (sqrt(v)/bc2_sqrt + eps)),  step_size = lr/(1 - b1^t)
// adam_update: one tensor, grid-stride. adam_update_multi: every parameter in
// one launch: block b updates elements [off[b], off[b] + chunk) of tensor
// tid[b] (tables built once on the host); pointers come as uint64 tables.
#include "common.cuh"

__device__ __forceinline__ void adam_one(real* p, const real* g, real* m, real* v, i64 i, real step_size,
                                         real bc2_sqrt, real b1, real b2, real eps, real wd) {
    const real one = (real)1;
    const real gi = g[i] + wd * p[i];
    const real mi = b1 * m[i] + (one - b1) * gi;
    const real vi = b2 * v[i] + (one - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - step_size * (mi / (sqrt(vi) / bc2_sqrt + eps));
}

extern "C" __global__ void adam_update(real* p, const real* g, real* m, real* v, i64 n, real step_size,
                                       real bc2_sqrt, real b1, real b2, real eps, real wd) {
    for (i64 i = gtid(); i < n; i += gstride()) adam_one(p, g, m, v, i, step_size, bc2_sqrt, b1, b2, eps, wd);
}

extern "C" __global__ void adam_update_multi(const unsigned long long* pp, const unsigned long long* gp,
                                             const unsigned long long* mp, const unsigned long long* vp,
                                             const i64* sizes, const int* blk_tensor, const i64* blk_off,
                                             int chunk, real step_size, real bc2_sqrt, real b1, real b2,
                                             real eps, real wd) {
    const int t = blk_tensor[blockIdx.x];
    const i64 off = blk_off[blockIdx.x];
    const i64 end = min(sizes[t], off + (i64)chunk);
    real* p = reinterpret_cast<real*>(pp[t]);
    const real* g = reinterpret_cast<const real*>(gp[t]);
    real* m = reinterpret_cast<real*>(mp[t]);
    real* v = reinterpret_cast<real*>(vp[t]);
    for (i64 i = off + threadIdx.x; i < end; i += blockDim.x)  // guard: i < end
        adam_one(p, g, m, v, i, step_size, bc2_sqrt, b1, b2, eps, wd);
}
