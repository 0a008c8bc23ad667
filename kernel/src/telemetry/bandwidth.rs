//! The memory-bandwidth monitor: the bytes each forward pass really moves, spread over the
//! board-clock time the pass took and counted per interval of a [`Clock`]; the current,
//! sustained (window mean) and peak rates `/stats` shows; and the bandwidth cap the server
//! paces its passes by.
//!
//! A pass's bytes are booked against the time it ran, not against the moment it ended: a pass
//! of `B` bytes from tick `s` to tick `e` puts `B × overlap / (e − s)` bytes in every interval
//! it overlaps. Passes run one after another on core 0, so an interval never holds more bytes
//! than the passes in it moved, and its rate never exceeds the fastest of those passes'
//! rates: the peak is bounded by the truth (within one byte per pass and interval of rounding,
//! for reads and for writes).

use core::fmt;

use super::format::Duration;
use crate::hil::Clock;

/// Intervals the rolling window keeps by default (320 ms of 10 ms intervals in the server).
pub const BANDWIDTH_WINDOW: usize = 32;

/// How the monitor measures, and the cap it starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BandwidthSettings {
    /// Length of one interval in microseconds.
    pub interval_us: u64,
    /// The most bytes per second the passes may move, sustained (`None`: no cap).
    pub cap_bytes_per_second: Option<u64>,
}

/// Bytes read and written: by one forward pass, or in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalBytes {
    /// Bytes read.
    pub read: u64,
    /// Bytes written.
    pub written: u64,
}

impl IntervalBytes {
    /// Bytes read and written.
    pub fn total(self) -> u64 {
        self.read.saturating_add(self.written)
    }

    fn add(&mut self, other: IntervalBytes) {
        self.read = self.read.saturating_add(other.read);
        self.written = self.written.saturating_add(other.written);
    }
}

/// One pass's bytes laid evenly over its ticks, `start..start + duration` (`duration > 0`).
struct Spread {
    bytes: IntervalBytes,
    start: u64,
    duration: u64,
}

impl Spread {
    /// `bytes × (tick − start) / duration`, rounded down.
    fn share(bytes: u64, elapsed: u64, duration: u64) -> u64 {
        (u128::from(bytes) * u128::from(elapsed) / u128::from(duration)) as u64
    }

    /// Bytes of the pass up to `tick` (within the pass).
    fn up_to(&self, tick: u64) -> IntervalBytes {
        let elapsed = tick.saturating_sub(self.start).min(self.duration);
        IntervalBytes {
            read: Self::share(self.bytes.read, elapsed, self.duration),
            written: Self::share(self.bytes.written, elapsed, self.duration),
        }
    }

    /// Bytes of the pass between `from` and `to` (the differences telescope, so the pieces of
    /// a pass add up to its bytes exactly).
    fn between(&self, from: u64, to: u64) -> IntervalBytes {
        let (low, high) = (self.up_to(from), self.up_to(to));
        IntervalBytes { read: high.read - low.read, written: high.written - low.written }
    }

    /// The most bytes any `ticks` long stretch of the pass can get: the exact share, rounded
    /// up, for reads and for writes.
    fn most_per(&self, ticks: u64) -> u64 {
        let ceiling =
            |bytes: u64| (u128::from(bytes) * u128::from(ticks)).div_ceil(u128::from(self.duration)) as u64;
        ceiling(self.bytes.read).saturating_add(ceiling(self.bytes.written))
    }
}

/// Intervals, totals, the cap and the pacing counts, behind the monitor's lock.
struct Ledger<const WINDOW: usize> {
    /// The settled intervals `open − WINDOW .. open`, each at index `interval % WINDOW`.
    settled: [IntervalBytes; WINDOW],
    /// The interval the last pass ended in: the next pass may still add to it. Every interval
    /// before it is final.
    open: u64,
    /// Bytes in the open interval so far.
    open_bytes: IntervalBytes,
    /// Tick at which the last pass ended (the next one starts no earlier).
    last_end: u64,
    /// Bytes of the busiest settled interval.
    peak_settled: u64,
    /// Bytes of all settled intervals.
    total_settled: IntervalBytes,
    /// Passes recorded.
    passes: u64,
    /// The cap in bytes per second.
    cap: Option<u64>,
    /// Earliest tick the next pass may start at under the cap (the long-run pace).
    ready_at: u64,
    /// Tick at which the pause under way began.
    pause_started: Option<u64>,
    /// Passes that waited for the cap.
    pauses: u64,
    /// Ticks spent waiting for the cap, pauses under way excluded.
    paused_ticks: u64,
}

