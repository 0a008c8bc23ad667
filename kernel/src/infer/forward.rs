//! The llama forward pass: one token in, the logits of the next token out.
//!
//! Orchestration only; the arithmetic lives in [`super::kernels`] and [`super::matmul`].
//! Buffers are allocated once in [`State`], so a token allocates nothing.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::kernels::{Precision, QuantizedVector, Rope, rmsnorm, softmax, swiglu};
use super::matmul::{matvec, matvec_prepared};
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
    /// A pass was given more rows than its scratch holds.
    TooManyRows {
        /// Rows asked for.
        rows: usize,
        /// Rows the scratch holds.
        capacity: usize,
    },
}

impl fmt::Display for InferError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InferError::TokenOutOfRange { token, vocab_size } => {
                write!(formatter, "token {token} is outside the vocabulary of {vocab_size}")
            }
            InferError::Kv(error) => write!(formatter, "KV cache: {error}"),
            InferError::TooManyRows { rows, capacity } => {
                write!(formatter, "a pass of {rows} rows, but its scratch holds {capacity}")
            }
        }
    }
}

impl From<KvError> for InferError {
    fn from(error: KvError) -> Self {
        InferError::Kv(error)
    }
}

/// Scratch buffers of a forward pass over up to `rows` token rows at once, and the sampler's
/// candidates.
///
/// Nothing in it outlives a pass (the logits live until the next token is sampled), so the
/// sequences of a batch share one: the server builds it from the activations pool when a
/// batch starts and returns it when the batch ends. Each buffer holds one row per token of the
/// pass, one after another.
#[derive(Clone, Debug)]
pub struct State {
    /// Rows a pass may hold.
    rows: usize,
    /// Residual stream (`rows × dim`).
    residual: Vec<f32>,
    /// Normalised input of the current sub-layer (`rows × dim`).
    normed: Vec<f32>,
    /// Queries (`rows × dim`).
    query: Vec<f32>,
    /// Keys of the rows' positions (`rows × kv_dim`).
    key: Vec<f32>,
    /// Values of the rows' positions (`rows × kv_dim`).
    value: Vec<f32>,
    /// Attention outputs, all heads (`rows × dim`).
    attention: Vec<f32>,
    /// Outputs of a projection back to `dim` (`rows × dim`).
    projected: Vec<f32>,
    /// Attention scores over positions (`context_length`), one row at a time.
    scores: Vec<f32>,
    /// SwiGLU gates (`rows × hidden_dim`).
    gate: Vec<f32>,
    /// SwiGLU up projections (`rows × hidden_dim`).
    up: Vec<f32>,
    /// Each row's activations quantized for the quantized matrices, once per phase.
    quantized: Vec<QuantizedVector>,
    /// RoPE angles of the current row's position.
    rope: Rope,
    /// Output logits (`vocab_size`), of one sequence at a time.
    logits: Vec<f32>,
    /// The sampler's candidates (`vocab_size`).
    candidates: Vec<(u32, f32)>,
    /// How activations meet quantized weights.
    precision: Precision,
}

impl State {
    /// Buffers for one row of a model of `weights`' shape, at the default precision
    /// ([`Precision::Int16`]).
    pub fn new(weights: &Weights<'_>) -> Self {
        Self::with_precision(weights, Precision::default())
    }

    /// Buffers for one row of a model of `weights`' shape, computing at `precision`.
    pub fn with_precision(weights: &Weights<'_>, precision: Precision) -> Self {
        Self::for_positions(weights, precision, weights.config.context_length)
    }

    /// Buffers for one row at most `positions` positions in (the KV capacity; capped at the
    /// context length), so a model claiming a huge context costs nothing until it is used.
    pub fn for_positions(weights: &Weights<'_>, precision: Precision, positions: usize) -> Self {
        Self::for_batch(&weights.config, precision, positions, 1)
    }

