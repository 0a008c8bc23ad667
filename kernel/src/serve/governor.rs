//! What the server keeps across batches to govern memory: the bandwidth monitor fed with the
//! bytes each forward pass moves, its throttle (the batch size), the pressure manager for the
//! current KV pool, and the counts `/stats` shows.
//!
//! The bytes of a forward pass at position `p` are counted from the model's shape, per the
//! kernels' access pattern: the matmuls read the whole weights file once per token (the tied
//! or separate classifier included; the embedding lookup reads one row, which the file size
//! over-counts by the rest of the table when the embedding is not tied), attention reads the
//! keys and values of positions `0..=p` of every layer, and the KV store writes one key and
//! one value row per layer.

#![forbid(unsafe_code)]

use super::pressure::{PressureCounts, PressureError, PressureManager, PressureThresholds, Relief};
use crate::{
    hil::Clock,
    telemetry::{BandwidthMonitor, BandwidthSettings, IntervalBytes, PressureLevel},
};

/// The bandwidth settings the server uses: 10 ms generic-timer intervals; four intervals in a
/// row above 2 GB/s (about what the Pi 3's LPDDR2 sustains) halve the batch, eight below
/// restore it.
pub const SERVER_BANDWIDTH: BandwidthSettings = BandwidthSettings {
    interval_us: 10_000,
    threshold_bytes_per_second: 2_000_000_000,
    intervals_above: 4,
    intervals_below: 8,
};

/// Bytes one forward pass at `position` moves: weights and K/V read, K/V written.
pub fn step_traffic(weights_bytes: u64, layers: usize, kv_dim: usize, position: usize) -> IntervalBytes {
    let row_pair = (2 * kv_dim * 4) as u64;
    let layers = layers as u64;
    IntervalBytes {
        read: weights_bytes.saturating_add(layers * (position as u64 + 1) * row_pair),
        written: layers * row_pair,
    }
}

/// Memory facts for `/stats`, read-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStatistics {
    /// Bytes per second moved in the last completed interval.
    pub current_bandwidth: u64,
    /// The busiest interval since boot, in bytes per second.
    pub peak_bandwidth: u64,
    /// Times the batch is halved now because bandwidth stayed above the threshold.
    pub throttle_level: u32,
    /// Actions of the memory-pressure manager (all kinds, rejections included).
    pub pressure_events: u64,
    /// Of those, preemptions (the manager's, and those on KV exhaustion).
    pub preemptions: u64,
}

/// The server's memory governance across batches.
pub struct Governor<'clock> {
    bandwidth: BandwidthMonitor<'clock>,
    pressure: Option<PressureManager>,
    /// Actions of managers of earlier pools.
    earlier: PressureCounts,
    /// Preemptions on KV exhaustion (the batch's preemptor counts them).
    exhaustion_preemptions: u64,
}

impl<'clock> Governor<'clock> {
    /// A governor measuring on `clock` with `settings`.
    pub fn new(clock: &'clock dyn Clock, settings: BandwidthSettings) -> Self {
        Self {
            bandwidth: BandwidthMonitor::new(clock, settings),
            pressure: None,
            earlier: PressureCounts::default(),
            exhaustion_preemptions: 0,
        }
    }

    /// Sets the pressure thresholds for a KV pool of `budget_blocks` blocks (a new pool, or
    /// the same one again) and returns them.
    pub fn track_pool(&mut self, budget_blocks: usize) -> PressureThresholds {
        let thresholds = PressureThresholds::for_budget(budget_blocks);
        match &self.pressure {
            Some(manager) if manager.thresholds() == thresholds => {}
            _ => {
                if let Some(old) = self.pressure.replace(PressureManager::new(thresholds)) {
                    for (total, count) in self.earlier.actions.iter_mut().zip(old.counts().actions) {
                        *total += count;
                    }
                }
            }
        }
        thresholds
    }

    /// Counts the bytes of one forward pass.
    pub fn count_step(&self, traffic: IntervalBytes) {
        self.bandwidth.record_read(traffic.read);
        self.bandwidth.record_write(traffic.written);
    }

    /// Counts one preemption on KV exhaustion.
    pub fn count_exhaustion_preemption(&mut self) {
        self.exhaustion_preemptions += 1;
    }

