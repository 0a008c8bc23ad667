//! Scalar compute kernels: RMSNorm, softmax, RoPE, SwiGLU, activation quantization and the
//! row dot products of every weight type. The forward pass calls these; the SIMD paths are
//! checked against them.

#![forbid(unsafe_code)]

use libm::{cosf, fmaf, powf, roundf, sinf, sqrtf};

use crate::model::quant::{BLOCK_VALUES, f16_to_f32};
use crate::model::{Matrix, TensorType, Vector};

/// `out = x / rms(x) * weight`, the sum of squares taken by [`dot_floats`] (the order every
/// path repeats: `matmul::rmsnorm` gives the same bits).
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: Vector<'_>, epsilon: f32) {
    scale_by_rms(out, x, weight, epsilon, dot_floats(x, x));
}

/// `out = x / rms(x) * weight` given x's sum of squares; values past the end of `weight`
/// come out as 0.
pub fn scale_by_rms(out: &mut [f32], x: &[f32], weight: Vector<'_>, epsilon: f32, sum_of_squares: f32) {
    let scale = 1.0 / sqrtf(sum_of_squares / x.len() as f32 + epsilon);
    let weights =
        weight.data.chunks_exact(4).map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let mut outputs = out.iter_mut().zip(x);
    for ((out, value), weight) in (&mut outputs).zip(weights) {
        *out = weight * (scale * value);
    }
    outputs.for_each(|(out, _)| *out = 0.0);
}

/// In-place softmax, in the order the SIMD paths repeat: the maximum (NaNs ignored), each
/// value's [`exponential`] of its distance from it, their sum in eight lanes (value i in lane
/// i mod 8, then [`reduce_lanes`], then the values past the last eight one by one), and each
/// divided by the sum.
pub fn softmax(values: &mut [f32]) {
    let maximum = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0.0f32; 8];
    let mut groups = values.chunks_exact_mut(8);
    for group in &mut groups {
        for (lane, value) in lanes.iter_mut().zip(group) {
            *value = exponential(*value - maximum);
            *lane += *value;
        }
    }
    let mut sum = reduce_lanes(lanes);
    for value in groups.into_remainder() {
        *value = exponential(*value - maximum);
        sum += *value;
    }
    values.iter_mut().for_each(|value| *value /= sum);
}

/// Rotation tables for the rows of a pass: each pair's frequency (computed once), and the
/// cosine and sine of each pair's angle at each row's position (computed once per pass and
/// used by every layer).
#[derive(Clone, Debug)]
pub struct Rope {
    frequencies: alloc::vec::Vec<f32>,
    /// Row r's cosines at `r × pairs ..`.
    cosines: alloc::vec::Vec<f32>,
    /// Row r's sines at `r × pairs ..`.
    sines: alloc::vec::Vec<f32>,
}

impl Rope {
    /// Tables for heads of `head_dim` values (even), frequency `base`, and up to `rows` rows,
    /// each at position 0: pair i turns by position × base^(−2i / head_dim).
    pub fn new(head_dim: usize, base: f32, rows: usize) -> Self {
        let pairs = head_dim / 2;
        let frequencies =
            (0..pairs).map(|pair| 1.0 / powf(base, (2 * pair) as f32 / head_dim as f32)).collect();
        Self { frequencies, cosines: alloc::vec![1.0; pairs * rows], sines: alloc::vec![0.0; pairs * rows] }
    }

    /// Floats [`Rope::new`] holds.
    pub fn floats_for(head_dim: usize, rows: usize) -> usize {
        head_dim / 2 * (1 + 2 * rows)
    }

    /// Fills row `row`'s table for `position` (rows past the capacity are ignored).
    pub fn set_position(&mut self, row: usize, position: usize) {
        let pairs = self.frequencies.len();
        let range = row * pairs..(row + 1) * pairs;
        let (Some(cosines), Some(sines)) = (self.cosines.get_mut(range.clone()), self.sines.get_mut(range))
        else {
            return;
        };
        for ((cosine, sine), frequency) in cosines.iter_mut().zip(sines).zip(&self.frequencies) {
            let angle = position as f32 * frequency;
            *cosine = cosf(angle);
            *sine = sinf(angle);
        }
    }

    /// Rotates adjacent pairs (2i, 2i+1) of every head in `vector` by row `row`'s angles.
    pub fn rotate(&self, row: usize, vector: &mut [f32]) {
        let pairs = self.frequencies.len();
        let range = row * pairs..(row + 1) * pairs;
        let (Some(cosines), Some(sines)) = (self.cosines.get(range.clone()), self.sines.get(range)) else {
            return;
        };
        for head in vector.chunks_exact_mut(2 * pairs) {
            for (pair, (cosine, sine)) in head.chunks_exact_mut(2).zip(cosines.iter().zip(sines)) {
                let (first, second) = (pair[0], pair[1]);
                pair[0] = first * cosine - second * sine;
                pair[1] = first * sine + second * cosine;
            }
        }
    }
}

