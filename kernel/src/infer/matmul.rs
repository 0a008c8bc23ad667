//! Products on the fastest path this CPU has: the matrix × N-vectors kernel a core runs on
//! its share of a pass's rows ([`rows_multi`]; [`super::parallel`] hands the shares out),
//! and the vector kernels of the forward pass (SwiGLU, attention scores and value sums). Each picks [`super::simd`] when it has a path and the scalar kernels of
//! [`super::kernels`] otherwise; both give the same bits. Nothing here allocates.

#![forbid(unsafe_code)]

pub use super::kernels::{BatchInput, HeadRows, QuantizedRows, ShapeError};
use super::kernels::{Input, QuantizeBlocks, ScalarBlocks, dot_scalar};
use crate::model::{Matrix, TensorType, Vector};

/// Most cores a product is split across; any further cores stay idle.
pub const MAX_CORES: usize = 8;

/// Dot product of one encoded row of `tensor_type` with `input`, on the fastest path this
/// CPU has ([`super::simd`] when available, the scalar kernels otherwise; both give the same
/// bits).
pub fn dot(tensor_type: TensorType, row: &[u8], input: Input<'_>) -> f32 {
    super::simd::dot(tensor_type, row, input).unwrap_or_else(|| dot_scalar(tensor_type, row, input))
}

/// Computes rows `first .. first + out.len()` of the product into `out`.
pub fn rows_into(matrix: &Matrix<'_>, input: Input<'_>, first: usize, out: &mut [f32]) {
    if super::simd::rows(matrix, input, first, out) {
        return;
    }
    for (index, out) in out.iter_mut().enumerate() {
        *out = dot_scalar(matrix.tensor_type, matrix.row(first + index), input);
    }
}

/// Rows `first_row .. first_row + count` of `matrix` times the N vectors of `input` (N =
/// [`BatchInput::rows`], 1 to 32 in practice, any number allowed), on one core: the share of
/// rows a core takes in a batched pass (prefill chunks, decode rounds).
///
/// Layout: row by row, N values per row. The value of matrix row `first_row + r` for vector
/// `j` goes to `out[r × N + j]`, so a band of rows writes one contiguous piece of `out`
/// (`count × N` values; `out` may be longer, the rest is left alone).
///
/// For quantized matrices at [`Precision::Int8`] and [`Precision::Int16`] each weight block is
/// loaded and unpacked once for all N vectors ([`super::simd::rows_multi`]); other
/// combinations (float precision, F32 and F16 matrices) take the single-vector kernel once
/// per vector. Either way each value has the bits of [`dot`] of that row with
/// [`BatchInput::input`]`(j)`, so N = 1 gives exactly [`rows_into`]'s result.
///
/// Errors when `input`'s vectors are not as long as the matrix's rows, when the rows run past
/// the matrix, or when `out` is shorter than `count × N`.
pub fn rows_multi(
    matrix: &Matrix<'_>,
    input: BatchInput<'_>,
    first_row: usize,
    count: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    if input.columns() != matrix.columns {
        return Err(ShapeError::ColumnsDiffer { matrix: matrix.columns, input: input.columns() });
    }
    if first_row.checked_add(count).is_none_or(|end| end > matrix.rows) {
        return Err(ShapeError::RowsOutOfRange { first: first_row, count, rows: matrix.rows });
    }
    let vectors = input.rows();
    let needed = count.saturating_mul(vectors);
    if out.len() < needed {
        return Err(ShapeError::OutputTooShort { needed, length: out.len() });
    }
    if needed == 0 {
        return Ok(());
    }
    let out = &mut out[..needed];
    if super::simd::rows_multi(matrix, input, first_row, out) {
        return Ok(());
    }
    let tensor_type = matrix.tensor_type;
    for (index, outputs) in out.chunks_exact_mut(vectors).enumerate() {
        let row = matrix.row(first_row + index);
        for (vector, output) in outputs.iter_mut().enumerate() {
            if let Some(vector_input) = input.input(vector, tensor_type) {
                *output = dot(tensor_type, row, vector_input);
            }
        }
    }
    Ok(())
}

/// Block quantization of activations on the fastest path (the bits of [`ScalarBlocks`]).
pub struct FastestBlocks;

impl QuantizeBlocks for FastestBlocks {
    fn int8(&self, x: &[f32], out: &mut [i8], block_scales: &mut [[f32; 2]]) {
        if !super::simd::quantize_int8(x, out, block_scales) {
            ScalarBlocks.int8(x, out, block_scales);
        }
    }

    fn int16(&self, x: &[f32], out: &mut [i16], block_scales: &mut [[f32; 2]]) {
        if !super::simd::quantize_int16(x, out, block_scales) {
            ScalarBlocks.int16(x, out, block_scales);
        }
    }
}

/// `gate = silu(gate) × up`, the SwiGLU activation, on the fastest path (the bits of
/// [`super::kernels::swiglu`]).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    if !super::simd::swiglu(gate, up) {
        super::kernels::swiglu(gate, up);
    }
}

/// Dot product of two float vectors on the fastest path (the bits of
/// [`super::kernels::dot_floats`]).
pub fn dot_floats(a: &[f32], b: &[f32]) -> f32 {
    super::simd::dot_floats(a, b).unwrap_or_else(|| super::kernels::dot_floats(a, b))
}

