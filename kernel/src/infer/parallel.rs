//! The parallel jobs of a batched forward pass: every core works through the whole layer.
//!
//! A layer is one job on all cores ([`Cpus::try_run_on_all`]), in phases the cores separate
//! with [`Cpus::barrier`]: attention (a head of a row per piece), the output projection, the
//! gate and up projections as one fused matrix, the down projection, and the next layer's
//! query, key and value projections as one fused matrix. Each phase's output is a
//! [`Handout`]: whichever core is free takes the next piece (a few matrix rows for all the
//! pass's activation rows, or one head of one row), so a slow core never holds up the others.
//! Between two phases core 0 alone does the short row-wise work (residual additions, norms,
//! SwiGLU) and prepares the next phase's input once ([`Prepared`]: quantized or with its
//! block sums) for every core to read. Core 0 calls [`Cpus::checkpoint`] after each of its
//! pieces, so the console is served during the job.
//!
//! Between two layer jobs, core 0 rotates the new queries and keys and writes the keys and
//! values to the sequences' stores (which need exclusive access).
//!
//! Products are laid out row by row of the matrix, one value per activation row
//! (`out[matrix_row × N + activation_row]`), so a piece of matrix rows is one contiguous
//! piece of the output.
//!
//! A core lost during a job keeps its piece, so the phase's output is never whole: core 0
//! sees that, every core leaves the job at the next barrier, and the caller runs the pass
//! again over the cores left ([`Lost`]).

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::{Mutex, RwLock};

use super::forward::PassSequence;
use super::kernels::{BatchInput, HeadRows, Precision, QuantizedRows};
use super::matmul::{
    FastestBlocks, MAX_CORES, accumulate_values, attention_scores, rmsnorm, rows_multi, softmax, swiglu,
};
use crate::hil::Cpus;
use crate::mm::handout::Handout;
use crate::model::{Config, LayerWeights, Matrix, Vector};

/// Matrix rows per piece of a product.
pub const PIECE_ROWS: usize = 16;

/// A job lost a core (or a piece of its output): the pass must run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost;

/// Activation rows prepared once for every matrix of a phase that reads them: the floats,
/// and their quantization (or, in float precision, their block sums) in a [`QuantizedRows`].
#[derive(Clone, Debug)]
pub struct Prepared {
    rows: usize,
    columns: usize,
    floats: Vec<f32>,
    quantized: QuantizedRows,
}

impl Prepared {
    /// Room for `rows` rows of up to `columns` values, prepared at `precision`.
    pub fn new(rows: usize, columns: usize, precision: Precision) -> Self {
        Self {
            rows: 0,
            columns: 0,
            floats: vec![0.0; rows * columns],
            quantized: QuantizedRows::with_capacity(rows, columns, precision),
        }
    }

    /// Bytes [`Prepared::new`] takes (int16, the widest precision, is the most).
    pub fn bytes_for(rows: usize, columns: usize, precision: Precision) -> usize {
        rows * columns * 4 + QuantizedRows::bytes_for(rows, columns, precision)
    }

    /// Sets `rows` rows of `columns` values, row `r` written by `fill(r, row)`, and prepares
    /// them for the matrices that will read them. More rows or columns than the room made by
    /// [`Prepared::new`] is a caller's bug (the pass checks its rows first).
    pub fn set(&mut self, rows: usize, columns: usize, mut fill: impl FnMut(usize, &mut [f32])) {
        let floats = &mut self.floats[..rows * columns];
        for (row, values) in floats.chunks_exact_mut(columns).enumerate() {
            fill(row, values);
        }
        self.rows = rows;
        self.columns = columns;
        if let Err(error) = self.quantized.quantize_with(floats, columns, &FastestBlocks) {
            unreachable!("a pass's rows fit its scratch: {error}");
        }
    }

    /// The prepared rows, as the product kernels read them.
    fn batch(&self) -> BatchInput<'_> {
        match self.quantized.prepared(&self.floats[..self.rows * self.columns], self.columns) {
            Ok(batch) => batch,
            Err(error) => unreachable!("the rows were prepared: {error}"),
        }
    }
}

