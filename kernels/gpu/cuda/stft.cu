// STFT framing and the spectrogram image steps, for kernels/gpu/stft.py.
// frame_window: frames[t, i] = ypad[t*hop + i] * window[i]; grid (n_frames,
// ceil(n_fft / blockDim)); the FFT itself is cupy.fft.rfft (cuFFT).
#include "common.cuh"

extern "C" __global__ void frame_window(real* frames, const real* ypad, const real* window, int n_fft,
                                        int hop, int n_frames) {
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= n_fft) return;  // guard
    const i64 t = blockIdx.x;
    frames[t * n_fft + i] = ypad[t * hop + i] * window[i];
}
