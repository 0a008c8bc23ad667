//! Engine tests on synthetic models: formats agree, quantized formats stay close to F32,
//! split matmuls equal single-core ones, and tokenizers round-trip.

#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::forward::{PassSequence, forward_batch};
use super::synthetic::{SyntheticFormat, SyntheticSpec};
use super::tokenizer::StreamDecoder;
use super::{ContiguousKv, Precision, State, Tokenizer, forward};
use crate::hil::{Cpus, SingleCpu};
use crate::model::{ModelFile, TensorType};

/// Runs each core's job in turn on the calling thread.
struct TakeTurns(usize);

impl Cpus for TakeTurns {
    fn count(&self) -> usize {
        self.0
    }
    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        (0..self.0).for_each(job);
    }
    fn barrier(&self) {}
}

fn spec(heads: usize, kv_heads: usize, tied: bool) -> SyntheticSpec {
    SyntheticSpec {
        dim: 64,
        hidden_dim: 96,
        layers: 2,
        heads,
        kv_heads,
        vocab_size: 300,
        context_length: 16,
        tied,
        seed: 11,
    }
}

const TOKENS: [u32; 6] = [1, 77, 299, 3, 77, 150];

/// Logits of every position of `TOKENS`, flattened.
fn logits(bytes: &[u8], cpus: &dyn Cpus) -> Vec<f32> {
    let model = ModelFile::parse(bytes).unwrap();
    let weights = &model.weights;
    let config = weights.config;
    let mut state = State::new(weights);
    let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
    let mut all = Vec::new();
    for (position, token) in TOKENS.iter().enumerate() {
        all.extend_from_slice(forward(weights, &mut state, &mut kv, cpus, *token, position).unwrap());
    }
    all
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn llama2c_and_gguf_f32_agree_and_quantized_formats_stay_close() {
    for (heads, kv_heads, tied) in [(4, 4, true), (4, 2, false), (8, 1, true)] {
        let spec = spec(heads, kv_heads, tied);
        let llama2c = logits(&spec.generate(SyntheticFormat::Llama2c).unwrap().model, &SingleCpu);
        let f32_logits =
            logits(&spec.generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap().model, &SingleCpu);
        assert_eq!(llama2c, f32_logits, "same weights, same code: identical logits");
        let spread = f32_logits.iter().fold(0.0f32, |acc, value| acc.max(value.abs()));
        assert!(spread > 0.1, "logits are not degenerate");
        for (tensor_type, tolerance) in
            [(TensorType::Q8_0, 0.05), (TensorType::Q4_1, 0.5), (TensorType::Q4_0, 0.5)]
        {
            let quantized =
                logits(&spec.generate(SyntheticFormat::Gguf(tensor_type)).unwrap().model, &SingleCpu);
            let difference = max_difference(&quantized, &f32_logits);
            assert!(difference < tolerance * spread, "{tensor_type:?}: {difference} vs spread {spread}");
        }
    }
}

#[test]
fn forward_on_several_cores_equals_one_core() {
    let spec = spec(4, 2, true);
    for format in [SyntheticFormat::Gguf(TensorType::F32), SyntheticFormat::Gguf(TensorType::Q4_1)] {
        let bytes = spec.generate(format).unwrap().model;
        let single = logits(&bytes, &SingleCpu);
        assert_eq!(single, logits(&bytes, &TakeTurns(4)));
        assert_eq!(single, logits(&bytes, &TakeTurns(3)));
    }
}

#[test]
fn forward_rejects_bad_tokens_and_positions() {
    let bytes = spec(4, 2, true).generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap().model;
    let model = ModelFile::parse(&bytes).unwrap();
    let config = model.weights.config;
    let mut state = State::new(&model.weights);
    let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), 4).unwrap();
    assert!(forward(&model.weights, &mut state, &mut kv, &SingleCpu, 300, 0).is_err());
    assert!(forward(&model.weights, &mut state, &mut kv, &SingleCpu, 1, 4).is_err());
    let mut small = State::for_positions(&model.weights, super::Precision::Float, 2);
    assert!(forward(&model.weights, &mut small, &mut kv, &SingleCpu, 1, 1).is_ok());
    assert!(
        forward(&model.weights, &mut small, &mut kv, &SingleCpu, 1, 2).is_err(),
        "past the state's positions"
    );
}

