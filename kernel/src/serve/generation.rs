//! One sequence being answered, a forward pass at a time: the rows it feeds into a batch's
//! next pass, and what it does with the logits the pass gives it.
//!
//! A generation knows every token of its sequence: the prompt, then each token it generated,
//! the last one sampled but perhaps not yet fed. Its KV store holds the first `fed` of them.
//! Each pass it feeds the next tokens it has (a chunk of its prompt, the K/V it recomputes
//! after a preemption, or its last sampled token), up to the rows the batch gives it; when
//! the rows it fed reach its last known token, the pass's logits follow them, it samples the
//! next token and sends that token's text at once, before any further pass.

#![forbid(unsafe_code)]

use super::chat::{ChatError, Finish, GenerationSettings, ModelView, Step, TurnStatistics};
use crate::{
    hil::{Cpus, KvStore},
    infer::{
        Sampler, SamplerConfig, State, Tokenizer,
        forward::{PassSequence, forward_batch},
        tokenizer::StreamDecoder,
    },
    model::Weights,
};
use alloc::{string::String, vec::Vec};

/// One sequence being answered, advanced one pass at a time, so a scheduler can put several
/// into each pass and answer the console between passes.
pub struct Generation<'weights, 'file, Store: KvStore> {
    weights: &'weights Weights<'file>,
    kv: Store,
    tokenizer: &'weights Tokenizer<&'file [u8]>,
    sampler: Sampler,
    /// Every token known: the prompt, then the generated ones (the last perhaps not fed).
    tokens: Vec<u32>,
    /// Tokens of the prompt (the first of `tokens`).
    prompt_length: usize,
    /// Tokens whose keys and values the store holds.
    fed: usize,
    /// The token sampled from the last pass's logits, until [`Generation::commit`] takes it.
    sampled: Option<u32>,
    max_tokens: usize,
    capacity: usize,
    decoder: StreamDecoder,
    statistics: TurnStatistics,
    cancelled: bool,
    /// Preempted: its K/V released, waiting for [`Generation::reattach`].
    preempted: bool,
}

/// A generation's rows in a pass, with what it samples from their logits.
pub struct PassPart<'g, 'k> {
    /// Its rows.
    pub sequence: PassSequence<'g, 'k>,
    /// Where its logits go.
    pub sampling: Sampling<'g>,
}

/// What a generation samples the pass's logits with.
pub struct Sampling<'g> {
    sampler: &'g mut Sampler,
    history: &'g [u32],
    sampled: &'g mut Option<u32>,
}

impl Sampling<'_> {
    /// Samples the next token from `logits` (changed in place), `candidates` the scratch.
    pub fn take(&mut self, logits: &mut [f32], candidates: &mut Vec<(u32, f32)>) {
        *self.sampled = Some(self.sampler.sample(logits, self.history, candidates));
    }
}

impl<'weights, 'file, Store: KvStore> Generation<'weights, 'file, Store> {
    /// A generation answering `prompt` with `model`, its K/V in `kv`.
    pub fn new(
        model: &'weights ModelView<'file>,
        kv: Store,
        prompt: &str,
        settings: &GenerationSettings,
    ) -> Result<Self, ChatError> {
        Self::with_cached_prefix(model, kv, &model.prompt_tokens(prompt), settings, |_, _| 0)
    }

    /// Like [`Generation::new`] for already tokenized `tokens`; `attach(kv, tokens)` may fill
    /// the K/V of a cached prefix of them and return how many positions it filled, which are
    /// then not computed again.
    pub fn with_cached_prefix(
        model: &'weights ModelView<'file>,
        mut kv: Store,
        tokens: &[u32],
        settings: &GenerationSettings,
        attach: impl FnOnce(&mut Store, &[u32]) -> usize,
    ) -> Result<Self, ChatError> {
        if tokens.is_empty() {
            return Err(ChatError::EmptyPrompt);
        }
        let capacity = kv.capacity().min(model.file.config().context_length);
        if tokens.len() >= capacity {
            return Err(ChatError::PromptTooLong { tokens: tokens.len(), capacity });
        }
        let config = SamplerConfig {
            temperature: settings.temperature,
            top_p: settings.top_p,
            seed: settings.seed,
            ..SamplerConfig::default()
        };
        // Never the whole prompt: the last prompt token is always computed, for its logits.
        let cached = attach(&mut kv, tokens).min(tokens.len() - 1);
        let mut all = Vec::with_capacity(capacity);
        all.extend_from_slice(tokens);
        Ok(Self {
            weights: &model.file.weights,
            kv,
            tokenizer: &model.tokenizer,
            sampler: Sampler::new(config),
            tokens: all,
            prompt_length: tokens.len(),
            fed: cached,
            sampled: None,
            max_tokens: settings.max_tokens,
            capacity,
            decoder: StreamDecoder::new(),
            statistics: TurnStatistics {
                prompt_tokens: tokens.len(),
                cached_tokens: cached,
                ..TurnStatistics::default()
            },
            cancelled: false,
            preempted: false,
        })
    }

    /// Asks the generation to stop at its next step.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// Whether it was cancelled (its next step ends it, without a pass).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Counts so far.
    pub fn statistics(&self) -> TurnStatistics {
        self.statistics
    }

    /// The tokens whose K/V the store holds (to publish its full blocks when it ends).
    pub fn history(&self) -> &[u32] {
        &self.tokens[..self.fed]
    }

