//! kernel-bench: the compute kernels on this host's SIMD path (AVX2 on x86-64, NEON on
//! aarch64) against the scalar kernels, one thread, on SmolLM2-sized rows (576 columns),
//! and prints markdown tables of nanoseconds per row:
//! - row dot products of Q8_0, Q4_0 and Q4_1 at float, int8 and int16 activations;
//! - the matrix × N-vectors kernel (`matmul::rows_multi`) per row per vector at N = 1, 8
//!   and 32, against N single-vector passes over the same rows;
//! - SwiGLU and the attention vector kernels per element.
//!
//! Every pair is timed in alternating rounds and the best round of each is kept (the host is
//! shared and noisy); before timing, each SIMD result is checked against the scalar bits.
//!
//! Then, when `valgrind` is installed, instructions per row, which repeat exactly from run to
//! run: the program runs itself once per case under callgrind (`--count CASE`), collecting
//! only inside [`counted_region`], and divides the count by the rows.

#![forbid(unsafe_code)]

mod usage;

use kernel::infer::kernels::{self, Input, QuantizedRows, QuantizedVector, dot_scalar, rows_multi_scalar};
use kernel::infer::{Precision, matmul, simd};
use kernel::model::{Matrix, TensorType};
use kernel::rand::SplitMix64;
use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::time::Instant;

/// Columns per row (SmolLM2's model width).
const COLUMNS: usize = 576;
/// Rows per timed pass (SmolLM2's FFN width).
const ROWS: usize = 1536;
/// Alternating rounds per comparison; the best of each side is kept.
const ROUNDS: usize = 7;
/// The quantized types.
const TYPES: [TensorType; 3] = [TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_1];
/// The batch sizes of the matrix × N-vectors table.
const BATCHES: [usize; 3] = [1, 8, 32];
/// Rows per instruction count (counts repeat exactly, so fewer rows suffice).
const COUNTED_ROWS: usize = 256;
/// The precisions, by the names the tables and `--count` use.
const PRECISIONS: [(&str, Precision); 3] =
    [("float", Precision::Float), ("int8", Precision::Int8), ("int16", Precision::Int16)];

/// `rows` random rows of `tensor_type` whose scales (and Q4_1 minimums) are 1/64 and −1/8 as
/// f16, like trained weights' magnitudes, and whose codes are random bytes.
fn random_matrix(random: &mut SplitMix64, tensor_type: TensorType, rows: usize) -> Vec<u8> {
    let block_bytes = tensor_type.block_bytes();
    let mut bytes: Vec<u8> =
        (0..rows * COLUMNS / 32 * block_bytes).map(|_| random.next_u64() as u8).collect();
    let header: &[u8] =
        if tensor_type == TensorType::Q4_1 { &[0x00, 0x24, 0x00, 0xB0] } else { &[0x00, 0x24] };
    for block in bytes.chunks_exact_mut(block_bytes) {
        block[..header.len()].copy_from_slice(header);
    }
    bytes
}

/// `count` values uniform in −`spread`..`spread`.
fn uniform(random: &mut SplitMix64, count: usize, spread: f32) -> Vec<f32> {
    (0..count).map(|_| (random.next_f32() * 2.0 - 1.0) * spread).collect()
}

/// The best time in nanoseconds of each of `first` and `second` over [`ROUNDS`] alternating
/// rounds.
fn best_of(mut first: impl FnMut(), mut second: impl FnMut()) -> (f64, f64) {
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        first();
        best.0 = best.0.min(start.elapsed().as_nanos() as f64);
        let start = Instant::now();
        second();
        best.1 = best.1.min(start.elapsed().as_nanos() as f64);
    }
    best
}

/// The bits of `values`.
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

/// One activation vector prepared for each precision.
struct Activations {
    x: Vec<f32>,
    quantized: QuantizedVector,
    wide: QuantizedVector,
    summed: QuantizedVector,
}

