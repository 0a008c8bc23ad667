//! Scalar compute kernels: RMSNorm, softmax, RoPE, SwiGLU, activation quantization and the
//! row dot products of every weight type. The forward pass calls these; the SIMD paths are
//! checked against them.

#![forbid(unsafe_code)]

use libm::{cosf, expf, fmaf, powf, roundf, sinf, sqrtf};

use crate::model::quant::{BLOCK_VALUES, f16_to_f32};
use crate::model::{TensorType, Vector};

/// `out = x / rms(x) * weight`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: Vector<'_>, epsilon: f32) {
    let sum_of_squares: f32 = x.iter().map(|value| value * value).sum();
    let scale = 1.0 / sqrtf(sum_of_squares / x.len() as f32 + epsilon);
    for (index, (out, value)) in out.iter_mut().zip(x).enumerate() {
        *out = weight.get(index) * (scale * value);
    }
}

/// In-place softmax.
pub fn softmax(values: &mut [f32]) {
    let maximum = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for value in values.iter_mut() {
        *value = expf(*value - maximum);
        sum += *value;
    }
    values.iter_mut().for_each(|value| *value /= sum);
}

/// Rotation table for one position: the cosine and sine of each pair's angle.
#[derive(Clone, Debug)]
pub struct Rope {
    cosines: alloc::vec::Vec<f32>,
    sines: alloc::vec::Vec<f32>,
    base: f32,
}

impl Rope {
    /// A table for heads of `head_dim` values (even) and frequency `base`.
    pub fn new(head_dim: usize, base: f32) -> Self {
        Self { cosines: alloc::vec![1.0; head_dim / 2], sines: alloc::vec![0.0; head_dim / 2], base }
    }

    /// Fills the table for `position`: pair i turns by position × base^(−2i / head_dim).
    pub fn set_position(&mut self, position: usize) {
        let head_dim = (self.cosines.len() * 2) as f32;
        for (pair, (cosine, sine)) in self.cosines.iter_mut().zip(self.sines.iter_mut()).enumerate() {
            let frequency = 1.0 / powf(self.base, (2 * pair) as f32 / head_dim);
            let angle = position as f32 * frequency;
            *cosine = cosf(angle);
            *sine = sinf(angle);
        }
    }

    /// Rotates adjacent pairs (2i, 2i+1) of every head in `vector`.
    pub fn rotate(&self, vector: &mut [f32]) {
        let head_dim = self.cosines.len() * 2;
        for head in vector.chunks_exact_mut(head_dim) {
            for (pair, (cosine, sine)) in head.chunks_exact_mut(2).zip(self.cosines.iter().zip(&self.sines)) {
                let (first, second) = (pair[0], pair[1]);
                pair[0] = first * cosine - second * sine;
                pair[1] = first * sine + second * cosine;
            }
        }
    }
}

/// `gate = silu(gate) × up`, the SwiGLU activation.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (gate, up) in gate.iter_mut().zip(up) {
        *gate = *gate / (1.0 + expf(-*gate)) * up;
    }
}

/// Activations quantized in blocks of 32, to 8 bits ([`Self::quantize`]) or 16 bits
/// ([`Self::quantize_wide`]), each block with a scale and the sum of its values (the sum
/// serves Q4_1's minimum term). The scales and sums are those of the latest quantization.
#[derive(Clone, Debug, Default)]
pub struct QuantizedVector {
    /// The 8-bit values.
    pub values: alloc::vec::Vec<i8>,
    /// The 16-bit values.
    pub wide_values: alloc::vec::Vec<i16>,
    /// One scale per block.
    pub scales: alloc::vec::Vec<f32>,
    /// One sum of values per block.
    pub sums: alloc::vec::Vec<i32>,
    /// One `scale × sum` per block.
    pub scaled_sums: alloc::vec::Vec<f32>,
    /// Float activations' [`block_sum_lanes`] per block, filled by [`Self::sum_blocks`].
    pub block_sums: alloc::vec::Vec<[f32; 8]>,
}

impl QuantizedVector {
    /// Room for `length` values (a multiple of 32, rounded up otherwise).
    pub fn with_capacity(length: usize) -> Self {
        let blocks = length.div_ceil(BLOCK_VALUES);
        Self {
            values: alloc::vec![0; blocks * BLOCK_VALUES],
            wide_values: alloc::vec![0; blocks * BLOCK_VALUES],
            scales: alloc::vec![0.0; blocks],
            sums: alloc::vec![0; blocks],
            scaled_sums: alloc::vec![0.0; blocks],
            block_sums: alloc::vec![[0.0; 8]; blocks],
        }
    }

