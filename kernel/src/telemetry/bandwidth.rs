//! The memory-bandwidth monitor: bytes that compute kernels read and write, per interval of a
//! [`Clock`], with current and peak bandwidth over a rolling window, and the throttle hook the
//! scheduler asks for its batch size.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::format::{ByteRate, Duration};
use crate::hil::Clock;

/// Intervals the rolling window keeps by default.
pub const BANDWIDTH_WINDOW: usize = 16;

/// Most halvings the throttle applies (a batch of 2^16 would still drop to 1).
const MAX_THROTTLE_LEVEL: u32 = 16;

/// How the monitor measures and when it throttles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BandwidthSettings {
    /// Length of one interval in microseconds.
    pub interval_us: u64,
    /// Bandwidth (read + write, bytes/s) above which an interval counts as saturated.
    pub threshold_bytes_per_second: u64,
    /// Consecutive saturated intervals that halve the batch (again, for each further run).
    pub intervals_above: u32,
    /// Consecutive intervals at or below the threshold that restore the full batch.
    pub intervals_below: u32,
}

/// Bytes read and written in one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalBytes {
    /// Bytes read.
    pub read: u64,
    /// Bytes written.
    pub written: u64,
}

impl IntervalBytes {
    fn total(self) -> u64 {
        self.read.saturating_add(self.written)
    }
}

/// The completed intervals and the throttle's state, behind the monitor's lock.
struct Window<const WINDOW: usize> {
    /// A ring of the last completed intervals; `completed` counts all of them.
    intervals: [IntervalBytes; WINDOW],
    completed: u64,
    peak_ever: u64,
    /// Bytes of all completed intervals.
    total: IntervalBytes,
    above_run: u32,
    below_run: u32,
}

/// Counts kernel memory traffic per interval and turns sustained saturation into a smaller
/// batch.
///
/// Invariants and bounds:
/// - [`BandwidthMonitor::record_read`] and [`BandwidthMonitor::record_write`] are lock-free and
///   allocate nothing: a clock read, a compare and one atomic add. Closing an interval takes
///   the window lock with `try_lock` only, so no caller ever waits for it.
/// - An interval closes on the first call after its end. Bytes recorded before that call count
///   in the interval that closes; intervals that passed with no call count as idle.
/// - The throttle level only changes when an interval closes: `intervals_above` consecutive
///   saturated intervals raise it by one (halving the batch), `intervals_below` consecutive
///   unsaturated ones reset it to 0.
pub struct BandwidthMonitor<'clock, const WINDOW: usize = BANDWIDTH_WINDOW> {
    clock: &'clock dyn Clock,
    settings: BandwidthSettings,
    interval_ticks: u64,
    read: AtomicU64,
    written: AtomicU64,
    /// Tick at which the open interval ends.
    interval_end: AtomicU64,
    throttle_level: AtomicU32,
    window: spin::Mutex<Window<WINDOW>>,
}

