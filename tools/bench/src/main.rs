//! `mm-bench`: replays seeded allocation traces against Tessera's memory pools and the
//! baseline crates (rlsf, talc, buddy_system_allocator, linked_list_allocator, system malloc)
//! and prints Markdown tables of per-operation latency, with ratios to rlsf from the same run.
//!
//! Each latency is the minimum over the replays of that operation, less the timer's own cost;
//! whole-trace times are measured separately, without per-operation timers. Usage:
//! `mm-bench [--quick] [--replays N] [--plots DIRECTORY]` (`--plots` writes SVG latency plots).

mod subjects;
mod trace;
mod usage;

use bsp::board::budget::{BoardModel, scaled_budget};
use kernel::mm::layout::{MemoryPlan, RegionKind, SEGMENT};
use kernel::mm::tensor::Pool;
use std::time::Instant;
use subjects::{
    Arena, Baseline, Malloc, OurBuddy, OurChunk, OurRt, OurSlab, OurTensorMemory, RtHome, Subject,
    buddy_system, linked_list, rlsf, talc,
};
use trace::{Kind, MIB, Operation, Trace};

/// The benchmark's own heap: the system allocator, except that zeroed allocations are written
/// at once, as the kernel heap does, so the page faults of a pool's metadata tables happen
/// while it is built and not inside a timed operation.
struct EagerZero;

// SAFETY: every method forwards to `System` with the caller's arguments; `alloc_zeroed`
// writes zeros only inside the block `System.alloc` just returned.
unsafe impl std::alloc::GlobalAlloc for EagerZero {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded.
        unsafe { std::alloc::System.dealloc(pointer, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded; the zeros go inside the new block of `layout.size()` bytes.
        unsafe {
            let pointer = std::alloc::System.alloc(layout);
            if !pointer.is_null() {
                std::ptr::write_bytes(pointer, 0, layout.size());
            }
            pointer
        }
    }
}

#[global_allocator]
static HEAP: EagerZero = EagerZero;

/// Makes a fresh allocator for one replay.
type Factory<'a> = Box<dyn FnMut() -> Box<dyn Subject + 'a> + 'a>;

/// Latency figures of one operation type, in nanoseconds.
#[derive(Clone, Copy, Default)]
struct Quantiles {
    p50: u64,
    p99: u64,
    max: u64,
}

impl Quantiles {
    fn of(mut samples: Vec<u64>) -> Quantiles {
        if samples.is_empty() {
            return Quantiles::default();
        }
        samples.sort_unstable();
        let at = |per_mille: usize| samples[(samples.len() * per_mille / 1000).min(samples.len() - 1)];
        Quantiles { p50: at(500), p99: at(990), max: samples[samples.len() - 1] }
    }
}

/// What one allocator did on one trace.
struct Measured {
    name: &'static str,
    alloc: Quantiles,
    free: Quantiles,
    /// Whole-trace time per operation (no per-op timers), minimum over replays, less the
    /// harness's own cost per operation (a replay into an allocator that does nothing).
    mean_ns: f64,
    failures: usize,
    /// Every operation's latency, sorted, for the plot.
    samples: Vec<u64>,
}

/// The cost of one `Instant` pair, the minimum of many tries.
fn timer_cost() -> u64 {
    (0..20_000)
        .map(|_| {
            let start = Instant::now();
            start.elapsed().as_nanos() as u64
        })
        .min()
        .unwrap_or(0)
}

/// Runs `trace` once on `subject`; with `latencies`, times every operation into it (keeping
/// the minimum). Returns the number of failed allocations.
fn run(subject: &mut dyn Subject, trace: &Trace, latencies: Option<&mut [u64]>, timer: u64) -> usize {
    let mut live = vec![false; trace.ids];
    let mut failures = 0;
    let mut step = |subject: &mut dyn Subject, operation: &Operation| match *operation {
        Operation::Alloc { id, size, alignment, kind } => {
            let done = subject.alloc(id, size, alignment, kind);
            live[id as usize] = done;
            failures += usize::from(!done);
        }
        Operation::Free { id } => {
            if std::mem::take(&mut live[id as usize]) {
                subject.free(id);
            }
        }
    };
    match latencies {
        Some(latencies) => {
            for (operation, slot) in trace.operations.iter().zip(latencies.iter_mut()) {
                let start = Instant::now();
                step(subject, operation);
                let elapsed = (start.elapsed().as_nanos() as u64).saturating_sub(timer);
                *slot = (*slot).min(elapsed);
            }
        }
        None => trace.operations.iter().for_each(|operation| step(subject, operation)),
    }
    failures
}

/// The harness's own cost per operation: a replay into [`subjects::Nothing`].
fn harness_cost(trace: &Trace, replays: usize) -> f64 {
    let mut nothing: Factory<'_> = Box::new(|| Box::new(subjects::Nothing) as Box<dyn Subject>);
    measure("harness", &mut nothing, trace, replays, 0, 0.0).mean_ns
}

fn measure(
    name: &'static str,
    factory: &mut Factory<'_>,
    trace: &Trace,
    replays: usize,
    timer: u64,
    harness: f64,
) -> Measured {
    let mut latencies = vec![u64::MAX; trace.operations.len()];
    let mut best_batch = f64::MAX;
    let mut failures = 0;
    for _ in 0..replays {
        let mut subject = factory();
        failures = run(subject.as_mut(), trace, Some(&mut latencies), timer);
        drop(subject);
        let mut subject = factory();
        let start = Instant::now();
        run(subject.as_mut(), trace, None, timer);
        best_batch = best_batch.min(start.elapsed().as_nanos() as f64 / trace.operations.len() as f64);
    }
    let (mut alloc, mut free) = (Vec::new(), Vec::new());
    for (operation, &latency) in trace.operations.iter().zip(&latencies) {
        match operation {
            Operation::Alloc { .. } => alloc.push(latency),
            Operation::Free { .. } => free.push(latency),
        }
    }
    let mean_ns = (best_batch - harness).max(0.0);
    latencies.sort_unstable();
    Measured {
        name,
        alloc: Quantiles::of(alloc),
        free: Quantiles::of(free),
        mean_ns,
        failures,
        samples: latencies,
    }
}

fn print_table(title: &str, trace: &Trace, results: &[Measured], harness: f64) {
    println!("\n### {title}\n");
    println!(
        "Trace: {}, {} operations, peak live {:.1} MiB. Latency in ns (min over replays per operation); \
         `mean` is whole-trace time per operation less the harness's own {:.1} ns; ratios are to rlsf \
         (lower is better).\n",
        trace.name,
        trace.operations.len(),
        trace.peak_live as f64 / MIB as f64,
        harness
    );
    println!(
        "| allocator | alloc p50 | alloc p99 | alloc max | free p50 | free p99 | free max | mean | mean ÷ rlsf | alloc p99 ÷ rlsf | free p99 ÷ rlsf | failed allocs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let reference = results.iter().find(|result| result.name == "rlsf");
    let ratio = |value: f64, base: Option<f64>| match base {
        Some(base) if base > 0.0 => format!("{:.2}", value / base),
        _ => "-".to_string(),
    };
    for result in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            result.name,
            result.alloc.p50,
            result.alloc.p99,
            result.alloc.max,
            result.free.p50,
            result.free.p99,
            result.free.max,
            result.mean_ns,
            ratio(result.mean_ns, reference.map(|r| r.mean_ns)),
            ratio(result.alloc.p99 as f64, reference.map(|r| r.alloc.p99.max(1) as f64)),
            ratio(result.free.p99 as f64, reference.map(|r| r.free.p99.max(1) as f64)),
            result.failures,
        );
    }
}

