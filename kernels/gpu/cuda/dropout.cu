// Inverted dropout forward and backward, elementwise, grid-stride (64-bit).
// The uniform [0, 1) draws come from the launcher's generator (kernels/gpu/dropout.py:
// CounterRNG, a counter-addressed SplitMix64 stream);
// keep = u >= p (the CPU's rule), out = keep ? x*scale : 0, scale = 1/(1-p).
#include "common.cuh"

extern "C" __global__ void dropout_forward(real* out, unsigned char* mask, const real* x, const real* u,
                                           real p, real scale, i64 n) {
    for (i64 i = gtid(); i < n; i += gstride()) {
        const bool keep = u[i] >= p;
        mask[i] = keep ? 1 : 0;
        out[i] = keep ? x[i] * scale : (real)0;
    }
}

extern "C" __global__ void dropout_backward(real* dx, const real* dout, const unsigned char* mask, real scale, i64 n) {
    for (i64 i = gtid(); i < n; i += gstride()) dx[i] = mask[i] != 0 ? dout[i] * scale : (real)0;
}