    /// Buffers for passes of up to `rows` token rows (a prompt chunk, the decode rows of a
    /// round) at most `positions` positions in.
    pub fn for_batch(config: &Config, precision: Precision, positions: usize, rows: usize) -> Self {
        let rows = rows.max(1);
        Self {
            rows,
            residual: vec![0.0; rows * config.dim],
            normed: vec![0.0; rows * config.dim],
            query: vec![0.0; rows * config.dim],
            key: vec![0.0; rows * config.kv_dim()],
            value: vec![0.0; rows * config.kv_dim()],
            attention: vec![0.0; rows * config.dim],
            projected: vec![0.0; rows * config.dim],
            scores: vec![0.0; positions.min(config.context_length)],
            gate: vec![0.0; rows * config.hidden_dim],
            up: vec![0.0; rows * config.hidden_dim],
            quantized: (0..rows)
                .map(|_| QuantizedVector::with_capacity(config.dim.max(config.hidden_dim)))
                .collect(),
            rope: Rope::new(config.head_dim(), config.rope_base),
            logits: vec![0.0; config.vocab_size],
            candidates: Vec::with_capacity(config.vocab_size),
            precision,
        }
    }

    /// Bytes of scratch [`State::for_batch`] takes for a model of `config`'s shape at
    /// `positions` positions and `rows` rows (the figures of its buffers, not counting
    /// allocator rounding).
    pub fn bytes_for(config: &Config, positions: usize, rows: usize) -> u64 {
        let per_row = 5 * config.dim + 2 * config.kv_dim() + 2 * config.hidden_dim;
        let floats =
            rows * per_row + positions.min(config.context_length) + config.vocab_size + config.head_dim();
        let quantized = config.dim.max(config.hidden_dim).div_ceil(32) * (32 * 3 + 4 * 3 + 32);
        (floats * 4 + config.vocab_size * 8 + rows * quantized) as u64
    }

    /// Rows a pass may hold.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Samples the next token from the last pass's logits with `sampler`, given the tokens so
    /// far (the logits are changed in place).
    pub fn sample(&mut self, sampler: &mut Sampler, history: &[u32]) -> u32 {
        sampler.sample(&mut self.logits, history, &mut self.candidates)
    }

    /// The logits of the last forward pass (of its last sequence that wanted them).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The logits of the last forward pass, mutable (the sampler edits them in place).
    pub fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.logits
    }
}

/// One sequence's part in a batched forward pass: `tokens` at positions `start..`, its keys
/// and values in `kv`.
pub struct PassSequence<'t, 'k> {
    /// The sequence's KV store.
    pub kv: &'k mut dyn KvStore,
    /// The tokens to feed (one when decoding, a chunk of its prompt when prefilling).
    pub tokens: &'t [u32],
    /// The position of the first of them.
    pub start: usize,
    /// Whether the logits after its last token are wanted (a prompt chunk that does not end
    /// the prompt needs none: the classifier is skipped for it).
    pub logits: bool,
}

/// Why a batched pass failed, and for which sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassError {
    /// The index, among the pass's sequences, of the one that failed.
    pub sequence: usize,
    /// What went wrong.
    pub error: InferError,
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
    let tokens = [token];
    let mut sequences = [PassSequence { kv, tokens: &tokens, start: position, logits: true }];
    forward_batch(weights, state, &mut sequences, cpus, |_, _, _| {}).map_err(|failure| failure.error)?;
    Ok(&mut state.logits)
}