impl Activations {
    fn new(random: &mut SplitMix64) -> Self {
        let x = uniform(random, COLUMNS, 1.0);
        let mut quantized = QuantizedVector::with_capacity(COLUMNS);
        quantized.quantize(&x);
        let mut wide = QuantizedVector::with_capacity(COLUMNS);
        wide.quantize_wide(&x);
        let mut summed = QuantizedVector::with_capacity(COLUMNS);
        summed.sum_blocks(&x);
        Self { x, quantized, wide, summed }
    }

    /// Each precision's input for rows of `tensor_type`, as a single-vector product takes it.
    fn inputs(&self, tensor_type: TensorType) -> [(&'static str, Input<'_>); 3] {
        let float = if tensor_type == TensorType::Q4_1 {
            Input::FloatSummed(&self.x, &self.summed.block_sums[..COLUMNS / 32])
        } else {
            Input::Float(&self.x)
        };
        [
            ("float", float),
            ("int8", Input::Quantized(self.quantized.int8())),
            ("int16", Input::Quantized16(self.wide.int16())),
        ]
    }
}

/// Row dot products: SIMD band of rows against scalar dots, ns per row.
fn dot_products(random: &mut SplitMix64, activations: &Activations) -> Result<(), String> {
    println!("### Row dot products, {ROWS} rows of {COLUMNS}, one thread (ns per row, best of {ROUNDS})\n");
    println!("| type | activations | {} | scalar | scalar / SIMD |", simd_name());
    println!("| --- | --- | ---: | ---: | ---: |");
    for tensor_type in TYPES {
        let data = random_matrix(random, tensor_type, ROWS);
        let matrix = Matrix { tensor_type, rows: ROWS, columns: COLUMNS, data: &data };
        let mut fast = vec![0.0f32; ROWS];
        let mut slow = vec![0.0f32; ROWS];
        for (name, input) in activations.inputs(tensor_type) {
            let (simd_ns, scalar_ns) = best_of(
                || matmul::rows_into(&matrix, black_box(input), 0, &mut fast),
                || {
                    for (index, out) in slow.iter_mut().enumerate() {
                        *out = dot_scalar(tensor_type, matrix.row(index), black_box(input));
                    }
                },
            );
            if bits(&fast) != bits(&slow) {
                return Err(format!("{tensor_type:?} {name}: the SIMD rows differ from the scalar rows"));
            }
            let per_row = |ns: f64| ns / ROWS as f64;
            println!(
                "| {} | {name} | {:.1} | {:.1} | {:.2} |",
                tensor_type.name(),
                per_row(simd_ns),
                per_row(scalar_ns),
                scalar_ns / simd_ns
            );
        }
    }
    println!();
    Ok(())
}

/// The matrix × N-vectors kernel against N single-vector passes, ns per row per vector.
fn batched_products(random: &mut SplitMix64) -> Result<(), String> {
    println!(
        "### Matrix × N vectors (`rows_multi`), {ROWS} rows of {COLUMNS}, one thread (ns per row per vector, best of {ROUNDS})\n"
    );
    println!("| type | activations | N | rows_multi | N single-vector passes | rows_multi / single |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for tensor_type in TYPES {
        let data = random_matrix(random, tensor_type, ROWS);
        let matrix = Matrix { tensor_type, rows: ROWS, columns: COLUMNS, data: &data };
        for (name, precision) in [("int8", Precision::Int8), ("int16", Precision::Int16)] {
            for vectors in BATCHES {
                let x = uniform(random, vectors * COLUMNS, 1.0);
                let mut prepared = QuantizedRows::with_capacity(vectors, COLUMNS, precision);
                let input = prepared.quantize(&x, COLUMNS).map_err(|error| error.to_string())?;
                let mut batched = vec![0.0f32; ROWS * vectors];
                let mut single = vec![0.0f32; ROWS];
                let mut shape = Ok(());
                let (batched_ns, single_ns) = best_of(
                    || shape = matmul::rows_multi(&matrix, black_box(input), 0, ROWS, &mut batched),
                    || {
                        for vector in 0..vectors {
                            if let Some(one) = input.input(vector, tensor_type) {
                                matmul::rows_into(&matrix, black_box(one), 0, &mut single);
                                black_box(&mut single);
                            }
                        }
                    },
                );
                shape.map_err(|error| error.to_string())?;
                let mut expected = vec![0.0f32; ROWS * vectors];
                rows_multi_scalar(&matrix, input, 0, &mut expected);
                if bits(&batched) != bits(&expected) {
                    return Err(format!(
                        "{tensor_type:?} {name} N={vectors}: rows_multi differs from its scalar reference"
                    ));
                }
                let per = |ns: f64| ns / (ROWS * vectors) as f64;
                println!(
                    "| {} | {name} | {vectors} | {:.1} | {:.1} | {:.2} |",
                    tensor_type.name(),
                    per(batched_ns),
                    per(single_ns),
                    batched_ns / single_ns
                );
            }
        }
    }
    println!();
    Ok(())
}

