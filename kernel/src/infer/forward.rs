//! The llama forward pass: one token in, the logits of the next token out.
//!
//! Orchestration only; the arithmetic lives in [`super::kernels`] and [`super::matmul`].
//! Buffers are allocated once in [`State`], so a token allocates nothing.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use core::sync::atomic::AtomicBool;

use spin::{Mutex, RwLock};

use super::kernels::{Precision, Rope};
use super::matmul::rmsnorm;
use super::parallel::{
    self, AttentionInput, LayerJob, LayerOutputs, LeadRows, Lost, Prepared, RowPlace, gather_column,
    normalize_into, product_handout, run_products,
};
use super::sampler::Sampler;
use crate::hil::{Cpus, KvError, KvStore};
use crate::mm::handout::Handout;
use crate::model::{Config, LayerWeights, Weights};

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
    /// Every try of the pass lost a core.
    CoresLost,
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
            InferError::CoresLost => write!(formatter, "the cores running the pass were lost"),
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
/// batch starts and returns it when the batch ends. Row-wise buffers hold one row per token
/// of the pass, one after another; products hold one row per matrix row, one value per token
/// row ([`super::parallel`]).
#[derive(Clone, Debug)]
pub struct State {
    /// Rows a pass may hold.
    rows: usize,
    /// Residual stream (`rows × dim`).
    residual: Vec<f32>,
    /// The rows the current phase's matrices read, prepared once.
    prepared: Prepared,
    /// Queries, keys and values as products (`(dim + 2 kv_dim) × rows`).
    qkv: Vec<f32>,
    /// Rotated queries (`rows × dim`).
    query: Vec<f32>,
    /// Rotated keys of the rows' positions (`kv_dim`), one row at a time.
    key: Vec<f32>,
    /// Values of the rows' positions (`kv_dim`), one row at a time.
    value: Vec<f32>,
    /// Attention outputs, all heads (`rows × dim`).
    attention: Vec<f32>,
    /// The attention output projection (`dim × rows`).
    attention_out: Vec<f32>,
    /// Gate and up projections (`2 hidden_dim × rows`).
    gate_up: Vec<f32>,
    /// The down projection (`dim × rows`).
    ffn_out: Vec<f32>,
    /// One row's up projection during SwiGLU (`hidden_dim`).
    up_row: Vec<f32>,
    /// Each core's attention scores over positions (`MAX_CORES × positions`).
    scores: Vec<f32>,
    /// Positions a pass may reach.
    positions: usize,
    /// Each row's sequence and position.
    places: Vec<RowPlace>,
    /// RoPE angles of each row's position, computed once per pass.
    rope: Rope,
    /// The classifier's products for up to [`LOGIT_ROWS`] sequences (`vocab_size × rows`).
    logits_group: Vec<f32>,
    /// Output logits (`vocab_size`), of one sequence at a time.
    logits: Vec<f32>,
    /// The sampler's candidates (`vocab_size`).
    candidates: Vec<(u32, f32)>,
}

/// Most sequences whose logits one classifier product computes (their products take
/// `LOGIT_ROWS × vocab_size` floats).
pub const LOGIT_ROWS: usize = 8;

