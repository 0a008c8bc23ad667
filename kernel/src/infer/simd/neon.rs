//! The NEON row dot products (aarch64): the twins of the scalar kernels in `kernels`, bit for
//! bit.

use core::arch::aarch64::*;

use super::{Width, block_count};
use crate::infer::kernels::{Input, QuantizedVector, half};
use crate::model::{Matrix, TensorType};
use libm::fmaf;

/// Rows `first ..` of `matrix · input` into `out`; `false` when this combination has no
/// NEON path.
#[target_feature(enable = "neon")]
pub fn rows(matrix: &Matrix<'_>, input: Input<'_>, first: usize, out: &mut [f32]) -> bool {
    let each = |out: &mut [f32], dot: &dyn Fn(&[u8]) -> f32| {
        for (index, out) in out.iter_mut().enumerate() {
            *out = dot(matrix.row(first + index));
        }
    };
    match (matrix.tensor_type, input) {
        (TensorType::F32, Input::Float(x)) => each(out, &|row| dot_f32(row, x)),
        (TensorType::Q8_0, Input::Float(x)) => {
            each(out, &|row| dot_float_blocks(row, x, 34, codes_q8_0, None))
        }
        (TensorType::Q4_0, Input::Float(x)) => {
            each(out, &|row| dot_float_blocks(row, x, 18, codes_q4_0, None))
        }
        (TensorType::Q4_1, Input::Float(x)) => {
            each(out, &|row| dot_float_blocks(row, x, 20, codes_q4_1, Some((2, None))))
        }
        (TensorType::Q4_1, Input::FloatSummed(x, sums)) => {
            let sums = Some((2, Some(sums.as_flattened())));
            each(out, &|row| dot_float_blocks(row, x, 20, codes_q4_1, sums))
        }
        (_, Input::FloatSummed(x, _)) => return rows(matrix, Input::Float(x), first, out),
        (TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1, Input::Quantized(x)) => {
            let tensor_type = matrix.tensor_type;
            each(out, &|row| dot_integer(tensor_type, row, x, Width::Eight))
        }
        (TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1, Input::Quantized16(x)) => {
            let tensor_type = matrix.tensor_type;
            each(out, &|row| dot_integer(tensor_type, row, x, Width::Sixteen))
        }
        _ => return false,
    }
    true
}

/// One row's dot product; `None` when this combination has no NEON path.
#[target_feature(enable = "neon")]
pub fn dot(tensor_type: TensorType, row: &[u8], input: Input<'_>) -> Option<f32> {
    Some(match (tensor_type, input) {
        (TensorType::F32, Input::Float(x)) => dot_f32(row, x),
        (TensorType::Q8_0, Input::Float(x)) => dot_float_blocks(row, x, 34, codes_q8_0, None),
        (TensorType::Q4_0, Input::Float(x)) => dot_float_blocks(row, x, 18, codes_q4_0, None),
        (TensorType::Q4_1, Input::Float(x)) => dot_float_blocks(row, x, 20, codes_q4_1, Some((2, None))),
        (TensorType::Q4_1, Input::FloatSummed(x, sums)) => {
            dot_float_blocks(row, x, 20, codes_q4_1, Some((2, Some(sums.as_flattened()))))
        }
        (_, Input::FloatSummed(x, _)) => return dot(tensor_type, row, Input::Float(x)),
        (TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1, Input::Quantized(x)) => {
            dot_integer(tensor_type, row, x, Width::Eight)
        }
        (TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1, Input::Quantized16(x)) => {
            dot_integer(tensor_type, row, x, Width::Sixteen)
        }
        _ => return None,
    })
}

/// Eight lanes as two registers: lanes 0..4 and 4..8.
type Lanes = (float32x4_t, float32x4_t);

/// Sums the eight lanes as ((0+4)+(2+6)) + ((1+5)+(3+7)), like `reduce_lanes`.
#[target_feature(enable = "neon")]
fn reduce(lanes: Lanes) -> f32 {
    let quad = vaddq_f32(lanes.0, lanes.1);
    let pair = vadd_f32(vget_low_f32(quad), vget_high_f32(quad));
    vget_lane_f32::<0>(pair) + vget_lane_f32::<1>(pair)
}

