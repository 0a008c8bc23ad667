//! The NEON kernels (aarch64): row dot products, the matrix × N-vectors product, SwiGLU and
//! the attention vector operations, each the twin of its scalar kernel in `kernels`, bit for
//! bit.
//!
//! The integer dot products take the weight type and the activation width as type
//! parameters ([`Format`], [`Width`]), chosen once per band of rows; their block loop takes
//! two blocks per step through `chunks_exact`, with no branch or slice check inside. Weight
//! scales become f32 with the hardware's `fcvtl`, in the same assembly block as the loads.
//!
//! Loads and stores are inline assembly, not `vld1q_*`: the `aarch64-unknown-none` target
//! builds with `+strict-align`, where LLVM splits a 128-bit access it cannot prove 16-byte
//! aligned into one access per element. The core itself allows unaligned access to normal
//! memory (SCTLR_ELx.A is clear: Tessera's MMU setup leaves it so, as Linux does), so
//! `ldr`/`ldp`/`ld1` at any address inside the slice read correctly.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::infer::kernels::{BatchInput, Input, Quantized, exponential};
use crate::model::quant::BLOCK_VALUES;
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

/// One row's dot product; `None` when this combination has no NEON path.
#[target_feature(enable = "neon")]
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
#[target_feature(enable = "neon")]
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
// Loads.