/// In-place softmax on the fastest path (the bits of [`super::kernels::softmax`]).
pub fn softmax(values: &mut [f32]) {
    if !super::simd::softmax(values) {
        super::kernels::softmax(values);
    }
}

/// `out = x / rms(x) * weight` on the fastest path (the bits of [`super::kernels::rmsnorm`]).
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: Vector<'_>, epsilon: f32) {
    super::kernels::scale_by_rms(out, x, weight, epsilon, dot_floats(x, x));
}

/// `out[i] = weight × values[i] + out[i]`, fused, on the fastest path (the bits of
/// [`super::kernels::add_scaled`]).
pub fn add_scaled(out: &mut [f32], weight: f32, values: &[f32]) {
    if !super::simd::add_scaled(out, weight, values) {
        super::kernels::add_scaled(out, weight, values);
    }
}

/// One attention head's scores: `scores[p] = (query · key(p)) × scale` for every position
/// `p` of `scores` ([`dot_floats`] over the head's part of each key row); the SIMD path keeps
/// the query in registers across the positions.
pub fn attention_scores<'k>(
    query: &[f32],
    keys: &HeadRows<'k, impl Fn(usize) -> &'k [f32]>,
    scale: f32,
    scores: &mut [f32],
) {
    if !super::simd::attention_scores(query, keys, scale, scores) {
        attention_scores_by_position(query, keys, scale, scores);
    }
}

/// [`attention_scores`] one [`dot_floats`] call per position (the path for head widths the
/// SIMD kernel does not take, and the anchor of its benchmark).
pub fn attention_scores_by_position<'k>(
    query: &[f32],
    keys: &HeadRows<'k, impl Fn(usize) -> &'k [f32]>,
    scale: f32,
    scores: &mut [f32],
) {
    keys.for_each(scores.len(), |position, key| scores[position] = dot_floats(query, key) * scale);
}

/// One attention head's output: `out = Σ weights[p] × value(p)` over the positions of
/// `weights`, from zero, position by position ([`add_scaled`]); the SIMD path keeps the sums
/// in registers across the positions.
pub fn accumulate_values<'v>(
    weights: &[f32],
    values: &HeadRows<'v, impl Fn(usize) -> &'v [f32]>,
    out: &mut [f32],
) {
    if !super::simd::accumulate_values(weights, values, out) {
        accumulate_values_by_position(weights, values, out);
    }
}

/// [`accumulate_values`] one [`add_scaled`] call per position (the path for head widths the
/// SIMD kernel does not take, and the anchor of its benchmark).
pub fn accumulate_values_by_position<'v>(
    weights: &[f32],
    values: &HeadRows<'v, impl Fn(usize) -> &'v [f32]>,
    out: &mut [f32],
) {
    out.fill(0.0);
    values.for_each(weights.len(), |position, row| add_scaled(out, weights[position], row));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Precision;
    use crate::model::TensorType;
    use crate::model::quant::quantize;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn rows_multi_refuses_shapes_that_do_not_fit() {
        let mut random = crate::rand::SplitMix64::new(9);
        let values: Vec<f32> = (0..6 * 64).map(|_| random.next_f32() - 0.5).collect();
        let x: Vec<f32> = (0..3 * 64).map(|_| random.next_f32() - 0.5).collect();
        let mut data = Vec::new();
        quantize(TensorType::Q4_1, &values, &mut data);
        let matrix = Matrix { tensor_type: TensorType::Q4_1, rows: 6, columns: 64, data: &data };
        let mut prepared = QuantizedRows::with_capacity(3, 64, Precision::Int16);
        let input = prepared.quantize(&x, 64).expect("fits");
        let mut out = vec![f32::NAN; 6 * 3];
        assert_eq!(
            rows_multi(&matrix, input, 4, 3, &mut out),
            Err(ShapeError::RowsOutOfRange { first: 4, count: 3, rows: 6 })
        );
        assert_eq!(
            rows_multi(&matrix, input, usize::MAX, 2, &mut out),
            Err(ShapeError::RowsOutOfRange { first: usize::MAX, count: 2, rows: 6 })
        );
        assert_eq!(
            rows_multi(&matrix, input, 0, 6, &mut out[..17]),
            Err(ShapeError::OutputTooShort { needed: 18, length: 17 })
        );
        let narrow = Matrix { tensor_type: TensorType::Q4_1, rows: 12, columns: 32, data: &data };
        assert_eq!(
            rows_multi(&narrow, input, 0, 1, &mut out),
            Err(ShapeError::ColumnsDiffer { matrix: 32, input: 64 })
        );
        assert!(out.iter().all(|value| value.is_nan()), "a refused product writes nothing");
        // No rows: nothing to do, nothing written.
        assert_eq!(rows_multi(&matrix, input, 6, 0, &mut out), Ok(()));
        assert!(out.iter().all(|value| value.is_nan()));
        // A matrix whose data stops short of its rows (a broken view): no SIMD read past the
        // data; the missing rows come out as empty dot products.
        let short =
            Matrix { tensor_type: TensorType::Q4_1, rows: 6, columns: 64, data: &data[..data.len() / 2] };
        assert!(!super::super::simd::rows_multi(&short, input, 0, &mut out));
        rows_multi(&short, input, 0, 6, &mut out).expect("the shapes are what the view claims");
        assert!(out[9..].iter().all(|value| *value == 0.0));
        assert!(out[..9].iter().all(|value| value.is_finite()));
    }
}