/// SwiGLU over 1536 values and the attention kernels over 64 (one head), ns per element; each
/// SIMD result is checked against the scalar kernel's bits.
fn vector_kernels(random: &mut SplitMix64) -> Result<(), String> {
    const REPEATS: usize = 256;
    let gate = uniform(random, ROWS, 8.0);
    let up = uniform(random, ROWS, 1.0);
    let (query, key) = (&gate[..64], &up[..64]);
    let (mut fast_values, mut slow_values) = (gate.clone(), gate.clone());
    let (mut fast_out, mut slow_out) = (vec![0.0f32; 64], vec![0.0f32; 64]);
    println!("### Vector kernels, one thread (ns per element, best of {ROUNDS})\n");
    println!("| kernel | {} | scalar | scalar / SIMD |", simd_name());
    println!("| --- | ---: | ---: | ---: |");
    let row = |name: &str, elements: usize, (simd_ns, scalar_ns): (f64, f64)| {
        let per = |ns: f64| ns / (elements * REPEATS) as f64;
        println!("| {name} | {:.2} | {:.2} | {:.2} |", per(simd_ns), per(scalar_ns), scalar_ns / simd_ns);
    };
    let swiglu = best_of(
        || {
            for _ in 0..REPEATS {
                fast_values.copy_from_slice(&gate);
                matmul::swiglu(black_box(&mut fast_values), &up);
            }
        },
        || {
            for _ in 0..REPEATS {
                slow_values.copy_from_slice(&gate);
                kernels::swiglu(black_box(&mut slow_values), &up);
            }
        },
    );
    if bits(&fast_values) != bits(&slow_values) {
        return Err("SwiGLU: the SIMD values differ from the scalar values".into());
    }
    row("SwiGLU (1536, with a copy of the gate)", ROWS, swiglu);
    let dot = best_of(
        || {
            for _ in 0..REPEATS {
                black_box(matmul::dot_floats(black_box(query), key));
            }
        },
        || {
            for _ in 0..REPEATS {
                black_box(kernels::dot_floats(black_box(query), key));
            }
        },
    );
    if matmul::dot_floats(query, key).to_bits() != kernels::dot_floats(query, key).to_bits() {
        return Err("attention q·k: the SIMD dot differs from the scalar dot".into());
    }
    row("attention q·k (64)", 64, dot);
    let sum = best_of(
        || {
            for _ in 0..REPEATS {
                matmul::add_scaled(black_box(&mut fast_out), 0.25, key);
            }
        },
        || {
            for _ in 0..REPEATS {
                kernels::add_scaled(black_box(&mut slow_out), 0.25, key);
            }
        },
    );
    // Both sides ran the same number of times, so equal kernels leave equal sums.
    if bits(&fast_out) != bits(&slow_out) {
        return Err("attention value sum: the SIMD sums differ from the scalar sums".into());
    }
    row("attention value sum (64)", 64, sum);
    println!();
    Ok(())
}

/// The SIMD path's name for the table headers.
fn simd_name() -> &'static str {
    simd::instruction_set().unwrap_or("no SIMD (scalar)")
}

/// One measured operation, as `--count` names it: `dot TYPE PRECISION simd|scalar` (a band
/// of rows) or `multi TYPE PRECISION N batched|single` (`rows_multi`, or N single-vector
/// bands).
#[derive(Clone, Copy, Debug)]
enum Case {
    Dot { tensor_type: TensorType, precision: Precision, simd: bool },
    Multi { tensor_type: TensorType, precision: Precision, vectors: usize, batched: bool },
}