impl<const WINDOW: usize> fmt::Debug for BandwidthMonitor<'_, WINDOW> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("BandwidthMonitor")
            .field("settings", &self.settings)
            .field("interval_ticks", &self.interval_ticks)
            .field("throttle_level", &self.throttle_level())
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
        Self {
            clock,
            settings,
            interval_ticks,
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            interval_end: AtomicU64::new(clock.ticks().saturating_add(interval_ticks)),
            throttle_level: AtomicU32::new(0),
            window: spin::Mutex::new(Window {
                intervals: [IntervalBytes::default(); WINDOW],
                completed: 0,
                peak_ever: 0,
                total: IntervalBytes::default(),
                above_run: 0,
                below_run: 0,
            }),
        }
    }

    /// Counts `bytes` a kernel read.
    pub fn record_read(&self, bytes: u64) {
        self.poll();
        self.read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` a kernel wrote.
    pub fn record_write(&self, bytes: u64) {
        self.poll();
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The batch to run instead of `wanted_batch` (what the scheduler would run unthrottled):
    /// halved once per throttle level, never below 1 (0 stays 0).
    pub fn suggested_batch(&self, wanted_batch: usize) -> usize {
        self.poll();
        if wanted_batch == 0 {
            return 0;
        }
        (wanted_batch >> self.throttle_level()).max(1)
    }

    /// How many times the batch is halved now.
    pub fn throttle_level(&self) -> u32 {
        self.throttle_level.load(Ordering::Relaxed)
    }

    /// Closes the open interval, and any that passed since, once the clock is past its end.
    /// Returns at once when it is not, or when another core is closing it.
    pub fn poll(&self) {
        let now = self.clock.ticks();
        if now < self.interval_end.load(Ordering::Acquire) {
            return;
        }
        let Some(mut window) = self.window.try_lock() else {
            return;
        };
        let end = self.interval_end.load(Ordering::Acquire);
        if now < end {
            return;
        }
        let elapsed = (now - end) / self.interval_ticks + 1;
        let closed = IntervalBytes {
            read: self.read.swap(0, Ordering::Relaxed),
            written: self.written.swap(0, Ordering::Relaxed),
        };
        self.close(&mut window, closed);
        // Intervals with no call at all were idle; the window and the runs only need so many.
        let idle_needed = WINDOW as u64 + u64::from(self.settings.intervals_below);
        for _ in 1..elapsed.min(idle_needed + 1) {
            self.close(&mut window, IntervalBytes::default());
        }
        window.completed += (elapsed - 1).saturating_sub(idle_needed);
        let next_end = end.saturating_add(elapsed.saturating_mul(self.interval_ticks));
        self.interval_end.store(next_end, Ordering::Release);
    }

    /// Appends one completed interval and steps the throttle.
    fn close(&self, window: &mut Window<WINDOW>, bytes: IntervalBytes) {
        window.intervals[(window.completed % WINDOW as u64) as usize] = bytes;
        window.completed += 1;
        let rate = self.rate(bytes.total());
        window.peak_ever = window.peak_ever.max(rate);
        window.total.read = window.total.read.saturating_add(bytes.read);
        window.total.written = window.total.written.saturating_add(bytes.written);
        let level = self.throttle_level.load(Ordering::Relaxed);
        if rate > self.settings.threshold_bytes_per_second {
            window.below_run = 0;
            window.above_run += 1;
            if window.above_run >= self.settings.intervals_above.max(1) {
                window.above_run = 0;
                self.throttle_level.store((level + 1).min(MAX_THROTTLE_LEVEL), Ordering::Relaxed);
            }
        } else {
            window.above_run = 0;
            window.below_run = window.below_run.saturating_add(1);
            if window.below_run >= self.settings.intervals_below.max(1) {
                self.throttle_level.store(0, Ordering::Relaxed);
            }
        }
    }

    /// `bytes` in one interval, as bytes per second.
    fn rate(&self, bytes: u64) -> u64 {
        let rate =
            u128::from(bytes) * u128::from(self.clock.frequency_hz()) / u128::from(self.interval_ticks);
        u64::try_from(rate).unwrap_or(u64::MAX)
    }

    /// Bandwidth now: current, peak and mean over the window. Takes the window lock (waiting
    /// for it), so call it from the console, not from an interrupt handler.
    pub fn report(&self) -> BandwidthReport {
        self.poll();
        let window = self.window.lock();
        let held = window.completed.min(WINDOW as u64) as usize;
        let latest = (window.completed + WINDOW as u64 - 1) % WINDOW as u64;
        let current = if held == 0 { IntervalBytes::default() } else { window.intervals[latest as usize] };
        let totals = window.intervals[..held].iter().map(|bytes| bytes.total());
        let (peak, sum) =
            totals.fold((0, 0u128), |(peak, sum), total| (peak.max(total), sum + u128::from(total)));
        let mean = if held == 0 { 0 } else { (sum / held as u128) as u64 };
        BandwidthReport {
            interval_ns: crate::hil::ticks_to_ns(self.interval_ticks, self.clock.frequency_hz()),
            intervals: held,
            completed: window.completed,
            current_read: self.rate(current.read),
            current_written: self.rate(current.written),
            current: self.rate(current.total()),
            peak: self.rate(peak),
            mean: self.rate(mean),
            peak_ever: window.peak_ever,
            total: window.total,
            threshold: self.settings.threshold_bytes_per_second,
            throttle_level: self.throttle_level(),
        }
    }
}

/// Bandwidth at one moment, in bytes per second; `Display` renders the `/stats` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BandwidthReport {
    /// Length of one interval.
    pub interval_ns: u64,
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
    /// The mean over the window.
    pub mean: u64,
    /// The busiest interval since the monitor started.
    pub peak_ever: u64,
    /// Bytes moved in all completed intervals.
    pub total: IntervalBytes,
    /// The throttle threshold.
    pub threshold: u64,
    /// Halvings the throttle applies now.
    pub throttle_level: u32,
}

impl fmt::Display for BandwidthReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "bandwidth   now  {:>12}  ({} read, {} written)",
            ByteRate(self.current),
            ByteRate(self.current_read),
            ByteRate(self.current_written)
        )?;
        writeln!(
            formatter,
            "            peak {:>12}  (last {} x {}; {} since start)",
            ByteRate(self.peak),
            self.intervals,
            Duration(self.interval_ns),
            ByteRate(self.peak_ever)
        )?;
        writeln!(formatter, "            mean {:>12}", ByteRate(self.mean))?;
        match self.throttle_level {
            0 => writeln!(formatter, "throttle    off  (batch halves above {})", ByteRate(self.threshold)),
            level => writeln!(
                formatter,
                "throttle    batch / {}  (above {})",
                1u64 << level,
                ByteRate(self.threshold)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A clock that moves only when told to: 1 MHz, so one tick is a microsecond.
    struct FakeClock {
        ticks: AtomicU64,
    }

    impl FakeClock {
        fn new() -> Self {
            Self { ticks: AtomicU64::new(1000) }
        }

        fn advance(&self, ticks: u64) {
            self.ticks.fetch_add(ticks, Ordering::Relaxed);
        }
    }

    impl Clock for FakeClock {
        fn ticks(&self) -> u64 {
            self.ticks.load(Ordering::Relaxed)
        }

        fn frequency_hz(&self) -> u64 {
            1_000_000
        }
    }

    /// 1 ms intervals (1000 ticks); saturated above 1 MB/s (1000 bytes per interval).
    const SETTINGS: BandwidthSettings = BandwidthSettings {
        interval_us: 1000,
        threshold_bytes_per_second: 1_000_000,
        intervals_above: 3,
        intervals_below: 2,
    };

    /// Runs one whole interval that moves `bytes` (split between reads and writes).
    fn interval<const WINDOW: usize>(clock: &FakeClock, monitor: &BandwidthMonitor<'_, WINDOW>, bytes: u64) {
        monitor.record_read(bytes / 2);
        monitor.record_write(bytes - bytes / 2);
        clock.advance(1000);
        monitor.poll();
    }

    #[test]
    fn nothing_counts_before_the_first_interval_ends() {
        let clock = FakeClock::new();
        let monitor = BandwidthMonitor::<4>::new(&clock, SETTINGS);
        monitor.record_read(5000);
        clock.advance(999);
        let report = monitor.report();
        assert_eq!((report.completed, report.intervals, report.current, report.peak), (0, 0, 0, 0));
        clock.advance(1);
        let report = monitor.report();
        assert_eq!((report.completed, report.current, report.current_read), (1, 5_000_000, 5_000_000));
        assert_eq!(report.interval_ns, 1_000_000);
    }

    #[test]
    fn current_and_peak_roll_with_the_window() {
        let clock = FakeClock::new();
        let monitor = BandwidthMonitor::<3>::new(&clock, SETTINGS);
        interval(&clock, &monitor, 900);
        interval(&clock, &monitor, 300);
        let report = monitor.report();
        assert_eq!((report.current, report.peak, report.mean), (300_000, 900_000, 600_000));
        assert_eq!((report.current_read, report.current_written), (150_000, 150_000));
        interval(&clock, &monitor, 100);
        interval(&clock, &monitor, 200);
        let report = monitor.report();
        assert_eq!((report.current, report.peak, report.intervals), (200_000, 300_000, 3), "900 rolled out");
        assert_eq!((report.peak_ever, report.completed), (900_000, 4));
    }

    #[test]
    fn idle_intervals_count_as_zero() {
        let clock = FakeClock::new();
        let monitor = BandwidthMonitor::<4>::new(&clock, SETTINGS);
        monitor.record_write(800);
        clock.advance(2500);
        monitor.record_write(40);
        let report = monitor.report();
        assert_eq!((report.completed, report.current, report.peak), (2, 0, 800_000), "one busy, one idle");
        clock.advance(500);
        let report = monitor.report();
        assert_eq!(
            (report.completed, report.current),
            (3, 40_000),
            "the late write lands in the third interval"
        );
        clock.advance(1_000_000);
        let report = monitor.report();
        assert_eq!(
            (report.completed, report.intervals, report.peak, report.peak_ever),
            (1003, 4, 0, 800_000)
        );
    }

    #[test]
    fn throttle_halves_after_sustained_saturation_and_restores() {
        let clock = FakeClock::new();
        let monitor = BandwidthMonitor::<4>::new(&clock, SETTINGS);
        assert_eq!(monitor.suggested_batch(8), 8);
        interval(&clock, &monitor, 5000);
        interval(&clock, &monitor, 5000);
        assert_eq!(monitor.suggested_batch(8), 8, "two saturated intervals are not enough");
        interval(&clock, &monitor, 1000);
        assert_eq!(monitor.suggested_batch(8), 8, "exactly at the threshold is not above it");
        for _ in 0..3 {
            interval(&clock, &monitor, 1001);
        }
        assert_eq!(
            (monitor.suggested_batch(8), monitor.suggested_batch(1), monitor.suggested_batch(0)),
            (4, 1, 0)
        );
        for _ in 0..3 {
            interval(&clock, &monitor, 5000);
        }
        assert_eq!(monitor.suggested_batch(8), 2, "a further run halves again");
        assert!(monitor.report().to_string().contains("batch / 4"));
        interval(&clock, &monitor, 10);
        assert_eq!(monitor.suggested_batch(8), 2, "one quiet interval of the two needed");
        interval(&clock, &monitor, 5000);
        interval(&clock, &monitor, 10);
        assert_eq!(monitor.suggested_batch(8), 2, "the quiet run restarted");
        interval(&clock, &monitor, 10);
        assert_eq!(monitor.suggested_batch(8), 8, "restored");
    }

    #[test]
    fn four_threads_lose_no_bytes_across_interval_closes() {
        const PER_THREAD: u64 = 2000;
        let clock = FakeClock::new();
        let monitor = BandwidthMonitor::<4>::new(&clock, SETTINGS);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let monitor = &monitor;
                scope.spawn(move || {
                    for step in 0..PER_THREAD {
                        if thread % 2 == 0 { monitor.record_read(3) } else { monitor.record_write(step % 7) }
                    }
                });
            }
            // Intervals close while the threads record.
            for _ in 0..50 {
                clock.advance(400);
                monitor.poll();
                std::thread::yield_now();
            }
        });
        clock.advance(1000);
        let report = monitor.report();
        let written_per_thread: u64 = (0..PER_THREAD).map(|step| step % 7).sum();
        assert_eq!(report.total, IntervalBytes { read: 2 * 3 * PER_THREAD, written: 2 * written_per_thread });
        assert_eq!(report.completed, 21, "1000 + 50 x 400 + 1000 ticks from a boundary at 2000");
    }

    #[test]
    fn report_reads_at_a_glance() {
        let clock = FakeClock::new();
        let monitor = BandwidthMonitor::<4>::new(&clock, SETTINGS);
        interval(&clock, &monitor, 3 << 20);
        interval(&clock, &monitor, 1 << 20);
        let expected = "\
bandwidth   now  1000.0 MiB/s  (500.0 MiB/s read, 500.0 MiB/s written)
            peak    2.9 GiB/s  (last 2 x 1.0 ms; 2.9 GiB/s since start)
            mean    1.9 GiB/s
throttle    off  (batch halves above 976.5 KiB/s)
";
        assert_eq!(monitor.report().to_string(), expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Against a plain model: a list of per-interval totals and a throttle stepped by hand.
        #[test]
        fn matches_a_reference_model(steps in prop::collection::vec((0u64..3000, 1u64..4), 1..40)) {
            let clock = FakeClock::new();
            let monitor = BandwidthMonitor::<5>::new(&clock, SETTINGS);
            let mut totals: Vec<u64> = Vec::new();
            let (mut level, mut above, mut below) = (0u32, 0, 0);
            for (bytes, intervals) in steps {
                monitor.record_read(bytes);
                clock.advance(intervals * 1000);
                let closed = core::iter::once(bytes).chain(core::iter::repeat_n(0, intervals as usize - 1));
                for total in closed {
                    totals.push(total);
                    if total * 1000 > SETTINGS.threshold_bytes_per_second {
                        below = 0;
                        above += 1;
                        if above == SETTINGS.intervals_above {
                            above = 0;
                            level = (level + 1).min(MAX_THROTTLE_LEVEL);
                        }
                    } else {
                        above = 0;
                        below += 1;
                        if below >= SETTINGS.intervals_below {
                            level = 0;
                        }
                    }
                }
                let report = monitor.report();
                let window = &totals[totals.len().saturating_sub(5)..];
                prop_assert_eq!(report.completed, totals.len() as u64);
                prop_assert_eq!(report.current, totals.last().unwrap() * 1000);
                prop_assert_eq!(report.peak, window.iter().max().unwrap() * 1000);
                prop_assert_eq!(report.peak_ever, totals.iter().max().unwrap() * 1000);
                prop_assert_eq!(report.total.read, totals.iter().sum::<u64>());
                prop_assert_eq!(report.throttle_level, level);
                prop_assert_eq!(monitor.suggested_batch(1 << 10), ((1usize << 10) >> level).max(1));
            }
        }
    }
}
