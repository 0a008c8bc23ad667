//! Property tests: every SIMD kernel of this CPU (AVX2 on the x86_64 hosts) against its
//! scalar twin, bit for bit. The NEON kernels get the same checks in the `simd_kernels`
//! QEMU test.

use super::*;
use crate::infer::kernels::{
    self, QuantizeBlocks, QuantizedRows, QuantizedVector, ScalarBlocks, dot_scalar, rows_multi_scalar,
    takes_quantized_input,
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

    /// The heads read through [`HeadRows`] as a paged store hands rows out (runs of up to
    /// `block` rows of `heads` heads each, the head at its place in every row, and row `short`
    /// a run of its own 8 values short of the head) give the scalar kernels' bits, position by
    /// position.
    #[test]
    fn attention_heads_equal_the_scalar_kernels_position_by_position(
        width in prop::sample::select(vec![16usize, 32, 48, 64, 128]),
        heads in 1usize..4,
        head in 0usize..3,
        block in 1usize..20,
        positions in 0usize..40,
        short in 0usize..48,
        seed in any::<u64>(),
    ) {
        let mut random = crate::rand::SplitMix64::new(seed);
        let stride = heads * width;
        let range = head % heads * width..(head % heads + 1) * width;
        let mut floats = |count: usize| (0..count).map(|_| 8.0 * random.next_f32() - 4.0).collect::<Vec<f32>>();
        let query = floats(width);
        let keys = floats(40 * stride);
        let weights = floats(positions);
        let run = |position: usize| {
            let start = position * stride;
            if position == short {
                return &keys[start..start + range.end - 8];
            }
            let mut end = (position / block + 1) * block;
            if position < short {
                end = end.min(short);
            }
            &keys[start..end.min(40) * stride]
        };
        let rows = HeadRows { run, stride, range: range.clone() };
        // Row `position`'s part, as one read per position sees it.
        let row = |position: usize| {
            let start = position * stride;
            let end = if position == short { range.end - 8 } else { range.end };
            &keys[start + range.start..start + end]
        };
        let bits = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
        let scale = 0.125;
        let expected: Vec<f32> =
            (0..positions).map(|position| kernels::dot_floats(&query, row(position)) * scale).collect();
        let mut scores = vec![f32::NAN; positions];
        matmul::attention_scores(&query, &rows, scale, &mut scores);
        prop_assert_eq!(bits(&scores), bits(&expected), "scores, width {}", width);
        let held = matches!(width, 32 | 64 | 128) && instruction_set().is_some();
        prop_assert_eq!(attention_scores(&query, &rows, scale, &mut scores), held, "a SIMD path for width {}", width);
        matmul::attention_scores_by_position(&query, &rows, scale, &mut scores);
        prop_assert_eq!(bits(&scores), bits(&expected), "scores one position at a time, width {}", width);

        let mut expected = vec![0.0f32; width];
        for (position, weight) in weights.iter().enumerate() {
            kernels::add_scaled(&mut expected, *weight, row(position));
        }
        let mut out = vec![f32::NAN; width];
        matmul::accumulate_values(&weights, &rows, &mut out);
        prop_assert_eq!(bits(&out), bits(&expected), "values, width {}", width);
        prop_assert_eq!(accumulate_values(&weights, &rows, &mut out), held, "a SIMD path for width {}", width);
        matmul::accumulate_values_by_position(&weights, &rows, &mut out);
        prop_assert_eq!(bits(&out), bits(&expected), "values one position at a time, width {}", width);
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

// ---------------------------------------------------------------------------------------
// Activation quantizers against `ScalarBlocks`.

/// The bits every output value starts as, so that a value written by one path and left alone
/// by the other shows.
const UNTOUCHED_VALUE: i8 = 0x55;
/// The bits every block scale starts as (a NaN that no arithmetic produces).
const UNTOUCHED_SCALE: u32 = 0x7fc0_1234;

/// The values and block scales (as bits) that `quantize` leaves in outputs of `values`
/// elements and `blocks` pairs, each element starting as [`UNTOUCHED_VALUE`] and each scale as
/// [`UNTOUCHED_SCALE`]; `None` when `quantize` reports that it did nothing.
fn quantized_by<T: Copy + From<i8>>(
    x: &[f32],
    values: usize,
    blocks: usize,
    quantize: impl Fn(&[f32], &mut [T], &mut [[f32; 2]]) -> bool,
) -> Option<(Vec<T>, Vec<u32>)> {
    let mut out = vec![T::from(UNTOUCHED_VALUE); values];
    let mut block_scales = vec![[f32::from_bits(UNTOUCHED_SCALE); 2]; blocks];
    let done = quantize(x, &mut out, &mut block_scales);
    done.then(|| (out, block_scales.as_flattened().iter().map(|value| value.to_bits()).collect()))
}

/// The 8-bit quantization of `x` into `values` elements and `blocks` scales by
/// `ScalarBlocks`.
fn scalar_int8(x: &[f32], values: usize, blocks: usize) -> (Vec<i8>, Vec<u32>) {
    let scalar = |x: &[f32], out: &mut [i8], scales: &mut [[f32; 2]]| {
        ScalarBlocks.int8(x, out, scales);
        true
    };
    quantized_by(x, values, blocks, scalar).expect("the scalar path always quantizes")
}

/// The 16-bit quantization of `x` into `values` elements and `blocks` scales by
/// `ScalarBlocks`.
fn scalar_int16(x: &[f32], values: usize, blocks: usize) -> (Vec<i16>, Vec<u32>) {
    let scalar = |x: &[f32], out: &mut [i16], scales: &mut [[f32; 2]]| {
        ScalarBlocks.int16(x, out, scales);
        true
    };
    quantized_by(x, values, blocks, scalar).expect("the scalar path always quantizes")
}

/// Asserts that this CPU's quantizers give `ScalarBlocks`' bits for `x` into outputs of
/// `values` elements and `blocks` scales (elements and scales past the whole blocks left
/// alone by both), and that they have a path on a CPU with SIMD kernels.
fn assert_quantizers_agree(x: &[f32], values: usize, blocks: usize) {
    let has_path = instruction_set().is_some();
    let simd = quantized_by(x, values, blocks, quantize_int8);
    assert_eq!(simd.is_some(), has_path, "8-bit quantizer path");
    if let Some(simd) = simd {
        assert_eq!(simd, scalar_int8(x, values, blocks), "8 bits, x = {x:?}");
    }
    let simd = quantized_by(x, values, blocks, quantize_int16);
    assert_eq!(simd.is_some(), has_path, "16-bit quantizer path");
    if let Some(simd) = simd {
        assert_eq!(simd, scalar_int16(x, values, blocks), "16 bits, x = {x:?}");
    }
}

/// A float from random `bits` with its biased exponent field set to `exponent` (0 for zero
/// and subnormals, 255 for infinities and NaN), keeping the random sign and mantissa.
fn with_exponent(bits: u32, exponent: u32) -> f32 {
    f32::from_bits((bits & 0x807f_ffff) | (exponent.min(255) << 23))
}

/// Values dropped into random blocks: NaN of both signs, infinities, zeros of both signs and
/// the extremes.
const SPECIAL_VALUES: [f32; 8] =
    [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, f32::MAX, f32::MIN_POSITIVE];

proptest! {
    #[test]
    fn simd_quantizers_equal_the_scalar_quantizer_at_every_magnitude(
        bits in proptest::collection::vec(any::<u32>(), 5 * 32),
        exponents in proptest::collection::vec(0u32..=254, 5),
        spreads in proptest::collection::vec(0u32..=24, 5),
        specials in proptest::collection::vec((0usize..5 * 32, 0usize..SPECIAL_VALUES.len()), 0..4),
        length in 0usize..=5 * 32,
        values in 0usize..=5 * 32,
        blocks in 0usize..=6,
    ) {
        // Each block's values share its exponent, give or take its spread, so that blocks of
        // every magnitude (subnormal to the largest finite) occur.
        let mut x: Vec<f32> = bits
            .iter()
            .enumerate()
            .map(|(index, bits)| {
                let block = index / 32;
                with_exponent(*bits, exponents[block].saturating_sub(bits % (spreads[block] + 1)))
            })
            .collect();
        for (at, special) in specials {
            x[at] = SPECIAL_VALUES[special];
        }
        assert_quantizers_agree(&x[..length], values, blocks);
    }

    #[test]
    fn simd_quantizers_equal_the_scalar_quantizer_on_arbitrary_bits(
        bits in proptest::collection::vec(any::<u32>(), 0..=4 * 32 + 7),
    ) {
        // Every bit pattern, NaN and infinities included, in blocks of wildly mixed
        // magnitudes.
        let x: Vec<f32> = bits.iter().map(|bits| f32::from_bits(*bits)).collect();
        let whole = x.len() / 32;
        assert_quantizers_agree(&x, x.len(), whole);
    }

    #[test]
    fn a_block_s_largest_value_becomes_the_largest_code(
        mantissas in proptest::collection::vec(-1.0f32..1.0, 32),
        exponent in -110i32..=127,
        at in 0usize..32,
        negative in any::<bool>(),
    ) {
        // Magnitudes from 2^-110 up, where 32767 / maximum is finite.
        let magnitude = libm::ldexpf(1.5, exponent - 1);
        let mut x: Vec<f32> = mantissas.iter().map(|mantissa| mantissa * magnitude).collect();
        x[at] = if negative { -magnitude } else { magnitude };
        let (int8, _) = scalar_int8(&x, 32, 1);
        let (int16, _) = scalar_int16(&x, 32, 1);
        prop_assert_eq!(i32::from(int8[at]), if negative { -127 } else { 127 });
        prop_assert_eq!(i32::from(int16[at]), if negative { -32767 } else { 32767 });
        assert_quantizers_agree(&x, 32, 1);
    }
}

#[test]
fn simd_quantizers_round_ties_away_from_zero() {
    // A block whose maximum is `largest` has an inverse of exactly 1, and one whose maximum is
    // twice that exactly 0.5: every (k + 0.5) × scaling lands on a tie, and the float just
    // short of it in magnitude lands just short of one.
    for (largest, highest_tie) in [(127.0f32, 126), (32767.0, 32766)] {
        let ties: Vec<f32> = (-highest_tie - 1..=highest_tie).map(|k| k as f32 + 0.5).collect();
        for (scaling, just_short) in [(1.0f32, false), (2.0, false), (1.0, true), (2.0, true)] {
            let (mut x, mut expected) = (Vec::new(), Vec::new());
            for chunk in ties.chunks(31) {
                x.push(largest * scaling);
                expected.push(largest);
                for tie in chunk {
                    let value = if just_short { f32::from_bits(tie.to_bits() - 1) } else { *tie };
                    x.push(value * scaling);
                    let truncated = libm::truncf(*tie);
                    expected.push(if just_short {
                        truncated
                    } else {
                        truncated + libm::copysignf(1.0, *tie)
                    });
                }
                x.resize(x.len().next_multiple_of(32), 0.0);
                expected.resize(x.len(), 0.0);
            }
            let blocks = x.len() / 32;
            let codes: Vec<f32> = if largest == 127.0 {
                scalar_int8(&x, x.len(), blocks).0.into_iter().map(f32::from).collect()
            } else {
                scalar_int16(&x, x.len(), blocks).0.into_iter().map(f32::from).collect()
            };
            assert_eq!(
                codes,
                expected,
                "maximum {}, just short of the ties: {just_short}",
                largest * scaling
            );
            assert_quantizers_agree(&x, x.len(), blocks);
        }
    }
}

/// A block of 32 copies of `fill` with `edits` (index, value) applied.
fn block_of(fill: f32, edits: &[(usize, f32)]) -> Vec<f32> {
    let mut block = vec![fill; 32];
    for (at, value) in edits {
        block[*at] = *value;
    }
    block
}

#[test]
fn simd_quantizers_match_the_scalar_quantizer_on_edge_blocks() {
    let tiny = f32::from_bits(1);
    let subnormals: Vec<f32> =
        (0..32u32).map(|index| f32::from_bits((index << 31) | (index * 0x3_1415))).collect();
    let cases: [(&str, Vec<f32>); 13] = [
        ("all zeros", block_of(0.0, &[])),
        ("negative zeros", block_of(-0.0, &[])),
        ("zeros of both signs and one value", block_of(-0.0, &[(5, 0.0), (6, -3.0)])),
        ("the smallest subnormal as the maximum", block_of(0.0, &[(0, tiny), (1, -tiny)])),
        ("subnormals of both signs", subnormals),
        ("huge values", block_of(1.0e38, &[(3, -1.0e38), (4, 3.0e38), (5, f32::MIN), (6, 1.0)])),
        ("the largest finite values", block_of(f32::MAX, &[(1, f32::MIN), (2, -0.0), (3, 1.0e30)])),
        ("an infinity", block_of(1.0, &[(2, f32::INFINITY), (3, -2.0)])),
        ("a negative infinity", block_of(-1.0, &[(9, f32::NEG_INFINITY), (10, 0.0)])),
        ("NaN of both signs", block_of(0.25, &[(0, f32::NAN), (7, -f32::NAN), (8, -1.0)])),
        ("all NaN", block_of(f32::NAN, &[])),
        ("NaN, infinity and zero", block_of(f32::NAN, &[(1, f32::INFINITY), (2, 0.0), (3, 7.0)])),
        ("one tiny normal value among zeros", block_of(0.0, &[(31, -f32::MIN_POSITIVE)])),
    ];
    for (name, block) in &cases {
        assert_eq!(block.len(), 32, "{name}");
        assert_quantizers_agree(block, 32, 1);
    }

    // What the scalar oracle gives in the cases with a known answer (the SIMD paths were
    // just checked against it).
    let of = |name: &str| &cases.iter().find(|(case, _)| *case == name).expect("a case").1;
    let (codes, scales) = scalar_int8(of("all zeros"), 32, 1);
    assert!(codes.iter().all(|code| *code == 0) && scales == [0, 0], "all zeros");
    // An inverse of 127 / 2^-149 overflows to infinity: ±tiny becomes ±∞, which the cast
    // saturates to 127 and −128, and 0 × ∞ is NaN, which the cast makes 0.
    let (codes, _) = scalar_int8(of("the smallest subnormal as the maximum"), 32, 1);
    assert_eq!((codes[0], codes[1], codes[2]), (127, -128, 0));
    let (codes, _) = scalar_int16(of("the largest finite values"), 32, 1);
    assert_eq!((codes[0], codes[1], codes[2]), (32767, -32767, 0));
    // An infinite maximum gives an inverse of 0: every code is 0 and the scaled sum ∞ × 0.
    let (codes, scales) = scalar_int16(of("an infinity"), 32, 1);
    assert!(codes.iter().all(|code| *code == 0), "an infinity");
    assert_eq!(f32::from_bits(scales[0]), f32::INFINITY);
    assert!(f32::from_bits(scales[1]).is_nan());
    // NaN is left out of the maximum and becomes 0.
    let (codes, _) = scalar_int8(of("NaN of both signs"), 32, 1);
    assert_eq!((codes[0], codes[7], codes[8], codes[9]), (0, 0, -127, 32));

    // All the blocks in one vector; then a partial last block, which is ignored; outputs
    // shorter than the input (by whole and by partial blocks), and fewer block scales.
    let all: Vec<f32> = cases.iter().flat_map(|(_, block)| block.iter().copied()).collect();
    let blocks = cases.len();
    assert_quantizers_agree(&all, all.len(), blocks);
    let mut longer = all.clone();
    longer.extend([5.0, -7.0, f32::INFINITY, 1.0e-3, f32::NAN]);
    assert_quantizers_agree(&longer, longer.len() + 3, blocks + 2);
    assert_quantizers_agree(&all, 32 * 4 + 17, blocks);
    assert_quantizers_agree(&all, 32 * 4, blocks);
    assert_quantizers_agree(&all, all.len(), 3);
    assert_quantizers_agree(&all[..31], 31, 1);
    assert_quantizers_agree(&[], 0, 0);
}
