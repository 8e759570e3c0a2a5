// Bilinear resize (PyTorch upsample_bilinear2d, both align_corners modes) and the fused reverse
// attention: resize of the coarser map, 1 − sigmoid, broadcast multiply over the feature channels,
// and (same launch) the resize of the edge guidance into its channel slice of the branch's concat.
#include "common.h"

struct ResizeParams {
    const float* x;  // n × c × h × w, image stride x_bs
    float* y;        // n × c × oh × ow, image stride y_bs
    int n, c, h, w;
    int oh, ow;
    float scale_h, scale_w;  // src/dst ratio, `resize_scale` in src/cpu/ops.rs
    int align_corners;
    int x_bs, y_bs;
    int pad_;
};
static_assert(sizeof(ResizeParams) == 2 * 8 + 12 * 4, "ResizeParams layout must match src/cuda/kernels.rs");

struct AttentionParams {
    const float* map;  // n × 1 × mh × mw, image stride map_bs: the coarse side output
    const float* x;    // n × c × h × w, image stride x_bs
    float* y;          // n × c × h × w, image stride y_bs: (1 − σ(resize(map))) · x
    float* crop;       // n × 1 × h × w, image stride crop_bs: resize(map) itself (the branch's
                       // residual), or null
    const float* edge; // n × ec × eh × ew, image stride edge_bs: the edge guidance, or null
    float* edge_y;     // n × ec × h × w, image stride edge_y_bs: resize(edge), the concat's edge slice
    int n, c, h, w;
    int mh, mw;
    float scale_h, scale_w;
    int align_corners;
    int resize;  // 0: map is already h × w, read directly
    int map_bs, x_bs, y_bs, crop_bs;
    int ec, eh, ew;
    float edge_scale_h, edge_scale_w;
    int edge_align_corners;
    int edge_bs, edge_y_bs;
    int attention_blocks;  // blocks [0, attention_blocks) do the attention, the rest the edge resize
    int pad_;
};
static_assert(sizeof(AttentionParams) == 6 * 8 + 24 * 4, "AttentionParams layout must match src/cuda/kernels.rs");

#define RESIZE_THREADS 256

// grid: ceil(n·c·oh·ow / 256), block: 256.
extern "C" __global__ void __launch_bounds__(RESIZE_THREADS) resize_bilinear_f32(ResizeParams p) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)p.n * p.c * p.oh * p.ow) return;
    const int ox = (int)(i % p.ow);
    const int oy = (int)((i / p.ow) % p.oh);
    const int ch = (int)((i / ((i64)p.ow * p.oh)) % p.c);
    const int img = (int)(i / ((i64)p.ow * p.oh * p.c));
    const ResizeTap th = resize_tap(oy, p.h, p.scale_h, p.align_corners);
    const ResizeTap tw = resize_tap(ox, p.w, p.scale_w, p.align_corners);
    const float* plane = p.x + (i64)img * p.x_bs + (i64)ch * p.h * p.w;
    p.y[(i64)img * p.y_bs + ((i64)ch * p.oh + oy) * p.ow + ox] = resize_sample(plane, p.w, th, tw);
}

// grid: attention_blocks = ceil(n·h·w / 256), plus ceil(n·ec·h·w / 256) when edge is set;
// block: 256. Attention blocks: one thread per pixel, the attention weight computed once and applied
// to every channel (consecutive threads = consecutive pixels, so each channel's reads and writes stay
// coalesced). Edge blocks: one thread per output element of the edge resize, as resize_bilinear_f32.
// The two parts touch disjoint memory, so the blocks need no ordering.
extern "C" __global__ void __launch_bounds__(RESIZE_THREADS) reverse_attention_f32(AttentionParams p) {
    const i64 hw = (i64)p.h * p.w;
    if ((int)blockIdx.x >= p.attention_blocks) {
        if (!p.edge) return;
        const i64 i = (i64)(blockIdx.x - p.attention_blocks) * blockDim.x + threadIdx.x;
        if (i >= (i64)p.n * p.ec * hw) return;
        const int ox = (int)(i % p.w);
        const int oy = (int)((i / p.w) % p.h);
        const int ch = (int)((i / hw) % p.ec);
        const int img = (int)(i / (hw * p.ec));
        const ResizeTap th = resize_tap(oy, p.eh, p.edge_scale_h, p.edge_align_corners);
        const ResizeTap tw = resize_tap(ox, p.ew, p.edge_scale_w, p.edge_align_corners);
        const float* plane = p.edge + (i64)img * p.edge_bs + (i64)ch * p.eh * p.ew;
        p.edge_y[(i64)img * p.edge_y_bs + ((i64)ch * p.h + oy) * p.w + ox] = resize_sample(plane, p.ew, th, tw);
        return;
    }
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)p.n * hw) return;
    const int img = (int)(i / hw);
    const i64 pr = i % hw;
    const int oy = (int)(pr / p.w), ox = (int)(pr % p.w);
    const float* map = p.map + (i64)img * p.map_bs;
    float m;
    if (p.resize) {
        const ResizeTap th = resize_tap(oy, p.mh, p.scale_h, p.align_corners);
        const ResizeTap tw = resize_tap(ox, p.mw, p.scale_w, p.align_corners);
        m = resize_sample(map, p.mw, th, tw);
    } else {
        m = map[pr];
    }
    if (p.crop) p.crop[(i64)img * p.crop_bs + pr] = m;
    const float a = 1.0f - 1.0f / (1.0f + expf(-m));
    const float* x = p.x + (i64)img * p.x_bs + pr;
    float* y = p.y + (i64)img * p.y_bs + pr;
    for (int ch = 0; ch < p.c; ch++) y[(i64)ch * hw] = a * x[(i64)ch * hw];
}
