//! Telemetry: the trace ring of typed events, serving counters with latency histograms, and the
//! memory-bandwidth monitor with its batch throttle. Read by `/stats`, `/trace` and machine mode.
//!
//! Everything that records (`TraceRing::record`, `Histogram::record`, the `Counters::record_*`
//! methods, `BandwidthMonitor::record_read`/`record_write`/`suggested_batch`) is lock-free and
//! allocates nothing, so any core and any interrupt handler may call it. Reading (snapshots and
//! reports) allocates and belongs to the console.
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

pub use bandwidth::{BANDWIDTH_WINDOW, BandwidthMonitor, BandwidthReport, BandwidthSettings, IntervalBytes};
pub use counters::{CONTROL_DEADLINE_NS, CommandLatency, Counters, CountersReport, MAX_COMMANDS};
pub use event::{EventKind, PressureLevel, SHORT_NAME_BYTES, ShortName, TraceEvent};
pub use format::{ByteRate, ByteSize, Duration};
pub use histogram::{HISTOGRAM_BUCKETS, Histogram, HistogramSnapshot, bucket_ceiling, bucket_of};
pub use trace::{TRACE_CAPACITY, TraceRing};