/// Writes the latency distributions of `results` as an SVG plot: for each allocator, the
/// fraction of operations (alloc and free together) at or below each latency, log2 axis.
fn write_plot(path: &std::path::Path, title: &str, results: &[Measured]) -> std::io::Result<()> {
    use std::fmt::Write as _;
    const COLOURS: [&str; 7] = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];
    let (width, height, left, top, right, bottom) = (760.0, 440.0, 70.0, 40.0, 230.0, 50.0);
    let (plot_width, plot_height) = (width - left - right, height - top - bottom);
    let (low_log, high_log) = (3.0f64, 17.0f64);
    let x = |ns: u64| {
        left + ((ns.max(8) as f64).log2().min(high_log) - low_log) / (high_log - low_log) * plot_width
    };
    let y = |fraction: f64| top + (1.0 - fraction) * plot_height;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{left}" y="22" font-size="14">{title}</text>"#);
    for exponent in (3..=17).step_by(2) {
        let ns = 1u64 << exponent;
        let label = if ns >= 1024 { format!("{} us", ns / 1000) } else { format!("{ns} ns") };
        let position = x(ns);
        let _ = writeln!(
            svg,
            r##"<line x1="{position:.1}" y1="{top}" x2="{position:.1}" y2="{:.1}" stroke="#ddd"/><text x="{position:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            top + plot_height,
            top + plot_height + 18.0
        );
    }
    for tenth in 0..=10 {
        let fraction = f64::from(tenth) / 10.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#eee"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{fraction:.1}</text>"##,
            y(fraction),
            left + plot_width,
            left - 6.0,
            y(fraction) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency per operation (min over replays)</text>"#,
        left + plot_width / 2.0,
        height - 8.0
    );
    for (index, result) in results.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let count = result.samples.len();
        if count == 0 {
            continue;
        }
        let points: Vec<String> = (0..=500)
            .map(|step| {
                let rank = ((count - 1) * step / 500).min(count - 1);
                format!("{:.1},{:.1}", x(result.samples[rank]), y((rank + 1) as f64 / count as f64))
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
            points.join(" ")
        );
        let legend_y = top + 16.0 * index as f64 + 8.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{legend_y:.1}" x2="{1:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="3"/><text x="{2:.1}" y="{3:.1}">{4}</text>"#,
            left + plot_width + 14.0,
            left + plot_width + 34.0,
            left + plot_width + 40.0,
            legend_y + 4.0,
            result.name
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

/// The baselines over `size` bytes of `arena`, for a trace with `ids` ids.
fn baselines<'a>(arena: &'a Arena, size: usize, ids: usize) -> Vec<(&'static str, Factory<'a>)> {
    vec![
        ("rlsf", Box::new(move || Box::new(Baseline::new(rlsf(arena, size), ids)) as Box<dyn Subject>)),
        ("talc", Box::new(move || Box::new(Baseline::new(talc(arena, size), ids)) as Box<dyn Subject>)),
        (
            "buddy_system_allocator",
            Box::new(move || Box::new(Baseline::new(buddy_system(arena, size), ids)) as Box<dyn Subject>),
        ),
        (
            "linked_list_allocator",
            Box::new(move || Box::new(Baseline::new(linked_list(arena, size), ids)) as Box<dyn Subject>),
        ),
        ("system malloc", Box::new(move || Box::new(Baseline::new(Malloc, ids)) as Box<dyn Subject>)),
    ]
}

/// The boot plan for a Pi 3 with `ram` bytes (the budget table's row, scaled).
fn pi3_plan(ram: u64) -> Option<MemoryPlan> {
    let (_, budget) = scaled_budget(BoardModel::Pi3B, ram);
    MemoryPlan::new(ram, budget, 2 * MIB as u64, 1).ok()
}

/// Times one operation made ready by `prepare`, as the minimum over `replays` fresh states.
fn forced<State>(
    replays: usize,
    timer: u64,
    mut prepare: impl FnMut() -> State,
    mut operation: impl FnMut(&mut State),
) -> u64 {
    (0..replays)
        .map(|_| {
            let mut state = prepare();
            let start = Instant::now();
            operation(&mut state);
            let elapsed = (start.elapsed().as_nanos() as u64).saturating_sub(timer);
            drop(state);
            elapsed
        })
        .min()
        .unwrap_or(0)
}

/// The command line: `[--quick] [--replays N] [--plots DIRECTORY]`.
struct Options {
    /// The words after the program's name, as given (echoed in the report's command line).
    given: Vec<String>,
    /// Shorter traces.
    quick: bool,
    /// Replays per measurement (at least 5).
    replays: usize,
    /// Where to write the SVG plots, if anywhere.
    plots: Option<std::path::PathBuf>,
}

impl Options {
    /// Reads the options from the process's arguments (see [`USAGE`]).
    fn parse() -> Self {
        usage::parse(USAGE, Self::from)
    }

    fn from(arguments: &[String]) -> Result<Self, String> {
        let mut options = Options { given: arguments.to_vec(), quick: false, replays: 5, plots: None };
        let mut words = arguments.iter();
        while let Some(word) = words.next() {
            let mut value = || words.next().ok_or_else(|| format!("{word} needs a value"));
            match word.as_str() {
                "--quick" => options.quick = true,
                "--replays" => {
                    let replays: usize = value()?.parse().map_err(|error| format!("--replays: {error}"))?;
                    options.replays = replays.max(5);
                }
                "--plots" => options.plots = Some(std::path::PathBuf::from(value()?)),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

/// What `mm-bench --help` prints.
const USAGE: &str = "\
mm-bench: Tessera's memory pools against allocator crates (rlsf, talc, buddy_system_allocator,
linked_list_allocator, the system's malloc) on seeded traces; prints Markdown tables

usage: mm-bench [--quick] [--replays N] [--plots DIRECTORY]

  --quick           shorter traces
  --replays N       replays per measurement (default 5, the least allowed)
  --plots DIR       also write SVG latency plots into DIR
  -h, --help        print this help
";

/// What every latency table of one run shares.
struct Bench<'a> {
    /// The memory every allocator is built over.
    arena: &'a Arena,
    /// Replays per measurement.
    replays: usize,
    /// The timer's own cost, subtracted from every timed operation.
    timer: u64,
    /// Where to write the SVG plots, if anywhere.
    plots: Option<&'a std::path::Path>,
}

impl Bench<'_> {
    /// Measures `ours` and then each of `baselines` on `trace`, prints the table under `title`,
    /// and writes its plot to `plot_file` when plots are asked for.
    fn compare<'f>(
        &self,
        title: &str,
        (plot_file, plot_title): (&str, &str),
        trace: &Trace,
        (our_name, mut ours): (&'static str, Factory<'f>),
        baselines: impl IntoIterator<Item = (&'static str, Factory<'f>)>,
    ) {
        let mut results = Vec::new();
        let harness = harness_cost(trace, self.replays);
        results.push(measure(our_name, &mut ours, trace, self.replays, self.timer, harness));
        for (name, mut factory) in baselines {
            results.push(measure(name, &mut factory, trace, self.replays, self.timer, harness));
        }
        print_table(title, trace, &results, harness);
        if let Some(directory) = self.plots {
            let path = directory.join(plot_file);
            match write_plot(&path, plot_title, &results) {
                Ok(()) => println!("\nPlot: `{}`", path.display()),
                Err(error) => eprintln!("cannot write {}: {error}", path.display()),
            }
        }
    }

    /// Trace 1: random small objects, the slab against the baselines.
    fn small_objects(&self, operations: usize) {
        let small = trace::small_objects(1, operations, 4000);
        let (arena, ids) = (self.arena, small.ids);
        let ours: Factory<'_> =
            Box::new(move || Box::new(OurSlab::new(arena, 64 * MIB, ids)) as Box<dyn Subject>);
        self.compare(
            "Random small objects (16 B – 4 KiB)",
            ("mm-small-objects.svg", "Random small objects: latency distribution"),
            &small,
            ("tessera slab", ours),
            baselines(arena, 64 * MIB, ids),
        );
    }

    /// Trace 2: LLM serving over `tokens` tokens, Tessera's tensor memory on `plan` against
    /// the baselines given its LLM and protocol budget as one arena. Returns the trace.
    fn llm_serving(&self, plan: &MemoryPlan, tokens: usize) -> Trace {
        let budget = (plan.budget.llm + plan.budget.protocol) as usize;
        let swap_every = tokens / 3;
        let llm = trace::llm_serving(2, tokens, 8, swap_every, 120 * MIB);
        let ids = llm.ids;
        let ours: Factory<'_> =
            Box::new(move || Box::new(OurTensorMemory::new(plan, ids)) as Box<dyn Subject>);
        self.compare(
            &format!(
                "LLM serving: {tokens} tokens, 8 sequences, {} hot-swaps of 1–100 MiB weights (Tessera on the Pi 3 plan \
                 for 1 GiB; baselines get its LLM + protocol budget, {} MiB, as one arena)",
                tokens / swap_every,
                budget / MIB
            ),
            ("mm-llm-serving.svg", "LLM serving trace: latency distribution"),
            &llm,
            ("tessera TensorMemory", ours),
            baselines(self.arena, budget, ids),
        );
        llm
    }

    /// Like with like: the 4 KiB – 1 MiB part of the `llm` trace, our buddy against the
    /// buddy-like baselines over the arena region of `plan`.
    fn buddy(&self, llm: &Trace, plan: &MemoryPlan) {
        let blocks = trace::sizes_between(llm, 4096, MIB, "LLM trace, 4 KiB – 1 MiB");
        let kv_and_activations = plan.region(kernel::mm::layout::RegionKind::Arena).size as usize;
        let (arena, ids) = (self.arena, blocks.ids);
        let ours: Factory<'_> =
            Box::new(move || Box::new(OurBuddy::new(arena, kv_and_activations, ids)) as Box<dyn Subject>);
        self.compare(
            &format!(
                "Buddy comparison: the 4 KiB – 1 MiB operations of the LLM trace ({} MiB arena)",
                kv_and_activations / MIB
            ),
            ("mm-buddy.svg", "4 KiB – 1 MiB operations: latency distribution"),
            &blocks,
            ("tessera buddy", ours),
            baselines(arena, kv_and_activations, ids).into_iter().take(3),
        );
    }

    /// The RT pool across heap sizes against rlsf, on a protocol-like trace of `operations`.
    fn rt_pool_sweep(&self, operations: usize) {
        println!("\n### RT pool across heap sizes\n");
        // More replays than elsewhere: the maxima are the point here, and the minimum over more
        // replays filters out more of the host's preemptions, for both allocators alike.
        let rt_replays = self.replays.max(20);
        println!(
            "Protocol-like trace (64 B – 8 KiB, about 64 live buffers). ns, min over {rt_replays} replays per operation. \
The RT pool uses one {RT_GRANULE}-byte granule at every size (its block table grows to 16 bytes per \
granule: 64 MiB at 1 GiB), so only the heap size changes. As in the kernel, where the pool is built \
once at boot, Tessera's pool is built once per heap size and lent to every replay; after each replay \
its leftover blocks are freed and it is checked to be one free block again, the state of a new pool. \
rlsf gets a new `Tlsf` over the same arena each replay, its block headers warm in the arena from the \
replay before. The last two columns build a new RT pool for every replay instead: its block table, \
just written whole, has pushed the entries the trace touches out of cache and TLB.\n"
        );
        println!(
            "| heap | tessera RT alloc p99 | alloc max | free p99 | free max | rlsf alloc p99 | alloc max | free p99 | free max | new RT pool per replay: alloc max | free max |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let protocol = rt_trace(3, operations);
        let (arena, timer) = (self.arena, self.timer);
        for heap in [MIB, 16 * MIB, 256 * MIB, 1024 * MIB] {
            let ids = protocol.ids;
            let home = RtHome::new(arena, heap, RT_GRANULE);
            let mut ours: Factory<'_> = Box::new(|| Box::new(OurRt::lent(&home, ids)) as Box<dyn Subject>);
            let mine = measure("tessera RT", &mut ours, &protocol, rt_replays, timer, 0.0);
            let mut theirs: Factory<'_> =
                Box::new(|| Box::new(Baseline::new(rlsf(arena, heap), ids)) as Box<dyn Subject>);
            let reference = measure("rlsf", &mut theirs, &protocol, rt_replays, timer, 0.0);
            let mut fresh: Factory<'_> =
                Box::new(|| Box::new(OurRt::new(arena, heap, RT_GRANULE, ids)) as Box<dyn Subject>);
            let cold =
                measure("tessera RT, new pool per replay", &mut fresh, &protocol, rt_replays, timer, 0.0);
            println!(
                "| {} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                heap / MIB,
                mine.alloc.p99,
                mine.alloc.max,
                mine.free.p99,
                mine.free.max,
                reference.alloc.p99,
                reference.alloc.max,
                reference.free.p99,
                reference.free.max,
                cold.alloc.max,
                cold.free.max,
            );
        }
    }
}

fn main() {
    let options = Options::parse();
    let (quick, replays) = (options.quick, options.replays);
    let timer = timer_cost();
    let (small_operations, tokens) = if quick { (40_000, 1_500) } else { (200_000, 6_000) };
    println!("# Tessera memory-pool benchmark\n");
    println!("Command: `cargo run --release -p bench --bin mm-bench -- {}`", options.given.join(" "));
    println!("Replays: {replays}; timer cost subtracted: {timer} ns per timed operation.");

    let arena = Arena::new(1 << 30);
    let bench = Bench { arena: &arena, replays, timer, plots: options.plots.as_deref() };
    bench.small_objects(small_operations);
    // On the Pi 3 boot plan for 1 GiB.
    let plan = pi3_plan(1 << 30).expect("Pi 3 plan");
    let llm = bench.llm_serving(&plan, tokens);
    bench.buddy(&llm, &plan);
    bench.rt_pool_sweep(if quick { 20_000 } else { 100_000 });

    forced_worst_cases(&arena, replays.max(50), timer);
    utilization(&arena, &llm, &plan);
}

/// The RT pool's granule in the heap-size sweep.
const RT_GRANULE: u64 = 256;

/// A protocol-buffer trace for the RT pool: 64 B – 8 KiB, about 64 live.
fn rt_trace(seed: u64, operations: usize) -> Trace {
    let mut small = trace::small_objects(seed, operations, 64);
    for operation in &mut small.operations {
        if let Operation::Alloc { size, alignment, kind, .. } = operation {
            *size = (*size * 2).clamp(64, 8192);
            *alignment = 64;
            *kind = Kind::Protocol;
        }
    }
    small.peak_live *= 2;
    small
}

/// Tessera's RT pool built once over the arena (as the kernel's is, at boot), with the block
/// a forced case left behind, so each replay can bring it back to the prepared state.
struct KeptRtPool {
    /// The pool.
    pool: std::cell::RefCell<kernel::mm::rt::RtPool>,
    /// The block the last replay left allocated, if any.
    leftover: std::cell::Cell<Option<u64>>,
}

impl KeptRtPool {
    /// Builds the pool over `heap` bytes of `arena` with `granule`-byte granules.
    fn new(arena: &Arena, heap: usize, granule: u64) -> Self {
        let pool = kernel::mm::rt::RtPool::new("rt", arena.base() as u64, heap as u64, granule).unwrap();
        KeptRtPool { pool: std::cell::RefCell::new(pool), leftover: std::cell::Cell::new(None) }
    }

    /// The pool brought back to one free block (the leftover block freed, then checked).
    fn reset(&self) -> std::cell::RefMut<'_, kernel::mm::rt::RtPool> {
        let mut pool = self.pool.borrow_mut();
        if let Some(address) = self.leftover.take() {
            pool.free(address).expect("leftover RT block");
        }
        assert_eq!(pool.block_count(), (1, 0), "the kept RT pool is one free block again");
        pool
    }
}

/// The forced worst cases, one table row each: a small request from one huge free block, a
/// free that merges both neighbours, the deepest buddy split and merge, and a slab refill.
fn forced_worst_cases(arena: &Arena, replays: usize, timer: u64) {
    println!("\n### Forced worst cases\n");
    println!(
        "One operation on a freshly prepared state; ns, min over {replays} replays. Tessera's RT pool is \
measured twice: built once (as at boot) and brought back to the prepared state before each replay, \
and built new for each replay (its block table just written).\n"
    );
    println!("| case | tessera | rlsf | talc | buddy_system_allocator | linked_list_allocator |");
    println!("|---|---:|---:|---:|---:|---:|");
    let heap = 256 * MIB;
    let granule = kernel::mm::rt::RtPool::granule_for(heap as u64, 65536, 64);
    let kept = forced_small_from_one_huge_block(arena, replays, timer, heap, granule);
    forced_free_merging_both_neighbours(arena, replays, timer, heap, granule, &kept);
    forced_deepest_buddy_split_and_merge(arena, replays, timer);
    forced_slab_refill(arena, replays, timer);
}

/// A 64 B request when the only free block is `heap` bytes: on a new RT pool, on one built
/// once (returned, for the next case), and on each baseline.
fn forced_small_from_one_huge_block(
    arena: &Arena,
    replays: usize,
    timer: u64,
    heap: usize,
    granule: u64,
) -> KeptRtPool {
    use kernel::mm::rt::RtPool;
    let small = std::alloc::Layout::from_size_align(64, 64).unwrap();
    let ours = forced(
        replays,
        timer,
        || RtPool::new("rt", arena.base() as u64, heap as u64, granule).unwrap(),
        |pool| {
            pool.alloc(64, 64).unwrap();
        },
    );
    // The same on a pool built once, as the kernel's is, and reset to the prepared state
    // before each replay (its leftover block freed, then checked to be one free block).
    let kept = KeptRtPool::new(arena, heap, granule);
    let ours_kept =
        forced(replays, timer, || kept.reset(), |pool| kept.leftover.set(Some(pool.alloc(64, 64).unwrap())));
    let raw = |make: &dyn Fn() -> Box<dyn RawBox>| forced(replays, timer, make, |state| state.touch(small));
    println!(
        "| 64 B from one free {} MiB block | {ours_kept} (RT pool built once; {ours} new) | {} | {} | {} | {} |",
        heap / MIB,
        raw(&|| Box::new(rlsf(arena, heap))),
        raw(&|| Box::new(talc(arena, heap))),
        raw(&|| Box::new(buddy_system(arena, heap))),
        raw(&|| Box::new(linked_list(arena, heap))),
    );
    kept
}

/// A free whose block has free neighbours on both sides (4 KiB blocks): on a new RT pool, on
/// the `kept` one, and on each baseline over `heap` bytes.
fn forced_free_merging_both_neighbours(
    arena: &Arena,
    replays: usize,
    timer: u64,
    heap: usize,
    granule: u64,
    kept: &KeptRtPool,
) {
    use kernel::mm::rt::RtPool;
    let page = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    let merge_ours = forced(
        replays,
        timer,
        || {
            let mut pool = RtPool::new("rt", arena.base() as u64, heap as u64, granule).unwrap();
            let blocks: Vec<u64> = (0..4).map(|_| pool.alloc(4096, 64).unwrap()).collect();
            pool.free(blocks[0]).unwrap();
            pool.free(blocks[2]).unwrap();
            (pool, blocks[1])
        },
        |(pool, middle)| {
            pool.free(*middle).unwrap();
        },
    );
    let merge_kept = forced(
        replays,
        timer,
        || {
            let mut pool = kept.reset();
            let blocks: Vec<u64> = (0..4).map(|_| pool.alloc(4096, 64).unwrap()).collect();
            pool.free(blocks[0]).unwrap();
            pool.free(blocks[2]).unwrap();
            kept.leftover.set(Some(blocks[3]));
            (pool, blocks[1])
        },
        |(pool, middle)| {
            pool.free(*middle).unwrap();
        },
    );
    let merge = |make: &dyn Fn() -> Box<dyn RawBox>| {
        forced(
            replays,
            timer,
            || {
                let mut state = make();
                let blocks: Vec<_> = (0..4).map(|_| state.take(page)).collect();
                state.give(blocks[0], page);
                state.give(blocks[2], page);
                (state, blocks[1])
            },
            |(state, middle)| state.give(*middle, page),
        )
    };
    println!(
        "| free merging both neighbours (4 KiB blocks) | {merge_kept} (RT pool built once; {merge_ours} new) | {} | {} | {} | {} |",
        merge(&|| Box::new(rlsf(arena, heap))),
        merge(&|| Box::new(talc(arena, heap))),
        merge(&|| Box::new(buddy_system(arena, heap))),
        merge(&|| Box::new(linked_list(arena, heap))),
    );
}

/// The deepest split and merge: 4 KiB out of one maximal 1 MiB block, and back, on our buddy
/// and on buddy_system_allocator.
fn forced_deepest_buddy_split_and_merge(arena: &Arena, replays: usize, timer: u64) {
    use kernel::mm::buddy::BuddyAllocator;
    use subjects::Raw;
    let page = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    let fresh_buddy = || BuddyAllocator::new("b", arena.base() as u64, MIB as u64, 4096, MIB as u64).unwrap();
    let split_ours = forced(replays, timer, fresh_buddy, |buddy| {
        buddy.alloc(4096).unwrap();
    });
    let merge_ours = forced(
        replays,
        timer,
        || {
            let mut buddy = fresh_buddy();
            let address = buddy.alloc(4096).unwrap();
            (buddy, address)
        },
        |(buddy, address)| {
            buddy.free(*address).unwrap();
        },
    );
    let split_theirs = forced(
        replays,
        timer,
        || buddy_system(arena, MIB),
        |heap| {
            heap.allocate(page).unwrap();
        },
    );
    let merge_theirs = forced(
        replays,
        timer,
        || {
            let mut heap = buddy_system(arena, MIB);
            let block = heap.allocate(page).unwrap();
            (heap, block)
        },
        // SAFETY: the block was just allocated with `page`.
        |(heap, block)| unsafe { heap.deallocate(*block, page) },
    );
    println!(
        "| deepest split: 4 KiB from a free 1 MiB block | {split_ours} (buddy) | | | {split_theirs} | |"
    );
    println!("| deepest merge: 4 KiB back into 1 MiB | {merge_ours} (buddy) | | | {merge_theirs} | |");
}

/// A slab refill: the first allocation of a class carves a new slab.
fn forced_slab_refill(arena: &Arena, replays: usize, timer: u64) {
    use kernel::mm::buddy::BuddyAllocator;
    use kernel::mm::slab::{CoreSlab, SlabDepot};
    let refill = forced(
        replays,
        timer,
        || {
            let buddy =
                BuddyAllocator::new("b", arena.base() as u64, 16 * MIB as u64, 4096, MIB as u64).unwrap();
            let depot = SlabDepot::new("slab", spin::Mutex::new(buddy), 64).unwrap();
            let core = CoreSlab::new(&depot, 0);
            (depot, core)
        },
        |(depot, core)| {
            core.alloc(depot, 64).unwrap();
        },
    );
    println!("| slab refill: first 64 B object (carves a 16 KiB slab) | {refill} (slab) | | | | |");
}

/// A raw baseline allocator with its block table, for the forced cases.
trait RawBox {
    fn take(&mut self, layout: std::alloc::Layout) -> std::ptr::NonNull<u8>;
    fn give(&mut self, block: std::ptr::NonNull<u8>, layout: std::alloc::Layout);
    fn touch(&mut self, layout: std::alloc::Layout) {
        self.take(layout);
    }
}

impl<R: subjects::Raw> RawBox for R {
    fn take(&mut self, layout: std::alloc::Layout) -> std::ptr::NonNull<u8> {
        self.allocate(layout).expect("forced-case allocation")
    }
    fn give(&mut self, block: std::ptr::NonNull<u8>, layout: std::alloc::Layout) {
        // SAFETY: callers give back blocks they took with the same layout, once.
        unsafe { self.deallocate(block, layout) }
    }
}

/// The smallest arena each allocator completes the LLM trace in, against its peak live bytes.
/// Makes an allocator over the first `size` bytes of the arena.
type SizedFactory<'a> = Box<dyn FnMut(usize) -> Box<dyn Subject> + 'a>;

/// The smallest arena, to 1 MiB, in which `trace` completes without a failed allocation.
fn smallest_arena(trace: &Trace, limit: usize, factory: &mut SizedFactory<'_>) -> Option<usize> {
    let mut completes = |size: usize| run(factory(size).as_mut(), trace, None, 0) == 0;
    let (mut low, mut high) = (trace.peak_live / MIB, limit / MIB);
    if !completes(high * MIB) {
        return None;
    }
    while low + 1 < high {
        let middle = (low + high) / 2;
        if completes(middle * MIB) { high = middle } else { low = middle }
    }
    Some(high)
}

/// Prints one row of a utilization table.
fn utilization_row(name: &str, trace: &Trace, size: Option<usize>, limit: usize) {
    match size {
        Some(size) => {
            println!("| {name} | {size} | {:.1}% |", 100.0 * trace.peak_live as f64 / (size * MIB) as f64)
        }
        None => println!("| {name} | does not fit in {} MiB | - |", limit / MIB),
    }
}

/// Utilization of the baselines on `trace`, after `ours` (a Tessera pool over a plain arena).
fn utilization_table(arena: &Arena, trace: &Trace, ours: Option<(&str, SizedFactory<'_>)>) {
    println!("| allocator | smallest arena (MiB) | utilization |");
    println!("|---|---:|---:|");
    let ids = trace.ids;
    let mut subjects: Vec<(&str, SizedFactory<'_>)> = ours.into_iter().collect();
    subjects.push(("rlsf", Box::new(|size| Box::new(Baseline::new(rlsf(arena, size), ids)))));
    subjects.push(("talc", Box::new(|size| Box::new(Baseline::new(talc(arena, size), ids)))));
    subjects.push((
        "buddy_system_allocator",
        Box::new(|size| Box::new(Baseline::new(buddy_system(arena, size), ids))),
    ));
    subjects.push((
        "linked_list_allocator",
        Box::new(|size| Box::new(Baseline::new(linked_list(arena, size), ids))),
    ));
    for (name, mut factory) in subjects {
        utilization_row(name, trace, smallest_arena(trace, arena.size(), &mut factory), arena.size());
    }
}

/// The smallest arena each allocator completes the LLM trace in, against its peak live bytes.
fn utilization(arena: &Arena, llm: &Trace, plan: &MemoryPlan) {
    println!("\n### Utilization on the LLM trace\n");
    println!(
        "Peak live bytes ÷ the smallest arena (to 1 MiB) that completes the trace without a failed \
         allocation. Peak live: {:.1} MiB.\n",
        llm.peak_live as f64 / MIB as f64
    );
    utilization_table(arena, llm, None);
    let ids = llm.ids;
    let report = |name: &str, size: Option<usize>| utilization_row(name, llm, size, arena.size());
    // Tessera: the plan is the boot policy's, so the search scales the board's RAM and counts
    // the bytes of the regions the trace uses (the arena, the protocol and small-object
    // regions).
    let tessera_plan = |ram_mib: usize| pi3_plan((ram_mib * MIB) as u64);
    let used = |plan: &MemoryPlan| {
        [RegionKind::Arena, RegionKind::Protocol, RegionKind::Small]
            .map(|kind| plan.region(kind).size as usize)
            .iter()
            .sum::<usize>()
    };
    let fits = |ram_mib: usize| {
        tessera_plan(ram_mib)
            .is_some_and(|plan| run(&mut OurTensorMemory::new(&plan, ids), llm, None, 0) == 0)
    };
    let (mut low, mut high) = (64usize, 4096usize);
    while low + 1 < high {
        let middle = (low + high) / 2;
        if fits(middle) { high = middle } else { low = middle }
    }
    let smallest_plan = tessera_plan(high).expect("plan");
    report(
        "tessera TensorMemory (arena, protocol and small-object regions)",
        Some(used(&smallest_plan) / MIB),
    );
    println!(
        "\nTessera's smallest board: {high} MiB of RAM (the budget table fixes its system share and protocol \
         reserve; the LLM arena takes the rest)."
    );

    // The weights alone (the operations of 1 MiB and more): the chunk allocator against the
    // baselines on equal terms, each with one arena.
    let weights = trace::sizes_between(llm, MIB, usize::MAX, "LLM trace, weights (1 MiB and more)");
    println!(
        "\nWeights only (operations of 1 MiB and more, two models live during each hot-swap). Peak live: {:.1} MiB.\n",
        weights.peak_live as f64 / MIB as f64
    );
    let weight_ids = weights.ids;
    let chunk: SizedFactory<'_> =
        Box::new(move |size| Box::new(OurChunk::new(arena, size, weight_ids)) as Box<dyn Subject>);
    utilization_table(arena, &weights, Some(("tessera chunk", chunk)));

    // Peak fragmentation of each Tessera pool during the trace on the 1 GiB plan.
    // Every operation is timed on the host clock into the pools' own histograms.
    let mut ours = OurTensorMemory::timed(plan, ids);
    let mut peak = [[0u64; 3]; 6];
    let mut busiest = (0u64, String::new());
    let mut live = vec![false; ids];
    for (index, operation) in llm.operations.iter().enumerate() {
        match *operation {
            Operation::Alloc { id, size, alignment, kind } => {
                live[id as usize] = ours.alloc(id, size, alignment, kind)
            }
            Operation::Free { id } => {
                if std::mem::take(&mut live[id as usize]) {
                    ours.free(id);
                }
            }
        }
        let sampled = index % 64 == 0;
        let arena_has_segment = ours.memory.arena().largest_free >= SEGMENT;
        let mut reserved = 0;
        for (slot, pool) in peak.iter_mut().zip(Pool::ALL) {
            let statistics = ours.memory.statistics(pool);
            let own = statistics.fragmentation_permille();
            // A KV or activations request is at most one segment, which the arena lends.
            let lent = matches!(pool, Pool::KvCache | Pool::Activations);
            let effective = if lent && arena_has_segment { 0 } else { own };
            slot[1] = slot[1].max(own);
            slot[2] = slot[2].max(effective);
            if sampled {
                slot[0] = slot[0].max(own);
                reserved += if pool == Pool::Slab { 0 } else { statistics.counters.reserved_bytes };
            }
        }
        if sampled && reserved > busiest.0 {
            busiest = (reserved, ours.memory.report().to_string());
        }
    }
    println!(
        "\nPeak fragmentation (1 − largest free ÷ total free, sampled every 64 operations, Pi 3 plan for 1 GiB; \
         the second column takes every operation, including the moments inside a hot-swap while the old \
         model's tensors are freed one by one; the KV cache and the activations own only the segments the \
         arena lent them, so the third column, also over every operation, counts their fragmentation as \
         none while the arena has a free segment to lend, since none of their requests is larger):\n"
    );
    println!(
        "| pool | peak fragmentation | peak over every operation | counting the arena's free segments |"
    );
    println!("|---|---:|---:|---:|");
    for (value, pool) in peak.iter().zip(Pool::ALL) {
        let [sampled, every, effective] =
            value.map(|permille| format!("{}.{}%", permille / 10, permille % 10));
        println!("| {pool:?} | {sampled} | {every} | {effective} |");
    }
    println!("\nMemory map at the busiest sampled moment of the trace:\n\n```\n{}```", busiest.1);
    ours.memory.reclaim();
    println!("\nMemory map at the end, after `reclaim`:\n\n```\n{}```", ours.memory.report());
}