fn decode_all(tokenizer: &Tokenizer, ids: &[u32], previous: Option<u32>) -> String {
    let mut decoder = StreamDecoder::new();
    let mut text = String::new();
    let mut previous = previous;
    for &id in ids {
        decoder.push(tokenizer.decode(previous, id), &mut text);
        previous = Some(id);
    }
    decoder.finish(&mut text);
    text
}

fn tokenizers() -> &'static (Tokenizer, Tokenizer) {
    static BUILT: std::sync::LazyLock<(Tokenizer, Tokenizer)> = std::sync::LazyLock::new(build_tokenizers);
    &BUILT
}

fn build_tokenizers() -> (Tokenizer, Tokenizer) {
    let spec = SyntheticSpec { vocab_size: 400, ..spec(4, 2, true) };
    let gguf_bytes = spec.generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap().model;
    let file = crate::model::GgufFile::parse(&gguf_bytes).unwrap();
    let bpe = Tokenizer::from_gguf(&file).unwrap();
    let llama2c = spec.generate(SyntheticFormat::Llama2c).unwrap().tokenizer.unwrap();
    (bpe, Tokenizer::from_llama2c(&llama2c, 400).unwrap())
}

#[test]
fn synthetic_tokenizers_merge_and_recognise_specials() {
    let (bpe, score) = tokenizers();
    let mut ids = Vec::new();
    bpe.encode("<|im_start|>user\nThe capital of France", &mut ids);
    assert_eq!(ids[0], bpe.token_id("<|im_start|>").unwrap());
    assert!(ids.len() < 1 + "user\nThe capital of France".len(), "merges apply: {ids:?}");
    assert!(bpe.is_stop(bpe.token_id("<|im_end|>").unwrap()));
    let mut ids = Vec::new();
    score.encode("The capital", &mut ids);
    assert!(ids.len() < " The capital".len());
    assert_eq!(decode_all(score, &ids, Some(1)), "The capital");
}

proptest! {
    #[test]
    fn tokenizers_round_trip(text in "\\PC{0,24}|[ a-zA-Z0-9,.'!?\\n]{0,40}") {
        let (bpe, score) = tokenizers();
        let mut ids = Vec::new();
        bpe.encode(&text, &mut ids);
        prop_assert_eq!(decode_all(bpe, &ids, None), text.clone());
        let mut ids = vec![1];
        score.encode(&text, &mut ids);
        prop_assert_eq!(decode_all(score, &ids[1..], Some(1)), text);
    }
}

