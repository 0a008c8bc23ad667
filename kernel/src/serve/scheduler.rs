//! Preemption by recompute: what the batch does when a sequence needs a KV block and the pool
//! has none left.
//!
//! Sequences are ranked by a priority key (lower runs first; the server uses arrival order,
//! as vLLM does). When a step runs out of KV memory:
//! - the lowest-ranked other sequence that holds blocks and ranks below the failing one is
//!   preempted: its full blocks are published in the prefix cache (so they stay reusable while
//!   nothing needs the memory), every block is released, and it waits; the step is tried again;
//! - when no sequence ranks below it but others hold blocks, the failing sequence preempts
//!   itself and waits for them;
//! - when it is alone and still does not fit, it ends with [`ChatError::DoesNotFit`], the only
//!   way a request ends without its tokens.
//!
//! A preempted sequence keeps its tokens and the token it sampled next. It resumes, in
//! priority order, once the blocks it needs are free or held by sequences ranked below it:
//! cached blocks of its own prefix are attached again, the rest of its K/V is recomputed from
//! its prompt and the tokens it already produced (steps that produce no text), and it goes on
//! where it stopped. The forward pass is deterministic, so its tokens are the same as without
//! the preemption.

#![forbid(unsafe_code)]

use super::{
    chat::{ChatError, Generation, Step},
    pressure::{Relief, WeightsEvictor},
};
use crate::{
    hil::{Cpus, KvError, KvStore},
    infer::{InferError, State},
    mm::kv::{KvBlockPool, PagedKv},
};

/// A sequence of the batch as the scheduler sees it.
pub trait Scheduled<'weights, 'file, 'pool, 'memory> {
    /// The generation.
    fn generation(&self) -> &Generation<'weights, 'file, PagedKv<'pool, 'memory>>;
    /// The generation, to step or preempt.
    fn generation_mut(&mut self) -> &mut Generation<'weights, 'file, PagedKv<'pool, 'memory>>;
    /// Its rank: lower runs first and is preempted last (ties go by position in the batch).
    fn priority(&self) -> u64;
}

/// What one [`Preemptor::step`] did with a sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotStep {
    /// The sequence ran one step.
    Ran(Step),
    /// The sequence is preempted and waits for memory (or was preempted by this step).
    Waiting,
}

/// Counts of preemption.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreemptionStatistics {
    /// Sequences preempted.
    pub preemptions: u64,
    /// Preempted sequences resumed.
    pub resumptions: u64,
    /// Positions whose K/V a resumed sequence found in the prefix cache.
    pub reattached_positions: u64,
    /// Requests ended because they do not fit the KV cache even alone.
    pub refused: u64,
}

/// Runs steps of a batch's sequences over one KV pool, preempting on KV exhaustion.
pub struct Preemptor<'pool, 'memory> {
    pool: &'pool KvBlockPool<'memory>,
    model: u64,
    statistics: PreemptionStatistics,
    /// Most sequences that run per round; the rest are inactive (they wait, and may be
    /// compressed).
    batch_limit: usize,
    /// Most blocks held after a preempted sequence resumes (unless nothing else holds any).
    resume_limit: usize,
}

impl<'pool, 'memory> Preemptor<'pool, 'memory> {
    /// A preemptor over `pool`, for sequences of the model whose prefix-cache identity is
    /// `model` (as given to [`PagedKv::with_prefix`]).
    pub fn new(pool: &'pool KvBlockPool<'memory>, model: u64) -> Self {
        let resume_limit = pool.limit_blocks();
        Self {
            pool,
            model,
            statistics: PreemptionStatistics::default(),
            batch_limit: usize::MAX,
            resume_limit,
        }
    }

    /// Runs at most `limit` sequences per round (at least one): the highest-ranked of those
    /// not preempted; the others wait, inactive (the bandwidth throttle's hook).
    pub fn set_batch_limit(&mut self, limit: usize) {
        self.batch_limit = limit.max(1);
    }

    /// Most sequences run per round.
    pub fn batch_limit(&self) -> usize {
        self.batch_limit
    }

