//! llama2.c checkpoints (a header of seven i32, then f32 tensors) and `tokenizer.bin`.

use alloc::vec::Vec;

use super::config::Config;
use super::error::{ModelError, ModelErrorKind};
use super::quant::TensorType;
use super::reader::Reader;
use super::tensor::Matrix;
use super::weights::{LayerWeights, Vector, Weights};

/// Bytes of the checkpoint header.
pub const HEADER_BYTES: usize = 28;
/// RoPE base llama2.c uses.
pub const ROPE_BASE: f32 = 10_000.0;
/// RMSNorm epsilon llama2.c uses.
pub const NORM_EPSILON: f32 = 1e-5;

/// A parsed llama2.c checkpoint: its config and zero-copy weights.
#[derive(Clone, Debug)]
pub struct Checkpoint<'a> {
    /// Hyperparameters from the header.
    pub config: Config,
    /// Whether the classifier is the token embedding (header vocab size positive).
    pub shared_classifier: bool,
    /// The weights.
    pub weights: Weights<'a>,
}

/// Reads the header: the config and whether the classifier is shared.
pub fn parse_header(bytes: &[u8]) -> Result<(Config, bool), ModelError> {
    let mut reader = Reader::new(bytes);
    let mut fields = [0i32; 7];
    for field in &mut fields {
        *field = reader.i32()?;
    }
    let [dim, hidden_dim, layers, heads, kv_heads, vocab, seq_len] = fields;
    let positive = |value: i32, offset: usize| {
        usize::try_from(value).map_err(|_| {
            ModelError::new(offset, ModelErrorKind::InvalidConfig("negative value in the header"))
        })
    };
    let config = Config {
        dim: positive(dim, 0)?,
        hidden_dim: positive(hidden_dim, 4)?,
        layers: positive(layers, 8)?,
        heads: positive(heads, 12)?,
        kv_heads: positive(kv_heads, 16)?,
        vocab_size: vocab.unsigned_abs() as usize,
        context_length: positive(seq_len, 24)?,
        rope_base: ROPE_BASE,
        norm_epsilon: NORM_EPSILON,
    };
    config.validate(0)?;
    Ok((config, vocab > 0))
}

/// Hands out consecutive f32 tensors from the checkpoint, checking each size.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, counts: &[usize]) -> Result<&'a [u8], ModelError> {
        let size = counts.iter().try_fold(4usize, |acc, &count| acc.checked_mul(count)).ok_or_else(|| {
            ModelError::new(self.position, ModelErrorKind::TooLarge { what: "tensor size", value: u64::MAX })
        })?;
        let end =
            self.position.checked_add(size).filter(|end| *end <= self.bytes.len()).ok_or_else(|| {
                ModelError::new(
                    self.position,
                    ModelErrorKind::Truncated {
                        needed: size as u64,
                        available: self.bytes.len() - self.position,
                    },
                )
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }
}

fn matrix(data: &[u8], rows: usize, columns: usize) -> Matrix<'_> {
    Matrix { tensor_type: TensorType::F32, rows, columns, data }
}

impl<'a> Checkpoint<'a> {
    /// Parses a checkpoint held in `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ModelError> {
        let (config, shared_classifier) = parse_header(bytes)?;
        let Config { dim, hidden_dim, layers, vocab_size, context_length, .. } = config;
        let kv_dim = config.kv_dim();
        let head_dim = config.head_dim();
        let mut cursor = Cursor { bytes, position: HEADER_BYTES };
        let token_embedding = cursor.take(&[vocab_size, dim])?;
        let attention_norms = cursor.take(&[layers, dim])?;
        let query = cursor.take(&[layers, dim, dim])?;
        let key = cursor.take(&[layers, kv_dim, dim])?;
        let value = cursor.take(&[layers, kv_dim, dim])?;
        let output = cursor.take(&[layers, dim, dim])?;
        let ffn_norms = cursor.take(&[layers, dim])?;
        let gate = cursor.take(&[layers, hidden_dim, dim])?;
        let down = cursor.take(&[layers, dim, hidden_dim])?;
        let up = cursor.take(&[layers, hidden_dim, dim])?;
        let final_norm = cursor.take(&[dim])?;
        cursor.take(&[context_length, head_dim])?;
        let classifier = if shared_classifier { token_embedding } else { cursor.take(&[vocab_size, dim])? };