/// A batched pass gives every row the bits a pass of its own gives it: a prompt fed as one
/// chunk (causal within itself), beside another sequence decoding, yields the same last
/// logits and the same stored keys and values as feeding every token alone, at every
/// precision and for every format.
#[test]
fn batched_passes_equal_one_token_passes() {
    use crate::hil::KvStore;
    let spec = spec(4, 2, false);
    for (format, precision) in [
        (SyntheticFormat::Gguf(TensorType::F32), Precision::Float),
        (SyntheticFormat::Gguf(TensorType::Q4_1), Precision::Float),
        (SyntheticFormat::Gguf(TensorType::Q8_0), Precision::Int8),
        (SyntheticFormat::Gguf(TensorType::Q4_1), Precision::Int16),
    ] {
        let bytes = spec.generate(format).unwrap().model;
        let model = ModelFile::parse(&bytes).unwrap();
        let weights = &model.weights;
        let config = weights.config;
        let new_kv = || ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
        // One token at a time: A's prompt, and B's three tokens.
        let mut single = State::with_precision(weights, precision);
        let (mut alone_a, mut alone_b) = (new_kv(), new_kv());
        let mut expected_a = Vec::new();
        for (position, &token) in TOKENS.iter().enumerate() {
            expected_a =
                forward(weights, &mut single, &mut alone_a, &TakeTurns(3), token, position).unwrap().to_vec();
        }
        let mut expected_b = Vec::new();
        for (position, &token) in [5u32, 6, 7].iter().enumerate() {
            expected_b =
                forward(weights, &mut single, &mut alone_b, &TakeTurns(3), token, position).unwrap().to_vec();
        }
        // Batched: B's first two tokens alone, then A's whole prompt beside B's third token.
        let mut batch = State::for_batch(&config, precision, config.context_length, 8);
        let (mut kv_a, mut kv_b) = (new_kv(), new_kv());
        let mut sequences = [PassSequence { kv: &mut kv_b, tokens: &[5, 6], start: 0, logits: false }];
        forward_batch(weights, &mut batch, &mut sequences, &TakeTurns(3), |_, _, _| {
            panic!("no logits wanted")
        })
        .unwrap();
        let mut got: Vec<(usize, Vec<f32>)> = Vec::new();
        let mut sequences = [
            PassSequence { kv: &mut kv_a, tokens: &TOKENS, start: 0, logits: true },
            PassSequence { kv: &mut kv_b, tokens: &[7], start: 2, logits: true },
        ];
        forward_batch(weights, &mut batch, &mut sequences, &TakeTurns(3), |index, logits, _| {
            got.push((index, logits.to_vec()))
        })
        .unwrap();
        assert_eq!(
            got,
            vec![(0, expected_a.clone()), (1, expected_b.clone())],
            "{format:?} at {precision:?}"
        );
        for layer in 0..config.layers {
            for position in 0..TOKENS.len() {
                assert_eq!(kv_a.key(layer, position), alone_a.key(layer, position));
                assert_eq!(kv_a.value(layer, position), alone_a.value(layer, position));
            }
        }
        // A pass larger than the scratch, or past a store's end, is refused and changes nothing.
        let mut small = State::for_batch(&config, precision, config.context_length, 2);
        let mut sequences = [PassSequence { kv: &mut kv_a, tokens: &TOKENS, start: 6, logits: true }];
        let refused = forward_batch(weights, &mut small, &mut sequences, &SingleCpu, |_, _, _| {});
        assert!(matches!(refused, Err(super::forward::PassError { sequence: 0, .. })), "{refused:?}");
    }
}

std::thread_local! {
    /// Whether this thread is the worker a [`Team`] run has doomed.
    static DOOMED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    /// This thread's worker index in the current [`Team`] run.
    static WORKER: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Host threads as cores, one of which can be lost: in run `doomed_run`, the last worker
/// panics at its first attention read or barrier, whichever comes first (a core that faults
/// mid-job, holding its piece). The run reports it lost and the team goes on without it, as
/// the board does.
struct Team {
    count: core::sync::atomic::AtomicUsize,
    barrier: crate::sync::SpinBarrier,
    runs: core::sync::atomic::AtomicUsize,
    doomed_run: usize,
}

impl Team {
    fn new(count: usize, doomed_run: usize) -> Self {
        Self {
            count: count.into(),
            barrier: crate::sync::SpinBarrier::new(count),
            runs: 0.into(),
            doomed_run,
        }
    }

    fn doom_check() {
        if DOOMED.with(core::cell::Cell::get) {
            panic!("the doomed worker faults");
        }
    }
}

impl Cpus for Team {
    fn count(&self) -> usize {
        self.count.load(core::sync::atomic::Ordering::Acquire)
    }
    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        while self.try_run_on_all(job).is_err() {}
    }
    fn try_run_on_all(&self, job: &(dyn Fn(usize) + Sync)) -> Result<(), crate::hil::SharesLost> {
        use core::sync::atomic::{AtomicU32, Ordering};
        let count = self.count();
        let run = self.runs.fetch_add(1, Ordering::AcqRel);
        self.barrier.set_participants(count);
        let lost = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for worker in 1..count {
                let lost = &lost;
                scope.spawn(move || {
                    WORKER.with(|cell| cell.set(worker));
                    DOOMED.with(|cell| cell.set(run == self.doomed_run && worker + 1 == count));
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(worker)));
                    DOOMED.with(|cell| cell.set(false));
                    if outcome.is_err() {
                        lost.fetch_or(1 << worker, Ordering::AcqRel);
                        self.barrier.leave(worker);
                    }
                });
            }
            WORKER.with(|cell| cell.set(0));
            job(0);
        });
        let lost = lost.into_inner();
        if lost == 0 {
            return Ok(());
        }
        self.count.fetch_sub(lost.count_ones() as usize, Ordering::AcqRel);
        Err(crate::hil::SharesLost::from_mask(lost))
    }
    fn barrier(&self) {
        Team::doom_check();
        self.barrier.wait(WORKER.with(core::cell::Cell::get), core::hint::spin_loop);
    }
}