    /// Computes [`block_sum_lanes`] of every block of `x` into `block_sums` and returns them.
    pub fn sum_blocks(&mut self, x: &[f32]) -> &[[f32; 8]] {
        let blocks = (x.len() / BLOCK_VALUES).min(self.block_sums.len());
        for (sums, values) in self.block_sums.iter_mut().zip(x.chunks_exact(BLOCK_VALUES)) {
            *sums = block_sum_lanes(values);
        }
        &self.block_sums[..blocks]
    }

    /// Quantizes `x` (whose length is a multiple of 32 and fits the capacity) to 8 bits:
    /// values in −127..=127, scale = max|x| / 127.
    pub fn quantize(&mut self, x: &[f32]) {
        let totals = (&mut self.scales[..], &mut self.sums[..], &mut self.scaled_sums[..]);
        quantize_blocks(x, &mut self.values, totals, 127.0, |value| roundf(value) as i8);
    }

    /// Quantizes `x` (whose length is a multiple of 32 and fits the capacity) to 16 bits:
    /// values in −32767..=32767, scale = max|x| / 32767.
    pub fn quantize_wide(&mut self, x: &[f32]) {
        let totals = (&mut self.scales[..], &mut self.sums[..], &mut self.scaled_sums[..]);
        quantize_blocks(x, &mut self.wide_values, totals, 32767.0, |value| roundf(value) as i16);
    }
}

/// Quantizes each block of 32 of `x` into `outputs` with `round` (which gets values already
/// scaled into −`largest`..=`largest`), filling each block's scale, sum and `scale × sum`.
fn quantize_blocks<T: Copy + Into<i32>>(
    x: &[f32],
    outputs: &mut [T],
    (scales, sums, scaled_sums): (&mut [f32], &mut [i32], &mut [f32]),
    largest: f32,
    round: impl Fn(f32) -> T,
) {
    let blocks = x.chunks_exact(BLOCK_VALUES).zip(outputs.chunks_exact_mut(BLOCK_VALUES));
    let totals = scales.iter_mut().zip(sums.iter_mut().zip(scaled_sums));
    for ((block, out), (scale, (sum, scaled_sum))) in blocks.zip(totals) {
        let maximum = block.iter().fold(0.0f32, |acc, value| acc.max(value.abs()));
        *scale = maximum / largest;
        let inverse = if maximum > 0.0 { largest / maximum } else { 0.0 };
        let mut total = 0i32;
        for (out, value) in out.iter_mut().zip(block) {
            *out = round(value * inverse);
            total += (*out).into();
        }
        *sum = total;
        *scaled_sum = *scale * total as f32;
    }
}

/// The input of a matrix-vector product: floats for float matrices, quantized for the rest.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Float activations.
    Float(&'a [f32]),
    /// Float activations with every block's [`block_sum_lanes`] computed once for all rows
    /// (Q4_1's minimum terms need them). Gives the same bits as `Float`.
    FloatSummed(&'a [f32], &'a [[f32; 8]]),
    /// Activations quantized to 8 bits ([`QuantizedVector::quantize`]).
    Quantized(&'a QuantizedVector),
    /// Activations quantized to 16 bits ([`QuantizedVector::quantize_wide`]).
    Quantized16(&'a QuantizedVector),
}

/// The f16 at byte `at` of `bytes`, as f32.
pub fn half(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Dot product of an f32 row (little-endian bytes) with `x`, in eight interleaved lanes of
/// fused multiply-adds that are summed pairwise at the end (the SIMD paths keep the same
/// order).
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut row_chunks = row.chunks_exact(32);
    let mut x_chunks = x.chunks_exact(8);
    for (bytes, values) in (&mut row_chunks).zip(&mut x_chunks) {
        for lane in 0..8 {
            let at = lane * 4;
            let weight = f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            lanes[lane] = fmaf(weight, values[lane], lanes[lane]);
        }
    }
    let mut total = reduce_lanes(lanes);
    for (bytes, value) in row_chunks.remainder().chunks_exact(4).zip(x_chunks.remainder()) {
        total = fmaf(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), *value, total);
    }
    total
}

/// Sums eight lanes as ((0+4)+(2+6)) + ((1+5)+(3+7)).
pub fn reduce_lanes(lanes: [f32; 8]) -> f32 {
    let quad = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    (quad[0] + quad[2]) + (quad[1] + quad[3])
}

/// Dot product of an F16 row with `x`.
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(x)
        .map(|(bytes, value)| f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])) * value)
        .sum()
}

