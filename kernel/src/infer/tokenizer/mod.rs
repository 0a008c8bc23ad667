//! Tokenizers: llama2.c's score-based merges and GPT-2-style byte-level BPE from GGUF
//! metadata, behind one [`Tokenizer`] type; plus the chat template and streaming decoding.

#![forbid(unsafe_code)]

pub mod bpe;
pub mod chat;
pub mod pretokenize;
pub mod score;
pub mod stream;

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::model::gguf::{GgufFile, Value};
use crate::model::llama2c::TokenizerFile;
use crate::model::{ModelError, ModelErrorKind};
pub use bpe::BpeTokenizer;
pub use score::ScoreTokenizer;
pub use stream::StreamDecoder;

/// A model's tokenizer.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    /// llama2.c's `tokenizer.bin`.
    Score(ScoreTokenizer),
    /// Byte-level BPE from GGUF metadata.
    Bpe {
        /// The vocabulary and merges.
        tokenizer: Box<BpeTokenizer>,
        /// Beginning-of-sequence token, when the model has one.
        bos: Option<u32>,
        /// End-of-sequence token, when the model has one.
        eos: Option<u32>,
        /// Whether a prompt starts with BOS (`tokenizer.ggml.add_bos_token`).
        add_bos: bool,
    },
}

impl Tokenizer {
    /// Reads a llama2.c `tokenizer.bin` for a vocabulary of `vocab_size`.
    pub fn from_llama2c(bytes: &[u8], vocab_size: usize) -> Result<Self, ModelError> {
        let file = TokenizerFile::parse(bytes, vocab_size)?;
        Ok(Tokenizer::Score(ScoreTokenizer::new(
            file.tokens.iter().map(|token| token.to_vec()).collect(),
            file.scores,
        )))
    }

    /// Builds the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`, model `gpt2`).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self, ModelError> {
        let invalid =
            |offset: usize, reason| ModelError::new(offset, ModelErrorKind::InvalidTokenizer(reason));
        let missing = |key: &str| ModelError::new(0, ModelErrorKind::MissingKey(key.to_string()));
        let model = file.string("tokenizer.ggml.model")?.ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(invalid(0, "only the gpt2 (byte-level BPE) tokenizer model is supported"));
        }
        let tokens = file.array("tokenizer.ggml.tokens")?.ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let tokens: Vec<String> = tokens
            .strings()
            .ok_or_else(|| invalid(tokens.offset(), "tokens are not strings"))?
            .map(String::from)
            .collect();
        let token_types: Vec<i32> = match file.array("tokenizer.ggml.token_type")? {
            Some(types) => types
                .iter()
                .map(|value| match value {
                    Value::I32(value) => Some(value),
                    other => other.as_u64().and_then(|value| i32::try_from(value).ok()),
                })
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(|| invalid(types.offset(), "token types are not integers"))?,
            None => Vec::new(),
        };
        let merges = file.array("tokenizer.ggml.merges")?.ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let merge_strings =
            merges.strings().ok_or_else(|| invalid(merges.offset(), "merges are not strings"))?;
        let unknown = file.unsigned("tokenizer.ggml.unknown_token_id")?.and_then(|id| u32::try_from(id).ok());
        let tokenizer = BpeTokenizer::new(tokens, token_types, merge_strings, unknown).map_err(|error| {
            invalid(
                merges.offset(),
                match error {
                    bpe::BpeError::BadMerge(_) => "a merge names unknown tokens",
                    bpe::BpeError::TooManyTokens => "too many tokens",
                },
            )
        })?;
        let special = |key: &str| -> Result<Option<u32>, ModelError> {
            match file.unsigned(key)? {
                None => Ok(None),
                Some(id) => match u32::try_from(id) {
                    Ok(id) if (id as usize) < tokenizer.vocab_size() => Ok(Some(id)),
                    _ => Err(invalid(0, "a special token id is past the end of the vocabulary")),
                },
            }
        };
        let bos = special("tokenizer.ggml.bos_token_id")?;
        let eos = special("tokenizer.ggml.eos_token_id")?;
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(value)) => *value,
            _ => false,
        };
        Ok(Tokenizer::Bpe { tokenizer: Box::new(tokenizer), bos, eos, add_bos })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Score(tokenizer) => tokenizer.vocab_size(),
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.vocab_size(),
        }
    }

    /// Appends the tokens of `text` to `out` (no BOS).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        match self {
            Tokenizer::Score(tokenizer) => tokenizer.encode(text, out),
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.encode(text, out),
        }
    }

    /// The bytes token `id` contributes to the text when it follows `previous`.
    pub fn decode(&self, previous: Option<u32>, id: u32) -> Vec<u8> {
        match self {
            Tokenizer::Score(tokenizer) => tokenizer.decode(previous, id),
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.decode(id).to_vec(),
        }
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        match self {
            Tokenizer::Score(_) => Some(score::BOS),
            Tokenizer::Bpe { bos, .. } => *bos,
        }
    }

    /// Whether a plain (non-chat) prompt starts with BOS.
    pub fn adds_bos(&self) -> bool {
        match self {
            Tokenizer::Score(_) => true,
            Tokenizer::Bpe { add_bos, bos, .. } => *add_bos && bos.is_some(),
        }
    }

    /// The token as the vocabulary spells it (GPT-2 byte characters for BPE), for display.
    pub fn spelling(&self, id: u32) -> Option<String> {
        match self {
            Tokenizer::Score(tokenizer) => Some(String::from_utf8_lossy(tokenizer.bytes(id)).into_owned()),
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.spelling(id).map(String::from),
        }
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        match self {
            Tokenizer::Score(_) => Some(score::EOS),
            Tokenizer::Bpe { eos, .. } => *eos,
        }
    }

    /// The token spelled exactly `text`, such as `<|im_end|>`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self {
            Tokenizer::Score(tokenizer) => tokenizer.token_id(text.as_bytes()),
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.token_id(text),
        }
    }

    /// Whether generation should stop after `id`: end of sequence, or the end of a chat turn.
    pub fn is_stop(&self, id: u32) -> bool {
        Some(id) == self.eos() || Some(id) == self.token_id(chat::MESSAGE_END)
    }
}
