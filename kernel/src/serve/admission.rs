//! Admission by memory: the bounded queue of requests waiting for a place in the batch, and
//! the KV reservations that admit one only when its whole need fits.
//!
//! A request's KV need is its prompt plus `max_tokens`, capped by its quota (the batch's
//! per-sequence capacity), in blocks for every layer. The batch reserves that need for each
//! sequence it admits, so a running sequence never finds the cache full because of a newer
//! one; a request that does not fit waits, in arrival order, until earlier ones finish. When
//! the queue itself is full a new request is refused with an error that says so.

#![forbid(unsafe_code)]

use super::{chat::GenerationSettings, protocol::ChatMessage, reply::Origin, stops::StopFilter};
use alloc::{boxed::Box, collections::VecDeque, string::String, vec::Vec};
use core::fmt;

/// Requests that may wait for a place in the batch; more are refused.
pub const MAX_WAITING: usize = 128;

/// Most sequences a batch runs at once.
pub const MAX_RUNNING: usize = 64;

/// Most requests in flight: waiting and running.
pub const MAX_IN_FLIGHT: usize = MAX_WAITING + MAX_RUNNING;

/// A generation waiting for a place in the batch.
pub struct Pending {
    /// Who asked.
    pub origin: Origin,
    /// The message (empty when the request gave a conversation).
    pub prompt: String,
    /// A machine-mode request's conversation and stop strings, when it gave any.
    pub details: Option<Box<Details>>,
    /// Its settings.
    pub settings: GenerationSettings,
    /// When it arrived, in ns of the board's clock.
    pub arrived_ns: u64,
    /// Its tokens, once a batch has encoded them (kept while it waits for memory).
    pub tokens: Option<Vec<u32>>,
}

/// What a machine-mode request may add to its prompt.
#[derive(Debug, Default)]
pub struct Details {
    /// The conversation, when the request gave one instead of a prompt.
    pub messages: Vec<ChatMessage>,
    /// Its stop strings.
    pub stop: StopFilter,
}

impl Pending {
    /// The conversation, when the request gave one (else empty: the prompt is the message).
    pub fn messages(&self) -> &[ChatMessage] {
        self.details.as_ref().map_or(&[], |details| &details.messages)
    }

    /// Passes the next `piece` of the answer through the request's stop strings into `out`;
    /// true when the answer now contains one (see [`StopFilter::push`]).
    pub fn filter_text(&mut self, piece: &str, out: &mut String) -> bool {
        match &mut self.details {
            Some(details) => details.stop.push(piece, out),
            None => {
                out.push_str(piece);
                false
            }
        }
    }

    /// The answer ended without a stop string: the text held back goes to `out`.
    pub fn flush_text(&mut self, out: &mut String) {
        if let Some(details) = &mut self.details {
            details.stop.finish(out);
        }
    }
}

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull {
    /// Requests waiting.
    pub waiting: usize,
}

impl fmt::Display for QueueFull {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "too many requests: {} are already waiting for memory in the batch; try again when one finishes",
            self.waiting
        )
    }
}

/// The requests waiting, oldest first, at most [`MAX_WAITING`].
pub struct RequestQueue {
    waiting: VecDeque<Pending>,
}

impl Default for RequestQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestQueue {
    /// An empty queue, with room for [`MAX_WAITING`] allocated now (at boot), so queueing never
    /// allocates.
    pub fn new() -> Self {
        Self { waiting: VecDeque::with_capacity(MAX_WAITING) }
    }

    /// Queues `pending` last, or hands it back when the queue is full.
    pub fn push(&mut self, pending: Pending) -> Result<(), (Pending, QueueFull)> {
        if self.waiting.len() >= MAX_WAITING {
            let waiting = self.waiting.len();
            return Err((pending, QueueFull { waiting }));
        }
        self.waiting.push_back(pending);
        Ok(())
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The request at `index` (0 is the oldest).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Pending> {
        self.waiting.get_mut(index)
    }

    /// The request at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&Pending> {
        self.waiting.get(index)
    }

    /// Takes the request at `index` out of the queue.
    pub fn remove(&mut self, index: usize) -> Option<Pending> {
        self.waiting.remove(index)
    }

    /// Takes the oldest request.
    pub fn pop_front(&mut self) -> Option<Pending> {
        self.waiting.pop_front()
    }