/// Integer products of one block's 32 codes with its 32 activations (8 or 16 bits), summed
/// into eight lanes of four consecutive elements (lane k holds elements 4k..4k+4), exactly:
/// even at 16 bits a lane is at most 4 × 128 × 32767 < 2^24 in magnitude, and a whole block
/// 32 × 128 × 32767 < 2^31.
pub fn block_integer_lanes<T: Copy + Into<i32>>(codes: &[i32; 32], activations: &[T]) -> [i32; 8] {
    core::array::from_fn(|lane| {
        (4 * lane..4 * lane + 4).map(|index| codes[index] * activations[index].into()).sum()
    })
}

/// Dot product of a row of blocks with integer activations `values` (8 or 16 bits) whose
/// scales and sums are `x`'s. Each block adds `weight scale × activation scale × integer
/// lane` to an eight-lane accumulator; Q4_1's minimum terms (`minimum × activation scale ×
/// block sum`) gather in a separate scalar. The SIMD paths follow the same order.
fn dot_blocks_integer<T: Copy + Into<i32>>(
    row: &[u8],
    values: &[T],
    x: &QuantizedVector,
    block_bytes: usize,
    codes: impl Fn(&[u8]) -> [i32; 32],
    minimum_at: Option<usize>,
) -> f32 {
    let mut accumulator = [0.0f32; 8];
    let mut minimum_total = 0.0f32;
    let blocks =
        row.chunks_exact(block_bytes).zip(values.chunks_exact(32)).zip(x.scales.iter().zip(&x.scaled_sums));
    for ((block, activations), (scale, scaled_sum)) in blocks {
        let lanes = block_integer_lanes(&codes(block), activations);
        let factor = half(block, 0) * scale;
        for (accumulator, lane) in accumulator.iter_mut().zip(lanes) {
            *accumulator = fmaf(factor, lane as f32, *accumulator);
        }
        if let Some(at) = minimum_at {
            minimum_total = fmaf(half(block, at), *scaled_sum, minimum_total);
        }
    }
    reduce_lanes(accumulator) + minimum_total
}

/// Dot product of a row of `tensor_type` (Q8_0, Q4_0 or Q4_1; others yield 0) with integer
/// activations `values` (`x.values` or `x.wide_values`).
fn dot_integer<T: Copy + Into<i32>>(
    tensor_type: TensorType,
    row: &[u8],
    values: &[T],
    x: &QuantizedVector,
) -> f32 {
    match tensor_type {
        TensorType::Q8_0 => dot_blocks_integer(row, values, x, 34, codes_q8_0, None),
        TensorType::Q4_0 => dot_blocks_integer(row, values, x, 18, |block| codes_nibbles(block, 2, 8), None),
        TensorType::Q4_1 => {
            dot_blocks_integer(row, values, x, 20, |block| codes_nibbles(block, 4, 0), Some(2))
        }
        TensorType::F32 | TensorType::F16 => 0.0,
    }
}

/// Dot product of a Q8_0 row with 8-bit activations.
pub fn dot_q8_0(row: &[u8], x: &QuantizedVector) -> f32 {
    dot_integer(TensorType::Q8_0, row, &x.values, x)
}

/// Dot product of a Q4_0 row with 8-bit activations.
pub fn dot_q4_0(row: &[u8], x: &QuantizedVector) -> f32 {
    dot_integer(TensorType::Q4_0, row, &x.values, x)
}

/// Dot product of a Q4_1 row with 8-bit activations.
pub fn dot_q4_1(row: &[u8], x: &QuantizedVector) -> f32 {
    dot_integer(TensorType::Q4_1, row, &x.values, x)
}

/// Products `codes[i] × x[i]` of one block of 32, summed into eight lanes: lane j adds the
/// products of elements j, j+8, j+16 and j+24 in that order, each with one fused
/// multiply-add. The SIMD paths keep this order and fuse the same way, so they agree bit
/// for bit.
pub fn block_product_lanes(codes: &[i32; 32], x: &[f32]) -> [f32; 8] {
    let mut lanes = [0.0f32; 8];
    for group in x[..32].chunks_exact(8).zip(codes.chunks_exact(8)) {
        for (lane, (value, code)) in lanes.iter_mut().zip(group.0.iter().zip(group.1)) {
            *lane = fmaf(*code as f32, *value, *lane);
        }
    }
    lanes
}

