// ReLU forward and backward, elementwise, grid-stride over the flat array
// (64-bit index). out may alias x (each thread reads then writes its element).
// The backward mask comes from the forward output (out > 0), as on the CPU.
#include "common.cuh"

extern "C" __global__ void relu_forward(real* out, const real* x, i64 n) {
    for (i64 i = gtid(); i < n; i += gstride()) {
        const real v = x[i];
        out[i] = v > (real)0 ? v : (real)0;
    }
}

extern "C" __global__ void relu_backward(real* dx, const real* dout, const real* out, i64 n) {
    for (i64 i = gtid(); i < n; i += gstride()) dx[i] = out[i] > (real)0 ? dout[i] : (real)0;
}