/// Lower bound of [`exponential`]'s argument: below it e^x is no longer a normal f32
/// (−126 × ln 2 ≈ −87.34), and the result stays at about 1.2e-38.
pub const EXPONENT_LOWEST: f32 = -87.33;
/// Upper bound of [`exponential`]'s computed range: 127.5 × ln 2 (≈ 88.38, e^x ≈ 2.4e38), so
/// the power of two stays a finite f32. Above it the result is infinity.
pub const EXPONENT_HIGHEST: f32 = 88.37;
/// 1.5 × 2^23: adding it to a number below 2^22 in magnitude rounds that number to the
/// nearest integer (ties to even) and leaves the integer in the low mantissa bits.
pub const ROUNDING_SHIFTER: f32 = 12_582_912.0;
/// log2(e).
pub const LOG2_E: f32 = core::f32::consts::LOG2_E;
/// ln 2 as the nearest f32, and what it leaves out: together they reduce the argument to
/// well under an ulp of error.
pub const LN_2_HIGH: f32 = core::f32::consts::LN_2;
/// `ln 2 − LN_2_HIGH`.
pub const LN_2_LOW: f32 = -1.904_654_3e-9;
/// Taylor coefficients 1/k! of e^r for k = 7 down to 0: on |r| ≤ ln 2 / 2 the truncation
/// error is below 5e-9, well under the rounding of the Horner steps.
pub const EXPONENTIAL_COEFFICIENTS: [f32; 8] =
    [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// e^x to within an ulp (checked against f64 in the tests), in operations the
/// SIMD paths repeat one for one, so that they give the same bits: x is clamped to
/// [−87.33, 88.37]; n = x · log2(e) rounded to the nearest integer; r = x − n · ln 2 (in two
/// fused steps); e^r by Horner's rule over [`EXPONENTIAL_COEFFICIENTS`] (fused
/// multiply-adds); the result is e^r × 2^n, 2^n built from n's bits. Above 88.37 the result
/// is infinity, as `expf`'s is above 88.72 (so SiLU of a gate below −88.37 is −0 rather than
/// a subnormal, which x86 cores multiply through slow microcode); below −87.33 it stays at
/// about 1.2e-38 rather than reaching 0 or a subnormal. NaN gives NaN.
pub fn exponential(x: f32) -> f32 {
    if x > EXPONENT_HIGHEST {
        return f32::INFINITY;
    }
    // NaN passes through `clamp` as NaN.
    let clamped = x.clamp(EXPONENT_LOWEST, EXPONENT_HIGHEST);
    let shifted = fmaf(clamped, LOG2_E, ROUNDING_SHIFTER);
    let whole = shifted - ROUNDING_SHIFTER;
    let reduced = fmaf(-whole, LN_2_LOW, fmaf(-whole, LN_2_HIGH, clamped));
    let mut polynomial = EXPONENTIAL_COEFFICIENTS[0];
    for coefficient in &EXPONENTIAL_COEFFICIENTS[1..] {
        polynomial = fmaf(polynomial, reduced, *coefficient);
    }
    polynomial * power_of_two(shifted)
}

/// 2^n for the n that [`ROUNDING_SHIFTER`] left in `shifted`'s low mantissa bits: shifted
/// left by 23, the shifter's own bits fall off the top and n lands in the exponent field.
pub fn power_of_two(shifted: f32) -> f32 {
    f32::from_bits((shifted.to_bits() << 23).wrapping_add(127 << 23))
}

/// `gate = silu(gate) × up`, the SwiGLU activation, with silu(g) = g / (1 + e^−g) and e^−g
/// from [`exponential`]; the SIMD paths give the same bits.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (gate, up) in gate.iter_mut().zip(up) {
        *gate = *gate / (1.0 + exponential(-*gate)) * up;
    }
}

/// Dot product of two float vectors (an attention query and key) in eight interleaved lanes
/// of fused multiply-adds, reduced by [`reduce_lanes`]; elements past the last whole eight
/// are added one by one at the end. The SIMD paths keep the same order.
pub fn dot_floats(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut a_groups = a.chunks_exact(8);
    let mut b_groups = b.chunks_exact(8);
    for (a_group, b_group) in (&mut a_groups).zip(&mut b_groups) {
        for ((lane, a), b) in lanes.iter_mut().zip(a_group).zip(b_group) {
            *lane = fmaf(*a, *b, *lane);
        }
    }
    let mut total = reduce_lanes(lanes);
    for (a, b) in a_groups.remainder().iter().zip(b_groups.remainder()) {
        total = fmaf(*a, *b, total);
    }
    total
}

/// `out[i] = weight × values[i] + out[i]`, fused (an attention value row added with its
/// weight); every element stands alone, so the SIMD paths give the same bits.
pub fn add_scaled(out: &mut [f32], weight: f32, values: &[f32]) {
    for (out, value) in out.iter_mut().zip(values) {
        *out = fmaf(weight, *value, *out);
    }
}

/// One attention head's keys (or values) as a KV store hands them out: `run(p)` is the
/// store's rows from position `p` on, as many as lie together (a block of a paged cache),
/// `stride` floats each, and the head's part of a row is `range` of it.
pub struct HeadRows<'k, Run: Fn(usize) -> &'k [f32]> {
    /// The store's run of rows from a position.
    pub run: Run,
    /// Floats per row.
    pub stride: usize,
    /// The head's part of each row.
    pub range: core::ops::Range<usize>,
}

impl<'k, Run: Fn(usize) -> &'k [f32]> HeadRows<'k, Run> {
    /// The store's rows from `position` (of `0 .. count`): `(run, rows)` with `rows` ≥ 1
    /// whole rows at the start of `run`, at most `count − position`; or `rows` = 0 when the
    /// store gave less than a row (none hands one out), whose [`Self::part`] is then the
    /// position's one, short, row.
    #[inline]
    pub fn run_at(&self, position: usize, count: usize) -> (&'k [f32], usize) {
        let run = (self.run)(position);
        (run, (run.len() / self.stride.max(1)).min(count - position))
    }

    /// The head's part of `row`, cut short where the row is.
    #[inline]
    pub fn part(&self, row: &'k [f32]) -> &'k [f32] {
        let end = self.range.end.min(row.len());
        &row[self.range.start.min(end)..end]
    }

    /// Calls `each(position, part)` for the head's part of the rows of positions `0 ..
    /// count`, in order, one [`Self::run_at`] per run. The SIMD kernels write this loop out
    /// in their own bodies: through `each` (or a macro calling a closure per position) the
    /// compiled NEON scores took 60.5 instructions per position of a 64-value head instead
    /// of 46.8.
    pub fn for_each(&self, count: usize, mut each: impl FnMut(usize, &'k [f32])) {
        let mut position = 0;
        while position < count {
            let (run, rows) = self.run_at(position, count);
            if rows == 0 {
                each(position, self.part(run));
                position += 1;
                continue;
            }
            for row in run.chunks_exact(self.stride.max(1)).take(rows) {
                each(position, self.part(row));
                position += 1;
            }
        }
    }
}

/// One activation vector quantized to integers `T` (8 or 16 bits) in blocks of 32, as the
/// integer kernels read it.
#[derive(Clone, Copy, Debug)]
pub struct Quantized<'a, T> {
    /// The values, 32 per block.
    pub values: &'a [T],
    /// Per block: `[scale, scale × sum of the block's values]` (the second serves Q4_1's
    /// minimum term).
    pub block_scales: &'a [[f32; 2]],
}

/// Activations quantized in blocks of 32, to 8 bits ([`Self::quantize`]) or 16 bits
/// ([`Self::quantize_wide`]), each block with its scale and `scale × sum of its values`; the
/// block scales are those of the latest quantization.
#[derive(Clone, Debug, Default)]
pub struct QuantizedVector {
    /// The 8-bit values, in −127..=127.
    pub values: alloc::vec::Vec<i8>,
    /// The 16-bit values, in −32767..=32767.
    pub wide_values: alloc::vec::Vec<i16>,
    /// Per block: `[scale, scale × sum of values]`.
    pub block_scales: alloc::vec::Vec<[f32; 2]>,
    /// Float activations' [`block_sum_lanes`] per block, filled by [`Self::sum_blocks`].
    pub block_sums: alloc::vec::Vec<[f32; 8]>,
}