/// A store whose reads fault on a [`Team`]'s doomed worker.
struct Faulty(ContiguousKv);

impl crate::hil::KvStore for Faulty {
    fn kv_dim(&self) -> usize {
        self.0.kv_dim()
    }
    fn layers(&self) -> usize {
        self.0.layers()
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn write(
        &mut self,
        layer: usize,
        position: usize,
        key: &[f32],
        value: &[f32],
    ) -> Result<(), crate::hil::KvError> {
        self.0.write(layer, position, key, value)
    }
    fn keys_from(&self, layer: usize, position: usize) -> &[f32] {
        Team::doom_check();
        self.0.keys_from(layer, position)
    }
    fn values_from(&self, layer: usize, position: usize) -> &[f32] {
        self.0.values_from(layer, position)
    }
    fn truncate(&mut self, length: usize) {
        self.0.truncate(length);
    }
}

/// Logits of two sequences fed together (a prompt beside another's decode row), on `cpus`.
fn batched_logits(bytes: &[u8], precision: Precision, cpus: &dyn Cpus) -> Vec<(usize, Vec<f32>)> {
    let model = ModelFile::parse(bytes).unwrap();
    let weights = &model.weights;
    let config = weights.config;
    let new_kv = || Faulty(ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap());
    let mut state = State::for_batch(&config, precision, config.context_length, 8);
    let (mut kv_a, mut kv_b) = (new_kv(), new_kv());
    let mut sequences = [PassSequence { kv: &mut kv_b, tokens: &[5, 6], start: 0, logits: true }];
    let mut got = Vec::new();
    forward_batch(weights, &mut state, &mut sequences, cpus, |index, logits, _| {
        got.push((index, logits.to_vec()))
    })
    .unwrap();
    let mut sequences = [
        PassSequence { kv: &mut kv_a, tokens: &TOKENS, start: 0, logits: true },
        PassSequence { kv: &mut kv_b, tokens: &[7], start: 2, logits: true },
    ];
    forward_batch(weights, &mut state, &mut sequences, cpus, |index, logits, _| {
        got.push((index, logits.to_vec()))
    })
    .unwrap();
    got
}

#[test]
fn threads_through_the_whole_pass_give_the_bits_of_one_core() {
    let spec = SyntheticSpec { layers: 3, ..spec(4, 2, false) };
    for (format, precision) in [
        (SyntheticFormat::Gguf(TensorType::Q4_1), Precision::Int16),
        (SyntheticFormat::Gguf(TensorType::Q8_0), Precision::Int8),
        (SyntheticFormat::Gguf(TensorType::F32), Precision::Float),
    ] {
        let bytes = spec.generate(format).unwrap().model;
        let expected = batched_logits(&bytes, precision, &SingleCpu);
        assert_eq!(expected.len(), 3);
        for threads in [2, 4] {
            let team = Team::new(threads, usize::MAX);
            assert_eq!(batched_logits(&bytes, precision, &team), expected, "{format:?} on {threads} threads");
        }
    }
}

#[test]
fn a_core_lost_mid_layer_costs_a_rerun_not_a_wrong_token() {
    let bytes = spec(4, 2, false).generate(SyntheticFormat::Gguf(TensorType::Q4_1)).unwrap().model;
    let expected = batched_logits(&bytes, Precision::Int16, &SingleCpu);
    // Each pass's runs: the first q|k|v product, a job per layer (two), the classifier. Doom
    // a worker in each layer job of both passes.
    for doomed_run in [1, 2, 5, 6] {
        let team = Team::new(4, doomed_run);
        assert_eq!(
            batched_logits(&bytes, Precision::Int16, &team),
            expected,
            "core lost in run {doomed_run}"
        );
        assert_eq!(team.count(), 3, "the doomed core of run {doomed_run} is gone");
    }
}
