//! The AVX2 kernels (x86_64; F16C and FMA beside AVX2): row dot products, the matrix ×
//! N-vectors product, SwiGLU and the attention vector operations, each the twin of its
//! scalar kernel in `kernels`, bit for bit.
//!
//! The integer dot products take the weight type and the activation width as type
//! parameters ([`Format`], [`Width`]), chosen once per band of rows; their block loop takes
//! two blocks per step through `chunks_exact`, with no branch or slice check inside. Weight
//! scales become f32 with F16C.

use core::arch::x86_64::*;

use crate::infer::kernels::{
    BatchInput, EXPONENT_HIGHEST, EXPONENT_LOWEST, EXPONENTIAL_COEFFICIENTS, Input, LN_2_HIGH, LN_2_LOW,
    LOG2_E, Quantized, ROUNDING_SHIFTER, exponential,
};
use crate::model::quant::BLOCK_VALUES;
use crate::model::{Matrix, TensorType};

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
        (TensorType::Q8_0, Input::Quantized(x)) => each_row::<Q8_0, Eight>(matrix, x, first, out),
        (TensorType::Q4_0, Input::Quantized(x)) => each_row::<Q4_0, Eight>(matrix, x, first, out),
        (TensorType::Q4_1, Input::Quantized(x)) => each_row::<Q4_1, Eight>(matrix, x, first, out),
        (TensorType::Q8_0, Input::Quantized16(x)) => each_row::<Q8_0, Sixteen>(matrix, x, first, out),
        (TensorType::Q4_0, Input::Quantized16(x)) => each_row::<Q4_0, Sixteen>(matrix, x, first, out),
        (TensorType::Q4_1, Input::Quantized16(x)) => each_row::<Q4_1, Sixteen>(matrix, x, first, out),
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
        _ => return false,
    }
    true
}

/// One row's dot product; `None` when this combination has no AVX2 path.
#[target_feature(enable = "avx2,f16c,fma")]
pub fn dot(tensor_type: TensorType, row: &[u8], input: Input<'_>) -> Option<f32> {
    Some(match (tensor_type, input) {
        (TensorType::Q8_0, Input::Quantized(x)) => dot_integer::<Q8_0, Eight>(row, x),
        (TensorType::Q4_0, Input::Quantized(x)) => dot_integer::<Q4_0, Eight>(row, x),
        (TensorType::Q4_1, Input::Quantized(x)) => dot_integer::<Q4_1, Eight>(row, x),
        (TensorType::Q8_0, Input::Quantized16(x)) => dot_integer::<Q8_0, Sixteen>(row, x),
        (TensorType::Q4_0, Input::Quantized16(x)) => dot_integer::<Q4_0, Sixteen>(row, x),
        (TensorType::Q4_1, Input::Quantized16(x)) => dot_integer::<Q4_1, Sixteen>(row, x),
        (TensorType::F32, Input::Float(x)) => dot_f32(row, x),
        (TensorType::Q8_0, Input::Float(x)) => dot_float_blocks(row, x, 34, codes_q8_0, None),
        (TensorType::Q4_0, Input::Float(x)) => dot_float_blocks(row, x, 18, codes_q4_0, None),
        (TensorType::Q4_1, Input::Float(x)) => dot_float_blocks(row, x, 20, codes_q4_1, Some((2, None))),
        (TensorType::Q4_1, Input::FloatSummed(x, sums)) => {
            dot_float_blocks(row, x, 20, codes_q4_1, Some((2, Some(sums.as_flattened()))))
        }
        (_, Input::FloatSummed(x, _)) => return dot(tensor_type, row, Input::Float(x)),
        _ => return None,
    })
}

