// Host build of every kernel through emulation.h, with one `extern "C"` launcher per kernel that
// src/cuda/emulated.rs calls. Grid and block come from the Rust side (the same launch configuration
// the CUDA engine uses), so the emulated runs also test that.
#include "emulation.h"

#include "conv.cu"
#include "pool.cu"
#include "resize.cu"

struct EmuDim {
    unsigned x, y, z;
};

#define EMU_LAUNCHER(kernel, Params, barriers)                                                \
    extern "C" void infnet_emu_##kernel(const Params* p, EmuDim grid, EmuDim block) {         \
        const Params params = *p;                                                             \
        emu::launch(dim3{grid.x, grid.y, grid.z}, dim3{block.x, block.y, block.z}, barriers, \
                    [&]() { kernel(params); });                                               \
    }

EMU_LAUNCHER(conv2d_f32, ConvParams, true)
EMU_LAUNCHER(conv2d_pointwise_f32, ConvParams, true)
EMU_LAUNCHER(conv2d_m32_f32, ConvParams, true)
EMU_LAUNCHER(conv2d_pointwise_m32_f32, ConvParams, true)
EMU_LAUNCHER(conv2d_resized_f32, ConvParams, true)
EMU_LAUNCHER(conv2d_resized_m32_f32, ConvParams, true)
EMU_LAUNCHER(max_pool2d_f32, PoolParams, false)
EMU_LAUNCHER(avg_pool2d_f32, PoolParams, false)
EMU_LAUNCHER(resize_bilinear_f32, ResizeParams, false)
EMU_LAUNCHER(reverse_attention_f32, AttentionParams, false)

// Sizes of the parameter structs, checked against the Rust mirrors by the tests.
extern "C" unsigned long long infnet_emu_param_size(int which) {
    switch (which) {
        case 0: return sizeof(ConvParams);
        case 1: return sizeof(PoolParams);
        case 2: return sizeof(ResizeParams);
        case 3: return sizeof(AttentionParams);
        default: return 0;
    }
}
