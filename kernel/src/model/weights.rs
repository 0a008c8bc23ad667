//! The weights of a llama model as zero-copy views, built from a GGUF file or a llama2.c
//! checkpoint, with every shape checked against the config.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::config::Config;
use super::error::{ModelError, ModelErrorKind};
use super::gguf::GgufFile;
use super::quant::TensorType;
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

fn wrong(offset: usize, name: &str, expected: &'static str) -> ModelError {
    ModelError::new(offset, ModelErrorKind::WrongTensor { name: name.to_string(), expected })
}

/// Reads the llama config from GGUF metadata.
pub fn gguf_config(file: &GgufFile<'_>) -> Result<Config, ModelError> {
    let architecture = file
        .string("general.architecture")?
        .ok_or_else(|| ModelError::new(0, ModelErrorKind::MissingKey("general.architecture".into())))?;
    if architecture != "llama" {
        let offset = file.entry("general.architecture").map_or(0, |entry| entry.offset);
        return Err(ModelError::new(offset, ModelErrorKind::InvalidConfig("architecture is not llama")));
    }
    let key = |name: &str| format!("llama.{name}");
    let dim = file.required_usize(&key("embedding_length"))?;
    let heads = file.required_usize(&key("attention.head_count"))?;
    let vocab_from_embedding = file
        .tensor("token_embd.weight")
        .map(|tensor| tensor.dimensions[1])
        .ok_or_else(|| ModelError::new(0, ModelErrorKind::MissingTensor("token_embd.weight".into())))?;
    let config = Config {
        dim,
        hidden_dim: file.required_usize(&key("feed_forward_length"))?,
        layers: file.required_usize(&key("block_count"))?,
        heads,
        kv_heads: match file.unsigned(&key("attention.head_count_kv"))? {
            Some(value) => usize::try_from(value).unwrap_or(0),
            None => heads,
        },
        vocab_size: match file.unsigned(&key("vocab_size"))? {
            Some(value) => usize::try_from(value).unwrap_or(0),
            None => vocab_from_embedding,
        },
        context_length: file.required_usize(&key("context_length"))?,
        rope_base: file.float(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32,
        norm_epsilon: file.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5) as f32,
    };
    config.validate(file.entry(&key("embedding_length")).map_or(0, |entry| entry.offset))?;
    if let Some(rope_dims) = file.unsigned(&key("rope.dimension_count"))?
        && rope_dims != config.head_dim() as u64
    {
        return Err(ModelError::new(0, ModelErrorKind::InvalidConfig("partial RoPE is not supported")));
    }
    Ok(config)
}

impl<'a> Weights<'a> {
    /// Builds the weights of a llama GGUF file, checking every tensor's shape.
    pub fn from_gguf(file: &GgufFile<'a>) -> Result<Self, ModelError> {
        let config = gguf_config(file)?;
        let matrix = |name: &str, rows: usize, columns: usize| -> Result<Matrix<'a>, ModelError> {
            let tensor = file.tensor(name).ok_or_else(|| {
                ModelError::new(file.data_offset, ModelErrorKind::MissingTensor(name.into()))
            })?;
            let offset = file.tensors.iter().find(|info| info.name == name).map_or(0, |info| info.offset);
            if tensor.dimension_count > 2 || tensor.dimensions[0] != columns || tensor.dimensions[1] != rows {
                return Err(wrong(offset, name, "of the shape the config implies"));
            }
            Ok(tensor.matrix())
        };
        let vector = |name: &str| -> Result<Vector<'a>, ModelError> {
            let view = matrix(name, 1, config.dim)?;
            if view.tensor_type != TensorType::F32 {
                return Err(wrong(0, name, "an F32 vector"));
            }
            Ok(Vector { data: view.data })
        };
        let (dim, hidden, kv_dim) = (config.dim, config.hidden_dim, config.kv_dim());
        let token_embedding = matrix("token_embd.weight", config.vocab_size, dim)?;
        let mut layers = Vec::with_capacity(config.layers.min(1024));
        for layer in 0..config.layers {
            let name = |suffix: &str| -> String { format!("blk.{layer}.{suffix}.weight") };
            layers.push(LayerWeights {
                attention_norm: vector(&name("attn_norm"))?,
                query: matrix(&name("attn_q"), dim, dim)?,
                key: matrix(&name("attn_k"), kv_dim, dim)?,
                value: matrix(&name("attn_v"), kv_dim, dim)?,
                output: matrix(&name("attn_output"), dim, dim)?,
                ffn_norm: vector(&name("ffn_norm"))?,
                gate: matrix(&name("ffn_gate"), hidden, dim)?,
                down: matrix(&name("ffn_down"), dim, hidden)?,
                up: matrix(&name("ffn_up"), hidden, dim)?,
            });
        }
        let classifier = match file.tensor("output.weight") {
            Some(_) => matrix("output.weight", config.vocab_size, dim)?,
            None => token_embedding,
        };
        Ok(Self { config, token_embedding, layers, final_norm: vector("output_norm.weight")?, classifier })
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
