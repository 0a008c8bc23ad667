//! Hyperparameters of a llama-architecture model, whichever file format they came from.

use super::error::{ModelError, ModelErrorKind};

/// Shape and constants of a llama model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the feed-forward hidden layer.
    pub hidden_dim: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Number of query heads.
    pub heads: usize,
    /// Number of key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context the model supports.
    pub context_length: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub norm_epsilon: f32,
}

/// Largest dimension accepted, to keep buffer sizes sane whatever the file says.
const LIMIT: usize = 1 << 24;

impl Config {
    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Width of one K or V row: KV heads × head size.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// Checks that the shape is consistent; `offset` locates the errors.
    pub fn validate(&self, offset: usize) -> Result<(), ModelError> {
        let fail = |reason| Err(ModelError::new(offset, ModelErrorKind::InvalidConfig(reason)));
        let sizes = [
            self.dim,
            self.hidden_dim,
            self.layers,
            self.heads,
            self.kv_heads,
            self.vocab_size,
            self.context_length,
        ];
        if sizes.iter().any(|&size| size == 0 || size > LIMIT) {
            return fail("a dimension is zero or larger than 2^24");
        }
        if !self.dim.is_multiple_of(self.heads) {
            return fail("dim is not a multiple of the head count");
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return fail("head count is not a multiple of the KV head count");
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail("head size is odd, RoPE needs pairs");
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return fail("RoPE base is not a positive number");
        }
        if !(self.norm_epsilon.is_finite() && self.norm_epsilon >= 0.0) {
            return fail("norm epsilon is not a non-negative number");
        }
        Ok(())
    }
}