    /// Takes the request from `origin`, if one waits.
    pub fn take(&mut self, origin: Origin) -> Option<Pending> {
        let index = self.waiting.iter().position(|pending| pending.origin == origin)?;
        self.waiting.remove(index)
    }
}

/// KV blocks a request reserves: `prompt_tokens + max_tokens` positions, at most `capacity`
/// (its quota), in blocks of `block_tokens`, for each of `layers` layers.
pub fn kv_blocks_needed(
    prompt_tokens: usize,
    max_tokens: usize,
    capacity: usize,
    block_tokens: usize,
    layers: usize,
) -> usize {
    let positions = prompt_tokens.saturating_add(max_tokens).min(capacity);
    positions.div_ceil(block_tokens.max(1)).saturating_mul(layers)
}

/// The KV blocks reserved by the sequences of a batch, out of a cache of `limit` blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvReservations {
    limit: usize,
    reserved: usize,
}

impl KvReservations {
    /// Nothing reserved yet, in a cache of `limit` blocks.
    pub fn new(limit: usize) -> Self {
        Self { limit, reserved: 0 }
    }

    /// Reserves `blocks` if they fit beside what is reserved; returns whether they did.
    pub fn reserve(&mut self, blocks: usize) -> bool {
        let fits = self.reserved.checked_add(blocks).is_some_and(|total| total <= self.limit);
        if fits {
            self.reserved += blocks;
        }
        fits
    }

    /// Changes the blocks in the cache (the KV cache's budget follows the arena). Lowering it
    /// below what is reserved takes nothing back; new reservations wait until it fits.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Gives back `blocks` reserved earlier.
    pub fn release(&mut self, blocks: usize) {
        self.reserved = self.reserved.saturating_sub(blocks);
    }

    /// Blocks reserved now.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Blocks in the cache.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pending(id: u64) -> Pending {
        Pending {
            origin: Origin::Machine(id),
            prompt: String::from("hi"),
            details: None,
            settings: GenerationSettings::default(),
            arrived_ns: id,
            tokens: None,
        }
    }

    #[test]
    fn the_queue_is_bounded_and_keeps_order() {
        let mut queue = RequestQueue::new();
        for id in 0..MAX_WAITING as u64 {
            assert!(queue.push(pending(id)).is_ok());
        }
        let (refused, full) = queue.push(pending(999)).err().unwrap();
        assert_eq!(refused.origin, Origin::Machine(999), "the refused request comes back");
        assert_eq!(full.waiting, MAX_WAITING);
        assert!(alloc::format!("{full}").starts_with("too many requests: 128 are already waiting"));
        assert_eq!(queue.take(Origin::Machine(5)).map(|pending| pending.arrived_ns), Some(5));
        assert!(queue.take(Origin::Machine(5)).is_none());
        assert_eq!(queue.pop_front().map(|pending| pending.origin), Some(Origin::Machine(0)));
        assert_eq!(queue.len(), MAX_WAITING - 2);
    }

    #[test]
    fn needs_are_capped_by_the_quota() {
        assert_eq!(kv_blocks_needed(37, 128, 1024, 16, 30), 11 * 30, "165 positions: 11 blocks a layer");
        assert_eq!(kv_blocks_needed(900, 4096, 1024, 16, 30), 64 * 30, "capped at the quota");
        assert_eq!(kv_blocks_needed(1, 0, 1024, 16, 2), 2);
    }

    proptest! {
        /// Whatever the order of reservations and releases, what is reserved never passes the
        /// limit and always equals the sum of the reservations held.
        #[test]
        fn reservations_never_pass_the_limit(
            limit in 0usize..500,
            operations in proptest::collection::vec((any::<bool>(), 0usize..200), 0..60),
        ) {
            let mut reservations = KvReservations::new(limit);
            let mut held: Vec<usize> = Vec::new();
            for (reserve, blocks) in operations {
                if reserve || held.is_empty() {
                    let fits = held.iter().sum::<usize>() + blocks <= limit;
                    prop_assert_eq!(reservations.reserve(blocks), fits);
                    if fits {
                        held.push(blocks);
                    }
                } else {
                    let blocks = held.swap_remove(blocks % held.len());
                    reservations.release(blocks);
                }
                prop_assert_eq!(reservations.reserved(), held.iter().sum::<usize>());
                prop_assert!(reservations.reserved() <= reservations.limit());
            }
        }
    }
}
