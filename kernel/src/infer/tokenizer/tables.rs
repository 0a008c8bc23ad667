//! The tokenizer's flat tables: a vocabulary and its lookup structures as a few arrays in one
//! byte buffer, with no allocation per token, so a model's tokenizer lives in one buffer of
//! the weights pool beside the model and goes back to the pool in one piece.
//!
//! [`TablesLayout`] says where each table lies in the buffer; all numbers are little-endian
//! `u32`s (scores `f32`s), every table starts on a 4-byte boundary:
//!
//! | table | contents |
//! | --- | --- |
//! | spelling offsets, spelling | token `i` is spelled `spelling[offsets[i]..offsets[i + 1]]` (the GGUF string, or llama2.c's bytes) |
//! | decoded offsets, decoded | the bytes token `i` stands for (byte-level BPE: the GPT-2 byte characters mapped back) |
//! | flags | one byte per token: control, special |
//! | id index | open addressing (linear probing) from a spelling's hash to `id + 1`; 0 is empty |
//! | merge index | open addressing from a pair of ids to `[left + 1, right, rank, merged]`; 0 is empty |
//! | byte tokens | the token of each byte value, or `NONE` |
//! | specials | ids of the tokens matched verbatim in text, longest first |
//! | scores | llama2.c merge scores |
//!
//! Both indexes hold at most half as many entries as slots, so a probe ends after a couple
//! of slots; a lookup stops after `capacity` slots whatever the buffer holds, so a damaged
//! buffer gives wrong answers, never a hang or a panic.

#![forbid(unsafe_code)]

/// A word that stands for "no token".
pub const NONE: u32 = u32::MAX;

/// The flag of a control token (`<|im_start|>` and the like).
pub const FLAG_CONTROL: u8 = 1;
/// The flag of a token matched verbatim in text (control and user-defined tokens).
pub const FLAG_SPECIAL: u8 = 2;

/// Bytes of one merge-index slot.
pub const MERGE_SLOT_BYTES: usize = 16;

/// Fibonacci hashing's multiplier (2^64 / φ).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Which algorithm the tables serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2-style byte-level BPE from GGUF metadata.
    Bpe,
    /// llama2.c's score-based merges.
    Score,
}

/// The tables, in buffer order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `vocab + 1` offsets into [`Table::Spelling`].
    SpellingOffsets,
    /// Every token's spelling, one after the other.
    Spelling,
    /// `vocab + 1` offsets into [`Table::Decoded`] (BPE).
    DecodedOffsets,
    /// Every token's decoded bytes (BPE).
    Decoded,
    /// One flag byte per token.
    Flags,
    /// Spelling hash to id.
    IdIndex,
    /// Id pair to merge (BPE).
    MergeIndex,
    /// 256 byte tokens (BPE).
    ByteTokens,
    /// Special token ids, longest first (BPE; room for every token).
    Specials,
    /// One score per token (llama2.c).
    Scores,
}

/// How many tables there are.
pub const TABLES: usize = 10;

/// Where each table lies in a tokenizer's buffer, and the numbers the tokenizer needs beside
/// them. Made when the build is planned (from the counts in the model's metadata), completed
/// when it finishes; kept beside the buffer, not in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TablesLayout {
    /// The algorithm.
    pub kind: TokenizerKind,
    /// Tokens.
    pub vocab_size: usize,
    /// Slots of the id index (a power of two).
    pub id_slots: usize,
    /// Slots of the merge index (a power of two, or 0 without merges).
    pub merge_slots: usize,
    /// Special tokens listed in [`Table::Specials`].
    pub specials: usize,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// The token standing for a byte without a token of its own.
    pub unknown: Option<u32>,
    /// Whether a plain prompt starts with BOS.
    pub add_bos: bool,
    /// The end-of-turn token of the chat template, when the vocabulary has one.
    pub message_end: Option<u32>,
    tables: [(usize, usize); TABLES],
    total: usize,
}

/// Slots for an index of `entries`: a power of two at least twice as many, at least 16.
fn slots_for(entries: usize) -> Option<usize> {
    entries.checked_mul(2)?.max(16).checked_next_power_of_two()
}