/// Sixteen bytes at `address`.
///
/// # Safety
/// `address` must point to 16 readable bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_16(address: *const u8) -> uint8x16_t {
    let value: uint8x16_t;
    // SAFETY: the caller guarantees 16 readable bytes; the load only reads them and writes
    // the output register (unaligned access is allowed, see the module notes).
    unsafe {
        asm!(
            "ldr {value:q}, [{address}]",
            value = out(vreg) value,
            address = in(reg) address,
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

/// Four floats at `address`.
///
/// # Safety
/// `address` must point to 4 readable floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_4_f32(address: *const f32) -> float32x4_t {
    let value: float32x4_t;
    // SAFETY: the caller guarantees 16 readable bytes; `ld1` only reads them and writes the
    // output register.
    unsafe {
        asm!(
            "ld1 {{{value:v}.4s}}, [{address}]",
            value = out(vreg) value,
            address = in(reg) address,
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

/// Stores four floats at `address`.
///
/// # Safety
/// `address` must point to 4 writable floats that nothing else accesses meanwhile.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_4_f32(address: *mut f32, value: float32x4_t) {
    // SAFETY: the caller guarantees 16 writable bytes; `st1` writes only them.
    unsafe {
        asm!(
            "st1 {{{value:v}.4s}}, [{address}]",
            value = in(vreg) value,
            address = in(reg) address,
            options(nostack, preserves_flags)
        );
    }
}

/// The block scales of two consecutive blocks, `[scale 0, scaled sum 0, scale 1, scaled sum
/// 1]`.
///
/// # Safety
/// `scales` must point to two readable `[f32; 2]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_scale_pair(scales: *const [f32; 2]) -> float32x4_t {
    let value: float32x4_t;
    // SAFETY: the caller guarantees 16 readable bytes; the load only reads them.
    unsafe {
        asm!(
            "ldr {value:q}, [{address}]",
            value = out(vreg) value,
            address = in(reg) scales,
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

/// The f16 at byte `at` of `bytes` as f32, converted by the hardware's `fcvt` (exactly, as
/// `kernels::half` does in software).
#[inline]
#[target_feature(enable = "neon")]
fn load_half(bytes: &[u8], at: usize) -> f32 {
    let half = &bytes[at..at + 2];
    let value: f32;
    // SAFETY: `half` is 2 readable bytes; `ldr` of an H register reads only them, and `fcvt`
    // works on registers.
    unsafe {
        asm!(
            "ldr {value:h}, [{address}]",
            "fcvt {value:s}, {value:h}",
            address = in(reg) half.as_ptr(),
            value = out(vreg) value,
            options(pure, nostack, readonly, preserves_flags)
        );
    }
    value
}

/// The block scales of one block, `[scale, scaled sum, 0, 0]`.
///
/// # Safety
/// `scales` must point to one readable `[f32; 2]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_scale_one(scales: *const [f32; 2]) -> float32x4_t {
    let value: float32x4_t;
    // SAFETY: the caller guarantees 8 readable bytes; loading a D register reads only them
    // and clears the upper half of the vector.
    unsafe {
        asm!(
            "ldr {value:d}, [{address}]",
            value = out(vreg) value,
            address = in(reg) scales,
            options(nostack, readonly, preserves_flags)
        );
    }
    value
}

// ---------------------------------------------------------------------------------------
// Weight formats: two blocks (or one) loaded, scales converted, codes unpacked to bytes.

/// A quantized weight format as the integer kernels load it.
trait Format {
    /// Bytes per block of 32.
    const BLOCK_BYTES: usize;
    /// Whether blocks carry a minimum (Q4_1).
    const MINIMUM: bool;

    /// Two consecutive blocks at `pair`: `[scale 0, minimum 0, scale 1, minimum 1]` as f32
    /// (minimums 0 for formats without), and each block's codes as signed bytes (elements
    /// 0..16 then 16..32 of the first block, then of the second).
    ///
    /// # Safety
    /// `pair` must point to `2 × BLOCK_BYTES` readable bytes.
    unsafe fn load_pair(pair: *const u8) -> (float32x4_t, [int8x16_t; 4]);

    /// One block: `[scale, minimum, 0, 0]` and its codes.
    ///
    /// # Safety
    /// `block` must point to `BLOCK_BYTES` readable bytes.
    unsafe fn load_one(block: *const u8) -> (float32x4_t, [int8x16_t; 2]);
}

/// Q8_0: `d: f16, q: [i8; 32]`.
struct Q8_0;
/// Q4_0: `d: f16, q: [u8; 16]` (nibble − 8).
struct Q4_0;
/// Q4_1: `d: f16, m: f16, q: [u8; 16]`.
struct Q4_1;

/// Sixteen packed bytes as nibbles: low nibbles (elements 0..16) and high ones (16..32).
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(packed: uint8x16_t) -> (int8x16_t, int8x16_t) {
    (vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed)))
}

/// Q4_0's nibbles less 8.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles_less_8(packed: uint8x16_t) -> (int8x16_t, int8x16_t) {
    let (low, high) = nibbles(packed);
    (vsubq_s8(low, vdupq_n_s8(8)), vsubq_s8(high, vdupq_n_s8(8)))
}

impl Format for Q8_0 {
    const BLOCK_BYTES: usize = 34;
    const MINIMUM: bool = false;

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_pair(pair: *const u8) -> (float32x4_t, [int8x16_t; 4]) {
        let (scales, c0, c1, c2, c3): (float32x4_t, uint8x16_t, uint8x16_t, uint8x16_t, uint8x16_t);
        // SAFETY: the caller guarantees 68 readable bytes: the loads read bytes 0..2 and
        // 2..34 (first block), 34..36 and 36..68 (second block), through a copy of the
        // address that the post-indexed loads advance; `fcvtl` converts the two f16 scales
        // (half lanes 0 and 2, the others cleared by the first load) exactly.
        unsafe {
            asm!(
                "ldr {scales:h}, [{address}], #2",
                "ldp {c0:q}, {c1:q}, [{address}], #32",
                "ld1 {{{scales:v}.h}}[2], [{address}], #2",
                "ldp {c2:q}, {c3:q}, [{address}]",
                "fcvtl {scales:v}.4s, {scales:v}.4h",
                address = inout(reg) pair => _,
                scales = out(vreg) scales,
                c0 = out(vreg) c0,
                c1 = out(vreg) c1,
                c2 = out(vreg) c2,
                c3 = out(vreg) c3,
                options(nostack, readonly, preserves_flags)
            );
        }
        (scales, [c0, c1, c2, c3].map(|code| vreinterpretq_s8_u8(code)))
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_one(block: *const u8) -> (float32x4_t, [int8x16_t; 2]) {
        let (scales, low, high): (float32x4_t, uint8x16_t, uint8x16_t);
        // SAFETY: the caller guarantees 34 readable bytes: the loads read bytes 0..2, 2..18
        // and 18..34.
        unsafe {
            asm!(
                "ldr {scales:h}, [{address}]",
                "ldur {low:q}, [{address}, #2]",
                "ldur {high:q}, [{address}, #18]",
                "fcvtl {scales:v}.4s, {scales:v}.4h",
                address = in(reg) block,
                scales = out(vreg) scales,
                low = out(vreg) low,
                high = out(vreg) high,
                options(nostack, readonly, preserves_flags)
            );
        }
        (scales, [vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high)])
    }
}

impl Format for Q4_0 {
    const BLOCK_BYTES: usize = 18;
    const MINIMUM: bool = false;

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_pair(pair: *const u8) -> (float32x4_t, [int8x16_t; 4]) {
        let (scales, first, second): (float32x4_t, uint8x16_t, uint8x16_t);
        // SAFETY: the caller guarantees 36 readable bytes: the loads read bytes 0..2, 2..18,
        // 18..20 and 20..36, through a copy of the address that the post-indexed loads
        // advance.
        unsafe {
            asm!(
                "ldr {scales:h}, [{address}], #2",
                "ldr {first:q}, [{address}], #16",
                "ld1 {{{scales:v}.h}}[2], [{address}], #2",
                "ldr {second:q}, [{address}]",
                "fcvtl {scales:v}.4s, {scales:v}.4h",
                address = inout(reg) pair => _,
                scales = out(vreg) scales,
                first = out(vreg) first,
                second = out(vreg) second,
                options(nostack, readonly, preserves_flags)
            );
        }
        let ((low_0, high_0), (low_1, high_1)) = (nibbles_less_8(first), nibbles_less_8(second));
        (scales, [low_0, high_0, low_1, high_1])
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_one(block: *const u8) -> (float32x4_t, [int8x16_t; 2]) {
        let (scales, packed): (float32x4_t, uint8x16_t);
        // SAFETY: the caller guarantees 18 readable bytes: the loads read bytes 0..2 and 2..18.
        unsafe {
            asm!(
                "ldr {scales:h}, [{address}]",
                "ldur {packed:q}, [{address}, #2]",
                "fcvtl {scales:v}.4s, {scales:v}.4h",
                address = in(reg) block,
                scales = out(vreg) scales,
                packed = out(vreg) packed,
                options(nostack, readonly, preserves_flags)
            );
        }
        let (low, high) = nibbles_less_8(packed);
        (scales, [low, high])
    }
}

impl Format for Q4_1 {
    const BLOCK_BYTES: usize = 20;
    const MINIMUM: bool = true;

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_pair(pair: *const u8) -> (float32x4_t, [int8x16_t; 4]) {
        let (scales, first, second): (float32x4_t, uint8x16_t, uint8x16_t);
        // SAFETY: the caller guarantees 40 readable bytes: the loads read bytes 0..4 (scale
        // and minimum), 4..20, 20..24 and 24..40, through a copy of the address that the
        // post-indexed loads advance; `fcvtl` converts the four f16 exactly.
        unsafe {
            asm!(
                "ldr {scales:s}, [{address}], #4",
                "ldr {first:q}, [{address}], #16",
                "ld1 {{{scales:v}.s}}[1], [{address}], #4",
                "ldr {second:q}, [{address}]",
                "fcvtl {scales:v}.4s, {scales:v}.4h",
                address = inout(reg) pair => _,
                scales = out(vreg) scales,
                first = out(vreg) first,
                second = out(vreg) second,
                options(nostack, readonly, preserves_flags)
            );
        }
        let ((low_0, high_0), (low_1, high_1)) = (nibbles(first), nibbles(second));
        (scales, [low_0, high_0, low_1, high_1])
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_one(block: *const u8) -> (float32x4_t, [int8x16_t; 2]) {
        let (scales, packed): (float32x4_t, uint8x16_t);
        // SAFETY: the caller guarantees 20 readable bytes: the loads read bytes 0..4 and 4..20.
        unsafe {
            asm!(
                "ldr {scales:s}, [{address}]",
                "ldur {packed:q}, [{address}, #4]",
                "fcvtl {scales:v}.4s, {scales:v}.4h",
                address = in(reg) block,
                scales = out(vreg) scales,
                packed = out(vreg) packed,
                options(nostack, readonly, preserves_flags)
            );
        }
        let (low, high) = nibbles(packed);
        (scales, [low, high])
    }
}

// ---------------------------------------------------------------------------------------
// Activation widths: one block's integer lanes, grouped as `kernels::integer_lane` says.

/// The width of quantized activations, as the integer kernels multiply them.
trait Width: Sized {
    /// `i8` or `i16`.
    type Element: Copy;
    /// One block's codes made ready for [`Self::lanes`] (widened once, for every vector).
    type Codes: Copy;

    /// A block's codes (elements 0..16 in `low`, 16..32 in `high`) made ready.
    ///
    /// # Safety
    /// None beyond NEON, which every aarch64 build has (an `unsafe fn` so that it may enable it).
    unsafe fn prepare(low: int8x16_t, high: int8x16_t) -> Self::Codes;

    /// The four integer lanes of one block: `codes` times the 32 activations at `values`,
    /// element e added to lane (e / 2) mod 4, exactly.
    ///
    /// # Safety
    /// `values` must point to 32 readable elements.
    unsafe fn lanes(codes: Self::Codes, values: *const Self::Element) -> int32x4_t;

    /// [`Self::lanes`] of two consecutive blocks: `codes.0` times the 32 activations at
    /// `values`, `codes.1` times the 32 after them.
    ///
    /// # Safety
    /// `values` must point to 64 readable elements.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn pair_lanes(
        codes: (Self::Codes, Self::Codes),
        values: *const Self::Element,
    ) -> (int32x4_t, int32x4_t) {
        // SAFETY: the caller guarantees 64 readable elements: 32 for each block.
        unsafe { (Self::lanes(codes.0, values), Self::lanes(codes.1, values.add(32))) }
    }

    /// Adds a pair of weight blocks (`weight_scales` and `codes`) to the sums of every vector
    /// of `group`: vector j's activations for the pair start at `values + j × blocks × 32`,
    /// its block scales at `scales + j × blocks`, as [`Sums::add_pair`] does for each.
    ///
    /// # Safety
    /// For every vector of `group`, 64 elements at its `values` and two block scales at its
    /// `scales` must be readable.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn add_pair_to_group<F: Format>(
        group: &mut [Sums],
        weight_scales: float32x4_t,
        codes: (Self::Codes, Self::Codes),
        values: *const Self::Element,
        scales: *const [f32; 2],
        blocks: usize,
    ) {
        for (vector, sums) in group.iter_mut().enumerate() {
            let at = vector * blocks;
            // SAFETY: the caller guarantees the vector's 64 values and two block scales.
            unsafe {
                sums.add_pair::<F, Self>(weight_scales, codes, values.add(at * BLOCK_VALUES), scales.add(at))
            };
        }
    }
}

/// 8-bit activations.
struct Eight;
/// 16-bit activations.
struct Sixteen;

impl Width for Eight {
    type Element = i8;
    type Codes = (int8x16_t, int8x16_t);

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn prepare(low: int8x16_t, high: int8x16_t) -> Self::Codes {
        (low, high)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn lanes((low, high): Self::Codes, values: *const i8) -> int32x4_t {
        let lanes: int32x4_t;
        // i16 lane i of `near` is e(i) + e(16 + i), of `far` e(8 + i) + e(24 + i): at most
        // 2 × 128 × 127 in magnitude (activations stay within −127..=127), so no overflow.
        // `saddlp` then adds adjacent i16 lanes of `near` into i32 lane k (elements 2k, 2k+1,
        // 2k+16, 2k+17) and `sadalp` those of `far` (2k+8, 2k+9, 2k+24, 2k+25).
        // One assembly block, so that the compiler cannot trade `smull2` for `ext` + `smull`
        // when it hoists the codes' halves out of a loop over vectors.
        // SAFETY: the caller guarantees 32 readable bytes at `values`; `ldp` reads only
        // them, and the rest works on registers (`out` registers never alias the inputs).
        unsafe {
            asm!(
                "ldp {first:q}, {second:q}, [{address}]",
                "smull {near:v}.8h, {low:v}.8b, {first:v}.8b",
                "smull2 {far:v}.8h, {low:v}.16b, {first:v}.16b",
                "smlal {near:v}.8h, {high:v}.8b, {second:v}.8b",
                "smlal2 {far:v}.8h, {high:v}.16b, {second:v}.16b",
                "saddlp {lanes:v}.4s, {near:v}.8h",
                "sadalp {lanes:v}.4s, {far:v}.8h",
                address = in(reg) values,
                low = in(vreg) low,
                high = in(vreg) high,
                first = out(vreg) _,
                second = out(vreg) _,
                near = out(vreg) _,
                far = out(vreg) _,
                lanes = out(vreg) lanes,
                options(pure, nostack, readonly, preserves_flags)
            );
        }
        lanes
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn add_pair_to_group<F: Format>(
        group: &mut [Sums],
        weight_scales: float32x4_t,
        codes: (Self::Codes, Self::Codes),
        values: *const i8,
        scales: *const [f32; 2],
        blocks: usize,
    ) {
        if group.is_empty() {
            return;
        }
        let ((c0, c1), (c2, c3)) = codes;
        // As in `Sixteen::add_pair_to_group`, with `Self::lanes` for each block.
        let value_step = blocks * BLOCK_VALUES - 32;
        let scale_step = blocks * 8;
        // SAFETY: the caller guarantees, for each of the `group.len()` vectors, 64 readable
        // bytes of values and 16 of block scales at the addresses that the post-indexed
        // loads step through; `sums` walks `group`'s `Sums` (32 bytes each, `repr(C)`),
        // which the exclusive borrow lets the block read and write. The loop runs
        // `group.len()` ≥ 1 times; `out` registers never alias the inputs.
        unsafe {
            asm!(
                "2:",
                "ld1 {{v28.16b, v29.16b}}, [{values}], #32",
                "smull {near_0:v}.8h, {c0:v}.8b, v28.8b",
                "smull2 {far_0:v}.8h, {c0:v}.16b, v28.16b",
                "smlal {near_0:v}.8h, {c1:v}.8b, v29.8b",
                "smlal2 {far_0:v}.8h, {c1:v}.16b, v29.16b",
                "ld1 {{v28.16b, v29.16b}}, [{values}], {value_step}",
                "smull {near_1:v}.8h, {c2:v}.8b, v28.8b",
                "smull2 {far_1:v}.8h, {c2:v}.16b, v28.16b",
                "smlal {near_1:v}.8h, {c3:v}.8b, v29.8b",
                "smlal2 {far_1:v}.8h, {c3:v}.16b, v29.16b",
                "ld1 {{{activation:v}.4s}}, [{scales}], {scale_step}",
                "ldp {lanes:q}, {minimums:q}, [{sums}]",
                "saddlp {first:v}.4s, {near_0:v}.8h",
                "sadalp {first:v}.4s, {far_0:v}.8h",
                "saddlp {second:v}.4s, {near_1:v}.8h",
                "sadalp {second:v}.4s, {far_1:v}.8h",
                "fmul {factors:v}.4s, {weight:v}.4s, {activation:v}.4s",
                "fmla {minimums:v}.4s, {weight:v}.4s, {activation:v}.4s",
                "scvtf {first:v}.4s, {first:v}.4s",
                "scvtf {second:v}.4s, {second:v}.4s",
                "fmla {lanes:v}.4s, {first:v}.4s, {factors:v}.s[0]",
                "fmla {lanes:v}.4s, {second:v}.4s, {factors:v}.s[2]",
                "stp {lanes:q}, {minimums:q}, [{sums}], #32",
                "subs {count}, {count}, #1",
                "b.ne 2b",
                values = inout(reg) values => _,
                scales = inout(reg) scales => _,
                sums = inout(reg) group.as_mut_ptr() => _,
                count = inout(reg) group.len() => _,
                value_step = in(reg) value_step,
                scale_step = in(reg) scale_step,
                weight = in(vreg) weight_scales,
                c0 = in(vreg) c0,
                c1 = in(vreg) c1,
                c2 = in(vreg) c2,
                c3 = in(vreg) c3,
                out("v28") _,
                out("v29") _,
                near_0 = out(vreg) _,
                far_0 = out(vreg) _,
                near_1 = out(vreg) _,
                far_1 = out(vreg) _,
                first = out(vreg) _,
                second = out(vreg) _,
                activation = out(vreg) _,
                factors = out(vreg) _,
                lanes = out(vreg) _,
                minimums = out(vreg) _,
                options(nostack)
            );
        }
    }
}

impl Width for Sixteen {
    type Element = i16;
    type Codes = [int16x8_t; 4];

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn prepare(low: int8x16_t, high: int8x16_t) -> Self::Codes {
        [vmovl_s8(vget_low_s8(low)), vmovl_high_s8(low), vmovl_s8(vget_low_s8(high)), vmovl_high_s8(high)]
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn lanes(codes: Self::Codes, values: *const i16) -> int32x4_t {
        let lanes: int32x4_t;
        // i32 lane i of `low` sums elements 8g + i over the groups g, of `high` 8g + 4 + i
        // (each product at most 128 × 32767); `addp` then pairs adjacent lanes: lane k gets
        // elements 2k, 2k+1, 2k+8, 2k+9, ... as `kernels::integer_lane` says. One assembly
        // block for the reason given in `Eight::lanes`.
        // SAFETY: the caller guarantees 32 readable i16 (64 bytes) at `values`; the `ld1` of
        // four registers reads bytes 0..64, and the rest works on registers (`out` registers
        // never alias the inputs).
        unsafe {
            asm!(
                "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{address}]",
                "smull {low:v}.4s, {c0:v}.4h, v28.4h",
                "smull2 {high:v}.4s, {c0:v}.8h, v28.8h",
                "smlal {low:v}.4s, {c1:v}.4h, v29.4h",
                "smlal2 {high:v}.4s, {c1:v}.8h, v29.8h",
                "smlal {low:v}.4s, {c2:v}.4h, v30.4h",
                "smlal2 {high:v}.4s, {c2:v}.8h, v30.8h",
                "smlal {low:v}.4s, {c3:v}.4h, v31.4h",
                "smlal2 {high:v}.4s, {c3:v}.8h, v31.8h",
                "addp {low:v}.4s, {low:v}.4s, {high:v}.4s",
                address = in(reg) values,
                c0 = in(vreg) codes[0],
                c1 = in(vreg) codes[1],
                c2 = in(vreg) codes[2],
                c3 = in(vreg) codes[3],
                out("v28") _,
                out("v29") _,
                out("v30") _,
                out("v31") _,
                high = out(vreg) _,
                low = out(vreg) lanes,
                options(pure, nostack, readonly, preserves_flags)
            );
        }
        lanes
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn pair_lanes(codes: (Self::Codes, Self::Codes), values: *const i16) -> (int32x4_t, int32x4_t) {
        let (first, second): (int32x4_t, int32x4_t);
        let ([c0, c1, c2, c3], [c4, c5, c6, c7]) = codes;
        // `Self::lanes` for each block, with one post-indexed address for both loads.
        // SAFETY: the caller guarantees 64 readable i16 (128 bytes) at `values`; the two `ld1`
        // of four registers read bytes 0..64 and 64..128 through a copy of the address, and
        // the rest works on registers (`out` registers never alias the inputs).
        unsafe {
            asm!(
                "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{address}], #64",
                "smull {low_0:v}.4s, {c0:v}.4h, v28.4h",
                "smull2 {high_0:v}.4s, {c0:v}.8h, v28.8h",
                "smlal {low_0:v}.4s, {c1:v}.4h, v29.4h",
                "smlal2 {high_0:v}.4s, {c1:v}.8h, v29.8h",
                "smlal {low_0:v}.4s, {c2:v}.4h, v30.4h",
                "smlal2 {high_0:v}.4s, {c2:v}.8h, v30.8h",
                "smlal {low_0:v}.4s, {c3:v}.4h, v31.4h",
                "smlal2 {high_0:v}.4s, {c3:v}.8h, v31.8h",
                "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{address}]",
                "smull {low_1:v}.4s, {c4:v}.4h, v28.4h",
                "smull2 {high_1:v}.4s, {c4:v}.8h, v28.8h",
                "smlal {low_1:v}.4s, {c5:v}.4h, v29.4h",
                "smlal2 {high_1:v}.4s, {c5:v}.8h, v29.8h",
                "smlal {low_1:v}.4s, {c6:v}.4h, v30.4h",
                "smlal2 {high_1:v}.4s, {c6:v}.8h, v30.8h",
                "smlal {low_1:v}.4s, {c7:v}.4h, v31.4h",
                "smlal2 {high_1:v}.4s, {c7:v}.8h, v31.8h",
                "addp {low_0:v}.4s, {low_0:v}.4s, {high_0:v}.4s",
                "addp {low_1:v}.4s, {low_1:v}.4s, {high_1:v}.4s",
                address = inout(reg) values => _,
                c0 = in(vreg) c0,
                c1 = in(vreg) c1,
                c2 = in(vreg) c2,
                c3 = in(vreg) c3,
                c4 = in(vreg) c4,
                c5 = in(vreg) c5,
                c6 = in(vreg) c6,
                c7 = in(vreg) c7,
                out("v28") _,
                out("v29") _,
                out("v30") _,
                out("v31") _,
                high_0 = out(vreg) _,
                high_1 = out(vreg) _,
                low_0 = out(vreg) first,
                low_1 = out(vreg) second,
                options(pure, nostack, readonly, preserves_flags)
            );
        }
        (first, second)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn add_pair_to_group<F: Format>(
        group: &mut [Sums],
        weight_scales: float32x4_t,
        codes: (Self::Codes, Self::Codes),
        values: *const i16,
        scales: *const [f32; 2],
        blocks: usize,
    ) {
        if group.is_empty() {
            return;
        }
        let ([c0, c1, c2, c3], [c4, c5, c6, c7]) = codes;
        // From the first block of one vector to that of the next, less the 64 bytes that the
        // first load advances; and from one vector's block scales to the next's.
        let value_step = blocks * BLOCK_VALUES * 2 - 64;
        let scale_step = blocks * 8;
        // `Sums::add_pair` for each vector in turn, the same operations in the same order:
        // `Self::pair_lanes`, `factors = weight scales × activation scales`, the lanes' two
        // fused multiply-adds by factors 0 and 2, and the minimums' fused multiply-add
        // (computed for every format; only Q4_1's `Sums::finish` reads it). `Sums` is
        // `repr(C)`: lanes at byte 0, minimums at 16.
        // SAFETY: the caller guarantees, for each of the `group.len()` vectors, 128 readable
        // bytes of values and 16 of block scales at the addresses that the post-indexed
        // loads step through; `sums` walks `group`'s `Sums` (32 bytes each), which the
        // exclusive borrow lets the block read and write. The loop runs `group.len()` ≥ 1
        // times; `out` registers never alias the inputs.
        unsafe {
            asm!(
                "2:",
                "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{values}], #64",
                "smull {low_0:v}.4s, {c0:v}.4h, v28.4h",
                "smull2 {high_0:v}.4s, {c0:v}.8h, v28.8h",
                "smlal {low_0:v}.4s, {c1:v}.4h, v29.4h",
                "smlal2 {high_0:v}.4s, {c1:v}.8h, v29.8h",
                "smlal {low_0:v}.4s, {c2:v}.4h, v30.4h",
                "smlal2 {high_0:v}.4s, {c2:v}.8h, v30.8h",
                "smlal {low_0:v}.4s, {c3:v}.4h, v31.4h",
                "smlal2 {high_0:v}.4s, {c3:v}.8h, v31.8h",
                "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{values}], {value_step}",
                "smull {low_1:v}.4s, {c4:v}.4h, v28.4h",
                "smull2 {high_1:v}.4s, {c4:v}.8h, v28.8h",
                "smlal {low_1:v}.4s, {c5:v}.4h, v29.4h",
                "smlal2 {high_1:v}.4s, {c5:v}.8h, v29.8h",
                "smlal {low_1:v}.4s, {c6:v}.4h, v30.4h",
                "smlal2 {high_1:v}.4s, {c6:v}.8h, v30.8h",
                "smlal {low_1:v}.4s, {c7:v}.4h, v31.4h",
                "smlal2 {high_1:v}.4s, {c7:v}.8h, v31.8h",
                "ld1 {{{activation:v}.4s}}, [{scales}], {scale_step}",
                "ldp {lanes:q}, {minimums:q}, [{sums}]",
                "addp {low_0:v}.4s, {low_0:v}.4s, {high_0:v}.4s",
                "addp {low_1:v}.4s, {low_1:v}.4s, {high_1:v}.4s",
                "fmul {factors:v}.4s, {weight:v}.4s, {activation:v}.4s",
                "fmla {minimums:v}.4s, {weight:v}.4s, {activation:v}.4s",
                "scvtf {low_0:v}.4s, {low_0:v}.4s",
                "scvtf {low_1:v}.4s, {low_1:v}.4s",
                "fmla {lanes:v}.4s, {low_0:v}.4s, {factors:v}.s[0]",
                "fmla {lanes:v}.4s, {low_1:v}.4s, {factors:v}.s[2]",
                "stp {lanes:q}, {minimums:q}, [{sums}], #32",
                "subs {count}, {count}, #1",
                "b.ne 2b",
                values = inout(reg) values => _,
                scales = inout(reg) scales => _,
                sums = inout(reg) group.as_mut_ptr() => _,
                count = inout(reg) group.len() => _,
                value_step = in(reg) value_step,
                scale_step = in(reg) scale_step,
                weight = in(vreg) weight_scales,
                c0 = in(vreg) c0,
                c1 = in(vreg) c1,
                c2 = in(vreg) c2,
                c3 = in(vreg) c3,
                c4 = in(vreg) c4,
                c5 = in(vreg) c5,
                c6 = in(vreg) c6,
                c7 = in(vreg) c7,
                out("v28") _,
                out("v29") _,
                out("v30") _,
                out("v31") _,
                low_0 = out(vreg) _,
                high_0 = out(vreg) _,
                low_1 = out(vreg) _,
                high_1 = out(vreg) _,
                activation = out(vreg) _,
                factors = out(vreg) _,
                lanes = out(vreg) _,
                minimums = out(vreg) _,
                options(nostack)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Integer dot products (mirroring `kernels::dot_blocks_integer`).

/// A row's running sums: four lanes of scaled block products, and Q4_1's minimum terms
/// (even blocks in lane 1, odd blocks in lane 3; lanes 0 and 2 collect unused products).
#[derive(Clone, Copy)]
#[repr(C)]
struct Sums {
    lanes: float32x4_t,
    minimums: float32x4_t,
}

impl Sums {
    #[inline]
    #[target_feature(enable = "neon")]
    fn new() -> Self {
        Self { lanes: vdupq_n_f32(0.0), minimums: vdupq_n_f32(0.0) }
    }

    /// The dot product: (lane 0 + lane 2) + (lane 1 + lane 3), plus (even + odd minimum
    /// terms) for Q4_1.
    #[inline]
    #[target_feature(enable = "neon")]
    fn finish<F: Format>(self) -> f32 {
        let halves = vadd_f32(vget_low_f32(self.lanes), vget_high_f32(self.lanes));
        let total = vpadds_f32(halves);
        if F::MINIMUM {
            total + (vgetq_lane_f32::<1>(self.minimums) + vgetq_lane_f32::<3>(self.minimums))
        } else {
            total
        }
    }

    /// Adds a pair of blocks: `weight_scales` and codes from [`Format::load_pair`], the
    /// activations at `values` (64) and their block scales at `scales` (2).
    ///
    /// # Safety
    /// `values` must point to 64 readable elements and `scales` to two block scales.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn add_pair<F: Format, W: Width>(
        &mut self,
        weight_scales: float32x4_t,
        codes: (W::Codes, W::Codes),
        values: *const W::Element,
        scales: *const [f32; 2],
    ) {
        // SAFETY: the caller guarantees two block scales at `scales`.
        let activation_scales = unsafe { load_scale_pair(scales) };
        let factors = vmulq_f32(weight_scales, activation_scales);
        if F::MINIMUM {
            self.minimums = vfmaq_f32(self.minimums, weight_scales, activation_scales);
        }
        // SAFETY: the caller guarantees 64 readable elements.
        let (first, second) = unsafe { W::pair_lanes(codes, values) };
        self.lanes = vfmaq_laneq_f32::<0>(self.lanes, vcvtq_f32_s32(first), factors);
        self.lanes = vfmaq_laneq_f32::<2>(self.lanes, vcvtq_f32_s32(second), factors);
    }

    /// Adds one block (the last of an odd count, so an even block).
    ///
    /// # Safety
    /// `values` must point to 32 readable elements and `scales` to one block scale.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn add_one<F: Format, W: Width>(
        &mut self,
        weight_scales: float32x4_t,
        codes: W::Codes,
        values: *const W::Element,
        scales: *const [f32; 2],
    ) {
        // SAFETY: the caller guarantees one block scale at `scales`.
        let activation_scales = unsafe { load_scale_one(scales) };
        let factors = vmulq_f32(weight_scales, activation_scales);
        if F::MINIMUM {
            // Only lanes 0 and 1, so the odd blocks' lane 3 keeps its exact bits.
            let even = vfma_f32(
                vget_low_f32(self.minimums),
                vget_low_f32(weight_scales),
                vget_low_f32(activation_scales),
            );
            self.minimums = vcombine_f32(even, vget_high_f32(self.minimums));
        }
        // SAFETY: the caller guarantees 32 readable elements.
        let lanes = unsafe { W::lanes(codes, values) };
        self.lanes = vfmaq_laneq_f32::<0>(self.lanes, vcvtq_f32_s32(lanes), factors);
    }
}

/// Whole blocks that a row of `row_bytes` and the activations `x` both cover.
fn common_blocks<T>(row_bytes: usize, block_bytes: usize, x: &Quantized<'_, T>) -> usize {
    (row_bytes / block_bytes).min(x.values.len() / BLOCK_VALUES).min(x.block_scales.len())
}

/// Dot product of a row of `F` blocks with activations of width `W`.
#[inline]
#[target_feature(enable = "neon")]
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
            let (weight_scales, codes) = F::load_pair(pair.as_ptr());
            let codes = (W::prepare(codes[0], codes[1]), W::prepare(codes[2], codes[3]));
            sums.add_pair::<F, W>(weight_scales, codes, values.as_ptr(), scales.as_ptr());
        }
    }
    if blocks % 2 == 1 {
        let last = blocks - 1;
        let block = &row[last * F::BLOCK_BYTES..blocks * F::BLOCK_BYTES];
        let values = &x.values[last * BLOCK_VALUES..blocks * BLOCK_VALUES];
        // SAFETY: the slices hold one block, its 32 activations and its block scale.
        unsafe {
            let (weight_scales, codes) = F::load_one(block.as_ptr());
            let codes = W::prepare(codes[0], codes[1]);
            sums.add_one::<F, W>(weight_scales, codes, values.as_ptr(), &x.block_scales[last]);
        }
    }
    sums.finish::<F>()
}

/// Rows `first ..` of `matrix` dotted with `x` into `out`, one row after another.
#[inline]
#[target_feature(enable = "neon")]
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
#[target_feature(enable = "neon")]
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
/// vectors.
#[target_feature(enable = "neon")]
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
#[target_feature(enable = "neon")]
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
        let (weight_scales, codes) = unsafe { F::load_pair(row.add(block * F::BLOCK_BYTES)) };
        // SAFETY: NEON is all `prepare` needs.
        let codes = unsafe { (W::prepare(codes[0], codes[1]), W::prepare(codes[2], codes[3])) };
        // SAFETY: each vector's blocks `block` and `block + 1` are inside its values and
        // scales.
        unsafe {
            W::add_pair_to_group::<F>(
                group,
                weight_scales,
                codes,
                values.add(block * BLOCK_VALUES),
                scales.add(block),
                blocks,
            )
        };
    }
    if blocks % 2 == 1 {
        let block = blocks - 1;
        // SAFETY: block `block` is inside the row.
        let (weight_scales, codes) = unsafe { F::load_one(row.add(block * F::BLOCK_BYTES)) };
        // SAFETY: NEON is all `prepare` needs.
        let codes = unsafe { W::prepare(codes[0], codes[1]) };
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

/// e^x on four lanes, the operations of `kernels::exponential` one for one.
#[inline]
#[target_feature(enable = "neon")]
fn exponential_4(x: float32x4_t) -> float32x4_t {
    use crate::infer::kernels::{
        EXPONENT_HIGHEST, EXPONENT_LOWEST, EXPONENTIAL_COEFFICIENTS as COEFFICIENTS, LN_2_HIGH, LN_2_LOW,
        LOG2_E, ROUNDING_SHIFTER,
    };
    // fmax/fmin return NaN for a NaN lane, as the scalar clamp does.
    let clamped = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXPONENT_LOWEST)), vdupq_n_f32(EXPONENT_HIGHEST));
    let shifter = vdupq_n_f32(ROUNDING_SHIFTER);
    let shifted = vfmaq_f32(shifter, clamped, vdupq_n_f32(LOG2_E));
    let whole = vsubq_f32(shifted, shifter);
    let reduced = vfmsq_f32(clamped, whole, vdupq_n_f32(LN_2_HIGH));
    let reduced = vfmsq_f32(reduced, whole, vdupq_n_f32(LN_2_LOW));
    let mut polynomial = vdupq_n_f32(COEFFICIENTS[0]);
    for coefficient in &COEFFICIENTS[1..] {
        polynomial = vfmaq_f32(vdupq_n_f32(*coefficient), polynomial, reduced);
    }
    let exponent = vaddq_u32(vshlq_n_u32::<23>(vreinterpretq_u32_f32(shifted)), vdupq_n_u32(127 << 23));
    let result = vmulq_f32(polynomial, vreinterpretq_f32_u32(exponent));
    // Infinity above the range (a NaN lane compares false and stays NaN).
    vbslq_f32(vcgtq_f32(x, vdupq_n_f32(EXPONENT_HIGHEST)), vdupq_n_f32(f32::INFINITY), result)
}

/// `gate = silu(gate) × up`, as `kernels::swiglu`; always `true` (done).
#[target_feature(enable = "neon")]
pub fn swiglu(gate: &mut [f32], up: &[f32]) -> bool {
    let length = gate.len().min(up.len());
    let (gate, up) = (&mut gate[..length], &up[..length]);
    let mut gate_groups = gate.chunks_exact_mut(4);
    let mut up_groups = up.chunks_exact(4);
    for (gates, ups) in (&mut gate_groups).zip(&mut up_groups) {
        // SAFETY: `chunks_exact` gives four floats in each.
        unsafe {
            let values = load_4_f32(gates.as_ptr());
            let silu = vdivq_f32(values, vaddq_f32(vdupq_n_f32(1.0), exponential_4(vnegq_f32(values))));
            store_4_f32(gates.as_mut_ptr(), vmulq_f32(silu, load_4_f32(ups.as_ptr())));
        }
    }
    for (gate, up) in gate_groups.into_remainder().iter_mut().zip(up_groups.remainder()) {
        *gate = *gate / (1.0 + exponential(-*gate)) * up;
    }
    true
}

/// Dot product of two float vectors, as `kernels::dot_floats`; always `Some`.
#[target_feature(enable = "neon")]
pub fn dot_floats(a: &[f32], b: &[f32]) -> Option<f32> {
    let mut lanes = zero();
    let mut a_groups = a.chunks_exact(8);
    let mut b_groups = b.chunks_exact(8);
    for (a_group, b_group) in (&mut a_groups).zip(&mut b_groups) {
        // SAFETY: `chunks_exact` gives eight floats in each.
        let (a, b) = unsafe { (load_f32(a_group.as_ptr()), load_f32(b_group.as_ptr())) };
        lanes = multiply_add(lanes, a, b);
    }
    let mut total = reduce(lanes);
    for (a, b) in a_groups.remainder().iter().zip(b_groups.remainder()) {
        total = fmaf(*a, *b, total);
    }
    Some(total)
}

/// `out[i] = weight × values[i] + out[i]`, fused, as `kernels::add_scaled`; always `true`.
#[target_feature(enable = "neon")]
pub fn add_scaled(out: &mut [f32], weight: f32, values: &[f32]) -> bool {
    let mut out_groups = out.chunks_exact_mut(4);
    let mut value_groups = values.chunks_exact(4);
    let weight_lanes = vdupq_n_f32(weight);
    for (outs, values) in (&mut out_groups).zip(&mut value_groups) {
        // SAFETY: `chunks_exact` gives four floats in each.
        unsafe {
            let sum = vfmaq_f32(load_4_f32(outs.as_ptr()), load_4_f32(values.as_ptr()), weight_lanes);
            store_4_f32(outs.as_mut_ptr(), sum);
        }
    }
    for (out, value) in out_groups.into_remainder().iter_mut().zip(value_groups.remainder()) {
        *out = fmaf(weight, *value, *out);
    }
    true
}

// ---------------------------------------------------------------------------------------
// Float activations (mirroring `kernels::dot_f32` and `kernels::dot_blocks_float`).

/// Eight lanes as two registers: lanes 0..4 and 4..8.
type Lanes = (float32x4_t, float32x4_t);

/// Sums the eight lanes as ((0+4)+(2+6)) + ((1+5)+(3+7)), like `reduce_lanes`.
#[inline]
#[target_feature(enable = "neon")]
fn reduce(lanes: Lanes) -> f32 {
    let quad = vaddq_f32(lanes.0, lanes.1);
    let pair = vadd_f32(vget_low_f32(quad), vget_high_f32(quad));
    vget_lane_f32::<0>(pair) + vget_lane_f32::<1>(pair)
}

/// `lanes + a × b`, fused.
#[inline]
#[target_feature(enable = "neon")]
fn multiply_add(lanes: Lanes, a: Lanes, b: Lanes) -> Lanes {
    (vfmaq_f32(lanes.0, a.0, b.0), vfmaq_f32(lanes.1, a.1, b.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn zero() -> Lanes {
    (vdupq_n_f32(0.0), vdupq_n_f32(0.0))
}

/// Eight floats at `address`.
///
/// # Safety
/// `address` must point to 8 readable floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_f32(address: *const f32) -> Lanes {
    // SAFETY: the caller guarantees 8 readable floats: 4 at each address.
    unsafe { (load_4_f32(address), load_4_f32(address.add(4))) }
}

#[target_feature(enable = "neon")]
fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = zero();
    let mut row_groups = row.chunks_exact(32);
    let mut x_groups = x.chunks_exact(8);
    for (bytes, values) in (&mut row_groups).zip(&mut x_groups) {
        // SAFETY: `chunks_exact` gives 32 bytes and 8 floats.
        let (weights, values) = unsafe {
            let weights = (load_16(bytes.as_ptr()), load_16(bytes.as_ptr().add(16)));
            ((vreinterpretq_f32_u8(weights.0), vreinterpretq_f32_u8(weights.1)), load_f32(values.as_ptr()))
        };
        lanes = multiply_add(lanes, weights, values);
    }
    let mut total = reduce(lanes);
    for (bytes, value) in row_groups.remainder().chunks_exact(4).zip(x_groups.remainder()) {
        total = fmaf(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), *value, total);
    }
    total
}

/// Eight signed byte codes as eight floats.
#[inline]
#[target_feature(enable = "neon")]
fn widen_signed(bytes: int8x8_t) -> Lanes {
    let wide = vmovl_s8(bytes);
    (vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide))), vcvtq_f32_s32(vmovl_s16(vget_high_s16(wide))))
}