/// Rows `first ..` of the matrices `fused` (their rows one after another, as one matrix)
/// times every prepared row, into `out` (`out.len() / N` matrix rows, N values each).
pub fn product_piece(fused: &[&Matrix<'_>], prepared: &Prepared, first: usize, out: &mut [f32]) {
    let vectors = prepared.rows.max(1);
    let count = out.len() / vectors;
    let batch = prepared.batch();
    let (mut offset, mut done) = (0, 0);
    for matrix in fused {
        let start = first + done;
        if done == count {
            break;
        }
        if start >= offset + matrix.rows {
            offset += matrix.rows;
            continue;
        }
        let rows = (first + count).min(offset + matrix.rows) - start;
        let piece = &mut out[done * vectors..(done + rows) * vectors];
        if let Err(error) = rows_multi(matrix, batch, start - offset, rows, piece) {
            unreachable!("a model's matrices fit their activations: {error}");
        }
        done += rows;
        offset += matrix.rows;
    }
}

/// Rows of `fused` matrices together.
fn fused_rows(fused: &[&Matrix<'_>]) -> usize {
    fused.iter().map(|matrix| matrix.rows).sum()
}

/// An output buffer of `fused`'s rows times `vectors` activation rows, to be handed out.
pub fn product_handout<'b>(buffer: &'b mut [f32], fused: &[&Matrix<'_>], vectors: usize) -> Handout<'b, f32> {
    let length = fused_rows(fused) * vectors;
    Handout::new(&mut buffer[..length], PIECE_ROWS * vectors.max(1))
}

/// Works through `handout`'s pieces of the product of `fused` and `prepared` until none is
/// left (core 0 checkpoints after each).
fn take_products(
    cpus: &dyn Cpus,
    worker: usize,
    handout: &Handout<'_, f32>,
    fused: &[&Matrix<'_>],
    prepared: &Prepared,
) {
    while let Some(mut piece) = handout.claim() {
        let first = piece.index * PIECE_ROWS;
        product_piece(fused, prepared, first, &mut piece);
        piece.done();
        if worker == 0 {
            cpus.checkpoint();
        }
    }
}

/// One product on every core: `handout` filled with `fused` × `prepared`.
pub fn run_products(
    cpus: &dyn Cpus,
    handout: &Handout<'_, f32>,
    fused: &[&Matrix<'_>],
    prepared: &Prepared,
) -> Result<(), Lost> {
    let outcome = cpus.try_run_on_all(&|worker| take_products(cpus, worker, handout, fused, prepared));
    if outcome.is_err() || handout.whole().is_none() {
        return Err(Lost);
    }
    Ok(())
}

/// Where each activation row of a pass belongs: its sequence and position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowPlace {
    /// The sequence's index among the pass's.
    pub sequence: usize,
    /// The row's position in it.
    pub position: usize,
}

/// What attention reads: the rows' queries and places, and the sequences' stores.
pub struct AttentionInput<'a, 't, 'k> {
    /// The model's shape.
    pub config: &'a Config,
    /// The layer.
    pub layer: usize,
    /// Rotated queries, `rows × dim`.
    pub query: &'a [f32],
    /// Each row's sequence and position.
    pub places: &'a [RowPlace],
    /// The pass's sequences, whose stores hold every row's keys and values of this layer.
    pub sequences: &'a [PassSequence<'t, 'k>],
}

impl AttentionInput<'_, '_, '_> {
    /// Piece `index` (row `index / heads`, head `index % heads`): the head's attention over
    /// its sequence's positions up to the row's own, into `out` (`head_dim` values), with
    /// `scores` as scratch.
    fn piece(&self, index: usize, scores: &mut [f32], out: &mut [f32]) {
        let config = self.config;
        let head_dim = config.head_dim();
        let (row, head) = (index / config.heads, index % config.heads);
        let place = self.places[row];
        let store = &*self.sequences[place.sequence].kv;
        let query = &self.query[row * config.dim + head * head_dim..][..head_dim];
        let kv_head = head / (config.heads / config.kv_heads).max(1);
        let kv_range = kv_head * head_dim..(kv_head + 1) * head_dim;
        let scale = 1.0 / libm::sqrtf(head_dim as f32);
        let scores = &mut scores[..=place.position];
        let (layer, stride) = (self.layer, store.kv_dim());
        let keys = HeadRows { run: |past| store.keys_from(layer, past), stride, range: kv_range.clone() };
        attention_scores(query, &keys, scale, scores);
        softmax(scores);
        let values = HeadRows { run: |past| store.values_from(layer, past), stride, range: kv_range };
        accumulate_values(scores, &values, out);
    }
}

/// Core 0's rows between phases: the residual stream and a row of scratch.
pub struct LeadRows<'a> {
    /// The residual stream, `rows × dim`.
    pub residual: &'a mut [f32],
    /// One row of `hidden_dim` (the up projection of a row during SwiGLU).
    pub up_row: &'a mut [f32],
}

/// The buffers a layer job fills, each handed out in pieces.
pub struct LayerOutputs<'a> {
    /// Each worker's attention scores (one piece per worker).
    pub scores: Handout<'a, f32>,
    /// Attention, `rows × dim`, a head of a row per piece.
    pub attention: Handout<'a, f32>,
    /// The output projection, `dim × rows`.
    pub attention_out: Handout<'a, f32>,
    /// Gate and up, `2 hidden_dim × rows`.
    pub gate_up: Handout<'a, f32>,
    /// The down projection, `dim × rows`.
    pub ffn_out: Handout<'a, f32>,
    /// The next layer's queries, keys and values, `(dim + 2 kv_dim) × rows`, if there is one.
    pub qkv: Option<Handout<'a, f32>>,
}