impl<const WINDOW: usize> Ledger<WINDOW> {
    /// Bytes of `interval` as known now (0 for intervals after the open one).
    fn bytes_of(&self, interval: u64) -> IntervalBytes {
        match interval.cmp(&self.open) {
            core::cmp::Ordering::Less => self.settled[(interval % WINDOW as u64) as usize],
            core::cmp::Ordering::Equal => self.open_bytes,
            core::cmp::Ordering::Greater => IntervalBytes::default(),
        }
    }

    /// Makes `interval` final with `bytes`.
    fn settle(&mut self, interval: u64, bytes: IntervalBytes) {
        self.settled[(interval % WINDOW as u64) as usize] = bytes;
        self.peak_settled = self.peak_settled.max(bytes.total());
        self.total_settled.add(bytes);
    }

    /// Settles the open interval and the idle ones after it, up to `interval`, which opens.
    fn open_at(&mut self, interval: u64) {
        if interval <= self.open {
            return;
        }
        self.settle(self.open, self.open_bytes);
        // Idle intervals: only those the window still shows need their slot cleared.
        for idle in (self.open + 1).max(interval.saturating_sub(WINDOW as u64))..interval {
            self.settled[(idle % WINDOW as u64) as usize] = IntervalBytes::default();
        }
        self.open = interval;
        self.open_bytes = IntervalBytes::default();
    }

    /// Bytes of the `WINDOW` intervals that end with `last` (fewer at the start).
    fn window_total(&self, last: u64) -> u64 {
        let first = (last + 1).saturating_sub(WINDOW as u64);
        (first..=last).map(|interval| self.bytes_of(interval).total()).fold(0, u64::saturating_add)
    }
}

/// Counts the bytes forward passes move, spread over their own time, and paces passes under a
/// bandwidth cap.
///
/// Invariants and bounds:
/// - Passes are recorded in the order they ran and do not overlap (core 0 runs them one after
///   another; a pass recorded as starting before the previous one ended is taken to start at
///   that end). Every interval before the one the last pass ended in is then final.
/// - The bytes of the intervals add up to the bytes recorded, exactly, read and written apart.
/// - An interval holds at most, for each pass that overlaps it, the pass's rate times the
///   overlap, plus one byte of rounding each for reads and writes: so the peak rate is at most
///   the fastest pass's rate (bytes / duration) plus two bytes per pass per interval.
/// - Under a cap, [`BandwidthMonitor::pace`] lets a pass start only when the `WINDOW`
///   intervals ending with the current one plus the pass stay within `cap × WINDOW` intervals,
///   and when the passes before it, at the cap's rate, are done (the long-run pace). Every
///   window of `WINDOW` intervals then moves at most the cap's share, as long as no pass moves
///   more than a whole window's share (such a pass waits for an idle window and runs alone).
/// - Every method takes the monitor's lock for at most `WINDOW + 2` intervals' arithmetic and
///   allocates nothing. The serving loop on core 0 is the one caller; not for interrupt
///   handlers.
pub struct BandwidthMonitor<'clock, const WINDOW: usize = BANDWIDTH_WINDOW> {
    clock: &'clock dyn Clock,
    interval_ticks: u64,
    /// Tick at which interval 0 starts.
    origin: u64,
    ledger: spin::Mutex<Ledger<WINDOW>>,
}

impl<const WINDOW: usize> fmt::Debug for BandwidthMonitor<'_, WINDOW> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("BandwidthMonitor")
            .field("interval_ticks", &self.interval_ticks)
            .field("cap", &self.cap())
            .finish_non_exhaustive()
    }
}

impl<'clock, const WINDOW: usize> BandwidthMonitor<'clock, WINDOW> {
    /// A monitor whose first interval starts now on `clock`. `WINDOW` must not be zero.
    pub fn new(clock: &'clock dyn Clock, settings: BandwidthSettings) -> Self {
        const { assert!(WINDOW > 0, "a bandwidth window needs at least one interval") };
        let interval_ticks =
            (u128::from(settings.interval_us) * u128::from(clock.frequency_hz()) / 1_000_000).max(1);
        let interval_ticks = u64::try_from(interval_ticks).unwrap_or(u64::MAX);
        let origin = clock.ticks();
        Self {
            clock,
            interval_ticks,
            origin,
            ledger: spin::Mutex::new(Ledger {
                settled: [IntervalBytes::default(); WINDOW],
                open: 0,
                open_bytes: IntervalBytes::default(),
                last_end: origin,
                peak_settled: 0,
                total_settled: IntervalBytes::default(),
                passes: 0,
                cap: settings.cap_bytes_per_second.filter(|&cap| cap > 0),
                ready_at: 0,
                pause_started: None,
                pauses: 0,
                paused_ticks: 0,
            }),
        }
    }

