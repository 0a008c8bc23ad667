//! One sequence being generated: its KV cache, its position and history, and the
//! prompt-then-sample loop. The forward pass's scratch ([`State`]) is the caller's, so the
//! sequences of a batch share one.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::forward::{InferError, PassSequence, State, forward, forward_batch};
use super::sampler::Sampler;
use crate::hil::{Cpus, KvStore};
use crate::model::Weights;

/// A sequence over `weights` whose keys and values live in `kv`.
pub struct Session<'w, 'a, K: KvStore> {
    weights: &'w Weights<'a>,
    kv: K,
    history: Vec<u32>,
}

impl<'w, 'a, K: KvStore> Session<'w, 'a, K> {
    /// A new, empty sequence.
    pub fn new(weights: &'w Weights<'a>, kv: K) -> Self {
        let positions = kv.capacity().min(weights.config.context_length);
        Self { weights, kv, history: Vec::with_capacity(positions) }
    }

    /// The positions the sequence can reach: its store's capacity, at most the context length
    /// (a [`State`] for it needs this many).
    pub fn positions(&self) -> usize {
        self.kv.capacity().min(self.weights.config.context_length)
    }

    /// A sequence whose first `history.len()` positions are already in `kv` (a cached prompt
    /// prefix): feeding continues at the next position, attending to them.
    pub fn resume(weights: &'w Weights<'a>, kv: K, history: Vec<u32>) -> Self {
        let mut session = Self::new(weights, kv);
        session.history = history;
        session
    }

    /// The sequence's KV store.
    pub fn kv_mut(&mut self) -> &mut K {
        &mut self.kv
    }

    /// The sequence's KV store, read-only.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// Forgets every position after the first `length` (of the history and of the KV store),
    /// so feeding continues at `length`.
    pub fn rewind(&mut self, length: usize) {
        self.history.truncate(length);
        self.kv.truncate(length);
    }

    /// Records `token` as fed at the next position without computing it: its K/V rows are
    /// already in the store (a cached prefix attached after [`Session::rewind`]).
    pub fn push_cached(&mut self, token: u32) {
        self.history.push(token);
    }

    /// Tokens fed so far (the next position).
    pub fn position(&self) -> usize {
        self.history.len()
    }

    /// The tokens fed so far.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Feeds `token` at the next position through `state`, whose logits then follow it.
    pub fn feed(&mut self, cpus: &dyn Cpus, state: &mut State, token: u32) -> Result<(), InferError> {
        let position = self.history.len();
        forward(self.weights, state, &mut self.kv, cpus, token, position)?;
        self.history.push(token);
        Ok(())
    }

    /// Feeds `tokens` in passes of as many rows as `state` holds (each chunk attends causally
    /// within itself); the classifier runs only after the last, whose logits `state` then
    /// holds. The same logits, bit for bit, as feeding one token at a time.
    pub fn feed_prompt(
        &mut self,
        cpus: &dyn Cpus,
        state: &mut State,
        tokens: &[u32],
    ) -> Result<(), InferError> {
        let chunk = state.rows().max(1);
        let mut fed = 0;
        for piece in tokens.chunks(chunk) {
            fed += piece.len();
            let start = self.history.len();
            let mut sequences =
                [PassSequence { kv: &mut self.kv, tokens: piece, start, logits: fed == tokens.len() }];
            forward_batch(self.weights, state, &mut sequences, cpus, |_, _, _| {})
                .map_err(|failure| failure.error)?;
            self.history.extend_from_slice(piece);
        }
        Ok(())
    }

    /// Feeds `prompt`, then samples up to `max_new` tokens, calling `on_token` with each one,
    /// with `state` as the forward pass's scratch. Stops early after a token for which `stop`
    /// is true (that token is reported too) or when the context is full. Returns the number of
    /// tokens generated.
    #[expect(clippy::too_many_arguments, reason = "the loop's inputs, each used once")]
    pub fn generate(
        &mut self,
        cpus: &dyn Cpus,
        state: &mut State,
        prompt: &[u32],
        sampler: &mut Sampler,
        max_new: usize,
        stop: impl Fn(u32) -> bool,
        mut on_token: impl FnMut(u32),
    ) -> Result<usize, InferError> {
        self.feed_prompt(cpus, state, prompt)?;
        let capacity = self.positions();
        let mut generated = 0;
        while generated < max_new && !self.history.is_empty() {
            let next = state.sample(sampler, &self.history);
            generated += 1;
            on_token(next);
            if stop(next) || self.history.len() >= capacity {
                break;
            }
            self.feed(cpus, state, next)?;
        }
        Ok(generated)
    }
}