/// One layer of a batched pass as one job on every core.
pub struct LayerJob<'a, 'w, 't, 'k> {
    /// The cores.
    pub cpus: &'a dyn Cpus,
    /// The model's shape.
    pub config: &'a Config,
    /// This layer's weights.
    pub layer: &'a LayerWeights<'w>,
    /// The next layer's, whose q|k|v ends the job; `None` for the last layer.
    pub next: Option<&'a LayerWeights<'w>>,
    /// What attention reads.
    pub attention: AttentionInput<'a, 't, 'k>,
    /// The outputs.
    pub outputs: LayerOutputs<'a>,
    /// The rows the current phase's products read (written by core 0 between phases).
    pub prepared: RwLock<&'a mut Prepared>,
    /// Core 0's rows.
    pub lead: Mutex<LeadRows<'a>>,
    /// Set by core 0 when a phase's output is not whole: every core leaves the job.
    pub abandoned: AtomicBool,
}

impl LayerJob<'_, '_, '_, '_> {
    /// Runs the layer on every core.
    pub fn run(&self) -> Result<(), Lost> {
        let outcome = self.cpus.try_run_on_all(&|worker| self.work(worker));
        if outcome.is_err() || self.abandoned.load(Ordering::Acquire) {
            return Err(Lost);
        }
        if self.outputs.qkv.as_ref().is_some_and(|qkv| qkv.whole().is_none()) {
            return Err(Lost);
        }
        Ok(())
    }

