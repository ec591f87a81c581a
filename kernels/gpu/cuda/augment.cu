// Batch-time augmentation (engine/reference/augment.py defines it; kernels/cpu/augment.py is the CPU twin).
//
// augment_batch: one thread per output pixel (n, h, w), grid-stride (64-bit):
// optional VTLP frequency warp (warped != 0: output row r reads source row
// warp[n, r] / 256, interpolated in integers: (q[r0] (256 - f) + q[r1] f + 128) >> 8)
// and time stretch (stretched != 0: column c reads source column stretch[n, c] / 256,
// level 0 outside the image; bilinear with the warp, (A0 (256 - fc) + A1 fc + 32768) >> 16),
// time shift (fill level 0), brightness shift in levels clipped to [0, 255],
// SpecAugment frequency and time masks (level 0), then the decode of
// Dataset.decode: mono level * float32(1/255) (exact in double, rounded once),
// RGB lut[level]. Integer arithmetic and a table look-up: bit-identical to
// the CPU for the same params. params row n (P = 2 + 4M ints): shift, level,
// M x (f0, f_height), M x (t0, t_width).
//
// augment_noise: one thread per column (n, c): additive stationary noise on the levels
// (engine/reference/augment.py augment_noise): in a column that is not all level 0,
// v = min(255, max(a, b) + add[|a - b|]) with b = clamp(floor + dither[hash(seed, r, c)], 0, 255);
// 64-bit unsigned arithmetic masked to 32 bits, as the CPU's int64 (bit-identical).
//
// mixup_batch: out = lam * x + mlam * x[perm] per element (no contraction:
// --fmad=false, the CPU's float expression), targets = mixed one-hot labels.
#include "common.cuh"

__device__ __forceinline__ int aug_level(const unsigned char* qn, int r, int c, int W) {
    return (c >= 0 && c < W) ? (int)qn[(i64)r * W + c] : 0;
}

extern "C" __global__ void augment_batch(real* out, const unsigned char* q, const int* params, const real* lut,
                                         const int* warp, const int* stretch, int N, int H, int W, int M,
                                         int rgb, int warped, int stretched) {
    const i64 plane = (i64)H * W, total = (i64)N * plane;
    const int P = 2 + 4 * M;
    const double mono_scale = (double)(float)(1.0 / 255.0);
    for (i64 idx = gtid(); idx < total; idx += gstride()) {
        const int n = (int)(idx / plane);
        const int r = (int)((idx - (i64)n * plane) / W);
        const int c = (int)(idx - (i64)n * plane - (i64)r * W);
        const int* pr = params + (i64)n * P;
        const int src = c - pr[0];
        int v = 0;
        if (src >= 0 && src < W) {
            const unsigned char* qn = q + (i64)n * plane;
            int r0 = r, r1 = r, fr = 0;
            if (warped) {
                const int u = warp[(i64)n * H + r];
                r0 = u >> 8;
                fr = u & 255;
                r1 = r0 + 1 < H ? r0 + 1 : H - 1;
            }
            if (stretched) {
                const int uc = stretch[(i64)n * W + src];
                const int c0 = uc >> 8, fc = uc & 255;  // arithmetic shift: floor, as NumPy's and Numba's
                const int a0 = aug_level(qn, r0, c0, W) * (256 - fr) + aug_level(qn, r1, c0, W) * fr;
                const int a1 = aug_level(qn, r0, c0 + 1, W) * (256 - fr) + aug_level(qn, r1, c0 + 1, W) * fr;
                v = (a0 * (256 - fc) + a1 * fc + 32768) >> 16;
            } else if (warped) {
                v = ((int)qn[(i64)r0 * W + src] * (256 - fr) + (int)qn[(i64)r1 * W + src] * fr + 128) >> 8;
            } else {
                v = (int)qn[(i64)r * W + src];
            }
        }
        v += pr[1];
        v = v < 0 ? 0 : (v > 255 ? 255 : v);
        for (int k = 0; k < M; ++k) {
            const int f0 = pr[2 + 2 * k], fw = pr[3 + 2 * k];
            const int t0 = pr[2 + 2 * M + 2 * k], tw = pr[3 + 2 * M + 2 * k];
            if ((fw > 0 && r >= f0 && r < f0 + fw) || (tw > 0 && c >= t0 && c < t0 + tw)) v = 0;
        }
        const i64 o = (i64)n * (rgb ? 3 : 1) * plane + (i64)r * W + c;
        if (rgb) {
            out[o] = lut[3 * v];
            out[o + plane] = lut[3 * v + 1];
            out[o + 2 * plane] = lut[3 * v + 2];
        } else {
            out[o] = (real)((double)v * mono_scale);
        }
    }
}

__device__ __forceinline__ int noise_hash(unsigned long long seed, unsigned long long r, unsigned long long c) {
    const unsigned long long M32 = 0xFFFFFFFFull;
    unsigned long long x = (((seed * 0x9E3779B1ull) & M32) + ((r * 0x85EBCA77ull) & M32)
                            + ((c * 0xC2B2AE3Dull) & M32)) & M32;
    x ^= x >> 16;
    x = (x * 0x7FEB352Dull) & M32;
    x ^= x >> 15;
    x = (x * 0x68E31DA5ull) & M32;
    x ^= x >> 16;
    return (int)(x & 255ull);
}

extern "C" __global__ void augment_noise(unsigned char* out, const unsigned char* q, const int* noise,
                                     const int* dither, const int* add, int N, int H, int W) {
    const i64 total = (i64)N * W, plane = (i64)H * W;
    for (i64 idx = gtid(); idx < total; idx += gstride()) {
        const int n = (int)(idx / W), c = (int)(idx - (i64)n * W);
        const unsigned char* qn = q + (i64)n * plane;
        unsigned char* on = out + (i64)n * plane;
        const int fl = noise[2 * n], seed = noise[2 * n + 1];
        int clip_col = 0;
        for (int r = 0; r < H; ++r) {
            if (qn[(i64)r * W + c] != 0) { clip_col = 1; break; }
        }
        for (int r = 0; r < H; ++r) {
            int a = (int)qn[(i64)r * W + c];
            if (fl >= 0 && clip_col) {
                int b = fl + dither[noise_hash((unsigned long long)seed, (unsigned long long)r,
                                                  (unsigned long long)c)];
                b = b < 0 ? 0 : (b > 255 ? 255 : b);
                const int hi = a > b ? a : b, d = a > b ? a - b : b - a;
                a = hi + add[d];
                a = a > 255 ? 255 : a;
            }
            on[(i64)r * W + c] = (unsigned char)a;
        }
    }
}

extern "C" __global__ void mixup_batch(real* out, real* targets, const real* x, const i64* y, const i64* perm,
                                       real lam, real mlam, int N, i64 E, int K) {
    const i64 total = (i64)N * E;
    for (i64 idx = gtid(); idx < total; idx += gstride()) {
        const i64 i = idx / E, e = idx - i * E;
        out[idx] = lam * x[idx] + mlam * x[perm[i] * E + e];
    }
    for (i64 idx = gtid(); idx < (i64)N * K; idx += gstride()) {
        const i64 i = idx / K;
        const int j = (int)(idx - i * K);
        targets[idx] = (j == y[i] ? lam : (real)0) + (j == y[perm[i]] ? mlam : (real)0);
    }
}
