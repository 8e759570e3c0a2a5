// Convolution as an implicit GEMM, fp32 FFMA, for every geometry of the graph (any kh×kw, stride,
// padding, dilation): C[cout × pixels] = W[cout × K] · X[K × pixels], K = cin·kh·kw in (ci, ky, kx)
// order, pixels = n·oh·ow (the batch folded into the GEMM's N so small late-stage maps still fill the
// grid). The im2col matrix is never materialised: each K×pixel tile is gathered from the input planes
// into shared memory. Epilogue fused: + bias, + residual, ReLU, × mul; the output may be a channel
// slice of a concat buffer (image stride y_bs ≠ cout·oh·ow). `x_add` is summed into the input on load.
// The `_resized` kernels read the input through a bilinear align_corners resize instead: x[c, y, x]
// (h × w) is sampled from `src` (src_h × src_w) with the resize kernel's taps and arithmetic, so the
// upsampled map (the partial decoder's up(·), read only by 3×3 convs) is never materialised.
#include "common.h"

struct ConvParams {
    const float* x;         // n × cin × h × w, image stride x_bs
    const float* x_add;     // like x (image stride xa_bs), summed into x; or null
    const float* weight;    // K × cout (transposed OIHW), K = cin·kh·kw
    const float* bias;      // cout
    const float* residual;  // n × cout × oh × ow, image stride r_bs; or null
    const float* mul;       // n × cout × oh × ow, image stride m_bs; or null
    float* y;               // n × cout × oh × ow, image stride y_bs
    const float* src;       // resized kernels: n × cin × src_h × src_w, image stride src_bs; x unused
    int n, cin, h, w;
    int cout, oh, ow;
    int kh, kw, stride, pad_h, pad_w, dil;
    int relu;
    int x_bs, xa_bs, r_bs, m_bs, y_bs;
    int src_h, src_w, src_bs;
    float src_scale_h, src_scale_w;  // align_corners src/dst ratios, `resize_scale` in src/cpu/ops.rs
};
static_assert(sizeof(ConvParams) == 8 * 8 + 24 * 4, "ConvParams layout must match src/cuda/kernels.rs");

// 256 threads as 16 × 16, each owning a TM × TN micro-tile at stride 16 in both directions
// (conflict-free shared reads, coalesced stores); block tile BM = 16·TM output channels × BN = 16·TN
// pixels, K in steps of 16. Two shapes: 64 × 64 (TM = TN = 4), and 32 × 128 (TM = 2, TN = 8) for
// cout ≤ 32, which is most of Inf-Net's convs (Res2Net layer-1 splits of 26, RFB/decoder width 32,
// the one-channel heads) and would leave half of a 64-row tile idle. Shared tiles are
// double-buffered: one barrier per K step, the next tile's global loads overlap this tile's FMAs.
#define CONV_BK 16
#define CONV_THREADS 256