/// Rows `first ..` of `matrix` times every vector of `input` into `out` (`out[r × N + j]`),
/// for quantized matrices at an integer precision; `false` (nothing written) otherwise, or
/// when the shapes do not fit (the caller checked them, so that does not happen).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn rows_multi(matrix: &Matrix<'_>, input: BatchInput<'_>, first: usize, out: &mut [f32]) -> bool {
    let vectors = input.rows();
    match (matrix.tensor_type, input.int8(), input.int16()) {
        (TensorType::Q8_0, Some(x), _) => multi_integer::<Q8_0, Eight>(matrix, x, vectors, first, out),
        (TensorType::Q4_0, Some(x), _) => multi_integer::<Q4_0, Eight>(matrix, x, vectors, first, out),
        (TensorType::Q4_1, Some(x), _) => multi_integer::<Q4_1, Eight>(matrix, x, vectors, first, out),
        (TensorType::Q8_0, _, Some(x)) => multi_integer::<Q8_0, Sixteen>(matrix, x, vectors, first, out),
        (TensorType::Q4_0, _, Some(x)) => multi_integer::<Q4_0, Sixteen>(matrix, x, vectors, first, out),
        (TensorType::Q4_1, _, Some(x)) => multi_integer::<Q4_1, Sixteen>(matrix, x, vectors, first, out),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Weight formats.

/// The little-endian u16 at `address`.
///
/// # Safety
/// `address` must point to 2 readable bytes.
#[inline]
unsafe fn read_u16(address: *const u8) -> i32 {
    // SAFETY: the caller guarantees 2 readable bytes; the read is unaligned.
    i32::from(unsafe { address.cast::<u16>().read_unaligned() })
}

/// The little-endian u32 at `address`.
///
/// # Safety
/// `address` must point to 4 readable bytes.
#[inline]
unsafe fn read_u32(address: *const u8) -> i32 {
    // SAFETY: the caller guarantees 4 readable bytes; the read is unaligned.
    unsafe { address.cast::<i32>().read_unaligned() }
}

/// A quantized weight format as the integer kernels load it.
trait Format {
    /// Bytes per block of 32.
    const BLOCK_BYTES: usize;
    /// Whether blocks carry a minimum (Q4_1).
    const MINIMUM: bool;
    /// Whether codes may be negative (the 8-bit product then moves their signs onto the
    /// activations, as `maddubs` multiplies unsigned by signed bytes).
    const SIGNED: bool;

    /// Two consecutive blocks' `[scale 0, minimum 0, scale 1, minimum 1]` as f32
    /// (minimums 0 for formats without).
    ///
    /// # Safety
    /// `pair` must point to `2 × BLOCK_BYTES` readable bytes; AVX2, F16C and FMA present.
    unsafe fn scales_pair(pair: *const u8) -> __m128;

    /// One block's `[scale, minimum, 0, 0]`.
    ///
    /// # Safety
    /// `block` must point to `BLOCK_BYTES` readable bytes; AVX2, F16C and FMA present.
    unsafe fn scales_one(block: *const u8) -> __m128;

    /// The block's 32 codes as bytes, in element order.
    ///
    /// # Safety
    /// `block` must point to `BLOCK_BYTES` readable bytes; AVX2, F16C and FMA present.
    unsafe fn codes(block: *const u8) -> __m256i;
}

/// Q8_0: `d: f16, q: [i8; 32]`.
struct Q8_0;
/// Q4_0: `d: f16, q: [u8; 16]` (nibble − 8).
struct Q4_0;
/// Q4_1: `d: f16, m: f16, q: [u8; 16]`.
struct Q4_1;

/// Sixteen packed bytes at `address` as 32 nibbles: low nibbles are elements 0..16, high
/// ones 16..32.
///
/// # Safety
/// `address` must point to 16 readable bytes; AVX2 present.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn nibbles(address: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
    let packed = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(address.cast()) });
    // The upper copy shifted right by 4, so that each of its bytes' low nibble is the
    // byte's high nibble: one load, one variable shift and one mask for the 32 codes.
    let shifted = _mm256_srlv_epi64(packed, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// The scales of two blocks without minimums: f16 at bytes 0 and `block_bytes`, converted
/// into f32 lanes 0 and 2.
///
/// # Safety
/// `pair` must point to `2 × block_bytes` readable bytes; F16C present.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn scale_halves(pair: *const u8, block_bytes: usize) -> __m128 {
    // SAFETY: the caller guarantees both blocks' first two bytes.
    let (first, second) = unsafe { (read_u16(pair), read_u16(pair.add(block_bytes))) };
    _mm_cvtph_ps(_mm_insert_epi16::<2>(_mm_cvtsi32_si128(first), second))
}