impl QuantizedVector {
    /// Room for `length` values (a multiple of 32, rounded up otherwise).
    pub fn with_capacity(length: usize) -> Self {
        let blocks = length.div_ceil(BLOCK_VALUES);
        Self {
            values: alloc::vec![0; blocks * BLOCK_VALUES],
            wide_values: alloc::vec![0; blocks * BLOCK_VALUES],
            block_scales: alloc::vec![[0.0; 2]; blocks],
            block_sums: alloc::vec![[0.0; 8]; blocks],
        }
    }

    /// Computes [`block_sum_lanes`] of every block of `x` into `block_sums` and returns them.
    pub fn sum_blocks(&mut self, x: &[f32]) -> &[[f32; 8]] {
        let blocks = sum_blocks(x, &mut self.block_sums);
        &self.block_sums[..blocks]
    }

    /// Quantizes `x` (whose length is a multiple of 32 and fits the capacity) to 8 bits:
    /// values in −127..=127, scale = max|x| / 127.
    pub fn quantize(&mut self, x: &[f32]) {
        ScalarBlocks.int8(x, &mut self.values, &mut self.block_scales);
    }

    /// Quantizes `x` (whose length is a multiple of 32 and fits the capacity) to 16 bits:
    /// values in −32767..=32767, scale = max|x| / 32767.
    pub fn quantize_wide(&mut self, x: &[f32]) {
        ScalarBlocks.int16(x, &mut self.wide_values, &mut self.block_scales);
    }

    /// The 8-bit values of the latest [`Self::quantize`].
    pub fn int8(&self) -> Quantized<'_, i8> {
        Quantized { values: &self.values, block_scales: &self.block_scales }
    }

    /// The 16-bit values of the latest [`Self::quantize_wide`].
    pub fn int16(&self) -> Quantized<'_, i16> {
        Quantized { values: &self.wide_values, block_scales: &self.block_scales }
    }
}

/// Fills `sums` with [`block_sum_lanes`] of each whole block of `x`; returns the blocks done.
fn sum_blocks(x: &[f32], sums: &mut [[f32; 8]]) -> usize {
    let blocks = (x.len() / BLOCK_VALUES).min(sums.len());
    for (sums, values) in sums.iter_mut().zip(x.chunks_exact(BLOCK_VALUES)) {
        *sums = block_sum_lanes(values);
    }
    blocks
}

/// Quantizes activations block by block: [`ScalarBlocks`] here, the oracle; the fastest
/// path in `matmul`, which gives the same bits.
pub trait QuantizeBlocks {
    /// Each whole block of 32 of `x` into `out` (as many blocks as `out` and `block_scales`
    /// hold), values in −127..=127: scale = max|x| / 127, value = round(x / scale) (half
    /// away from zero), and the block's `[scale, scale × sum of its values]`.
    fn int8(&self, x: &[f32], out: &mut [i8], block_scales: &mut [[f32; 2]]);
    /// The same at 16 bits: values in −32767..=32767, scale = max|x| / 32767.
    fn int16(&self, x: &[f32], out: &mut [i16], block_scales: &mut [[f32; 2]]);
}

/// The scalar block quantizer.
pub struct ScalarBlocks;

impl QuantizeBlocks for ScalarBlocks {
    fn int8(&self, x: &[f32], out: &mut [i8], block_scales: &mut [[f32; 2]]) {
        quantize_blocks(x, out, block_scales, 127.0, |value| roundf(value) as i8);
    }

    fn int16(&self, x: &[f32], out: &mut [i16], block_scales: &mut [[f32; 2]]) {
        quantize_blocks(x, out, block_scales, 32767.0, |value| roundf(value) as i16);
    }
}

/// Quantizes each block of 32 of `x` into `outputs` with `round` (which gets values already
/// scaled into −`largest`..=`largest`), filling each block's scale and `scale × sum`.
fn quantize_blocks<T: Copy + Into<i32>>(
    x: &[f32],
    outputs: &mut [T],
    block_scales: &mut [[f32; 2]],
    largest: f32,
    round: impl Fn(f32) -> T,
) {
    let blocks = x.chunks_exact(BLOCK_VALUES).zip(outputs.chunks_exact_mut(BLOCK_VALUES));
    for ((block, out), [scale, scaled_sum]) in blocks.zip(block_scales) {
        let maximum = block.iter().fold(0.0f32, |acc, value| acc.max(value.abs()));
        *scale = maximum / largest;
        let inverse = if maximum > 0.0 { largest / maximum } else { 0.0 };
        let mut total = 0i32;
        for (out, value) in out.iter_mut().zip(block) {
            *out = round(value * inverse);
            total += (*out).into();
        }
        *scaled_sum = *scale * total as f32;
    }
}

/// Why activation rows and a matrix (or an output buffer) do not fit together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeError {
    /// The activations are not whole rows of `columns` values (or `columns` is 0).
    NotWholeRows {
        /// Values given.
        length: usize,
        /// Values per row.
        columns: usize,
    },
    /// More rows or columns than [`QuantizedRows::with_capacity`] made room for.
    OverCapacity {
        /// Rows given.
        rows: usize,
        /// Columns given.
        columns: usize,
        /// Rows of room.
        capacity_rows: usize,
        /// Columns of room.
        capacity_columns: usize,
    },
    /// The matrix's rows are not as long as the activation rows.
    ColumnsDiffer {
        /// Values per matrix row.
        matrix: usize,
        /// Values per activation row.
        input: usize,
    },
    /// The requested matrix rows run past its end.
    RowsOutOfRange {
        /// First row requested.
        first: usize,
        /// Rows requested.
        count: usize,
        /// Rows the matrix has.
        rows: usize,
    },
    /// The output buffer is shorter than rows × vectors.
    OutputTooShort {
        /// Values the product writes.
        needed: usize,
        /// Values the buffer holds.
        length: usize,
    },
}

