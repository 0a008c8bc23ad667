//! Reading a model file (and its llama2.c tokenizer) from disk and parsing it.

use std::path::{Path, PathBuf};

use kernel::infer::Tokenizer;
use kernel::model::{Format, ModelFile};

/// The bytes of a model and, when found, of its llama2.c tokenizer.
pub struct Loaded {
    model: Vec<u8>,
    tokenizer: Option<(PathBuf, Vec<u8>)>,
    model_path: PathBuf,
}

/// Where `gen-model` puts the tokenizer of a llama2.c model written to `model`.
pub fn tokenizer_path_for(model: &Path) -> PathBuf {
    model.with_extension("tokenizer.bin")
}

impl Loaded {
    /// Reads `model`, and `tokenizer` when given (otherwise a tokenizer next to the model is
    /// used if present: `<model>.tokenizer.bin`, then `tokenizer.bin`).
    pub fn read(model: &Path, tokenizer: Option<&Path>) -> Result<Self, String> {
        let bytes = std::fs::read(model).map_err(|error| format!("{}: {error}", model.display()))?;
        let candidates: Vec<PathBuf> = match tokenizer {
            Some(path) => vec![path.to_path_buf()],
            None => vec![tokenizer_path_for(model), model.with_file_name("tokenizer.bin")],
        };
        let mut found = None;
        for candidate in candidates {
            match std::fs::read(&candidate) {
                Ok(bytes) => {
                    found = Some((candidate, bytes));
                    break;
                }
                Err(error) if tokenizer.is_some() => return Err(format!("{}: {error}", candidate.display())),
                Err(_) => {}
            }
        }
        Ok(Self { model: bytes, tokenizer: found, model_path: model.to_path_buf() })
    }

    /// The model file's bytes.
    pub fn model_bytes(&self) -> &[u8] {
        &self.model
    }

    /// Parses the model.
    pub fn parse(&self) -> Result<ModelFile<'_>, String> {
        ModelFile::parse(&self.model).map_err(|error| format!("{}: {error}", self.model_path.display()))
    }

    /// The tokenizer of a parsed model: from GGUF metadata, or the llama2.c tokenizer file.
    pub fn tokenizer_of(&self, file: &ModelFile<'_>) -> Result<Tokenizer, String> {
        match (file.format, &file.gguf, &self.tokenizer) {
            (Format::Gguf, Some(gguf), _) => {
                Tokenizer::from_gguf(gguf).map_err(|error| format!("{}: {error}", self.model_path.display()))
            }
            (_, _, Some((path, bytes))) => Tokenizer::from_llama2c(bytes, file.config().vocab_size)
                .map_err(|error| format!("{}: {error}", path.display())),
            _ => Err("no tokenizer: pass --tokenizer tokenizer.bin".into()),
        }
    }

    /// Parses the model and its tokenizer.
    pub fn parse_with_tokenizer(&self) -> Result<(ModelFile<'_>, Tokenizer), String> {
        let file = self.parse()?;
        let tokenizer = self.tokenizer_of(&file)?;
        Ok((file, tokenizer))
    }
}
