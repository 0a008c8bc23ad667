//! Tensor element types (F32, F16, Q8_0, Q4_0, Q4_1): block layouts, half floats,
//! dequantization and reference quantization.
//!
//! Layouts follow GGUF: blocks of 32 values, each starting with an f16 scale.
//! - Q8_0: `d: f16, q: [i8; 32]`; value = q × d.
//! - Q4_0: `d: f16, q: [u8; 16]`; value j is the low nibble of byte j for j < 16 and the high
//!   nibble of byte j − 16 otherwise; value = (nibble − 8) × d.
//! - Q4_1: `d: f16, m: f16, q: [u8; 16]`; nibbles as Q4_0; value = nibble × d + m.

use alloc::vec::Vec;

/// Values per quantized block.
pub const BLOCK_VALUES: usize = 32;

/// The element type of a tensor, with its GGUF type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE half float.
    F16,
    /// 8-bit values in blocks of 32 with an f16 scale.
    Q8_0,
    /// 4-bit values in blocks of 32 with an f16 scale, offset by 8.
    Q4_0,
    /// 4-bit values in blocks of 32 with an f16 scale and an f16 minimum.
    Q4_1,
}

impl TensorType {
    /// The type for a GGUF type code, if supported.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The GGUF type code.
    pub fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
        }
    }

    /// The conventional name, as GGUF tools print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
        }
    }

    /// Values per block (1 for the float types).
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => BLOCK_VALUES,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
        }
    }

    /// Bytes taken by `values` values, or `None` if `values` is not a whole number of blocks
    /// or the size overflows.
    pub fn bytes_for(self, values: u64) -> Option<u64> {
        let block_values = self.block_values() as u64;
        if !values.is_multiple_of(block_values) {
            return None;
        }
        (values / block_values).checked_mul(self.block_bytes() as u64)
    }
}

/// Converts IEEE 754 half-precision bits to f32, exactly (subnormals, infinities and NaN
/// included).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        (0, _) => {
            // Subnormal half: value = mantissa × 2^-24, exactly representable in f32.
            return sign_of(bits) * (mantissa as f32) * (1.0 / 16_777_216.0);
        }
        (0x1f, 0) => 0x7f80_0000,
        (0x1f, _) => 0x7fc0_0000 | (mantissa << 13),
        _ => ((exponent + 127 - 15) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

fn sign_of(bits: u16) -> f32 {
    if bits & 0x8000 != 0 { -1.0 } else { 1.0 }
}

/// Converts f32 to the nearest half (round to nearest even), saturating to infinity.
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exponent == 0xff {
        return sign | 0x7c00 | if mantissa != 0 { 0x200 } else { 0 };
    }
    let half_exponent = exponent - 127 + 15;
    if half_exponent >= 0x1f {
        return sign | 0x7c00;
    }
    if half_exponent <= 0 {
        if half_exponent < -10 {
            return sign;
        }
        // Subnormal: shift the mantissa with its implicit bit into place, rounding to even.
        let full = mantissa | 0x80_0000;
        let shift = (14 - half_exponent) as u32;
        let half_mantissa = full >> shift;
        let remainder = full & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round_up = remainder > halfway || (remainder == halfway && half_mantissa & 1 == 1);
        return sign | (half_mantissa + u32::from(round_up)) as u16;
    }
    let half_mantissa = mantissa >> 13;
    let remainder = mantissa & 0x1fff;
    let round_up = remainder > 0x1000 || (remainder == 0x1000 && half_mantissa & 1 == 1);
    let combined = ((half_exponent as u32) << 10 | half_mantissa) + u32::from(round_up);
    sign | combined as u16
}

fn half_at(bytes: &[u8], index: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[index], bytes[index + 1]]))
}

/// Dequantizes the whole blocks of `data` (of type `tensor_type`) into `out`.
///
/// `out.len()` values are written; `data` must hold at least that many values (checked: the
/// function writes only what `data` covers and returns how many values it wrote).
pub fn dequantize(tensor_type: TensorType, data: &[u8], out: &mut [f32]) -> usize {
    let block_values = tensor_type.block_values();
    let block_bytes = tensor_type.block_bytes();
    let blocks = (data.len() / block_bytes).min(out.len() / block_values);
    for (block, values) in data.chunks_exact(block_bytes).zip(out.chunks_exact_mut(block_values)).take(blocks)
    {
        dequantize_block(tensor_type, block, values);
    }
    blocks * block_values
}