impl core::fmt::Display for ShapeError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NotWholeRows { length, columns } => {
                write!(formatter, "{length} activations are not whole rows of {columns}")
            }
            Self::OverCapacity { rows, columns, capacity_rows, capacity_columns } => write!(
                formatter,
                "{rows} rows of {columns} exceed the room for {capacity_rows} rows of {capacity_columns}"
            ),
            Self::ColumnsDiffer { matrix, input } => {
                write!(formatter, "matrix rows of {matrix} values meet activation rows of {input}")
            }
            Self::RowsOutOfRange { first, count, rows } => {
                write!(formatter, "rows {first}..{} of a matrix of {rows} rows", first.saturating_add(count))
            }
            Self::OutputTooShort { needed, length } => {
                write!(formatter, "the product writes {needed} values into a buffer of {length}")
            }
        }
    }
}

/// Up to a fixed number of activation rows (the N vectors of a matrix × N-vectors product:
/// prompt positions of a prefill chunk, or one row per sequence of a decode round),
/// prepared once for products with every matrix that reads them: quantized at
/// [`Precision::Int8`] and [`Precision::Int16`], block sums at [`Precision::Float`] (for
/// Q4_1 rows). Allocated once by [`Self::with_capacity`]; [`Self::quantize`] allocates
/// nothing. Rows are stored one after another (row j's values at `j × columns`, its block
/// scales at `j × columns / 32`).
#[derive(Clone, Debug)]
pub struct QuantizedRows {
    precision: Precision,
    capacity_rows: usize,
    capacity_columns: usize,
    values: alloc::vec::Vec<i8>,
    wide_values: alloc::vec::Vec<i16>,
    block_scales: alloc::vec::Vec<[f32; 2]>,
    block_sums: alloc::vec::Vec<[f32; 8]>,
}

impl QuantizedRows {
    /// Room for `rows` rows of up to `columns` values at `precision` (only what that
    /// precision needs is allocated).
    pub fn with_capacity(rows: usize, columns: usize, precision: Precision) -> Self {
        let values = rows * columns.div_ceil(BLOCK_VALUES) * BLOCK_VALUES;
        let blocks = rows * columns.div_ceil(BLOCK_VALUES);
        let quantized = |width: Precision| if precision == width { values } else { 0 };
        Self {
            precision,
            capacity_rows: rows,
            capacity_columns: columns,
            values: alloc::vec![0; quantized(Precision::Int8)],
            wide_values: alloc::vec![0; quantized(Precision::Int16)],
            block_scales: alloc::vec![[0.0; 2]; if precision == Precision::Float { 0 } else { blocks }],
            block_sums: alloc::vec![[0.0; 8]; if precision == Precision::Float { blocks } else { 0 }],
        }
    }

    /// Bytes [`Self::with_capacity`] allocates for `rows` rows of `columns` at `precision`.
    pub fn bytes_for(rows: usize, columns: usize, precision: Precision) -> usize {
        let blocks = rows * columns.div_ceil(BLOCK_VALUES);
        blocks
            * match precision {
                Precision::Float => 32,
                Precision::Int8 => 32 + 8,
                Precision::Int16 => 64 + 8,
            }
    }

    /// The precision these rows are prepared at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Prepares the rows of `x` (rows of `columns` values one after another) for products:
    /// quantizes each row at this precision (as [`QuantizedVector::quantize`] or
    /// [`QuantizedVector::quantize_wide`] would), or at [`Precision::Float`] sums its blocks.
    /// Rows whose length is not a multiple of 32 are kept as floats only (no quantized
    /// matrix has such rows). Returns the batch the product kernels read.
    pub fn quantize<'a>(&'a mut self, x: &'a [f32], columns: usize) -> Result<BatchInput<'a>, ShapeError> {
        self.quantize_with(x, columns, &ScalarBlocks)
    }

    /// [`Self::quantize`] with the block quantizer `blocks`.
    pub fn quantize_with<'a>(
        &'a mut self,
        x: &'a [f32],
        columns: usize,
        blocks_by: &impl QuantizeBlocks,
    ) -> Result<BatchInput<'a>, ShapeError> {
        let rows = self.rows_of(x, columns)?;
        if columns.is_multiple_of(BLOCK_VALUES) {
            let blocks = rows * columns / BLOCK_VALUES;
            match self.precision {
                Precision::Float => {
                    sum_blocks(x, &mut self.block_sums[..blocks]);
                }
                Precision::Int8 => {
                    blocks_by.int8(x, &mut self.values[..rows * columns], &mut self.block_scales[..blocks])
                }
                Precision::Int16 => blocks_by.int16(
                    x,
                    &mut self.wide_values[..rows * columns],
                    &mut self.block_scales[..blocks],
                ),
            }
        }
        Ok(BatchInput { floats: x, rows, columns, prepared: self })
    }
}

impl QuantizedRows {
    /// How many rows of `columns` values `x` holds, if they are whole rows within the room.
    fn rows_of(&self, x: &[f32], columns: usize) -> Result<usize, ShapeError> {
        if columns == 0 || !x.len().is_multiple_of(columns) {
            return Err(ShapeError::NotWholeRows { length: x.len(), columns });
        }
        let rows = x.len() / columns;
        if rows > self.capacity_rows || columns > self.capacity_columns {
            return Err(ShapeError::OverCapacity {
                rows,
                columns,
                capacity_rows: self.capacity_rows,
                capacity_columns: self.capacity_columns,
            });
        }
        Ok(rows)
    }

    /// The batch the latest [`Self::quantize`] prepared, read again: `x` must be the same rows
    /// it was given (a mismatch gives wrong products, nothing worse), so several cores can
    /// read one preparation.
    pub fn prepared<'a>(&'a self, x: &'a [f32], columns: usize) -> Result<BatchInput<'a>, ShapeError> {
        let rows = self.rows_of(x, columns)?;
        Ok(BatchInput { floats: x, rows, columns, prepared: self })
    }
}

/// N activation rows ready for a matrix × N-vectors product, as [`QuantizedRows::quantize`]
/// prepared them: the floats (for F32 and F16 matrices) and their quantization or block
/// sums (for Q8_0, Q4_0 and Q4_1 matrices).
#[derive(Clone, Copy, Debug)]
pub struct BatchInput<'a> {
    floats: &'a [f32],
    rows: usize,
    columns: usize,
    prepared: &'a QuantizedRows,
}

impl<'a> BatchInput<'a> {
    /// The number of vectors, N.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per vector.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The precision the vectors meet quantized matrices at.
    pub fn precision(&self) -> Precision {
        self.prepared.precision
    }

