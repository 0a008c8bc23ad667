//! QEMU benchmark (not a test; `make bench`): the compute kernels on the emulated Cortex-A53,
//! one core, on SmolLM2-sized rows (576 columns, as its attention and FFN-input matrices
//! have).
//!
//! - Wall time (the `bench_dot_kernels` entry, without `-icount`): Q4_1 rows at each
//!   activation precision. QEMU's TCG translates integer NEON into host vector code but
//!   floating point through software helpers, so these ratios decide which precision serves
//!   fastest under emulation.
//! - Instructions (the `bench_dot_instructions` entry, under `-icount`, PMU event 0x08):
//!   per row for Q8_0, Q4_0 and Q4_1 at each precision, NEON against the scalar kernels in
//!   the same run; the matrix × N-vectors kernel per row per vector at N = 1, 8, 16 and 32;
//!   and SwiGLU and the attention vector kernels per element.
//!
//! Before timing, it checks that the NEON kernels give the scalar kernels' bits on these rows
//! (the `simd_kernels` test checks every kernel on random cases).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use kernel::{
    hil::Clock,
    infer::{
        Precision,
        kernels::{self, HeadRows, Input, QuantizedRows, QuantizedVector, dot_scalar},
        matmul::{self, dot},
    },
    model::{Matrix, TensorType},
    rand::SplitMix64,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// Columns per row (SmolLM2's model width).
const COLUMNS: usize = 576;
/// Rows per timed pass (SmolLM2's FFN width).
const ROWS: usize = 1536;
/// Rows per instruction count (counts repeat exactly, so fewer rows suffice).
const COUNTED_ROWS: usize = 128;
/// The quantized types, with their block sizes.
const TYPES: [(TensorType, usize); 3] =
    [(TensorType::Q8_0, 34), (TensorType::Q4_0, 18), (TensorType::Q4_1, 20)];

/// `rows` random rows of `block_bytes`-byte blocks whose scales (and Q4_1 minimums) are 1/64
/// and −1/8 as f16, like trained weights' magnitudes.
fn random_rows(random: &mut SplitMix64, rows: usize, block_bytes: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> =
        (0..rows * COLUMNS / 32 * block_bytes).map(|_| random.next_u64() as u8).collect();
    for block in bytes.chunks_exact_mut(block_bytes) {
        block[..4].copy_from_slice(&[0x00, 0x24, 0x00, 0xB0]);
    }
    bytes
}

/// The three inputs of one activation vector: floats, 8-bit and 16-bit quantized.
struct Activations {
    x: Vec<f32>,
    quantized: QuantizedVector,
    wide: QuantizedVector,
}

