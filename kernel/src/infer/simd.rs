//! SIMD row dot products: NEON on aarch64, AVX2 on x86_64 (detected at run time with `std`,
//! fixed at compile time without; F16C and FMA are required beside AVX2). The one module of
//! `infer` allowed `unsafe`.
//!
//! Each path reproduces its scalar twin in [`super::kernels`] bit for bit: products are
//! accumulated with fused multiply-adds (`libm::fmaf` in the scalar kernels, which rounds
//! once like the hardware) in the scalar kernels' eight-lane order and reduced in the same
//! tree, and integer block sums are exact. Property tests check every path against the
//! scalar one.
//!
//! Audit notes: the only unsafe operations are vector loads from slices and calls into
//! `#[target_feature]` functions. Every load reads inside a slice whose length the caller
//! checked just before (`chunks_exact` gives whole blocks), and feature-gated functions are
//! called only after the feature was detected (or is enabled for the whole build).

use super::kernels::{Input, QuantizedVector};
use crate::model::{Matrix, TensorType};

/// The SIMD instruction set in use, if any.
pub fn instruction_set() -> Option<&'static str> {
    #[cfg(target_arch = "aarch64")]
    if cfg!(target_feature = "neon") {
        return Some("NEON");
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return Some("AVX2");
    }
    None
}

/// The dot product of `row` with `input` on this CPU's SIMD path, or `None` when there is no
/// SIMD path for this CPU or this combination (the caller then uses the scalar kernel).
/// Rows and inputs must be whole blocks, as [`crate::model::Matrix`] rows are.
pub fn dot(tensor_type: TensorType, row: &[u8], input: Input<'_>) -> Option<f32> {
    #[cfg(target_arch = "aarch64")]
    if cfg!(target_feature = "neon") {
        // SAFETY: NEON is enabled for the whole build, so every CPU running it has NEON.
        return unsafe { neon::dot(tensor_type, row, input) };
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2, F16C and FMA were detected on this CPU just above.
        return unsafe { x86::dot(tensor_type, row, input) };
    }
    let _ = (tensor_type, row, input);
    None
}

