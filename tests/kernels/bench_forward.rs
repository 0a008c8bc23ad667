//! QEMU benchmark: whole-token instruction counts of SmolLM2's forward pass on one core, for
//! decoding (one row per pass, with the classifier) after 32 and after 128 positions of
//! context, and for prefill in chunks of T = 1, 8 and 32 prompt positions per pass (the
//! classifier only after the last), at the default int16 activations and again at int8
//! (whose products are cheaper, in decode as in prefill). The model is read off the card
//! into the weights pool, as kernel8 reads it. Under `-icount shift=0` the PMU counts
//! instructions retired (event 0x08); its counter is 32 bits, so a count past 2^32 is
//! completed from the generic timer, which then counts instructions too (1 ns each).
//!
//! Then how a pass divides over four cores: each job's pieces measured one by one on one core
//! and scheduled as the handout gives them out, the rest serial (`FourCoreModel`). It ends
//! with a projection per board: decode tokens/s from the measured instructions per token and
//! that four-core speedup at the board's clock (one instruction per cycle per core, and no
//! memory contention: an optimistic compute bound), from the bytes a decode pass moves at the
//! board's DRAM read bandwidth, and the lower of the two.

#![no_std]
#![no_main]

extern crate alloc;

use boot::storage::CLOCK;
use kernel::{
    fs::Volume,
    hil::{Clock, SingleCpu},
    infer::{
        ContiguousKv, Precision, State,
        forward::{PassSequence, forward_batch},
    },
    mm::tensor::TensorKind,
    model::ModelFile,
    serve::governor::PassTraffic,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// The model the runner puts on the card.
const MODEL: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Bytes read per call of the file reader.
const CHUNK: usize = 1 << 20;

/// Decode steps measured (after a 32-token prompt).
const DECODE_STEPS: usize = 4;

/// Positions already in the context of the long-context decode steps.
const LONG_CONTEXT: usize = 128;

/// Prompt tokens: the id of every fifth vocabulary entry from 1000, a stand-in for text (the
/// work of a pass does not depend on which tokens it gets).
fn prompt_token(index: usize) -> u32 {
    1000 + 5 * index as u32
}

/// Instructions `operation` takes: the PMU's 32-bit count, plus the multiple of 2^32 that
/// brings it nearest the generic timer's count.
fn instructions(operation: impl FnOnce()) -> u64 {
    let (before_ns, before) = (CLOCK.now_ns(), systests::pmu::read_instructions());
    operation();
    let counted = u64::from(systests::pmu::read_instructions().wrapping_sub(before));
    let elapsed = CLOCK.now_ns() - before_ns;
    let wraps = (elapsed.saturating_sub(counted) + (1 << 31)) >> 32;
    counted + (wraps << 32)
}

/// The boards (each with four cores): name, clock in GHz, DRAM read bandwidth in GB/s
/// (docs/BENCHMARKS.md).
const BOARDS: [(&str, f64, f64); 4] = [
    ("Zero 2 W (4x Cortex-A53, 1.0 GHz)", 1.0, 2.2),
    ("3B+ (4x Cortex-A53, 1.4 GHz)", 1.4, 2.2),
    ("4B (4x Cortex-A72, 1.5 GHz)", 1.5, 4.0),
    ("5 (4x Cortex-A76, 2.4 GHz)", 2.4, 10.0),
];

/// Prints the projection table for `instructions` per decoded token on one core, `speedup`
/// on four (from [`four_cores`]) and `bytes` moved per decode pass.
fn project(instructions: u64, speedup: f64, bytes: u64) {
    boot::println!(
        "projection: {instructions} instructions, {speedup:.2}x on four cores, and {:.1} MB per decoded token (1 instruction per cycle per core):",
        bytes as f64 / 1e6
    );
    boot::println!("| board | compute bound, tokens/s | bandwidth bound, tokens/s | projected | binds |");
    boot::println!("|---|---:|---:|---:|---|");
    for (name, ghz, gbps) in BOARDS {
        let compute = speedup * ghz * 1e9 / instructions as f64;
        let bandwidth = gbps * 1e9 / bytes as f64;
        let (projected, binds) =
            if compute < bandwidth { (compute, "compute") } else { (bandwidth, "bandwidth") };
        boot::println!("| {name} | {compute:.1} | {bandwidth:.1} | {projected:.1} | {binds} |");
    }
}

/// Instructions per row of the layers' matrix products alone (every matrix of every layer
/// times 32 activation rows through `rows_multi`, as a T = 32 prefill pass meets them).
fn layer_products(weights: &kernel::model::Weights<'_>, precision: Precision) -> u64 {
    use kernel::infer::matmul::{QuantizedRows, rows_multi};
    const ROWS: usize = 32;
    let config = weights.config;
    let widest = config.dim.max(config.hidden_dim);
    let mut random = kernel::rand::SplitMix64::new(7);
    let x: alloc::vec::Vec<f32> = (0..ROWS * widest).map(|_| random.next_f32() - 0.5).collect();
    let mut narrow = QuantizedRows::with_capacity(ROWS, config.dim, precision);
    let mut wide = QuantizedRows::with_capacity(ROWS, config.hidden_dim, precision);
    let narrow = narrow.quantize(&x[..ROWS * config.dim], config.dim).expect("fits");
    let wide = wide.quantize(&x[..ROWS * config.hidden_dim], config.hidden_dim).expect("fits");
    let mut out = alloc::vec![0.0f32; ROWS * widest];
    let total = instructions(|| {
        for layer in &weights.layers {
            for matrix in [&layer.query, &layer.key, &layer.value, &layer.output, &layer.gate, &layer.up] {
                rows_multi(matrix, narrow, 0, matrix.rows, &mut out).expect("shapes fit");
            }
            rows_multi(&layer.down, wide, 0, layer.down.rows, &mut out).expect("shapes fit");
        }
    });
    total / ROWS as u64
}

/// Positions of the measured prompt.
const PROMPT: usize = 32;

/// Cores of the model below.
const MODEL_CORES: usize = 4;

/// A one-core [`Cpus`] that measures how a pass divides over [`MODEL_CORES`] cores. A pass's
/// parallel sections are a job's pieces (from the job's start or a `between` step's second
/// barrier to the next barrier or the job's end); core 0 checkpoints after each piece, so
/// every piece's instructions are known. Each section is then scheduled as the handout gives
/// pieces out: each piece, in order, to the core that is free first. Everything else (core 0
/// alone between a job's paired barriers, and outside jobs) is serial. The model's cores are
/// equal and share no memory bandwidth: it measures the work's division (the serial part and
/// the pieces' granularity), not a board's memory system.
struct FourCoreModel(spin::Mutex<Sections>);

/// What [`FourCoreModel`] has measured so far.
struct Sections {
    /// The PMU's count at the last boundary (a section's start, a piece's end).
    mark: u32,
    /// Whether a parallel section is open.
    open: bool,
    /// The open section's pieces, in instructions.
    pieces: alloc::vec::Vec<u64>,
    /// The parallel sections' instructions on one core.
    shared: u64,
    /// The parallel sections' instructions on the model's cores: each section's makespan.
    makespan: u64,
}

impl Sections {
    fn start(&mut self) {
        self.open = true;
        self.pieces.clear();
        self.mark = systests::pmu::read_instructions();
    }

    /// Ends the open section: what follows its last piece (each core's last, empty claim)
    /// is paid by every core, so it adds to the makespan as it is.
    fn close(&mut self) {
        let tail = u64::from(systests::pmu::read_instructions().wrapping_sub(self.mark));
        let mut free_at = [0u64; MODEL_CORES];
        for &piece in &self.pieces {
            if let Some(first) = free_at.iter_mut().min() {
                *first += piece;
            }
        }
        self.shared += self.pieces.iter().sum::<u64>() + tail;
        self.makespan += free_at.iter().max().copied().unwrap_or(0) + tail;
        self.open = false;
    }
}

impl FourCoreModel {
    fn new() -> Self {
        let pieces = alloc::vec::Vec::with_capacity(8192);
        Self(spin::Mutex::new(Sections { mark: 0, open: false, pieces, shared: 0, makespan: 0 }))
    }

    /// The parallel sections' instructions so far: on one core, and on the model's cores.
    fn take(&self) -> (u64, u64) {
        let mut sections = self.0.lock();
        (core::mem::take(&mut sections.shared), core::mem::take(&mut sections.makespan))
    }
}

impl kernel::hil::Cpus for FourCoreModel {
    fn count(&self) -> usize {
        1
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        self.0.lock().start();
        job(0);
        let mut sections = self.0.lock();
        if sections.open {
            sections.close();
        }
    }

    fn barrier(&self) {
        let mut sections = self.0.lock();
        if sections.open { sections.close() } else { sections.start() }
    }

    fn checkpoint(&self) {
        let mut sections = self.0.lock();
        if sections.open {
            let now = systests::pmu::read_instructions();
            let piece = u64::from(now.wrapping_sub(sections.mark));
            sections.pieces.push(piece);
            sections.mark = now;
        }
    }
}

/// Prints how decode and a T = 32 prefill pass divide over [`MODEL_CORES`] cores (see
/// [`FourCoreModel`]) and returns decode's speedup over one core.
fn four_cores(weights: &kernel::model::Weights<'_>) -> f64 {
    let config = weights.config;
    let precision = Precision::default();
    let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), PROMPT + DECODE_STEPS)
        .unwrap_or_else(|| systests::fail(format_args!("KV cache")));
    let mut state = State::for_batch(&config, precision, PROMPT + DECODE_STEPS, PROMPT);
    let model = FourCoreModel::new();
    let mut run = |kv: &mut ContiguousKv, tokens: &[u32], start: usize| {
        let mut sequences = [PassSequence { kv, tokens, start, logits: true }];
        let total = instructions(|| {
            forward_batch(weights, &mut state, &mut sequences, &model, |_, _, _| {})
                .unwrap_or_else(|error| systests::fail(format_args!("pass: {:?}", error.error)));
        });
        let (shared, makespan) = model.take();
        (total, total - shared, total - shared + makespan)
    };
    let prompt: alloc::vec::Vec<u32> = (0..PROMPT).map(prompt_token).collect();
    boot::println!(
        "{MODEL_CORES} equal cores (pieces scheduled as the handout gives them, no memory contention), {precision:?}:"
    );
    boot::println!(
        "| pass | one core, per token | serial (core 0 alone) | critical path on {MODEL_CORES} cores | speedup |"
    );
    boot::println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, (total, serial, critical): (u64, u64, u64), tokens: u64| {
        let speedup = total as f64 / critical as f64;
        boot::println!(
            "| {name} | {} | {} | {} | {speedup:.2}x |",
            total / tokens,
            serial / tokens,
            critical / tokens
        );
        speedup
    };
    row("prefill, T = 32", run(&mut kv, &prompt, 0), PROMPT as u64);
    let mut decode = (0, 0, 0);
    for step in 0..DECODE_STEPS {
        let (total, serial, critical) = run(&mut kv, &[prompt_token(40 + step)], PROMPT + step);
        decode = (decode.0 + total, decode.1 + serial, decode.2 + critical);
    }
    row("decode", decode, DECODE_STEPS as u64)
}

