//! QEMU benchmark (not a test; `make bench`): how fast the emulated Cortex-A53 runs the
//! quantized dot-product kernels at each activation precision (float, int8 and int16), on
//! SmolLM2-sized Q4_1 rows (576 columns, as its attention and FFN-input matrices have), on one
//! core. QEMU's TCG translates integer NEON into host vector code but floating point through
//! software helpers, so the ratios here decide which precision serves fastest under emulation.
//! Before timing, it checks that the NEON kernels give the scalar kernels' bits on these rows.
//! Run under `-icount` (the `bench_dot_instructions` entry), it also counts each path's
//! instructions with the PMU.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use kernel::{
    hil::Clock,
    infer::kernels::{Input, QuantizedVector, dot_scalar},
    infer::matmul::dot,
    model::TensorType,
    rand::SplitMix64,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// Columns per row (SmolLM2's model width).
const COLUMNS: usize = 576;
/// Rows per timed pass (SmolLM2's FFN width).
const ROWS: usize = 1536;
/// Bytes per Q4_1 block of 32 values: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;

fn main(_info: &'static boot::BootInfo) -> ! {
    let mut random = SplitMix64::new(7);
    let row_bytes = COLUMNS / 32 * BLOCK_BYTES;
    let mut matrix: Vec<u8> = (0..ROWS * row_bytes).map(|_| random.next_u64() as u8).collect();
    for block in matrix.chunks_exact_mut(BLOCK_BYTES) {
        // Scale 1/64 and minimum -1/8 as f16, like trained weights' magnitudes.
        block[..4].copy_from_slice(&[0x00, 0x24, 0x00, 0xB0]);
    }
    let x: Vec<f32> = (0..COLUMNS).map(|_| (random.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut quantized = QuantizedVector::with_capacity(COLUMNS);
    quantized.quantize(&x);
    let mut wide = QuantizedVector::with_capacity(COLUMNS);
    wide.quantize_wide(&x);
    let inputs = [
        ("float activations", Input::Float(&x)),
        ("int8 activations", Input::Quantized(&quantized)),
        ("int16 activations", Input::Quantized16(&wide)),
    ];
    // The NEON kernels give the scalar kernels' bits: on 16 rows of each quantized type (random
    // codes, the scales above) at each precision.
    for (tensor_type, block_bytes) in [(TensorType::Q8_0, 34), (TensorType::Q4_0, 18), (TensorType::Q4_1, 20)]
    {
        let mut rows: Vec<u8> =
            (0..16 * COLUMNS / 32 * block_bytes).map(|_| random.next_u64() as u8).collect();
        for block in rows.chunks_exact_mut(block_bytes) {
            block[..4].copy_from_slice(&[0x00, 0x24, 0x00, 0xB0]);
        }
        for (name, input) in inputs {
            for row in rows.chunks_exact(COLUMNS / 32 * block_bytes) {
                let (simd, scalar) = (dot(tensor_type, row, input), dot_scalar(tensor_type, row, input));
                ensure!(
                    simd.to_bits() == scalar.to_bits(),
                    "{tensor_type:?} {name}: NEON {simd} but scalar {scalar}"
                );
            }
        }
    }
    let clock = &bsp::arch::aarch64::timer::GenericTimer;
    let pass_ns = |input: Input<'_>| {
        let start = clock.now_ns();
        let mut total = 0.0f32;
        for row in matrix.chunks_exact(row_bytes) {
            total += dot(TensorType::Q4_1, row, input);
        }
        (clock.now_ns() - start, total)
    };
    boot::println!("Q4_1 dot products, {ROWS} rows of {COLUMNS}, one core; best of 3 passes:");
    let mut best = [u64::MAX; 3];
    let mut totals = [0.0f32; 3];
    for _ in 0..3 {
        for (slot, (_, input)) in inputs.into_iter().enumerate() {
            let (ns, total) = pass_ns(input);
            best[slot] = best[slot].min(ns);
            totals[slot] = total;
        }
    }
    boot::println!("| activations | ns per row (wall) | vs int16 |");
    boot::println!("|---|---:|---:|");
    for ((name, _), ns) in inputs.iter().zip(best) {
        boot::println!("| {name} | {} | {:.2} |", ns / ROWS as u64, ns as f64 / best[2] as f64);
    }
    // Under `-icount` the PMU counts instructions: what each path costs a real A53 in work,
    // whatever TCG makes of it.
    if systests::pmu::start_counting() {
        boot::println!("instructions per row (PMU event 0x08 under -icount):");
        boot::println!("| activations | instructions per row |");
        boot::println!("|---|---:|");
        for (name, input) in inputs {
            let instructions = systests::pmu::count(|| {
                for row in matrix.chunks_exact(row_bytes) {
                    core::hint::black_box(dot(TensorType::Q4_1, row, input));
                }
            });
            boot::println!("| {name} | {} |", instructions as usize / ROWS);
        }
    }
    let relative = |total: f32| (totals[0] - total).abs() / totals[0].abs().max(1.0);
    ensure!(relative(totals[1]) < 0.05, "int8 sum {} strays from float sum {}", totals[1], totals[0]);
    ensure!(relative(totals[2]) < 0.001, "int16 sum {} strays from float sum {}", totals[2], totals[0]);
    boot::println!("dot kernels done");
    pass()
}
