//! Deterministic synthetic llama models and tokenizers, for tests and `tessera gen-model`.
//!
//! The same seed gives the same weights in every format (tensors are drawn in llama2.c's
//! order), so a llama2.c checkpoint and a GGUF-F32 file of one seed compute the same logits.
//! The tokenizer is trained with a few hundred BPE merges on a small built-in corpus.

#![forbid(unsafe_code)]

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::tokenizer::bpe::{TOKEN_TYPE_CONTROL, byte_to_char};

/// GGUF token type of a token that is never produced.
const TOKEN_TYPE_UNUSED: i32 = 5;
use super::tokenizer::pretokenize::pretokenize;
use crate::model::TensorType;
use crate::model::gguf::ValueType;
use crate::model::quant::quantize;
use crate::model::write::{GgufWriter, WriteValue};
use crate::rand::SplitMix64;

/// Shape and seed of a synthetic model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Residual width.
    pub dim: usize,
    /// Feed-forward width.
    pub hidden_dim: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size (at least 259).
    pub vocab_size: usize,
    /// Context length.
    pub context_length: usize,
    /// Whether the classifier is the token embedding.
    pub tied: bool,
    /// PRNG seed.
    pub seed: u64,
}

impl SyntheticSpec {
    /// The small model most tests use: 64 wide, a 96-wide feed-forward, 2 layers, 4 query and
    /// 2 key/value heads, 320 tokens, tied embeddings.
    pub const fn tiny(context_length: usize, seed: u64) -> Self {
        Self {
            dim: 64,
            hidden_dim: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab_size: 320,
            context_length,
            tied: true,
            seed,
        }
    }
}

/// The file format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticFormat {
    /// llama2.c checkpoint plus `tokenizer.bin`.
    Llama2c,
    /// GGUF with matrices (and the embedding) of the given type; norms stay F32.
    Gguf(TensorType),
}

/// A generated model: the model file and, for llama2.c, the tokenizer file.
#[derive(Clone, Debug)]
pub struct SyntheticModel {
    /// The model file.
    pub model: Vec<u8>,
    /// `tokenizer.bin` for llama2.c models.
    pub tokenizer: Option<Vec<u8>>,
}

const CORPUS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl who lived in a village near the forest.",
    "What is the capital of France? The capital of France is Paris.",
    "She said: \"I'll be there at 10:30, don't worry!\"",
    "In 2024 the team shipped 3 releases and fixed 128 bugs.",
    "Tessera boots on a Raspberry Pi and answers questions over the serial console.",
    "Hello, world! Hello again, and welcome to the machine.",
    "The model reads tokens, one at a time, and writes the next one.",
];

/// The special tokens, after the learned ones: the first is BOS, the last EOS.
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Every weight of a synthetic model, as drawn (one vector per layer for the per-layer ones).
struct SyntheticWeights {
    /// Token embedding, vocabulary × dim.
    embedding: Vec<f32>,
    /// Attention RMS-norm weights.
    attention_norms: Vec<Vec<f32>>,
    /// Query projections.
    query: Vec<Vec<f32>>,
    /// Key projections.
    key: Vec<Vec<f32>>,
    /// Value projections.
    value: Vec<Vec<f32>>,
    /// Attention output projections.
    output: Vec<Vec<f32>>,
    /// Feed-forward RMS-norm weights.
    ffn_norms: Vec<Vec<f32>>,
    /// Feed-forward gate projections.
    gate: Vec<Vec<f32>>,
    /// Feed-forward down projections.
    down: Vec<Vec<f32>>,
    /// Feed-forward up projections.
    up: Vec<Vec<f32>>,
    /// Final RMS-norm weights.
    final_norm: Vec<f32>,
    /// The separate classifier, when the embedding is not tied.
    classifier: Option<Vec<f32>>,
}

/// Values with a uniform spread of ±`scale`.
fn draw(random: &mut SplitMix64, count: usize, scale: f32) -> Vec<f32> {
    (0..count).map(|_| (random.next_f32() * 2.0 - 1.0) * scale).collect()
}

/// Norm weights near 1.
fn draw_norm(random: &mut SplitMix64, count: usize) -> Vec<f32> {
    (0..count).map(|_| 0.8 + 0.4 * random.next_f32()).collect()
}