impl Activations {
    fn new(random: &mut SplitMix64) -> Self {
        let x: Vec<f32> = (0..COLUMNS).map(|_| (random.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect();
        let mut quantized = QuantizedVector::with_capacity(COLUMNS);
        quantized.quantize(&x);
        let mut wide = QuantizedVector::with_capacity(COLUMNS);
        wide.quantize_wide(&x);
        Self { x, quantized, wide }
    }

    /// Each input with its name.
    fn inputs(&self) -> [(&'static str, Input<'_>); 3] {
        [
            ("float", Input::Float(&self.x)),
            ("int8", Input::Quantized(self.quantized.int8())),
            ("int16", Input::Quantized16(self.wide.int16())),
        ]
    }
}

/// The NEON kernels give the scalar kernels' bits on 16 rows of each type at each precision.
fn check_bits(random: &mut SplitMix64, activations: &Activations) {
    for (tensor_type, block_bytes) in TYPES {
        let rows = random_rows(random, 16, block_bytes);
        for (name, input) in activations.inputs() {
            for row in rows.chunks_exact(COLUMNS / 32 * block_bytes) {
                let (simd, scalar) = (dot(tensor_type, row, input), dot_scalar(tensor_type, row, input));
                ensure!(
                    simd.to_bits() == scalar.to_bits(),
                    "{tensor_type:?} {name}: NEON {simd} but scalar {scalar}"
                );
            }
        }
    }
}

/// Wall time of a pass over `ROWS` Q4_1 rows at each precision, best of 3; returns the sums
/// of the products, which the precisions must roughly agree on.
fn wall_time(matrix: &[u8], activations: &Activations) -> [f32; 3] {
    let clock = &bsp::arch::aarch64::timer::GenericTimer;
    let row_bytes = COLUMNS / 32 * 20;
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
        for (slot, (_, input)) in activations.inputs().into_iter().enumerate() {
            let (ns, total) = pass_ns(input);
            best[slot] = best[slot].min(ns);
            totals[slot] = total;
        }
    }
    boot::println!("| activations | ns per row (wall) | vs int16 |");
    boot::println!("|---|---:|---:|");
    for ((name, _), ns) in activations.inputs().iter().zip(best) {
        boot::println!("| {name} | {} | {:.2} |", ns / ROWS as u64, ns as f64 / best[2] as f64);
    }
    totals
}

/// Instructions per row of each type at each precision, NEON and scalar.
fn count_dots(random: &mut SplitMix64, activations: &Activations) {
    boot::println!("instructions per {COLUMNS}-column row (PMU event 0x08 under -icount):");
    boot::println!("| type | activations | NEON | scalar | NEON / scalar | NEON per block |");
    boot::println!("|---|---|---:|---:|---:|---:|");
    for (tensor_type, block_bytes) in TYPES {
        let rows = random_rows(random, COUNTED_ROWS, block_bytes);
        let row_bytes = COLUMNS / 32 * block_bytes;
        for (name, input) in activations.inputs() {
            let per_row = |dot: fn(TensorType, &[u8], Input<'_>) -> f32| {
                let instructions = systests::pmu::count(|| {
                    for row in rows.chunks_exact(row_bytes) {
                        core::hint::black_box(dot(tensor_type, core::hint::black_box(row), input));
                    }
                });
                instructions as usize / COUNTED_ROWS
            };
            let (neon, scalar) = (per_row(dot), per_row(dot_scalar));
            boot::println!(
                "| {} | {name} | {neon} | {scalar} | {:.3} | {:.1} |",
                tensor_type.name(),
                neon as f64 / scalar as f64,
                neon as f64 / (COLUMNS / 32) as f64
            );
        }
    }
}

/// Instructions per row per vector of the matrix × N-vectors kernel on Q4_1 rows, at N = 1, 8,
/// 16 and 32, against N single-vector products of the same rows.
fn count_rows_multi(random: &mut SplitMix64) {
    let data = random_rows(random, COUNTED_ROWS, 20);
    let matrix = Matrix { tensor_type: TensorType::Q4_1, rows: COUNTED_ROWS, columns: COLUMNS, data: &data };
    boot::println!("matrix x N vectors, Q4_1 rows of {COLUMNS}: instructions per row per vector");
    boot::println!("| activations | N | rows_multi | N single-vector rows | ratio |");
    boot::println!("|---|---:|---:|---:|---:|");
    for (name, precision) in [("int16", Precision::Int16), ("int8", Precision::Int8)] {
        for vectors in [1, 8, 16, 32] {
            let x: Vec<f32> = (0..vectors * COLUMNS).map(|_| random.next_f32() * 2.0 - 1.0).collect();
            let mut prepared = QuantizedRows::with_capacity(vectors, COLUMNS, precision);
            let Ok(input) = prepared.quantize(&x, COLUMNS) else { systests::fail(format_args!("shapes")) };
            let mut out = vec![0.0f32; COUNTED_ROWS * vectors];
            let batched = systests::pmu::count(|| {
                let result = matmul::rows_multi(&matrix, input, 0, COUNTED_ROWS, &mut out);
                core::hint::black_box(result).ok();
            });
            let mut band = vec![0.0f32; COUNTED_ROWS];
            let single = systests::pmu::count(|| {
                for vector in 0..vectors {
                    if let Some(single) = input.input(vector, TensorType::Q4_1) {
                        matmul::rows_into(&matrix, single, 0, &mut band);
                        core::hint::black_box(&mut band);
                    }
                }
            });
            let per = |instructions: u32| instructions as usize / (COUNTED_ROWS * vectors);
            boot::println!(
                "| {name} | {vectors} | {} | {} | {:.3} |",
                per(batched),
                per(single),
                batched as f64 / single as f64
            );
        }
    }
}

/// Instructions per element of SwiGLU (1536 values, SmolLM2's FFN width), of an attention
/// query-key dot product and value sum (64 values, its head width) and of softmax (1536
/// values), NEON against scalar.
fn count_vector_kernels(random: &mut SplitMix64) {
    let gate: Vec<f32> = (0..ROWS).map(|_| random.next_f32() * 8.0 - 4.0).collect();
    let up: Vec<f32> = (0..ROWS).map(|_| random.next_f32() * 2.0 - 1.0).collect();
    let count = |operation: &mut dyn FnMut()| systests::pmu::count(operation);
    let mut values = gate.clone();
    let neon_swiglu = count(&mut || matmul::swiglu(&mut values, &up));
    let mut values = gate.clone();
    let scalar_swiglu = count(&mut || kernels::swiglu(&mut values, &up));
    let (query, key) = (&gate[..64], &up[..64]);
    let neon_dot = count(&mut || {
        core::hint::black_box(matmul::dot_floats(core::hint::black_box(query), key));
    });
    let scalar_dot = count(&mut || {
        core::hint::black_box(kernels::dot_floats(core::hint::black_box(query), key));
    });
    let mut out = vec![0.0f32; 64];
    let neon_sum = count(&mut || matmul::add_scaled(core::hint::black_box(&mut out), 0.25, key));
    let scalar_sum = count(&mut || kernels::add_scaled(core::hint::black_box(&mut out), 0.25, key));
    let scores: Vec<f32> = gate.iter().map(|value| value * 4.0).collect();
    let mut values = scores.clone();
    let neon_softmax = count(&mut || matmul::softmax(core::hint::black_box(&mut values)));
    let mut values = scores;
    let scalar_softmax = count(&mut || kernels::softmax(core::hint::black_box(&mut values)));
    boot::println!("vector kernels: instructions per element");
    boot::println!("| kernel | NEON | scalar | NEON / scalar |");
    boot::println!("|---|---:|---:|---:|");
    for (name, neon, scalar, elements) in [
        ("SwiGLU (1536)", neon_swiglu, scalar_swiglu, ROWS),
        ("attention q.k (64)", neon_dot, scalar_dot, 64),
        ("attention value sum (64)", neon_sum, scalar_sum, 64),
        ("softmax (1536)", neon_softmax, scalar_softmax, ROWS),
    ] {
        boot::println!(
            "| {name} | {:.2} | {:.2} | {:.3} |",
            neon as f64 / elements as f64,
            scalar as f64 / elements as f64,
            neon as f64 / scalar as f64
        );
    }
    count_attention_head(random);
}

/// Positions of the attention head benchmark.
const HEAD_POSITIONS: usize = 256;

/// Instructions per position of one attention head of 64 values over [`HEAD_POSITIONS`]
/// positions (the rows read in runs, as the KV stores hand them out): scores and
/// value sums by the kernels that hold the query or the sums in registers, against one SIMD
/// call per position (the anchor).
fn count_attention_head(random: &mut SplitMix64) {
    let query: Vec<f32> = (0..64).map(|_| random.next_f32() - 0.5).collect();
    let stored: Vec<f32> = (0..192 * HEAD_POSITIONS).map(|_| random.next_f32() - 0.5).collect();
    // As a paged store hands them out: runs of 16 rows (a KV block), each of three heads of
    // 64 values, the head the middle one.
    let rows = HeadRows {
        run: |position: usize| {
            &core::hint::black_box(&stored)[position * 192..(position / 16 + 1) * 16 * 192]
        },
        stride: 192,
        range: 64..128,
    };
    let mut scores = vec![0.0f32; HEAD_POSITIONS];
    let mut out = vec![0.0f32; 64];
    let count = |operation: &mut dyn FnMut()| systests::pmu::count(operation);
    let held_scores = count(&mut || matmul::attention_scores(&query, &rows, 0.125, &mut scores));
    let anchor_scores =
        count(&mut || matmul::attention_scores_by_position(&query, &rows, 0.125, &mut scores));
    let held_values = count(&mut || matmul::accumulate_values(&scores, &rows, &mut out));
    let anchor_values = count(&mut || matmul::accumulate_values_by_position(&scores, &rows, &mut out));
    boot::println!("attention head of 64 values over {HEAD_POSITIONS} positions: instructions per position");
    boot::println!("| kernel | held in registers | one call per position | held / per position |");
    boot::println!("|---|---:|---:|---:|");
    for (name, held, anchor) in
        [("scores (q.k)", held_scores, anchor_scores), ("value sums", held_values, anchor_values)]
    {
        boot::println!(
            "| {name} | {:.1} | {:.1} | {:.3} |",
            held as f64 / HEAD_POSITIONS as f64,
            anchor as f64 / HEAD_POSITIONS as f64,
            held as f64 / anchor as f64
        );
    }
}

fn main(_info: &'static boot::BootInfo) -> ! {
    let mut random = SplitMix64::new(7);
    let matrix = random_rows(&mut random, ROWS, 20);
    let activations = Activations::new(&mut random);
    check_bits(&mut random, &activations);
    let totals = wall_time(&matrix, &activations);
    // Under `-icount` the PMU counts instructions: what each path costs a real A53 in work,
    // whatever TCG makes of it.
    if systests::pmu::start_counting() {
        count_dots(&mut random, &activations);
        count_rows_multi(&mut random);
        count_vector_kernels(&mut random);
    }
    let relative = |total: f32| (totals[0] - total).abs() / totals[0].abs().max(1.0);
    ensure!(relative(totals[1]) < 0.05, "int8 sum {} strays from float sum {}", totals[1], totals[0]);
    ensure!(relative(totals[2]) < 0.001, "int16 sum {} strays from float sum {}", totals[2], totals[0]);
    boot::println!("dot kernels done");
    pass()
}