template <int TM, int TN, bool POINTWISE, bool RESIZED = false>
__device__ __forceinline__ void conv2d_body(const ConvParams& p) {
    constexpr int BM = 16 * TM, BN = 16 * TN;
    // Loader roles: thread loads column tid % BM of the weight tile (rows tid / BM + A_STEP·j) and
    // column tid % BN of the input tile (rows tid / BN + B_STEP·j).
    constexpr int A_STEP = CONV_THREADS / BM, A_LOADS = CONV_BK / A_STEP;
    constexpr int B_STEP = CONV_THREADS / BN, B_LOADS = CONV_BK / B_STEP;
    __shared__ float a_tile[2][CONV_BK][BM];
    __shared__ float b_tile[2][CONV_BK][BN];

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * BM;
    const i64 n0 = (i64)blockIdx.x * BN;
    const int hw = p.h * p.w;
    const int ohw = p.oh * p.ow;
    const i64 npix = (i64)p.n * ohw;
    const int khw = p.kh * p.kw;
    const int K = p.cin * khw;

    const int ac = tid % BM, ar0 = tid / BM;
    const int am = m0 + ac;
    const bool am_ok = am < p.cout;
    const int bc = tid % BN, br0 = tid / BN;
    const i64 bpix = n0 + bc;
    const bool bpix_ok = bpix < npix;
    const int bimg = bpix_ok ? (int)(bpix / ohw) : 0;
    const int bpr = bpix_ok ? (int)(bpix % ohw) : 0;
    const int iy0 = (bpr / p.ow) * p.stride - p.pad_h;
    const int ix0 = (bpr % p.ow) * p.stride - p.pad_w;
    const float* __restrict__ xb = p.x + (i64)bimg * p.x_bs;
    const float* __restrict__ xab = p.x_add ? p.x_add + (i64)bimg * p.xa_bs : nullptr;
    const float* __restrict__ sb = RESIZED ? p.src + (i64)bimg * p.src_bs : nullptr;
    const int shw = p.src_h * p.src_w;

    float ra[A_LOADS], rb[B_LOADS];
    auto load = [&](int k0) {
#pragma unroll
        for (int j = 0; j < A_LOADS; j++) {
            const int k = k0 + ar0 + A_STEP * j;
            ra[j] = (am_ok && k < K) ? p.weight[(i64)k * p.cout + am] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < B_LOADS; j++) {
            const int k = k0 + br0 + B_STEP * j;
            float v = 0.0f;
            if (bpix_ok && k < K) {
                i64 at;
                bool inside;
                if (POINTWISE) {
                    at = (i64)k * hw + bpr;
                    inside = true;
                } else {
                    const int ci = k / khw;
                    const int r = k - ci * khw;
                    const int ky = r / p.kw;
                    const int kx = r - ky * p.kw;
                    const int iy = iy0 + ky * p.dil;
                    const int ix = ix0 + kx * p.dil;
                    inside = iy >= 0 && iy < p.h && ix >= 0 && ix < p.w;
                    at = (i64)ci * hw + (i64)iy * p.w + ix;
                }
                if (RESIZED) {
                    if (inside) {
                        const int ci = k / khw;
                        const int r = k - ci * khw;
                        const int ky = r / p.kw;
                        const int iy = iy0 + ky * p.dil;
                        const int ix = ix0 + (r - ky * p.kw) * p.dil;
                        const ResizeTap th = resize_tap(iy, p.src_h, p.src_scale_h, 1);
                        const ResizeTap tw = resize_tap(ix, p.src_w, p.src_scale_w, 1);
                        v = resize_sample(sb + (i64)ci * shw, p.src_w, th, tw);
                    }
                } else if (inside) {
                    v = xb[at];
                    if (xab) v += xab[at];
                }
            }
            rb[j] = v;
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int j = 0; j < A_LOADS; j++) a_tile[buf][ar0 + A_STEP * j][ac] = ra[j];
#pragma unroll
        for (int j = 0; j < B_LOADS; j++) b_tile[buf][br0 + B_STEP * j][bc] = rb[j];
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;

    load(0);
    store(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += CONV_BK) {
        const bool more = k0 + CONV_BK < K;
        if (more) load(k0 + CONV_BK);
#pragma unroll
        for (int kk = 0; kk < CONV_BK; kk++) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; i++) a[i] = a_tile[buf][kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < TN; j++) b[j] = b_tile[buf][kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] += a[i] * b[j];
        }
        // The other buffer was last read before the previous barrier, so it is free to overwrite.
        if (more) store(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

#pragma unroll
    for (int j = 0; j < TN; j++) {
        const i64 pix = n0 + tx + 16 * j;
        if (pix >= npix) continue;
        const int img = (int)(pix / ohw);
        const int pr = (int)(pix % ohw);
#pragma unroll
        for (int i = 0; i < TM; i++) {
            const int m = m0 + ty + 16 * i;
            if (m >= p.cout) continue;
            const i64 plane = (i64)m * ohw + pr;
            float v = acc[i][j] + p.bias[m];
            if (p.residual) v += p.residual[(i64)img * p.r_bs + plane];
            if (p.relu) v = fmaxf(v, 0.0f);
            if (p.mul) v *= p.mul[(i64)img * p.m_bs + plane];
            p.y[(i64)img * p.y_bs + plane] = v;
        }
    }
}

// grid: (ceil(n·oh·ow / 64), ceil(cout / 64)), block: 256.
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv2d_f32(ConvParams p) { conv2d_body<4, 4, false>(p); }

// 1×1, stride 1, no padding: the K index is the input channel, no spatial gather. Grid as conv2d_f32.
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv2d_pointwise_f32(ConvParams p) {
    conv2d_body<4, 4, true>(p);
}

// cout ≤ 32. grid: (ceil(n·oh·ow / 128), ceil(cout / 32)), block: 256.
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv2d_m32_f32(ConvParams p) { conv2d_body<2, 8, false>(p); }

extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv2d_pointwise_m32_f32(ConvParams p) {
    conv2d_body<2, 8, true>(p);
}

// Input read through an align_corners resize of `src` (x, x_add unused); any geometry. Grids as
// conv2d_f32 / conv2d_m32_f32.
extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv2d_resized_f32(ConvParams p) {
    conv2d_body<4, 4, false, true>(p);
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv2d_resized_m32_f32(ConvParams p) {
    conv2d_body<2, 8, false, true>(p);
}
