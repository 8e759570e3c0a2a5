// Shared by every kernel source. Under NVRTC (__CUDACC_RTC__) the CUDA keywords are native; under a
// host C++ compiler the emulation header supplies them, so the very same sources run in tests on a
// machine without a GPU.
#pragma once

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "emulation.h"
#endif

// Parameter structs cross the FFI / kernel-argument boundary by value and are mirrored field for field
// by `#[repr(C)]` structs in src/cuda/kernels.rs; pointers are 8 bytes on both sides, ints 4, and
// every struct is padded to a multiple of 8 so that both compilers agree on its size.
typedef long long i64;

// Stops the compiler from fusing a multiply and an add: the resize index math must round exactly as
// PyTorch's (and the CPU twin's) separate f32 multiply and subtract.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }

// One output coordinate of a bilinear resize, PyTorch's linear index/weight tables
// (mirrors `resize_taps` in src/cpu/ops.rs).
struct ResizeTap {
    int i0, i1;
    float l0, l1;
};

// align_corners: 1 = src = dst · scale; 0 = src = max((dst + 0.5) · scale − 0.5, 0).
__device__ __forceinline__ ResizeTap resize_tap(int dst, int in_size, float scale, int align_corners) {
    float real;
    if (align_corners) {
        real = mul_rn(scale, (float)dst);
    } else {
        real = mul_rn(scale, (float)dst + 0.5f) - 0.5f;
        real = real > 0.0f ? real : 0.0f;
    }
    int i0 = (int)floorf(real);
    i0 = i0 < in_size - 1 ? i0 : in_size - 1;
    float l1 = real - (float)i0;
    l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
    ResizeTap t;
    t.i0 = i0;
    t.i1 = i0 < in_size - 1 ? i0 + 1 : i0;
    t.l0 = 1.0f - l1;
    t.l1 = l1;
    return t;
}

// Bilinear sample of one plane at output (oy, ox), with the CPU twin's evaluation order.
__device__ __forceinline__ float resize_sample(const float* __restrict__ plane, int w, ResizeTap th, ResizeTap tw) {
    const float* r0 = plane + (i64)th.i0 * w;
    const float* r1 = plane + (i64)th.i1 * w;
    return th.l0 * (tw.l0 * r0[tw.i0] + tw.l1 * r0[tw.i1]) + th.l1 * (tw.l0 * r1[tw.i0] + tw.l1 * r1[tw.i1]);
}