    /// The float vectors, one after another.
    pub fn floats(&self) -> &'a [f32] {
        self.floats
    }

    /// Blocks per vector (whole blocks of 32; 0 when rows are not whole blocks).
    fn blocks(&self) -> usize {
        if self.columns.is_multiple_of(BLOCK_VALUES) { self.columns / BLOCK_VALUES } else { 0 }
    }

    /// All vectors' 8-bit quantization (values and block scales one vector after another),
    /// when prepared at [`Precision::Int8`].
    pub fn int8(&self) -> Option<Quantized<'a, i8>> {
        let prepared: &'a QuantizedRows = self.prepared;
        (prepared.precision == Precision::Int8).then(|| Quantized {
            values: &prepared.values[..self.rows * self.blocks() * BLOCK_VALUES],
            block_scales: &prepared.block_scales[..self.rows * self.blocks()],
        })
    }

    /// All vectors' 16-bit quantization, when prepared at [`Precision::Int16`].
    pub fn int16(&self) -> Option<Quantized<'a, i16>> {
        let prepared: &'a QuantizedRows = self.prepared;
        (prepared.precision == Precision::Int16).then(|| Quantized {
            values: &prepared.wide_values[..self.rows * self.blocks() * BLOCK_VALUES],
            block_scales: &prepared.block_scales[..self.rows * self.blocks()],
        })
    }

    /// All vectors' block sums, when prepared at [`Precision::Float`].
    pub fn block_sums(&self) -> Option<&'a [[f32; 8]]> {
        let prepared: &'a QuantizedRows = self.prepared;
        (prepared.precision == Precision::Float).then(|| &prepared.block_sums[..self.rows * self.blocks()])
    }

    /// Vector `index` as the single-vector input that rows of `tensor_type` take, or `None`
    /// past the last vector.
    pub fn input(&self, index: usize, tensor_type: TensorType) -> Option<Input<'a>> {
        if index >= self.rows {
            return None;
        }
        let floats = &self.floats[index * self.columns..(index + 1) * self.columns];
        let blocks = self.blocks();
        let values = index * blocks * BLOCK_VALUES..(index + 1) * blocks * BLOCK_VALUES;
        let scales = index * blocks..(index + 1) * blocks;
        if !takes_quantized_input(tensor_type, self.precision()) {
            return Some(match (tensor_type, self.block_sums()) {
                (TensorType::Q4_1, Some(sums)) => Input::FloatSummed(floats, &sums[scales]),
                _ => Input::Float(floats),
            });
        }
        Some(match (self.int8(), self.int16()) {
            (Some(all), _) => Input::Quantized(Quantized {
                values: &all.values[values],
                block_scales: &all.block_scales[scales],
            }),
            (_, Some(all)) => Input::Quantized16(Quantized {
                values: &all.values[values],
                block_scales: &all.block_scales[scales],
            }),
            (None, None) => Input::Float(floats),
        })
    }
}

/// The input of a matrix-vector product: floats for float matrices, quantized for the rest.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Float activations.
    Float(&'a [f32]),
    /// Float activations with every block's [`block_sum_lanes`] computed once for all rows
    /// (Q4_1's minimum terms need them). Gives the same bits as `Float`.
    FloatSummed(&'a [f32], &'a [[f32; 8]]),
    /// Activations quantized to 8 bits ([`QuantizedVector::quantize`]).
    Quantized(Quantized<'a, i8>),
    /// Activations quantized to 16 bits ([`QuantizedVector::quantize_wide`]).
    Quantized16(Quantized<'a, i16>),
}

/// The f16 at byte `at` of `bytes`, as f32.
pub fn half(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Dot product of an f32 row (little-endian bytes) with `x`, in eight interleaved lanes of
/// fused multiply-adds that are summed pairwise at the end (the SIMD paths keep the same
/// order).
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut row_chunks = row.chunks_exact(32);
    let mut x_chunks = x.chunks_exact(8);
    for (bytes, values) in (&mut row_chunks).zip(&mut x_chunks) {
        for lane in 0..8 {
            let at = lane * 4;
            let weight = f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            lanes[lane] = fmaf(weight, values[lane], lanes[lane]);
        }
    }
    let mut total = reduce_lanes(lanes);
    for (bytes, value) in row_chunks.remainder().chunks_exact(4).zip(x_chunks.remainder()) {
        total = fmaf(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), *value, total);
    }
    total
}

/// Sums eight lanes as ((0+4)+(2+6)) + ((1+5)+(3+7)).
pub fn reduce_lanes(lanes: [f32; 8]) -> f32 {
    let quad = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    reduce_quad(quad)
}

/// Sums four lanes as (0+2) + (1+3).
pub fn reduce_quad(lanes: [f32; 4]) -> f32 {
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
}

/// Dot product of an F16 row with `x`.
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(x)
        .map(|(bytes, value)| f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])) * value)
        .sum()
}

/// Integer products of one block's 32 codes with its 32 activations (8 or 16 bits), summed
/// exactly: the total is at most 32 × 128 × 32767 < 2^31 in magnitude, so any grouping of
/// the sum gives the same integer. (For 4-bit codes it stays below 2^24, so the conversion
/// to f32 is exact too; Q8_0 totals at 16 bits may round there, identically on every path.)
pub fn block_integer_total<T: Copy + Into<i32>>(codes: &[i32; 32], activations: &[T]) -> i32 {
    codes.iter().zip(activations).map(|(code, value)| code * (*value).into()).sum()
}

/// Where a quantized weight format keeps the parts the integer kernels read.
#[derive(Clone, Copy)]
struct IntegerFormat {
    /// Bytes per block of 32.
    block_bytes: usize,
    /// The block's 32 codes.
    codes: fn(&[u8]) -> [i32; 32],
    /// Byte offset of the f16 minimum (Q4_1).
    minimum_at: Option<usize>,
}

/// The integer kernels' view of `tensor_type`, if it is quantized.
fn integer_format(tensor_type: TensorType) -> Option<IntegerFormat> {
    match tensor_type {
        TensorType::Q8_0 => Some(IntegerFormat { block_bytes: 34, codes: codes_q8_0, minimum_at: None }),
        TensorType::Q4_0 => Some(IntegerFormat { block_bytes: 18, codes: codes_q4_0, minimum_at: None }),
        TensorType::Q4_1 => Some(IntegerFormat { block_bytes: 20, codes: codes_q4_1, minimum_at: Some(2) }),
        TensorType::F32 | TensorType::F16 => None,
    }
}

