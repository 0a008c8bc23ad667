//! Building a tokenizer's flat tables ([`super::tables`]): a GGUF vocabulary a bounded piece
//! at a time ([`TokenizerBuild`]), so a model loading in the background never holds up token
//! generation for the whole build, and a llama2.c `tokenizer.bin` in one go.
//!
//! The tables' size is known before the build starts (from the counts and byte lengths of the
//! metadata arrays), so the buffer is taken once, and the build writes every byte of the tables
//! it later reads: the indexes are cleared first, in pieces too.

#![forbid(unsafe_code)]

use alloc::string::ToString;

use super::{
    Tokenizer,
    bpe::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED, byte_to_char, char_to_byte},
    chat::MESSAGE_END,
    tables::{
        FLAG_CONTROL, FLAG_SPECIAL, MERGE_SLOT_BYTES, NONE, Table, Tables, TablesLayout, TokenizerKind,
        first_slot, hash_pair, hash_spelling, set_word, word,
    },
};
use crate::model::{
    ModelError, ModelErrorKind,
    gguf::{Array, MetadataSource, Value, ValueType},
    reader::Reader,
};

/// Longest token spelling accepted, in bytes: each token is copied in one piece.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Bytes of the indexes cleared per piece of work, and what a piece costs in units.
const CLEAR_BYTES: usize = 4096;
const CLEAR_COST: usize = 16;

/// Token bytes copied per unit of work (a token costs one unit plus one per this many bytes).
const TOKEN_BYTES_PER_UNIT: usize = 64;

fn invalid(offset: usize, reason: &'static str) -> ModelError {
    ModelError::new(offset, ModelErrorKind::InvalidTokenizer(reason))
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
    fn of(array: &Array<'_>) -> Self {
        Self { position: array.offset(), left: array.count, offset: array.offset() }
    }

    /// The next string of `bytes` (the file the run was taken from), or `None` at the end.
    fn next<'a>(&mut self, bytes: &'a [u8]) -> Result<Option<&'a str>, ModelError> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut reader = Reader::at(bytes, self.position);
        let length = reader.u64()?;
        if length > MAX_TOKEN_BYTES as u64 * 2 + 1 {
            return Err(invalid(self.offset, "a token or merge is longer than 4096 bytes"));
        }
        let text = core::str::from_utf8(reader.take(length)?)
            .map_err(|_| ModelError::new(self.position, ModelErrorKind::InvalidUtf8))?;
        self.position = reader.position();
        self.left -= 1;
        Ok(Some(text))
    }
}

/// The `tokenizer.ggml.token_type` array: each token's GGUF type, read by index.
#[derive(Clone, Copy, Debug)]
struct TokenTypes {
    element_type: ValueType,
    count: usize,
    offset: usize,
}

impl TokenTypes {
    /// The type of token `id` (0 past the array's end, as for a plain token).
    fn get(&self, bytes: &[u8], id: usize) -> Result<i32, ModelError> {
        if id >= self.count {
            return Ok(0);
        }
        let not_integers = || invalid(self.offset, "token types are not integers");
        let size = match self.element_type {
            ValueType::U8 | ValueType::I8 => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 => 4,
            ValueType::U64 | ValueType::I64 => 8,
            _ => return Err(not_integers()),
        };
        let mut reader = Reader::at(bytes, self.offset + id * size);
        match crate::model::gguf::read_value(&mut reader, self.element_type, 0, 0)? {
            Value::I32(value) => Ok(value),
            other => other.as_u64().and_then(|value| i32::try_from(value).ok()).ok_or_else(not_integers),
        }
    }
}

/// Whether `value_type` is an integer type (token types may be any of them).
fn is_integer(value_type: ValueType) -> bool {
    matches!(
        value_type,
        ValueType::U8
            | ValueType::I8
            | ValueType::U16
            | ValueType::I16
            | ValueType::U32
            | ValueType::I32
            | ValueType::U64
            | ValueType::I64
    )
}

/// Where a build is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Clearing the two indexes; bytes cleared so far (of both, the id index first).
    Clear(usize),
    /// Adding tokens, in id order.
    Tokens,
    /// Adding merges, in rank order.
    Merges,
    /// Finding each byte's token.
    Bytes,
    /// Heap-sorting the specials: the heap is being built from `next` down (when `building`),
    /// or the largest is being moved to `next` and the heap of `next` entries restored.
    Specials { building: bool, next: usize },
    /// Every table is written.
    Done,
}