/// Computes rows `first .. first + out.len()` of `matrix · input` on this CPU's SIMD path.
/// Returns `false`, writing nothing, when there is no SIMD path for this CPU or combination.
/// Choosing the path once per band of rows keeps the per-row cost to the dot product itself.
pub fn rows(matrix: &Matrix<'_>, input: Input<'_>, first: usize, out: &mut [f32]) -> bool {
    #[cfg(target_arch = "aarch64")]
    if cfg!(target_feature = "neon") {
        // SAFETY: NEON is enabled for the whole build, so every CPU running it has NEON.
        return unsafe { neon::rows(matrix, input, first, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: AVX2, F16C and FMA were detected on this CPU just above.
        return unsafe { x86::rows(matrix, input, first, out) };
    }
    let _ = (matrix, input, first, out);
    false
}

/// Which of a [`QuantizedVector`]'s integer activations a dot product reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Width {
    /// `values`, 8 bits ([`Input::Quantized`]).
    Eight,
    /// `wide_values`, 16 bits ([`Input::Quantized16`]).
    Sixteen,
}

/// Whole blocks that both the row and the quantized activations of `width` cover. The 8-bit
/// paths expect activations in −127..=127, as [`QuantizedVector::quantize`] makes them (the
/// AVX2 sign trick needs it; the scalar path does not care).
fn block_count(row_len: usize, block_bytes: usize, x: &QuantizedVector, width: Width) -> usize {
    let values = match width {
        Width::Eight => x.values.len(),
        Width::Sixteen => x.wide_values.len(),
    };
    (row_len / block_bytes).min(x.scales.len()).min(x.scaled_sums.len()).min(values / 32)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::{Width, block_count};
    use crate::infer::kernels::{Input, QuantizedVector};
    use crate::model::{Matrix, TensorType};
    use libm::fmaf;

    /// Whether the CPU has AVX2, F16C and FMA (every AVX2 CPU so far has both).
    pub fn has_avx2() -> bool {
        #[cfg(any(test, feature = "std"))]
        {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("f16c")
                && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(any(test, feature = "std")))]
        {
            cfg!(all(target_feature = "avx2", target_feature = "f16c", target_feature = "fma"))
        }
    }

    /// Rows `first ..` of `matrix · input` into `out`; `false` when this combination has no
    /// AVX2 path.
    #[target_feature(enable = "avx2,f16c,fma")]
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
                each(out, &|row| dot_integer(row, x, tensor_type, Width::Eight))
            }
            (TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1, Input::Quantized16(x)) => {
                let tensor_type = matrix.tensor_type;
                each(out, &|row| dot_integer(row, x, tensor_type, Width::Sixteen))
            }
            _ => return false,
        }
        true
    }

    /// One row's dot product; `None` when this combination has no AVX2 path.
    #[target_feature(enable = "avx2,f16c,fma")]
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
                dot_integer(row, x, tensor_type, Width::Eight)
            }
            (TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1, Input::Quantized16(x)) => {
                dot_integer(row, x, tensor_type, Width::Sixteen)
            }
            _ => return None,
        })
    }

    /// Sums the eight lanes as ((0+4)+(2+6)) + ((1+5)+(3+7)), like `reduce_lanes`.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn reduce(lanes: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps::<1>(lanes));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
    }

    /// Eight floats from `bytes[at..at + 32]` (little-endian).
    #[target_feature(enable = "avx2,f16c,fma")]
    fn load_f32_bytes(bytes: &[u8], at: usize) -> __m256 {
        let chunk = &bytes[at..at + 32];
        // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_ps(chunk.as_ptr().cast()) }
    }

    /// Eight floats from `values[at..at + 8]`.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn load_f32(values: &[f32], at: usize) -> __m256 {
        let chunk = &values[at..at + 8];
        // SAFETY: `chunk` is 8 readable floats; the load is unaligned.
        unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
    }

    /// Sixteen bytes from `bytes[at..at + 16]`.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn load_16(bytes: &[u8], at: usize) -> __m128i {
        let chunk = &bytes[at..at + 16];
        // SAFETY: `chunk` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) }
    }

    /// Thirty-two bytes from `bytes[at..at + 32]`.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn load_32(bytes: &[u8], at: usize) -> __m256i {
        let chunk = &bytes[at..at + 32];
        // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
        let groups = (row.len() / 32).min(x.len() / 8);
        let mut lanes = _mm256_setzero_ps();
        for group in 0..groups {
            lanes = _mm256_fmadd_ps(load_f32_bytes(row, group * 32), load_f32(x, group * 8), lanes);
        }
        let mut total = reduce(lanes);
        for (bytes, value) in row[groups * 32..].chunks_exact(4).zip(&x[groups * 8..]) {
            total = fmaf(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), *value, total);
        }
        total
    }

    /// The 32 signed byte codes of a block as four vectors of eight floats.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn widen(low: __m128i, high: __m128i, signed: bool) -> [__m256; 4] {
        let convert = |bytes: __m128i| {
            if signed {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
            } else {
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
            }
        };
        [convert(low), convert(_mm_srli_si128::<8>(low)), convert(high), convert(_mm_srli_si128::<8>(high))]
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    fn codes_q8_0(block: &[u8]) -> [__m256; 4] {
        widen(load_16(block, 2), load_16(block, 18), true)
    }

    /// Nibbles packed from byte `start`: low nibbles are elements 0..16, high ones 16..32.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn nibbles(block: &[u8], start: usize) -> (__m128i, __m128i) {
        let packed = load_16(block, start);
        let mask = _mm_set1_epi8(0x0f);
        (_mm_and_si128(packed, mask), _mm_and_si128(_mm_srli_epi16::<4>(packed), mask))
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    fn codes_q4_0(block: &[u8]) -> [__m256; 4] {
        let (low, high) = nibbles(block, 2);
        let eight = _mm_set1_epi8(8);
        widen(_mm_sub_epi8(low, eight), _mm_sub_epi8(high, eight), true)
    }

    #[target_feature(enable = "avx2,f16c,fma")]
    fn codes_q4_1(block: &[u8]) -> [__m256; 4] {
        let (low, high) = nibbles(block, 4);
        widen(low, high, false)
    }

    /// The f16 at byte `at` of `bytes`, broadcast to eight lanes.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn broadcast_half(bytes: &[u8], at: usize) -> __m256 {
        _mm256_broadcastss_ps(convert_half(bytes, at))
    }

    /// The f16 at byte `at` of `bytes` in lane 0, converted exactly by F16C (as `half`).
    #[target_feature(enable = "avx2,f16c,fma")]
    fn convert_half(bytes: &[u8], at: usize) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))))
    }

    /// The f16 at byte `at` of `bytes`, as f32.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn half(bytes: &[u8], at: usize) -> f32 {
        _mm_cvtss_f32(convert_half(bytes, at))
    }

    /// Float-activation dot product over blocks of `block_bytes` bytes, whose codes `codes`
    /// expands; `minimum` locates the Q4_1 minimum and may bring the blocks' sum lanes
    /// (flattened). Mirrors `kernels::dot_blocks_float`.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn dot_float_blocks(
        row: &[u8],
        x: &[f32],
        block_bytes: usize,
        codes: unsafe fn(&[u8]) -> [__m256; 4],
        minimum: Option<(usize, Option<&[f32]>)>,
    ) -> f32 {
        let mut accumulator = _mm256_setzero_ps();
        for (index, (block, values)) in row.chunks_exact(block_bytes).zip(x.chunks_exact(32)).enumerate() {
            // SAFETY: `codes` is one of this module's AVX2 functions, and AVX2 is enabled here.
            let codes = unsafe { codes(block) };
            let values: [__m256; 4] = core::array::from_fn(|group| load_f32(values, group * 8));
            let mut products = _mm256_setzero_ps();
            for (code, value) in codes.iter().zip(values) {
                products = _mm256_fmadd_ps(*code, value, products);
            }
            accumulator = _mm256_fmadd_ps(broadcast_half(block, 0), products, accumulator);
            if let Some((at, precomputed)) = minimum {
                let sums = match precomputed {
                    Some(sums) if sums.len() >= index * 8 + 8 => load_f32(sums, index * 8),
                    _ => values.iter().fold(_mm256_setzero_ps(), |sums, value| _mm256_add_ps(sums, *value)),
                };
                accumulator = _mm256_fmadd_ps(broadcast_half(block, at), sums, accumulator);
            }
        }
        reduce(accumulator)
    }

    /// Thirty-two signed codes times thirty-two signed activations, summed exactly into
    /// eight i32 lanes of four consecutive elements.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn signed_lanes(codes: __m256i, activations: __m256i) -> __m256i {
        // maddubs multiplies unsigned by signed: |code| × (activation with the code's sign).
        let pairs =
            _mm256_maddubs_epi16(_mm256_sign_epi8(codes, codes), _mm256_sign_epi8(activations, codes));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// Thirty-two codes in 0..=15 times thirty-two signed activations, in eight i32 lanes.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn unsigned_lanes(codes: __m256i, activations: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(codes, activations), _mm256_set1_epi16(1))
    }

    /// Thirty-two signed codes (bytes) times thirty-two 16-bit activations, summed exactly
    /// into eight i32 lanes of four consecutive elements.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn wide_lanes(codes: __m256i, activations: &[i16]) -> __m256i {
        let chunk = &activations[..32];
        // SAFETY: `chunk` is 32 readable i16 (64 bytes), so both 32-byte loads stay inside it;
        // the loads are unaligned.
        let (first, second) = unsafe {
            (_mm256_loadu_si256(chunk.as_ptr().cast()), _mm256_loadu_si256(chunk.as_ptr().add(16).cast()))
        };
        // madd: i32 lane j = the products of elements 2j and 2j+1 (at most 2 × 128 × 32767).
        let low = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(codes)), first);
        let high = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(codes)), second);
        // hadd works within 128-bit halves, giving elements (0..4, 4..8, 16..20, 20..24 |
        // 8..12, 12..16, 24..28, 28..32); the permute puts the 64-bit pairs back in order.
        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(low, high))
    }

    /// Mirrors `kernels::dot_blocks_integer` at either width.
    #[target_feature(enable = "avx2,f16c,fma")]
    fn dot_integer(row: &[u8], x: &QuantizedVector, tensor_type: TensorType, width: Width) -> f32 {
        let block_bytes = tensor_type.block_bytes();
        let mut accumulator = _mm256_setzero_ps();
        let mut minimum_total = 0.0f32;
        for index in 0..block_count(row.len(), block_bytes, x, width) {
            let block = &row[index * block_bytes..(index + 1) * block_bytes];
            let scale = x.scales[index];
            let (codes, unsigned) = match tensor_type {
                TensorType::Q8_0 => (load_32(block, 2), false),
                TensorType::Q4_0 => {
                    let (low, high) = nibbles(block, 2);
                    (_mm256_sub_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(8)), false)
                }
                _ => {
                    let (low, high) = nibbles(block, 4);
                    // A fused multiply-add in hardware, rounded once like `fmaf` (which on x86_64
                    // is a call through a function pointer: a fifth of SmolLM2 int8 decode time).
                    minimum_total = _mm_cvtss_f32(_mm_fmadd_ss(
                        convert_half(block, 2),
                        _mm_set_ss(x.scaled_sums[index]),
                        _mm_set_ss(minimum_total),
                    ));
                    (_mm256_set_m128i(high, low), true)
                }
            };
            let lanes = match width {
                Width::Eight => {
                    let chunk = &x.values[index * 32..index * 32 + 32];
                    // SAFETY: `chunk` is 32 readable bytes; the load is unaligned.
                    let activations = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
                    if unsigned {
                        unsigned_lanes(codes, activations)
                    } else {
                        signed_lanes(codes, activations)
                    }
                }
                Width::Sixteen => wide_lanes(codes, &x.wide_values[index * 32..]),
            };
            accumulator = _mm256_fmadd_ps(
                _mm256_set1_ps(half(block, 0) * scale),
                _mm256_cvtepi32_ps(lanes),
                accumulator,
            );
        }
        reduce(accumulator) + minimum_total
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::kernels::dot_scalar;
    use crate::model::quant::quantize;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A row of `tensor_type` from `values`, with some raw code bytes overwritten by `noise`
    /// so that every code value occurs (scales stay the quantizer's, so they are finite).
    fn row(tensor_type: TensorType, values: &[f32], noise: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        quantize(tensor_type, values, &mut bytes);
        let (block_bytes, header) = match tensor_type {
            TensorType::Q8_0 => (34, 2),
            TensorType::Q4_0 => (18, 2),
            TensorType::Q4_1 => (20, 4),
            _ => return bytes,
        };
        for (index, byte) in noise.iter().enumerate() {
            let block = index % (bytes.len() / block_bytes);
            let at = block * block_bytes + header + (index * 7) % (block_bytes - header);
            bytes[at] = *byte;
        }
        bytes
    }

    proptest! {
        #[test]
        fn every_simd_path_equals_the_scalar_path(
            weights in proptest::collection::vec(-3.0f32..3.0, 96),
            x in proptest::collection::vec(-5.0f32..5.0, 96),
            noise in proptest::collection::vec(any::<u8>(), 0..24),
            length in 1usize..=3,
        ) {
            let columns = 32 * length;
            let mut quantized = QuantizedVector::with_capacity(columns);
            quantized.quantize(&x[..columns]);
            let mut wide = QuantizedVector::with_capacity(columns);
            wide.quantize_wide(&x[..columns]);
            let mut summed = QuantizedVector::with_capacity(columns);
            let sums = summed.sum_blocks(&x[..columns]);
            for tensor_type in [TensorType::F32, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1] {
                let row = row(tensor_type, &weights[..columns], &noise);
                let float = dot_scalar(tensor_type, &row, Input::Float(&x[..columns]));
                let summed_float = dot_scalar(tensor_type, &row, Input::FloatSummed(&x[..columns], sums));
                prop_assert_eq!(float.to_bits(), summed_float.to_bits(), "precomputed sums change nothing");
                let mut inputs = alloc::vec![Input::Float(&x[..columns]), Input::FloatSummed(&x[..columns], sums)];
                if tensor_type != TensorType::F32 {
                    inputs.extend([Input::Quantized(&quantized), Input::Quantized16(&wide)]);
                }
                for input in inputs {
                    let scalar = dot_scalar(tensor_type, &row, input);
                    match dot(tensor_type, &row, input) {
                        Some(simd) => prop_assert_eq!(simd.to_bits(), scalar.to_bits(), "{:?} {:?}: {} vs {}", tensor_type, input, simd, scalar),
                        None => prop_assert!(instruction_set().is_none(), "{:?} has no SIMD path", tensor_type),
                    }
                }
            }
            // F32 rows whose length is not a multiple of eight use the scalar tail.
            let odd = columns - 3;
            let mut bytes = Vec::new();
            quantize(TensorType::F32, &weights[..odd], &mut bytes);
            let scalar = dot_scalar(TensorType::F32, &bytes, Input::Float(&x[..odd]));
            if let Some(simd) = dot(TensorType::F32, &bytes, Input::Float(&x[..odd])) {
                prop_assert_eq!(simd.to_bits(), scalar.to_bits());
            }
        }
    }

    #[test]
    fn band_of_rows_equals_scalar_rows() {
        let mut random = crate::rand::SplitMix64::new(5);
        let values: Vec<f32> = (0..7 * 64).map(|_| random.next_f32() * 4.0 - 2.0).collect();
        let x: Vec<f32> = (0..64).map(|_| random.next_f32() * 4.0 - 2.0).collect();
        let mut quantized = QuantizedVector::with_capacity(64);
        quantized.quantize(&x);
        let mut wide = QuantizedVector::with_capacity(64);
        wide.quantize_wide(&x);
        for tensor_type in [TensorType::F32, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1] {
            let mut data = Vec::new();
            quantize(tensor_type, &values, &mut data);
            let matrix = Matrix { tensor_type, rows: 7, columns: 64, data: &data };
            let mut summed = QuantizedVector::with_capacity(64);
            let sums = summed.sum_blocks(&x);
            let mut inputs = alloc::vec![Input::Float(&x), Input::FloatSummed(&x, sums)];
            if tensor_type != TensorType::F32 {
                inputs.extend([Input::Quantized(&quantized), Input::Quantized16(&wide)]);
            }
            for input in inputs {
                let mut band = [0.0f32; 5];
                if rows(&matrix, input, 2, &mut band) {
                    for (index, value) in band.iter().enumerate() {
                        let scalar = dot_scalar(tensor_type, matrix.row(2 + index), input);
                        assert_eq!(value.to_bits(), scalar.to_bits(), "{tensor_type:?} row {}", 2 + index);
                    }
                } else {
                    assert!(instruction_set().is_none(), "{tensor_type:?} has no SIMD rows path");
                }
            }
        }
    }

    #[test]
    fn this_host_has_a_simd_path() {
        // The host CI machines are x86_64 with AVX2 or aarch64 with NEON.
        assert!(instruction_set().is_some(), "no SIMD path on this CPU: the SIMD kernels go untested");
    }
}
