//! QEMU test: every NEON kernel against its scalar twin, bit for bit, on seeded random cases
//! (the host tests check AVX2 the same way with proptest): row dot products of Q8_0, Q4_0,
//! Q4_1 and F32 at each precision, with odd block counts and every code value; the matrix ×
//! N-vectors kernel at N = 1 to 33 against its scalar reference and against each vector alone;
//! SwiGLU (and its exponential's edges), softmax, attention dot products and scaled sums, whole
//! attention heads (scores and value sums with the query or the sums held in registers); block
//! quantization of activations to 8 and 16 bits.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use kernel::{
    infer::{
        Precision,
        kernels::{self, HeadRows, Input, QuantizedRows, QuantizedVector, dot_scalar, rows_multi_scalar},
        matmul, simd,
    },
    model::{Matrix, TensorType, quant::quantize},
    rand::SplitMix64,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// Every type a SIMD dot product serves.
const TYPES: [TensorType; 4] = [TensorType::F32, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1];

/// `count` values uniform in `-spread..spread`.
fn uniform(random: &mut SplitMix64, count: usize, spread: f32) -> Vec<f32> {
    (0..count).map(|_| (random.next_f32() * 2.0 - 1.0) * spread).collect()
}

/// Rows of `tensor_type` from `values`, with a few code bytes of each block replaced by
/// random bytes so that every code value occurs (the scales stay the quantizer's).
fn noisy_rows(random: &mut SplitMix64, tensor_type: TensorType, values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    quantize(tensor_type, values, &mut bytes);
    let header = match tensor_type {
        TensorType::Q8_0 | TensorType::Q4_0 => 2,
        TensorType::Q4_1 => 4,
        TensorType::F32 | TensorType::F16 => return bytes,
    };
    let block_bytes = tensor_type.block_bytes();
    for block in bytes.chunks_exact_mut(block_bytes) {
        for _ in 0..3 {
            let at = header + random.below((block_bytes - header) as u64) as usize;
            block[at] = random.next_u64() as u8;
        }
    }
    bytes
}

/// The bits of `values`.
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

/// Single-row dot products: 60 random rows per block count 1..=5, each type and input.
fn check_dots(random: &mut SplitMix64) -> usize {
    let mut checks = 0;
    for case in 0..300 {
        let columns = 32 * (1 + case % 5);
        let x = uniform(random, columns, 5.0);
        let mut quantized = QuantizedVector::with_capacity(columns);
        quantized.quantize(&x);
        let mut wide = QuantizedVector::with_capacity(columns);
        wide.quantize_wide(&x);
        let mut summed = QuantizedVector::with_capacity(columns);
        let sums = summed.sum_blocks(&x);
        for tensor_type in TYPES {
            let weights = uniform(random, columns, 3.0);
            let row = noisy_rows(random, tensor_type, &weights);
            let mut inputs = vec![Input::Float(&x), Input::FloatSummed(&x, sums)];
            if tensor_type != TensorType::F32 {
                inputs.extend([Input::Quantized(quantized.int8()), Input::Quantized16(wide.int16())]);
            }
            for input in inputs {
                let scalar = dot_scalar(tensor_type, &row, input);
                let Some(neon) = simd::dot(tensor_type, &row, input) else {
                    systests::fail(format_args!("{tensor_type:?} {input:?} has no NEON path"))
                };
                ensure!(
                    neon.to_bits() == scalar.to_bits(),
                    "{tensor_type:?} dot, {} blocks, {input:?}: NEON {neon} but scalar {scalar}",
                    columns / 32
                );
                checks += 1;
            }
        }
    }
    checks
}

/// The matrix × N-vectors kernel against its scalar reference, and each vector alone
/// through the single-vector rows path.
fn check_rows_multi(random: &mut SplitMix64) -> usize {
    let mut checks = 0;
    for (case, vectors) in [1, 2, 3, 7, 8, 9, 16, 31, 32, 33].into_iter().enumerate() {
        let (rows, columns, first) = (4, 32 * (1 + case % 6), case % 2);
        let count = rows - first;
        let x = uniform(random, vectors * columns, 3.0);
        let values = uniform(random, rows * columns, 2.0);
        for precision in [Precision::Int16, Precision::Int8, Precision::Float] {
            let mut prepared = QuantizedRows::with_capacity(vectors, columns, precision);
            let Ok(input) = prepared.quantize(&x, columns) else { systests::fail(format_args!("shapes")) };
            for tensor_type in TYPES {
                let data = noisy_rows(random, tensor_type, &values);
                let matrix = Matrix { tensor_type, rows, columns, data: &data };
                let mut expected = vec![0.0; count * vectors];
                rows_multi_scalar(&matrix, input, first, &mut expected);
                let mut got = vec![f32::NAN; count * vectors];
                ensure!(matmul::rows_multi(&matrix, input, first, count, &mut got).is_ok(), "shapes refused");
                ensure!(
                    bits(&got) == bits(&expected),
                    "{tensor_type:?} {precision:?} N={vectors}: {got:?} but scalar {expected:?}"
                );
                for vector in 0..vectors {
                    let Some(single) = input.input(vector, tensor_type) else {
                        systests::fail(format_args!("vector"))
                    };
                    let mut band = vec![0.0; count];
                    matmul::rows_into(&matrix, single, first, &mut band);
                    let column: Vec<f32> = got.iter().skip(vector).step_by(vectors).copied().collect();
                    ensure!(
                        bits(&band) == bits(&column),
                        "{tensor_type:?} {precision:?} vector {vector} of {vectors}"
                    );
                }
                checks += 1;
            }
        }
    }
    checks
}

