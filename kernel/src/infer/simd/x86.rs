//! The AVX2 row dot products (x86_64; F16C and FMA beside AVX2): the twins of the scalar
//! kernels in `kernels`, bit for bit.

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
    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(codes, codes), _mm256_sign_epi8(activations, codes));
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
                if unsigned { unsigned_lanes(codes, activations) } else { signed_lanes(codes, activations) }
            }
            Width::Sixteen => wide_lanes(codes, &x.wide_values[index * 32..]),
        };
        accumulator =
            _mm256_fmadd_ps(_mm256_set1_ps(half(block, 0) * scale), _mm256_cvtepi32_ps(lanes), accumulator);
    }
    reduce(accumulator) + minimum_total
}