/// Dot product of a row of blocks with integer activations (8 or 16 bits), the order every
/// SIMD path follows: block b goes to float lane b mod 4 of a four-lane accumulator, by one
/// fused multiply-add of its [`block_integer_total`] (converted to f32) with `weight scale ×
/// activation scale` (one f32 product), then, for Q4_1, one of its minimum with the
/// activations' `scale × sum`; the result is [`reduce_quad`] of the accumulator. Four blocks
/// thus take one vector of each operation, and the integer sums of a block reduce in
/// whatever order is cheapest.
fn dot_blocks_integer<T: Copy + Into<i32>>(row: &[u8], x: Quantized<'_, T>, format: IntegerFormat) -> f32 {
    let mut accumulator = [0.0f32; 4];
    let blocks = row.chunks_exact(format.block_bytes).zip(x.values.chunks_exact(32)).zip(x.block_scales);
    for (index, ((block, activations), [scale, scaled_sum])) in blocks.enumerate() {
        let total = block_integer_total(&(format.codes)(block), activations);
        let lane = &mut accumulator[index % 4];
        *lane = fmaf(half(block, 0) * scale, total as f32, *lane);
        if let Some(at) = format.minimum_at {
            *lane = fmaf(half(block, at), *scaled_sum, *lane);
        }
    }
    reduce_quad(accumulator)
}

/// Dot product of a row of `tensor_type` (Q8_0, Q4_0 or Q4_1; others yield 0) with integer
/// activations.
fn dot_integer<T: Copy + Into<i32>>(tensor_type: TensorType, row: &[u8], x: Quantized<'_, T>) -> f32 {
    integer_format(tensor_type).map_or(0.0, |format| dot_blocks_integer(row, x, format))
}

/// Dot product of a Q8_0 row with 8-bit activations.
pub fn dot_q8_0(row: &[u8], x: &QuantizedVector) -> f32 {
    dot_integer(TensorType::Q8_0, row, x.int8())
}

/// Dot product of a Q4_0 row with 8-bit activations.
pub fn dot_q4_0(row: &[u8], x: &QuantizedVector) -> f32 {
    dot_integer(TensorType::Q4_0, row, x.int8())
}

/// Dot product of a Q4_1 row with 8-bit activations.
pub fn dot_q4_1(row: &[u8], x: &QuantizedVector) -> f32 {
    dot_integer(TensorType::Q4_1, row, x.int8())
}

/// Products `codes[i] × x[i]` of one block of 32, summed into eight lanes: lane j adds the
/// products of elements j, j+8, j+16 and j+24 in that order, each with one fused
/// multiply-add. The SIMD paths keep this order and fuse the same way, so they agree bit
/// for bit.
pub fn block_product_lanes(codes: &[i32; 32], x: &[f32]) -> [f32; 8] {
    let mut lanes = [0.0f32; 8];
    for group in x[..32].chunks_exact(8).zip(codes.chunks_exact(8)) {
        for (lane, (value, code)) in lanes.iter_mut().zip(group.0.iter().zip(group.1)) {
            *lane = fmaf(*code as f32, *value, *lane);
        }
    }
    lanes
}

/// One block of 32 values summed into eight lanes, in the order of [`block_product_lanes`].
pub fn block_sum_lanes(x: &[f32]) -> [f32; 8] {
    let mut lanes = [0.0f32; 8];
    for group in x[..32].chunks_exact(8) {
        for (lane, value) in lanes.iter_mut().zip(group) {
            *lane += value;
        }
    }
    lanes
}

/// Dot product of a row of blocks with float activations. Each block adds
/// `scale × products (+ minimum × sums)` to an eight-lane accumulator, which
/// [`reduce_lanes`] sums at the end. The SIMD paths follow the same order.
fn dot_blocks_float(
    row: &[u8],
    x: &[f32],
    block_bytes: usize,
    codes: impl Fn(&[u8]) -> [i32; 32],
    minimum: Option<(usize, Option<&[[f32; 8]]>)>,
) -> f32 {
    let mut accumulator = [0.0f32; 8];
    for (index, (block, values)) in row.chunks_exact(block_bytes).zip(x.chunks_exact(32)).enumerate() {
        let products = block_product_lanes(&codes(block), values);
        let scale = half(block, 0);
        match minimum {
            Some((at, precomputed)) => {
                let sums = precomputed
                    .and_then(|sums| sums.get(index).copied())
                    .unwrap_or_else(|| block_sum_lanes(values));
                let minimum = half(block, at);
                for lane in 0..8 {
                    accumulator[lane] =
                        fmaf(minimum, sums[lane], fmaf(scale, products[lane], accumulator[lane]));
                }
            }
            None => {
                for lane in 0..8 {
                    accumulator[lane] = fmaf(scale, products[lane], accumulator[lane]);
                }
            }
        }
    }
    reduce_lanes(accumulator)
}

/// The 32 codes of a Q8_0 block.
fn codes_q8_0(block: &[u8]) -> [i32; 32] {
    core::array::from_fn(|index| i32::from(block[2 + index] as i8))
}

/// The 32 nibbles of a 4-bit block whose packed bytes start at `start`: low nibbles are
/// elements 0..16, high nibbles 16..32.
fn codes_nibbles(block: &[u8], start: usize, offset: i32) -> [i32; 32] {
    core::array::from_fn(|index| {
        let byte = block[start + index % 16];
        i32::from(if index < 16 { byte & 0x0f } else { byte >> 4 }) - offset
    })
}

/// The 32 codes of a Q4_0 block (nibbles − 8).
fn codes_q4_0(block: &[u8]) -> [i32; 32] {
    codes_nibbles(block, 2, 8)
}

/// The 32 codes of a Q4_1 block (nibbles).
fn codes_q4_1(block: &[u8]) -> [i32; 32] {
    codes_nibbles(block, 4, 0)
}

/// Dot product of a Q8_0 row with float activations.
pub fn dot_q8_0_float(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks_float(row, x, 34, codes_q8_0, None)
}

/// Dot product of a Q4_0 row with float activations.
pub fn dot_q4_0_float(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks_float(row, x, 18, codes_q4_0, None)
}

/// Dot product of a Q4_1 row with float activations.
pub fn dot_q4_1_float(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks_float(row, x, 20, codes_q4_1, Some((2, None)))
}