/// One block of 32 values summed into eight lanes, in the order of [`block_product_lanes`].
pub fn block_sum_lanes(x: &[f32]) -> [f32; 8] {
    let mut lanes = [0.0f32; 8];
    for group in x[..32].chunks_exact(8) {
        for (lane, value) in lanes.iter_mut().zip(group) {
            *lane += value;
        }
    }
    lanes
}

/// Dot product of a row of blocks with float activations. Each block adds
/// `scale × products (+ minimum × sums)` to an eight-lane accumulator, which
/// [`reduce_lanes`] sums at the end. The SIMD paths follow the same order.
fn dot_blocks_float(
    row: &[u8],
    x: &[f32],
    block_bytes: usize,
    codes: impl Fn(&[u8]) -> [i32; 32],
    minimum: Option<(usize, Option<&[[f32; 8]]>)>,
) -> f32 {
    let mut accumulator = [0.0f32; 8];
    for (index, (block, values)) in row.chunks_exact(block_bytes).zip(x.chunks_exact(32)).enumerate() {
        let products = block_product_lanes(&codes(block), values);
        let scale = half(block, 0);
        match minimum {
            Some((at, precomputed)) => {
                let sums = precomputed
                    .and_then(|sums| sums.get(index).copied())
                    .unwrap_or_else(|| block_sum_lanes(values));
                let minimum = half(block, at);
                for lane in 0..8 {
                    accumulator[lane] =
                        fmaf(minimum, sums[lane], fmaf(scale, products[lane], accumulator[lane]));
                }
            }
            None => {
                for lane in 0..8 {
                    accumulator[lane] = fmaf(scale, products[lane], accumulator[lane]);
                }
            }
        }
    }
    reduce_lanes(accumulator)
}

/// The 32 codes of a Q8_0 block.
fn codes_q8_0(block: &[u8]) -> [i32; 32] {
    core::array::from_fn(|index| i32::from(block[2 + index] as i8))
}

/// The 32 nibbles of a 4-bit block whose packed bytes start at `start`: low nibbles are
/// elements 0..16, high nibbles 16..32.
fn codes_nibbles(block: &[u8], start: usize, offset: i32) -> [i32; 32] {
    core::array::from_fn(|index| {
        let byte = block[start + index % 16];
        i32::from(if index < 16 { byte & 0x0f } else { byte >> 4 }) - offset
    })
}

/// Dot product of a Q8_0 row with float activations.
pub fn dot_q8_0_float(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks_float(row, x, 34, codes_q8_0, None)
}

/// Dot product of a Q4_0 row with float activations.
pub fn dot_q4_0_float(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks_float(row, x, 18, |block| codes_nibbles(block, 2, 8), None)
}

/// Dot product of a Q4_1 row with float activations.
pub fn dot_q4_1_float(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks_float(row, x, 20, |block| codes_nibbles(block, 4, 0), Some((2, None)))
}

/// How activations meet quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Activations stay f32; weight blocks are expanded as they are read. Matches a
    /// dequantize-then-multiply reference to float rounding. The fastest on x86_64 hosts
    /// (AVX2), but about 3 times slower than `Int16` under QEMU, whose TCG emulates float
    /// NEON in software helpers (docs/BENCHMARKS.md).
    Float,
    /// Activations are quantized to 8 bits per block of 32 and dotted in integers, as
    /// llama.cpp does: off by the activation rounding, enough to change SmolLM2-135M's
    /// greedy answers.
    Int8,
    /// Activations are quantized to 16 bits per block of 32 and dotted in integers (exact
    /// in i32), then scaled in f32: within 0.01 of `Float`'s SmolLM2 logits, and under QEMU
    /// nearly as fast as `Int8`. The default, so that the unikernel and the host CLI compute
    /// the same bits.
    #[default]
    Int16,
}