impl Format for Q8_0 {
    const BLOCK_BYTES: usize = 34;
    const MINIMUM: bool = false;
    const SIGNED: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales_pair(pair: *const u8) -> __m128 {
        // SAFETY: the caller guarantees 68 readable bytes.
        unsafe { scale_halves(pair, Self::BLOCK_BYTES) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales_one(block: *const u8) -> __m128 {
        // SAFETY: the caller guarantees 34 readable bytes.
        _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { read_u16(block) }))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn codes(block: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 34 readable bytes: 2..34 are read, unaligned.
        unsafe { _mm256_loadu_si256(block.add(2).cast()) }
    }
}

impl Format for Q4_0 {
    const BLOCK_BYTES: usize = 18;
    const MINIMUM: bool = false;
    const SIGNED: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales_pair(pair: *const u8) -> __m128 {
        // SAFETY: the caller guarantees 36 readable bytes.
        unsafe { scale_halves(pair, Self::BLOCK_BYTES) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales_one(block: *const u8) -> __m128 {
        // SAFETY: the caller guarantees 18 readable bytes.
        _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { read_u16(block) }))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn codes(block: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 18 readable bytes: 2..18 are read.
        _mm256_sub_epi8(unsafe { nibbles(block.add(2)) }, _mm256_set1_epi8(8))
    }
}

impl Format for Q4_1 {
    const BLOCK_BYTES: usize = 20;
    const MINIMUM: bool = true;
    const SIGNED: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales_pair(pair: *const u8) -> __m128 {
        // SAFETY: the caller guarantees 40 readable bytes: 0..4 and 20..24 are read.
        let (first, second) = unsafe { (read_u32(pair), read_u32(pair.add(20))) };
        _mm_cvtph_ps(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(first), second))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales_one(block: *const u8) -> __m128 {
        // SAFETY: the caller guarantees 20 readable bytes: 0..4 are read.
        _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { read_u32(block) }))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn codes(block: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 20 readable bytes: 4..20 are read.
        unsafe { nibbles(block.add(4)) }
    }
}

// ---------------------------------------------------------------------------------------
// Activation widths: one block's integer lanes, grouped as `kernels::integer_lane` says.

/// The width of quantized activations, as the integer kernels multiply them.
trait Width {
    /// `i8` or `i16`.
    type Element: Copy;
    /// One block's codes made ready for [`Self::lanes`] (once, for every vector).
    type Codes: Copy;

    /// A block's 32 codes (bytes in element order) made ready.
    ///
    /// # Safety
    /// AVX2, F16C and FMA present.
    unsafe fn prepare<F: Format>(codes: __m256i) -> Self::Codes;

    /// The four integer lanes of one block: `codes` times the 32 activations at `values`,
    /// element e added to lane (e / 2) mod 4, exactly.
    ///
    /// # Safety
    /// `values` must point to 32 readable elements; AVX2, F16C and FMA present.
    unsafe fn lanes<F: Format>(codes: Self::Codes, values: *const Self::Element) -> __m128i;
}

/// 8-bit activations.
struct Eight;
/// 16-bit activations.
struct Sixteen;

impl Width for Eight {
    type Element = i8;
    /// The codes' magnitudes and the codes themselves (whose signs move onto the
    /// activations).
    type Codes = (__m256i, __m256i);

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn prepare<F: Format>(codes: __m256i) -> Self::Codes {
        if F::SIGNED { (_mm256_sign_epi8(codes, codes), codes) } else { (codes, codes) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn lanes<F: Format>((magnitudes, codes): Self::Codes, values: *const i8) -> __m128i {
        // SAFETY: the caller guarantees 32 readable bytes; the load is unaligned.
        let activations = unsafe { _mm256_loadu_si256(values.cast()) };
        let activations = if F::SIGNED { _mm256_sign_epi8(activations, codes) } else { activations };
        // i16 lane q = elements 2q and 2q+1 (at most 2 × 128 × 127: no saturation, as the
        // activations stay within −127..=127).
        let pairs = _mm256_maddubs_epi16(magnitudes, activations);
        // Within each half, i16 lanes reordered 0, 4, 1, 5, 2, 6, 3, 7, so that `madd`
        // adds lanes q and q + 4: i32 lane p then holds elements 2p, 2p+1, 2p+8, 2p+9.
        let order = _mm256_setr_epi8(
            0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6,
            7, 14, 15,
        );
        let quads = _mm256_madd_epi16(_mm256_shuffle_epi8(pairs, order), _mm256_set1_epi16(1));
        _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256::<1>(quads))
    }
}

impl Width for Sixteen {
    type Element = i16;
    /// The codes widened to 16 bits: elements 0..16, then 16..32.
    type Codes = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn prepare<F: Format>(codes: __m256i) -> Self::Codes {
        [
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(codes)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(codes)),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn lanes<F: Format>(codes: Self::Codes, values: *const i16) -> __m128i {
        // SAFETY: the caller guarantees 32 readable i16 (64 bytes); the loads are unaligned.
        let (first, second) =
            unsafe { (_mm256_loadu_si256(values.cast()), _mm256_loadu_si256(values.add(16).cast())) };
        // i32 lane r = elements 2r, 2r+1 and 16+2r, 17+2r (each product at most 128 × 32767);
        // the halves then add lanes r and r + 4.
        let pairs = _mm256_add_epi32(_mm256_madd_epi16(codes[0], first), _mm256_madd_epi16(codes[1], second));
        _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256::<1>(pairs))
    }
}

// ---------------------------------------------------------------------------------------
// Integer dot products (mirroring `kernels::dot_blocks_integer`).

/// A row's running sums: four lanes of scaled block products, and Q4_1's minimum terms
/// (even blocks in lane 1, odd blocks in lane 3; lanes 0 and 2 collect unused products).
#[derive(Clone, Copy)]
struct Sums {
    lanes: __m128,
    minimums: __m128,
}

impl Sums {
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    fn new() -> Self {
        Self { lanes: _mm_setzero_ps(), minimums: _mm_setzero_ps() }
    }

