//! `Clock`: a monotonic time source (the generic timer on the Pi), and the board's clock as
//! the whole kernel reads it once boot has installed it.

/// A monotonic, never-wrapping tick counter with a known frequency.
pub trait Clock: Sync {
    /// The current tick count.
    fn ticks(&self) -> u64;

    /// Ticks per second.
    fn frequency_hz(&self) -> u64;

    /// Nanoseconds since the counter started, saturating.
    fn now_ns(&self) -> u64 {
        ticks_to_ns(self.ticks(), self.frequency_hz())
    }

    /// A deadline `timeout_us` microseconds from now.
    fn deadline_after_us(&self, timeout_us: u64) -> Deadline {
        let frequency = self.frequency_hz();
        let delta = (u128::from(timeout_us) * u128::from(frequency) / 1_000_000) as u64;
        Deadline { at_ticks: self.ticks().saturating_add(delta) }
    }

    /// Busy-waits for `us` microseconds. Only for short hardware settle times.
    fn delay_us(&self, us: u64) {
        let deadline = self.deadline_after_us(us);
        while !deadline.passed(self) {
            core::hint::spin_loop();
        }
    }
}

/// A point in time on one [`Clock`], used for hardware timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// The tick count at which the deadline passes.
    pub at_ticks: u64,
}

impl Deadline {
    /// Whether the deadline has passed on `clock`.
    pub fn passed(&self, clock: &(impl Clock + ?Sized)) -> bool {
        clock.ticks() >= self.at_ticks
    }
}

/// Converts a tick count at `frequency_hz` to nanoseconds, without overflow.
pub fn ticks_to_ns(ticks: u64, frequency_hz: u64) -> u64 {
    if frequency_hz == 0 {
        return 0;
    }
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(frequency_hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Advances 1000 ticks on every read.
    struct FakeClock {
        ticks: AtomicU64,
    }
    impl Clock for FakeClock {
        fn ticks(&self) -> u64 {
            self.ticks.fetch_add(1000, Ordering::Relaxed)
        }
        fn frequency_hz(&self) -> u64 {
            62_500_000
        }
    }

    #[test]
    fn conversion_is_exact_and_saturates() {
        assert_eq!(ticks_to_ns(62_500_000, 62_500_000), 1_000_000_000);
        assert_eq!(ticks_to_ns(1, 62_500_000), 16);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
        assert_eq!(ticks_to_ns(5, 0), 0);
    }

    #[test]
    fn delay_waits_until_deadline() {
        let clock = FakeClock { ticks: AtomicU64::new(0) };
        clock.delay_us(100); // 6250 ticks at 62.5 MHz
        let end = clock.ticks.load(Ordering::Relaxed);
        assert!((6250..6250 + 3000).contains(&end), "stopped at {end}");
    }
}

/// The board's clock and the reader of the current core's number, installed once by boot and
/// read by code that keeps time without being handed a clock: trace events, pool latency
/// histograms.
#[derive(Clone, Copy)]
pub struct BoardTime {
    /// The board's clock.
    pub clock: &'static dyn Clock,
    /// The number of the core that calls it.
    pub core: fn() -> u32,
}

static BOARD_TIME: spin::Once<BoardTime> = spin::Once::new();

/// Installs the board's clock and core-number reader (the first call wins).
pub fn install_board_time(clock: &'static dyn Clock, core: fn() -> u32) {
    BOARD_TIME.call_once(|| BoardTime { clock, core });
}

/// The board's clock and core-number reader, once installed (never on the host).
pub fn board_time() -> Option<BoardTime> {
    BOARD_TIME.get().copied()
}