/// SwiGLU, dot products of float vectors and scaled sums, at every length 0..=40.
fn check_vector_kernels(random: &mut SplitMix64) -> usize {
    let mut checks = 0;
    for length in 0..=40 {
        let gate = uniform(random, length, 30.0);
        let up = uniform(random, length, 4.0);
        let (mut neon, mut scalar) = (gate.clone(), gate.clone());
        ensure!(simd::swiglu(&mut neon, &up), "no NEON SwiGLU");
        kernels::swiglu(&mut scalar, &up);
        ensure!(bits(&neon) == bits(&scalar), "SwiGLU of {length}: {neon:?} vs {scalar:?}");
        let (neon, scalar) = (simd::dot_floats(&gate, &up), kernels::dot_floats(&gate, &up));
        ensure!(neon.map(f32::to_bits) == Some(scalar.to_bits()), "dot of {length}: {neon:?} vs {scalar}");
        let weight = random.next_f32() - 0.5;
        let (mut neon, mut scalar) = (gate.clone(), gate);
        ensure!(simd::add_scaled(&mut neon, weight, &up), "no NEON add_scaled");
        kernels::add_scaled(&mut scalar, weight, &up);
        ensure!(bits(&neon) == bits(&scalar), "scaled sum of {length}");
        let scores = uniform(random, length, 60.0);
        let (mut neon, mut scalar) = (scores.clone(), scores);
        ensure!(simd::softmax(&mut neon), "no NEON softmax");
        kernels::softmax(&mut scalar);
        ensure!(bits(&neon) == bits(&scalar), "softmax of {length}: {neon:?} vs {scalar:?}");
        checks += 4;
    }
    let edges =
        [-1000.0, -88.5, -87.33, -87.0, -0.0, 0.0, 0.5, 87.33, 88.37, 88.5, 1000.0, f32::MAX, f32::MIN];
    let up = [1.5; 13];
    let (mut neon, mut scalar) = (edges, edges);
    ensure!(simd::swiglu(&mut neon, &up), "no NEON SwiGLU");
    kernels::swiglu(&mut scalar, &up);
    ensure!(bits(&neon) == bits(&scalar), "SwiGLU at the exponential's edges: {neon:?} vs {scalar:?}");
    let mut not_a_number = [f32::NAN; 4];
    ensure!(simd::swiglu(&mut not_a_number, &[1.0; 4]), "no NEON SwiGLU");
    ensure!(not_a_number.iter().all(|value| value.is_nan()), "SwiGLU of NaN: {not_a_number:?}");
    checks + 2
}