impl Case {
    /// The `--count` arguments of this case.
    fn arguments(self) -> Vec<String> {
        let precision_name =
            |precision| PRECISIONS.iter().find(|(_, p)| *p == precision).map_or("?", |(n, _)| n);
        match self {
            Self::Dot { tensor_type, precision, simd } => {
                let path = if simd { "simd" } else { "scalar" };
                ["dot", tensor_type.name(), precision_name(precision), path].map(String::from).to_vec()
            }
            Self::Multi { tensor_type, precision, vectors, batched } => {
                let path = if batched { "batched" } else { "single" };
                let vectors = vectors.to_string();
                ["multi", tensor_type.name(), precision_name(precision), &vectors, path]
                    .map(String::from)
                    .to_vec()
            }
        }
    }

    /// Reads the `--count` arguments.
    fn parse(arguments: &[String]) -> Option<Self> {
        let tensor_type =
            TYPES.into_iter().find(|t| Some(t.name()) == arguments.get(1).map(String::as_str))?;
        let precision =
            PRECISIONS.iter().find(|(name, _)| Some(*name) == arguments.get(2).map(String::as_str))?.1;
        match (arguments.first()?.as_str(), arguments.get(3)?.as_str()) {
            ("dot", path) => Some(Self::Dot { tensor_type, precision, simd: path == "simd" }),
            ("multi", vectors) => Some(Self::Multi {
                tensor_type,
                precision,
                vectors: vectors.parse().ok()?,
                batched: arguments.get(4)?.as_str() == "batched",
            }),
            _ => None,
        }
    }

    /// Prepares this case's data over `COUNTED_ROWS` rows and runs it once inside
    /// [`counted_region`].
    fn run(self) {
        let mut random = SplitMix64::new(7);
        let (Self::Dot { tensor_type, precision, .. } | Self::Multi { tensor_type, precision, .. }) = self;
        let data = random_matrix(&mut random, tensor_type, COUNTED_ROWS);
        let matrix = Matrix { tensor_type, rows: COUNTED_ROWS, columns: COLUMNS, data: &data };
        let vectors = if let Self::Multi { vectors, .. } = self { vectors } else { 1 };
        let x = uniform(&mut random, vectors * COLUMNS, 1.0);
        let mut prepared = QuantizedRows::with_capacity(vectors, COLUMNS, precision);
        let Ok(input) = prepared.quantize(&x, COLUMNS) else { return };
        let mut out = vec![0.0f32; COUNTED_ROWS * vectors];
        match self {
            Self::Dot { simd: true, .. } | Self::Multi { batched: false, .. } => counted_region(&mut || {
                for (vector, out) in out.chunks_exact_mut(COUNTED_ROWS).enumerate() {
                    if let Some(one) = input.input(vector, tensor_type) {
                        matmul::rows_into(&matrix, black_box(one), 0, out);
                    }
                }
            }),
            Self::Dot { simd: false, .. } => counted_region(&mut || {
                if let Some(one) = input.input(0, tensor_type) {
                    for (index, out) in out.iter_mut().enumerate() {
                        *out = dot_scalar(tensor_type, matrix.row(index), black_box(one));
                    }
                }
            }),
            Self::Multi { batched: true, .. } => counted_region(&mut || {
                black_box(matmul::rows_multi(&matrix, black_box(input), 0, COUNTED_ROWS, &mut out)).ok();
            }),
        }
        black_box(&out);
    }
}

/// The region callgrind counts (`--toggle-collect`): `operation` and all it calls.
#[inline(never)]
fn counted_region(operation: &mut dyn FnMut()) {
    operation();
}