/// Dequantizes one block (`block.len() == block_bytes()`) into `out` (`block_values()` long).
pub fn dequantize_block(tensor_type: TensorType, block: &[u8], out: &mut [f32]) {
    match tensor_type {
        TensorType::F32 => out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        TensorType::F16 => out[0] = half_at(block, 0),
        TensorType::Q8_0 => {
            let scale = half_at(block, 0);
            for (value, &quant) in out.iter_mut().zip(&block[2..34]) {
                *value = f32::from(quant as i8) * scale;
            }
        }
        TensorType::Q4_0 => {
            let scale = half_at(block, 0);
            for (index, &byte) in block[2..18].iter().enumerate() {
                out[index] = f32::from((byte & 0x0f) as i8 - 8) * scale;
                out[index + 16] = f32::from((byte >> 4) as i8 - 8) * scale;
            }
        }
        TensorType::Q4_1 => {
            let scale = half_at(block, 0);
            let minimum = half_at(block, 2);
            for (index, &byte) in block[4..20].iter().enumerate() {
                out[index] = f32::from(byte & 0x0f) * scale + minimum;
                out[index + 16] = f32::from(byte >> 4) * scale + minimum;
            }
        }
    }
}

/// Quantizes `values` (a multiple of the block size long) to `tensor_type`, appending to `out`.
/// Used to write synthetic models and test fixtures.
pub fn quantize(tensor_type: TensorType, values: &[f32], out: &mut Vec<u8>) {
    match tensor_type {
        TensorType::F32 => values.iter().for_each(|value| out.extend_from_slice(&value.to_le_bytes())),
        TensorType::F16 => {
            values.iter().for_each(|value| out.extend_from_slice(&f32_to_f16(*value).to_le_bytes()))
        }
        TensorType::Q8_0 => {
            for block in values.chunks(BLOCK_VALUES) {
                let maximum = block.iter().fold(0.0f32, |acc, value| acc.max(value.abs()));
                let scale = maximum / 127.0;
                let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(scale).to_le_bytes());
                out.extend(block.iter().map(|value| libm::roundf(value * inverse) as i8 as u8));
            }
        }
        TensorType::Q4_0 => {
            for block in values.chunks(BLOCK_VALUES) {
                let extreme = block
                    .iter()
                    .fold(0.0f32, |acc, &value| if value.abs() > acc.abs() { value } else { acc });
                let scale = extreme / -8.0;
                let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(scale).to_le_bytes());
                let nibble = |value: f32| ((value * inverse + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|index| nibble(block[index]) | nibble(block[index + 16]) << 4));
            }
        }
        TensorType::Q4_1 => {
            for block in values.chunks(BLOCK_VALUES) {
                let minimum = block.iter().copied().fold(f32::INFINITY, f32::min);
                let maximum = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let scale = (maximum - minimum) / 15.0;
                let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                out.extend_from_slice(&f32_to_f16(scale).to_le_bytes());
                out.extend_from_slice(&f32_to_f16(minimum).to_le_bytes());
                let nibble = |value: f32| (((value - minimum) * inverse + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|index| nibble(block[index]) | nibble(block[index + 16]) << 4));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn half_special_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    proptest! {
        #[test]
        fn half_round_trips(bits in any::<u16>()) {
            let value = f16_to_f32(bits);
            prop_assume!(!value.is_nan());
            prop_assert_eq!(f32_to_f16(value), bits);
        }

        #[test]
        fn quantized_values_stay_close(values in proptest::collection::vec(-4.0f32..4.0, 32)) {
            for tensor_type in [TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1, TensorType::F16] {
                let mut bytes = Vec::new();
                quantize(tensor_type, &values, &mut bytes);
                prop_assert_eq!(bytes.len() as u64, tensor_type.bytes_for(32).unwrap());
                let mut back = [0.0f32; 32];
                prop_assert_eq!(dequantize(tensor_type, &bytes, &mut back), 32);
                let tolerance = match tensor_type { TensorType::Q4_0 | TensorType::Q4_1 => 0.6, _ => 0.04 };
                for (original, restored) in values.iter().zip(back) {
                    prop_assert!((original - restored).abs() <= tolerance, "{tensor_type:?} {original} {restored}");
                }
            }
        }
    }
}