    /// The dot product: (lane 0 + lane 2) + (lane 1 + lane 3), plus (even + odd minimum
    /// terms) for Q4_1.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    fn finish<F: Format>(self) -> f32 {
        let halves = _mm_add_ps(self.lanes, _mm_movehl_ps(self.lanes, self.lanes));
        let total = _mm_cvtss_f32(_mm_add_ss(halves, _mm_movehdup_ps(halves)));
        if F::MINIMUM {
            let odd = _mm_movehl_ps(self.minimums, self.minimums);
            let (even, odd) =
                (_mm_cvtss_f32(_mm_movehdup_ps(self.minimums)), _mm_cvtss_f32(_mm_movehdup_ps(odd)));
            total + (even + odd)
        } else {
            total
        }
    }

    /// Adds `lanes` scaled by lane `LANE` of `factors`, fused.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    fn add_lanes<const LANE: i32>(&mut self, lanes: __m128i, factors: __m128) {
        self.lanes = _mm_fmadd_ps(_mm_permute_ps::<LANE>(factors), _mm_cvtepi32_ps(lanes), self.lanes);
    }

    /// Adds a pair of blocks: `weight_scales` from [`Format::scales_pair`], prepared codes,
    /// the activations at `values` (64) and their block scales at `scales` (2).
    ///
    /// # Safety
    /// `values` must point to 64 readable elements and `scales` to two block scales.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn add_pair<F: Format, W: Width>(
        &mut self,
        weight_scales: __m128,
        codes: (W::Codes, W::Codes),
        values: *const W::Element,
        scales: *const [f32; 2],
    ) {
        // SAFETY: the caller guarantees two block scales (16 bytes); the load is unaligned.
        let activation_scales = unsafe { _mm_loadu_ps(scales.cast()) };
        let factors = _mm_mul_ps(weight_scales, activation_scales);
        if F::MINIMUM {
            self.minimums = _mm_fmadd_ps(weight_scales, activation_scales, self.minimums);
        }
        // SAFETY: the caller guarantees 64 readable elements: 32 for each block.
        let (first, second) =
            unsafe { (W::lanes::<F>(codes.0, values), W::lanes::<F>(codes.1, values.add(32))) };
        self.add_lanes::<0b00_00_00_00>(first, factors);
        self.add_lanes::<0b10_10_10_10>(second, factors);
    }

    /// Adds one block (the last of an odd count, so an even block).
    ///
    /// # Safety
    /// `values` must point to 32 readable elements and `scales` to one block scale.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn add_one<F: Format, W: Width>(
        &mut self,
        weight_scales: __m128,
        codes: W::Codes,
        values: *const W::Element,
        scales: *const [f32; 2],
    ) {
        // SAFETY: the caller guarantees one block scale.
        let [scale, scaled_sum] = unsafe { scales.read() };
        let activation_scales = _mm_setr_ps(scale, scaled_sum, 0.0, 0.0);
        let factors = _mm_mul_ps(weight_scales, activation_scales);
        if F::MINIMUM {
            // Only lanes 0 and 1 change, so the odd blocks' lane 3 keeps its exact bits.
            let sums = _mm_fmadd_ps(weight_scales, activation_scales, self.minimums);
            self.minimums = _mm_blend_ps::<0b0011>(self.minimums, sums);
        }
        // SAFETY: the caller guarantees 32 readable elements.
        let lanes = unsafe { W::lanes::<F>(codes, values) };
        self.add_lanes::<0b00_00_00_00>(lanes, factors);
    }
}

