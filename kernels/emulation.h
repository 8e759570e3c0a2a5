// CUDA emulation for host C++ (g++/clang++, C++17): lets kernels/*.cu run unchanged on the CPU so that
// tests check every kernel against its CPU twin on machines without a GPU.
//
// Model: a launch walks the grid; blocks are spread over a few OS threads; inside a block every CUDA
// thread is a fiber (ucontext) with its own stack. `__syncthreads()` switches back to the block's
// scheduler, which resumes the fibers round-robin, so no fiber passes barrier k before every fiber
// has reached it. `__shared__` variables are `static thread_local`: all fibers of a block run on one
// OS thread, and each OS thread runs one block at a time, so that is exactly per-block shared memory.
// Kernels without barriers are launched with `barriers = false` and run thread after thread, no fibers.
// No warp intrinsics are emulated because no kernel uses one.
#pragma once

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
template <class T>
inline T __ldg(const T* p) { return *p; }

namespace emu {

struct Fibers;

// What the CUDA built-in variables read; set by the launcher before a thread (fiber) runs.
struct Builtins {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
    Fibers* fibers;  // null when the kernel was launched without barrier support
};
inline thread_local Builtins builtins;

constexpr size_t kFiberStack = 64 * 1024;

struct Fibers {
    ucontext_t scheduler;
    std::vector<ucontext_t> ctx;
    std::vector<unsigned> barriers;  // barriers passed, per thread: all live threads must agree
    std::vector<unsigned char> done;
    std::unique_ptr<char[]> stacks;
    const std::function<void()>* body = nullptr;
    unsigned current = 0;

    explicit Fibers(unsigned n) : ctx(n), barriers(n), done(n), stacks(new char[n * kFiberStack]) {}
};

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "CUDA emulation: %s\n", what);
    abort();
}

inline void fiber_main() {
    Fibers* f = builtins.fibers;
    (*f->body)();
    f->done[f->current] = 1;
    // returning resumes uc_link, the scheduler
}

__attribute__((noinline)) inline void syncthreads() {
    Fibers* f = builtins.fibers;
    if (!f) fail("__syncthreads() in a kernel launched with barriers = false");
    f->barriers[f->current]++;
    if (swapcontext(&f->ctx[f->current], &f->scheduler) != 0) fail("swapcontext failed");
}

inline uint3 thread_index(unsigned t, dim3 b) { return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)}; }

// Kept out of line: getcontext is returns_twice, which would pin the scheduler's loop variables.
__attribute__((noinline)) inline void start_fiber(Fibers& f, unsigned t) {
    if (getcontext(&f.ctx[t]) != 0) fail("getcontext failed");
    f.ctx[t].uc_stack.ss_sp = f.stacks.get() + (size_t)t * kFiberStack;
    f.ctx[t].uc_stack.ss_size = kFiberStack;
    f.ctx[t].uc_link = &f.scheduler;
    makecontext(&f.ctx[t], fiber_main, 0);
    f.done[t] = 0;
    f.barriers[t] = 0;
}

inline void run_block_fibers(Fibers& f, unsigned nthreads, dim3 block) {
    for (unsigned t = 0; t < nthreads; t++) start_fiber(f, t);
    unsigned live = nthreads;
    while (live > 0) {
        for (unsigned t = 0; t < nthreads; t++) {
            if (f.done[t]) continue;
            f.current = t;
            builtins.thread_idx = thread_index(t, block);
            if (swapcontext(&f.scheduler, &f.ctx[t]) != 0) fail("swapcontext failed");
            if (f.done[t]) live--;
        }
        // After a round every live thread waits at the same barrier; a thread that exited while others
        // wait, or two threads at different barriers, is a kernel bug that real hardware may hide.
        if (live > 0) {
            unsigned ref = ~0u;
            for (unsigned t = 0; t < nthreads; t++) {
                if (f.done[t]) fail("a thread exited while others wait at __syncthreads()");
                if (ref == ~0u) ref = f.barriers[t];
                if (f.barriers[t] != ref) fail("threads of a block wait at different __syncthreads()");
            }
        }
    }
}

inline unsigned worker_count(unsigned long long blocks) {
    unsigned n = std::thread::hardware_concurrency();
    if (const char* e = getenv("INFNET_EMU_THREADS")) n = (unsigned)atoi(e);
    n = std::max(1u, std::min(n, 16u));
    return (unsigned)std::min<unsigned long long>(n, blocks);
}

// Runs `kernel` (a closure calling the __global__ function with its arguments) over grid × block.
inline void launch(dim3 grid, dim3 block, bool barriers, const std::function<void()>& kernel) {
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    const unsigned nthreads = block.x * block.y * block.z;
    if (blocks == 0 || nthreads == 0) return;
    if (nthreads > 1024) fail("more than 1024 threads per block");
    std::atomic<unsigned long long> next{0};
    auto work = [&]() {
        std::unique_ptr<Fibers> fibers;
        if (barriers) {
            fibers.reset(new Fibers(nthreads));
            fibers->body = &kernel;
        }
        builtins.fibers = fibers.get();
        builtins.block_dim = block;
        builtins.grid_dim = grid;
        for (unsigned long long b; (b = next.fetch_add(1)) < blocks;) {
            builtins.block_idx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                                       (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
            if (barriers) {
                run_block_fibers(*fibers, nthreads, block);
            } else {
                for (unsigned t = 0; t < nthreads; t++) {
                    builtins.thread_idx = thread_index(t, block);
                    kernel();
                }
            }
        }
        builtins.fibers = nullptr;
    };
    const unsigned workers = worker_count(blocks);
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < workers; i++) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
}

}  // namespace emu

#define threadIdx (::emu::builtins.thread_idx)
#define blockIdx (::emu::builtins.block_idx)
#define blockDim (::emu::builtins.block_dim)
#define gridDim (::emu::builtins.grid_dim)
#define __syncthreads() ::emu::syncthreads()
