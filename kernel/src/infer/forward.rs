//! The llama forward pass: one token in, the logits of the next token out.
//!
//! Orchestration only; the arithmetic lives in [`super::kernels`] and [`super::matmul`].
//! Buffers are allocated once in [`State`], so a token allocates nothing.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::kernels::{Precision, QuantizedVector, Rope, rmsnorm, softmax};
use super::matmul::{accumulate_values, attention_scores, matvec, swiglu};
use super::sampler::Sampler;
use crate::hil::{Cpus, KvError, KvStore};
use crate::model::{Config, Weights};

/// Why a forward pass could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferError {
    /// The token id is not in the vocabulary.
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The KV store refused the row (context full, out of memory, ...).
    Kv(KvError),
}

impl fmt::Display for InferError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InferError::TokenOutOfRange { token, vocab_size } => {
                write!(formatter, "token {token} is outside the vocabulary of {vocab_size}")
            }
            InferError::Kv(error) => write!(formatter, "KV cache: {error}"),
        }
    }
}

impl From<KvError> for InferError {
    fn from(error: KvError) -> Self {
        InferError::Kv(error)
    }
}

/// Scratch buffers of a forward pass, and the sampler's candidates.
///
/// Nothing in it outlives a pass (the logits live until the next token is sampled), so the
/// sequences of a batch share one: the server builds it from the activations pool when a
/// batch starts and returns it when the batch ends.
#[derive(Clone, Debug)]
pub struct State {
    /// Residual stream (`dim`).
    residual: Vec<f32>,
    /// Normalised input of the current sub-layer (`dim`).
    normed: Vec<f32>,
    /// Query (`dim`).
    query: Vec<f32>,
    /// Key of this position (`kv_dim`).
    key: Vec<f32>,
    /// Value of this position (`kv_dim`).
    value: Vec<f32>,
    /// Attention output, all heads (`dim`).
    attention: Vec<f32>,
    /// Output of a projection back to `dim`.
    projected: Vec<f32>,
    /// Attention scores over positions (`context_length`).
    scores: Vec<f32>,
    /// SwiGLU gate (`hidden_dim`).
    gate: Vec<f32>,
    /// SwiGLU up projection (`hidden_dim`).
    up: Vec<f32>,
    /// Activations quantized for the quantized matrices.
    quantized: QuantizedVector,
    /// RoPE angles of the current position.
    rope: Rope,
    /// Output logits (`vocab_size`).
    logits: Vec<f32>,
    /// The sampler's candidates (`vocab_size`).
    candidates: Vec<(u32, f32)>,
    /// How activations meet quantized weights.
    precision: Precision,
}

impl State {
    /// Buffers for a model of `weights`' shape, at the default precision ([`Precision::Int16`]).
    pub fn new(weights: &Weights<'_>) -> Self {
        Self::with_precision(weights, Precision::default())
    }

    /// Buffers for a model of `weights`' shape, computing at `precision`.
    pub fn with_precision(weights: &Weights<'_>, precision: Precision) -> Self {
        Self::for_positions(weights, precision, weights.config.context_length)
    }

    /// Buffers for at most `positions` positions (the KV capacity; capped at the context
    /// length), so a model claiming a huge context costs nothing until it is used.
    pub fn for_positions(weights: &Weights<'_>, precision: Precision, positions: usize) -> Self {
        let config = &weights.config;
        Self {
            residual: vec![0.0; config.dim],
            normed: vec![0.0; config.dim],
            query: vec![0.0; config.dim],
            key: vec![0.0; config.kv_dim()],
            value: vec![0.0; config.kv_dim()],
            attention: vec![0.0; config.dim],
            projected: vec![0.0; config.dim],
            scores: vec![0.0; positions.min(config.context_length)],
            gate: vec![0.0; config.hidden_dim],
            up: vec![0.0; config.hidden_dim],
            quantized: QuantizedVector::with_capacity(config.dim.max(config.hidden_dim)),
            rope: Rope::new(config.head_dim(), config.rope_base),
            logits: vec![0.0; config.vocab_size],
            candidates: Vec::with_capacity(config.vocab_size),
            precision,
        }
    }

    /// Bytes of scratch [`State::for_positions`] takes for a model of `config`'s shape at
    /// `positions` positions (the figures of its buffers, not counting allocator rounding).
    pub fn bytes_for(config: &Config, positions: usize) -> u64 {
        let floats = 4 * config.dim
            + 2 * config.kv_dim()
            + 2 * config.dim
            + positions.min(config.context_length)
            + 2 * config.hidden_dim
            + config.vocab_size
            + config.head_dim();
        let quantized = config.dim.max(config.hidden_dim).div_ceil(32) * (32 * 3 + 4 * 3 + 32);
        (floats * 4 + config.vocab_size * 8 + quantized) as u64
    }

