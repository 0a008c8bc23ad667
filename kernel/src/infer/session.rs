//! One sequence being generated: the forward-pass state, its KV cache, its position and
//! history, and the prompt-then-sample loop.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::forward::{InferError, State, forward};
use super::kernels::Precision;
use super::sampler::Sampler;
use crate::hil::{Cpus, KvStore};
use crate::model::Weights;

/// A sequence over `weights` whose keys and values live in `kv`.
pub struct Session<'w, 'a, K: KvStore> {
    weights: &'w Weights<'a>,
    state: State,
    kv: K,
    history: Vec<u32>,
}

impl<'w, 'a, K: KvStore> Session<'w, 'a, K> {
    /// A new, empty sequence at the default precision.
    pub fn new(weights: &'w Weights<'a>, kv: K) -> Self {
        Self::with_precision(weights, kv, Precision::default())
    }

    /// A new, empty sequence computing at `precision`.
    pub fn with_precision(weights: &'w Weights<'a>, kv: K, precision: Precision) -> Self {
        let positions = kv.capacity().min(weights.config.context_length);
        Self {
            weights,
            state: State::for_positions(weights, precision, positions),
            kv,
            history: Vec::with_capacity(positions),
        }
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

    /// Feeds `token` at the next position and returns the logits that follow it.
    pub fn feed(&mut self, cpus: &dyn Cpus, token: u32) -> Result<&mut [f32], InferError> {
        let position = self.history.len();
        forward(self.weights, &mut self.state, &mut self.kv, cpus, token, position)?;
        self.history.push(token);
        Ok(self.state.logits_mut())
    }

    /// Feeds `prompt`, then samples up to `max_new` tokens, calling `on_token` with each one.
    /// Stops early after a token for which `stop` is true (that token is reported too) or when
    /// the context is full. Returns the number of tokens generated.
    pub fn generate(
        &mut self,
        cpus: &dyn Cpus,
        prompt: &[u32],
        sampler: &mut Sampler,
        max_new: usize,
        stop: impl Fn(u32) -> bool,
        mut on_token: impl FnMut(u32),
    ) -> Result<usize, InferError> {
        for &token in prompt {
            self.feed(cpus, token)?;
        }
        let capacity = self.kv.capacity().min(self.weights.config.context_length);
        let mut generated = 0;
        while generated < max_new && !self.history.is_empty() {
            let next = sampler.sample(self.state.logits_mut(), &self.history);
            generated += 1;
            on_token(next);
            if stop(next) || self.history.len() >= capacity {
                break;
            }
            self.feed(cpus, next)?;
        }
        Ok(generated)
    }
}
