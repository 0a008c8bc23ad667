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
//! - when it is alone but weights memory could be freed for it (the server says so while a
//!   model is staged in the background), it preempts itself, waits, and asks for that memory
//!   ([`Preemptor::take_weights_wanted`]: the server then drops the staged model);
//! - when it is alone and still does not fit, it ends with [`ChatError::DoesNotFit`], the only
//!   way a request ends without its tokens.
//!
//! A preempted sequence keeps its tokens and the token it sampled next. It resumes, in
//! priority order, once the blocks it needs are free or held by sequences ranked below it:
//! cached blocks of its own prefix are attached again, the rest of its K/V is recomputed from
//! its prompt and the tokens it already produced (steps that produce no text), and it goes on
//! where it stopped. The forward pass is deterministic, so its tokens are the same as without
//! the preemption.
//!
//! Before preempting, the memory-pressure manager compresses waiting sequences' K/V to int8
//! ([`Preemptor::compress_waiting`]): the sequences the batch limit keeps out of the round,
//! then, while the KV cache stays over the manager's threshold, the lowest-ranked running
//! ones, never the highest-ranked. A sequence compressed that way waits (its blocks packed four
//! into one) until decompressing it keeps the blocks held under the threshold, or until no
//! sequence ranks above it; its next step then decompresses it (values within half an int8
//! step, so its later tokens may differ slightly) and it goes on.

#![forbid(unsafe_code)]

use super::{
    chat::{ChatError, Finish, Step},
    generation::Generation,
    pressure::{Relief, WeightsEvictor},
};
use crate::{
    hil::{Cpus, KvError, KvStore},
    infer::{InferError, State, forward::forward_batch},
    mm::kv::{KvBlockPool, PagedKv},
};
use alloc::vec::Vec;

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

/// What a sequence that ran out of KV memory does next.
enum Exhaustion {
    /// Another sequence was preempted: try again.
    Retry,
    /// It preempted itself and waits.
    Waits,
    /// It ends: it does not fit even alone.
    Refused(ChatError),
}

/// Runs one pass over the sequences given rows (by slot); on failure, the slot of the
/// sequence that failed and why.
fn run_pass<'w, 'f: 'w, 'p, 'm: 'p, S: Scheduled<'w, 'f, 'p, 'm>>(
    sequences: &mut [S],
    rows: &[usize],
    cpus: &dyn Cpus,
    state: &mut State,
) -> Result<(), (usize, ChatError)> {
    let slots: Vec<usize> = (0..rows.len()).filter(|&slot| rows[slot] > 0).collect();
    let Some(&first) = slots.first() else { return Ok(()) };
    let weights = sequences[first].generation().weights();
    let (mut passes, mut samplings): (Vec<_>, Vec<_>) = sequences
        .iter_mut()
        .zip(rows)
        .filter(|&(_, &count)| count > 0)
        .map(|(sequence, &count)| {
            let part = sequence.generation_mut().pass_part(count);
            (part.sequence, part.sampling)
        })
        .unzip();
    forward_batch(weights, state, &mut passes, cpus, |index, logits, candidates| {
        samplings[index].take(logits, candidates);
    })
    .map_err(|failure| (slots[failure.sequence], ChatError::Inference(failure.error)))
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
    /// Blocks held under which a sequence compressed under memory pressure may decompress
    /// (unless no sequence ranks above it).
    decompress_limit: usize,
    /// Whether weights memory could be freed (a model staged in the background): then a
    /// sequence that does not fit even alone waits for it instead of ending.
    spare_weights: bool,
    /// Whether a sequence waits for that memory since the last [`Preemptor::take_weights_wanted`].
    weights_wanted: bool,
}

/// A sequence's rank: its priority, then its slot (lower runs first).
type Rank = (u64, usize);

fn rank_of<'w, 'f: 'w, 'p, 'm: 'p, S: Scheduled<'w, 'f, 'p, 'm>>(sequences: &[S], slot: usize) -> Rank {
    (sequences[slot].priority(), slot)
}