    /// Resumes a preempted sequence only while the blocks held would stay at or under
    /// `blocks` (the pressure manager's preemption threshold), so it is not preempted again at
    /// once.
    pub fn set_resume_limit(&mut self, blocks: usize) {
        self.resume_limit = blocks;
    }

    /// Whether `sequences[slot]` is inactive: not preempted, but ranked past the batch limit.
    pub fn is_inactive<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &self,
        sequences: &[S],
        slot: usize,
    ) -> bool {
        let sequence = &sequences[slot];
        if sequence.generation().is_preempted() {
            return false;
        }
        let key = (sequence.priority(), slot);
        let ahead = sequences
            .iter()
            .enumerate()
            .filter(|&(index, other)| !other.generation().is_preempted() && (other.priority(), index) < key)
            .count();
        ahead >= self.batch_limit
    }

    /// Counts so far.
    pub fn statistics(&self) -> PreemptionStatistics {
        self.statistics
    }

    /// Whether any sequence waits, preempted (new requests should wait behind it).
    pub fn any_waiting<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(&self, sequences: &[S]) -> bool {
        sequences.iter().any(|sequence| sequence.generation().is_preempted())
    }

    /// Runs one step of `sequences[slot]` through the batch's scratch `state`: resumes it
    /// first if it is preempted and may go on (else reports it waiting), and on KV exhaustion
    /// preempts as the module describes.
    pub fn step<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
        slot: usize,
        cpus: &dyn Cpus,
        state: &mut State,
    ) -> Result<SlotStep, ChatError> {
        if self.is_inactive(sequences, slot) {
            return Ok(SlotStep::Waiting);
        }
        if sequences[slot].generation().is_preempted() {
            let running = sequences.iter().filter(|sequence| !sequence.generation().is_preempted()).count();
            if running >= self.batch_limit || !self.may_resume(sequences, slot) {
                return Ok(SlotStep::Waiting);
            }
            let model = self.model;
            let mut reattached = 0;
            sequences[slot].generation_mut().reattach(|kv, tokens| {
                reattached = kv.with_prefix(model, tokens);
                reattached
            });
            self.statistics.resumptions += 1;
            self.statistics.reattached_positions += reattached as u64;
        }
        loop {
            match sequences[slot].generation_mut().step(cpus, state) {
                Err(ChatError::Inference(InferError::Kv(KvError::OutOfMemory))) => {}
                other => return other.map(SlotStep::Ran),
            }
            if let Some(victim) = self.victim(sequences, slot) {
                self.preempt(&mut sequences[victim]);
                continue;
            }
            let others_hold = sequences
                .iter()
                .enumerate()
                .any(|(index, sequence)| index != slot && sequence.generation().kv().blocks_held() > 0);
            if others_hold {
                self.preempt(&mut sequences[slot]);
                return Ok(SlotStep::Waiting);
            }
            self.statistics.refused += 1;
            let generation = sequences[slot].generation_mut();
            let positions = generation.positions_needed() - 1;
            // It ends here: its blocks go back at once.
            generation.kv_mut().truncate(0);
            return Err(ChatError::DoesNotFit {
                positions,
                cache_positions: self.cache_positions(generation),
            });
        }
    }

    /// Positions the whole pool holds for sequences shaped like `generation`'s.
    fn cache_positions(&self, generation: &Generation<'_, '_, PagedKv<'pool, 'memory>>) -> usize {
        let kv = generation.kv();
        self.pool.limit_blocks() / kv.layers() * kv.block_tokens()
    }

    /// Releases a sequence's blocks, keeping its full blocks in the prefix cache.
    fn preempt<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(&mut self, sequence: &mut S) {
        let model = self.model;
        sequence.generation_mut().preempt(|kv, tokens| {
            kv.publish(model, tokens);
        });
        self.statistics.preemptions += 1;
    }

    /// The running sequence to preempt for `slot`: the lowest-ranked one that holds blocks
    /// and ranks below it.
    fn victim<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &self,
        sequences: &[S],
        slot: usize,
    ) -> Option<usize> {
        let rank = (sequences[slot].priority(), slot);
        sequences
            .iter()
            .enumerate()
            .filter(|&(index, sequence)| {
                (sequence.priority(), index) > rank && sequence.generation().kv().blocks_held() > 0
            })
            .max_by_key(|&(index, sequence)| (sequence.priority(), index))
            .map(|(index, _)| index)
    }

    /// Whether preempted `sequences[slot]` may resume: no preempted sequence ranks above it,
    /// and the blocks it needs are available or held by sequences ranked below it (which it
    /// may preempt), or nothing else holds blocks (it then tries alone).
    fn may_resume<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &self,
        sequences: &[S],
        slot: usize,
    ) -> bool {
        let rank = (sequences[slot].priority(), slot);
        let first_in_line = sequences.iter().enumerate().all(|(index, sequence)| {
            index == slot || !sequence.generation().is_preempted() || (sequence.priority(), index) > rank
        });
        if !first_in_line {
            return false;
        }
        let mut below = 0;
        let mut others = 0;
        for (index, sequence) in sequences.iter().enumerate() {
            let held = sequence.generation().kv().blocks_held();
            if index != slot {
                others += held;
                if (sequence.priority(), index) > rank {
                    below += held;
                }
            }
        }
        let generation = sequences[slot].generation();
        let needed = generation.kv().blocks_for(generation.positions_needed());
        let held = self.pool.limit_blocks().saturating_sub(self.pool.available_blocks());
        others == 0
            || (self.pool.available_blocks() + below >= needed && held + needed <= self.resume_limit + below)
    }

    /// Preempts the lowest-ranked sequence that holds blocks, unless it is the only one;
    /// returns whether it did (the pressure manager's third action).
    pub fn preempt_lowest<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
    ) -> bool {
        let holding: alloc::vec::Vec<usize> = (0..sequences.len())
            .filter(|&index| sequences[index].generation().kv().blocks_held() > 0)
            .collect();
        if holding.len() < 2 {
            return false;
        }
        let Some(&victim) = holding.iter().max_by_key(|&&index| (sequences[index].priority(), index)) else {
            return false;
        };
        self.preempt(&mut sequences[victim]);
        true
    }

    /// Compresses the KV of inactive sequences to int8; returns the blocks freed.
    pub fn compress_inactive<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
    ) -> usize {
        let mut freed = 0;
        for slot in 0..sequences.len() {
            if self.is_inactive(sequences, slot) {
                // A failure leaves the sequence as it was (uncompressed).
                freed += sequences[slot].generation_mut().kv_mut().compress().unwrap_or(0);
            }
        }
        freed
    }
}