/// How far ahead of the block being read the weight loops ask for a row's bytes. Without
/// it, one thread's decode spent most of its time waiting on weight loads from DRAM (the
/// hardware prefetchers did not keep up); 1536 bytes measured best (docs/BENCHMARKS.md).
const PREFETCH_AHEAD: usize = 1536;

/// Asks for the cache line [`PREFETCH_AHEAD`] bytes past `address` to be brought into L1.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn prefetch_ahead(address: *const u8) {
    // A prefetch is a hint: it reads nothing architecturally and never faults, whatever the
    // address (past a matrix's end too); `wrapping_add` keeps the pointer arithmetic defined.
    _mm_prefetch::<_MM_HINT_T0>(address.wrapping_add(PREFETCH_AHEAD).cast())
}

/// Whole blocks that a row of `row_bytes` and the activations `x` both cover.
fn common_blocks<T>(row_bytes: usize, block_bytes: usize, x: &Quantized<'_, T>) -> usize {
    (row_bytes / block_bytes).min(x.values.len() / BLOCK_VALUES).min(x.block_scales.len())
}

/// Dot product of a row of `F` blocks with activations of width `W`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn dot_integer<F: Format, W: Width>(row: &[u8], x: Quantized<'_, W::Element>) -> f32 {
    let blocks = common_blocks(row.len(), F::BLOCK_BYTES, &x);
    let pairs = blocks / 2;
    let mut sums = Sums::new();
    let row_pairs = row[..pairs * 2 * F::BLOCK_BYTES].chunks_exact(2 * F::BLOCK_BYTES);
    let value_pairs = x.values[..pairs * 2 * BLOCK_VALUES].chunks_exact(2 * BLOCK_VALUES);
    let scale_pairs = x.block_scales[..pairs * 2].chunks_exact(2);
    for ((pair, values), scales) in row_pairs.zip(value_pairs).zip(scale_pairs) {
        // SAFETY: `chunks_exact` gives `pair` 2 × BLOCK_BYTES bytes, `values` 64 elements
        // and `scales` two block scales.
        unsafe {
            prefetch_ahead(pair.as_ptr());
            let weight_scales = F::scales_pair(pair.as_ptr());
            let codes = (
                W::prepare::<F>(F::codes(pair.as_ptr())),
                W::prepare::<F>(F::codes(pair.as_ptr().add(F::BLOCK_BYTES))),
            );
            sums.add_pair::<F, W>(weight_scales, codes, values.as_ptr(), scales.as_ptr());
        }
    }
    if blocks % 2 == 1 {
        let last = blocks - 1;
        let block = &row[last * F::BLOCK_BYTES..blocks * F::BLOCK_BYTES];
        let values = &x.values[last * BLOCK_VALUES..blocks * BLOCK_VALUES];
        // SAFETY: the slices hold one block, its 32 activations and its block scale.
        unsafe {
            let codes = W::prepare::<F>(F::codes(block.as_ptr()));
            sums.add_one::<F, W>(
                F::scales_one(block.as_ptr()),
                codes,
                values.as_ptr(),
                &x.block_scales[last],
            );
        }
    }
    sums.finish::<F>()
}

/// Rows `first ..` of `matrix` dotted with `x` into `out`, one row after another.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn each_row<F: Format, W: Width>(
    matrix: &Matrix<'_>,
    x: Quantized<'_, W::Element>,
    first: usize,
    out: &mut [f32],
) {
    for (index, out) in out.iter_mut().enumerate() {
        *out = dot_integer::<F, W>(matrix.row(first + index), x);
    }
}