/// A GGUF file's byte-level BPE tokenizer built into its flat tables a bounded piece at a time
/// ([`TokenizerBuild::step`]). It keeps no reference to the file or the tables: each step is
/// handed the same bytes again.
#[derive(Clone, Debug)]
pub struct TokenizerBuild {
    layout: TablesLayout,
    stage: Stage,
    tokens: StringRun,
    merges: StringRun,
    token_types: Option<TokenTypes>,
    next_id: usize,
    spelling_end: usize,
    decoded_end: usize,
    merge_rank: u32,
    bos: Option<u64>,
    eos: Option<u64>,
    unknown: Option<u32>,
}

impl TokenizerBuild {
    /// Checks the tokenizer metadata in `metadata` (model `gpt2`, the arrays' types) and plans
    /// the tables: [`TokenizerBuild::tables_bytes`] is the buffer the build needs.
    pub fn begin<'a>(metadata: &impl MetadataSource<'a>) -> Result<Self, ModelError> {
        let missing = |key: &str| ModelError::new(0, ModelErrorKind::MissingKey(key.to_string()));
        let model =
            metadata.string("tokenizer.ggml.model")?.ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(invalid(0, "only the gpt2 (byte-level BPE) tokenizer model is supported"));
        }
        let strings = |key: &str, reason| -> Result<Array<'a>, ModelError> {
            let array = metadata.array(key)?.ok_or_else(|| missing(key))?;
            if array.element_type != ValueType::String {
                return Err(invalid(array.offset(), reason));
            }
            Ok(array)
        };
        let tokens = strings("tokenizer.ggml.tokens", "tokens are not strings")?;
        let token_types = match metadata.array("tokenizer.ggml.token_type")? {
            // The element type is checked now, each value as its token is added.
            Some(types) if types.count > 0 && !is_integer(types.element_type) => {
                return Err(invalid(types.offset(), "token types are not integers"));
            }
            Some(types) => Some(TokenTypes {
                element_type: types.element_type,
                count: types.count,
                offset: types.offset(),
            }),
            None => None,
        };
        let merges = strings("tokenizer.ggml.merges", "merges are not strings")?;
        // Each string is its 8-byte length and its text.
        let spelling_bytes = tokens
            .byte_length()
            .checked_sub(8 * tokens.count)
            .ok_or_else(|| invalid(tokens.offset(), "the token array is shorter than its count"))?;
        let layout = TablesLayout::plan(TokenizerKind::Bpe, tokens.count, spelling_bytes, merges.count)
            .filter(|layout| u32::try_from(layout.total_bytes()).is_ok())
            .ok_or_else(|| invalid(tokens.offset(), "the vocabulary is too large"))?;
        let unknown =
            metadata.unsigned("tokenizer.ggml.unknown_token_id")?.and_then(|id| u32::try_from(id).ok());
        let mut layout = layout;
        layout.add_bos = metadata.is_true("tokenizer.ggml.add_bos_token")?;
        Ok(Self {
            layout,
            stage: Stage::Clear(0),
            tokens: StringRun::of(&tokens),
            merges: StringRun::of(&merges),
            token_types,
            next_id: 0,
            spelling_end: 0,
            decoded_end: 0,
            merge_rank: 0,
            bos: metadata.unsigned("tokenizer.ggml.bos_token_id")?,
            eos: metadata.unsigned("tokenizer.ggml.eos_token_id")?,
            unknown,
        })
    }

    /// Bytes of the buffer the tables need.
    pub fn tables_bytes(&self) -> usize {
        self.layout.total_bytes()
    }

    /// What the next step works on.
    pub fn next_work(&self) -> &'static str {
        match self.stage {
            Stage::Clear(_) => "clear the tokenizer's indexes",
            Stage::Tokens => "add tokens",
            Stage::Merges => "add merges",
            Stage::Bytes => "find the byte tokens",
            Stage::Specials { .. } => "sort the special tokens",
            Stage::Done => "tokenizer done",
        }
    }

    /// Tokens in the vocabulary being built.
    pub fn vocab_size(&self) -> usize {
        self.layout.vocab_size
    }

    /// Does up to about `units` units of work (a token, a merge, a few dozen bytes cleared or
    /// copied, a step of the specials' sort), reading `file` (the bytes `begin`'s metadata
    /// came from) and writing `tables` (at least [`TokenizerBuild::tables_bytes`] long).
    /// Returns whether every table is written.
    pub fn step(&mut self, file: &[u8], tables: &mut [u8], units: usize) -> Result<bool, ModelError> {
        if tables.len() < self.layout.total_bytes() {
            return Err(invalid(0, "the tokenizer's buffer is too small for its tables"));
        }
        let mut budget = units.max(1);
        while budget > 0 {
            let cost = match self.stage {
                Stage::Clear(done) => self.clear(tables, done),
                Stage::Tokens => self.token(file, tables)?,
                Stage::Merges => self.merge(file, tables)?,
                Stage::Bytes => self.bytes(tables),
                Stage::Specials { building, next } => self.sort_specials(tables, building, next),
                Stage::Done => return Ok(true),
            };
            budget = budget.saturating_sub(cost);
        }
        Ok(self.stage == Stage::Done)
    }

    /// Clears the next piece of the id and merge indexes (they are adjacent tables).
    fn clear(&mut self, tables: &mut [u8], done: usize) -> usize {
        let (start, _) = self.layout.table(Table::IdIndex);
        let (merge_start, merge_length) = self.layout.table(Table::MergeIndex);
        let total = merge_start + merge_length - start;
        let end = (done + CLEAR_BYTES).min(total);
        if let Some(piece) = tables.get_mut(start + done..start + end) {
            piece.fill(0);
        }
        if end == total {
            set_word(tables, self.layout.table(Table::SpellingOffsets).0, 0);
            set_word(tables, self.layout.table(Table::DecodedOffsets).0, 0);
            self.stage = Stage::Tokens;
        } else {
            self.stage = Stage::Clear(end);
        }
        CLEAR_COST
    }

    /// Adds the next token; returns its cost in units.
    fn token(&mut self, file: &[u8], tables: &mut [u8]) -> Result<usize, ModelError> {
        let Some(token) = self.tokens.next(file)? else {
            self.stage = Stage::Merges;
            return Ok(1);
        };
        let id = self.next_id;
        let spelling = token.as_bytes();
        if spelling.len() > MAX_TOKEN_BYTES {
            return Err(invalid(self.tokens.offset, "a token or merge is longer than 4096 bytes"));
        }
        let token_type = match self.token_types {
            Some(types) => types.get(file, id)?,
            None => 0,
        };
        let special = matches!(token_type, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED);
        let overflow = || invalid(self.tokens.offset, "the tokens do not fit their tables");
        // Spelling.
        let (spelling_start, spelling_length) = self.layout.table(Table::Spelling);
        let at = spelling_start + self.spelling_end;
        if self.spelling_end + spelling.len() > spelling_length {
            return Err(overflow());
        }
        tables[at..at + spelling.len()].copy_from_slice(spelling);
        self.spelling_end += spelling.len();
        set_word(
            tables,
            self.layout.table(Table::SpellingOffsets).0 + 4 * (id + 1),
            self.spelling_end as u32,
        );
        // Decoded bytes: GPT-2's byte characters mapped back, or the spelling itself for a
        // special token or one with a character outside the byte map.
        let (decoded_start, decoded_length) = self.layout.table(Table::Decoded);
        let at = decoded_start + self.decoded_end;
        if self.decoded_end + spelling.len() > decoded_length {
            return Err(overflow());
        }
        let mut length = 0;
        let mapped = !special
            && token.chars().all(|character| match char_to_byte(character) {
                Some(byte) => {
                    tables[at + length] = byte;
                    length += 1;
                    true
                }
                None => false,
            });
        if !mapped {
            tables[at..at + spelling.len()].copy_from_slice(spelling);
            length = spelling.len();
        }
        self.decoded_end += length;
        set_word(tables, self.layout.table(Table::DecodedOffsets).0 + 4 * (id + 1), self.decoded_end as u32);
        // Flags, specials and the id index.
        let flags = if token_type == TOKEN_TYPE_CONTROL { FLAG_CONTROL } else { 0 }
            | if special { FLAG_SPECIAL } else { 0 };
        tables[self.layout.table(Table::Flags).0 + id] = flags;
        if special && !spelling.is_empty() {
            set_word(tables, self.layout.table(Table::Specials).0 + 4 * self.layout.specials, id as u32);
            self.layout.specials += 1;
        }
        self.insert_id(tables, id as u32);
        self.next_id += 1;
        Ok(1 + spelling.len() / TOKEN_BYTES_PER_UNIT)
    }

    /// Puts `id` in the id index, unless a token spelled the same is there (the first wins).
    fn insert_id(&self, tables: &mut [u8], id: u32) {
        let spelling = Tables { bytes: tables, layout: &self.layout }.spelling(id);
        let slots = self.layout.id_slots;
        let start = self.layout.table(Table::IdIndex).0;
        let mut slot = first_slot(hash_spelling(&[spelling]), slots);
        for _ in 0..slots {
            let stored = word(tables, start + 4 * slot);
            if stored == 0 {
                set_word(tables, start + 4 * slot, id + 1);
                return;
            }
            if (Tables { bytes: tables, layout: &self.layout }).spelling(stored - 1) == spelling {
                return;
            }
            slot = (slot + 1) & (slots - 1);
        }
    }

    /// Adds the next merge ("left right"; earlier merges have priority); returns its cost.
    fn merge(&mut self, file: &[u8], tables: &mut [u8]) -> Result<usize, ModelError> {
        let Some(merge) = self.merges.next(file)? else {
            self.stage = Stage::Bytes;
            return Ok(1);
        };
        let bad = || invalid(self.merges.offset, "a merge names unknown tokens");
        let (left, right) = merge.split_once(' ').ok_or_else(bad)?;
        let view = Tables { bytes: tables, layout: &self.layout };
        let find = |parts: &[&[u8]]| view.find(parts).ok_or_else(bad);
        let (left_id, right_id) = (find(&[left.as_bytes()])?, find(&[right.as_bytes()])?);
        let merged = find(&[left.as_bytes(), right.as_bytes()])?;
        let rank = self.merge_rank;
        self.merge_rank += 1;
        let slots = self.layout.merge_slots;
        let start = self.layout.table(Table::MergeIndex).0;
        let mut slot = first_slot(hash_pair(left_id, right_id), slots);
        for _ in 0..slots {
            let at = start + slot * MERGE_SLOT_BYTES;
            let stored_left = word(tables, at);
            if stored_left == 0 {
                for (index, value) in [left_id + 1, right_id, rank, merged].into_iter().enumerate() {
                    set_word(tables, at + 4 * index, value);
                }
                break;
            }
            if stored_left == left_id + 1 && word(tables, at + 4) == right_id {
                break;
            }
            slot = (slot + 1) & (slots - 1);
        }
        Ok(1 + merge.len() / TOKEN_BYTES_PER_UNIT)
    }

    /// Finds the token of each byte value (GPT-2's character for it, alone).
    fn bytes(&mut self, tables: &mut [u8]) -> usize {
        let start = self.layout.table(Table::ByteTokens).0;
        let mut spelled = [0u8; 4];
        for byte in 0..=255u8 {
            let character = byte_to_char(byte).encode_utf8(&mut spelled).as_bytes();
            let id = Tables { bytes: tables, layout: &self.layout }.find(&[character]).unwrap_or(NONE);
            set_word(tables, start + 4 * usize::from(byte), id);
        }
        let count = self.layout.specials;
        self.stage = Stage::Specials { building: true, next: count / 2 };
        256
    }

    /// One step of the heap sort that orders the specials longest first, then by id.
    fn sort_specials(&mut self, tables: &mut [u8], building: bool, next: usize) -> usize {
        let count = self.layout.specials;
        let start = self.layout.table(Table::Specials).0;
        let mut specials = SpecialHeap { tables, layout: &self.layout, start };
        self.stage = if building {
            if next == 0 {
                Stage::Specials { building: false, next: count }
            } else {
                specials.sift_down(next - 1, count);
                Stage::Specials { building: true, next: next - 1 }
            }
        } else if next <= 1 {
            Stage::Done
        } else {
            specials.swap(0, next - 1);
            specials.sift_down(0, next - 1);
            Stage::Specials { building: false, next: next - 1 }
        };
        8
    }

    /// The finished tokenizer over `tables` (the buffer every step wrote), once
    /// [`TokenizerBuild::step`] returned `true`; checks the special tokens against the
    /// vocabulary.
    pub fn finish<T: core::ops::Deref<Target = [u8]>>(self, tables: T) -> Result<Tokenizer<T>, ModelError> {
        let layout = self.finish_layout(&tables)?;
        Ok(Tokenizer::from_parts(tables, layout))
    }

    /// The finished tables' layout (see [`TokenizerBuild::finish`]), the tables staying where
    /// they are.
    pub fn finish_layout(&self, tables: &[u8]) -> Result<TablesLayout, ModelError> {
        if self.stage != Stage::Done {
            return Err(invalid(self.tokens.offset, "the tokenizer build was not completed"));
        }
        let mut layout = self.layout;
        let vocab_size = layout.vocab_size;
        let special = |id: Option<u64>| -> Result<Option<u32>, ModelError> {
            match id {
                None => Ok(None),
                Some(id) => match u32::try_from(id) {
                    Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
                    _ => Err(invalid(0, "a special token id is past the end of the vocabulary")),
                },
            }
        };
        layout.bos = special(self.bos)?;
        layout.eos = special(self.eos)?;
        layout.unknown = self.unknown.filter(|id| (*id as usize) < vocab_size);
        layout.message_end = Tables { bytes: tables, layout: &layout }.find(&[MESSAGE_END.as_bytes()]);
        Ok(layout)
    }
}

