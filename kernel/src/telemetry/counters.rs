//! Serving counters for `/stats`: generated tokens and the time they took, the request latency
//! histogram, one control-latency histogram per console command with its deadline misses, and
//! the memory-pressure actions taken.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use super::event::{PressureLevel, ShortName};
use super::format::Duration;
use super::histogram::{Histogram, HistogramSnapshot};

/// Most commands a [`Counters`] times by name; others share the `other` row.
pub const MAX_COMMANDS: usize = 12;

/// The control-command deadline of the console protocol: 10 ms from the end of the line.
pub const CONTROL_DEADLINE_NS: u64 = 10_000_000;

/// Counters any core or interrupt handler updates without a lock or an allocation.
///
/// The command table is fixed when the counters are made (a `static` is fine):
/// `Counters::new(&["stats", "cancel", "status"], CONTROL_DEADLINE_NS)`.
#[derive(Debug)]
pub struct Counters {
    deadline_ns: u64,
    tokens: AtomicU64,
    generation_ns: AtomicU64,
    passes: AtomicU64,
    pass_rows: AtomicU64,
    pass_tokens: AtomicU64,
    request_latency: Histogram,
    command_names: [ShortName; MAX_COMMANDS],
    command_count: usize,
    /// One per named command, then the `other` row.
    command_latency: [Histogram; MAX_COMMANDS + 1],
    command_misses: [AtomicU64; MAX_COMMANDS + 1],
    pressure: [AtomicU64; PressureLevel::COUNT],
}

impl Counters {
    /// Counters timing `commands` (at most [`MAX_COMMANDS`], names cut to a [`ShortName`])
    /// against a deadline of `deadline_ns`.
    pub const fn new(commands: &[&str], deadline_ns: u64) -> Self {
        assert!(commands.len() <= MAX_COMMANDS, "too many commands to time");
        let mut command_names = [ShortName::EMPTY; MAX_COMMANDS];
        let mut index = 0;
        while index < commands.len() {
            command_names[index] = ShortName::new(commands[index]);
            index += 1;
        }
        Self {
            deadline_ns,
            tokens: AtomicU64::new(0),
            generation_ns: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            pass_rows: AtomicU64::new(0),
            pass_tokens: AtomicU64::new(0),
            request_latency: Histogram::new(),
            command_names,
            command_count: commands.len(),
            command_latency: [const { Histogram::new() }; MAX_COMMANDS + 1],
            command_misses: [const { AtomicU64::new(0) }; MAX_COMMANDS + 1],
            pressure: [const { AtomicU64::new(0) }; PressureLevel::COUNT],
        }
    }

    /// Adds `tokens` generated in `elapsed_ns` (for tokens/s).
    pub fn record_generation(&self, tokens: u64, elapsed_ns: u64) {
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        self.generation_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
    }

    /// Counts one pass over the weights that fed `rows` token rows (prompt chunks, decode
    /// rows) and sampled `tokens` tokens.
    pub fn record_pass(&self, rows: u64, tokens: u64) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.pass_rows.fetch_add(rows, Ordering::Relaxed);
        self.pass_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts one finished request that took `latency_ns` from arrival to its last token.
    pub fn record_request(&self, latency_ns: u64) {
        self.request_latency.record(latency_ns);
    }

    /// Counts one answer to `command` given `latency_ns` after the end of its line. Returns
    /// `true` when that missed the deadline (the caller then records a trace event).
    pub fn record_command(&self, command: &str, latency_ns: u64) -> bool {
        let name = ShortName::new(command);
        let row = self.command_names[..self.command_count]
            .iter()
            .position(|known| *known == name)
            .unwrap_or(MAX_COMMANDS);
        self.command_latency[row].record(latency_ns);
        let missed = latency_ns > self.deadline_ns;
        if missed {
            self.command_misses[row].fetch_add(1, Ordering::Relaxed);
        }
        missed
    }

