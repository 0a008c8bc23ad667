//! SIMD kernels: NEON on aarch64, AVX2 on x86_64 (detected at run time with `std`, fixed at
//! compile time without; F16C and FMA are required beside AVX2). The one module of `infer`
//! allowed `unsafe`, and the one place that picks an instruction set: every entry point
//! below goes through `on_this_cpu!` once per call (once per band of rows for the
//! products), and returns `None`/`false` when this CPU or this combination has no SIMD path,
//! so that the caller ([`super::matmul`]) falls back to the scalar kernel.
//!
//! Each path reproduces its scalar twin in [`super::kernels`] bit for bit: products are
//! accumulated with fused multiply-adds (`libm::fmaf` in the scalar kernels, which rounds
//! once like the hardware) in the scalar kernels' lane order and reduced in the same tree,
//! and integer block sums are exact. Property tests check every path against the scalar
//! one: AVX2 in the host tests, NEON in the `simd_kernels` QEMU test.
//!
//! Audit notes: the only unsafe operations are vector loads and stores, and calls into
//! `#[target_feature]` functions. Every load or store reaches inside a slice whose length
//! was checked before (`chunks_exact` gives whole blocks; the matrix × N-vectors kernels
//! check every row and the activations' length once up front), and feature-gated functions
//! are called only after the feature was detected (or is enabled for the whole build).

#![allow(unsafe_code)]

use super::kernels::{BatchInput, HeadRows, Input};
use crate::model::{Matrix, TensorType};

