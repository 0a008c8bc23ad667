//! Tokenizers: llama2.c's score-based merges and GPT-2-style byte-level BPE from GGUF
//! metadata, behind one [`Tokenizer`] type; plus the chat template and streaming decoding.
//!
//! A tokenizer is a view over its flat tables ([`tables`]): one byte buffer holding the
//! vocabulary, its indexes and its merges, with no allocation per token. On the host the
//! buffer is a `Vec<u8>`; in the kernel it is a weights-pool buffer that lives and dies with
//! its model. The tables are built in bounded steps ([`build::TokenizerBuild`]).

#![forbid(unsafe_code)]

pub mod bpe;
pub mod build;
pub mod chat;
pub mod pretokenize;
pub mod score;
pub mod stream;
pub mod tables;

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Deref;

use crate::model::ModelError;
use crate::model::gguf::GgufFile;
use crate::model::llama2c::TokenizerFile;
pub use build::TokenizerBuild;
pub use stream::StreamDecoder;
use tables::{FLAG_CONTROL, Tables};
pub use tables::{TablesLayout, TokenizerKind};

/// A model's tokenizer: its tables (`Vec<u8>` on the host, a pool buffer or a borrowed slice
/// in the kernel) and where each table lies in them.
#[derive(Clone, Debug)]
pub struct Tokenizer<T: Deref<Target = [u8]> = Vec<u8>> {
    tables: T,
    layout: TablesLayout,
}

impl Tokenizer {
    /// Reads a llama2.c `tokenizer.bin` for a vocabulary of `vocab_size`.
    pub fn from_llama2c(bytes: &[u8], vocab_size: usize) -> Result<Self, ModelError> {
        let file = TokenizerFile::parse(bytes, vocab_size)?;
        let layout = build::plan_score(&file.tokens)?;
        build::build_score(&file.tokens, &file.scores, layout, alloc::vec![0; layout.total_bytes()])
    }

    /// Builds the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`, model `gpt2`).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self, ModelError> {
        let mut build = TokenizerBuild::begin(file)?;
        let mut tables = alloc::vec![0; build.tables_bytes()];
        while !build.step(file.bytes(), &mut tables, usize::MAX)? {}
        build.finish(tables)
    }
}

impl<T: Deref<Target = [u8]>> Tokenizer<T> {
    /// The tokenizer whose tables, laid out as `layout`, are in `tables` (written by a build).
    pub fn from_parts(tables: T, layout: TablesLayout) -> Self {
        Self { tables, layout }
    }

    /// Where the tables lie, and the tokenizer's numbers.
    pub fn layout(&self) -> &TablesLayout {
        &self.layout
    }

    /// The buffer the tables are in.
    pub fn into_tables(self) -> T {
        self.tables
    }

    /// The same tokenizer over a borrowed view of the tables.
    pub fn borrowed(&self) -> Tokenizer<&[u8]> {
        Tokenizer { tables: &self.tables, layout: self.layout }
    }

    fn view(&self) -> Tables<'_> {
        Tables { bytes: &self.tables, layout: &self.layout }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.layout.vocab_size
    }

    /// Bytes of the tables.
    pub fn tables_bytes(&self) -> usize {
        self.layout.total_bytes()
    }

    /// Appends the tokens of `text` to `out` (no BOS).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        match self.layout.kind {
            TokenizerKind::Score => score::encode(self.view(), text, out),
            TokenizerKind::Bpe => bpe::encode(self.view(), self.layout.unknown, text, out),
        }
    }

    /// The bytes token `id` contributes to the text when it follows `previous`.
    pub fn decode(&self, previous: Option<u32>, id: u32) -> &[u8] {
        match self.layout.kind {
            TokenizerKind::Score => score::decode(self.view(), previous, id),
            TokenizerKind::Bpe => self.view().decoded(id),
        }
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.layout.bos
    }

    /// Whether a plain (non-chat) prompt starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.layout.add_bos && self.layout.bos.is_some()
    }

    /// The token as the vocabulary spells it (GPT-2 byte characters for BPE), for display.
    pub fn spelling(&self, id: u32) -> Option<String> {
        ((id as usize) < self.layout.vocab_size)
            .then(|| String::from_utf8_lossy(self.view().spelling(id)).into_owned())
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.layout.eos
    }

    /// The token spelled exactly `text`, such as `<|im_start|>`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.view().find(&[text.as_bytes()])
    }

    /// Whether token `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.view().flags(id) & FLAG_CONTROL != 0
    }

    /// Whether generation should stop after `id`: end of sequence, or the end of a chat turn.
    pub fn is_stop(&self, id: u32) -> bool {
        Some(id) == self.layout.eos || Some(id) == self.layout.message_end
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{
        gguf::ValueType,
        write::{GgufWriter, WriteValue},
    };
    use alloc::string::ToString;

    /// A GGUF file holding only a gpt2 tokenizer: `tokens` with `types` (may be empty),
    /// `merges` and the unknown token.
    pub(crate) fn tokenizer_file(
        tokens: &[String],
        types: &[i32],
        merges: &[&str],
        unknown: Option<u32>,
    ) -> Vec<u8> {
        let strings = |items: &mut dyn Iterator<Item = String>| {
            WriteValue::Array(ValueType::String, items.map(WriteValue::String).collect())
        };
        let mut writer = GgufWriter::new();
        writer.metadata("tokenizer.ggml.model", WriteValue::String("gpt2".into()));
        writer.metadata("tokenizer.ggml.tokens", strings(&mut tokens.iter().cloned()));
        if !types.is_empty() {
            writer.metadata(
                "tokenizer.ggml.token_type",
                WriteValue::Array(
                    ValueType::I32,
                    types.iter().map(|&value| WriteValue::I32(value)).collect(),
                ),
            );
        }
        writer.metadata("tokenizer.ggml.merges", strings(&mut merges.iter().map(|merge| merge.to_string())));
        if let Some(unknown) = unknown {
            writer.metadata("tokenizer.ggml.unknown_token_id", WriteValue::U32(unknown));
        }
        writer.finish()
    }

    /// [`tokenizer_file`]'s tokenizer, or why it was refused.
    pub(crate) fn try_tokenizer_with(
        tokens: &[String],
        types: &[i32],
        merges: &[&str],
        unknown: Option<u32>,
    ) -> Result<Tokenizer, ModelError> {
        let bytes = tokenizer_file(tokens, types, merges, unknown);
        Tokenizer::from_gguf(&GgufFile::parse(&bytes)?)
    }

    /// [`tokenizer_file`]'s tokenizer.
    pub(crate) fn tokenizer_with(
        tokens: &[String],
        types: &[i32],
        merges: &[&str],
        unknown: Option<u32>,
    ) -> Tokenizer {
        try_tokenizer_with(tokens, types, merges, unknown).unwrap()
    }
}
