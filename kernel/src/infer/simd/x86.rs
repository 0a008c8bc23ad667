//! The AVX2 kernels (x86_64; F16C and FMA beside AVX2): row dot products, the matrix ×
//! N-vectors product, the activation quantizers, SwiGLU and the attention vector operations,
//! each the twin of its scalar kernel in `kernels`, bit for bit.
//!
//! The integer dot products take the weight type and the activation width as type
//! parameters ([`Format`], [`Width`]), chosen once per band of rows; their block loop takes
//! four blocks per step through `chunks_exact`, with no branch or slice check inside, block b
//! going to float lane b mod 4 as the scalar order says, and the last 1 to 3 blocks take one
//! shorter step. Weight scales become f32 with F16C.

#![allow(unsafe_code)]

use core::arch::x86_64::*;

use crate::infer::kernels::{
    BatchInput, EXPONENT_HIGHEST, EXPONENT_LOWEST, EXPONENTIAL_COEFFICIENTS, HeadRows, Input, LN_2_HIGH,
    LN_2_LOW, LOG2_E, Quantized, ROUNDING_SHIFTER, exponential,
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

// The entry points and the loops over rows (`super::row_products`).
row_products!("avx2,f16c,fma");

// ---------------------------------------------------------------------------------------
// Weight formats.

/// The fields of type `T` (`i16` or `i32`) at the start of blocks `0 .. COUNT` from `first`,
/// `block_bytes` apart (each read unaligned); zero for blocks `COUNT .. 4`.
///
/// # Safety
/// `first` must point to `COUNT × block_bytes` readable bytes, and `block_bytes` must be at
/// least the size of `T`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn fields<T: Copy + Default, const COUNT: usize>(first: *const u8, block_bytes: usize) -> [T; 4] {
    let mut fields = [T::default(); 4];
    for (block, field) in fields.iter_mut().enumerate().take(COUNT) {
        // SAFETY: block < COUNT, so the field's bytes lie inside the caller's blocks.
        *field = unsafe { first.add(block * block_bytes).cast::<T>().read_unaligned() };
    }
    fields
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
    /// Whether codes are 4-bit (magnitude at most 15), so that eight products with 8-bit
    /// activations sum within an i16 (8 × 15 × 128 < 2^15).
    const NIBBLES: bool;

    /// The scales `[d0, d1, d2, d3]` and minimums `[m0, m1, m2, m3]` of the `COUNT` (1 to 4)
    /// consecutive blocks from `first`, as f32; 0 in the lanes of blocks `COUNT .. 4`, and
    /// minimums all 0 for formats without.
    ///
    /// # Safety
    /// `first` must point to `COUNT × BLOCK_BYTES` readable bytes; AVX2, F16C and FMA
    /// present.
    unsafe fn scales<const COUNT: usize>(first: *const u8) -> (__m128, __m128);

    /// The block's 32 codes as bytes, in element order.
    ///
    /// # Safety
    /// `block` must point to `BLOCK_BYTES` readable bytes; AVX2, F16C and FMA present.
    unsafe fn codes(block: *const u8) -> __m256i;

    /// The block's 32 codes as i16: elements 0..16, then 16..32.
    ///
    /// # Safety
    /// `block` must point to `BLOCK_BYTES` readable bytes; AVX2, F16C and FMA present.
    unsafe fn wide_codes(block: *const u8) -> [__m256i; 2];
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

/// Sixteen packed bytes at `address` as 32 nibbles in i16 lanes: low nibbles are elements
/// 0..16, high ones 16..32.
///
/// # Safety
/// `address` must point to 16 readable bytes; AVX2 present.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn wide_nibbles(address: *const u8) -> [__m256i; 2] {
    // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
    let copies = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(address.cast()) });
    // Each byte alone in its 16-bit lane (bytes 0..8 from the lower copy, 8..16 from the
    // upper one): a mask then keeps its low nibble, a shift its high one.
    let spread = _mm256_setr_epi8(
        0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7, -1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1,
        14, -1, 15, -1,
    );
    let packed = _mm256_shuffle_epi8(copies, spread);
    [_mm256_and_si256(packed, _mm256_set1_epi16(0x0f)), _mm256_srli_epi16::<4>(packed)]
}

/// The scales of `COUNT` blocks without minimums (an f16 at each block's byte 0) as f32
/// lanes `0 .. COUNT`, the other lanes 0.
///
/// # Safety
/// `first` must point to `COUNT × block_bytes` readable bytes; F16C present.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn scales_only<const COUNT: usize>(first: *const u8, block_bytes: usize) -> (__m128, __m128) {
    // SAFETY: the caller's promise.
    let [d0, d1, d2, d3] = unsafe { fields::<i16, COUNT>(first, block_bytes) };
    (_mm_cvtph_ps(_mm_setr_epi16(d0, d1, d2, d3, 0, 0, 0, 0)), _mm_setzero_ps())
}