// ---------------------------------------------------------------------------------------
// Matrix × N vectors: each pair of weight blocks is loaded and unpacked once, then meets
// every vector.

/// Vectors whose running sums one pass over a row keeps; more vectors take further passes.
const GROUP: usize = 32;

/// Rows `first ..` of `matrix` times the `vectors` vectors of `x` (one after another,
/// `matrix.columns` values each) into `out[r × vectors + j]`; `false` (nothing written) if the
/// activations or a row are shorter than the matrix's columns.
///
/// One vector takes the single-vector loop (the same operations in the same order, with
/// its sums in registers); more take [`rows_times_vectors`] with room for the running sums
/// of 4, 8, 16 or [`GROUP`] vectors, the least that holds them, so that a small batch does
/// not clear and finish room for 32.
#[target_feature(enable = "avx2,f16c,fma")]
fn multi_integer<F: Format, W: Width>(
    matrix: &Matrix<'_>,
    x: Quantized<'_, W::Element>,
    vectors: usize,
    first: usize,
    out: &mut [f32],
) -> bool {
    let blocks = matrix.columns / BLOCK_VALUES;
    let rows = out.len().checked_div(vectors).unwrap_or(0);
    // Rows are all `row_bytes` long, or empty past the data's end: the last one tells.
    let last_fits = |last: usize| matrix.row(last).len() >= blocks * F::BLOCK_BYTES;
    let rows_fit = rows == 0 || first.checked_add(rows - 1).is_some_and(last_fits);
    if x.values.len() < vectors * blocks * BLOCK_VALUES
        || x.block_scales.len() < vectors * blocks
        || !rows_fit
    {
        return false;
    }
    // SAFETY: the checks above are what `rows_times_vectors` requires.
    unsafe {
        match vectors {
            0 => {}
            1 => each_row::<F, W>(matrix, x, first, out),
            2..=4 => rows_times_vectors::<F, W, 4>(matrix, x, vectors, first, out),
            5..=8 => rows_times_vectors::<F, W, 8>(matrix, x, vectors, first, out),
            9..=16 => rows_times_vectors::<F, W, 16>(matrix, x, vectors, first, out),
            _ => rows_times_vectors::<F, W, GROUP>(matrix, x, vectors, first, out),
        }
    }
    true
}

/// [`multi_integer`]'s loop over rows, for `vectors` ≥ 1 vectors taken `ROOM` at a time.
///
/// # Safety
/// Rows `first .. first + out.len() / vectors` of `matrix` hold `matrix.columns / 32`
/// blocks each, and `x` holds that many blocks of values and scales for each of `vectors`
/// vectors; AVX2, F16C and FMA present.
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn rows_times_vectors<F: Format, W: Width, const ROOM: usize>(
    matrix: &Matrix<'_>,
    x: Quantized<'_, W::Element>,
    vectors: usize,
    first: usize,
    out: &mut [f32],
) {
    let blocks = matrix.columns / BLOCK_VALUES;
    for (index, outputs) in out.chunks_exact_mut(vectors).enumerate() {
        let row = matrix.row(first + index);
        for (group, outputs) in outputs.chunks_mut(ROOM).enumerate() {
            let start = group * ROOM * blocks;
            // SAFETY: the caller's promise: the row holds `blocks` blocks, and the group's
            // vectors (`outputs.len()` of them from vector `group × ROOM`) have `blocks`
            // blocks of values and scales each, inside `x`.
            unsafe {
                row_times_group::<F, W, ROOM>(
                    row.as_ptr(),
                    blocks,
                    x.values.as_ptr().add(start * BLOCK_VALUES),
                    x.block_scales.as_ptr().add(start),
                    outputs,
                );
            }
        }
    }
}