/// Runs every sequence's tokens through the model in one pass over the weights: each weight
/// matrix meets all the pass's rows at once (each row's activations quantized once per
/// phase), each row attends to its own sequence's positions up to its own (so a prompt chunk
/// is causal within itself), and the classifier runs only for the last row of each sequence
/// that wants logits, handing them to `on_logits(sequence, logits, candidates)` before the
/// next sequence's overwrite them.
///
/// On failure (a token outside the vocabulary, a position past a store's capacity, a store
/// out of memory) no sequence has advanced: the rows written to its store are written again
/// by the next pass at the same positions.
pub fn forward_batch(
    weights: &Weights<'_>,
    state: &mut State,
    sequences: &mut [PassSequence<'_, '_>],
    cpus: &dyn Cpus,
    mut on_logits: impl FnMut(usize, &mut [f32], &mut Vec<(u32, f32)>),
) -> Result<(), PassError> {
    let rows = check_pass(weights, state, sequences)?;
    let config = &weights.config;
    let (dim, kv_dim, hidden) = (config.dim, config.kv_dim(), config.hidden_dim);
    let s = state;
    for (row, &token) in sequences.iter().flat_map(|sequence| sequence.tokens).enumerate() {
        weights.token_embedding.dequantize_row(token as usize, &mut s.residual[row * dim..(row + 1) * dim]);
    }
    for (layer_index, layer) in weights.layers.iter().enumerate() {
        // Attention: project, rotate, remember K/V, attend over every position so far.
        normalize_rows(&mut s.normed, &s.residual, layer.attention_norm, config.norm_epsilon, rows, dim);
        let input = &s.normed[..rows * dim];
        project(cpus, &layer.query, input, dim, s.precision, &mut s.quantized, &mut s.query);
        project_again(cpus, &layer.key, input, dim, s.precision, &s.quantized, &mut s.key);
        project_again(cpus, &layer.value, input, dim, s.precision, &s.quantized, &mut s.value);
        rotate_rows(&mut s.rope, sequences, &mut s.query, &mut s.key, dim, kv_dim);
        write_keys_and_values(sequences, layer_index, &s.key, &s.value, kv_dim)?;
        attend_rows(sequences, layer_index, config, &s.query, &mut s.scores, &mut s.attention);
        project(
            cpus,
            &layer.output,
            &s.attention[..rows * dim],
            dim,
            s.precision,
            &mut s.quantized,
            &mut s.projected,
        );
        add(&mut s.residual[..rows * dim], &s.projected[..rows * dim]);

        // Feed-forward: SwiGLU.
        normalize_rows(&mut s.normed, &s.residual, layer.ffn_norm, config.norm_epsilon, rows, dim);
        let input = &s.normed[..rows * dim];
        project(cpus, &layer.gate, input, dim, s.precision, &mut s.quantized, &mut s.gate);
        project_again(cpus, &layer.up, input, dim, s.precision, &s.quantized, &mut s.up);
        swiglu(&mut s.gate[..rows * hidden], &s.up[..rows * hidden]);
        project(
            cpus,
            &layer.down,
            &s.gate[..rows * hidden],
            hidden,
            s.precision,
            &mut s.quantized,
            &mut s.projected,
        );
        add(&mut s.residual[..rows * dim], &s.projected[..rows * dim]);
    }
    // The classifier, for the last row of each sequence that wants logits.
    let mut last = 0;
    for (index, sequence) in sequences.iter().enumerate() {
        last += sequence.tokens.len();
        if !sequence.logits {
            continue;
        }
        let row = last - 1;
        rmsnorm(
            &mut s.normed[..dim],
            &s.residual[row * dim..(row + 1) * dim],
            weights.final_norm,
            config.norm_epsilon,
        );
        matvec(cpus, &weights.classifier, &s.normed[..dim], s.precision, &mut s.quantized[0], &mut s.logits);
        on_logits(index, &mut s.logits, &mut s.candidates);
    }
    Ok(())
}

/// Checks a pass before it runs; returns its rows.
fn check_pass(
    weights: &Weights<'_>,
    state: &State,
    sequences: &[PassSequence<'_, '_>],
) -> Result<usize, PassError> {
    let config = &weights.config;
    let mut rows = 0;
    for (index, sequence) in sequences.iter().enumerate() {
        let fail = |error: InferError| PassError { sequence: index, error };
        if let Some(&token) = sequence.tokens.iter().find(|&&token| token as usize >= config.vocab_size) {
            return Err(fail(InferError::TokenOutOfRange { token, vocab_size: config.vocab_size }));
        }
        let capacity = config.context_length.min(sequence.kv.capacity()).min(state.scores.len());
        let end = sequence.start + sequence.tokens.len();
        if end > capacity || sequence.tokens.is_empty() {
            let position = end.saturating_sub(1).max(capacity);
            return Err(fail(
                KvError::PositionOutOfRange { position, capacity: sequence.kv.capacity() }.into(),
            ));
        }
        rows += sequence.tokens.len();
    }
    if rows > state.rows {
        return Err(PassError {
            sequence: sequences.len().saturating_sub(1),
            error: InferError::TooManyRows { rows, capacity: state.rows },
        });
    }
    Ok(rows)
}

