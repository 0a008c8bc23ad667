//! The NEON kernels (aarch64): row dot products, the matrix × N-vectors product, activation
//! quantization, SwiGLU and the attention vector operations, each the twin of its scalar
//! kernel in `kernels`, bit for bit.
//!
//! The integer dot products take the weight type and the activation width as type
//! parameters ([`Format`], [`Width`]), chosen once per band of rows; their block loop takes
//! four blocks per step through `chunks_exact`, with no branch or slice check inside, and a
//! row's last one to three blocks in one more step. Weight scales become f32 with the
//! hardware's `fcvtl`, in the same assembly block as the loads. Activation rows are
//! quantized here too, block by block, as `kernels::ScalarBlocks` does.
//!
//! Loads and stores are inline assembly, not `vld1q_*`: the `aarch64-unknown-none` target
//! builds with `+strict-align`, where LLVM splits a 128-bit access it cannot prove 16-byte
//! aligned into one access per element. The core itself allows unaligned access to normal
//! memory (SCTLR_ELx.A is clear: Tessera's MMU setup leaves it so, as Linux does), so
//! `ldr`/`ldp`/`ld1` at any address inside the slice read correctly.

#![allow(unsafe_code)]

use core::arch::aarch64::*;
use core::arch::asm;

use crate::infer::kernels::{BatchInput, HeadRows, Input, Quantized, exponential};
use crate::model::quant::BLOCK_VALUES;
use crate::model::{Matrix, TensorType};
use libm::fmaf;

// The entry points and the loops over rows (`super::row_products`).
row_products!("neon");

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
// Weights of up to four blocks, loaded and unpacked once for every vector that meets them.

/// Up to four consecutive weight blocks made ready for activations of width `W`: scales and
/// minimums one block per lane (lanes past the blocks hold 0), and each block's codes.
#[derive(Clone, Copy)]
struct Blocks<W: Width> {
    /// `[d0, d1, d2, d3]`.
    scales: float32x4_t,
    /// `[m0, m1, m2, m3]` (Q4_1; 0 for the other formats).
    minimums: float32x4_t,
    /// The blocks' codes, made ready by [`Width::prepare`].
    codes: [W::Codes; 4],
}

impl<W: Width> Blocks<W> {
    /// The `COUNT` (1 to 4) blocks of format `F` at `first`.
    ///
    /// # Safety
    /// `first` must point to `COUNT × F::BLOCK_BYTES` readable bytes.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load<F: Format, const COUNT: usize>(first: *const u8) -> Self {
        let zero = vdupq_n_f32(0.0);
        // SAFETY: `COUNT` blocks are readable at `first`: the pairs read blocks 0-1 and 2-3,
        // a lone block the last one, never past `COUNT`; `empty` and `prepare` need only NEON.
        unsafe {
            let mut codes = [W::empty(); 4];
            let first_half = if COUNT >= 2 {
                let (scales, bytes) = F::load_pair(first);
                codes[0] = W::prepare(bytes[0], bytes[1]);
                codes[1] = W::prepare(bytes[2], bytes[3]);
                scales
            } else {
                let (scales, bytes) = F::load_one(first);
                codes[0] = W::prepare(bytes[0], bytes[1]);
                scales
            };
            let third = first.add(2 * F::BLOCK_BYTES);
            let second_half = if COUNT == 4 {
                let (scales, bytes) = F::load_pair(third);
                codes[2] = W::prepare(bytes[0], bytes[1]);
                codes[3] = W::prepare(bytes[2], bytes[3]);
                scales
            } else if COUNT == 3 {
                let (scales, bytes) = F::load_one(third);
                codes[2] = W::prepare(bytes[0], bytes[1]);
                scales
            } else {
                zero
            };
            // `[d0, m0, d1, m1]` and `[d2, m2, d3, m3]` (zeros past the blocks) deinterleaved.
            Self {
                scales: vuzp1q_f32(first_half, second_half),
                minimums: vuzp2q_f32(first_half, second_half),
                codes,
            }
        }
    }
}

/// The block scales of `COUNT` (1 to 4) consecutive activation blocks: `[s0, s1, s2, s3]`
/// and `[scale × sum 0, ...]`, lanes past the blocks holding 0.
///
/// # Safety
/// `scales` must point to `COUNT` readable `[f32; 2]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_block_scales<const COUNT: usize>(scales: *const [f32; 2]) -> (float32x4_t, float32x4_t) {
    let (activation_scales, scaled_sums): (float32x4_t, float32x4_t);
    // SAFETY: the caller guarantees `COUNT` pairs (8 bytes each) at `scales`; each `ld2`/`ldr`
    // reads only pairs below `COUNT` (two-lane `ld2` and S-register loads clear the lanes
    // above them, a lane load keeps the others).
    unsafe {
        match COUNT {
            1 => asm!(
                "ldr s26, [{address}]",
                "ldr s27, [{address}, #4]",
                address = in(reg) scales,
                out("v26") activation_scales,
                out("v27") scaled_sums,
                options(nostack, readonly, preserves_flags)
            ),
            2 => asm!(
                "ld2 {{v26.2s, v27.2s}}, [{address}]",
                address = in(reg) scales,
                out("v26") activation_scales,
                out("v27") scaled_sums,
                options(nostack, readonly, preserves_flags)
            ),
            3 => asm!(
                "ld2 {{v26.2s, v27.2s}}, [{address}], #16",
                "ld2 {{v26.s, v27.s}}[2], [{address}]",
                address = inout(reg) scales => _,
                out("v26") activation_scales,
                out("v27") scaled_sums,
                options(nostack, readonly, preserves_flags)
            ),
            _ => asm!(
                "ld2 {{v26.4s, v27.4s}}, [{address}]",
                address = in(reg) scales,
                out("v26") activation_scales,
                out("v27") scaled_sums,
                options(nostack, readonly, preserves_flags)
            ),
        }
    }
    (activation_scales, scaled_sums)
}