impl TablesLayout {
    /// The layout for `vocab_size` tokens spelled in `spelling_bytes` bytes in all, with
    /// `merges` merges (BPE); `None` when the sizes overflow.
    pub fn plan(
        kind: TokenizerKind,
        vocab_size: usize,
        spelling_bytes: usize,
        merges: usize,
    ) -> Option<Self> {
        let bpe = kind == TokenizerKind::Bpe;
        let id_slots = slots_for(vocab_size)?;
        let merge_slots = if bpe && merges > 0 { slots_for(merges)? } else { 0 };
        let offsets = vocab_size.checked_add(1)?.checked_mul(4)?;
        let words = vocab_size.checked_mul(4)?;
        let sizes: [usize; TABLES] = [
            offsets,
            spelling_bytes,
            if bpe { offsets } else { 0 },
            if bpe { spelling_bytes } else { 0 },
            vocab_size,
            id_slots.checked_mul(4)?,
            merge_slots.checked_mul(MERGE_SLOT_BYTES)?,
            if bpe { 256 * 4 } else { 0 },
            if bpe { words } else { 0 },
            if bpe { 0 } else { words },
        ];
        let mut tables = [(0, 0); TABLES];
        let mut cursor = 0usize;
        for (table, size) in tables.iter_mut().zip(sizes) {
            *table = (cursor, size);
            cursor = cursor.checked_add(size)?.checked_next_multiple_of(4)?;
        }
        Some(Self {
            kind,
            vocab_size,
            id_slots,
            merge_slots,
            specials: 0,
            bos: None,
            eos: None,
            unknown: None,
            add_bos: false,
            message_end: None,
            tables,
            total: cursor,
        })
    }

    /// Bytes of the buffer the tables need.
    pub fn total_bytes(&self) -> usize {
        self.total
    }

    /// Where `table` starts and how long it is.
    pub fn table(&self, table: Table) -> (usize, usize) {
        self.tables[table as usize]
    }

    /// The byte range of `table`.
    pub fn range(&self, table: Table) -> core::ops::Range<usize> {
        let (start, length) = self.table(table);
        start..start + length
    }
}

/// The `u32` at byte `at` of `bytes`, or [`NONE`] past the end.
pub fn word(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at.wrapping_add(4)) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => NONE,
    }
}

/// Writes `value` at byte `at` of `bytes` (nothing past the end).
pub fn set_word(bytes: &mut [u8], at: usize, value: u32) {
    if let Some(slot) = bytes.get_mut(at..at.wrapping_add(4)) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

/// FNV-1a over `parts` one after the other, as if they were one string.
pub fn hash_spelling(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in *part {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The first slot of `hash` in an index of `slots` (a power of two) slots.
pub fn first_slot(hash: u64, slots: usize) -> usize {
    let bits = slots.trailing_zeros();
    if bits == 0 { 0 } else { (hash.wrapping_mul(GOLDEN) >> (64 - bits)) as usize }
}

/// The hash of a pair of token ids in the merge index.
pub fn hash_pair(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Read access to a tokenizer's tables.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'t> {
    /// The buffer.
    pub bytes: &'t [u8],
    /// Where the tables lie.
    pub layout: &'t TablesLayout,
}

impl<'t> Tables<'t> {
    fn slice(&self, table: Table) -> &'t [u8] {
        self.bytes.get(self.layout.range(table)).unwrap_or(&[])
    }

    /// Entry `index` of a table of words.
    pub fn word_of(&self, table: Table, index: usize) -> u32 {
        let (start, length) = self.layout.table(table);
        let at = index.wrapping_mul(4);
        if at >= length { NONE } else { word(self.bytes, start + at) }
    }

    /// The bytes of entry `id` of an offsets table over `data`.
    fn entry(&self, offsets: Table, data: Table, id: u32) -> &'t [u8] {
        let id = id as usize;
        if id >= self.layout.vocab_size {
            return &[];
        }
        let (start, end) = (self.word_of(offsets, id) as usize, self.word_of(offsets, id + 1) as usize);
        self.slice(data).get(start..end).unwrap_or(&[])
    }

    /// How token `id` is spelled in the vocabulary.
    pub fn spelling(&self, id: u32) -> &'t [u8] {
        self.entry(Table::SpellingOffsets, Table::Spelling, id)
    }

    /// The bytes BPE token `id` stands for.
    pub fn decoded(&self, id: u32) -> &'t [u8] {
        self.entry(Table::DecodedOffsets, Table::Decoded, id)
    }

    /// Token `id`'s flags (0 for an unknown id).
    pub fn flags(&self, id: u32) -> u8 {
        if (id as usize) < self.layout.vocab_size {
            self.slice(Table::Flags).get(id as usize).copied().unwrap_or(0)
        } else {
            0
        }
    }

    /// The token spelled exactly as `parts` joined.
    pub fn find(&self, parts: &[&[u8]]) -> Option<u32> {
        let slots = self.layout.id_slots;
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut slot = first_slot(hash_spelling(parts), slots);
        for _ in 0..slots {
            let stored = self.word_of(Table::IdIndex, slot);
            if stored == 0 || stored == NONE {
                return None;
            }
            let spelling = self.spelling(stored - 1);
            if spelling.len() == length && spelled_as(spelling, parts) {
                return Some(stored - 1);
            }
            slot = (slot + 1) & (slots - 1);
        }
        None
    }

    /// The merge of `left` then `right`: its rank (lower merges first) and the merged token.
    pub fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let slots = self.layout.merge_slots;
        if slots == 0 {
            return None;
        }
        let (start, length) = self.layout.table(Table::MergeIndex);
        let index = self.bytes.get(start..start + length)?;
        let mut slot = first_slot(hash_pair(left, right), slots);
        for _ in 0..slots {
            let at = slot * MERGE_SLOT_BYTES;
            let stored_left = word(index, at);
            if stored_left == 0 || stored_left == NONE {
                return None;
            }
            if stored_left == left.wrapping_add(1) && word(index, at + 4) == right {
                return Some((word(index, at + 8), word(index, at + 12)));
            }
            slot = (slot + 1) & (slots - 1);
        }
        None
    }

    /// The token of `byte`, when the vocabulary has one.
    pub fn byte_token(&self, byte: u8) -> Option<u32> {
        Some(self.word_of(Table::ByteTokens, usize::from(byte))).filter(|&id| id != NONE)
    }

    /// The special tokens, longest first.
    pub fn specials(&self) -> impl Iterator<Item = u32> + 't {
        let tables = *self;
        (0..self.layout.specials).map(move |index| tables.word_of(Table::Specials, index))
    }

    /// Token `id`'s llama2.c score.
    pub fn score(&self, id: u32) -> f32 {
        f32::from_bits(self.word_of(Table::Scores, id as usize))
    }
}