/// RMS-normalises each of `rows` rows of `dim` values of `x` into `out`.
fn normalize_rows(
    out: &mut [f32],
    x: &[f32],
    weight: crate::model::Vector<'_>,
    epsilon: f32,
    rows: usize,
    dim: usize,
) {
    for (out, x) in out[..rows * dim].chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        rmsnorm(out, x, weight, epsilon);
    }
}

/// `out` row i = `matrix · input` row i, for every row of `input` (`width` values each); each
/// row's activations are quantized once, into `quantized`, for this and the projections of
/// the same input that follow ([`project_again`]).
fn project(
    cpus: &dyn Cpus,
    matrix: &crate::model::Matrix<'_>,
    input: &[f32],
    width: usize,
    precision: Precision,
    quantized: &mut [QuantizedVector],
    out: &mut [f32],
) {
    for ((x, scratch), out) in
        input.chunks_exact(width).zip(quantized.iter_mut()).zip(out.chunks_exact_mut(matrix.rows))
    {
        matvec(cpus, matrix, x, precision, scratch, out);
    }
}

/// Like [`project`], reusing the activations [`project`] quantized for the same input.
fn project_again(
    cpus: &dyn Cpus,
    matrix: &crate::model::Matrix<'_>,
    input: &[f32],
    width: usize,
    precision: Precision,
    quantized: &[QuantizedVector],
    out: &mut [f32],
) {
    for ((x, scratch), out) in input.chunks_exact(width).zip(quantized).zip(out.chunks_exact_mut(matrix.rows))
    {
        matvec_prepared(cpus, matrix, x, precision, scratch, out);
    }
}

/// Rotates each row's query and key by RoPE at the row's position.
fn rotate_rows(
    rope: &mut Rope,
    sequences: &[PassSequence<'_, '_>],
    query: &mut [f32],
    key: &mut [f32],
    dim: usize,
    kv_dim: usize,
) {
    let positions =
        sequences.iter().flat_map(|sequence| sequence.start..sequence.start + sequence.tokens.len());
    for ((position, query), key) in
        positions.zip(query.chunks_exact_mut(dim)).zip(key.chunks_exact_mut(kv_dim))
    {
        rope.set_position(position);
        rope.rotate(query);
        rope.rotate(key);
    }
}

/// Stores every row's key and value at its position in its sequence's store.
fn write_keys_and_values(
    sequences: &mut [PassSequence<'_, '_>],
    layer: usize,
    keys: &[f32],
    values: &[f32],
    kv_dim: usize,
) -> Result<(), PassError> {
    let mut rows = keys.chunks_exact(kv_dim).zip(values.chunks_exact(kv_dim));
    for (index, sequence) in sequences.iter_mut().enumerate() {
        for (position, (key, value)) in (sequence.start..).zip((&mut rows).take(sequence.tokens.len())) {
            sequence
                .kv
                .write(layer, position, key, value)
                .map_err(|error| PassError { sequence: index, error: error.into() })?;
        }
    }
    Ok(())
}

/// Each row attends over its own sequence's positions up to its own.
fn attend_rows(
    sequences: &[PassSequence<'_, '_>],
    layer: usize,
    config: &Config,
    query: &[f32],
    scores: &mut [f32],
    attention: &mut [f32],
) {
    let dim = config.dim;
    let mut rows = query.chunks_exact(dim).zip(attention.chunks_exact_mut(dim));
    for sequence in sequences {
        for (position, (query, out)) in (sequence.start..).zip((&mut rows).take(sequence.tokens.len())) {
            let group = config.heads / config.kv_heads;
            attend(query, &*sequence.kv, layer, position, config.head_dim(), group, scores, out);
        }
    }
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
        for (past, score) in scores.iter_mut().enumerate() {
            let key = &kv.key(layer, past)[kv_range.clone()];
            *score = query.iter().zip(key).map(|(q, k)| q * k).sum::<f32>() * scale;
        }
        softmax(scores);
        out.fill(0.0);
        for (past, weight) in scores.iter().enumerate() {
            let value = &kv.value(layer, past)[kv_range.clone()];
            out.iter_mut().zip(value).for_each(|(out, value)| *out += weight * value);
        }
    }
}

fn add(residual: &mut [f32], delta: &[f32]) {
    residual.iter_mut().zip(delta).for_each(|(residual, delta)| *residual += delta);
}