    /// The batch to run for `wanted` sequences: fewer while bandwidth stays high.
    pub fn batch_limit(&self, wanted: usize) -> usize {
        self.bandwidth.suggested_batch(wanted)
    }

    /// Runs the pressure manager over `relief`; returns the actions taken, in order.
    pub fn relieve(&mut self, relief: &mut dyn Relief) -> alloc::vec::Vec<PressureLevel> {
        let mut taken = alloc::vec::Vec::new();
        if let Some(manager) = &mut self.pressure {
            manager.relieve(relief, &mut |level| taken.push(level));
        }
        taken
    }

    /// Whether a new request may join with `held_blocks` KV blocks held.
    pub fn admit(&mut self, held_blocks: usize) -> Result<(), PressureError> {
        match &mut self.pressure {
            Some(manager) => manager.admit(held_blocks, &mut |_| {}),
            None => Ok(()),
        }
    }

    /// The statistics now.
    pub fn statistics(&self) -> MemoryStatistics {
        let report = self.bandwidth.report();
        let mut counts = self.earlier;
        if let Some(manager) = &self.pressure {
            for (total, count) in counts.actions.iter_mut().zip(manager.counts().actions) {
                *total += count;
            }
        }
        MemoryStatistics {
            current_bandwidth: report.current,
            peak_bandwidth: report.peak_ever,
            throttle_level: report.throttle_level,
            pressure_events: counts.total() + self.exhaustion_preemptions,
            preemptions: counts.of(PressureLevel::Preempt) + self.exhaustion_preemptions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// A 1 MHz clock that moves only when told to.
    struct StepClock(AtomicU64);

    impl Clock for StepClock {
        fn ticks(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }

        fn frequency_hz(&self) -> u64 {
            1_000_000
        }
    }

    #[test]
    fn traffic_follows_the_model_shape() {
        let traffic = step_traffic(1000, 2, 8, 9);
        assert_eq!(traffic.written, 2 * 2 * 8 * 4);
        assert_eq!(traffic.read, 1000 + 10 * 2 * 2 * 8 * 4);
    }

    #[test]
    fn sustained_bandwidth_lowers_the_batch_and_idle_restores_it() {
        let clock = StepClock(AtomicU64::new(0));
        let settings = BandwidthSettings {
            interval_us: 1000,
            threshold_bytes_per_second: 1_000_000,
            intervals_above: 2,
            intervals_below: 3,
        };
        let governor = Governor::new(&clock, settings);
        // 128 KB of weights a token, one token per 1 ms interval: 128 MB/s, far above 1 MB/s.
        let token = step_traffic(128_000, 2, 8, 0);
        for _ in 0..4 {
            governor.count_step(token);
            clock.0.fetch_add(1000, Ordering::Relaxed);
        }
        governor.count_step(token);
        assert_eq!(governor.batch_limit(8), 2, "four saturated intervals halve the batch twice");
        let statistics = governor.statistics();
        assert_eq!(statistics.throttle_level, 2);
        assert_eq!(statistics.current_bandwidth, (token.read + token.written) * 1000);
        assert_eq!(statistics.peak_bandwidth, statistics.current_bandwidth);
        // Quiet intervals: the batch comes back, the peak stays.
        clock.0.fetch_add(4000, Ordering::Relaxed);
        governor.count_step(IntervalBytes::default());
        assert_eq!(governor.batch_limit(8), 8);
        let statistics = governor.statistics();
        assert_eq!(statistics.current_bandwidth, 0);
        assert_eq!(statistics.peak_bandwidth, (token.read + token.written) * 1000);
    }

    #[test]
    fn pressure_counts_survive_a_new_pool() {
        let clock = StepClock(AtomicU64::new(0));
        let mut governor = Governor::new(&clock, SERVER_BANDWIDTH);
        assert_eq!(governor.admit(1_000_000), Ok(()), "no pool, no pressure");
        let thresholds = governor.track_pool(100);
        assert_eq!(thresholds.reject_blocks, 98);
        assert!(governor.admit(97).is_ok());
        let refused = governor.admit(99).unwrap_err();
        assert_eq!(refused.budget_blocks, 100);
        governor.count_exhaustion_preemption();
        governor.track_pool(200);
        governor.track_pool(200);
        let statistics = governor.statistics();
        assert_eq!(statistics.pressure_events, 2, "one rejection and one preemption");
        assert_eq!(statistics.preemptions, 1);
    }
}