/// The 32 codes of a block (elements 0..16 in `low`, 16..32 in `high`) as four groups.
#[inline]
#[target_feature(enable = "neon")]
fn widen(low: int8x16_t, high: int8x16_t) -> [Lanes; 4] {
    [
        widen_signed(vget_low_s8(low)),
        widen_signed(vget_high_s8(low)),
        widen_signed(vget_low_s8(high)),
        widen_signed(vget_high_s8(high)),
    ]
}

/// The codes of a Q8_0 block.
///
/// # Safety
/// `block` must hold 34 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes_q8_0(block: &[u8]) -> [Lanes; 4] {
    // SAFETY: the caller guarantees 34 bytes: 2..18 and 18..34 are read.
    let (low, high) = unsafe { (load_16(block.as_ptr().add(2)), load_16(block.as_ptr().add(18))) };
    widen(vreinterpretq_s8_u8(low), vreinterpretq_s8_u8(high))
}

/// The codes of a Q4_0 block.
///
/// # Safety
/// `block` must hold 18 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes_q4_0(block: &[u8]) -> [Lanes; 4] {
    // SAFETY: the caller guarantees 18 bytes: 2..18 are read.
    let (low, high) = nibbles_less_8(unsafe { load_16(block.as_ptr().add(2)) });
    widen(low, high)
}