/// `lanes + a × b`, fused.
#[target_feature(enable = "neon")]
fn multiply_add(lanes: Lanes, a: Lanes, b: Lanes) -> Lanes {
    (vfmaq_f32(lanes.0, a.0, b.0), vfmaq_f32(lanes.1, a.1, b.1))
}

#[target_feature(enable = "neon")]
fn zero() -> Lanes {
    (vdupq_n_f32(0.0), vdupq_n_f32(0.0))
}

// Loads are `ld1` in assembly, not `vld1q_*`: the `aarch64-unknown-none` target builds with
// `+strict-align`, where LLVM splits a 128-bit load it cannot prove 16-byte aligned into
// one load per element (sixteen `ldrb` for bytes). `ld1` needs only element alignment.

/// Sixteen bytes at `address`.
///
/// # Safety
/// `address` must point to 16 readable bytes.
#[target_feature(enable = "neon")]
unsafe fn ld1_16b(address: *const u8) -> uint8x16_t {
    let value: uint8x16_t;
    // SAFETY: the caller guarantees 16 readable bytes; `ld1` of byte elements needs no
    // alignment, only reads them and writes the output register.
    unsafe {
        core::arch::asm!(
            "ld1 {{{value:v}.16b}}, [{address}]",
            value = out(vreg) value,
            address = in(reg) address,
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

/// Sixteen bytes from `bytes[at..at + 16]`.
#[target_feature(enable = "neon")]
fn load_16(bytes: &[u8], at: usize) -> uint8x16_t {
    let chunk = &bytes[at..at + 16];
    // SAFETY: `chunk` is 16 readable bytes.
    unsafe { ld1_16b(chunk.as_ptr()) }
}

/// Eight 16-bit values from `values[at..at + 8]`.
#[target_feature(enable = "neon")]
fn load_8_i16(values: &[i16], at: usize) -> int16x8_t {
    let chunk = &values[at..at + 8];
    let value: int16x8_t;
    // SAFETY: `chunk` is 8 readable i16, 2-byte aligned as every `i16` is, which is all
    // `ld1` of 16-bit elements needs; it only reads them and writes the output register.
    unsafe {
        core::arch::asm!(
            "ld1 {{{value:v}.8h}}, [{address}]",
            value = out(vreg) value,
            address = in(reg) chunk.as_ptr(),
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

/// Sixteen signed bytes from `values[at..at + 16]`.
#[target_feature(enable = "neon")]
fn load_16_signed(values: &[i8], at: usize) -> int8x16_t {
    let chunk = &values[at..at + 16];
    // SAFETY: `chunk` is 16 readable bytes (an `i8` is one byte).
    vreinterpretq_s8_u8(unsafe { ld1_16b(chunk.as_ptr().cast()) })
}

/// Four floats from `values[at..at + 4]`.
#[target_feature(enable = "neon")]
fn load_4_f32(values: &[f32], at: usize) -> float32x4_t {
    let chunk = &values[at..at + 4];
    let value: float32x4_t;
    // SAFETY: `chunk` is 4 readable floats, 4-byte aligned as every `f32` is, which is all
    // `ld1` of 32-bit elements needs; it only reads them and writes the output register.
    unsafe {
        core::arch::asm!(
            "ld1 {{{value:v}.4s}}, [{address}]",
            value = out(vreg) value,
            address = in(reg) chunk.as_ptr(),
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

/// Eight floats from `bytes[at..at + 32]` (little-endian), loaded as bytes.
#[target_feature(enable = "neon")]
fn load_f32_bytes(bytes: &[u8], at: usize) -> Lanes {
    (vreinterpretq_f32_u8(load_16(bytes, at)), vreinterpretq_f32_u8(load_16(bytes, at + 16)))
}

/// Eight floats from `values[at..at + 8]`.
#[target_feature(enable = "neon")]
fn load_f32(values: &[f32], at: usize) -> Lanes {
    (load_4_f32(values, at), load_4_f32(values, at + 4))
}

#[target_feature(enable = "neon")]
fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let groups = (row.len() / 32).min(x.len() / 8);
    let mut lanes = zero();
    for group in 0..groups {
        lanes = multiply_add(lanes, load_f32_bytes(row, group * 32), load_f32(x, group * 8));
    }
    let mut total = reduce(lanes);
    for (bytes, value) in row[groups * 32..].chunks_exact(4).zip(&x[groups * 8..]) {
        total = fmaf(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), *value, total);
    }
    total
}

/// Eight signed byte codes as eight floats.
#[target_feature(enable = "neon")]
fn widen_signed(bytes: int8x8_t) -> Lanes {
    let wide = vmovl_s8(bytes);
    (vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide))), vcvtq_f32_s32(vmovl_s16(vget_high_s16(wide))))
}

/// The 32 codes of a block (elements 0..16 in `low`, 16..32 in `high`) as four groups.
#[target_feature(enable = "neon")]
fn widen(low: int8x16_t, high: int8x16_t) -> [Lanes; 4] {
    [
        widen_signed(vget_low_s8(low)),
        widen_signed(vget_high_s8(low)),
        widen_signed(vget_low_s8(high)),
        widen_signed(vget_high_s8(high)),
    ]
}

#[target_feature(enable = "neon")]
fn codes_q8_0(block: &[u8]) -> [Lanes; 4] {
    widen(vreinterpretq_s8_u8(load_16(block, 2)), vreinterpretq_s8_u8(load_16(block, 18)))
}

/// Nibbles packed from byte `start`: low nibbles are elements 0..16, high ones 16..32.
#[target_feature(enable = "neon")]
fn nibbles(block: &[u8], start: usize) -> (uint8x16_t, uint8x16_t) {
    let packed = load_16(block, start);
    (vandq_u8(packed, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(packed))
}

#[target_feature(enable = "neon")]
fn codes_q4_0(block: &[u8]) -> [Lanes; 4] {
    let (low, high) = nibbles(block, 2);
    let eight = vdupq_n_s8(8);
    widen(vsubq_s8(vreinterpretq_s8_u8(low), eight), vsubq_s8(vreinterpretq_s8_u8(high), eight))
}

#[target_feature(enable = "neon")]
fn codes_q4_1(block: &[u8]) -> [Lanes; 4] {
    let (low, high) = nibbles(block, 4);
    widen(vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high))
}

/// `lanes + scale × values`, fused.
#[target_feature(enable = "neon")]
fn add_scaled(lanes: Lanes, scale: f32, values: Lanes) -> Lanes {
    let scale = vdupq_n_f32(scale);
    (vfmaq_f32(lanes.0, scale, values.0), vfmaq_f32(lanes.1, scale, values.1))
}

/// Float-activation dot product over blocks; `minimum` locates the Q4_1 minimum and may
/// bring the blocks' sum lanes (flattened). Mirrors `kernels::dot_blocks_float`.
#[target_feature(enable = "neon")]
fn dot_float_blocks(
    row: &[u8],
    x: &[f32],
    block_bytes: usize,
    codes: unsafe fn(&[u8]) -> [Lanes; 4],
    minimum: Option<(usize, Option<&[f32]>)>,
) -> f32 {
    let mut accumulator = zero();
    for (index, (block, values)) in row.chunks_exact(block_bytes).zip(x.chunks_exact(32)).enumerate() {
        // SAFETY: `codes` is one of this module's NEON functions, and NEON is enabled here.
        let codes = unsafe { codes(block) };
        let values: [Lanes; 4] = core::array::from_fn(|group| load_f32(values, group * 8));
        let mut products = zero();
        for (code, value) in codes.into_iter().zip(values) {
            products = multiply_add(products, code, value);
        }
        accumulator = add_scaled(accumulator, half(block, 0), products);
        if let Some((at, precomputed)) = minimum {
            let sums = match precomputed {
                Some(sums) if sums.len() >= index * 8 + 8 => load_f32(sums, index * 8),
                _ => values
                    .iter()
                    .fold(zero(), |sums, value| (vaddq_f32(sums.0, value.0), vaddq_f32(sums.1, value.1))),
            };
            accumulator = add_scaled(accumulator, half(block, at), sums);
        }
    }
    reduce(accumulator)
}

/// Thirty-two signed codes (`low`: elements 0..16, `high`: 16..32) times 32 activations,
/// summed exactly into eight i32 lanes of four consecutive elements (two registers).
#[target_feature(enable = "neon")]
fn integer_lanes(low: int8x16_t, high: int8x16_t, activations: &[i8]) -> (int32x4_t, int32x4_t) {
    let (first, second) = (load_16_signed(activations, 0), load_16_signed(activations, 16));
    let pairs = |codes: int8x16_t, values: int8x16_t| {
        (
            vpaddlq_s16(vmull_s8(vget_low_s8(codes), vget_low_s8(values))),
            vpaddlq_s16(vmull_s8(vget_high_s8(codes), vget_high_s8(values))),
        )
    };
    let (pairs_0, pairs_1) = pairs(low, first);
    let (pairs_2, pairs_3) = pairs(high, second);
    (vpaddq_s32(pairs_0, pairs_1), vpaddq_s32(pairs_2, pairs_3))
}

/// Thirty-two signed codes (`low`: elements 0..16, `high`: 16..32) times 32 16-bit
/// activations, summed exactly into eight i32 lanes of four consecutive elements.
#[target_feature(enable = "neon")]
fn wide_integer_lanes(low: int8x16_t, high: int8x16_t, activations: &[i16]) -> (int32x4_t, int32x4_t) {
    let values: [int16x8_t; 4] = core::array::from_fn(|group| load_8_i16(activations, group * 8));
    let codes = [
        vmovl_s8(vget_low_s8(low)),
        vmovl_s8(vget_high_s8(low)),
        vmovl_s8(vget_low_s8(high)),
        vmovl_s8(vget_high_s8(high)),
    ];
    // Products of eight elements (each at most 128 × 32767), added in adjacent pairs.
    let pairs: [int32x4_t; 4] = core::array::from_fn(|group| {
        let (codes, values) = (codes[group], values[group]);
        vpaddq_s32(
            vmull_s16(vget_low_s16(codes), vget_low_s16(values)),
            vmull_s16(vget_high_s16(codes), vget_high_s16(values)),
        )
    });
    (vpaddq_s32(pairs[0], pairs[1]), vpaddq_s32(pairs[2], pairs[3]))
}

/// Mirrors `kernels::dot_blocks_integer` at either width.
#[target_feature(enable = "neon")]
fn dot_integer(tensor_type: TensorType, row: &[u8], x: &QuantizedVector, width: Width) -> f32 {
    let block_bytes = tensor_type.block_bytes();
    let mut accumulator = zero();
    let mut minimum_total = 0.0f32;
    for index in 0..block_count(row.len(), block_bytes, x, width) {
        let block = &row[index * block_bytes..(index + 1) * block_bytes];
        let scale = x.scales[index];
        let (low, high) = match tensor_type {
            TensorType::Q8_0 => {
                (vreinterpretq_s8_u8(load_16(block, 2)), vreinterpretq_s8_u8(load_16(block, 18)))
            }
            TensorType::Q4_0 => {
                let (low, high) = nibbles(block, 2);
                let eight = vdupq_n_s8(8);
                (vsubq_s8(vreinterpretq_s8_u8(low), eight), vsubq_s8(vreinterpretq_s8_u8(high), eight))
            }
            _ => {
                let (low, high) = nibbles(block, 4);
                minimum_total = fmaf(half(block, 2), x.scaled_sums[index], minimum_total);
                (vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high))
            }
        };
        let lanes = match width {
            Width::Eight => integer_lanes(low, high, &x.values[index * 32..index * 32 + 32]),
            Width::Sixteen => wide_integer_lanes(low, high, &x.wide_values[index * 32..]),
        };
        let factor = vdupq_n_f32(half(block, 0) * scale);
        accumulator = (
            vfmaq_f32(accumulator.0, factor, vcvtq_f32_s32(lanes.0)),
            vfmaq_f32(accumulator.1, factor, vcvtq_f32_s32(lanes.1)),
        );
    }
    reduce(accumulator) + minimum_total
}
