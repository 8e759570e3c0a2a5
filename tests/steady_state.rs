//! The CPU engine allocates its buffers once per input shape: a later forward of the same shape makes
//! only a bounded number of allocations (the output tensors and the `gemm` crate's own packing
//! buffers inside the 1×1 GEMMs), never one per plane or per op. A counting global allocator sees
//! every allocation of this test binary, so this file holds this one test.

use infnet::cpu::CpuEngine;
use infnet::model::synthetic::{state_dict, Spec};
use infnet::{Engine, InfNet, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static COUNT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn steady_state_forward_allocates_almost_nothing() {
    let model = InfNet::from_state_dict(&state_dict(&Spec::full(), 1)).expect("synthetic model");
    let mut eng = CpuEngine::new(model.graph.clone(), 2).expect("engine");
    let s = 128;
    let x = Tensor { shape: vec![1, 3, s, s], data: (0..3 * s * s).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect() };
    for _ in 0..2 {
        eng.forward(&x).expect("forward");
    }
    let before = COUNT.load(Ordering::Relaxed);
    let out = eng.forward(&x).expect("forward");
    let n = COUNT.load(Ordering::Relaxed) - before;
    drop(out);
    eprintln!("steady-state forward at {s}×{s}: {n} allocations");
    // ~300 nodes: one allocation per node (or per plane, thousands) would exceed this bound.
    assert!(n <= 150, "{n} allocations in a steady-state forward");
}