/// The codes of a Q4_1 block.
///
/// # Safety
/// `block` must hold 20 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn codes_q4_1(block: &[u8]) -> [Lanes; 4] {
    // SAFETY: the caller guarantees 20 bytes: 4..20 are read.
    let (low, high) = nibbles(unsafe { load_16(block.as_ptr().add(4)) });
    widen(low, high)
}

/// `lanes + scale × values`, fused.
#[inline]
#[target_feature(enable = "neon")]
fn add_scaled_lanes(lanes: Lanes, scale: f32, values: Lanes) -> Lanes {
    let scale = vdupq_n_f32(scale);
    (vfmaq_f32(lanes.0, scale, values.0), vfmaq_f32(lanes.1, scale, values.1))
}

/// Float-activation dot product over blocks of `block_bytes`, whose codes `codes` expands;
/// `minimum` locates the Q4_1 minimum and may bring the blocks' sum lanes (flattened).
/// Mirrors `kernels::dot_blocks_float`.
#[inline]
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
        // SAFETY: `codes` reads a block of `block_bytes` bytes, which `chunks_exact` gives;
        // `values` holds 32 floats, 8 read per group.
        let (codes, values) = unsafe {
            let values: [Lanes; 4] = core::array::from_fn(|group| load_f32(values.as_ptr().add(group * 8)));
            (codes(block), values)
        };
        let mut products = zero();
        for (code, value) in codes.into_iter().zip(values) {
            products = multiply_add(products, code, value);
        }
        accumulator = add_scaled_lanes(accumulator, load_half(block, 0), products);
        if let Some((at, precomputed)) = minimum {
            let sums = match precomputed.and_then(|sums| sums.get(index * 8..index * 8 + 8)) {
                // SAFETY: `get` gave eight floats.
                Some(sums) => unsafe { load_f32(sums.as_ptr()) },
                None => values
                    .iter()
                    .fold(zero(), |sums, value| (vaddq_f32(sums.0, value.0), vaddq_f32(sums.1, value.1))),
            };
            accumulator = add_scaled_lanes(accumulator, load_half(block, at), sums);
        }
    }
    reduce(accumulator)
}