        let slice = |data: &'a [u8], layer: usize| {
            let size = data.len() / layers;
            &data[layer * size..(layer + 1) * size]
        };
        let layer_weights = (0..layers)
            .map(|layer| LayerWeights {
                attention_norm: Vector { data: slice(attention_norms, layer) },
                query: matrix(slice(query, layer), dim, dim),
                key: matrix(slice(key, layer), kv_dim, dim),
                value: matrix(slice(value, layer), kv_dim, dim),
                output: matrix(slice(output, layer), dim, dim),
                ffn_norm: Vector { data: slice(ffn_norms, layer) },
                gate: matrix(slice(gate, layer), hidden_dim, dim),
                down: matrix(slice(down, layer), dim, hidden_dim),
                up: matrix(slice(up, layer), hidden_dim, dim),
            })
            .collect::<Vec<_>>();
        let weights = Weights {
            config,
            token_embedding: matrix(token_embedding, vocab_size, dim),
            layers: layer_weights,
            final_norm: Vector { data: final_norm },
            classifier: matrix(classifier, vocab_size, dim),
        };
        Ok(Self { config, shared_classifier, weights })
    }
}

/// The contents of a llama2.c `tokenizer.bin`, borrowed from its bytes.
#[derive(Clone, Debug)]
pub struct TokenizerFile<'a> {
    /// Longest token in bytes, as the header says.
    pub max_token_length: usize,
    /// Each token's bytes.
    pub tokens: Vec<&'a [u8]>,
    /// Each token's merge score.
    pub scores: Vec<f32>,
}

impl<'a> TokenizerFile<'a> {
    /// Parses `bytes` holding exactly `vocab_size` tokens.
    pub fn parse(bytes: &'a [u8], vocab_size: usize) -> Result<Self, ModelError> {
        let mut reader = Reader::new(bytes);
        let max_token_length = reader.u32()? as usize;
        // Each token takes at least 8 bytes, which bounds the allocation by the file size.
        if vocab_size > reader.remaining() / 8 {
            return Err(
                reader.error(ModelErrorKind::TooLarge { what: "vocabulary size", value: vocab_size as u64 })
            );
        }
        let mut tokens = Vec::with_capacity(vocab_size);
        let mut scores = Vec::with_capacity(vocab_size);
        for _ in 0..vocab_size {
            scores.push(reader.f32()?);
            let at = reader.position();
            let length = reader.i32()?;
            let length = u64::try_from(length).map_err(|_| {
                ModelError::new(at, ModelErrorKind::InvalidTokenizer("negative token length"))
            })?;
            tokens.push(reader.take(length)?);
        }
        Ok(Self { max_token_length, tokens, scores })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fields: [i32; 7]) -> Vec<u8> {
        fields.iter().flat_map(|field| field.to_le_bytes()).collect()
    }

    #[test]
    fn rejects_bad_headers_with_offsets() {
        let error = parse_header(&header([8, 16, 1, 3, 1, 10, 4])).unwrap_err();
        assert_eq!(error.kind, ModelErrorKind::InvalidConfig("dim is not a multiple of the head count"));
        let error = parse_header(&header([8, -16, 1, 2, 1, 10, 4])).unwrap_err();
        assert_eq!(error.offset, 4);
        assert!(parse_header(&header([8, 16, 1, 2, 1, i32::MIN, 4])).is_err());
        assert!(matches!(parse_header(&[0; 10]).unwrap_err().kind, ModelErrorKind::Truncated { .. }));
    }

    #[test]
    fn truncated_checkpoint_names_the_offset() {
        let mut bytes = header([8, 16, 1, 2, 1, 10, 4]);
        bytes.extend(core::iter::repeat_n(0u8, 10 * 8 * 4 + 3));
        let error = Checkpoint::parse(&bytes).unwrap_err();
        assert_eq!(error.offset, HEADER_BYTES + 10 * 8 * 4);
    }
}