/// Learns `count` BPE merges on the corpus (byte-level, GPT-2 spelling), most frequent pair
/// first, ties broken by the seeded order of the corpus.
fn learn_merges(count: usize, seed: u64) -> Vec<(String, String)> {
    let mut random = SplitMix64::new(seed);
    let mut sentences: Vec<&str> = CORPUS.to_vec();
    for index in (1..sentences.len()).rev() {
        sentences.swap(index, random.below(index as u64 + 1) as usize);
    }
    let mut words: Vec<Vec<String>> = Vec::new();
    for sentence in sentences {
        pretokenize(sentence, |piece| {
            words.push(piece.bytes().map(|byte| String::from(byte_to_char(byte))).collect())
        });
    }
    let mut merges = Vec::new();
    while merges.len() < count {
        let mut counts: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
        let mut order = 0;
        for word in &words {
            for pair in word.windows(2) {
                let entry = counts.entry((pair[0].clone(), pair[1].clone())).or_insert((0, order));
                entry.0 += 1;
                order += 1;
            }
        }
        let Some(((left, right), _)) =
            counts.into_iter().max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        else {
            break;
        };
        let joined = format!("{left}{right}");
        for word in &mut words {
            let mut index = 0;
            while index + 1 < word.len() {
                if word[index] == left && word[index + 1] == right {
                    word[index] = joined.clone();
                    word.remove(index + 1);
                }
                index += 1;
            }
        }
        merges.push((left, right));
    }
    merges
}

fn gpt2_to_bytes(text: &str) -> Vec<u8> {
    text.chars().filter_map(super::tokenizer::bpe::char_to_byte).collect()
}

