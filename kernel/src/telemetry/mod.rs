//! Telemetry: the trace ring of typed events, serving counters with latency histograms, and the
//! memory-bandwidth monitor with its bandwidth cap. Read by `/stats`, `/trace` and machine mode.
//!
//! Everything that records (`TraceRing::record`, `Histogram::record`, the `Counters::record_*`
//! methods) is lock-free and allocates nothing, so any core and any interrupt handler may call
//! it. The bandwidth monitor allocates nothing but takes a short lock: core 0's serving loop
//! records and paces its forward passes with it. Reading (snapshots and reports) may allocate or
//! wait for a lock, and belongs to the console.
//!
//! ```text
//! static TRACE: TraceRing = TraceRing::new();
//! static COUNTERS: Counters = Counters::new(&["stats", "cancel", "status"], CONTROL_DEADLINE_NS);
//!
//! TRACE.record(TraceEvent::new(clock.now_ns(), core, EventKind::KvEviction { blocks: 4 }));
//! if COUNTERS.record_command("stats", latency_ns) {
//!     TRACE.record(TraceEvent::new(now, 0, EventKind::DeadlineMiss { command: "stats".into(), latency_ns }));
//! }
//! for event in TRACE.snapshot(20) { writeln!(out, "{event}")?; }
//! write!(out, "{}{}", COUNTERS.report(), bandwidth.report())?;
//! ```

#![forbid(unsafe_code)]

mod bandwidth;
mod counters;
mod event;
mod format;
mod histogram;
mod trace;

pub use bandwidth::{
    BANDWIDTH_WINDOW, BandwidthMonitor, BandwidthReport, BandwidthSettings, IntervalBytes, Megabytes,
};
pub use counters::{CONTROL_DEADLINE_NS, CommandLatency, Counters, CountersReport, MAX_COMMANDS};
pub use event::{CoreLoss, EventKind, PressureLevel, SHORT_NAME_BYTES, ShortName, TraceEvent};
pub use format::{ByteRate, ByteSize, Duration};
pub use histogram::{HISTOGRAM_BUCKETS, Histogram, HistogramSnapshot, bucket_ceiling, bucket_of};
pub use trace::{TRACE_CAPACITY, TraceRing};

/// The kernel's trace ring: every part of the kernel records into it (through [`record`]);
/// `/trace`, machine mode and fault reports read it.
pub static TRACE: TraceRing = TraceRing::new();

/// Records `kind` in [`TRACE`], stamped now on the current core (by the board time boot
/// installs; 0 on core 0 before that, and on the host). Lock-free and allocation-free:
/// any core and any interrupt or exception handler may call it.
pub fn record(kind: EventKind) {
    let (now_ns, core) =
        crate::hil::board_time().map_or((0, 0), |board| (board.clock.now_ns(), (board.core)()));
    TRACE.record(TraceEvent::new(now_ns, core, kind));
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    static TRACE: TraceRing = TraceRing::new();
    static COUNTERS: Counters = Counters::new(&["stats", "cancel", "status"], CONTROL_DEADLINE_NS);

    /// The pieces as the console uses them: statics, a deadline miss turned into a trace event.
    #[test]
    fn statics_record_and_report_together() {
        let latency_ns = 12_500_000;
        if COUNTERS.record_command("stats", latency_ns) {
            let miss = EventKind::DeadlineMiss { command: "stats".into(), latency_ns };
            TRACE.record(TraceEvent::new(3_000_000_000, 0, miss));
        }
        assert!(!COUNTERS.record_command("cancel", 1_000));
        let lines: Vec<_> = TRACE.snapshot(20).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["   3.000000 s  core 0  deadline    stats answered in 12.5 ms"]);
        assert_eq!(COUNTERS.report().deadline_misses(), 1);
        assert!(COUNTERS.report().to_string().contains("  /stats                 1   12.5 ms"));
    }

    #[test]
    fn recent_events_are_visited_oldest_first_without_allocating() {
        let ring: TraceRing<4> = TraceRing::new();
        for blocks in 1..=6 {
            ring.record(TraceEvent::new(blocks, 0, EventKind::KvEviction { blocks }));
        }
        let mut seen = Vec::new();
        ring.for_each_recent(3, |event| seen.push(event.timestamp_ns));
        assert_eq!(seen, [4, 5, 6]);
        seen.clear();
        ring.for_each_recent(10, |event| seen.push(event.timestamp_ns));
        assert_eq!(seen, [3, 4, 5, 6], "only what the ring still holds");
    }
}