/// One row of `blocks` blocks at `row` times `out.len()` (at most `ROOM`) vectors whose
/// values and block scales start at `values` and `scales` (`blocks` blocks per vector), into
/// `out`.
///
/// # Safety
/// `row` must point to `blocks × F::BLOCK_BYTES` readable bytes, `values` to `out.len() ×
/// blocks × 32` readable elements and `scales` to `out.len() × blocks` block scales.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn row_times_group<F: Format, W: Width, const ROOM: usize>(
    row: *const u8,
    blocks: usize,
    values: *const W::Element,
    scales: *const [f32; 2],
    out: &mut [f32],
) {
    let mut group = [Sums::new(); ROOM];
    let group = &mut group[..out.len().min(ROOM)];
    for pair in 0..blocks / 2 {
        let block = 2 * pair;
        // SAFETY: blocks `block` and `block + 1` are inside the row.
        let (weight_scales, codes) = unsafe {
            let address = row.add(block * F::BLOCK_BYTES);
            prefetch_ahead(address);
            let codes =
                (W::prepare::<F>(F::codes(address)), W::prepare::<F>(F::codes(address.add(F::BLOCK_BYTES))));
            (F::scales_pair(address), codes)
        };
        for (vector, sums) in group.iter_mut().enumerate() {
            let at = vector * blocks + block;
            // SAFETY: the vector's blocks `block` and `block + 1` are inside its values and
            // scales.
            unsafe {
                sums.add_pair::<F, W>(weight_scales, codes, values.add(at * BLOCK_VALUES), scales.add(at))
            };
        }
    }
    if blocks % 2 == 1 {
        let block = blocks - 1;
        // SAFETY: block `block` is inside the row.
        let (weight_scales, codes) = unsafe {
            let address = row.add(block * F::BLOCK_BYTES);
            (F::scales_one(address), W::prepare::<F>(F::codes(address)))
        };
        for (vector, sums) in group.iter_mut().enumerate() {
            let at = vector * blocks + block;
            // SAFETY: the vector's block `block` is inside its values and scales.
            unsafe {
                sums.add_one::<F, W>(weight_scales, codes, values.add(at * BLOCK_VALUES), scales.add(at))
            };
        }
    }
    for (sums, out) in group.iter().zip(out) {
        *out = sums.finish::<F>();
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU and the attention vector operations.

/// e^x on eight lanes, the operations of `kernels::exponential` one for one.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn exponential_8(x: __m256) -> __m256 {
    // max_ps/min_ps return their second operand when either is NaN: NaN stays NaN, as in
    // the scalar clamp.
    let clamped =
        _mm256_min_ps(_mm256_set1_ps(EXPONENT_HIGHEST), _mm256_max_ps(_mm256_set1_ps(EXPONENT_LOWEST), x));
    let shifter = _mm256_set1_ps(ROUNDING_SHIFTER);
    let shifted = _mm256_fmadd_ps(clamped, _mm256_set1_ps(LOG2_E), shifter);
    let whole = _mm256_sub_ps(shifted, shifter);
    let reduced = _mm256_fnmadd_ps(whole, _mm256_set1_ps(LN_2_HIGH), clamped);
    let reduced = _mm256_fnmadd_ps(whole, _mm256_set1_ps(LN_2_LOW), reduced);
    let mut polynomial = _mm256_set1_ps(EXPONENTIAL_COEFFICIENTS[0]);
    for coefficient in &EXPONENTIAL_COEFFICIENTS[1..] {
        polynomial = _mm256_fmadd_ps(polynomial, reduced, _mm256_set1_ps(*coefficient));
    }
    let exponent =
        _mm256_add_epi32(_mm256_slli_epi32::<23>(_mm256_castps_si256(shifted)), _mm256_set1_epi32(127 << 23));
    let result = _mm256_mul_ps(polynomial, _mm256_castsi256_ps(exponent));
    // Infinity above the range (the ordered comparison is false for NaN, which stays NaN).
    let above = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXPONENT_HIGHEST));
    _mm256_blendv_ps(result, _mm256_set1_ps(f32::INFINITY), above)
}

/// `gate = silu(gate) × up`, as `kernels::swiglu`; always `true` (done).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn swiglu(gate: &mut [f32], up: &[f32]) -> bool {
    let length = gate.len().min(up.len());
    let (gate, up) = (&mut gate[..length], &up[..length]);
    let mut gate_groups = gate.chunks_exact_mut(8);
    let mut up_groups = up.chunks_exact(8);
    for (gates, ups) in (&mut gate_groups).zip(&mut up_groups) {
        // SAFETY: `chunks_exact` gives eight floats in each; the loads and the store are
        // unaligned.
        unsafe {
            let values = _mm256_loadu_ps(gates.as_ptr());
            let negated = _mm256_xor_ps(values, _mm256_set1_ps(-0.0));
            let silu = _mm256_div_ps(values, _mm256_add_ps(_mm256_set1_ps(1.0), exponential_8(negated)));
            _mm256_storeu_ps(gates.as_mut_ptr(), _mm256_mul_ps(silu, _mm256_loadu_ps(ups.as_ptr())));
        }
    }
    for (gate, up) in gate_groups.into_remainder().iter_mut().zip(up_groups.remainder()) {
        *gate = *gate / (1.0 + exponential(-*gate)) * up;
    }
    true
}

