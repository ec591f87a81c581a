// Shared helpers of hitcnn's CUDA kernels (included by every .cu in this folder).
//
// Every source is compiled twice by kernels/gpu/_launch.py (NVRTC through
// cupy.RawModule), once with -DREAL=float and once with -DREAL=double, so one
// text serves float32 training and float64 gradient checks; kernel names are
// extern "C" and identical in both modules. Only builtins are used (no system
// headers): NVRTC has none. Indices that can pass 2^31 (flat offsets into
// activations and im2col buffers) are 64-bit (i64); per-plane indices are int.
// Reductions are deterministic: per-thread partial sums in a fixed stride
// order, then a fixed shuffle tree, then a fixed-order combine of blocks.
#pragma once

#ifndef REAL
#define REAL float
#endif
typedef REAL real;
typedef long long i64;

// Flat thread index and grid stride, 64-bit.
__device__ __forceinline__ i64 gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 gstride() { return (i64)gridDim.x * blockDim.x; }

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024), fixed
// order: xor-shuffle within each warp, then warp 0 adds the warp sums.
// smem must hold 32 doubles. The result is valid in every thread.
__device__ __forceinline__ double block_sum(double v, double* smem) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();  // smem may still be read by a previous call
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    double t = (lane < nw) ? smem[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}
