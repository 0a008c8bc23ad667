//! Int8 compression of KV blocks, for sequences that wait (the memory-pressure manager's
//! second action): each half of a block (its keys, then its values) is stored as signed bytes
//! with one f32 scale, `value ≈ code × scale`, where `scale = max |value| / 127`. The error of
//! every value is at most half a step, `scale / 2`.
//!
//! Codes are packed four to an f32 word (its bits, little-endian), so the compressed form of
//! four blocks fits in one block of the same pool.

#![forbid(unsafe_code)]

/// Largest code magnitude.
const LEVELS: f32 = 127.0;

/// The scale of `values`: their largest finite magnitude over [`LEVELS`] (1 when none is
/// above zero). Values that are not finite are ignored here and clamped by [`quantize`].
pub fn scale_of(values: &[f32]) -> f32 {
    let largest = values
        .iter()
        .fold(0.0f32, |largest, value| if value.is_finite() { largest.max(value.abs()) } else { largest });
    if largest > 0.0 { largest / LEVELS } else { 1.0 }
}

/// The code of `value` at `scale`: rounded to nearest and clamped to ±127 (a value that is
/// not a number becomes 0).
pub fn quantize(value: f32, scale: f32) -> i8 {
    let scaled = value / scale;
    // Half away from zero, then truncation (`as` saturates, and a NaN becomes 0).
    let rounded = if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 };
    (rounded as i32).clamp(-(LEVELS as i32), LEVELS as i32) as i8
}

/// Compresses one block's `values` (keys then values, `half` each) into `codes` (one byte per
/// value) and returns the two scales.
pub fn compress_block(values: &[f32], half: usize, codes: &mut [i8]) -> [f32; 2] {
    let mut scales = [1.0; 2];
    for (part, scale) in scales.iter_mut().enumerate() {
        let range = part * half..(part + 1) * half;
        *scale = scale_of(&values[range.clone()]);
        for (code, &value) in codes[range.clone()].iter_mut().zip(&values[range]) {
            *code = quantize(value, *scale);
        }
    }
    scales
}

/// Restores one block's values from its `codes` and `scales` (see [`compress_block`]).
pub fn decompress_block(codes: &[i8], half: usize, scales: [f32; 2], values: &mut [f32]) {
    for (index, (value, &code)) in values.iter_mut().zip(codes).enumerate() {
        *value = f32::from(code) * scales[index / half.max(1)];
    }
}

/// Packs `codes` into f32 words, four codes a word (missing codes at the end are zero).
pub fn pack(codes: &[i8], words: &mut [f32]) {
    for (word, quad) in words.iter_mut().zip(codes.chunks(4)) {
        let mut bytes = [0u8; 4];
        for (byte, &code) in bytes.iter_mut().zip(quad) {
            *byte = code as u8;
        }
        *word = f32::from_bits(u32::from_le_bytes(bytes));
    }
}

/// Unpacks codes packed by [`pack`].
pub fn unpack(words: &[f32], codes: &mut [i8]) {
    for (quad, word) in codes.chunks_mut(4).zip(words) {
        let bytes = word.to_bits().to_le_bytes();
        for (code, &byte) in quad.iter_mut().zip(&bytes) {
            *code = byte as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_error_is_at_most_half_a_step(
            keys in prop::collection::vec(-1.0e3f32..1.0e3, 8),
            values in prop::collection::vec(-1.0e-2f32..1.0e-2, 8),
        ) {
            let block: alloc::vec::Vec<f32> = keys.iter().chain(&values).copied().collect();
            let mut codes = vec![0i8; 16];
            let scales = compress_block(&block, 8, &mut codes);
            let mut words = vec![0.0f32; 4];
            pack(&codes, &mut words);
            let mut unpacked = vec![0i8; 16];
            unpack(&words, &mut unpacked);
            prop_assert_eq!(&unpacked, &codes, "packing keeps every code");
            let mut restored = vec![0.0f32; 16];
            decompress_block(&unpacked, 8, scales, &mut restored);
            for (index, (&original, &back)) in block.iter().zip(&restored).enumerate() {
                let scale = scales[index / 8];
                // Half a step, plus the rounding of the division and the product.
                let bound = scale * 0.5 + original.abs() * 1e-6;
                prop_assert!((original - back).abs() <= bound, "{} became {} (scale {})", original, back, scale);
            }
            // Each half has its own scale: the small values keep their precision.
            let small = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            prop_assert!(scales[1] <= small / 127.0 * 1.0001 || small == 0.0);
        }
    }

    #[test]
    fn odd_values_do_not_break_it() {
        let block = [f32::NAN, f32::INFINITY, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut codes = [0i8; 8];
        let scales = compress_block(&block, 4, &mut codes);
        assert_eq!(codes[..4], [0, 127, -127, 0]);
        assert_eq!(scales[1], 1.0, "an all-zero half");
        assert!(scales[0] > 0.0);
    }
}
