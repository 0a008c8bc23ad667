//! Model formats: GGUF v3 and llama2.c checkpoints, parsed with checked arithmetic into
//! zero-copy views of the loaded bytes.
//!
//! [`ModelFile::parse`] recognises the format, validates every offset and size, and gives the
//! [`Weights`] the forward pass reads. Nothing is copied: tensors are views into the buffer.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod gguf;
pub mod index;
pub mod llama2c;
pub mod quant;
pub mod reader;
pub mod scan;
pub mod tensor;
pub mod weights;
pub mod write;

pub use config::Config;
pub use error::{ModelError, ModelErrorKind};
pub use gguf::GgufFile;
pub use quant::TensorType;
pub use tensor::{Matrix, TensorView};
pub use weights::{LayerWeights, Vector, Weights};

/// The container format of a model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// GGUF v3.
    Gguf,
    /// llama2.c checkpoint.
    Llama2c,
}

/// A parsed model file of either format.
#[derive(Clone, Debug)]
pub struct ModelFile<'a> {
    /// The format it was read as.
    pub format: Format,
    /// The GGUF structure, for GGUF files (metadata holds the tokenizer).
    pub gguf: Option<GgufFile<'a>>,
    /// The weights.
    pub weights: Weights<'a>,
}

impl<'a> ModelFile<'a> {
    /// Parses `bytes` as GGUF when it starts with the GGUF magic, as llama2.c otherwise.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ModelError> {
        if bytes.starts_with(b"GGUF") {
            let file = GgufFile::parse(bytes)?;
            let weights = Weights::from_gguf(&file)?;
            Ok(Self { format: Format::Gguf, gguf: Some(file), weights })
        } else {
            let checkpoint = llama2c::Checkpoint::parse(bytes)?;
            Ok(Self { format: Format::Llama2c, gguf: None, weights: checkpoint.weights })
        }
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        &self.weights.config
    }
}

#[cfg(test)]
mod tests;
