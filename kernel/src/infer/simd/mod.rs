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
mod x86;

#[cfg(target_arch = "aarch64")]
mod neon;

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