    /// The interval `tick` falls in.
    fn interval_of(&self, tick: u64) -> u64 {
        tick.saturating_sub(self.origin) / self.interval_ticks
    }

    /// The tick at which `interval` starts.
    fn start_of(&self, interval: u64) -> u64 {
        self.origin.saturating_add(interval.saturating_mul(self.interval_ticks))
    }

    /// Counts a forward pass that moved `bytes` from tick `start` to tick `end`, spreading its
    /// bytes over the intervals it ran in.
    pub fn record_pass(&self, bytes: IntervalBytes, start: u64, end: u64) {
        let mut ledger = self.ledger.lock();
        let start = start.max(ledger.last_end);
        let end = end.max(start);
        let (first, last) = (self.interval_of(start), self.interval_of(end));
        ledger.open_at(first);
        if first == last {
            ledger.open_bytes.add(bytes);
        } else {
            self.spread(&mut ledger, Spread { bytes, start, duration: end - start }, first, last);
        }
        ledger.last_end = end;
        ledger.passes += 1;
        if let Some(cap) = ledger.cap {
            let pace =
                (u128::from(bytes.total()) * u128::from(self.clock.frequency_hz())).div_ceil(u128::from(cap));
            let pace = u64::try_from(pace).unwrap_or(u64::MAX);
            ledger.ready_at = ledger.ready_at.max(start).saturating_add(pace);
        }
    }

    /// Books a pass that runs from the open interval `first` into `last`: every interval but
    /// the last becomes final. Intervals too old for the window only add to the totals and
    /// the peak, so a pass that ran for hours costs no more than one that ran for a window.
    fn spread(&self, ledger: &mut Ledger<WINDOW>, spread: Spread, first: u64, last: u64) {
        let mut open_bytes = ledger.open_bytes;
        open_bytes.add(spread.between(spread.start, self.start_of(first + 1)));
        ledger.settle(first, open_bytes);
        let kept_from = (first + 1).max(last.saturating_sub(WINDOW as u64));
        if kept_from > first + 1 {
            let skipped = spread.between(self.start_of(first + 1), self.start_of(kept_from));
            ledger.total_settled.add(skipped);
            ledger.peak_settled = ledger.peak_settled.max(spread.most_per(self.interval_ticks));
        }
        for interval in kept_from..last {
            let bytes = spread.between(self.start_of(interval), self.start_of(interval + 1));
            ledger.settle(interval, bytes);
        }
        ledger.open = last;
        ledger.open_bytes = spread.between(self.start_of(last), spread.start + spread.duration);
    }

    /// Sets the cap in bytes per second (`None` or 0 removes it). The long-run pace starts
    /// afresh under the new cap.
    pub fn set_cap(&self, cap: Option<u64>) {
        let mut ledger = self.ledger.lock();
        ledger.cap = cap.filter(|&cap| cap > 0);
        ledger.ready_at = 0;
    }

    /// The cap in bytes per second.
    pub fn cap(&self) -> Option<u64> {
        self.ledger.lock().cap
    }

    /// Bytes the cap allows per window of `WINDOW` intervals.
    fn window_budget(&self, cap: u64) -> u64 {
        let ticks = u128::from(self.interval_ticks) * WINDOW as u128;
        let budget = u128::from(cap) * ticks / u128::from(self.clock.frequency_hz().max(1));
        u64::try_from(budget).unwrap_or(u64::MAX)
    }

    /// Whether the next pass, which will move `next`, must wait for the cap now. The caller
    /// asks again (serving the console meanwhile) until it may run; the waits are counted as
    /// one pause per pass. Always false without a cap.
    pub fn pace(&self, next: IntervalBytes) -> bool {
        let now = self.clock.ticks();
        let mut ledger = self.ledger.lock();
        let waits = match ledger.cap {
            None => false,
            Some(cap) => {
                let budget = self.window_budget(cap);
                let used = ledger.window_total(self.interval_of(now).max(ledger.open));
                let fits = if next.total() > budget { used == 0 } else { used + next.total() <= budget };
                now < ledger.ready_at || !fits
            }
        };
        match (waits, ledger.pause_started) {
            (true, None) => {
                ledger.pause_started = Some(now);
                ledger.pauses += 1;
            }
            (false, Some(started)) => {
                ledger.paused_ticks = ledger.paused_ticks.saturating_add(now.saturating_sub(started));
                ledger.pause_started = None;
            }
            _ => {}
        }
        waits
    }

