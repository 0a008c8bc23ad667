//! What the server keeps across batches to govern memory: the bandwidth monitor fed with the
//! bytes each forward pass really moves over the time it really took, the bandwidth cap the
//! passes are paced by (a QoS knob: `/set bandwidth_cap MBPS`, `bandwidth_cap_mbps` in
//! `tessera.cfg`), the pressure manager for the current KV pool, and the counts `/stats`
//! shows.
//!
//! The bytes of a forward pass at position `p` come from the model's tensors, per the
//! kernels' access pattern ([`PassTraffic`]): the matmuls read every weight matrix once (a
//! tied classifier reads the embedding table; the embedding lookup reads one row), the norms
//! read their vectors, attention reads the keys and values of positions `0..=p` of every
//! layer and the KV store writes one key and one value row per layer, and every step of the
//! pass reads its input activations and writes its output once.

#![forbid(unsafe_code)]

use super::pressure::{PressureCounts, PressureError, PressureManager, PressureThresholds, Relief};
use crate::{
    hil::Clock,
    model::Weights,
    telemetry::{BandwidthMonitor, BandwidthReport, BandwidthSettings, IntervalBytes, PressureLevel},
};

/// The bandwidth settings the server uses: 10 ms generic-timer intervals (the window, and so
/// the sustained rate, spans 320 ms), and no cap until one is set.
pub const SERVER_BANDWIDTH: BandwidthSettings =
    BandwidthSettings { interval_us: 10_000, cap_bytes_per_second: None };

/// Bytes per second in one MB/s, the unit of the cap.
pub const MEGABYTE: u64 = 1_000_000;

/// The bytes one forward pass of a model moves, from the model's tensors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassTraffic {
    /// Weight bytes every pass reads: each matrix once, the norm vectors, one embedding row.
    weights: u64,
    /// Bytes of one position's key and value rows, in every layer.
    kv_position: u64,
    /// Activation bytes a pass reads and writes whatever its position.
    activations: IntervalBytes,
    /// Attention-score bytes per position attended, written twice (scores, softmax) and read
    /// twice (softmax, the weighted sum of values), in every layer.
    scores_per_position: u64,
}

impl PassTraffic {
    /// The traffic of a pass of the model with `weights`.
    pub fn of(weights: &Weights<'_>) -> Self {
        let config = &weights.config;
        let matrices: usize = weights
            .layers
            .iter()
            .map(|layer| {
                let matrices =
                    [layer.query, layer.key, layer.value, layer.output, layer.gate, layer.down, layer.up];
                let norms = layer.attention_norm.data.len() + layer.ffn_norm.data.len();
                matrices.iter().map(|matrix| matrix.data.len()).sum::<usize>() + norms
            })
            .sum();
        let weights_bytes = matrices
            + weights.classifier.data.len()
            + weights.final_norm.data.len()
            + weights.token_embedding.row_bytes();
        let layers = config.layers as u64;
        let float = 4u64;
        let (dim, kv, hidden) = (config.dim as u64, config.kv_dim() as u64, config.hidden_dim as u64);
        // Per layer: the two norms, the q/k/v projections, RoPE on q and k, attention's query
        // and output, the output projection, two residual adds, gate and up, SwiGLU, down.
        let read_per_layer = 14 * dim + kv + 3 * hidden;
        let written_per_layer = 9 * dim + 3 * kv + 3 * hidden;
        // Outside the layers: the embedding row into the residual, the final norm, the
        // classifier's input and its logits.
        let read_outside = 2 * dim;
        let written_outside = 2 * dim + config.vocab_size as u64;
        Self {
            weights: weights_bytes as u64,
            kv_position: layers * 2 * kv * float,
            activations: IntervalBytes {
                read: float * (layers * read_per_layer + read_outside),
                written: float * (layers * written_per_layer + written_outside),
            },
            scores_per_position: layers * config.heads as u64 * float,
        }
    }

    /// Bytes the pass of one row at `position` reads and writes.
    pub fn at(&self, position: usize) -> IntervalBytes {
        self.rows(core::iter::once(position))
    }

    /// Bytes a pass of rows at `positions` (of one sequence or several) reads and writes: the
    /// weights once, and for each row its K/V, activations and attention scores.
    pub fn rows(&self, positions: impl IntoIterator<Item = usize>) -> IntervalBytes {
        positions.into_iter().fold(IntervalBytes { read: self.weights, written: 0 }, |total, position| {
            let attended = position as u64 + 1;
            let scores = 2 * attended * self.scores_per_position;
            IntervalBytes {
                read: total.read + attended * self.kv_position + self.activations.read + scores,
                written: total.written + self.kv_position + self.activations.written + scores,
            }
        })
    }
}

