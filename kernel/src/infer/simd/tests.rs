//! Property tests: every SIMD kernel of this CPU (AVX2 on the x86_64 hosts) against its
//! scalar twin, bit for bit. The NEON kernels get the same checks in the `simd_kernels`
//! QEMU test.

use super::*;
use crate::infer::kernels::{
    self, QuantizedRows, QuantizedVector, dot_scalar, rows_multi_scalar, takes_quantized_input,
};
use crate::infer::{Precision, matmul};
use crate::model::quant::quantize;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

/// The quantized types and F32, every type a SIMD dot product serves.
const TYPES: [TensorType; 4] = [TensorType::F32, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1];

/// Rows of `tensor_type` from `values` (whole rows of `columns`), with some raw code bytes
/// overwritten by `noise` so that every code value occurs (scales stay the quantizer's, so
/// they are finite).
fn rows_with_noise(tensor_type: TensorType, values: &[f32], noise: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    quantize(tensor_type, values, &mut bytes);
    let (block_bytes, header) = match tensor_type {
        TensorType::Q8_0 => (34, 2),
        TensorType::Q4_0 => (18, 2),
        TensorType::Q4_1 => (20, 4),
        _ => return bytes,
    };
    for (index, byte) in noise.iter().enumerate() {
        let block = (index * 5) % (bytes.len() / block_bytes);
        let at = block * block_bytes + header + (index * 7) % (block_bytes - header);
        bytes[at] = *byte;
    }
    bytes
}

