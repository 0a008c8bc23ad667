//! The memory-pressure manager: when the KV blocks in use and cached pass a threshold of the
//! board's KV budget, it acts, mildest first, and stops as soon as use is back under it:
//! 1. drop cached prefix blocks no sequence holds;
//! 2. compress the KV of waiting sequences to int8: those out of the round's batch, then, while
//!    use stays over the threshold, the lowest-ranked running ones (never the first), which
//!    then wait, compressed, until decompressing them fits under it again;
//! 3. preempt a sequence (it recomputes its K/V later, see [`super::scheduler`]);
//! 4. evict model weights that nothing uses (a staged or an old model), through a
//!    [`WeightsEvictor`] hook the model-loading code provides;
//! 5. reject new requests, with an error the client can read, while the blocks held stay at
//!    the rejection threshold.
//!
//! Every action taken is recorded as a [`PressureLevel`] (the server adds it to the trace ring
//! as a `pressure` event) and counted.
//!
//! The thresholds are fractions of the KV budget: the pool's block limit, which the server
//! derives from the KV-cache region that the board's budget table sized ([`blocks_in_region`]).
//!
//! [`blocks_in_region`]: crate::mm::kv::blocks_in_region

#![forbid(unsafe_code)]

use crate::telemetry::PressureLevel;
use core::fmt;

/// The block counts at which the manager acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PressureThresholds {
    /// Blocks of the budget.
    pub budget_blocks: usize,
    /// Blocks held and cached at or above which cached prefixes are dropped and waiting
    /// sequences compressed.
    pub relieve_blocks: usize,
    /// Blocks held at or above which a sequence is preempted (and a preempted one does not
    /// resume if that would bring the blocks held back to it).
    pub preempt_blocks: usize,
    /// Blocks held at or above which unused weights are evicted and new requests rejected.
    pub reject_blocks: usize,
}

impl PressureThresholds {
    /// Thresholds for a KV budget of `budget_blocks` blocks: relieve at 85%, preempt at 95%,
    /// reject at 98% (each at least one block above the previous while the budget allows).
    pub fn for_budget(budget_blocks: usize) -> Self {
        let share = |percent: usize| budget_blocks * percent / 100;
        let relieve_blocks = share(85).max(1);
        let preempt_blocks = share(95).max(relieve_blocks);
        let reject_blocks = share(98).max(preempt_blocks);
        Self { budget_blocks, relieve_blocks, preempt_blocks, reject_blocks }
    }
}

/// What the manager acts on: the batch and its KV pool (and the weights hook).
pub trait Relief {
    /// KV blocks held by sequences.
    fn held_blocks(&self) -> usize;
    /// KV blocks no sequence holds that the prefix cache keeps.
    fn cached_blocks(&self) -> usize;
    /// Drops the cached prefix blocks; returns how many.
    fn drop_cached_prefixes(&mut self) -> usize;
    /// Compresses the KV of waiting sequences to int8 until the blocks held and cached are
    /// under `target_blocks`: first those out of the round's batch, then the lowest-ranked
    /// running ones (never the highest-ranked), which wait compressed until decompressing them
    /// keeps the blocks held under `target_blocks`. Returns the blocks freed.
    fn compress_waiting(&mut self, target_blocks: usize) -> usize;
    /// Preempts one sequence (never the only one holding blocks); returns whether it did.
    fn preempt_one(&mut self) -> bool;
    /// Evicts model weights nothing uses; returns the bytes freed.
    fn evict_unused_weights(&mut self) -> u64;
}

/// Frees model weights that nothing uses: the hook between the pressure manager and the code
/// that loads and swaps models.
pub trait WeightsEvictor {
    /// Evicts weights that no running sequence uses (a staged load, an old model) and returns
    /// the bytes freed (0 when there is nothing to evict).
    fn evict_unused(&mut self) -> u64;
}

/// Why a new request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PressureError {
    /// KV blocks held when it was refused.
    pub held_blocks: usize,
    /// Blocks of the KV budget.
    pub budget_blocks: usize,
}

impl fmt::Display for PressureError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = self.held_blocks * 100 / self.budget_blocks.max(1);
        write!(
            formatter,
            "memory is full (the KV cache is {percent}% held by running requests); try again when \
             they finish"
        )
    }
}

/// Counts of the manager's actions, by [`PressureLevel::index`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PressureCounts {
    /// Times each action was taken.
    pub actions: [u64; PressureLevel::COUNT],
}

impl PressureCounts {
    /// All actions taken.
    pub fn total(&self) -> u64 {
        self.actions.iter().sum()
    }

    /// Times `level` was taken.
    pub fn of(&self, level: PressureLevel) -> u64 {
        self.actions[level.index()]
    }
}

/// The manager: thresholds and counts.
#[derive(Clone, Debug)]
pub struct PressureManager {
    thresholds: PressureThresholds,
    counts: PressureCounts,
}

impl PressureManager {
    /// A manager acting at `thresholds`.
    pub fn new(thresholds: PressureThresholds) -> Self {
        Self { thresholds, counts: PressureCounts::default() }
    }

    /// The thresholds.
    pub fn thresholds(&self) -> PressureThresholds {
        self.thresholds
    }

    /// Counts so far.
    pub fn counts(&self) -> PressureCounts {
        self.counts
    }

    fn took(&mut self, level: PressureLevel, record: &mut dyn FnMut(PressureLevel)) {
        self.counts.actions[level.index()] += 1;
        record(level);
    }

    /// Acts on `relief` in order until use is under the thresholds (or nothing is left to
    /// do), calling `record` with each action taken. Returns the actions taken.
    pub fn relieve(&mut self, relief: &mut dyn Relief, record: &mut dyn FnMut(PressureLevel)) -> usize {
        let before = self.counts.total();
        let over = |relief: &dyn Relief| relief.held_blocks() + relief.cached_blocks();
        if over(relief) < self.thresholds.relieve_blocks {
            return 0;
        }
        if relief.drop_cached_prefixes() > 0 {
            self.took(PressureLevel::DropCachedPrefixes, record);
        }
        if over(relief) >= self.thresholds.relieve_blocks
            && relief.compress_waiting(self.thresholds.relieve_blocks) > 0
        {
            self.took(PressureLevel::CompressInactive, record);
        }
        if relief.held_blocks() >= self.thresholds.preempt_blocks && relief.preempt_one() {
            self.took(PressureLevel::Preempt, record);
        }
        if relief.held_blocks() >= self.thresholds.reject_blocks && relief.evict_unused_weights() > 0 {
            self.took(PressureLevel::EvictUnusedWeights, record);
        }
        (self.counts.total() - before) as usize
    }

    /// Whether a new request may join, with `held_blocks` KV blocks held: refused (and
    /// recorded) at the rejection threshold.
    pub fn admit(
        &mut self,
        held_blocks: usize,
        record: &mut dyn FnMut(PressureLevel),
    ) -> Result<(), PressureError> {
        if held_blocks < self.thresholds.reject_blocks {
            return Ok(());
        }
        self.took(PressureLevel::RejectRequests, record);
        Err(PressureError { held_blocks, budget_blocks: self.thresholds.budget_blocks })
    }
}