// ---------------------------------------------------------------------------------------
// Activation widths: one block's integer products.

/// The width of quantized activations, as the integer kernels multiply them.
trait Width: Sized + Copy {
    /// `i8` or `i16`.
    type Element: Copy;
    /// One block's codes made ready for [`Self::partial`] (widened once, for every vector).
    type Codes: Copy;

    /// Codes of no block (zeros), for the unused places of a [`Blocks`].
    ///
    /// # Safety
    /// None beyond NEON (as for [`Self::prepare`]).
    unsafe fn empty() -> Self::Codes;

    /// A block's codes (elements 0..16 in `low`, 16..32 in `high`) made ready.
    ///
    /// # Safety
    /// None beyond NEON, which every aarch64 build has (an `unsafe fn` so that it may enable it).
    unsafe fn prepare(low: int8x16_t, high: int8x16_t) -> Self::Codes;

    /// Four partial sums of one block's products, `codes` times the 32 activations at
    /// `values`, whose total is the block's exact integer total.
    ///
    /// # Safety
    /// `values` must point to 32 readable elements.
    unsafe fn partial(codes: Self::Codes, values: *const Self::Element) -> int32x4_t;

    /// Adds four weight blocks (`blocks`) to the accumulator of every vector of `group`:
    /// vector j's activations for the blocks start at `values + j × blocks_per_vector × 32`,
    /// its block scales at `scales + j × blocks_per_vector`, as [`add_blocks`] does for each.
    ///
    /// # Safety
    /// For every vector of `group`, 128 elements at its `values` and four block scales at
    /// its `scales` must be readable.
    unsafe fn add_quad_to_group<F: Format>(
        group: &mut [float32x4_t],
        blocks: &Blocks<Self>,
        values: *const Self::Element,
        scales: *const [f32; 2],
        blocks_per_vector: usize,
    );
}

/// 8-bit activations.
#[derive(Clone, Copy)]
struct Eight;
/// 16-bit activations.
#[derive(Clone, Copy)]
struct Sixteen;

/// The four-block step of [`Width::add_quad_to_group`] for one vector, after each width's
/// products (in `a0`-`a3`, four partial sums per block) and with its block scales loaded
/// into `v26` (scales) and `v27` (scale × sum): the blocks' totals, their factors, and the
/// accumulator's fused multiply-adds (the minimums' only for Q4_1), as [`add_blocks`] does.
macro_rules! quad_tail_asm {
    ($minimum:literal) => {
        concat!(
            "ldr {acc:q}, [{sums}]\n",
            "addp {a0:v}.4s, {a0:v}.4s, {a1:v}.4s\n",
            "addp {a2:v}.4s, {a2:v}.4s, {a3:v}.4s\n",
            "addp {a0:v}.4s, {a0:v}.4s, {a2:v}.4s\n",
            "fmul {factors:v}.4s, {d:v}.4s, v26.4s\n",
            "scvtf {a0:v}.4s, {a0:v}.4s\n",
            "fmla {acc:v}.4s, {a0:v}.4s, {factors:v}.4s\n",
            $minimum,
            "str {acc:q}, [{sums}], #16\n",
            "subs {count}, {count}, #1\n",
            "b.ne 2b\n",
        )
    };
}