    /// Counts one action of the memory-pressure manager.
    pub fn record_pressure(&self, level: PressureLevel) {
        self.pressure[level.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, for `/stats` or machine mode.
    pub fn report(&self) -> CountersReport {
        let row = |index: usize, name: ShortName| CommandLatency {
            name,
            latency: self.command_latency[index].snapshot(),
            misses: self.command_misses[index].load(Ordering::Relaxed),
        };
        let mut commands: Vec<CommandLatency> = self.command_names[..self.command_count]
            .iter()
            .enumerate()
            .map(|(index, &name)| row(index, name))
            .collect();
        let other = row(MAX_COMMANDS, ShortName::new("other"));
        if other.latency.count() > 0 {
            commands.push(other);
        }
        CountersReport {
            tokens: self.tokens.load(Ordering::Relaxed),
            generation_ns: self.generation_ns.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            pass_rows: self.pass_rows.load(Ordering::Relaxed),
            pass_tokens: self.pass_tokens.load(Ordering::Relaxed),
            request_latency: self.request_latency.snapshot(),
            commands,
            deadline_ns: self.deadline_ns,
            pressure: core::array::from_fn(|index| self.pressure[index].load(Ordering::Relaxed)),
        }
    }
}

/// One command's control latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandLatency {
    /// The command (`other` for commands outside the table).
    pub name: ShortName,
    /// Time from the end of its line to its answer.
    pub latency: HistogramSnapshot,
    /// Answers later than the deadline.
    pub misses: u64,
}

/// The counters at one moment; `Display` renders the `/stats` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountersReport {
    /// Tokens generated.
    pub tokens: u64,
    /// Time spent generating them.
    pub generation_ns: u64,
    /// Passes over the weights.
    pub passes: u64,
    /// Token rows those passes fed.
    pub pass_rows: u64,
    /// Tokens those passes sampled.
    pub pass_tokens: u64,
    /// Request latency, arrival to last token.
    pub request_latency: HistogramSnapshot,
    /// One row per command in the table, then `other` when any command outside it was timed.
    pub commands: Vec<CommandLatency>,
    /// The control deadline.
    pub deadline_ns: u64,
    /// Actions per [`PressureLevel`], by [`PressureLevel::index`].
    pub pressure: [u64; PressureLevel::COUNT],
}

impl CountersReport {
    /// Tokens per second of generation time, 0 before any.
    pub fn tokens_per_second(&self) -> f64 {
        if self.generation_ns == 0 { 0.0 } else { self.tokens as f64 * 1e9 / self.generation_ns as f64 }
    }

    /// Tokens sampled per pass over the weights (0 before any pass).
    pub fn tokens_per_pass(&self) -> f64 {
        if self.passes == 0 { 0.0 } else { self.pass_tokens as f64 / self.passes as f64 }
    }

    /// Control answers that missed the deadline, over all commands.
    pub fn deadline_misses(&self) -> u64 {
        self.commands.iter().map(|command| command.misses).sum()
    }
}

/// A latency cell: `-` when nothing was counted.
struct Cell(u64, bool);

impl fmt::Display for Cell {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 { Duration(self.0).fmt(formatter) } else { formatter.pad("-") }
    }
}

/// Writes one latency row: name, count, p50, p99, max and the deadline column.
fn write_row(
    formatter: &mut fmt::Formatter<'_>,
    name: &dyn fmt::Display,
    latency: &HistogramSnapshot,
    misses: Option<u64>,
) -> fmt::Result {
    let counted = latency.count() > 0;
    write!(
        formatter,
        "  {:<16} {:>7} {:>9} {:>9} {:>9}",
        name,
        latency.count(),
        Cell(latency.p50_ns(), counted),
        Cell(latency.p99_ns(), counted),
        Cell(latency.max_ns, counted),
    )?;
    match misses {
        Some(misses) => writeln!(formatter, " {misses:>12}"),
        None => writeln!(formatter, " {:>12}", "-"),
    }
}