/// Whether `spelling` is `parts` joined (the lengths are known to be equal).
fn spelled_as(spelling: &[u8], parts: &[&[u8]]) -> bool {
    let mut rest = spelling;
    for part in parts {
        let Some((head, tail)) = rest.split_at_checked(part.len()) else { return false };
        if head != *part {
            return false;
        }
        rest = tail;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_laid_out_in_order_on_word_boundaries() {
        let layout = TablesLayout::plan(TokenizerKind::Bpe, 5, 13, 3).unwrap();
        assert_eq!(layout.id_slots, 16);
        assert_eq!(layout.merge_slots, 16);
        let mut end = 0;
        for table in [
            Table::SpellingOffsets,
            Table::Spelling,
            Table::DecodedOffsets,
            Table::Decoded,
            Table::Flags,
            Table::IdIndex,
            Table::MergeIndex,
            Table::ByteTokens,
            Table::Specials,
            Table::Scores,
        ] {
            let (start, length) = layout.table(table);
            assert!(start >= end && start % 4 == 0, "{table:?}");
            end = start + length;
        }
        assert!(layout.total_bytes() >= end);
        assert_eq!(layout.table(Table::Spelling).1, 13);
        assert_eq!(layout.table(Table::Scores).1, 0);
        let score = TablesLayout::plan(TokenizerKind::Score, 5, 13, 3).unwrap();
        assert_eq!((score.merge_slots, score.table(Table::Scores).1), (0, 20));
        assert!(TablesLayout::plan(TokenizerKind::Bpe, usize::MAX / 2, 1, 1).is_none());
        assert_eq!(slots_for(1000), Some(2048));
    }

    #[test]
    fn lookups_in_damaged_tables_end() {
        // Every slot taken and every spelling wrong: the probe stops after one round.
        let layout = TablesLayout::plan(TokenizerKind::Bpe, 2, 2, 1).unwrap();
        let bytes = alloc::vec![0x01; layout.total_bytes()];
        let tables = Tables { bytes: &bytes, layout: &layout };
        assert_eq!(tables.find(&[b"zz"]), None);
        assert_eq!(tables.merge(7, 8), None);
        assert_eq!(tables.spelling(9), b"");
        let empty = Tables { bytes: &[], layout: &layout };
        assert_eq!((empty.find(&[b"a"]), empty.byte_token(3), empty.flags(0)), (None, None, 0));
    }
}