impl Width for Eight {
    type Element = i8;
    type Codes = (int8x16_t, int8x16_t);

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn empty() -> Self::Codes {
        (vdupq_n_s8(0), vdupq_n_s8(0))
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn prepare(low: int8x16_t, high: int8x16_t) -> Self::Codes {
        (low, high)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn partial((low, high): Self::Codes, values: *const i8) -> int32x4_t {
        let lanes: int32x4_t;
        // i16 lane i of `near` is e(i) + e(16 + i), of `far` e(8 + i) + e(24 + i): at most
        // 2 × 128 × 127 in magnitude (activations stay within −127..=127), so no overflow;
        // `saddlp`/`sadalp` widen and add them pairwise into four i32 lanes.
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
    unsafe fn add_quad_to_group<F: Format>(
        group: &mut [float32x4_t],
        blocks: &Blocks<Self>,
        values: *const i8,
        scales: *const [f32; 2],
        blocks_per_vector: usize,
    ) {
        if group.is_empty() {
            return;
        }
        let [(c0, c1), (c2, c3), (c4, c5), (c6, c7)] = blocks.codes;
        // From the first block of one vector to that of the next, less the 96 bytes that
        // the first three loads advance; and from one vector's block scales to the next's.
        let value_step = blocks_per_vector * BLOCK_VALUES - 96;
        let scale_step = blocks_per_vector * 8;
        macro_rules! eight {
            ($minimum:literal) => {
                // SAFETY: the caller guarantees, for each of the `group.len()` vectors, 128
                // readable bytes of values and 32 of block scales at the addresses that the
                // post-indexed loads step through; `sums` walks `group` (16 bytes per vector),
                // which the exclusive borrow lets the block read and write. The loop runs
                // `group.len()` ≥ 1 times; `out` registers never alias the inputs.
                unsafe {
                    asm!(
                        "2:",
                        "ld1 {{v28.16b, v29.16b}}, [{values}], #32",
                        "smull {near:v}.8h, {c0:v}.8b, v28.8b",
                        "smull2 {far:v}.8h, {c0:v}.16b, v28.16b",
                        "smlal {near:v}.8h, {c1:v}.8b, v29.8b",
                        "smlal2 {far:v}.8h, {c1:v}.16b, v29.16b",
                        "saddlp {a0:v}.4s, {near:v}.8h",
                        "sadalp {a0:v}.4s, {far:v}.8h",
                        "ld1 {{v28.16b, v29.16b}}, [{values}], #32",
                        "smull {near:v}.8h, {c2:v}.8b, v28.8b",
                        "smull2 {far:v}.8h, {c2:v}.16b, v28.16b",
                        "smlal {near:v}.8h, {c3:v}.8b, v29.8b",
                        "smlal2 {far:v}.8h, {c3:v}.16b, v29.16b",
                        "saddlp {a1:v}.4s, {near:v}.8h",
                        "sadalp {a1:v}.4s, {far:v}.8h",
                        "ld1 {{v28.16b, v29.16b}}, [{values}], #32",
                        "smull {near:v}.8h, {c4:v}.8b, v28.8b",
                        "smull2 {far:v}.8h, {c4:v}.16b, v28.16b",
                        "smlal {near:v}.8h, {c5:v}.8b, v29.8b",
                        "smlal2 {far:v}.8h, {c5:v}.16b, v29.16b",
                        "saddlp {a2:v}.4s, {near:v}.8h",
                        "sadalp {a2:v}.4s, {far:v}.8h",
                        "ld1 {{v28.16b, v29.16b}}, [{values}], {value_step}",
                        "smull {near:v}.8h, {c6:v}.8b, v28.8b",
                        "smull2 {far:v}.8h, {c6:v}.16b, v28.16b",
                        "smlal {near:v}.8h, {c7:v}.8b, v29.8b",
                        "smlal2 {far:v}.8h, {c7:v}.16b, v29.16b",
                        "saddlp {a3:v}.4s, {near:v}.8h",
                        "sadalp {a3:v}.4s, {far:v}.8h",
                        "ld2 {{v26.4s, v27.4s}}, [{scales}], {scale_step}",
                        quad_tail_asm!($minimum),
                        values = inout(reg) values => _,
                        scales = inout(reg) scales => _,
                        sums = inout(reg) group.as_mut_ptr() => _,
                        count = inout(reg) group.len() => _,
                        value_step = in(reg) value_step,
                        scale_step = in(reg) scale_step,
                        d = in(vreg) blocks.scales,
                        m = in(vreg) blocks.minimums,
                        c0 = in(vreg) c0,
                        c1 = in(vreg) c1,
                        c2 = in(vreg) c2,
                        c3 = in(vreg) c3,
                        c4 = in(vreg) c4,
                        c5 = in(vreg) c5,
                        c6 = in(vreg) c6,
                        c7 = in(vreg) c7,
                        out("v26") _,
                        out("v27") _,
                        out("v28") _,
                        out("v29") _,
                        near = out(vreg) _,
                        far = out(vreg) _,
                        a0 = out(vreg) _,
                        a1 = out(vreg) _,
                        a2 = out(vreg) _,
                        a3 = out(vreg) _,
                        factors = out(vreg) _,
                        acc = out(vreg) _,
                        options(nostack)
                    );
                }
            };
        }
        if F::MINIMUM {
            eight!("fmla {acc:v}.4s, {m:v}.4s, v27.4s\n");
        } else {
            eight!("// {m:v}: no minimums\n");
        }
    }
}

impl Width for Sixteen {
    type Element = i16;
    type Codes = [int16x8_t; 4];

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn empty() -> Self::Codes {
        [vdupq_n_s16(0); 4]
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn prepare(low: int8x16_t, high: int8x16_t) -> Self::Codes {
        [vmovl_s8(vget_low_s8(low)), vmovl_high_s8(low), vmovl_s8(vget_low_s8(high)), vmovl_high_s8(high)]
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn partial(codes: Self::Codes, values: *const i16) -> int32x4_t {
        let lanes: int32x4_t;
        // All 32 products (each at most 128 × 32767) widened and accumulated into one i32
        // vector: lane i sums elements i, i + 4, i + 8, ...; the lanes' total is the block's.
        // One assembly block for the reason given in `Eight::partial`.
        // SAFETY: the caller guarantees 32 readable i16 (64 bytes) at `values`; the `ld1` of
        // four registers reads bytes 0..64, and the rest works on registers (`out` registers
        // never alias the inputs).
        unsafe {
            asm!(
                "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{address}]",
                "smull {lanes:v}.4s, {c0:v}.4h, v28.4h",
                "smlal2 {lanes:v}.4s, {c0:v}.8h, v28.8h",
                "smlal {lanes:v}.4s, {c1:v}.4h, v29.4h",
                "smlal2 {lanes:v}.4s, {c1:v}.8h, v29.8h",
                "smlal {lanes:v}.4s, {c2:v}.4h, v30.4h",
                "smlal2 {lanes:v}.4s, {c2:v}.8h, v30.8h",
                "smlal {lanes:v}.4s, {c3:v}.4h, v31.4h",
                "smlal2 {lanes:v}.4s, {c3:v}.8h, v31.8h",
                address = in(reg) values,
                c0 = in(vreg) codes[0],
                c1 = in(vreg) codes[1],
                c2 = in(vreg) codes[2],
                c3 = in(vreg) codes[3],
                out("v28") _,
                out("v29") _,
                out("v30") _,
                out("v31") _,
                lanes = out(vreg) lanes,
                options(pure, nostack, readonly, preserves_flags)
            );
        }
        lanes
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn add_quad_to_group<F: Format>(
        group: &mut [float32x4_t],
        blocks: &Blocks<Self>,
        values: *const i16,
        scales: *const [f32; 2],
        blocks_per_vector: usize,
    ) {
        if group.is_empty() {
            return;
        }
        let [[c0, c1, c2, c3], [c4, c5, c6, c7], [c8, c9, c10, c11], [c12, c13, c14, c15]] = blocks.codes;
        // From the first block of one vector to that of the next, less the 192 bytes that
        // the first three loads advance; and from one vector's block scales to the next's.
        let value_step = blocks_per_vector * BLOCK_VALUES * 2 - 192;
        let scale_step = blocks_per_vector * 8;
        macro_rules! sixteen {
            ($minimum:literal) => {
                // SAFETY: the caller guarantees, for each of the `group.len()` vectors, 256
                // readable bytes of values and 32 of block scales at the addresses that the
                // post-indexed loads step through; `sums` walks `group` (16 bytes per vector),
                // which the exclusive borrow lets the block read and write. The loop runs
                // `group.len()` ≥ 1 times; `out` registers never alias the inputs.
                unsafe {
                    asm!(
                        "2:",
                        "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{values}], #64",
                        "smull {a0:v}.4s, {c0:v}.4h, v28.4h",
                        "smlal2 {a0:v}.4s, {c0:v}.8h, v28.8h",
                        "smlal {a0:v}.4s, {c1:v}.4h, v29.4h",
                        "smlal2 {a0:v}.4s, {c1:v}.8h, v29.8h",
                        "smlal {a0:v}.4s, {c2:v}.4h, v30.4h",
                        "smlal2 {a0:v}.4s, {c2:v}.8h, v30.8h",
                        "smlal {a0:v}.4s, {c3:v}.4h, v31.4h",
                        "smlal2 {a0:v}.4s, {c3:v}.8h, v31.8h",
                        "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{values}], #64",
                        "smull {a1:v}.4s, {c4:v}.4h, v28.4h",
                        "smlal2 {a1:v}.4s, {c4:v}.8h, v28.8h",
                        "smlal {a1:v}.4s, {c5:v}.4h, v29.4h",
                        "smlal2 {a1:v}.4s, {c5:v}.8h, v29.8h",
                        "smlal {a1:v}.4s, {c6:v}.4h, v30.4h",
                        "smlal2 {a1:v}.4s, {c6:v}.8h, v30.8h",
                        "smlal {a1:v}.4s, {c7:v}.4h, v31.4h",
                        "smlal2 {a1:v}.4s, {c7:v}.8h, v31.8h",
                        "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{values}], #64",
                        "smull {a2:v}.4s, {c8:v}.4h, v28.4h",
                        "smlal2 {a2:v}.4s, {c8:v}.8h, v28.8h",
                        "smlal {a2:v}.4s, {c9:v}.4h, v29.4h",
                        "smlal2 {a2:v}.4s, {c9:v}.8h, v29.8h",
                        "smlal {a2:v}.4s, {c10:v}.4h, v30.4h",
                        "smlal2 {a2:v}.4s, {c10:v}.8h, v30.8h",
                        "smlal {a2:v}.4s, {c11:v}.4h, v31.4h",
                        "smlal2 {a2:v}.4s, {c11:v}.8h, v31.8h",
                        "ld1 {{v28.8h, v29.8h, v30.8h, v31.8h}}, [{values}], {value_step}",
                        "smull {a3:v}.4s, {c12:v}.4h, v28.4h",
                        "smlal2 {a3:v}.4s, {c12:v}.8h, v28.8h",
                        "smlal {a3:v}.4s, {c13:v}.4h, v29.4h",
                        "smlal2 {a3:v}.4s, {c13:v}.8h, v29.8h",
                        "smlal {a3:v}.4s, {c14:v}.4h, v30.4h",
                        "smlal2 {a3:v}.4s, {c14:v}.8h, v30.8h",
                        "smlal {a3:v}.4s, {c15:v}.4h, v31.4h",
                        "smlal2 {a3:v}.4s, {c15:v}.8h, v31.8h",
                        "ld2 {{v26.4s, v27.4s}}, [{scales}], {scale_step}",
                        quad_tail_asm!($minimum),
                        values = inout(reg) values => _,
                        scales = inout(reg) scales => _,
                        sums = inout(reg) group.as_mut_ptr() => _,
                        count = inout(reg) group.len() => _,
                        value_step = in(reg) value_step,
                        scale_step = in(reg) scale_step,
                        d = in(vreg) blocks.scales,
                        m = in(vreg) blocks.minimums,
                        c0 = in(vreg) c0,
                        c1 = in(vreg) c1,
                        c2 = in(vreg) c2,
                        c3 = in(vreg) c3,
                        c4 = in(vreg) c4,
                        c5 = in(vreg) c5,
                        c6 = in(vreg) c6,
                        c7 = in(vreg) c7,
                        c8 = in(vreg) c8,
                        c9 = in(vreg) c9,
                        c10 = in(vreg) c10,
                        c11 = in(vreg) c11,
                        c12 = in(vreg) c12,
                        c13 = in(vreg) c13,
                        c14 = in(vreg) c14,
                        c15 = in(vreg) c15,
                        out("v26") _,
                        out("v27") _,
                        out("v28") _,
                        out("v29") _,
                        out("v30") _,
                        out("v31") _,
                        a0 = out(vreg) _,
                        a1 = out(vreg) _,
                        a2 = out(vreg) _,
                        a3 = out(vreg) _,
                        factors = out(vreg) _,
                        acc = out(vreg) _,
                        options(nostack)
                    );
                }
            };
        }
        if F::MINIMUM {
            sixteen!("fmla {acc:v}.4s, {m:v}.4s, v27.4s\n");
        } else {
            sixteen!("// {m:v}: no minimums\n");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Integer dot products (mirroring `kernels::dot_blocks_integer`).

/// Adds `COUNT` (1 to 4) weight blocks to one vector's accumulator: each block's integer
/// total (from [`Width::partial`], reduced pairwise) in the lane of its place, times
/// `weight scale × activation scale`, fused; then, for Q4_1, `minimum × scale × sum`, fused.
/// Lanes past `COUNT` add `0 × finite` and keep their bits (lanes start at +0 and never
/// become −0).
///
/// # Safety
/// `values` must point to `COUNT × 32` readable elements and `scales` to `COUNT` block
/// scales.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn add_blocks<F: Format, W: Width, const COUNT: usize>(
    accumulator: float32x4_t,
    blocks: &Blocks<W>,
    values: *const W::Element,
    scales: *const [f32; 2],
) -> float32x4_t {
    let zero = vdupq_n_s32(0);
    let partial = |at: usize| {
        if at < COUNT {
            // SAFETY: the caller guarantees `COUNT` blocks of values; this reads block `at`.
            unsafe { W::partial(blocks.codes[at], values.add(at * BLOCK_VALUES)) }
        } else {
            zero
        }
    };
    let totals = vpaddq_s32(vpaddq_s32(partial(0), partial(1)), vpaddq_s32(partial(2), partial(3)));
    // SAFETY: the caller guarantees `COUNT` block scales.
    let (activation_scales, scaled_sums) = unsafe { load_block_scales::<COUNT>(scales) };
    let factors = vmulq_f32(blocks.scales, activation_scales);
    let accumulator = vfmaq_f32(accumulator, vcvtq_f32_s32(totals), factors);
    if F::MINIMUM { vfmaq_f32(accumulator, blocks.minimums, scaled_sums) } else { accumulator }
}

/// The last `COUNT` (1 to 3) blocks of a row, from block `first` (of `blocks`), added to the
/// accumulator of each vector of `group`, whose values and block scales start at `values`
/// and `scales` (`blocks` blocks per vector).
///
/// # Safety
/// `row` must point to `blocks × F::BLOCK_BYTES` readable bytes, `values` to `group.len() ×
/// blocks × 32` readable elements and `scales` to `group.len() × blocks` block scales, and
/// `first + COUNT` must be `blocks`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn add_last_blocks<F: Format, W: Width, const COUNT: usize>(
    group: &mut [float32x4_t],
    row: *const u8,
    first: usize,
    blocks: usize,
    values: *const W::Element,
    scales: *const [f32; 2],
) {
    // SAFETY: blocks `first .. blocks` are inside the row.
    let weights = unsafe { Blocks::<W>::load::<F, COUNT>(row.add(first * F::BLOCK_BYTES)) };
    for (vector, accumulator) in group.iter_mut().enumerate() {
        let at = vector * blocks + first;
        // SAFETY: the vector's blocks `first .. blocks` are inside its values and scales.
        *accumulator = unsafe {
            add_blocks::<F, W, COUNT>(*accumulator, &weights, values.add(at * BLOCK_VALUES), scales.add(at))
        };
    }
}

/// The dot product from the accumulator: (lane 0 + lane 2) + (lane 1 + lane 3).
#[inline]
#[target_feature(enable = "neon")]
fn finish(accumulator: float32x4_t) -> f32 {
    vpadds_f32(vadd_f32(vget_low_f32(accumulator), vget_high_f32(accumulator)))
}

/// Dot product of a row of `F` blocks with activations of width `W`.
#[inline]
#[target_feature(enable = "neon")]
fn dot_integer<F: Format, W: Width>(row: &[u8], x: Quantized<'_, W::Element>) -> f32 {
    let blocks = common_blocks(row.len(), F::BLOCK_BYTES, &x);
    let whole = blocks / 4 * 4;
    let mut accumulator = [vdupq_n_f32(0.0)];
    let row_quads = row[..whole * F::BLOCK_BYTES].chunks_exact(4 * F::BLOCK_BYTES);
    let value_quads = x.values[..whole * BLOCK_VALUES].chunks_exact(4 * BLOCK_VALUES);
    let scale_quads = x.block_scales[..whole].chunks_exact(4);
    for ((quad, values), scales) in row_quads.zip(value_quads).zip(scale_quads) {
        // SAFETY: `chunks_exact` gives `quad` 4 × BLOCK_BYTES bytes, `values` 128 elements
        // and `scales` four block scales.
        unsafe {
            let weights = Blocks::<W>::load::<F, 4>(quad.as_ptr());
            accumulator[0] =
                add_blocks::<F, W, 4>(accumulator[0], &weights, values.as_ptr(), scales.as_ptr());
        }
    }
    let (row, values, scales) = (row.as_ptr(), x.values.as_ptr(), x.block_scales.as_ptr());
    // SAFETY: the row, the values and the scales hold `blocks` blocks, the last `blocks −
    // whole` of which each call adds (one vector: `group` of one, `blocks` blocks apart).
    unsafe {
        match blocks - whole {
            1 => add_last_blocks::<F, W, 1>(&mut accumulator, row, whole, blocks, values, scales),
            2 => add_last_blocks::<F, W, 2>(&mut accumulator, row, whole, blocks, values, scales),
            3 => add_last_blocks::<F, W, 3>(&mut accumulator, row, whole, blocks, values, scales),
            _ => {}
        }
    }
    finish(accumulator[0])
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
    let mut group = [vdupq_n_f32(0.0); ROOM];
    let group = &mut group[..out.len().min(ROOM)];
    let whole = blocks / 4 * 4;
    for block in (0..whole).step_by(4) {
        // SAFETY: blocks `block .. block + 4` are inside the row, and inside each vector's
        // values and scales.
        unsafe {
            let weights = Blocks::<W>::load::<F, 4>(row.add(block * F::BLOCK_BYTES));
            W::add_quad_to_group::<F>(
                group,
                &weights,
                values.add(block * BLOCK_VALUES),
                scales.add(block),
                blocks,
            );
        }
    }
    // SAFETY: the caller's promise covers the last blocks of the row and of every vector.
    unsafe {
        match blocks - whole {
            1 => add_last_blocks::<F, W, 1>(group, row, whole, blocks, values, scales),
            2 => add_last_blocks::<F, W, 2>(group, row, whole, blocks, values, scales),
            3 => add_last_blocks::<F, W, 3>(group, row, whole, blocks, values, scales),
            _ => {}
        }
    }
    for (accumulator, out) in group.iter().zip(out) {
        *out = finish(*accumulator);
    }
}

// ---------------------------------------------------------------------------------------
// Activation quantization (mirroring `kernels::ScalarBlocks`).

/// The 32 floats at `address`.
///
/// # Safety
/// `address` must point to 32 readable floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_32_f32(address: *const f32) -> [float32x4_t; 8] {
    let (v0, v1, v2, v3, v4, v5, v6, v7): (
        float32x4_t,
        float32x4_t,
        float32x4_t,
        float32x4_t,
        float32x4_t,
        float32x4_t,
        float32x4_t,
        float32x4_t,
    );
    // SAFETY: the caller guarantees 128 readable bytes; the two `ld1` of four registers read
    // bytes 0..64 and 64..128 through a copy of the address.
    unsafe {
        asm!(
            "ld1 {{v24.4s, v25.4s, v26.4s, v27.4s}}, [{address}], #64",
            "ld1 {{v28.4s, v29.4s, v30.4s, v31.4s}}, [{address}]",
            address = inout(reg) address => _,
            out("v24") v0,
            out("v25") v1,
            out("v26") v2,
            out("v27") v3,
            out("v28") v4,
            out("v29") v5,
            out("v30") v6,
            out("v31") v7,
            options(nostack, readonly, preserves_flags)
        );
    }
    [v0, v1, v2, v3, v4, v5, v6, v7]
}

/// One block of 32 values quantized to `largest` (127 or 32767): the rounded values as i32
/// (before narrowing) and the block's scale, as `kernels::quantize_blocks` computes them:
/// the largest magnitude (NaN ignored, as `f32::max` does), `scale = maximum / largest`,
/// `inverse = largest / maximum` (0 for an all-zero block), each value times `inverse`
/// rounded half away from zero (`fcvtas`, as `roundf`; NaN gives 0 and overflow saturates,
/// as Rust's casts do).
///
/// # Safety
/// `x` must point to 32 readable floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn round_block(x: *const f32, largest: f32) -> ([int32x4_t; 8], f32) {
    // SAFETY: the caller guarantees 32 readable floats.
    let values = unsafe { load_32_f32(x) };
    let magnitude = |at: usize| vabsq_f32(values[at]);
    let pairs = [
        vmaxnmq_f32(magnitude(0), magnitude(1)),
        vmaxnmq_f32(magnitude(2), magnitude(3)),
        vmaxnmq_f32(magnitude(4), magnitude(5)),
        vmaxnmq_f32(magnitude(6), magnitude(7)),
    ];
    let lanes = vmaxnmq_f32(vmaxnmq_f32(pairs[0], pairs[1]), vmaxnmq_f32(pairs[2], pairs[3]));
    let maximum = 0.0f32.max(vmaxnmvq_f32(lanes));
    let inverse = if maximum > 0.0 { largest / maximum } else { 0.0 };
    (values.map(|value| vcvtaq_s32_f32(vmulq_n_f32(value, inverse))), maximum / largest)
}

/// `kernels::ScalarBlocks::int16` on NEON.
#[target_feature(enable = "neon")]
pub fn quantize_int16(x: &[f32], out: &mut [i16], block_scales: &mut [[f32; 2]]) -> bool {
    let blocks = x.chunks_exact(BLOCK_VALUES).zip(out.chunks_exact_mut(BLOCK_VALUES));
    for ((block, out), [scale, scaled_sum]) in blocks.zip(block_scales) {
        // SAFETY: `chunks_exact` gives `block` 32 floats.
        let (rounded, block_scale) = unsafe { round_block(block.as_ptr(), largest_of::<i16>()) };
        let narrow = |at: usize| vqmovn_high_s32(vqmovn_s32(rounded[2 * at]), rounded[2 * at + 1]);
        let values = [narrow(0), narrow(1), narrow(2), narrow(3)];
        let sums =
            vpadalq_s16(vpadalq_s16(vpadalq_s16(vpaddlq_s16(values[0]), values[1]), values[2]), values[3]);
        // SAFETY: `chunks_exact_mut` gives `out` 32 writable i16 (64 bytes), which `stp`
        // writes; the exclusive borrow keeps every other access away.
        unsafe {
            asm!(
                "stp {first:q}, {second:q}, [{address}]",
                "stp {third:q}, {fourth:q}, [{address}, #32]",
                address = in(reg) out.as_mut_ptr(),
                first = in(vreg) values[0],
                second = in(vreg) values[1],
                third = in(vreg) values[2],
                fourth = in(vreg) values[3],
                options(nostack, preserves_flags)
            );
        }
        *scale = block_scale;
        *scaled_sum = block_scale * vaddvq_s32(sums) as f32;
    }
    true
}

/// `kernels::ScalarBlocks::int8` on NEON.
#[target_feature(enable = "neon")]
pub fn quantize_int8(x: &[f32], out: &mut [i8], block_scales: &mut [[f32; 2]]) -> bool {
    let blocks = x.chunks_exact(BLOCK_VALUES).zip(out.chunks_exact_mut(BLOCK_VALUES));
    for ((block, out), [scale, scaled_sum]) in blocks.zip(block_scales) {
        // SAFETY: `chunks_exact` gives `block` 32 floats.
        let (rounded, block_scale) = unsafe { round_block(block.as_ptr(), largest_of::<i8>()) };
        // Saturating to 16 and then to 8 bits saturates as one step to 8 bits would.
        let narrow = |at: usize| vqmovn_high_s32(vqmovn_s32(rounded[2 * at]), rounded[2 * at + 1]);
        let low = vqmovn_high_s16(vqmovn_s16(narrow(0)), narrow(1));
        let high = vqmovn_high_s16(vqmovn_s16(narrow(2)), narrow(3));
        let sums = vpadalq_s8(vpaddlq_s8(low), high);
        // SAFETY: `chunks_exact_mut` gives `out` 32 writable bytes, which `stp` writes; the
        // exclusive borrow keeps every other access away.
        unsafe {
            asm!(
                "stp {low:q}, {high:q}, [{address}]",
                address = in(reg) out.as_mut_ptr(),
                low = in(vreg) low,
                high = in(vreg) high,
                options(nostack, preserves_flags)
            );
        }
        *scale = block_scale;
        *scaled_sum = block_scale * vaddlvq_s16(sums) as f32;
    }
    true
}

/// The largest magnitude a quantized value of type `T` takes: 127 or 32767.
fn largest_of<T>() -> f32 {
    if core::mem::size_of::<T>() == 1 { 127.0 } else { 32767.0 }
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

/// In-place softmax, as `kernels::softmax`; always `true` (done).
#[target_feature(enable = "neon")]
pub fn softmax(values: &mut [f32]) -> bool {
    // `fmaxnm` ignores a NaN lane, as `f32::max` does; the maximum does not depend on order.
    let mut maximum = vdupq_n_f32(f32::NEG_INFINITY);
    let mut quads = values.chunks_exact(4);
    for quad in &mut quads {
        // SAFETY: `chunks_exact` gives four floats.
        maximum = vmaxnmq_f32(maximum, unsafe { load_4_f32(quad.as_ptr()) });
    }
    let maximum = quads.remainder().iter().fold(vmaxnmvq_f32(maximum), |maximum, value| maximum.max(*value));
    let mut lanes = zero();
    let mut groups = values.chunks_exact_mut(8);
    for group in &mut groups {
        // SAFETY: `chunks_exact_mut` gives eight floats: `load_f32` and the two stores stay
        // inside them.
        unsafe {
            let (low, high) = load_f32(group.as_ptr());
            let low = exponential_4(vsubq_f32(low, vdupq_n_f32(maximum)));
            let high = exponential_4(vsubq_f32(high, vdupq_n_f32(maximum)));
            store_4_f32(group.as_mut_ptr(), low);
            store_4_f32(group.as_mut_ptr().add(4), high);
            lanes = (vaddq_f32(lanes.0, low), vaddq_f32(lanes.1, high));
        }
    }
    let mut sum = reduce(lanes);
    for value in groups.into_remainder() {
        *value = exponential(*value - maximum);
        sum += *value;
    }
    let mut quads = values.chunks_exact_mut(4);
    for quad in &mut quads {
        // SAFETY: `chunks_exact_mut` gives four floats.
        unsafe { store_4_f32(quad.as_mut_ptr(), vdivq_f32(load_4_f32(quad.as_ptr()), vdupq_n_f32(sum))) };
    }
    quads.into_remainder().iter_mut().for_each(|value| *value /= sum);
    true
}

/// One attention head's scores, as `matmul::attention_scores_by_position`, for a query of
/// `GROUPS` × 8 values (the dispatcher in `simd/mod.rs` picks `GROUPS` from its length),
/// loaded once: each position's dot product is [`dot_floats`]'s (the same eight lanes, fused,
/// and the same reduction). Always `true` (done).
#[target_feature(enable = "neon")]
pub fn scores_with_query_held<'k, const GROUPS: usize>(
    query: &[f32],
    keys: &HeadRows<'k, impl Fn(usize) -> &'k [f32]>,
    scale: f32,
    scores: &mut [f32],
) -> bool {
    debug_assert_eq!(query.len(), 8 * GROUPS, "the dispatcher picks GROUPS from the query");
    let mut held = [zero(); GROUPS];
    for (group, values) in held.iter_mut().zip(query.chunks_exact(8)) {
        // SAFETY: `chunks_exact` gives eight floats.
        *group = unsafe { load_f32(values.as_ptr()) };
    }
    let score_of = |key: &[f32]| {
        if key.len() < 8 * GROUPS {
            // A short key (no store hands one out): the dot product over what there is.
            return dot_floats(query, key).unwrap_or_default() * scale;
        }
        let mut lanes = zero();
        for (group, query) in held.iter().enumerate() {
            // SAFETY: the key holds at least 8 × GROUPS floats, checked above.
            lanes = multiply_add(lanes, *query, unsafe { load_f32(key.as_ptr().add(8 * group)) });
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
#[target_feature(enable = "neon")]
pub fn values_with_sums_held<'v, const GROUPS: usize>(
    weights: &[f32],
    values: &HeadRows<'v, impl Fn(usize) -> &'v [f32]>,
    out: &mut [f32],
) -> bool {
    debug_assert_eq!(out.len(), 8 * GROUPS, "the dispatcher picks GROUPS from the output");
    let store = |sums: &[Lanes; GROUPS], out: &mut [f32]| {
        for (sum, outs) in sums.iter().zip(out.chunks_exact_mut(8)) {
            // SAFETY: `chunks_exact_mut` gives eight floats.
            unsafe {
                store_4_f32(outs.as_mut_ptr(), sum.0);
                store_4_f32(outs.as_mut_ptr().add(4), sum.1);
            }
        }
    };
    let mut sums = [zero(); GROUPS];
    let mut add_row = |sums: &mut [Lanes; GROUPS], weight: f32, row: &[f32]| {
        if row.len() < 8 * GROUPS {
            // A short row (no store hands one out): its values added through memory.
            store(sums, out);
            add_scaled(out, weight, row);
            for (sum, outs) in sums.iter_mut().zip(out.chunks_exact(8)) {
                // SAFETY: `chunks_exact` gives eight floats.
                *sum = unsafe { load_f32(outs.as_ptr()) };
            }
            return;
        }
        let weight = vdupq_n_f32(weight);
        for (group, sum) in sums.iter_mut().enumerate() {
            // SAFETY: the row holds at least 8 × GROUPS floats, checked above.
            let (low, high) = unsafe { load_f32(row.as_ptr().add(8 * group)) };
            *sum = (vfmaq_f32(sum.0, low, weight), vfmaq_f32(sum.1, high, weight));
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
    let (low, high): (float32x4_t, float32x4_t);
    // SAFETY: the caller guarantees 32 readable bytes; `ldp` of two Q registers reads only
    // them and writes the output registers.
    unsafe {
        asm!(
            "ldp {low:q}, {high:q}, [{address}]",
            low = out(vreg) low,
            high = out(vreg) high,
            address = in(reg) address,
            options(nostack, readonly, preserves_flags)
        );
    }
    (low, high)
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