/// Memory facts for `/stats`, read-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStatistics {
    /// Bandwidth: now, sustained, peak, the cap and the waits for it.
    pub bandwidth: BandwidthReport,
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

    /// Counts the bytes of one forward pass that ran from board-clock tick `start` to `end`.
    pub fn count_pass(&self, traffic: IntervalBytes, start: u64, end: u64) {
        self.bandwidth.record_pass(traffic, start, end);
    }

    /// Whether the next pass, which will move `traffic`, must wait for the bandwidth cap: the
    /// caller serves the console and asks again until it may run.
    pub fn must_wait(&self, traffic: IntervalBytes) -> bool {
        self.bandwidth.pace(traffic)
    }

    /// Sets the bandwidth cap in MB/s (`None` or 0 removes it).
    pub fn set_cap_megabytes(&self, megabytes_per_second: Option<u64>) {
        self.bandwidth.set_cap(megabytes_per_second.map(|megabytes| megabytes.saturating_mul(MEGABYTE)));
    }

    /// Counts one preemption on KV exhaustion.
    pub fn count_exhaustion_preemption(&mut self) {
        self.exhaustion_preemptions += 1;
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
        let mut counts = self.earlier;
        if let Some(manager) = &self.pressure {
            for (total, count) in counts.actions.iter_mut().zip(manager.counts().actions) {
                *total += count;
            }
        }
        MemoryStatistics {
            bandwidth: self.bandwidth.report(),
            pressure_events: counts.total() + self.exhaustion_preemptions,
            preemptions: counts.of(PressureLevel::Preempt) + self.exhaustion_preemptions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        infer::synthetic::{SyntheticFormat, SyntheticSpec},
        model::{ModelFile, TensorType},
    };
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
    fn traffic_comes_from_the_tensors_not_the_file_size() {
        let spec = SyntheticSpec::tiny(64, 3);
        let bytes = spec.generate(SyntheticFormat::Gguf(TensorType::Q8_0)).unwrap().model;
        let file = ModelFile::parse(&bytes).unwrap();
        let weights = &file.weights;
        let config = weights.config;
        let traffic = PassTraffic::of(weights);
        // Q8_0: 34 bytes per 32 values. Per layer q, o (dim²), k, v (kv·dim), gate, up, down
        // (hidden·dim); the tied classifier is the embedding table (vocab·dim), plus one row.
        let (dim, kv, hidden, vocab) = (config.dim, config.kv_dim(), config.hidden_dim, config.vocab_size);
        let q8 = |values: usize| values / 32 * 34;
        let matrices = config.layers * q8(2 * dim * dim + 2 * kv * dim + 3 * hidden * dim);
        let norms = (2 * config.layers + 1) * dim * 4;
        let expected_weights = (matrices + q8(vocab * dim) + q8(dim) + norms) as u64;
        assert!(expected_weights < bytes.len() as u64, "the file also holds metadata and the tokenizer");
        let zero = traffic.at(0);
        let kv_row_pair = (config.layers * 2 * kv * 4) as u64;
        // Scores of one position, every head and layer: written twice and read twice.
        let scores = (2 * config.layers * config.heads * 4) as u64;
        assert_eq!(zero.read - kv_row_pair - scores - traffic.activations.read, expected_weights);
        assert_eq!(zero.written, kv_row_pair + traffic.activations.written + scores);
        // Each further position reads one more key and value row per layer, and more scores.
        let later = traffic.at(10);
        assert_eq!(later.read - zero.read, 10 * (kv_row_pair + scores));
        assert_eq!(later.written - zero.written, 10 * scores);
        assert!(traffic.activations.read > 0 && traffic.activations.written > 0);
    }

    #[test]
    fn the_cap_is_set_in_megabytes_and_paces_passes() {
        let clock = StepClock(AtomicU64::new(0));
        let governor =
            Governor::new(&clock, BandwidthSettings { interval_us: 1000, cap_bytes_per_second: None });
        let pass = IntervalBytes { read: 2_000, written: 0 };
        governor.count_pass(pass, 0, 10);
        assert!(!governor.must_wait(pass), "no cap");
        governor.set_cap_megabytes(Some(1));
        governor.count_pass(pass, 10, 20);
        clock.0.store(20, Ordering::Relaxed);
        assert!(governor.must_wait(pass), "2000 bytes at 1 MB/s take 2 ms");
        clock.0.store(2_010, Ordering::Relaxed);
        assert!(!governor.must_wait(pass));
        let statistics = governor.statistics();
        assert_eq!(statistics.bandwidth.cap, Some(1_000_000));
        assert_eq!((statistics.bandwidth.pauses, statistics.bandwidth.paused_ns), (1, 1_990_000));
        assert_eq!(statistics.bandwidth.total.read, 4_000);
        governor.set_cap_megabytes(Some(0));
        assert_eq!(governor.statistics().bandwidth.cap, None, "0 removes the cap");
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