/// The row products' entry points and drivers, the same on every instruction set, expanded
/// once in each SIMD module with its target features (`$features`): `rows`, `dot` and
/// `rows_multi` (each kernel chosen by weight type and activation width), the checks that
/// make the raw loops safe, and the loops over rows and groups of vectors. They call what
/// the instruction sets do differently, in that module: its formats (`Q8_0`, `Q4_0` and
/// `Q4_1`, each a `Format`), widths (`Eight`, `Sixteen`, each a `Width`), `dot_integer`,
/// `row_times_group`, `dot_f32`, `dot_float_blocks` and the `codes_*` unpackers.
macro_rules! row_products {
    ($features:literal) => {
        /// Rows `first ..` of `matrix · input` into `out`; `false` when this combination has no
        /// SIMD path on this instruction set.
        #[target_feature(enable = $features)]
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

        /// One row's dot product; `None` when this combination has no SIMD path on
        /// this instruction set.
        #[target_feature(enable = $features)]
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
                (TensorType::Q4_1, Input::Float(x)) => {
                    dot_float_blocks(row, x, 20, codes_q4_1, Some((2, None)))
                }
                (TensorType::Q4_1, Input::FloatSummed(x, sums)) => {
                    dot_float_blocks(row, x, 20, codes_q4_1, Some((2, Some(sums.as_flattened()))))
                }
                (_, Input::FloatSummed(x, _)) => return dot(tensor_type, row, Input::Float(x)),
                _ => return None,
            })
        }

        /// Rows `first ..` of `matrix` times every vector of `input` into `out`
        /// (`out[r × N + j]`), for quantized matrices at an integer precision; `false`
        /// (nothing written) otherwise, or when the shapes do not fit (the caller checked
        /// them, so that does not happen).
        #[target_feature(enable = $features)]
        pub fn rows_multi(matrix: &Matrix<'_>, input: BatchInput<'_>, first: usize, out: &mut [f32]) -> bool {
            let vectors = input.rows();
            match (matrix.tensor_type, input.int8(), input.int16()) {
                (TensorType::Q8_0, Some(x), _) => {
                    multi_integer::<Q8_0, Eight>(matrix, x, vectors, first, out)
                }
                (TensorType::Q4_0, Some(x), _) => {
                    multi_integer::<Q4_0, Eight>(matrix, x, vectors, first, out)
                }
                (TensorType::Q4_1, Some(x), _) => {
                    multi_integer::<Q4_1, Eight>(matrix, x, vectors, first, out)
                }
                (TensorType::Q8_0, _, Some(x)) => {
                    multi_integer::<Q8_0, Sixteen>(matrix, x, vectors, first, out)
                }
                (TensorType::Q4_0, _, Some(x)) => {
                    multi_integer::<Q4_0, Sixteen>(matrix, x, vectors, first, out)
                }
                (TensorType::Q4_1, _, Some(x)) => {
                    multi_integer::<Q4_1, Sixteen>(matrix, x, vectors, first, out)
                }
                _ => false,
            }
        }

        /// Whole blocks that a row of `row_bytes` and the activations `x` both cover.
        fn common_blocks<T>(row_bytes: usize, block_bytes: usize, x: &Quantized<'_, T>) -> usize {
            (row_bytes / block_bytes).min(x.values.len() / BLOCK_VALUES).min(x.block_scales.len())
        }

        /// Rows `first ..` of `matrix` dotted with `x` into `out`, one row after another.
        #[inline]
        #[target_feature(enable = $features)]
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

        // -------------------------------------------------------------------------------
        // Matrix × N vectors: each four weight blocks are loaded and unpacked once, then
        // meet every vector.

        /// Vectors whose running sums one pass over a row keeps; more vectors take further
        /// passes.
        const GROUP: usize = 32;

        /// Rows `first ..` of `matrix` times the `vectors` vectors of `x` (one after
        /// another, `matrix.columns` values each) into `out[r × vectors + j]`; `false`
        /// (nothing written) if the activations or a row are shorter than the matrix's
        /// columns.
        ///
        /// One vector takes the single-vector loop (the same operations in the same order,
        /// with its sums in registers); more take [`rows_times_vectors`] with room for the
        /// running sums of 4, 8, 16 or [`GROUP`] vectors, the least that holds them, so that
        /// a small batch does not clear and finish room for 32.
        #[target_feature(enable = $features)]
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

        /// [`multi_integer`]'s loop over rows, for `vectors` ≥ 1 vectors taken `ROOM` at a
        /// time.
        ///
        /// # Safety
        /// Rows `first .. first + out.len() / vectors` of `matrix` hold `matrix.columns / 32`
        /// blocks each, and `x` holds that many blocks of values and scales for each of
        /// `vectors` vectors; the CPU has the module's target features.
        #[target_feature(enable = $features)]
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
                    // SAFETY: the caller's promise: the row holds `blocks` blocks, and the
                    // group's vectors (`outputs.len()` of them from vector `group × ROOM`)
                    // have `blocks` blocks of values and scales each, inside `x`.
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
    };
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
mod neon;

/// Calls `function(arguments)` (or `function::<N>(arguments)`) of this CPU's SIMD module and
/// returns its result, or evaluates to `otherwise` when there is none.
macro_rules! on_this_cpu {
    ($function:ident $(::<$constant:literal>)? ($($argument:expr),*), $otherwise:expr) => {{
        #[cfg(target_arch = "aarch64")]
        if cfg!(target_feature = "neon") {
            // SAFETY: NEON is enabled for the whole build, so every CPU running it has NEON.
            return unsafe { neon::$function $(::<$constant>)? ($($argument),*) };
        }
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2() {
            // SAFETY: AVX2, F16C and FMA were detected on this CPU just above.
            return unsafe { x86::$function $(::<$constant>)? ($($argument),*) };
        }
        let _ = ($($argument,)*);
        $otherwise
    }};
}

/// Quantizes the whole blocks of `x` to 8 bits as `kernels::ScalarBlocks::int8` does;
/// `false` (nothing written) when this CPU has no path.
pub fn quantize_int8(x: &[f32], out: &mut [i8], block_scales: &mut [[f32; 2]]) -> bool {
    on_this_cpu!(quantize_int8(x, out, block_scales), false)
}