/// The rank of the first sequence in line: the highest-ranked one not preempted.
fn first_in_line<'w, 'f: 'w, 'p, 'm: 'p, S: Scheduled<'w, 'f, 'p, 'm>>(sequences: &[S]) -> Option<Rank> {
    (0..sequences.len())
        .filter(|&slot| !sequences[slot].generation().is_preempted())
        .map(|slot| rank_of(sequences, slot))
        .min()
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
            decompress_limit: resume_limit,
            spare_weights: false,
            weights_wanted: false,
        }
    }

    /// Says whether weights memory could be freed for the KV cache (the weights rung: a model
    /// staged in the background would be dropped). While it could, a sequence that runs out of
    /// KV memory alone is preempted to wait for it rather than ended.
    pub fn set_spare_weights(&mut self, spare: bool) {
        self.spare_weights = spare;
    }

    /// Whether a sequence waits for weights memory to be freed (and clears the wish).
    pub fn take_weights_wanted(&mut self) -> bool {
        core::mem::take(&mut self.weights_wanted)
    }

    /// Runs at most `limit` sequences per round (at least one): the highest-ranked of those
    /// not preempted; the others wait, inactive (a hook for scheduling policies: the server runs
    /// every sequence each round and paces passes by bandwidth instead).
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

    /// Whether `sequences[slot]` is inactive: not preempted, but ranked past the batch limit
    /// (counting only the sequences ahead of it that may run: neither preempted nor waiting
    /// compressed).
    pub fn is_inactive<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &self,
        sequences: &[S],
        slot: usize,
    ) -> bool {
        if sequences[slot].generation().is_preempted() {
            return false;
        }
        let first = first_in_line(sequences);
        let key = rank_of(sequences, slot);
        let ahead = (0..sequences.len())
            .filter(|&index| {
                !sequences[index].generation().is_preempted()
                    && rank_of(sequences, index) < key
                    && !self.waits_compressed(sequences, index, first)
            })
            .count();
        ahead >= self.batch_limit
    }

    /// Whether `sequences[slot]` waits compressed: its K/V is in int8, decompressing it now
    /// would bring the blocks held to the limit it was compressed for, and it is not the first
    /// in line (`first`), which always runs.
    fn waits_compressed<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &self,
        sequences: &[S],
        slot: usize,
        first: Option<Rank>,
    ) -> bool {
        let generation = sequences[slot].generation();
        if !generation.kv().is_compressed()
            || generation.is_preempted()
            || first == Some(rank_of(sequences, slot))
        {
            return false;
        }
        let kv = generation.kv();
        let extra = kv.blocks_for(generation.positions_needed()).saturating_sub(kv.blocks_held());
        let available = self.pool.available_blocks();
        let held = self.pool.limit_blocks().saturating_sub(available);
        available < extra || held + extra >= self.decompress_limit
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
        let first = first_in_line(sequences);
        if self.is_inactive(sequences, slot) || self.waits_compressed(sequences, slot, first) {
            return Ok(SlotStep::Waiting);
        }
        if sequences[slot].generation().is_preempted() && !self.resume(sequences, slot, first) {
            return Ok(SlotStep::Waiting);
        }
        loop {
            match sequences[slot].generation_mut().step(cpus, state) {
                Err(ChatError::Inference(InferError::Kv(KvError::OutOfMemory))) => {}
                other => return other.map(SlotStep::Ran),
            }
            match self.resolve_exhaustion(sequences, slot) {
                Exhaustion::Retry => {}
                Exhaustion::Waits => return Ok(SlotStep::Waiting),
                Exhaustion::Refused(error) => return Err(error),
            }
        }
    }

    /// What a sequence that ran out of KV memory does: preempt the lowest-ranked sequence
    /// below it that holds blocks and try again; else, while others hold blocks or weights
    /// memory could be freed for it, preempt itself and wait; else end, since it does not fit
    /// even alone (its blocks go back at once).
    fn resolve_exhaustion<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
        slot: usize,
    ) -> Exhaustion {
        if let Some(victim) = self.victim(sequences, slot) {
            self.preempt(&mut sequences[victim]);
            return Exhaustion::Retry;
        }
        let others_hold = sequences
            .iter()
            .enumerate()
            .any(|(index, sequence)| index != slot && sequence.generation().kv().blocks_held() > 0);
        if others_hold || self.spare_weights {
            self.weights_wanted |= !others_hold;
            self.preempt(&mut sequences[slot]);
            return Exhaustion::Waits;
        }
        self.statistics.refused += 1;
        let generation = sequences[slot].generation_mut();
        let positions = generation.positions_needed() - 1;
        generation.kv_mut().truncate(0);
        Exhaustion::Refused(ChatError::DoesNotFit {
            positions,
            cache_positions: self.cache_positions(generation),
        })
    }

    /// Runs one round: every sequence that may run this round feeds its rows into one forward
    /// pass over the weights (decoding sequences one row each, first; then the prompts and
    /// the K/V recomputed after a preemption, at most `chunk` rows each, while the scratch
    /// has rows), and takes its logits. Returns each sequence's outcome, by slot: its step,
    /// or that it waits (not in this round: inactive, preempted, out of rows, or preempted by
    /// this round). On KV exhaustion it preempts as the module describes and runs the pass
    /// again without the sequences that left it.
    pub fn round<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
        cpus: &dyn Cpus,
        state: &mut State,
        chunk: usize,
    ) -> Vec<Result<SlotStep, ChatError>> {
        let mut outcomes: Vec<Option<Result<SlotStep, ChatError>>> = sequences.iter().map(|_| None).collect();
        let mut rows = self.plan_round(sequences, state.rows(), chunk.max(1), &mut outcomes);
        while rows.iter().any(|&rows| rows > 0) {
            match run_pass(sequences, &rows, cpus, state) {
                Ok(()) => {
                    for (slot, &count) in rows.iter().enumerate().filter(|&(_, &count)| count > 0) {
                        let step = sequences[slot].generation_mut().commit(count);
                        outcomes[slot] = Some(Ok(SlotStep::Ran(step)));
                    }
                    break;
                }
                Err((slot, ChatError::Inference(InferError::Kv(KvError::OutOfMemory)))) => {
                    match self.resolve_exhaustion(sequences, slot) {
                        Exhaustion::Retry => {}
                        Exhaustion::Waits => rows[slot] = 0,
                        Exhaustion::Refused(error) => {
                            rows[slot] = 0;
                            outcomes[slot] = Some(Err(error));
                        }
                    }
                    // Whoever was preempted to make room is out of this pass.
                    for (slot, count) in rows.iter_mut().enumerate() {
                        if sequences[slot].generation().is_preempted() {
                            *count = 0;
                        }
                    }
                }
                Err((slot, error)) => {
                    rows[slot] = 0;
                    outcomes[slot] = Some(Err(error));
                }
            }
        }
        outcomes.into_iter().map(|outcome| outcome.unwrap_or(Ok(SlotStep::Waiting))).collect()
    }

    /// Who runs this round and with how many rows (by slot; 0 for those that wait), resuming
    /// the preempted sequences that may go on; a cancelled sequence's outcome is its end,
    /// with no pass.
    fn plan_round<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
        capacity: usize,
        chunk: usize,
        outcomes: &mut [Option<Result<SlotStep, ChatError>>],
    ) -> Vec<usize> {
        let first = first_in_line(sequences);
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&slot| rank_of(sequences, slot));
        let mut runs = alloc::vec![false; sequences.len()];
        for &slot in &order {
            if self.is_inactive(sequences, slot) || self.waits_compressed(sequences, slot, first) {
                continue;
            }
            if sequences[slot].generation().is_cancelled() {
                outcomes[slot] =
                    Some(Ok(SlotStep::Ran(sequences[slot].generation_mut().finish(Finish::Cancelled))));
                continue;
            }
            if sequences[slot].generation().is_preempted() && !self.resume(sequences, slot, first) {
                continue;
            }
            runs[slot] = true;
        }
        // Decoding rows first, one each; then chunks of prompts and recomputations.
        let mut rows = alloc::vec![0; sequences.len()];
        let mut left = capacity;
        for decoding in [true, false] {
            for &slot in order.iter().filter(|&&slot| runs[slot]) {
                let wanted = sequences[slot].generation().rows_wanted(chunk);
                if (wanted == 1) == decoding && rows[slot] == 0 {
                    rows[slot] = wanted.min(left);
                    left -= rows[slot];
                }
            }
        }
        rows
    }

    /// Resumes preempted `sequences[slot]` if it may go on: the round has room and its blocks
    /// are free or held by sequences ranked below it. Returns whether it resumed.
    fn resume<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
        slot: usize,
        first: Option<Rank>,
    ) -> bool {
        let running = (0..sequences.len())
            .filter(|&index| {
                !sequences[index].generation().is_preempted()
                    && !self.waits_compressed(sequences, index, first)
            })
            .count();
        if running >= self.batch_limit || !self.may_resume(sequences, slot) {
            return false;
        }
        let model = self.model;
        let mut reattached = 0;
        sequences[slot].generation_mut().reattach(|kv, tokens| {
            reattached = kv.with_prefix(model, tokens);
            reattached
        });
        self.statistics.resumptions += 1;
        self.statistics.reattached_positions += reattached as u64;
        true
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

    /// Compresses the KV of waiting sequences to int8 (the pressure manager's second action)
    /// and returns the blocks freed: every sequence the batch limit keeps out of the round,
    /// then, lowest-ranked first, running ones (never the first in line) while the blocks held
    /// and cached stay at or over `target_blocks`. Those wait compressed until decompressing
    /// them keeps the blocks held under `target_blocks` (see the module).
    pub fn compress_waiting<'w, 'f: 'w, S: Scheduled<'w, 'f, 'pool, 'memory>>(
        &mut self,
        sequences: &mut [S],
        target_blocks: usize,
    ) -> usize {
        self.decompress_limit = target_blocks;
        let inactive: alloc::vec::Vec<usize> =
            (0..sequences.len()).filter(|&slot| self.is_inactive(sequences, slot)).collect();
        // A failure leaves the sequence as it was (uncompressed).
        let compress = |sequence: &mut S| sequence.generation_mut().kv_mut().compress().unwrap_or(0);
        let mut freed: usize = inactive.iter().map(|&slot| compress(&mut sequences[slot])).sum();
        let first = first_in_line(sequences);
        let mut running: alloc::vec::Vec<usize> = (0..sequences.len())
            .filter(|&slot| {
                let generation = sequences[slot].generation();
                !generation.is_preempted()
                    && !generation.kv().is_compressed()
                    && first != Some(rank_of(sequences, slot))
            })
            .collect();
        running.sort_by_key(|&slot| core::cmp::Reverse(rank_of(sequences, slot)));
        for slot in running {
            let statistics = self.pool.statistics();
            if statistics.blocks_in_use + statistics.blocks_cached < target_blocks {
                break;
            }
            freed += compress(&mut sequences[slot]);
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

    fn compress_waiting(&mut self, target_blocks: usize) -> usize {
        self.preemptor.compress_waiting(self.sequences, target_blocks)
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