/// The batch as the pressure manager acts on it: its pool, its sequences, and the weights
/// hook if the server has one.
pub struct BatchRelief<'batch, 'pool, 'memory, S> {
    /// The batch's preemptor (and pool).
    pub preemptor: &'batch mut Preemptor<'pool, 'memory>,
    /// The batch's sequences.
    pub sequences: &'batch mut [S],
    /// Evicts unused model weights.
    pub weights: Option<&'batch mut dyn WeightsEvictor>,
}

impl<'w, 'f: 'w, 'pool, 'memory, S: Scheduled<'w, 'f, 'pool, 'memory>> Relief
    for BatchRelief<'_, 'pool, 'memory, S>
{
    fn held_blocks(&self) -> usize {
        self.preemptor.pool.statistics().blocks_in_use
    }

    fn cached_blocks(&self) -> usize {
        self.preemptor.pool.statistics().blocks_cached
    }

    fn drop_cached_prefixes(&mut self) -> usize {
        self.preemptor.pool.drop_cached()
    }

    fn compress_inactive(&mut self) -> usize {
        self.preemptor.compress_inactive(self.sequences)
    }

    fn preempt_one(&mut self) -> bool {
        self.preemptor.preempt_lowest(self.sequences)
    }

    fn evict_unused_weights(&mut self) -> u64 {
        self.weights.as_mut().map_or(0, |weights| weights.evict_unused())
    }
}

#[cfg(test)]
mod tests;