    /// Samples the next token from the last pass's logits with `sampler`, given the tokens so
    /// far (the logits are changed in place).
    pub fn sample(&mut self, sampler: &mut Sampler, history: &[u32]) -> u32 {
        sampler.sample(&mut self.logits, history, &mut self.candidates)
    }

    /// The logits of the last forward pass.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The logits of the last forward pass, mutable (the sampler edits them in place).
    pub fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.logits
    }
}

/// Runs `token` at `position` through the model, appending its keys and values to `kv`, and
/// returns the logits of the next token. Matmuls are split across `cpus`.
pub fn forward<'s>(
    weights: &Weights<'_>,
    state: &'s mut State,
    kv: &mut dyn KvStore,
    cpus: &dyn Cpus,
    token: u32,
    position: usize,
) -> Result<&'s mut [f32], InferError> {
    let config = &weights.config;
    let vocab_size = config.vocab_size;
    if token as usize >= vocab_size {
        return Err(InferError::TokenOutOfRange { token, vocab_size });
    }
    if position >= config.context_length.min(kv.capacity()).min(state.scores.len()) {
        return Err(KvError::PositionOutOfRange { position, capacity: kv.capacity() }.into());
    }
    let s = state;
    weights.token_embedding.dequantize_row(token as usize, &mut s.residual);
    s.rope.set_position(position);

    for (layer_index, layer) in weights.layers.iter().enumerate() {
        // Attention: project, rotate, remember K/V, attend over every position so far.
        rmsnorm(&mut s.normed, &s.residual, layer.attention_norm, config.norm_epsilon);
        matvec(cpus, &layer.query, &s.normed, s.precision, &mut s.quantized, &mut s.query);
        matvec(cpus, &layer.key, &s.normed, s.precision, &mut s.quantized, &mut s.key);
        matvec(cpus, &layer.value, &s.normed, s.precision, &mut s.quantized, &mut s.value);
        s.rope.rotate(&mut s.query);
        s.rope.rotate(&mut s.key);
        kv.write(layer_index, position, &s.key, &s.value)?;
        attend(
            &s.query,
            &*kv,
            layer_index,
            position,
            config.head_dim(),
            config.heads / config.kv_heads,
            &mut s.scores,
            &mut s.attention,
        );
        matvec(cpus, &layer.output, &s.attention, s.precision, &mut s.quantized, &mut s.projected);
        add(&mut s.residual, &s.projected);

        // Feed-forward: SwiGLU.
        rmsnorm(&mut s.normed, &s.residual, layer.ffn_norm, config.norm_epsilon);
        matvec(cpus, &layer.gate, &s.normed, s.precision, &mut s.quantized, &mut s.gate);
        matvec(cpus, &layer.up, &s.normed, s.precision, &mut s.quantized, &mut s.up);
        swiglu(&mut s.gate, &s.up);
        matvec(cpus, &layer.down, &s.gate, s.precision, &mut s.quantized, &mut s.projected);
        add(&mut s.residual, &s.projected);
    }

    rmsnorm(&mut s.normed, &s.residual, weights.final_norm, config.norm_epsilon);
    matvec(cpus, &weights.classifier, &s.normed, s.precision, &mut s.quantized, &mut s.logits);
    Ok(&mut s.logits)
}

/// Grouped-query attention of every query head over positions `0..=position` of `layer`.
/// Query head h reads KV head h / `group`.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per input of llama2.c's attention loop; a struct would hide what it reads"
)]
fn attend(
    query: &[f32],
    kv: &dyn KvStore,
    layer: usize,
    position: usize,
    head_dim: usize,
    group: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let scale = 1.0 / libm::sqrtf(head_dim as f32);
    let scores = &mut scores[..=position];
    for (head, (query, out)) in query.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)).enumerate() {
        let kv_range = (head / group) * head_dim..(head / group + 1) * head_dim;
        attention_scores(query, |past| &kv.key(layer, past)[kv_range.clone()], scale, scores);
        softmax(scores);
        accumulate_values(scores, |past| &kv.value(layer, past)[kv_range.clone()], out);
    }
}

fn add(residual: &mut [f32], delta: &[f32]) {
    residual.iter_mut().zip(delta).for_each(|(residual, delta)| *residual += delta);
}
