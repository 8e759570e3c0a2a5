// Max and average pooling, one thread per output element, with PyTorch's window arithmetic
// (mirrors `max_pool` / `avg_pool` in src/cpu/ops.rs; ceil_mode only changes the output size, which
// the caller passes as oh × ow).
#include "common.h"

struct PoolParams {
    const float* x;  // n × c × h × w, image stride x_bs
    float* y;        // n × c × oh × ow, image stride y_bs
    int n, c, h, w;
    int oh, ow;
    int k, s, p;
    int count_include_pad;  // avg only: 1 = divide by the padded window, 0 = by the valid part
    int x_bs, y_bs;
};
static_assert(sizeof(PoolParams) == 2 * 8 + 12 * 4, "PoolParams layout must match src/cuda/kernels.rs");

#define POOL_THREADS 256

// Element index → (image, channel, oy, ox); false past the end.
__device__ __forceinline__ bool pool_coords(const PoolParams& p, int& img, int& ch, int& oy, int& ox) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 total = (i64)p.n * p.c * p.oh * p.ow;
    if (i >= total) return false;
    ox = (int)(i % p.ow);
    oy = (int)((i / p.ow) % p.oh);
    ch = (int)((i / ((i64)p.ow * p.oh)) % p.c);
    img = (int)(i / ((i64)p.ow * p.oh * p.c));
    return true;
}

// grid: ceil(n·c·oh·ow / 256), block: 256. Floor mode; NaN propagates as in PyTorch.
extern "C" __global__ void __launch_bounds__(POOL_THREADS) max_pool2d_f32(PoolParams p) {
    int img, ch, oy, ox;
    if (!pool_coords(p, img, ch, oy, ox)) return;
    const float* __restrict__ src = p.x + (i64)img * p.x_bs + (i64)ch * p.h * p.w;
    const int y0 = oy * p.s - p.p, x0 = ox * p.s - p.p;
    const int ya = y0 > 0 ? y0 : 0, yb = y0 + p.k < p.h ? y0 + p.k : p.h;
    const int xa = x0 > 0 ? x0 : 0, xb = x0 + p.k < p.w ? x0 + p.k : p.w;
    float m = -__int_as_float(0x7f800000);
    for (int yy = ya; yy < yb; yy++)
        for (int xx = xa; xx < xb; xx++) {
            const float v = src[(i64)yy * p.w + xx];
            if (v > m || v != v) m = v;
        }
    p.y[(i64)img * p.y_bs + ((i64)ch * p.oh + oy) * p.ow + ox] = m;
}

// grid: ceil(n·c·oh·ow / 256), block: 256. The padded window size is taken before clamping to the
// input (PyTorch's pool_size), which is what count_include_pad divides by.
extern "C" __global__ void __launch_bounds__(POOL_THREADS) avg_pool2d_f32(PoolParams p) {
    int img, ch, oy, ox;
    if (!pool_coords(p, img, ch, oy, ox)) return;
    const float* __restrict__ src = p.x + (i64)img * p.x_bs + (i64)ch * p.h * p.w;
    const int hs = oy * p.s - p.p, ws = ox * p.s - p.p;
    const int he = hs + p.k < p.h + p.p ? hs + p.k : p.h + p.p;
    const int we = ws + p.k < p.w + p.p ? ws + p.k : p.w + p.p;
    const int pool_size = (he - hs) * (we - ws);
    const int ya = hs > 0 ? hs : 0, yb = he < p.h ? he : p.h;
    const int xa = ws > 0 ? ws : 0, xb = we < p.w ? we : p.w;
    float acc = 0.0f;
    for (int yy = ya; yy < yb; yy++)
        for (int xx = xa; xx < xb; xx++) acc += src[(i64)yy * p.w + xx];
    const int div = p.count_include_pad ? pool_size : (yb - ya) * (xb - xa);
    p.y[(i64)img * p.y_bs + ((i64)ch * p.oh + oy) * p.ow + ox] = acc / (float)div;
}