/// How activations meet quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Activations stay f32; weight blocks are expanded as they are read. Matches a
    /// dequantize-then-multiply reference to float rounding. The fastest on x86_64 hosts
    /// (AVX2), but about 3 times slower than `Int16` under QEMU, whose TCG emulates float
    /// NEON in software helpers (docs/BENCHMARKS.md).
    Float,
    /// Activations are quantized to 8 bits per block of 32 and dotted in integers, as
    /// llama.cpp does: off by the activation rounding, enough to change SmolLM2-135M's
    /// greedy answers.
    Int8,
    /// Activations are quantized to 16 bits per block of 32 and dotted in integers (exact
    /// in i32), then scaled in f32: within 0.01 of `Float`'s SmolLM2 logits, and under QEMU
    /// nearly as fast as `Int8`. The default, so that the unikernel and the host CLI compute
    /// the same bits.
    #[default]
    Int16,
}

/// Dot product of one encoded row of `tensor_type` with `input`, on the scalar path.
/// Quantized input only serves quantized types; float types given quantized input yield 0.
pub fn dot_scalar(tensor_type: TensorType, row: &[u8], input: Input<'_>) -> f32 {
    match (tensor_type, input) {
        (TensorType::Q4_1, Input::FloatSummed(x, sums)) => {
            dot_blocks_float(row, x, 20, codes_q4_1, Some((2, Some(sums))))
        }
        (_, Input::FloatSummed(x, _)) => dot_scalar(tensor_type, row, Input::Float(x)),
        (TensorType::F32, Input::Float(x)) => dot_f32(row, x),
        (TensorType::F16, Input::Float(x)) => dot_f16(row, x),
        (TensorType::Q8_0, Input::Float(x)) => dot_q8_0_float(row, x),
        (TensorType::Q4_0, Input::Float(x)) => dot_q4_0_float(row, x),
        (TensorType::Q4_1, Input::Float(x)) => dot_q4_1_float(row, x),
        (_, Input::Quantized(x)) => dot_integer(tensor_type, row, x),
        (_, Input::Quantized16(x)) => dot_integer(tensor_type, row, x),
    }
}

/// Whether rows of `tensor_type` take quantized input at `precision`.
pub fn takes_quantized_input(tensor_type: TensorType, precision: Precision) -> bool {
    precision != Precision::Float
        && matches!(tensor_type, TensorType::Q8_0 | TensorType::Q4_0 | TensorType::Q4_1)
}