/// The specials table as a binary heap whose largest entry is the one that sorts last
/// (shortest, then highest id).
struct SpecialHeap<'b> {
    tables: &'b mut [u8],
    layout: &'b TablesLayout,
    start: usize,
}

impl SpecialHeap<'_> {
    fn get(&self, index: usize) -> u32 {
        word(self.tables, self.start + 4 * index)
    }

    /// The sort key: longest first, then lowest id.
    fn key(&self, index: usize) -> (core::cmp::Reverse<usize>, u32) {
        let id = self.get(index);
        let length = Tables { bytes: self.tables, layout: self.layout }.spelling(id).len();
        (core::cmp::Reverse(length), id)
    }

    fn swap(&mut self, first: usize, second: usize) {
        let (a, b) = (self.get(first), self.get(second));
        set_word(self.tables, self.start + 4 * first, b);
        set_word(self.tables, self.start + 4 * second, a);
    }

    /// Restores the heap below `index`, among the first `count` entries.
    fn sift_down(&mut self, mut index: usize, count: usize) {
        loop {
            let mut largest = index;
            for child in [2 * index + 1, 2 * index + 2] {
                if child < count && self.key(child) > self.key(largest) {
                    largest = child;
                }
            }
            if largest == index {
                return;
            }
            self.swap(index, largest);
            index = largest;
        }
    }
}