impl SyntheticSpec {
    /// Checks the shape; the message says what is wrong.
    pub fn validate(&self, format: SyntheticFormat) -> Result<(), &'static str> {
        let config = crate::model::Config {
            dim: self.dim,
            hidden_dim: self.hidden_dim,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            rope_base: 10_000.0,
            norm_epsilon: 1e-5,
        };
        if config.validate(0).is_err() {
            return Err(
                "inconsistent shape: dim must divide into heads, heads into kv-heads, head size even",
            );
        }
        if self.vocab_size < 259 {
            return Err("vocab must be at least 259 (byte tokens plus specials)");
        }
        if let SyntheticFormat::Gguf(tensor_type) = format
            && (!self.dim.is_multiple_of(tensor_type.block_values())
                || !self.hidden_dim.is_multiple_of(tensor_type.block_values()))
        {
            return Err("dim and hidden dim must be multiples of 32 for quantized formats");
        }
        Ok(())
    }

    /// Generates the model in `format`.
    pub fn generate(&self, format: SyntheticFormat) -> Result<SyntheticModel, &'static str> {
        self.validate(format)?;
        let weights = self.draw_weights();
        let merges = learn_merges(self.vocab_size - 256 - SPECIALS.len(), self.seed);
        Ok(match format {
            SyntheticFormat::Llama2c => SyntheticModel {
                model: self.llama2c_checkpoint(&weights),
                tokenizer: Some(llama2c_tokenizer(self.vocab_size, &merges)),
            },
            SyntheticFormat::Gguf(matrix_type) => {
                let mut writer = GgufWriter::new();
                self.write_gguf_hyperparameters(&mut writer);
                self.write_gguf_tokenizer(&mut writer, &merges);
                self.write_gguf_tensors(&mut writer, &weights, matrix_type);
                SyntheticModel { model: writer.finish(), tokenizer: None }
            }
        })
    }

    /// Draws every weight from the seed, in llama2.c's tensor order (so both formats of one
    /// seed hold the same values).
    fn draw_weights(&self) -> SyntheticWeights {
        let mut random = SplitMix64::new(self.seed);
        let (dim, hidden, layers, vocab) = (self.dim, self.hidden_dim, self.layers, self.vocab_size);
        let kv_dim = self.kv_heads * (dim / self.heads);
        let input_scale = 1.0 / libm::sqrtf(dim as f32);
        let hidden_scale = 1.0 / libm::sqrtf(hidden as f32);
        let embedding = draw(&mut random, vocab * dim, 1.0);
        let per_layer = |random: &mut SplitMix64, rows: usize, scale: f32| -> Vec<Vec<f32>> {
            (0..layers).map(|_| draw(random, rows, scale)).collect()
        };
        let attention_norms: Vec<Vec<f32>> = (0..layers).map(|_| draw_norm(&mut random, dim)).collect();
        let query = per_layer(&mut random, dim * dim, input_scale);
        let key = per_layer(&mut random, kv_dim * dim, input_scale);
        let value = per_layer(&mut random, kv_dim * dim, input_scale);
        let output = per_layer(&mut random, dim * dim, input_scale);
        let ffn_norms: Vec<Vec<f32>> = (0..layers).map(|_| draw_norm(&mut random, dim)).collect();
        let gate = per_layer(&mut random, hidden * dim, input_scale);
        let down = per_layer(&mut random, dim * hidden, hidden_scale);
        let up = per_layer(&mut random, hidden * dim, input_scale);
        let final_norm = draw_norm(&mut random, dim);
        let classifier = if self.tied { None } else { Some(draw(&mut random, vocab * dim, input_scale)) };
        SyntheticWeights {
            embedding,
            attention_norms,
            query,
            key,
            value,
            output,
            ffn_norms,
            gate,
            down,
            up,
            final_norm,
            classifier,
        }
    }

    /// A llama2.c checkpoint: the seven-field header, then every tensor as little-endian f32
    /// (with the zeroed legacy RoPE block before a separate classifier).
    fn llama2c_checkpoint(&self, weights: &SyntheticWeights) -> Vec<u8> {
        let mut model = Vec::new();
        let vocab = self.vocab_size;
        let vocab_field = if self.tied { vocab as i32 } else { -(vocab as i32) };
        for field in [
            self.dim as i32,
            self.hidden_dim as i32,
            self.layers as i32,
            self.heads as i32,
            self.kv_heads as i32,
            vocab_field,
            self.context_length as i32,
        ] {
            model.extend_from_slice(&field.to_le_bytes());
        }
        let mut put =
            |values: &[f32]| values.iter().for_each(|value| model.extend_from_slice(&value.to_le_bytes()));
        put(&weights.embedding);
        for group in [
            &weights.attention_norms,
            &weights.query,
            &weights.key,
            &weights.value,
            &weights.output,
            &weights.ffn_norms,
            &weights.gate,
            &weights.down,
            &weights.up,
        ] {
            group.iter().for_each(|values| put(values));
        }
        put(&weights.final_norm);
        put(&alloc::vec![0.0; self.context_length * (self.dim / self.heads)]);
        if let Some(classifier) = &weights.classifier {
            put(classifier);
        }
        model
    }

    /// Writes the GGUF metadata that describes the architecture and its shape.
    fn write_gguf_hyperparameters(&self, writer: &mut GgufWriter) {
        let string = |text: &str| WriteValue::String(text.into());
        let count = |value: usize| WriteValue::U32(value as u32);
        writer
            .metadata("general.architecture", string("llama"))
            .metadata("general.name", string("tessera synthetic"))
            .metadata("general.alignment", WriteValue::U32(32))
            .metadata("llama.context_length", count(self.context_length))
            .metadata("llama.embedding_length", count(self.dim))
            .metadata("llama.block_count", count(self.layers))
            .metadata("llama.feed_forward_length", count(self.hidden_dim))
            .metadata("llama.attention.head_count", count(self.heads))
            .metadata("llama.attention.head_count_kv", count(self.kv_heads))
            .metadata("llama.rope.freq_base", WriteValue::F32(10_000.0))
            .metadata("llama.attention.layer_norm_rms_epsilon", WriteValue::F32(1e-5))
            .metadata("llama.rope.dimension_count", count(self.dim / self.heads));
    }

    /// Writes the GGUF tokenizer metadata: the 256 byte tokens, the learned `merges`, unused
    /// fillers up to the vocabulary, then the specials (the first is BOS, the last EOS).
    fn write_gguf_tokenizer(&self, writer: &mut GgufWriter, merges: &[(String, String)]) {
        let vocab = self.vocab_size;
        let string = |text: &str| WriteValue::String(text.into());
        let count = |value: usize| WriteValue::U32(value as u32);
        let mut tokens: Vec<String> = (0..=255u8).map(|byte| String::from(byte_to_char(byte))).collect();
        tokens.extend(merges.iter().map(|(left, right)| format!("{left}{right}")));
        // When the corpus runs out of pairs, unused tokens fill the vocabulary.
        let learned = tokens.len();
        while tokens.len() < vocab - SPECIALS.len() {
            tokens.push(format!("<|unused{}|>", tokens.len() - learned));
        }
        tokens.extend(SPECIALS.iter().map(|special| String::from(*special)));
        let types: Vec<WriteValue> = (0..tokens.len())
            .map(|id| {
                WriteValue::I32(match id {
                    id if id >= vocab - SPECIALS.len() => TOKEN_TYPE_CONTROL,
                    id if id >= learned => TOKEN_TYPE_UNUSED,
                    _ => 1,
                })
            })
            .collect();
        writer
            .metadata("tokenizer.ggml.model", string("gpt2"))
            .metadata("tokenizer.ggml.pre", string("smollm"))
            .metadata(
                "tokenizer.ggml.tokens",
                WriteValue::Array(ValueType::String, tokens.iter().map(|token| string(token)).collect()),
            )
            .metadata("tokenizer.ggml.token_type", WriteValue::Array(ValueType::I32, types))
            .metadata(
                "tokenizer.ggml.merges",
                WriteValue::Array(
                    ValueType::String,
                    merges.iter().map(|(left, right)| string(&format!("{left} {right}"))).collect(),
                ),
            )
            .metadata("tokenizer.ggml.bos_token_id", count(vocab - 3))
            .metadata("tokenizer.ggml.eos_token_id", count(vocab - 1));
    }

    /// Writes every tensor under its GGUF name: matrices and the embedding as `matrix_type`,
    /// norms as F32.
    fn write_gguf_tensors(
        &self,
        writer: &mut GgufWriter,
        weights: &SyntheticWeights,
        matrix_type: TensorType,
    ) {
        let encode = |tensor_type: TensorType, values: &[f32]| {
            let mut bytes = Vec::new();
            quantize(tensor_type, values, &mut bytes);
            bytes
        };
        let kv_dim = self.kv_heads * (self.dim / self.heads);
        let (d, h, k, v) = (self.dim as u64, self.hidden_dim as u64, kv_dim as u64, self.vocab_size as u64);
        writer.tensor("token_embd.weight", &[d, v], matrix_type, encode(matrix_type, &weights.embedding));
        for layer in 0..self.layers {
            let name = |suffix: &str| format!("blk.{layer}.{suffix}.weight");
            let tensors: [(&str, &[f32], &[u64], TensorType); 9] = [
                ("attn_norm", &weights.attention_norms[layer], &[d], TensorType::F32),
                ("attn_q", &weights.query[layer], &[d, d], matrix_type),
                ("attn_k", &weights.key[layer], &[d, k], matrix_type),
                ("attn_v", &weights.value[layer], &[d, k], matrix_type),
                ("attn_output", &weights.output[layer], &[d, d], matrix_type),
                ("ffn_norm", &weights.ffn_norms[layer], &[d], TensorType::F32),
                ("ffn_gate", &weights.gate[layer], &[d, h], matrix_type),
                ("ffn_down", &weights.down[layer], &[h, d], matrix_type),
                ("ffn_up", &weights.up[layer], &[d, h], matrix_type),
            ];
            for (suffix, values, dimensions, tensor_type) in tensors {
                writer.tensor(&name(suffix), dimensions, tensor_type, encode(tensor_type, values));
            }
        }
        writer.tensor(
            "output_norm.weight",
            &[d],
            TensorType::F32,
            encode(TensorType::F32, &weights.final_norm),
        );
        if let Some(classifier) = &weights.classifier {
            writer.tensor("output.weight", &[d, v], matrix_type, encode(matrix_type, classifier));
        }
    }
}

/// A llama2.c `tokenizer.bin`: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then the learned
/// merges (raw bytes), each scoring below the one before.
fn llama2c_tokenizer(vocab: usize, merges: &[(String, String)]) -> Vec<u8> {
    let mut tokens: Vec<Vec<u8>> = alloc::vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    tokens.extend((0..=255u8).map(|byte| format!("<0x{byte:02X}>").into_bytes()));
    for character in b' '..=b'~' {
        if tokens.len() < vocab {
            tokens.push(alloc::vec![character]);
        }
    }
    for (left, right) in merges {
        if tokens.len() >= vocab {
            break;
        }
        let mut joined = gpt2_to_bytes(left);
        joined.extend(gpt2_to_bytes(right));
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
    }
    let mut filler = 0;
    while tokens.len() < vocab {
        tokens.push(format!("<unused{filler}>").into_bytes());
        filler += 1;
    }
    let longest = tokens.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut out = longest.to_le_bytes().to_vec();
    for (index, token) in tokens.iter().enumerate() {
        out.extend_from_slice(&(-(index as f32)).to_le_bytes());
        out.extend_from_slice(&(token.len() as i32).to_le_bytes());
        out.extend_from_slice(token);
    }
    out
}