    /// The sequence's KV store (to publish its blocks when it ends).
    pub fn kv_mut(&mut self) -> &mut Store {
        &mut self.kv
    }

    /// The sequence's KV store, read-only.
    pub fn kv(&self) -> &Store {
        &self.kv
    }

    /// Releases the sequence's K/V so another sequence can use the memory (preemption by
    /// recompute). `before(kv, tokens)` sees the store and the tokens whose rows it holds
    /// first (to publish full blocks, say). Nothing else is lost: every token stays, and the
    /// next passes recompute the K/V from them before continuing where the sequence stopped,
    /// without producing text.
    pub fn preempt(&mut self, before: impl FnOnce(&mut Store, &[u32])) {
        before(&mut self.kv, &self.tokens[..self.fed]);
        self.kv.truncate(0);
        self.fed = 0;
        self.preempted = true;
    }

    /// Whether it was preempted and has not been given back its store
    /// ([`Generation::reattach`]).
    pub fn is_preempted(&self) -> bool {
        self.preempted
    }

    /// Positions whose K/V the store holds: the position of the next pass.
    pub fn position(&self) -> usize {
        self.fed
    }

    /// Positions the sequence needs in its store to go on: every token it knows.
    pub fn positions_needed(&self) -> usize {
        self.tokens.len()
    }

    /// Resumes a preempted sequence: `attach(kv, tokens)` may fill the K/V of a cached prefix
    /// of its tokens and return how many positions it filled, which are then not recomputed.
    pub fn reattach(&mut self, attach: impl FnOnce(&mut Store, &[u32]) -> usize) {
        if !core::mem::take(&mut self.preempted) {
            return;
        }
        // The store is empty since `preempt`; `attach` fills its first positions. The last
        // known token is always fed again, for the logits that follow it.
        let cached = attach(&mut self.kv, &self.tokens).min(self.tokens.len() - 1);
        self.fed = cached;
    }

    /// Whether it has not produced a token yet (its prompt is still being fed).
    pub fn in_prompt(&self) -> bool {
        self.tokens.len() == self.prompt_length
    }

    /// The positions the sequence can reach (what a [`State`] for it must hold).
    pub fn positions(&self) -> usize {
        self.capacity
    }

    /// Rows it feeds in the next pass, given at most `limit`: its tokens not yet fed (none
    /// when it is cancelled: its step ends it).
    pub fn rows_wanted(&self, limit: usize) -> usize {
        if self.cancelled { 0 } else { (self.tokens.len() - self.fed).min(limit) }
    }

    /// Its part in a pass: its next `rows` tokens and its store, and, when they reach its last
    /// known token, the sampler the pass's logits go to.
    pub fn pass_part(&mut self, rows: usize) -> PassPart<'_, '_> {
        let Self { kv, tokens, fed, sampler, sampled, .. } = self;
        let end = (*fed + rows).min(tokens.len());
        let logits = end == tokens.len();
        PassPart {
            sequence: PassSequence { kv, tokens: &tokens[*fed..end], start: *fed, logits },
            sampling: Sampling { sampler, history: tokens, sampled },
        }
    }

    /// After a pass that fed its next `rows` tokens: they are in its store; a token sampled
    /// from the logits that followed joins the sequence, and its text is returned at once
    /// (or it ends the answer: a stop token, `max_tokens`, or a full store).
    pub fn commit(&mut self, rows: usize) -> Step {
        self.fed = (self.fed + rows).min(self.tokens.len());
        let Some(token) = self.sampled.take() else { return Step::Running(String::new()) };
        self.statistics.generated_tokens += 1;
        if self.tokenizer.is_stop(token) {
            return self.finish(Finish::Stop);
        }
        let previous = self.tokens.last().copied();
        self.tokens.push(token);
        let mut text = String::new();
        self.decoder.push(self.tokenizer.decode(previous, token), &mut text);
        if self.statistics.generated_tokens >= self.max_tokens || self.tokens.len() >= self.capacity {
            self.decoder.finish(&mut text);
            return Step::Finished(Finish::Length, text);
        }
        Step::Running(text)
    }

    /// The end of the answer, with whatever text the decoder still held.
    pub fn finish(&mut self, finish: Finish) -> Step {
        let mut text = String::new();
        self.decoder.finish(&mut text);
        self.statistics.cancelled = finish == Finish::Cancelled;
        Step::Finished(finish, text)
    }

    /// Runs one pass for this sequence alone through `state` (at most `state.rows()` of its
    /// tokens), as a batch of one. A pass that fails (say, KV memory ran out) leaves the
    /// generation as it was, so it can be tried again once memory is free.
    pub fn step(&mut self, cpus: &dyn Cpus, state: &mut State) -> Result<Step, ChatError> {
        if self.cancelled {
            return Ok(self.finish(Finish::Cancelled));
        }
        let rows = self.rows_wanted(state.rows());
        let weights = self.weights;
        let PassPart { sequence, mut sampling } = self.pass_part(rows);
        let mut sequences = [sequence];
        forward_batch(weights, state, &mut sequences, cpus, |_, logits, candidates| {
            sampling.take(logits, candidates);
        })
        .map_err(|failure| ChatError::Inference(failure.error))?;
        Ok(self.commit(rows))
    }

    /// The model's weights (for the pass a scheduler runs over several generations).
    pub fn weights(&self) -> &'weights Weights<'file> {
        self.weights
    }
}