/// Dot product of one encoded row of `tensor_type` with `input`, on the scalar path.
/// Quantized input only serves quantized types; float types given quantized input yield 0.
pub fn dot_scalar(tensor_type: TensorType, row: &[u8], input: Input<'_>) -> f32 {
    match (tensor_type, input) {
        (TensorType::Q4_1, Input::FloatSummed(x, sums)) => {
            dot_blocks_float(row, x, 20, |block| codes_nibbles(block, 4, 0), Some((2, Some(sums))))
        }
        (_, Input::FloatSummed(x, _)) => dot_scalar(tensor_type, row, Input::Float(x)),
        (TensorType::F32, Input::Float(x)) => dot_f32(row, x),
        (TensorType::F16, Input::Float(x)) => dot_f16(row, x),
        (TensorType::Q8_0, Input::Float(x)) => dot_q8_0_float(row, x),
        (TensorType::Q4_0, Input::Float(x)) => dot_q4_0_float(row, x),
        (TensorType::Q4_1, Input::Float(x)) => dot_q4_1_float(row, x),
        (_, Input::Quantized(x)) => dot_integer(tensor_type, row, &x.values, x),
        (_, Input::Quantized16(x)) => dot_integer(tensor_type, row, &x.wide_values, x),
    }
}

/// Whether rows of `tensor_type` take quantized input at `precision`.
pub fn takes_quantized_input(tensor_type: TensorType, precision: Precision) -> bool {
    precision != Precision::Float
        && matches!(tensor_type, TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::{dequantize, quantize};
    use alloc::vec::Vec;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quantized_dots_match_dequantized_math(
            weights in proptest::collection::vec(-2.0f32..2.0, 64),
            x in proptest::collection::vec(-3.0f32..3.0, 64),
        ) {
            let mut quantized = QuantizedVector::with_capacity(64);
            quantized.quantize(&x);
            let mut activations = [0.0f32; 64];
            for (index, value) in activations.iter_mut().enumerate() {
                *value = f32::from(quantized.values[index]) * quantized.scales[index / 32];
            }
            let mut wide = QuantizedVector::with_capacity(64);
            wide.quantize_wide(&x);
            let mut wide_activations = [0.0f32; 64];
            for (index, value) in wide_activations.iter_mut().enumerate() {
                *value = f32::from(wide.wide_values[index]) * wide.scales[index / 32];
                prop_assert!((*value - x[index]).abs() <= wide.scales[index / 32] * 0.51, "half a step off at most");
            }
            for tensor_type in [TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1] {
                let mut row = Vec::new();
                quantize(tensor_type, &weights, &mut row);
                let mut dequantized = [0.0f32; 64];
                dequantize(tensor_type, &row, &mut dequantized);
                let expected: f32 = dequantized.iter().zip(&activations).map(|(a, b)| a * b).sum();
                let got = dot_scalar(tensor_type, &row, Input::Quantized(&quantized));
                prop_assert!((got - expected).abs() <= 1e-3 * (1.0 + expected.abs()), "{tensor_type:?} {got} {expected}");
                let expected: f32 = dequantized.iter().zip(&wide_activations).map(|(a, b)| a * b).sum();
                let got = dot_scalar(tensor_type, &row, Input::Quantized16(&wide));
                prop_assert!((got - expected).abs() <= 1e-4 * (1.0 + expected.abs()), "{tensor_type:?} int16 {got} {expected}");
                let exact: f32 = dequantized.iter().zip(&x).map(|(a, b)| a * b).sum();
                // Off from float activations by at most the activation rounding: half a step each.
                let rounding: f32 =
                    dequantized.iter().enumerate().map(|(index, a)| a.abs() * wide.scales[index / 32] * 0.5).sum();
                prop_assert!((got - exact).abs() <= rounding + 1e-4 * (1.0 + exact.abs()), "{tensor_type:?} int16 {got} vs float {exact}");
                let got = dot_scalar(tensor_type, &row, Input::Float(&x));
                prop_assert!((got - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "{tensor_type:?} float {got} {exact}");
            }
            let mut row = Vec::new();
            quantize(TensorType::F32, &weights, &mut row);
            let expected: f64 = weights.iter().zip(&x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            prop_assert!((f64::from(dot_scalar(TensorType::F32, &row, Input::Float(&x))) - expected).abs() < 1e-3);
        }
    }

    #[test]
    fn softmax_and_rope_basics() {
        let mut values = [1.0, 2.0, 3.0];
        softmax(&mut values);
        assert!((values.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(values[2] > values[1] && values[1] > values[0]);
        let mut rope = Rope::new(4, 10_000.0);
        rope.set_position(0);
        let mut vector = [1.0, 2.0, 3.0, 4.0];
        rope.rotate(&mut vector);
        assert_eq!(vector, [1.0, 2.0, 3.0, 4.0]);
        rope.set_position(1);
        rope.rotate(&mut vector);
        assert!((vector[0] - (cosf(1.0) - 2.0 * sinf(1.0))).abs() < 1e-6);
    }
}