/// Prints and returns the instructions per token of prefill at T = 1, 8 and 32 and of
/// decode (in that order) at `precision`, with the layers' products and the long-context
/// decode, each pass through `forward_batch` on one core.
fn passes(weights: &kernel::model::Weights<'_>, precision: Precision) -> [u64; 4] {
    let config = weights.config;
    let capacity = LONG_CONTEXT + DECODE_STEPS;
    let new_kv = || {
        ContiguousKv::new(config.layers, config.kv_dim(), capacity)
            .unwrap_or_else(|| systests::fail(format_args!("KV cache of {capacity} positions")))
    };
    let mut state = State::for_batch(&config, precision, capacity, PROMPT);
    let mut run = |kv: &mut ContiguousKv, tokens: &[u32], start: usize, logits: bool| {
        let mut sequences = [PassSequence { kv, tokens, start, logits }];
        instructions(|| {
            forward_batch(weights, &mut state, &mut sequences, &SingleCpu, |_, _, _| {})
                .unwrap_or_else(|error| systests::fail(format_args!("pass: {:?}", error.error)));
        })
    };
    let prompt: alloc::vec::Vec<u32> = (0..PROMPT).map(prompt_token).collect();
    boot::println!(
        "SmolLM2 forward pass on one core, {precision:?} activations (PMU event 0x08 under -icount):"
    );
    boot::println!("| pass | instructions per token |");
    boot::println!("|---|---:|");
    let mut per_token = [0u64; 4];
    for (slot, chunk) in [1usize, 8, 32].into_iter().enumerate() {
        let mut kv = new_kv();
        let mut total = 0;
        for (index, tokens) in prompt.chunks(chunk).enumerate() {
            let last = (index + 1) * chunk >= PROMPT;
            total += run(&mut kv, tokens, index * chunk, last);
        }
        per_token[slot] = total / PROMPT as u64;
        boot::println!("| prefill, T = {chunk} | {} |", per_token[slot]);
    }
    let mut kv = new_kv();
    run(&mut kv, &prompt, 0, true);
    let decode: u64 =
        (0..DECODE_STEPS).map(|step| run(&mut kv, &[prompt_token(40 + step)], PROMPT + step, true)).sum();
    per_token[3] = decode / DECODE_STEPS as u64;
    boot::println!("| decode | {} |", per_token[3]);
    drop(kv);
    // The same decode steps with LONG_CONTEXT positions before them: what each position of
    // context adds to a token (attention over it, in every head of every layer).
    let mut kv = new_kv();
    let context: alloc::vec::Vec<u32> = (0..LONG_CONTEXT).map(prompt_token).collect();
    for (index, tokens) in context.chunks(PROMPT).enumerate() {
        run(&mut kv, tokens, index * PROMPT, false);
    }
    let long: u64 = (0..DECODE_STEPS)
        .map(|step| run(&mut kv, &[prompt_token(40 + step)], LONG_CONTEXT + step, true))
        .sum::<u64>()
        / DECODE_STEPS as u64;
    boot::println!("| decode after {LONG_CONTEXT} positions | {long} |");
    boot::println!(
        "| of which the layers' matrix products, T = 32 | {} |",
        layer_products(weights, precision)
    );
    for (slot, chunk) in [1usize, 8, 32].into_iter().enumerate() {
        boot::println!(
            "{precision:?} prefill T = {chunk}: {:.3}x decode",
            per_token[slot] as f64 / per_token[3] as f64
        );
    }
    boot::println!(
        "each position of context adds {} instructions to a decoded token",
        long.saturating_sub(per_token[3]) / (LONG_CONTEXT - PROMPT) as u64
    );
    per_token
}

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(systests::pmu::start_counting(), "the PMU does not count instructions: run under -icount");
    let memory = boot::memory::backed_memory(info)
        .unwrap_or_else(|error| systests::fail(format_args!("tensor memory: {error}")));
    let card = boot::storage::open_card(memory)
        .unwrap_or_else(|error| systests::fail(format_args!("card init failed: {error}")));
    let mut volume =
        Volume::mount(card).unwrap_or_else(|error| systests::fail(format_args!("mount: {error}")));
    let mut file =
        volume.open(MODEL).unwrap_or_else(|error| systests::fail(format_args!("{MODEL}: {error}")));
    let size = file.size();
    let mut bytes = memory
        .alloc(size, TensorKind::Weights)
        .unwrap_or_else(|error| systests::fail(format_args!("weights buffer: {error}")));
    let mut offset = 0;
    while offset < size {
        let end = (offset + CHUNK as u64).min(size);
        let read = file
            .read_at(offset, &mut bytes[offset as usize..end as usize])
            .unwrap_or_else(|error| systests::fail(format_args!("read at {offset}: {error}")));
        ensure!(read > 0, "the file ended early at {offset}");
        offset += read as u64;
    }
    let model =
        ModelFile::parse(&bytes).unwrap_or_else(|error| systests::fail(format_args!("{MODEL}: {error}")));
    let weights = &model.weights;
    let int16 = passes(weights, Precision::default());
    let int8 = passes(weights, Precision::Int8);
    boot::println!(
        "{:?} decode / {:?} decode: {:.3}",
        Precision::Int8,
        Precision::default(),
        int8[3] as f64 / int16[3] as f64
    );
    let speedup = four_cores(weights);
    project(int16[3], speedup, PassTraffic::of(weights).at(PROMPT).total());
    boot::println!("forward instructions done");
    pass()
}