/// Asserts `simd` (a SIMD result, or `None` without a path) has the bits of `scalar`.
fn check(simd: Option<f32>, scalar: f32, what: &dyn core::fmt::Debug) -> Result<(), TestCaseError> {
    match simd {
        Some(simd) => prop_assert_eq!(simd.to_bits(), scalar.to_bits(), "{:?}: {} vs {}", what, simd, scalar),
        None => prop_assert!(instruction_set().is_none(), "{:?} has no SIMD path", what),
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_simd_dot_equals_the_scalar_dot(
        weights in proptest::collection::vec(-3.0f32..3.0, 160),
        x in proptest::collection::vec(-5.0f32..5.0, 160),
        noise in proptest::collection::vec(any::<u8>(), 0..40),
        blocks in 1usize..=5,
    ) {
        let columns = 32 * blocks;
        let x = &x[..columns];
        let mut quantized = QuantizedVector::with_capacity(columns);
        quantized.quantize(x);
        let mut wide = QuantizedVector::with_capacity(columns);
        wide.quantize_wide(x);
        let mut summed = QuantizedVector::with_capacity(columns);
        let sums = summed.sum_blocks(x);
        for tensor_type in TYPES {
            let row = rows_with_noise(tensor_type, &weights[..columns], &noise);
            let float = dot_scalar(tensor_type, &row, Input::Float(x));
            let summed_float = dot_scalar(tensor_type, &row, Input::FloatSummed(x, sums));
            prop_assert_eq!(float.to_bits(), summed_float.to_bits(), "precomputed sums change nothing");
            let mut inputs = vec![Input::Float(x), Input::FloatSummed(x, sums)];
            if tensor_type != TensorType::F32 {
                inputs.extend([Input::Quantized(quantized.int8()), Input::Quantized16(wide.int16())]);
            }
            for input in inputs {
                check(dot(tensor_type, &row, input), dot_scalar(tensor_type, &row, input), &(tensor_type, input))?;
            }
        }
        // F32 rows whose length is not a multiple of eight use the scalar tail.
        let odd = columns - 3;
        let mut bytes = Vec::new();
        quantize(TensorType::F32, &weights[..odd], &mut bytes);
        let input = Input::Float(&x[..odd]);
        check(dot(TensorType::F32, &bytes, input), dot_scalar(TensorType::F32, &bytes, input), &"F32 tail")?;
    }

    #[test]
    fn matrix_times_n_vectors_equals_the_scalar_reference(
        seed in any::<u64>(),
        blocks in 1usize..=4,
        vectors in 1usize..=35,
        first in 0usize..3,
    ) {
        let mut random = crate::rand::SplitMix64::new(seed);
        let (rows, columns) = (5, 32 * blocks);
        let values: Vec<f32> = (0..rows * columns).map(|_| random.next_f32() * 4.0 - 2.0).collect();
        let noise: Vec<u8> = (0..8).map(|_| random.next_u64() as u8).collect();
        let x: Vec<f32> = (0..vectors * columns).map(|_| random.next_f32() * 6.0 - 3.0).collect();
        let count = rows - first;
        for precision in [Precision::Int16, Precision::Int8, Precision::Float] {
            let mut prepared = QuantizedRows::with_capacity(vectors, columns, precision);
            let input = prepared.quantize(&x, columns).expect("the shapes fit");
            for tensor_type in TYPES {
                let data = rows_with_noise(tensor_type, &values, &noise);
                let matrix = Matrix { tensor_type, rows, columns, data: &data };
                let mut expected = vec![f32::NAN; count * vectors];
                rows_multi_scalar(&matrix, input, first, &mut expected);
                let mut simd = vec![f32::NAN; count * vectors + 1];
                matmul::rows_multi(&matrix, input, first, count, &mut simd).expect("the shapes fit");
                let bits = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&simd[..count * vectors]), bits(&expected), "{:?} {:?} N={}", tensor_type, precision, vectors);
                prop_assert!(simd[count * vectors].is_nan(), "nothing written past count × N");
                let direct = super::rows_multi(&matrix, input, first, &mut simd[..count * vectors]);
                let integer = takes_quantized_input(tensor_type, precision);
                prop_assert_eq!(direct, integer && instruction_set().is_some(), "SIMD path for {:?} {:?}", tensor_type, precision);
                // Each vector alone, through the single-vector path, gives the same bits.
                for vector in 0..vectors {
                    let single = input.input(vector, tensor_type).expect("a vector of the batch");
                    let mut band = vec![0.0; count];
                    matmul::rows_into(&matrix, single, first, &mut band);
                    let column: Vec<f32> = expected.iter().skip(vector).step_by(vectors).copied().collect();
                    prop_assert_eq!(bits(&band), bits(&column), "vector {} alone", vector);
                }
            }
        }
    }

    #[test]
    fn simd_swiglu_and_attention_kernels_equal_the_scalar_ones(
        gate in proptest::collection::vec(-30.0f32..30.0, 0..41),
        up in proptest::collection::vec(-4.0f32..4.0, 41),
        weight in -2.0f32..2.0,
    ) {
        let length = gate.len();
        let up = &up[..length];
        let mut scalar = gate.clone();
        kernels::swiglu(&mut scalar, up);
        let mut simd = gate.clone();
        if swiglu(&mut simd, up) {
            prop_assert_eq!(simd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        check(dot_floats(&gate, up), kernels::dot_floats(&gate, up), &"dot_floats")?;
        let mut scalar = gate.clone();
        kernels::add_scaled(&mut scalar, weight, up);
        let mut simd = gate.clone();
        if add_scaled(&mut simd, weight, up) {
            prop_assert_eq!(simd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn attention_heads_equal_the_scalar_kernels_position_by_position(
        width in prop::sample::select(vec![16usize, 32, 48, 64, 128]),
        positions in 0usize..40,
        short in 0usize..48,
        query in proptest::collection::vec(-4.0f32..4.0, 128),
        keys in proptest::collection::vec(-4.0f32..4.0, 40 * 128),
        weights in proptest::collection::vec(0.0f32..1.0, 40),
    ) {
        let query = &query[..width];
        // Row `short` (if it is one of the positions) is 8 values short of the head.
        let row = |position: usize| {
            let length = if position == short { width - 8 } else { width };
            &keys[position * width..position * width + length]
        };
        let bits = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
        let scale = 0.125;
        let expected: Vec<f32> =
            (0..positions).map(|position| kernels::dot_floats(query, row(position)) * scale).collect();
        let mut scores = vec![f32::NAN; positions];
        matmul::attention_scores(query, row, scale, &mut scores);
        prop_assert_eq!(bits(&scores), bits(&expected), "scores, width {}", width);
        let held = matches!(width, 32 | 64 | 128) && instruction_set().is_some();
        prop_assert_eq!(attention_scores(query, row, scale, &mut scores), held, "a SIMD path for width {}", width);

        let weights = &weights[..positions];
        let mut expected = vec![0.0f32; width];
        for (position, weight) in weights.iter().enumerate() {
            kernels::add_scaled(&mut expected, *weight, row(position));
        }
        let mut out = vec![f32::NAN; width];
        matmul::accumulate_values(weights, row, &mut out);
        prop_assert_eq!(bits(&out), bits(&expected), "values, width {}", width);
        prop_assert_eq!(accumulate_values(weights, row, &mut out), held, "a SIMD path for width {}", width);
    }
}

proptest! {
    #[test]
    fn simd_softmax_equals_the_scalar_one(
        values in proptest::collection::vec(-100.0f32..30.0, 0..70),
        edge in prop::sample::select(vec![0.0f32, -0.0, f32::NAN, f32::NEG_INFINITY, -1e30, 1e30, 88.0]),
        at in 0usize..70,
    ) {
        let mut values = values;
        if let Some(value) = values.get_mut(at) {
            *value = edge;
        }
        let mut scalar = values.clone();
        kernels::softmax(&mut scalar);
        let mut simd = values.clone();
        prop_assert_eq!(softmax(&mut simd), instruction_set().is_some());
        // Every NaN counts as one (a NaN's sign and payload are the hardware's choice).
        let bits = |values: &[f32]| {
            values.iter().map(|value| if value.is_nan() { f32::NAN.to_bits() } else { value.to_bits() }).collect::<Vec<_>>()
        };
        prop_assert_eq!(bits(&simd), bits(&scalar), "softmax of {:?}", values);
    }
}

#[test]
fn softmax_sums_to_one_and_keeps_the_order() {
    let mut values = [1.0, 2.0, 3.0, -200.0, 0.5, 2.0, 7.0, 1.0, 0.0];
    crate::infer::matmul::softmax(&mut values);
    let sum: f32 = values.iter().sum();
    assert!((sum - 1.0).abs() < 1e-6, "{values:?}");
    assert!(values[6] > values[2] && values[2] > values[1] && values[1] > values[0], "{values:?}");
    assert_eq!(values[1], values[5]);
    assert!(values[3] < 1e-30, "e^-207 is all but nothing: {}", values[3]);
}

#[test]
fn simd_swiglu_matches_at_the_exponential_s_edges() {
    // Beyond the clamp on both sides, at zero and its sign, at the extremes, and NaN.
    let gate = [
        -1000.0,
        -88.5,
        -87.33,
        -87.0,
        -1.0e-30,
        -0.0,
        0.0,
        1.0e-30,
        0.5,
        87.33,
        88.37,
        88.5,
        1000.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let up = [1.5f32; 18];
    let mut scalar = gate;
    kernels::swiglu(&mut scalar, &up);
    let mut simd = gate;
    assert!(swiglu(&mut simd, &up) || instruction_set().is_none());
    for ((simd, scalar), gate) in simd.iter().zip(scalar).zip(gate) {
        if scalar.is_nan() {
            assert!(simd.is_nan(), "silu({gate}) gives NaN on the scalar path only");
        } else {
            assert_eq!(simd.to_bits(), scalar.to_bits(), "silu({gate}): {simd} vs {scalar}");
        }
    }
}

#[test]
fn this_host_has_a_simd_path() {
    // The host CI machines are x86_64 with AVX2 or aarch64 with NEON.
    assert!(instruction_set().is_some(), "no SIMD path on this CPU: the SIMD kernels go untested");
}