/// `a × b + c` rounded once, by the FMA unit.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn fused(a: f32, b: f32, c: f32) -> f32 {
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
}

/// Dot product of two float vectors, as `kernels::dot_floats`; always `Some`.
#[target_feature(enable = "avx2,f16c,fma")]
pub fn dot_floats(a: &[f32], b: &[f32]) -> Option<f32> {
    let mut lanes = _mm256_setzero_ps();
    let mut a_groups = a.chunks_exact(8);
    let mut b_groups = b.chunks_exact(8);
    for (a_group, b_group) in (&mut a_groups).zip(&mut b_groups) {
        // SAFETY: `chunks_exact` gives eight floats in each; the loads are unaligned.
        let (a, b) = unsafe { (_mm256_loadu_ps(a_group.as_ptr()), _mm256_loadu_ps(b_group.as_ptr())) };
        lanes = _mm256_fmadd_ps(a, b, lanes);
    }
    let mut total = reduce(lanes);
    for (a, b) in a_groups.remainder().iter().zip(b_groups.remainder()) {
        total = fused(*a, *b, total);
    }
    Some(total)
}

/// `out[i] = weight × values[i] + out[i]`, fused, as `kernels::add_scaled`; always `true`.
#[target_feature(enable = "avx2,f16c,fma")]
pub fn add_scaled(out: &mut [f32], weight: f32, values: &[f32]) -> bool {
    let mut out_groups = out.chunks_exact_mut(8);
    let mut value_groups = values.chunks_exact(8);
    let weights = _mm256_set1_ps(weight);
    for (outs, values) in (&mut out_groups).zip(&mut value_groups) {
        // SAFETY: `chunks_exact` gives eight floats in each; the loads and the store are
        // unaligned.
        unsafe {
            let sum =
                _mm256_fmadd_ps(weights, _mm256_loadu_ps(values.as_ptr()), _mm256_loadu_ps(outs.as_ptr()));
            _mm256_storeu_ps(outs.as_mut_ptr(), sum);
        }
    }
    for (out, value) in out_groups.into_remainder().iter_mut().zip(value_groups.remainder()) {
        *out = fused(weight, *value, *out);
    }
    true
}

// ---------------------------------------------------------------------------------------
// Float activations (mirroring `kernels::dot_f32` and `kernels::dot_blocks_float`).

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

#[target_feature(enable = "avx2,f16c,fma")]
fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let groups = (row.len() / 32).min(x.len() / 8);
    let mut lanes = _mm256_setzero_ps();
    for group in 0..groups {
        prefetch_ahead(row[group * 32..].as_ptr());
        lanes = _mm256_fmadd_ps(load_f32_bytes(row, group * 32), load_f32(x, group * 8), lanes);
    }
    let mut total = reduce(lanes);
    for (bytes, value) in row[groups * 32..].chunks_exact(4).zip(&x[groups * 8..]) {
        total = fused(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), *value, total);
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
fn float_nibbles(block: &[u8], start: usize) -> (__m128i, __m128i) {
    let packed = load_16(block, start);
    let mask = _mm_set1_epi8(0x0f);
    (_mm_and_si128(packed, mask), _mm_and_si128(_mm_srli_epi16::<4>(packed), mask))
}

#[target_feature(enable = "avx2,f16c,fma")]
fn codes_q4_0(block: &[u8]) -> [__m256; 4] {
    let (low, high) = float_nibbles(block, 2);
    let eight = _mm_set1_epi8(8);
    widen(_mm_sub_epi8(low, eight), _mm_sub_epi8(high, eight), true)
}

#[target_feature(enable = "avx2,f16c,fma")]
fn codes_q4_1(block: &[u8]) -> [__m256; 4] {
    let (low, high) = float_nibbles(block, 4);
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
        prefetch_ahead(block.as_ptr());
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