/// Most times a pass runs again after losing a core.
const RETRIES: usize = super::matmul::MAX_CORES;

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
        let positions = positions.min(config.context_length);
        let (dim, kv_dim, hidden) = (config.dim, config.kv_dim(), config.hidden_dim);
        Self {
            rows,
            residual: vec![0.0; rows * dim],
            prepared: Prepared::new(rows, dim.max(hidden), precision),
            qkv: vec![0.0; (dim + 2 * kv_dim) * rows],
            query: vec![0.0; rows * dim],
            key: vec![0.0; kv_dim],
            value: vec![0.0; kv_dim],
            attention: vec![0.0; rows * dim],
            attention_out: vec![0.0; dim * rows],
            gate_up: vec![0.0; 2 * hidden * rows],
            ffn_out: vec![0.0; dim * rows],
            up_row: vec![0.0; hidden],
            scores: vec![0.0; parallel::scores_len(positions)],
            positions,
            places: Vec::with_capacity(rows),
            rope: Rope::new(config.head_dim(), config.rope_base, rows),
            logits_group: vec![0.0; config.vocab_size * rows.min(LOGIT_ROWS)],
            logits: vec![0.0; config.vocab_size],
            candidates: Vec::with_capacity(config.vocab_size),
        }
    }

    /// Bytes of scratch [`State::for_batch`] takes for a model of `config`'s shape at
    /// `positions` positions and `rows` rows (the figures of its buffers, not counting
    /// allocator rounding).
    pub fn bytes_for(config: &Config, positions: usize, rows: usize) -> u64 {
        let rows = rows.max(1);
        let (dim, kv_dim, hidden) = (config.dim, config.kv_dim(), config.hidden_dim);
        let per_row = 7 * dim + 2 * kv_dim + 2 * hidden;
        let floats = rows * per_row
            + 2 * kv_dim
            + hidden
            + parallel::scores_len(positions.min(config.context_length))
            + config.vocab_size * (1 + rows.min(LOGIT_ROWS))
            + Rope::floats_for(config.head_dim(), rows);
        let places = rows * core::mem::size_of::<RowPlace>();
        (floats * 4
            + config.vocab_size * 8
            + places
            + Prepared::bytes_for(rows, dim.max(hidden), Precision::Int16)) as u64
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
/// matrix meets all the pass's rows at once (each row's activations prepared once per phase),
/// each row attends to its own sequence's positions up to its own (so a prompt chunk is causal
/// within itself), and the classifier runs only for the last row of each sequence that wants
/// logits, handing them to `on_logits(sequence, logits, candidates)` one sequence at a time.
/// Every layer is one job on all of `cpus` ([`super::parallel`]).
///
/// On failure (a token outside the vocabulary, a position past a store's capacity, a store
/// out of memory) no sequence has advanced: the rows written to its store are written again
/// by the next pass at the same positions. A pass that loses a core runs again over the
/// cores left.
pub fn forward_batch(
    weights: &Weights<'_>,
    state: &mut State,
    sequences: &mut [PassSequence<'_, '_>],
    cpus: &dyn Cpus,
    mut on_logits: impl FnMut(usize, &mut [f32], &mut Vec<(u32, f32)>),
) -> Result<(), PassError> {
    let rows = check_pass(weights, state, sequences)?;
    let interrupted = PassError { sequence: 0, error: InferError::CoresLost };
    let mut tries = 0..=RETRIES;
    while run_layers(weights, state, sequences, cpus, rows)?.is_err() {
        tries.next().ok_or(interrupted)?;
    }
    let mut wanting =
        sequences.iter().enumerate().filter(|(_, sequence)| sequence.logits).map(|(index, _)| {
            let last = sequences[..=index].iter().map(|sequence| sequence.tokens.len()).sum::<usize>() - 1;
            (index, last)
        });
    loop {
        let mut group = [(0usize, 0usize); LOGIT_ROWS];
        let count = group.iter_mut().zip(&mut wanting).map(|(slot, wanted)| *slot = wanted).count();
        if count == 0 {
            return Ok(());
        }
        let group = &group[..count];
        let mut tries = 0..=RETRIES;
        while classify(weights, state, group, cpus).is_err() {
            tries.next().ok_or(interrupted)?;
        }
        for (member, &(index, _)) in group.iter().enumerate() {
            gather_column(&mut state.logits, &state.logits_group, member, count);
            on_logits(index, &mut state.logits, &mut state.candidates);
        }
    }
}

/// Every layer of a pass; `Ok(Err(Lost))` when a core was lost (the pass runs again).
fn run_layers(
    weights: &Weights<'_>,
    state: &mut State,
    sequences: &mut [PassSequence<'_, '_>],
    cpus: &dyn Cpus,
    rows: usize,
) -> Result<Result<(), Lost>, PassError> {
    let config = &weights.config;
    let dim = config.dim;
    state.places.clear();
    for (index, sequence) in sequences.iter().enumerate() {
        let positions = sequence.start..sequence.start + sequence.tokens.len();
        state.places.extend(positions.map(|position| RowPlace { sequence: index, position }));
    }
    for (row, place) in state.places.iter().enumerate() {
        state.rope.set_position(row, place.position);
    }
    for (row, &token) in sequences.iter().flat_map(|sequence| sequence.tokens).enumerate() {
        weights
            .token_embedding
            .dequantize_row(token as usize, &mut state.residual[row * dim..(row + 1) * dim]);
    }
    let Some(first) = weights.layers.first() else { return Ok(Ok(())) };
    normalize_into(&mut state.prepared, &state.residual[..rows * dim], first.attention_norm, config);
    let fused = [&first.query, &first.key, &first.value];
    if run_products(cpus, &product_handout(&mut state.qkv, &fused, rows), &fused, &state.prepared).is_err() {
        return Ok(Err(Lost));
    }
    for (index, layer) in weights.layers.iter().enumerate() {
        store_keys_and_values(state, sequences, index, config, rows)?;
        let next = weights.layers.get(index + 1);
        if run_layer(state, sequences, cpus, config, (index, layer, next), rows).is_err() {
            return Ok(Err(Lost));
        }
    }
    Ok(Ok(()))
}

/// One layer as one job on every core (`layer`: its index, weights and the next layer's).
fn run_layer(
    state: &mut State,
    sequences: &[PassSequence<'_, '_>],
    cpus: &dyn Cpus,
    config: &Config,
    (index, layer, next): (usize, &LayerWeights<'_>, Option<&LayerWeights<'_>>),
    rows: usize,
) -> Result<(), Lost> {
    let (dim, hidden) = (config.dim, config.hidden_dim);
    let s = state;
    let job = LayerJob {
        cpus,
        config,
        layer,
        next,
        attention: AttentionInput {
            config,
            layer: index,
            query: &s.query[..rows * dim],
            places: &s.places,
            sequences,
        },
        outputs: LayerOutputs {
            scores: Handout::new(&mut s.scores, s.positions.max(1)),
            attention: Handout::new(&mut s.attention[..rows * dim], config.head_dim()),
            attention_out: product_handout(&mut s.attention_out, &[&layer.output], rows),
            gate_up: product_handout(&mut s.gate_up, &[&layer.gate, &layer.up], rows),
            ffn_out: product_handout(&mut s.ffn_out, &[&layer.down], rows),
            qkv: next.map(|next| product_handout(&mut s.qkv, &[&next.query, &next.key, &next.value], rows)),
        },
        prepared: RwLock::new(&mut s.prepared),
        lead: Mutex::new(LeadRows {
            residual: &mut s.residual[..rows * dim],
            up_row: &mut s.up_row[..hidden],
        }),
        abandoned: AtomicBool::new(false),
    };
    job.run()
}

/// Takes the rows' queries, keys and values out of the q|k|v product, rotates queries and
/// keys by RoPE at each row's position, and stores keys and values in the rows' sequences.
fn store_keys_and_values(
    state: &mut State,
    sequences: &mut [PassSequence<'_, '_>],
    layer: usize,
    config: &Config,
    rows: usize,
) -> Result<(), PassError> {
    let (dim, kv_dim) = (config.dim, config.kv_dim());
    let (queries, rest) = state.qkv[..(dim + 2 * kv_dim) * rows].split_at(dim * rows);
    let (keys, values) = rest.split_at(kv_dim * rows);
    for (row, place) in state.places.iter().enumerate() {
        let query = &mut state.query[row * dim..(row + 1) * dim];
        gather_column(query, queries, row, rows);
        gather_column(&mut state.key, keys, row, rows);
        gather_column(&mut state.value, values, row, rows);
        state.rope.rotate(row, query);
        state.rope.rotate(row, &mut state.key);
        sequences[place.sequence]
            .kv
            .write(layer, place.position, &state.key, &state.value)
            .map_err(|error| PassError { sequence: place.sequence, error: error.into() })?;
    }
    Ok(())
}

/// The final norm and the classifier for `group`'s rows (sequence index, row), into the
/// state's logits group (`vocab_size × group.len()`).
fn classify(
    weights: &Weights<'_>,
    state: &mut State,
    group: &[(usize, usize)],
    cpus: &dyn Cpus,
) -> Result<(), Lost> {
    let config = &weights.config;
    let dim = config.dim;
    let residual = &state.residual;
    state.prepared.set(group.len(), dim, |member, out| {
        let row = group[member].1;
        rmsnorm(out, &residual[row * dim..(row + 1) * dim], weights.final_norm, config.norm_epsilon);
    });
    let fused = [&weights.classifier];
    let handout = product_handout(&mut state.logits_group, &fused, group.len());
    run_products(cpus, &handout, &fused, &state.prepared)
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
        let capacity = config.context_length.min(sequence.kv.capacity()).min(state.positions);
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