/// Plans the tables of a llama2.c vocabulary of `tokens`. The vocabulary must hold the three
/// special tokens and the 256 byte tokens (`<0xXX>`) after them: a character without a token
/// of its own is encoded as its byte tokens, which must be inside the vocabulary.
pub fn plan_score(tokens: &[&[u8]]) -> Result<TablesLayout, ModelError> {
    let needed = super::score::BYTE_OFFSET as usize + 256;
    if tokens.len() < needed {
        return Err(invalid(
            0,
            "a llama2.c vocabulary needs its 3 special and 256 byte tokens (259 at least)",
        ));
    }
    let spelling_bytes = tokens.iter().map(|token| token.len()).sum();
    TablesLayout::plan(TokenizerKind::Score, tokens.len(), spelling_bytes, 0)
        .filter(|layout| u32::try_from(layout.total_bytes()).is_ok())
        .ok_or_else(|| invalid(0, "the vocabulary is too large"))
}

/// Writes the tables of a llama2.c vocabulary (each token's bytes and score) into `tables`,
/// laid out as `layout` (from [`plan_score`]), in one go, and returns the tokenizer.
pub fn build_score<T: core::ops::DerefMut<Target = [u8]>>(
    tokens: &[&[u8]],
    scores: &[f32],
    layout: TablesLayout,
    mut tables: T,
) -> Result<Tokenizer<T>, ModelError> {
    if tables.len() < layout.total_bytes() {
        return Err(invalid(0, "the tokenizer's buffer is too small for its tables"));
    }
    let bytes = &mut *tables;
    bytes[layout.range(Table::IdIndex)].fill(0);
    let (offsets, spelling_start) = (layout.table(Table::SpellingOffsets).0, layout.table(Table::Spelling).0);
    let mut end = 0usize;
    set_word(bytes, offsets, 0);
    for (id, token) in tokens.iter().enumerate() {
        bytes[spelling_start + end..spelling_start + end + token.len()].copy_from_slice(token);
        end += token.len();
        set_word(bytes, offsets + 4 * (id + 1), end as u32);
        let score = scores.get(id).copied().unwrap_or(0.0);
        set_word(bytes, layout.table(Table::Scores).0 + 4 * id, score.to_bits());
        bytes[layout.table(Table::Flags).0 + id] = 0;
    }
    let build = TokenizerBuild {
        layout,
        stage: Stage::Done,
        tokens: StringRun { position: 0, left: 0, offset: 0 },
        merges: StringRun { position: 0, left: 0, offset: 0 },
        token_types: None,
        next_id: tokens.len(),
        spelling_end: end,
        decoded_end: 0,
        merge_rank: 0,
        bos: Some(u64::from(super::score::BOS)),
        eos: Some(u64::from(super::score::EOS)),
        unknown: None,
    };
    for id in 0..tokens.len() {
        build.insert_id(bytes, id as u32);
    }
    let mut layout = layout;
    layout.bos = Some(super::score::BOS);
    layout.eos = Some(super::score::EOS);
    layout.add_bos = true;
    layout.message_end = Tables { bytes, layout: &layout }.find(&[MESSAGE_END.as_bytes()]);
    Ok(Tokenizer::from_parts(tables, layout))
}