    /// `bytes` in one interval, as bytes per second.
    fn rate(&self, bytes: u64) -> u64 {
        let rate =
            u128::from(bytes) * u128::from(self.clock.frequency_hz()) / u128::from(self.interval_ticks);
        u64::try_from(rate).unwrap_or(u64::MAX)
    }

    /// Bandwidth now: the last completed interval, the window's peak and mean, and since the
    /// start. Intervals a pass under way has run in count once it ends.
    pub fn report(&self) -> BandwidthReport {
        let now = self.clock.ticks();
        let ledger = self.ledger.lock();
        let completed = self.interval_of(now).max(ledger.open);
        let held = completed.min(WINDOW as u64);
        let window = (completed - held..completed).map(|interval| ledger.bytes_of(interval));
        let (peak, sum) = window.fold((0, 0u128), |(peak, sum), bytes| {
            (bytes.total().max(peak), sum + u128::from(bytes.total()))
        });
        // Before the monitor started nothing moved: the mean is always over the whole window.
        let mean = (sum / WINDOW as u128) as u64;
        let current = if completed == 0 { IntervalBytes::default() } else { ledger.bytes_of(completed - 1) };
        let mut total = ledger.total_settled;
        total.add(ledger.open_bytes);
        let ongoing = ledger.pause_started.map_or(0, |started| now.saturating_sub(started));
        let frequency = self.clock.frequency_hz();
        BandwidthReport {
            interval_ns: crate::hil::ticks_to_ns(self.interval_ticks, frequency),
            window_ns: crate::hil::ticks_to_ns(self.interval_ticks.saturating_mul(WINDOW as u64), frequency),
            intervals: held as usize,
            completed,
            current_read: self.rate(current.read),
            current_written: self.rate(current.written),
            current: self.rate(current.total()),
            peak: self.rate(peak),
            sustained: self.rate(mean),
            peak_ever: self.rate(ledger.peak_settled.max(ledger.open_bytes.total())),
            total,
            passes: ledger.passes,
            cap: ledger.cap,
            pauses: ledger.pauses,
            paused_ns: crate::hil::ticks_to_ns(ledger.paused_ticks.saturating_add(ongoing), frequency),
        }
    }
}

/// Bandwidth at one moment, in bytes per second; `Display` renders the `/stats` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BandwidthReport {
    /// Length of one interval.
    pub interval_ns: u64,
    /// Length of the window.
    pub window_ns: u64,
    /// Completed intervals in the window (at most its size).
    pub intervals: usize,
    /// Completed intervals since the monitor started.
    pub completed: u64,
    /// Reads in the last completed interval.
    pub current_read: u64,
    /// Writes in the last completed interval.
    pub current_written: u64,
    /// Reads and writes in the last completed interval.
    pub current: u64,
    /// The busiest interval in the window.
    pub peak: u64,
    /// The mean over the window (the intervals before the monitor started count as idle):
    /// the sustained rate the cap bounds.
    pub sustained: u64,
    /// The busiest interval since the monitor started.
    pub peak_ever: u64,
    /// Bytes moved by the passes recorded.
    pub total: IntervalBytes,
    /// Forward passes recorded.
    pub passes: u64,
    /// The cap.
    pub cap: Option<u64>,
    /// Passes that waited for the cap.
    pub pauses: u64,
    /// Time they waited, in all.
    pub paused_ns: u64,
}

/// A rate in decimal megabytes per second with one decimal (`12.3 MB/s`): the unit of the
/// cap, `/set bandwidth_cap MBPS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Megabytes(pub u64);

impl fmt::Display for Megabytes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0 / 100_000;
        write!(formatter, "{}.{} MB/s", tenths / 10, tenths % 10)
    }
}

impl fmt::Display for BandwidthReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "bandwidth    now {} ({} read), sustained {} over {}, peak {}; {} passes moved {}.{} MB, each over its own time",
            Megabytes(self.current),
            Megabytes(self.current_read),
            Megabytes(self.sustained),
            Duration(self.window_ns),
            Megabytes(self.peak_ever),
            self.passes,
            self.total.total() / 1_000_000,
            self.total.total() / 100_000 % 10,
        )?;
        match self.cap {
            Some(cap) => writeln!(
                formatter,
                "cap          {} sustained; {} passes waited for it, {} in all",
                Megabytes(cap),
                self.pauses,
                Duration(self.paused_ns)
            ),
            None => writeln!(formatter, "cap          none (/set bandwidth_cap MBPS sets one)"),
        }
    }
}

#[cfg(test)]
mod tests;