/// Block quantization to 8 and 16 bits: random blocks at scales from 1e-30 to 1e30, and
/// blocks of edge values (zeros, halves that round away from zero, the extremes, infinities
/// and NaN), values and block scales bit for bit.
fn check_quantization(random: &mut SplitMix64) -> usize {
    let mut blocks: Vec<f32> = Vec::new();
    for spread in [1e-30, 1e-3, 1.0, 100.0, 1e30] {
        blocks.extend(uniform(random, 4 * 32, spread));
    }
    let mut edges = vec![0.0f32; 32];
    edges.extend((0..32).map(|index| if index % 2 == 0 { -0.0 } else { 0.0 }));
    // Largest magnitude 127 × 2 (scale 2 at 8 bits): odd values land on halves.
    edges.extend((0..32).map(|index| (index as f32 - 15.0) * if index == 31 { 15.75 } else { 1.0 }));
    edges.extend([f32::MAX, f32::MIN, f32::MIN_POSITIVE, -f32::MIN_POSITIVE].repeat(8));
    edges.extend([f32::INFINITY, 1.0, -2.0, f32::NEG_INFINITY].repeat(8));
    edges.extend([f32::NAN, 1.0, -0.5, 3.0].repeat(8));
    edges.extend([f32::NAN; 32]);
    edges.extend((0..32).map(|index| 1e-45 * index as f32));
    blocks.extend(edges);
    let count = blocks.len() / 32;
    let mut checks = 0;
    for (precision, name) in [(Precision::Int8, "int8"), (Precision::Int16, "int16")] {
        let mut scalar = QuantizedRows::with_capacity(count, 32, precision);
        let mut neon = QuantizedRows::with_capacity(count, 32, precision);
        let (Ok(scalar), Ok(neon)) =
            (scalar.quantize(&blocks, 32), neon.quantize_with(&blocks, 32, &matmul::FastestBlocks))
        else {
            systests::fail(format_args!("{name}: shapes refused"))
        };
        let scale_bits =
            |scales: &[[f32; 2]]| scales.iter().flatten().map(|value| value.to_bits()).collect::<Vec<_>>();
        let (values_equal, scales) = match (scalar.int8(), neon.int8(), scalar.int16(), neon.int16()) {
            (Some(expected), Some(got), ..) => {
                (expected.values == got.values, (expected.block_scales, got.block_scales))
            }
            (.., Some(expected), Some(got)) => {
                (expected.values == got.values, (expected.block_scales, got.block_scales))
            }
            _ => systests::fail(format_args!("{name}: no quantized values")),
        };
        ensure!(values_equal, "{name}: NEON's quantized values differ from the scalar ones");
        ensure!(
            scale_bits(scales.0) == scale_bits(scales.1),
            "{name}: block scales {:?} vs {:?}",
            scales.1,
            scales.0
        );
        ensure!(scales.0.len() == count, "{name}: {} blocks quantized of {count}", scales.0.len());
        checks += count;
    }
    checks
}

/// Whole attention heads of 32, 64 and 128 values (the NEON kernels) and of 48 (the
/// per-position path) over 0 to 40 positions, read as a paged store hands rows out (runs of a
/// few rows of two heads, the head second, one row a run of its own 8 values short of the
/// head), against the scalar kernels position by position.
fn check_attention_heads(random: &mut SplitMix64) -> usize {
    let mut checks = 0;
    for (case, width) in [32usize, 64, 128, 48].into_iter().cycle().take(24).enumerate() {
        let positions = case * 41 / 24;
        let short = case % 5 * 7;
        let block = case % 7 + 1;
        let stride = 2 * width;
        let range = width..stride;
        let query = uniform(random, width, 4.0);
        let keys = uniform(random, positions * stride, 4.0);
        let weights: Vec<f32> = (0..positions).map(|_| random.next_f32()).collect();
        let run = |position: usize| {
            let start = position * stride;
            if position == short {
                return &keys[start..stride * position + range.end - 8];
            }
            let mut end = (position / block + 1) * block;
            if position < short {
                end = end.min(short);
            }
            &keys[start..end.min(positions) * stride]
        };
        let rows = HeadRows { run, stride, range: range.clone() };
        let row = |position: usize| {
            let start = position * stride;
            let end = if position == short { range.end - 8 } else { range.end };
            &keys[start + range.start..start + end]
        };
        let expected: Vec<f32> =
            (0..positions).map(|position| kernels::dot_floats(&query, row(position)) * 0.125).collect();
        let mut scores = vec![f32::NAN; positions];
        matmul::attention_scores(&query, &rows, 0.125, &mut scores);
        ensure!(bits(&scores) == bits(&expected), "attention scores, width {width}, {positions} positions");
        let held = width != 48;
        ensure!(simd::attention_scores(&query, &rows, 0.125, &mut scores) == held, "NEON scores for {width}");
        let mut expected = vec![0.0f32; width];
        for (position, weight) in weights.iter().enumerate() {
            kernels::add_scaled(&mut expected, *weight, row(position));
        }
        let mut out = vec![f32::NAN; width];
        matmul::accumulate_values(&weights, &rows, &mut out);
        ensure!(bits(&out) == bits(&expected), "attention values, width {width}, {positions} positions");
        ensure!(simd::accumulate_values(&weights, &rows, &mut out) == held, "NEON value sums for {width}");
        checks += 2;
    }
    checks
}

fn main(_info: &'static boot::BootInfo) -> ! {
    ensure!(simd::instruction_set() == Some("NEON"), "no NEON path");
    let mut random = SplitMix64::new(0x51_4D_D0);
    let dots = check_dots(&mut random);
    let products = check_rows_multi(&mut random);
    let vector_kernels = check_vector_kernels(&mut random) + check_attention_heads(&mut random);
    let quantized = check_quantization(&mut random);
    boot::println!(
        "NEON equals scalar: {dots} row dot products, {products} matrix x N-vector products, {vector_kernels} vector kernels, {quantized} quantized blocks"
    );
    pass()
}