/// Instructions `case` executes, counted by callgrind in a child run of this program, or why
/// not.
fn instructions(case: Case) -> Result<u64, String> {
    let program = std::env::current_exe().map_err(|error| error.to_string())?;
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null", "--toggle-collect=*counted_region*"])
        .arg(program)
        .arg("--count")
        .args(case.arguments())
        .output()
        .map_err(|error| format!("valgrind: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.contains(simd_name()) {
        return Err(format!("the child run under valgrind did not take the {} path: {stdout}", simd_name()));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|line| line.split("Collected :").nth(1))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| format!("no instruction count for {case:?} in valgrind's output: {stderr}"))
}

/// Instructions per row of each dot product and per row per vector of `rows_multi` on Q4_1.
fn instruction_tables() -> Result<(), String> {
    let per_row = |case: Case, rows: usize| instructions(case).map(|count| count as f64 / rows as f64);
    println!("### Instructions per row of {COLUMNS} (callgrind, {COUNTED_ROWS} rows)\n");
    println!(
        "| type | activations | {} | scalar | {} / scalar | {} per block |",
        simd_name(),
        simd_name(),
        simd_name()
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for tensor_type in TYPES {
        for (name, precision) in PRECISIONS {
            let simd = per_row(Case::Dot { tensor_type, precision, simd: true }, COUNTED_ROWS)?;
            let scalar = per_row(Case::Dot { tensor_type, precision, simd: false }, COUNTED_ROWS)?;
            println!(
                "| {} | {name} | {simd:.0} | {scalar:.0} | {:.3} | {:.1} |",
                tensor_type.name(),
                simd / scalar,
                simd / (COLUMNS / 32) as f64
            );
        }
    }
    println!("\n### Matrix × N vectors on Q4_1: instructions per row per vector (callgrind)\n");
    println!("| activations | N | rows_multi | N single-vector bands | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, precision) in &PRECISIONS[1..] {
        for vectors in BATCHES {
            let case = |batched| Case::Multi {
                tensor_type: TensorType::Q4_1,
                precision: *precision,
                vectors,
                batched,
            };
            let batched = per_row(case(true), COUNTED_ROWS * vectors)?;
            let single = per_row(case(false), COUNTED_ROWS * vectors)?;
            println!("| {name} | {vectors} | {batched:.0} | {single:.0} | {:.3} |", batched / single);
        }
    }
    println!();
    Ok(())
}

/// What `kernel-bench --help` prints.
const USAGE: &str = "\
kernel-bench: the compute kernels on this host's SIMD path against the scalar kernels, one
thread, on SmolLM2-sized rows; prints Markdown tables (and, with valgrind, instructions)

usage: kernel-bench
       kernel-bench --count dot TYPE PRECISION simd|scalar
       kernel-bench --count multi TYPE PRECISION N batched|single

  --count ...       run one case once (what the instruction tables run under callgrind)
  -h, --help        print this help
";

fn main() -> ExitCode {
    let arguments = usage::parse(USAGE, |arguments| match arguments.first() {
        Some(first) if first != "--count" => Err(format!("unknown argument {first:?}")),
        _ => Ok(arguments.to_vec()),
    });
    if arguments.first().map(String::as_str) == Some("--count") {
        let Some(case) = Case::parse(&arguments[1..]) else {
            eprintln!(
                "kernel-bench: --count dot TYPE PRECISION simd|scalar, or multi TYPE PRECISION N batched|single"
            );
            return ExitCode::FAILURE;
        };
        println!("{}", simd_name());
        case.run();
        return ExitCode::SUCCESS;
    }
    println!("## Compute kernels on the host ({}), one thread\n", simd_name());
    let mut random = SplitMix64::new(2026);
    let activations = Activations::new(&mut random);
    let result = dot_products(&mut random, &activations)
        .and_then(|()| batched_products(&mut random))
        .and_then(|()| vector_kernels(&mut random));
    if let Err(error) = result {
        eprintln!("kernel-bench: {error}");
        return ExitCode::FAILURE;
    }
    let has_valgrind =
        Command::new("valgrind").arg("--version").output().is_ok_and(|output| output.status.success());
    if !has_valgrind {
        println!(
            "(instruction counts skipped: valgrind is not installed; `apt-get install valgrind` adds them)"
        );
    } else if let Err(error) = instruction_tables() {
        eprintln!("kernel-bench: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
