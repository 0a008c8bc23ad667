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
use crate::model::reader::Reader;
use crate::model::{ModelError, ModelErrorKind};
pub use bpe::{BpeBuilder, BpeTokenizer};
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
        let mut build = TokenizerBuild::begin(file)?;
        while !build.step(file.bytes(), usize::MAX)? {}
        build.finish()
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Score(tokenizer) => tokenizer.vocab_size(),
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.vocab_size(),
        }
    }

    /// Frees up to `units` of a retired tokenizer's allocations; returns whether it is empty
    /// (a llama2.c tokenizer is left whole for its drop). The tokenizer is unusable afterwards.
    pub fn shed(&mut self, units: usize) -> bool {
        match self {
            Tokenizer::Score(_) => true,
            Tokenizer::Bpe { tokenizer, .. } => tokenizer.shed(units),
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

/// Strings of a GGUF array still to be read: where the next one starts and how many are left.
#[derive(Clone, Copy, Debug)]
struct StringRun {
    position: usize,
    left: usize,
    /// Offset of the array in the file, for errors.
    offset: usize,
}

impl StringRun {
    /// The next string of `bytes` (the file the run was taken from), or `None` at the end.
    fn next<'a>(&mut self, bytes: &'a [u8]) -> Result<Option<&'a str>, ModelError> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut reader = Reader::at(bytes, self.position);
        let length = reader.u64()?;
        let text = core::str::from_utf8(reader.take(length)?)
            .map_err(|_| ModelError::new(self.position, ModelErrorKind::InvalidUtf8))?;
        self.position = reader.position();
        self.left -= 1;
        Ok(Some(text))
    }
}

/// A GGUF file's tokenizer built a bounded piece at a time ([`TokenizerBuild::step`]), so a
/// model loading in the background never holds up token generation for the whole build. It
/// keeps no reference to the file: each step is handed the same bytes again.
#[derive(Clone, Debug)]
pub struct TokenizerBuild {
    builder: BpeBuilder,
    tokens: StringRun,
    merges: StringRun,
    bos: Option<u64>,
    eos: Option<u64>,
    add_bos: bool,
}

impl TokenizerBuild {
    /// Checks the tokenizer metadata of `file` (model `gpt2`, the arrays' types, the token
    /// types) and prepares the build.
    pub fn begin(file: &GgufFile<'_>) -> Result<Self, ModelError> {
        let invalid =
            |offset: usize, reason| ModelError::new(offset, ModelErrorKind::InvalidTokenizer(reason));
        let missing = |key: &str| ModelError::new(0, ModelErrorKind::MissingKey(key.to_string()));
        let model = file.string("tokenizer.ggml.model")?.ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(invalid(0, "only the gpt2 (byte-level BPE) tokenizer model is supported"));
        }
        let strings = |key: &str, reason| -> Result<StringRun, ModelError> {
            let array = file.array(key)?.ok_or_else(|| missing(key))?;
            if array.element_type != crate::model::gguf::ValueType::String {
                return Err(invalid(array.offset(), reason));
            }
            Ok(StringRun { position: array.offset(), left: array.count, offset: array.offset() })
        };
        let tokens = strings("tokenizer.ggml.tokens", "tokens are not strings")?;
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
        let merges = strings("tokenizer.ggml.merges", "merges are not strings")?;
        let unknown = file.unsigned("tokenizer.ggml.unknown_token_id")?.and_then(|id| u32::try_from(id).ok());
        let bos = file.unsigned("tokenizer.ggml.bos_token_id")?;
        let eos = file.unsigned("tokenizer.ggml.eos_token_id")?;
        let add_bos = matches!(file.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        Ok(Self { builder: BpeBuilder::new(token_types, unknown), tokens, merges, bos, eos, add_bos })
    }

    /// Adds up to `units` more tokens or merges, read from `bytes` (the file `begin` was given).
    /// Returns whether every token and merge is in.
    pub fn step(&mut self, bytes: &[u8], units: usize) -> Result<bool, ModelError> {
        let bad_merge = |offset: usize, error| {
            ModelError::new(
                offset,
                ModelErrorKind::InvalidTokenizer(match error {
                    bpe::BpeError::BadMerge(_) => "a merge names unknown tokens",
                    bpe::BpeError::TooManyTokens => "too many tokens",
                }),
            )
        };
        for _ in 0..units {
            if let Some(token) = self.tokens.next(bytes)? {
                let offset = self.tokens.offset;
                self.builder.push_token(String::from(token)).map_err(|error| bad_merge(offset, error))?;
            } else if let Some(merge) = self.merges.next(bytes)? {
                let offset = self.merges.offset;
                self.builder.push_merge(merge).map_err(|error| bad_merge(offset, error))?;
            } else {
                return Ok(true);
            }
        }
        Ok(self.tokens.left == 0 && self.merges.left == 0)
    }

    /// Tokens and merges still to add.
    pub fn remaining(&self) -> usize {
        self.tokens.left + self.merges.left
    }

    /// The finished tokenizer, once [`TokenizerBuild::step`] has returned `true`; checks the
    /// special tokens against the vocabulary.
    pub fn finish(self) -> Result<Tokenizer, ModelError> {
        if self.remaining() > 0 {
            return Err(ModelError::new(
                self.tokens.offset,
                ModelErrorKind::InvalidTokenizer("the tokenizer build was not completed"),
            ));
        }
        let tokenizer = self.builder.finish();
        let special = |id: Option<u64>| -> Result<Option<u32>, ModelError> {
            match id {
                None => Ok(None),
                Some(id) => match u32::try_from(id) {
                    Ok(id) if (id as usize) < tokenizer.vocab_size() => Ok(Some(id)),
                    _ => Err(ModelError::new(
                        0,
                        ModelErrorKind::InvalidTokenizer(
                            "a special token id is past the end of the vocabulary",
                        ),
                    )),
                },
            }
        };
        let bos = special(self.bos)?;
        let eos = special(self.eos)?;
        Ok(Tokenizer::Bpe { tokenizer: Box::new(tokenizer), bos, eos, add_bos: self.add_bos })
    }
}
