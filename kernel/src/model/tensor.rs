//! Zero-copy tensor views over a loaded model buffer.

use super::quant::{TensorType, dequantize};

/// A named tensor borrowed from the model bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorView<'a> {
    /// The tensor name.
    pub name: &'a str,
    /// Element type.
    pub tensor_type: TensorType,
    /// Dimensions, innermost (contiguous) first; unused ones are 1.
    pub dimensions: [usize; 4],
    /// How many dimensions the tensor has.
    pub dimension_count: usize,
    /// The encoded data.
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Total number of values.
    pub fn elements(&self) -> usize {
        self.dimensions.iter().product()
    }

    /// This tensor as a matrix: rows of `dimensions[0]` values.
    pub fn matrix(&self) -> Matrix<'a> {
        Matrix {
            tensor_type: self.tensor_type,
            rows: self.dimensions[1..].iter().product(),
            columns: self.dimensions[0],
            data: self.data,
        }
    }
}

/// A row-major matrix of encoded values: `rows` rows of `columns` values each, in one of the
/// supported types. Weight matrices map an input of `columns` values to `rows` outputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matrix<'a> {
    /// Element type.
    pub tensor_type: TensorType,
    /// Number of rows (outputs).
    pub rows: usize,
    /// Values per row (inputs); a multiple of the type's block size.
    pub columns: usize,
    /// The encoded data, `rows × row_bytes()` long.
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.columns / self.tensor_type.block_values() * self.tensor_type.block_bytes()
    }

    /// The encoded bytes of row `index` (empty when out of range).
    pub fn row(&self, index: usize) -> &'a [u8] {
        let size = self.row_bytes();
        index.checked_mul(size).and_then(|start| self.data.get(start..start + size)).unwrap_or(&[])
    }

    /// Dequantizes row `index` into `out` (`columns` long); returns the values written.
    pub fn dequantize_row(&self, index: usize, out: &mut [f32]) -> usize {
        dequantize(self.tensor_type, self.row(index), out)
    }
}