/// Rows `first .. first + out.len() / N` of `matrix` times the N vectors of `input`, on the
/// scalar path: the value of row `first + r` for vector `j` goes to `out[r × N + j]`, and is
/// [`dot_scalar`] of that row with [`BatchInput::input`]`(j)`. The reference of the SIMD
/// matrix × N-vectors kernels; [`super::matmul::rows_multi`] checks the shapes first.
pub fn rows_multi_scalar(matrix: &Matrix<'_>, input: BatchInput<'_>, first: usize, out: &mut [f32]) {
    let vectors = input.rows();
    if vectors == 0 {
        return;
    }
    for (index, outputs) in out.chunks_exact_mut(vectors).enumerate() {
        let row = matrix.row(first + index);
        for (vector, output) in outputs.iter_mut().enumerate() {
            if let Some(vector_input) = input.input(vector, matrix.tensor_type) {
                *output = dot_scalar(matrix.tensor_type, row, vector_input);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::model::quant::{dequantize, quantize};
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn head_rows_give_every_position_in_order_with_one_fetch_per_run() {
        // Rows of 4 values, value = 10 × position + index; runs end at every multiple of 3
        // positions (as blocks of 3 would); the head is values 1..3 of each row.
        let rows: Vec<f32> =
            (0..12).flat_map(|position| (0..4).map(move |index| (10 * position + index) as f32)).collect();
        let fetches = core::cell::Cell::new(0);
        let run = |position: usize| {
            fetches.set(fetches.get() + 1);
            &rows[position * 4..(position / 3 + 1) * 12]
        };
        let head = HeadRows { run, stride: 4, range: 1..3 };
        let mut seen: Vec<Vec<f32>> = Vec::new();
        head.for_each(11, |position, row| {
            assert_eq!(position, seen.len());
            seen.push(row.to_vec());
        });
        let expected: Vec<_> =
            (0..11).map(|p| alloc::vec![(10 * p + 1) as f32, (10 * p + 2) as f32]).collect();
        assert_eq!(seen, expected);
        assert_eq!(fetches.get(), 4, "one fetch per run");
        // A run shorter than a row gives one short row, and the next position asks again.
        let short =
            HeadRows { run: |position: usize| &rows[position * 4..position * 4 + 2], stride: 4, range: 1..3 };
        let mut seen: Vec<Vec<f32>> = Vec::new();
        short.for_each(2, |_, row| seen.push(row.to_vec()));
        assert_eq!(seen, [alloc::vec![1.0], alloc::vec![11.0]]);
    }

    proptest! {
        #[test]
        fn quantized_dots_match_dequantized_math(
            weights in proptest::collection::vec(-2.0f32..2.0, 64),
            x in proptest::collection::vec(-3.0f32..3.0, 64),
        ) {
            let mut quantized = QuantizedVector::with_capacity(64);
            quantized.quantize(&x);
            let mut activations = [0.0f32; 64];
            for (index, value) in activations.iter_mut().enumerate() {
                *value = f32::from(quantized.values[index]) * quantized.block_scales[index / 32][0];
            }
            let mut wide = QuantizedVector::with_capacity(64);
            wide.quantize_wide(&x);
            let mut wide_activations = [0.0f32; 64];
            for (index, value) in wide_activations.iter_mut().enumerate() {
                *value = f32::from(wide.wide_values[index]) * wide.block_scales[index / 32][0];
                prop_assert!((*value - x[index]).abs() <= wide.block_scales[index / 32][0] * 0.51, "half a step off at most");
            }
            for tensor_type in [TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1] {
                let mut row = Vec::new();
                quantize(tensor_type, &weights, &mut row);
                let mut dequantized = [0.0f32; 64];
                dequantize(tensor_type, &row, &mut dequantized);
                let expected: f32 = dequantized.iter().zip(&activations).map(|(a, b)| a * b).sum();
                let got = dot_scalar(tensor_type, &row, Input::Quantized(quantized.int8()));
                prop_assert!((got - expected).abs() <= 1e-3 * (1.0 + expected.abs()), "{tensor_type:?} {got} {expected}");
                let expected: f32 = dequantized.iter().zip(&wide_activations).map(|(a, b)| a * b).sum();
                let got = dot_scalar(tensor_type, &row, Input::Quantized16(wide.int16()));
                prop_assert!((got - expected).abs() <= 1e-4 * (1.0 + expected.abs()), "{tensor_type:?} int16 {got} {expected}");
                let exact: f32 = dequantized.iter().zip(&x).map(|(a, b)| a * b).sum();
                // Off from float activations by at most the activation rounding: half a step each.
                let rounding: f32 =
                    dequantized.iter().enumerate().map(|(index, a)| a.abs() * wide.block_scales[index / 32][0] * 0.5).sum();
                prop_assert!((got - exact).abs() <= rounding + 1e-4 * (1.0 + exact.abs()), "{tensor_type:?} int16 {got} vs float {exact}");
                let got = dot_scalar(tensor_type, &row, Input::Float(&x));
                prop_assert!((got - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "{tensor_type:?} float {got} {exact}");
            }
            let mut row = Vec::new();
            quantize(TensorType::F32, &weights, &mut row);
            let expected: f64 = weights.iter().zip(&x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            prop_assert!((f64::from(dot_scalar(TensorType::F32, &row, Input::Float(&x))) - expected).abs() < 1e-3);
        }
    }

    #[test]
    fn exponential_is_within_an_ulp_of_the_exact_value() {
        let mut worst = 0.0f64;
        // Every 997th f32 bit pattern across the whole clamped range, both signs.
        for bits in (0u32..=0x42B0_0000).step_by(997) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                if !(EXPONENT_LOWEST..=EXPONENT_HIGHEST).contains(&x) {
                    continue;
                }
                let exact = f64::from(x).exp();
                let got = f64::from(exponential(x));
                // Error in units of the last place of the exact value.
                let ulp = f64::from(f32::EPSILON) * 2f64.powi(exact.log2().floor() as i32);
                worst = worst.max((got - exact).abs() / ulp);
            }
        }
        // Measured: 0.87 ulps at most.
        assert!(worst <= 1.0, "exponential is {worst} ulps off");
        // Infinity above the range, saturation instead of zero below; NaN stays NaN.
        assert!(exponential(EXPONENT_HIGHEST).is_finite() && exponential(EXPONENT_HIGHEST) > 2.0e38);
        assert_eq!(exponential(88.38), f32::INFINITY);
        assert_eq!(exponential(1000.0), f32::INFINITY);
        assert_eq!(exponential(f32::INFINITY), f32::INFINITY);
        assert!(exponential(-1000.0) > 0.0 && exponential(-1000.0) < 1.2e-38);
        assert!(exponential(f32::NAN).is_nan());
        assert_eq!(exponential(0.0), 1.0);
        // SwiGLU: silu(g) = g / (1 + e^-g) against f64.
        let mut gate = [-20.0f32, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0];
        let expected = gate.map(|g| f64::from(g) / (1.0 + (-f64::from(g)).exp()) * 2.0);
        swiglu(&mut gate, &[2.0; 7]);
        for (got, expected) in gate.iter().zip(expected) {
            assert!(
                (f64::from(*got) - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
                "{got} vs {expected}"
            );
        }
    }

    #[test]
    fn quantized_rows_quantize_each_row_as_a_vector_would() {
        let mut random = crate::rand::SplitMix64::new(11);
        let (rows, columns) = (3, 64);
        let x: Vec<f32> = (0..rows * columns).map(|_| random.next_f32() * 4.0 - 2.0).collect();
        for precision in [Precision::Int8, Precision::Int16, Precision::Float] {
            let mut batch = QuantizedRows::with_capacity(4, 96, precision);
            let input = batch.quantize(&x, columns).expect("fits");
            assert_eq!((input.rows(), input.columns(), input.precision()), (rows, columns, precision));
            for (index, row) in x.chunks_exact(columns).enumerate() {
                let mut single = QuantizedVector::with_capacity(columns);
                let expected = match precision {
                    Precision::Int8 => {
                        single.quantize(row);
                        Input::Quantized(single.int8())
                    }
                    Precision::Int16 => {
                        single.quantize_wide(row);
                        Input::Quantized16(single.int16())
                    }
                    Precision::Float => Input::FloatSummed(row, single.sum_blocks(row)),
                };
                let got = input.input(index, TensorType::Q4_1).expect("a row of the batch");
                assert_eq!(
                    alloc::format!("{got:?}"),
                    alloc::format!("{expected:?}"),
                    "{precision:?} row {index}"
                );
                let float = input.input(index, TensorType::F32).expect("a row of the batch");
                assert!(matches!(float, Input::Float(values) if values == row));
            }
            assert!(input.input(rows, TensorType::Q4_1).is_none());
        }
        let mut batch = QuantizedRows::with_capacity(2, 64, Precision::Int16);
        assert_eq!(
            batch.quantize(&x, 64).err(),
            Some(ShapeError::OverCapacity { rows: 3, columns: 64, capacity_rows: 2, capacity_columns: 64 })
        );
        assert_eq!(
            batch.quantize(&x[..100], 64).err(),
            Some(ShapeError::NotWholeRows { length: 100, columns: 64 })
        );
        assert_eq!(batch.quantize(&x, 0).err(), Some(ShapeError::NotWholeRows { length: 192, columns: 0 }));
        assert_eq!(
            batch.quantize(&x[..96], 96).err(),
            Some(ShapeError::OverCapacity { rows: 1, columns: 96, capacity_rows: 2, capacity_columns: 64 })
        );
        assert!(QuantizedRows::bytes_for(2, 64, Precision::Int16) >= 2 * 64 * 2);
    }

    #[test]
    fn softmax_and_rope_basics() {
        let mut values = [1.0, 2.0, 3.0];
        softmax(&mut values);
        assert!((values.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(values[2] > values[1] && values[1] > values[0]);
        let mut rope = Rope::new(4, 10_000.0, 2);
        rope.set_position(0, 0);
        rope.set_position(1, 1);
        let mut vector = [1.0, 2.0, 3.0, 4.0];
        rope.rotate(0, &mut vector);
        assert_eq!(vector, [1.0, 2.0, 3.0, 4.0]);
        rope.rotate(1, &mut vector);
        assert!((vector[0] - (cosf(1.0) - 2.0 * sinf(1.0))).abs() < 1e-6);
        // The second pair turns by 1 × 10000^(−1/2).
        assert!((vector[2] - (3.0 * cosf(0.01) - 4.0 * sinf(0.01))).abs() < 1e-6);
        let before = vector;
        rope.set_position(2, 5);
        rope.rotate(2, &mut vector);
        assert_eq!(vector, before, "a row past the capacity is left alone");
        assert_eq!(Rope::floats_for(4, 2), 2 * 5);
    }
}
