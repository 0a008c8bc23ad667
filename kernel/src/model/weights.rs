//! The weights of a llama model as zero-copy views, built from a GGUF file or a llama2.c
//! checkpoint, with every shape checked against the config.

use alloc::format;
use alloc::vec::Vec;

use super::config::Config;
use super::error::{ModelError, ModelErrorKind};
use super::gguf::{GgufFile, MetadataSource};
use super::index::{GgufTensors, TensorSource};
use super::tensor::Matrix;

/// A vector of little-endian f32 values (norm weights).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vector<'a> {
    /// The encoded values.
    pub data: &'a [u8],
}

impl Vector<'_> {
    /// Value `index` (0.0 when out of range).
    pub fn get(&self, index: usize) -> f32 {
        self.data
            .get(index * 4..index * 4 + 4)
            .map_or(0.0, |bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len() / 4
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.data.len() < 4
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights<'a> {
    /// RMSNorm before attention (`dim`).
    pub attention_norm: Vector<'a>,
    /// Query projection (`dim × dim`).
    pub query: Matrix<'a>,
    /// Key projection (`kv_dim × dim`).
    pub key: Matrix<'a>,
    /// Value projection (`kv_dim × dim`).
    pub value: Matrix<'a>,
    /// Attention output projection (`dim × dim`).
    pub output: Matrix<'a>,
    /// RMSNorm before the feed-forward network (`dim`).
    pub ffn_norm: Vector<'a>,
    /// SwiGLU gate (`hidden × dim`), llama2.c's w1.
    pub gate: Matrix<'a>,
    /// Down projection (`dim × hidden`), llama2.c's w2.
    pub down: Matrix<'a>,
    /// Up projection (`hidden × dim`), llama2.c's w3.
    pub up: Matrix<'a>,
}

/// All weights of a llama model.
#[derive(Clone, Debug)]
pub struct Weights<'a> {
    /// Hyperparameters.
    pub config: Config,
    /// Token embedding table (`vocab × dim`).
    pub token_embedding: Matrix<'a>,
    /// Transformer blocks.
    pub layers: Vec<LayerWeights<'a>>,
    /// Final RMSNorm (`dim`).
    pub final_norm: Vector<'a>,
    /// Classifier (`vocab × dim`); the token embedding when the model ties them.
    pub classifier: Matrix<'a>,
}

/// Reads the llama config from GGUF metadata; `embedding_rows` is the token embedding's second
/// dimension, the vocabulary size when the metadata gives none (`None`: there is no embedding).
pub fn gguf_config<'a>(
    metadata: &impl MetadataSource<'a>,
    embedding_rows: Option<usize>,
) -> Result<Config, ModelError> {
    check_architecture(metadata)?;
    let key = |name: &str| format!("llama.{name}");
    let dim = metadata.required_usize(&key("embedding_length"))?;
    let heads = metadata.required_usize(&key("attention.head_count"))?;
    let vocab_from_embedding = embedding_rows
        .ok_or_else(|| ModelError::new(0, ModelErrorKind::MissingTensor("token_embd.weight".into())))?;
    let config = Config {
        dim,
        hidden_dim: metadata.required_usize(&key("feed_forward_length"))?,
        layers: metadata.required_usize(&key("block_count"))?,
        heads,
        kv_heads: match metadata.unsigned(&key("attention.head_count_kv"))? {
            Some(value) => usize::try_from(value).unwrap_or(0),
            None => heads,
        },
        vocab_size: match metadata.unsigned(&key("vocab_size"))? {
            Some(value) => usize::try_from(value).unwrap_or(0),
            None => vocab_from_embedding,
        },
        context_length: metadata.required_usize(&key("context_length"))?,
        rope_base: metadata.float(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32,
        norm_epsilon: metadata.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32,
    };
    let offset = metadata.lookup(&key("embedding_length"))?.map_or(0, |(offset, _)| offset);
    config.validate(offset)?;
    if let Some(rope_dims) = metadata.unsigned(&key("rope.dimension_count"))?
        && rope_dims != config.head_dim() as u64
    {
        return Err(ModelError::new(0, ModelErrorKind::InvalidConfig("partial RoPE is not supported")));
    }
    Ok(config)
}

/// Checks that the metadata describes a llama model.
pub fn check_architecture<'a>(metadata: &impl MetadataSource<'a>) -> Result<(), ModelError> {
    let architecture = metadata
        .string("general.architecture")?
        .ok_or_else(|| ModelError::new(0, ModelErrorKind::MissingKey("general.architecture".into())))?;
    if architecture != "llama" {
        let offset = metadata.lookup("general.architecture")?.map_or(0, |(offset, _)| offset);
        return Err(ModelError::new(offset, ModelErrorKind::InvalidConfig("architecture is not llama")));
    }
    Ok(())
}

impl<'a> Weights<'a> {
    /// Builds the weights of a llama GGUF file, checking every tensor's shape.
    pub fn from_gguf(file: &GgufFile<'a>) -> Result<Self, ModelError> {
        let embedding_rows = file.tensor("token_embd.weight").map(|tensor| tensor.dimensions[1]);
        let config = gguf_config(file, embedding_rows)?;
        let tensors = GgufTensors { file, layers: config.layers };
        let mut step = 0;
        while !tensors.check(&config, step, file.data_offset)? {
            step += 1;
        }
        tensors.weights(file.bytes(), config)
    }

    /// Bytes of weights read per token (all matrices once, the embedding row aside).
    pub fn bytes_per_token(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|layer| {
                [layer.query, layer.key, layer.value, layer.output, layer.gate, layer.down, layer.up]
                    .iter()
                    .map(|matrix| matrix.data.len())
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.classifier.data.len()
    }
}