impl fmt::Display for CountersReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "generation  {:.1} tokens/s  ({} tokens in {})",
            self.tokens_per_second(),
            self.tokens,
            Duration(self.generation_ns)
        )?;
        writeln!(
            formatter,
            "passes      {} over the weights: {:.2} rows, {:.2} tokens per pass",
            self.passes,
            if self.passes == 0 { 0.0 } else { self.pass_rows as f64 / self.passes as f64 },
            self.tokens_per_pass()
        )?;
        let deadline = alloc::format!("over {}", Duration(self.deadline_ns));
        writeln!(
            formatter,
            "latency            {:>7} {:>9} {:>9} {:>9} {deadline:>12}",
            "count", "p50", "p99", "max"
        )?;
        write_row(formatter, &"request", &self.request_latency, None)?;
        for command in &self.commands {
            let name = alloc::format!("/{}", command.name);
            write_row(formatter, &name, &command.latency, Some(command.misses))?;
        }
        write!(formatter, "pressure   ")?;
        for level in PressureLevel::ALL {
            write!(formatter, " {} {}", level.label(), self.pressure[level.index()])?;
        }
        writeln!(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn commands_are_timed_by_name_and_misses_counted() {
        let counters = Counters::new(&["stats", "cancel"], 10_000);
        assert!(!counters.record_command("stats", 10_000), "exactly at the deadline is in time");
        assert!(counters.record_command("stats", 10_001));
        assert!(!counters.record_command("cancel", 5));
        assert!(counters.record_command("frobnicate", 20_000));
        let report = counters.report();
        let rows: Vec<_> =
            report.commands.iter().map(|row| (row.name.as_str(), row.latency.count(), row.misses)).collect();
        assert_eq!(rows, [("stats", 2, 1), ("cancel", 1, 0), ("other", 1, 1)]);
        assert_eq!(report.commands[0].latency.max_ns, 10_001);
        assert_eq!(report.deadline_misses(), 2);
    }

    #[test]
    fn other_row_appears_only_when_used() {
        let counters = Counters::new(&["stats"], CONTROL_DEADLINE_NS);
        counters.record_command("stats", 1);
        assert_eq!(counters.report().commands.len(), 1);
    }

    #[test]
    fn tokens_per_second_and_pressure() {
        let counters = Counters::new(&[], CONTROL_DEADLINE_NS);
        assert_eq!(counters.report().tokens_per_second(), 0.0);
        counters.record_generation(30, 1_000_000_000);
        counters.record_generation(20, 1_500_000_000);
        counters.record_pressure(PressureLevel::Preempt);
        counters.record_pressure(PressureLevel::Preempt);
        counters.record_pressure(PressureLevel::RejectRequests);
        let report = counters.report();
        assert_eq!(
            (report.tokens, report.generation_ns, report.tokens_per_second()),
            (50, 2_500_000_000, 20.0)
        );
        assert_eq!(report.pressure, [0, 0, 2, 0, 1]);
    }

    #[test]
    fn report_reads_at_a_glance() {
        let counters = Counters::new(&["stats", "cancel"], CONTROL_DEADLINE_NS);
        counters.record_generation(1234, 5_678_000_000);
        counters.record_pass(20, 1);
        counters.record_pass(4, 4);
        for latency_ms in [900, 1100, 4000] {
            counters.record_request(latency_ms * 1_000_000);
        }
        counters.record_command("stats", 120_000);
        counters.record_command("stats", 12_000_000);
        counters.record_pressure(PressureLevel::DropCachedPrefixes);
        let text = counters.report().to_string();
        let expected = "\
generation  217.3 tokens/s  (1234 tokens in 5.6 s)
passes      2 over the weights: 12.00 rows, 2.50 tokens per pass
latency              count       p50       p99       max over 10.0 ms
  request                3     2.1 s     4.0 s     4.0 s            -
  /stats                 2  131.0 us   12.0 ms   12.0 ms            1
  /cancel                0         -         -         -            0
pressure    drop-prefixes 1 compress 0 preempt 0 evict-weights 0 reject 0
";
        assert_eq!(text, expected, "got:\n{text}");
    }
}
