//! Checks that decoding allocates nothing per token: after warm-up, feeding and sampling more
//! tokens makes no heap allocation on the decoding thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kernel::hil::SingleCpu;
use kernel::infer::synthetic::{SyntheticFormat, SyntheticSpec};
use kernel::infer::{ContiguousKv, Precision, Sampler, SamplerConfig, Session, State};
use kernel::model::{ModelFile, TensorType};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting allocations per thread.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// `GlobalAlloc` contract; the counter is a const-initialised thread-local that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded with the caller's layout, as the caller guarantees it is valid.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from `System.alloc` with this layout.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: `pointer` came from `System` with `layout`, and the caller checked `size`.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn decoding_allocates_nothing_per_token() {
    let spec = SyntheticSpec {
        dim: 64,
        hidden_dim: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab_size: 300,
        context_length: 64,
        tied: true,
        seed: 9,
    };
    for (format, precision) in [
        (SyntheticFormat::Gguf(TensorType::F32), Precision::Float),
        (SyntheticFormat::Gguf(TensorType::Q4_1), Precision::Float),
        (SyntheticFormat::Gguf(TensorType::Q8_0), Precision::Int8),
        (SyntheticFormat::Gguf(TensorType::Q4_1), Precision::Int16),
    ] {
        let bytes = spec.generate(format).unwrap().model;
        let model = ModelFile::parse(&bytes).unwrap();
        let kv = ContiguousKv::new(spec.layers, 32, spec.context_length).unwrap();
        let mut state = State::for_positions(&model.weights, precision, spec.context_length);
        let mut session = Session::new(&model.weights, kv);
        let sampling = SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            repetition_penalty: 1.1,
            ..Default::default()
        };
        let mut sampler = Sampler::new(sampling);
        session.feed(&SingleCpu, &mut state, 1).unwrap();
        let before = allocations();
        let mut token = 1;
        for _ in 0..20 {
            session.feed(&SingleCpu, &mut state, token).unwrap();
            token = state.sample(&mut sampler, &[token]);
        }
        assert_eq!(allocations(), before, "{format:?} at {precision:?} allocated while decoding");
        let probe = allocations();
        drop(std::hint::black_box(vec![0u8; 8]));
        assert!(allocations() > probe, "the counter sees allocations");
    }
}