impl Format for Q8_0 {
    const BLOCK_BYTES: usize = 34;
    const MINIMUM: bool = false;
    const SIGNED: bool = true;
    const NIBBLES: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales<const COUNT: usize>(first: *const u8) -> (__m128, __m128) {
        // SAFETY: the caller guarantees COUNT blocks of 34 bytes.
        unsafe { scales_only::<COUNT>(first, Self::BLOCK_BYTES) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn codes(block: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 34 readable bytes: 2..34 are read, unaligned.
        unsafe { _mm256_loadu_si256(block.add(2).cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn wide_codes(block: *const u8) -> [__m256i; 2] {
        // SAFETY: the caller guarantees 34 readable bytes: 2..34 are read, unaligned.
        let (low, high) =
            unsafe { (_mm_loadu_si128(block.add(2).cast()), _mm_loadu_si128(block.add(18).cast())) };
        [_mm256_cvtepi8_epi16(low), _mm256_cvtepi8_epi16(high)]
    }
}

impl Format for Q4_0 {
    const BLOCK_BYTES: usize = 18;
    const MINIMUM: bool = false;
    const SIGNED: bool = true;
    const NIBBLES: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales<const COUNT: usize>(first: *const u8) -> (__m128, __m128) {
        // SAFETY: the caller guarantees COUNT blocks of 18 bytes.
        unsafe { scales_only::<COUNT>(first, Self::BLOCK_BYTES) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn codes(block: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 18 readable bytes: 2..18 are read.
        _mm256_sub_epi8(unsafe { nibbles(block.add(2)) }, _mm256_set1_epi8(8))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn wide_codes(block: *const u8) -> [__m256i; 2] {
        // SAFETY: the caller guarantees 18 readable bytes: 2..18 are read.
        let [low, high] = unsafe { wide_nibbles(block.add(2)) };
        let eight = _mm256_set1_epi16(8);
        [_mm256_sub_epi16(low, eight), _mm256_sub_epi16(high, eight)]
    }
}

impl Format for Q4_1 {
    const BLOCK_BYTES: usize = 20;
    const MINIMUM: bool = true;
    const SIGNED: bool = false;
    const NIBBLES: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn scales<const COUNT: usize>(first: *const u8) -> (__m128, __m128) {
        // SAFETY: the caller guarantees COUNT blocks of 20 bytes: 0..4 of each are read.
        let [pair0, pair1, pair2, pair3] = unsafe { fields::<i32, COUNT>(first, Self::BLOCK_BYTES) };
        // f16 [d0, m0, d1, m1, d2, m2, d3, m3] reordered to [d0, d1, d2, d3, m0, m1, m2, m3].
        let order = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
        let halves = _mm_shuffle_epi8(_mm_setr_epi32(pair0, pair1, pair2, pair3), order);
        let floats = _mm256_cvtph_ps(halves);
        (_mm256_castps256_ps128(floats), _mm256_extractf128_ps::<1>(floats))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn codes(block: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 20 readable bytes: 4..20 are read.
        unsafe { nibbles(block.add(4)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn wide_codes(block: *const u8) -> [__m256i; 2] {
        // SAFETY: the caller guarantees 20 readable bytes: 4..20 are read.
        unsafe { wide_nibbles(block.add(4)) }
    }
}

// ---------------------------------------------------------------------------------------
// Activation widths: each block's products in partial sums, then four blocks' exact
// integer totals.

/// The width of quantized activations, as the integer kernels multiply them.
trait Width {
    /// `i8` or `i16`.
    type Element: Copy;
    /// One block's codes made ready for [`Self::products`] (once, for every vector).
    type Codes: Copy;

    /// The codes of a block of `F` at `block`, made ready.
    ///
    /// # Safety
    /// `block` must point to `F::BLOCK_BYTES` readable bytes; AVX2, F16C and FMA present.
    unsafe fn prepare<F: Format>(block: *const u8) -> Self::Codes;

    /// `codes` times the 32 activations at `values`, in partial sums whose total is the
    /// block's integer total (`kernels::block_integer_total`), for [`Self::totals`].
    ///
    /// # Safety
    /// `values` must point to 32 readable elements; AVX2, F16C and FMA present.
    unsafe fn products<F: Format>(codes: Self::Codes, values: *const Self::Element) -> __m256i;

    /// The integer totals `[t0, t1, t2, t3]` of four blocks from their [`Self::products`],
    /// exactly: every partial sum stays below 32 × 128 × 32767 < 2^31 in magnitude.
    ///
    /// # Safety
    /// AVX2, F16C and FMA present.
    unsafe fn totals<F: Format>(products: [__m256i; 4]) -> __m128i;
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
    unsafe fn prepare<F: Format>(block: *const u8) -> Self::Codes {
        // SAFETY: the caller guarantees the block's bytes.
        let codes = unsafe { F::codes(block) };
        if F::SIGNED { (_mm256_sign_epi8(codes, codes), codes) } else { (codes, codes) }
    }

    /// Sixteen i16 lanes, lane q = elements 2q and 2q+1 (at most 2 × 128 × 127: no
    /// saturation, as the activations stay within −127..=127).
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn products<F: Format>((magnitudes, codes): Self::Codes, values: *const i8) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes; the load is unaligned.
        let activations = unsafe { _mm256_loadu_si256(values.cast()) };
        let activations = if F::SIGNED { _mm256_sign_epi8(activations, codes) } else { activations };
        _mm256_maddubs_epi16(magnitudes, activations)
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn totals<F: Format>([pairs0, pairs1, pairs2, pairs3]: [__m256i; 4]) -> __m128i {
        let ones = _mm256_set1_epi16(1);
        if F::NIBBLES {
            // Two rounds of neighbouring i16 sums stay within i16 (eight products, see
            // `Format::NIBBLES`): per 128-bit half, [block 0's two sums, block 1's, block 2's,
            // block 3's]; `madd` then adds each block's two into an i32.
            let quads = (_mm256_hadd_epi16(pairs0, pairs1), _mm256_hadd_epi16(pairs2, pairs3));
            let halves = _mm256_madd_epi16(_mm256_hadd_epi16(quads.0, quads.1), ones);
            _mm_add_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256::<1>(halves))
        } else {
            // Q8_0's pairs come near the i16 limit: `madd` widens them first.
            let widen = |pairs| _mm256_madd_epi16(pairs, ones);
            quad_totals([widen(pairs0), widen(pairs1), widen(pairs2), widen(pairs3)])
        }
    }
}

impl Width for Sixteen {
    type Element = i16;
    /// The codes widened to 16 bits: elements 0..16, then 16..32.
    type Codes = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn prepare<F: Format>(block: *const u8) -> Self::Codes {
        // SAFETY: the caller guarantees the block's bytes.
        unsafe { F::wide_codes(block) }
    }

    /// Eight i32 lanes: lane r = elements 2r, 2r+1 and 16+2r, 17+2r.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn products<F: Format>(codes: Self::Codes, values: *const i16) -> __m256i {
        // SAFETY: the caller guarantees 32 readable i16 (64 bytes); the loads are unaligned.
        let (first, second) =
            unsafe { (_mm256_loadu_si256(values.cast()), _mm256_loadu_si256(values.add(16).cast())) };
        // Each product is at most 128 × 32767 in magnitude.
        _mm256_add_epi32(_mm256_madd_epi16(codes[0], first), _mm256_madd_epi16(codes[1], second))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn totals<F: Format>(products: [__m256i; 4]) -> __m128i {
        quad_totals(products)
    }
}

// ---------------------------------------------------------------------------------------
// Integer dot products (mirroring `kernels::dot_blocks_integer`): block b of a row goes to
// float lane b mod 4, so four consecutive blocks take one vector of each float operation.

/// The integer totals `[t0, t1, t2, t3]` of four blocks from their eight i32 partial sums
/// each.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn quad_totals([sums0, sums1, sums2, sums3]: [__m256i; 4]) -> __m128i {
    // Per 128-bit half: [block 0's lanes 0+1, 2+3, block 1's 0+1, 2+3], likewise 2 and 3,
    // then [block 0, 1, 2, 3] of that half; the two halves then add.
    let halves = _mm256_hadd_epi32(_mm256_hadd_epi32(sums0, sums1), _mm256_hadd_epi32(sums2, sums3));
    _mm_add_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256::<1>(halves))
}

/// The activation scales `[s0, s1, s2, s3]` and scaled sums `[ss0, ss1, ss2, ss3]` of the
/// `COUNT` (1 to 4) blocks whose `[scale, scaled sum]` pairs start at `scales`; 0 in the
/// lanes of blocks `COUNT .. 4`.
///
/// # Safety
/// `scales` must point to `COUNT` readable pairs; AVX2, F16C and FMA present.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn activation_scales<const COUNT: usize>(scales: *const [f32; 2]) -> (__m128, __m128) {
    if COUNT == 4 {
        // SAFETY: four pairs are 32 readable bytes; the load is unaligned.
        let pairs = unsafe { _mm256_loadu_ps(scales.cast()) };
        let split = _mm256_permutevar8x32_ps(pairs, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
        (_mm256_castps256_ps128(split), _mm256_extractf128_ps::<1>(split))
    } else {
        // Pairs 0 and 1 (or pair 0 alone) in `low`, pair 2 in `high`: only the caller's
        // pairs are read, and absent ones are 0.
        // SAFETY: `COUNT` pairs of 8 bytes are readable; the loads are unaligned.
        let (low, high) = unsafe {
            let low = if COUNT >= 2 {
                _mm_loadu_ps(scales.cast())
            } else {
                _mm_castsi128_ps(_mm_loadu_si64(scales.cast()))
            };
            let high = if COUNT == 3 {
                _mm_castsi128_ps(_mm_loadu_si64(scales.add(2).cast()))
            } else {
                _mm_setzero_ps()
            };
            (low, high)
        };
        (_mm_shuffle_ps::<0b10_00_10_00>(low, high), _mm_shuffle_ps::<0b11_01_11_01>(low, high))
    }
}

/// Up to four consecutive blocks of a row, unpacked once for every vector they meet.
struct Blocks<W: Width> {
    /// Each block's prepared codes (past the blocks present, copies of block 0's).
    codes: [W::Codes; 4],
    /// `[d0, d1, d2, d3]`, 0 past the blocks present.
    scales: __m128,
    /// Q4_1's `[m0, m1, m2, m3]`, 0 past the blocks present.
    minimums: __m128,
}

impl<W: Width> Blocks<W> {
    /// The `COUNT` (1 to 4) blocks of format `F` from `first`.
    ///
    /// # Safety
    /// `first` must point to `COUNT × F::BLOCK_BYTES` readable bytes; AVX2, F16C and FMA
    /// present.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn load<F: Format, const COUNT: usize>(first: *const u8) -> Self {
        // SAFETY: the caller's promise: the blocks read are those below COUNT.
        unsafe {
            let mut codes = [W::prepare::<F>(first); 4];
            for (block, codes) in codes.iter_mut().enumerate().take(COUNT) {
                *codes = W::prepare::<F>(first.add(block * F::BLOCK_BYTES));
            }
            let (scales, minimums) = F::scales::<COUNT>(first);
            Self { codes, scales, minimums }
        }
    }

    /// `accumulator` plus the `COUNT` blocks dotted with one vector's blocks, whose values
    /// start at `values` and `[scale, scaled sum]` pairs at `scales`: lane b takes
    /// `fma(d_b × s_b, t_b, lane)`, then for Q4_1 `fma(m_b, ss_b, lane)`, as the scalar
    /// order says. Lanes `COUNT .. 4` (whose totals repeat block 0's, finite) add `0 × total`
    /// and `0 × 0`, which leave them bit for bit as they were (they are never −0).
    ///
    /// # Safety
    /// `values` must point to `COUNT × 32` readable elements and `scales` to `COUNT` pairs;
    /// AVX2, F16C and FMA present.
    #[inline]
    #[target_feature(enable = "avx2,f16c,fma")]
    unsafe fn add_to<F: Format, const COUNT: usize>(
        &self,
        accumulator: __m128,
        values: *const W::Element,
        scales: *const [f32; 2],
    ) -> __m128 {
        // SAFETY: block 0 is present (COUNT ≥ 1), and its 32 values are the caller's.
        let mut products = [unsafe { W::products::<F>(self.codes[0], values) }; 4];
        for (block, products) in products.iter_mut().enumerate().take(COUNT) {
            // SAFETY: block < COUNT, so its 32 values are inside the caller's.
            *products = unsafe { W::products::<F>(self.codes[block], values.add(block * BLOCK_VALUES)) };
        }
        // SAFETY: AVX2 is present.
        let totals = _mm_cvtepi32_ps(unsafe { W::totals::<F>(products) });
        // SAFETY: the caller guarantees COUNT pairs.
        let (activation_scales, scaled_sums) = unsafe { activation_scales::<COUNT>(scales) };
        let accumulator = _mm_fmadd_ps(_mm_mul_ps(self.scales, activation_scales), totals, accumulator);
        if F::MINIMUM { _mm_fmadd_ps(self.minimums, scaled_sums, accumulator) } else { accumulator }
    }
}

/// The dot product from its four lanes: (lane 0 + lane 2) + (lane 1 + lane 3), as
/// `kernels::reduce_quad`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn finish(lanes: __m128) -> f32 {
    let halves = _mm_add_ps(lanes, _mm_movehl_ps(lanes, lanes));
    _mm_cvtss_f32(_mm_add_ss(halves, _mm_movehdup_ps(halves)))
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

/// [`prefetch_ahead`] for four blocks of `F` from `first`: one line per 64 bytes of them,
/// so that consecutive steps leave no line unasked.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn prefetch_four<F: Format>(first: *const u8) {
    for line in 0..(4 * F::BLOCK_BYTES).div_ceil(64) {
        prefetch_ahead(first.wrapping_add(line * 64));
    }
}

/// `accumulator` plus the last `count` (0 to 3) blocks of a row, from `first`, dotted with
/// the vector's values and scales from `values` and `scales`.
///
/// # Safety
/// `first` must point to `count` blocks, `values` to `count × 32` elements and `scales` to
/// `count` pairs, all readable; AVX2, F16C and FMA present.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn add_last<F: Format, W: Width>(
    accumulator: __m128,
    count: usize,
    first: *const u8,
    values: *const W::Element,
    scales: *const [f32; 2],
) -> __m128 {
    // SAFETY: each arm reads `count` blocks, as the caller allows.
    unsafe {
        match count {
            1 => Blocks::<W>::load::<F, 1>(first).add_to::<F, 1>(accumulator, values, scales),
            2 => Blocks::<W>::load::<F, 2>(first).add_to::<F, 2>(accumulator, values, scales),
            3 => Blocks::<W>::load::<F, 3>(first).add_to::<F, 3>(accumulator, values, scales),
            _ => accumulator,
        }
    }
}

/// Dot product of a row of `F` blocks with activations of width `W`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn dot_integer<F: Format, W: Width>(row: &[u8], x: Quantized<'_, W::Element>) -> f32 {
    let blocks = common_blocks(row.len(), F::BLOCK_BYTES, &x);
    let whole = blocks - blocks % 4;
    let mut accumulator = _mm_setzero_ps();
    let row_steps = row[..whole * F::BLOCK_BYTES].chunks_exact(4 * F::BLOCK_BYTES);
    let value_steps = x.values[..whole * BLOCK_VALUES].chunks_exact(4 * BLOCK_VALUES);
    let scale_steps = x.block_scales[..whole].chunks_exact(4);
    for ((step, values), scales) in row_steps.zip(value_steps).zip(scale_steps) {
        prefetch_four::<F>(step.as_ptr());
        // SAFETY: `chunks_exact` gives `step` 4 × BLOCK_BYTES bytes, `values` 128 elements
        // and `scales` four pairs.
        accumulator = unsafe {
            Blocks::<W>::load::<F, 4>(step.as_ptr()).add_to::<F, 4>(
                accumulator,
                values.as_ptr(),
                scales.as_ptr(),
            )
        };
    }
    let (last, values) =
        (&row[whole * F::BLOCK_BYTES..blocks * F::BLOCK_BYTES], &x.values[whole * BLOCK_VALUES..]);
    // SAFETY: `last` holds the `blocks − whole` last blocks, and the vector has their values
    // and scales past `whole` (`blocks` is at most its block count).
    unsafe {
        let scales = x.block_scales[whole..].as_ptr();
        accumulator = add_last::<F, W>(accumulator, blocks - whole, last.as_ptr(), values.as_ptr(), scales);
    }
    finish(accumulator)
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
    let mut group = [_mm_setzero_ps(); ROOM];
    let group = &mut group[..out.len().min(ROOM)];
    let whole = blocks - blocks % 4;
    for block in (0..whole).step_by(4) {
        // SAFETY: blocks `block .. block + 4` are inside the row, and inside each vector's
        // values and scales.
        unsafe {
            let address = row.add(block * F::BLOCK_BYTES);
            prefetch_four::<F>(address);
            let four = Blocks::<W>::load::<F, 4>(address);
            for (vector, accumulator) in group.iter_mut().enumerate() {
                let at = vector * blocks + block;
                *accumulator =
                    four.add_to::<F, 4>(*accumulator, values.add(at * BLOCK_VALUES), scales.add(at));
            }
        }
    }
    // SAFETY: blocks `whole .. blocks` are the row's last ones, and each vector's.
    unsafe {
        match blocks - whole {
            1 => last_times_group::<F, W, 1>(row, blocks, values, scales, group),
            2 => last_times_group::<F, W, 2>(row, blocks, values, scales, group),
            3 => last_times_group::<F, W, 3>(row, blocks, values, scales, group),
            _ => {}
        }
    }
    for (accumulator, out) in group.iter().zip(out) {
        *out = finish(*accumulator);
    }
}

/// The last `COUNT` (1 to 3) blocks of a row of `blocks` blocks at `row` added to the
/// accumulators of `group`'s vectors, laid out as [`row_times_group`] says.
///
/// # Safety
/// As [`row_times_group`], for `group.len()` vectors, with `COUNT` ≤ `blocks`.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn last_times_group<F: Format, W: Width, const COUNT: usize>(
    row: *const u8,
    blocks: usize,
    values: *const W::Element,
    scales: *const [f32; 2],
    group: &mut [__m128],
) {
    let block = blocks - COUNT;
    // SAFETY: blocks `block .. blocks` are inside the row, and inside each vector's values
    // and scales.
    unsafe {
        let last = Blocks::<W>::load::<F, COUNT>(row.add(block * F::BLOCK_BYTES));
        for (vector, accumulator) in group.iter_mut().enumerate() {
            let at = vector * blocks + block;
            *accumulator =
                last.add_to::<F, COUNT>(*accumulator, values.add(at * BLOCK_VALUES), scales.add(at));
        }
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

/// In-place softmax, as `kernels::softmax`; always `true` (done).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn softmax(values: &mut [f32]) -> bool {
    // `max_ps` returns its second operand when the first is NaN: the running maximum (never
    // NaN) is kept, as `f32::max` ignores a NaN; the maximum does not depend on order.
    let mut maximum = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut groups = values.chunks_exact(8);
    for group in &mut groups {
        maximum = _mm256_max_ps(load_f32(group, 0), maximum);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` is eight writable floats; the store is unaligned.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), maximum) };
    let maximum =
        lanes.iter().chain(groups.remainder()).fold(f32::NEG_INFINITY, |maximum, value| maximum.max(*value));
    let mut sums = _mm256_setzero_ps();
    let mut groups = values.chunks_exact_mut(8);
    for group in &mut groups {
        let exponentials = exponential_8(_mm256_sub_ps(load_f32(group, 0), _mm256_set1_ps(maximum)));
        // SAFETY: `chunks_exact_mut` gives eight writable floats; the store is unaligned.
        unsafe { _mm256_storeu_ps(group.as_mut_ptr(), exponentials) };
        sums = _mm256_add_ps(sums, exponentials);
    }
    let mut sum = reduce(sums);
    for value in groups.into_remainder() {
        *value = exponential(*value - maximum);
        sum += *value;
    }
    let mut groups = values.chunks_exact_mut(8);
    for group in &mut groups {
        let quotients = _mm256_div_ps(load_f32(group, 0), _mm256_set1_ps(sum));
        // SAFETY: `chunks_exact_mut` gives eight writable floats; the store is unaligned.
        unsafe { _mm256_storeu_ps(group.as_mut_ptr(), quotients) };
    }
    groups.into_remainder().iter_mut().for_each(|value| *value /= sum);
    true
}

/// One attention head's scores, as `matmul::attention_scores_by_position`, for a query of
/// `GROUPS` × 8 values (the dispatcher in `simd/mod.rs` picks `GROUPS` from its length),
/// loaded once: each position's dot product is [`dot_floats`]'s (the same eight lanes, fused,
/// and the same reduction). Always `true` (done).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn scores_with_query_held<'k, const GROUPS: usize>(
    query: &[f32],
    keys: &HeadRows<'k, impl Fn(usize) -> &'k [f32]>,
    scale: f32,
    scores: &mut [f32],
) -> bool {
    debug_assert_eq!(query.len(), 8 * GROUPS, "the dispatcher picks GROUPS from the query");
    let mut held = [_mm256_setzero_ps(); GROUPS];
    for (group, values) in held.iter_mut().zip(query.chunks_exact(8)) {
        // SAFETY: `chunks_exact` gives eight floats; the load is unaligned.
        *group = unsafe { _mm256_loadu_ps(values.as_ptr()) };
    }
    let score_of = |key: &[f32]| {
        if key.len() < 8 * GROUPS {
            // A short key (no store hands one out): the dot product over what there is.
            return dot_floats(query, key).unwrap_or_default() * scale;
        }
        let mut lanes = _mm256_setzero_ps();
        for (group, query) in held.iter().enumerate() {
            // SAFETY: the key holds at least 8 × GROUPS floats, checked above; the load is
            // unaligned.
            lanes = _mm256_fmadd_ps(*query, unsafe { _mm256_loadu_ps(key.as_ptr().add(8 * group)) }, lanes);
        }
        reduce(lanes) * scale
    };
    let (count, mut position) = (scores.len(), 0);
    while position < count {
        let (run, rows) = keys.run_at(position, count);
        if rows == 0 {
            scores[position] = score_of(keys.part(run));
            position += 1;
            continue;
        }
        for (score, row) in
            scores[position..position + rows].iter_mut().zip(run.chunks_exact(keys.stride.max(1)))
        {
            *score = score_of(keys.part(row));
        }
        position += rows;
    }
    true
}

/// One attention head's output, as `matmul::accumulate_values_by_position`, for `GROUPS` × 8
/// outputs (the dispatcher picks `GROUPS` from `out`'s length) held in registers: each
/// position adds its weighted values as [`add_scaled`] does (one fused multiply-add per value,
/// from zero). Always `true` (done).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn values_with_sums_held<'v, const GROUPS: usize>(
    weights: &[f32],
    values: &HeadRows<'v, impl Fn(usize) -> &'v [f32]>,
    out: &mut [f32],
) -> bool {
    debug_assert_eq!(out.len(), 8 * GROUPS, "the dispatcher picks GROUPS from the output");
    let store = |sums: &[__m256; GROUPS], out: &mut [f32]| {
        for (sum, outs) in sums.iter().zip(out.chunks_exact_mut(8)) {
            // SAFETY: `chunks_exact_mut` gives eight floats; the store is unaligned.
            unsafe { _mm256_storeu_ps(outs.as_mut_ptr(), *sum) };
        }
    };
    let mut sums = [_mm256_setzero_ps(); GROUPS];
    let mut add_row = |sums: &mut [__m256; GROUPS], weight: f32, row: &[f32]| {
        if row.len() < 8 * GROUPS {
            // A short row (no store hands one out): its values added through memory.
            store(sums, out);
            add_scaled(out, weight, row);
            for (sum, outs) in sums.iter_mut().zip(out.chunks_exact(8)) {
                *sum = load_f32(outs, 0);
            }
            return;
        }
        let weight = _mm256_set1_ps(weight);
        for (octet, sum) in sums.iter_mut().enumerate() {
            // SAFETY: the row holds at least 8 × GROUPS floats, checked above; the load is
            // unaligned.
            *sum = _mm256_fmadd_ps(weight, unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * octet)) }, *sum);
        }
    };
    let (count, mut position) = (weights.len(), 0);
    while position < count {
        let (run, rows) = values.run_at(position, count);
        if rows == 0 {
            add_row(&mut sums, weights[position], values.part(run));
            position += 1;
            continue;
        }
        for (&weight, row) in
            weights[position..position + rows].iter().zip(run.chunks_exact(values.stride.max(1)))
        {
            add_row(&mut sums, weight, values.part(row));
        }
        position += rows;
    }
    store(&sums, out);
    true
}

// ---------------------------------------------------------------------------------------
// Activation quantization (mirroring `kernels::ScalarBlocks`): each value times the block's
// inverse scale, rounded half away from zero, saturated and narrowed, as
// `roundf(value) as i8/i16` gives it.

/// The largest magnitude a quantized value of type `T` takes (127 or 32767) and the type's
/// lowest value (−128 or −32768), both as f32.
fn range_of<T>() -> (f32, f32) {
    if core::mem::size_of::<T>() == 1 { (127.0, -128.0) } else { (32767.0, -32768.0) }
}

/// Eight lanes of `value` with the sign bit cleared (NaN stays NaN).
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn magnitudes(value: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), value)
}

/// The largest magnitude of `values` and 0.0, NaN lanes ignored: `f32::max` of the
/// magnitudes folded from 0.0, as `kernels::quantize_blocks` computes a block's maximum. The
/// magnitudes are never −0.0 and the running lanes never NaN (`max_ps` gives its second
/// operand, the running lane, when either is NaN), so the order of the lanes changes nothing.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn largest_magnitude(values: [__m256; 4]) -> f32 {
    let lanes =
        values.iter().fold(_mm256_setzero_ps(), |lanes, value| _mm256_max_ps(magnitudes(*value), lanes));
    let quad = _mm_max_ps(_mm256_castps256_ps128(lanes), _mm256_extractf128_ps::<1>(lanes));
    let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_max_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
}

/// `roundf(value) as T` on eight lanes, as i32, for the type whose range `range_of` gives as
/// `(highest, lowest)`.
///
/// Rounding: `trunc(value)` and the part it drops (`value − trunc(value)`, exact for every
/// finite f32: it is the bits of `value` below the units); a dropped part of magnitude ≥ 0.5
/// moves the truncated value one away from zero (exact: such values are below 2^23 in
/// magnitude). Infinity keeps its truncation (the dropped part is NaN, which compares
/// false). Then NaN becomes 0 and the rest is clamped to the type's range, which is what the
/// saturating cast does; the clamped values are integers, so the conversion is exact.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn round_to_range(value: __m256, highest: __m256, lowest: __m256) -> __m256i {
    let truncated = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(value);
    let dropped = magnitudes(_mm256_sub_ps(value, truncated));
    let away = _mm256_cmp_ps::<_CMP_GE_OQ>(dropped, _mm256_set1_ps(0.5));
    let sign = _mm256_and_ps(value, _mm256_set1_ps(-0.0));
    let step = _mm256_and_ps(away, _mm256_or_ps(_mm256_set1_ps(1.0), sign));
    let rounded = _mm256_add_ps(truncated, step);
    // max_ps/min_ps give their second operand when either is NaN: NaN lanes stay NaN here,
    // then the ordered mask makes them 0.
    let clamped = _mm256_min_ps(highest, _mm256_max_ps(lowest, rounded));
    let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(value, value);
    _mm256_cvttps_epi32(_mm256_and_ps(clamped, ordered))
}

/// One block of 32 values quantized to type `T`: the values as i32 (already in `T`'s range),
/// elements 0..8, 8..16, 16..24 and 24..32, and the block's `[scale, scaled sum]`, as
/// `kernels::quantize_blocks` computes them: the largest magnitude, `scale = maximum /
/// largest`, `inverse = largest / maximum` (0 for a block without a positive maximum), the
/// values times `inverse` rounded as `roundf` and cast, and the scale times the values' exact
/// integer total.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
fn quantize_block<T>(block: &[f32]) -> ([__m256i; 4], [f32; 2]) {
    let (largest, lowest) = range_of::<T>();
    let values: [__m256; 4] = core::array::from_fn(|group| load_f32(block, group * 8));
    let maximum = largest_magnitude(values);
    let scale = maximum / largest;
    let inverse = if maximum > 0.0 { largest / maximum } else { 0.0 };
    let (inverses, highest, lowest) =
        (_mm256_set1_ps(inverse), _mm256_set1_ps(largest), _mm256_set1_ps(lowest));
    let rounded = values.map(|value| round_to_range(_mm256_mul_ps(value, inverses), highest, lowest));
    let sums =
        _mm256_add_epi32(_mm256_add_epi32(rounded[0], rounded[1]), _mm256_add_epi32(rounded[2], rounded[3]));
    let quad = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256::<1>(sums));
    let pair = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
    let total = _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair)));
    (rounded, [scale, scale * total as f32])
}

/// `kernels::ScalarBlocks::int16` on AVX2: the whole blocks that `x`, `out` and
/// `block_scales` all hold; always `true` (done).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn quantize_int16(x: &[f32], out: &mut [i16], block_scales: &mut [[f32; 2]]) -> bool {
    let blocks = x.chunks_exact(BLOCK_VALUES).zip(out.chunks_exact_mut(BLOCK_VALUES));
    for ((block, out), block_scale) in blocks.zip(block_scales) {
        let ([first, second, third, fourth], pair) = quantize_block::<i16>(block);
        // `packs` works within 128-bit halves: the 64-bit quarters come out as elements
        // 0..4, 8..12, 4..8, 12..16, which the permutation puts back in order. The values
        // are in range already, so its saturation changes nothing.
        let order = |packed: __m256i| _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
        let (low, high) =
            (order(_mm256_packs_epi32(first, second)), order(_mm256_packs_epi32(third, fourth)));
        // SAFETY: `chunks_exact_mut` gives `out` 32 writable i16 (64 bytes): the two unaligned
        // stores write bytes 0..32 and 32..64.
        unsafe {
            _mm256_storeu_si256(out.as_mut_ptr().cast(), low);
            _mm256_storeu_si256(out.as_mut_ptr().add(16).cast(), high);
        }
        *block_scale = pair;
    }
    true
}

/// `kernels::ScalarBlocks::int8` on AVX2: the whole blocks that `x`, `out` and
/// `block_scales` all hold; always `true` (done).
#[target_feature(enable = "avx2,f16c,fma")]
pub fn quantize_int8(x: &[f32], out: &mut [i8], block_scales: &mut [[f32; 2]]) -> bool {
    let blocks = x.chunks_exact(BLOCK_VALUES).zip(out.chunks_exact_mut(BLOCK_VALUES));
    for ((block, out), block_scale) in blocks.zip(block_scales) {
        let ([first, second, third, fourth], pair) = quantize_block::<i8>(block);
        // Within 128-bit halves, two `packs` leave the 32-bit quarters as elements 0..4,
        // 8..12, 16..20, 24..28, 4..8, 12..16, 20..24, 28..32; the permutation puts them back
        // in order. The values are in range already, so neither saturation changes anything.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(first, second), _mm256_packs_epi32(third, fourth));
        let bytes = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `chunks_exact_mut` gives `out` 32 writable bytes, which the unaligned store
        // writes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), bytes) };
        *block_scale = pair;
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

#[cfg(test)]
mod tests {
    //! The integer paths at every step length: 1 to 19 blocks (whole steps of four, then
    //! tails of 1, 2 or 3 blocks; 18 blocks is a 576-column row), single vector and batched.

    use crate::infer::Precision;
    use crate::infer::kernels::{QuantizedRows, dot_scalar, rows_multi_scalar};
    use crate::infer::simd;
    use crate::model::quant::quantize;
    use crate::model::{Matrix, TensorType};
    use crate::rand::SplitMix64;
    use alloc::vec;
    use alloc::vec::Vec;

    /// `rows` rows of `columns` of `tensor_type`, their codes then overwritten with random
    /// bytes so that every code value occurs (the scales stay the quantizer's).
    fn random_rows(random: &mut SplitMix64, tensor_type: TensorType, rows: usize, columns: usize) -> Vec<u8> {
        let values: Vec<f32> = (0..rows * columns).map(|_| random.next_f32() * 4.0 - 2.0).collect();
        let mut bytes = Vec::new();
        quantize(tensor_type, &values, &mut bytes);
        let (block_bytes, header) = match tensor_type {
            TensorType::Q8_0 => (34, 2),
            TensorType::Q4_0 => (18, 2),
            _ => (20, 4),
        };
        for block in bytes.chunks_exact_mut(block_bytes) {
            for code in &mut block[header..] {
                *code = random.next_u64() as u8;
            }
        }
        bytes
    }

    #[test]
    fn every_step_length_gives_the_scalar_bits() {
        assert_eq!(simd::instruction_set(), Some("AVX2"), "the AVX2 paths go untested");
        let mut random = SplitMix64::new(576);
        let rows = 3;
        for blocks in 1..=19 {
            let columns = 32 * blocks;
            for tensor_type in [TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1] {
                let data = random_rows(&mut random, tensor_type, rows, columns);
                let matrix = Matrix { tensor_type, rows, columns, data: &data };
                for precision in [Precision::Int8, Precision::Int16] {
                    for vectors in [1, 5] {
                        let x: Vec<f32> =
                            (0..vectors * columns).map(|_| random.next_f32() * 6.0 - 3.0).collect();
                        let mut prepared = QuantizedRows::with_capacity(vectors, columns, precision);
                        let input = prepared.quantize(&x, columns).expect("the shapes fit");
                        let what = (blocks, tensor_type, precision, vectors);
                        let mut expected = vec![0.0f32; rows * vectors];
                        rows_multi_scalar(&matrix, input, 0, &mut expected);
                        let mut batched = vec![f32::NAN; rows * vectors];
                        assert!(
                            simd::rows_multi(&matrix, input, 0, &mut batched),
                            "{what:?} has an AVX2 path"
                        );
                        for (index, (simd, scalar)) in batched.iter().zip(&expected).enumerate() {
                            assert_eq!(simd.to_bits(), scalar.to_bits(), "{what:?}, output {index}");
                        }
                        for vector in 0..vectors {
                            let single = input.input(vector, tensor_type).expect("a vector of the batch");
                            for row in 0..rows {
                                let scalar = dot_scalar(tensor_type, matrix.row(row), single);
                                assert_eq!(scalar.to_bits(), expected[row * vectors + vector].to_bits());
                                let simd = simd::dot(tensor_type, matrix.row(row), single);
                                assert_eq!(
                                    simd.map(f32::to_bits),
                                    Some(scalar.to_bits()),
                                    "{what:?}, row {row}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