/// Quantizes the whole blocks of `x` to 16 bits as `kernels::ScalarBlocks::int16` does;
/// `false` (nothing written) when this CPU has no path.
pub fn quantize_int16(x: &[f32], out: &mut [i16], block_scales: &mut [[f32; 2]]) -> bool {
    on_this_cpu!(quantize_int16(x, out, block_scales), false)
}

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
    on_this_cpu!(dot(tensor_type, row, input), None)
}

/// Computes rows `first .. first + out.len()` of `matrix · input` on this CPU's SIMD path.
/// Returns `false`, writing nothing, when there is no SIMD path for this CPU or combination.
/// Choosing the path once per band of rows keeps the per-row cost to the dot product itself.
pub fn rows(matrix: &Matrix<'_>, input: Input<'_>, first: usize, out: &mut [f32]) -> bool {
    on_this_cpu!(rows(matrix, input, first, out), false)
}

/// Rows `first .. first + out.len() / N` of `matrix` times the N vectors of `input`, into
/// `out[r × N + j]`, each weight block unpacked once for all N, on this CPU's SIMD path:
/// quantized matrices at an integer precision. Returns `false`, writing nothing, otherwise.
pub fn rows_multi(matrix: &Matrix<'_>, input: BatchInput<'_>, first: usize, out: &mut [f32]) -> bool {
    on_this_cpu!(rows_multi(matrix, input, first, out), false)
}

/// `gate = silu(gate) × up` on this CPU's SIMD path; `false` (nothing done) without one.
pub fn swiglu(gate: &mut [f32], up: &[f32]) -> bool {
    on_this_cpu!(swiglu(gate, up), false)
}

/// Dot product of two float vectors on this CPU's SIMD path, or `None` without one.
pub fn dot_floats(a: &[f32], b: &[f32]) -> Option<f32> {
    on_this_cpu!(dot_floats(a, b), None)
}

/// `out[i] = weight × values[i] + out[i]` on this CPU's SIMD path; `false` without one.
pub fn add_scaled(out: &mut [f32], weight: f32, values: &[f32]) -> bool {
    on_this_cpu!(add_scaled(out, weight, values), false)
}

/// In-place softmax on this CPU's SIMD path (the bits of `kernels::softmax`); `false`
/// (nothing done) without one.
pub fn softmax(values: &mut [f32]) -> bool {
    on_this_cpu!(softmax(values), false)
}

/// One attention head's scores, `scores[p] = dot_floats(query, key(p)) × scale`, with the
/// query held in registers across the positions, on this CPU's SIMD path: heads of 32, 64 or
/// 128 values. `false` (nothing written) otherwise.
pub fn attention_scores<'k>(
    query: &[f32],
    keys: &HeadRows<'k, impl Fn(usize) -> &'k [f32]>,
    scale: f32,
    scores: &mut [f32],
) -> bool {
    // The query's groups of eight values.
    match query.len() {
        32 => on_this_cpu!(scores_with_query_held::<4>(query, keys, scale, scores), false),
        64 => on_this_cpu!(scores_with_query_held::<8>(query, keys, scale, scores), false),
        128 => on_this_cpu!(scores_with_query_held::<16>(query, keys, scale, scores), false),
        _ => false,
    }
}

/// One attention head's output, `out = Σ weights[p] × value(p)` from zero, position by
/// position (each step `add_scaled`'s), with the sums held in registers across the positions,
/// on this CPU's SIMD path: heads of 32, 64 or 128 values. `false` (nothing written)
/// otherwise.
pub fn accumulate_values<'v>(
    weights: &[f32],
    values: &HeadRows<'v, impl Fn(usize) -> &'v [f32]>,
    out: &mut [f32],
) -> bool {
    // The head's groups of eight values.
    match out.len() {
        32 => on_this_cpu!(values_with_sums_held::<4>(weights, values, out), false),
        64 => on_this_cpu!(values_with_sums_held::<8>(weights, values, out), false),
        128 => on_this_cpu!(values_with_sums_held::<16>(weights, values, out), false),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