    /// One worker's share of the layer.
    fn work(&self, worker: usize) {
        let (config, layer, outputs) = (self.config, self.layer, &self.outputs);
        let mut scores = outputs.scores.claim();
        if let Some(scores) = scores.as_deref_mut() {
            while let Some(mut piece) = outputs.attention.claim() {
                self.attention.piece(piece.index, scores, &mut piece);
                piece.done();
                if worker == 0 {
                    self.cpus.checkpoint();
                }
            }
        }
        if let Some(scores) = scores {
            scores.done();
        }
        let rows = self.attention.places.len();
        let between = self.between(worker, |_, prepared| {
            let attention = outputs.attention.whole()?;
            prepared.set(rows, config.dim, |row, out| {
                out.copy_from_slice(&attention[row * config.dim..][..config.dim])
            });
            Some(())
        });
        if !between {
            return;
        }
        self.products(worker, &outputs.attention_out, &[&layer.output]);
        let between = self.between(worker, |lead, prepared| {
            add_transposed(lead.residual, outputs.attention_out.whole()?, rows, config.dim);
            normalize_into(prepared, lead.residual, layer.ffn_norm, config);
            Some(())
        });
        if !between {
            return;
        }
        self.products(worker, &outputs.gate_up, &[&layer.gate, &layer.up]);
        let between = self.between(worker, |lead, prepared| {
            let gate_up = outputs.gate_up.whole()?;
            let hidden = config.hidden_dim;
            let (gate, up) = gate_up.split_at(hidden * rows);
            prepared.set(rows, hidden, |row, out| {
                gather_column(out, gate, row, rows);
                gather_column(lead.up_row, up, row, rows);
                swiglu(out, lead.up_row);
            });
            Some(())
        });
        if !between {
            return;
        }
        self.products(worker, &outputs.ffn_out, &[&layer.down]);
        let Some(next) = self.next else {
            self.between(worker, |lead, _| {
                add_transposed(lead.residual, outputs.ffn_out.whole()?, rows, config.dim);
                Some(())
            });
            return;
        };
        let between = self.between(worker, |lead, prepared| {
            add_transposed(lead.residual, outputs.ffn_out.whole()?, rows, config.dim);
            normalize_into(prepared, lead.residual, next.attention_norm, config);
            Some(())
        });
        if let (true, Some(qkv)) = (between, &outputs.qkv) {
            self.products(worker, qkv, &[&next.query, &next.key, &next.value]);
        }
    }

    /// The products of a phase, from the prepared rows.
    fn products(&self, worker: usize, handout: &Handout<'_, f32>, fused: &[&Matrix<'_>]) {
        let prepared = self.prepared.read();
        take_products(self.cpus, worker, handout, fused, &prepared);
    }

    /// The step between two phases: every core waits for the last piece, core 0 runs `step`
    /// alone (`None`: an output was not whole), and every core waits for it. Returns whether
    /// the job goes on.
    fn between(
        &self,
        worker: usize,
        step: impl FnOnce(&mut LeadRows<'_>, &mut Prepared) -> Option<()>,
    ) -> bool {
        self.cpus.barrier();
        if worker == 0 {
            // Only core 0 takes these locks for writing; a reader lost mid-phase holds its
            // read lock forever, which `try_write` sees instead of waiting.
            let done = match (self.lead.try_lock(), self.prepared.try_write()) {
                (Some(mut lead), Some(mut prepared)) => step(&mut lead, &mut prepared).is_some(),
                _ => false,
            };
            if !done {
                self.abandoned.store(true, Ordering::Release);
            }
        }
        self.cpus.barrier();
        !self.abandoned.load(Ordering::Acquire)
    }
}

/// `residual[r][i] += product[i][r]` for `rows` rows of `dim`.
pub fn add_transposed(residual: &mut [f32], product: &[f32], rows: usize, dim: usize) {
    for (row, residual) in residual[..rows * dim].chunks_exact_mut(dim).enumerate() {
        for (index, value) in residual.iter_mut().enumerate() {
            *value += product[index * rows + row];
        }
    }
}

/// `out[i] = product[i][row]`: one activation row's values out of a product of `rows` rows.
pub fn gather_column(out: &mut [f32], product: &[f32], row: usize, rows: usize) {
    for (index, value) in out.iter_mut().enumerate() {
        *value = product[index * rows + row];
    }
}

/// Prepares each residual row, RMS-normalised with `weight`.
pub fn normalize_into(prepared: &mut Prepared, residual: &[f32], weight: Vector<'_>, config: &Config) {
    let dim = config.dim;
    let rows = residual.len() / dim;
    prepared.set(rows, dim, |row, out| {
        rmsnorm(out, &residual[row * dim..(row + 1) * dim], weight, config.norm_epsilon)
    });
}

/// Scratch for each worker's attention scores: `MAX_CORES` pieces of `positions`.
pub fn scores_len(positions: usize) -> usize {
    MAX_CORES * positions
}
