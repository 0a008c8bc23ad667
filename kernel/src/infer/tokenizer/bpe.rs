//! GPT-2-style byte-level BPE, built from GGUF metadata (tokens, merges, token types).
//!
//! Text is cut at special tokens, pre-tokenized ([`super::pretokenize`]), each pre-token's
//! bytes are mapped to the printable characters GPT-2 uses for bytes, and merges are applied
//! lowest rank first.

#![forbid(unsafe_code)]

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::pretokenize::pretokenize;

/// GGUF token type of a control token (`<|im_start|>` and the like).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token, also matched verbatim in text.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Bytes GPT-2 does not print as themselves, as ranges in byte order: `0x00..=0x20`,
/// `0x7f..=0xa0` and `0xad`. They are spelled U+0100 onwards, in this order.
const UNPRINTABLE: [(u8, u8); 3] = [(0x00, 0x20), (0x7f, 0xa0), (0xad, 0xad)];

/// The character GPT-2 uses to spell each byte: printable Latin-1 bytes stand for themselves,
/// the others are moved to U+0100 onwards in byte order.
pub fn byte_to_char(byte: u8) -> char {
    let mut shifted = 0u32;
    for (first, last) in UNPRINTABLE {
        if (first..=last).contains(&byte) {
            return char::from_u32(0x100 + shifted + u32::from(byte - first)).unwrap_or('?');
        }
        shifted += u32::from(last - first) + 1;
    }
    char::from(byte)
}

/// The inverse of [`byte_to_char`].
pub fn char_to_byte(character: char) -> Option<u8> {
    let code = u32::from(character);
    if code < 0x100 {
        let byte = code as u8;
        return (byte_to_char(byte) == character).then_some(byte);
    }
    let mut index = code - 0x100;
    for (first, last) in UNPRINTABLE {
        let count = u32::from(last - first) + 1;
        if index < count {
            return Some(first + index as u8);
        }
        index -= count;
    }
    None
}

/// A byte-level BPE vocabulary with its merges.
#[derive(Clone, Debug)]
pub struct BpeTokenizer {
    tokens: Vec<String>,
    token_types: Vec<i32>,
    ids: BTreeMap<String, u32>,
    /// (left, right) → (rank, merged token).
    merges: BTreeMap<(u32, u32), (u32, u32)>,
    /// The token of each byte, when the vocabulary has one.
    byte_tokens: [Option<u32>; 256],
    /// Stands for a byte without a token; such bytes are dropped when there is none.
    unknown: Option<u32>,
    /// Special tokens matched verbatim in text, longest first.
    specials: Vec<(String, u32)>,
    /// Each token's decoded bytes.
    decoded: Vec<Vec<u8>>,
}

/// Why a BPE vocabulary could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpeError {
    /// Merge `index` is not two tokens separated by one space, or names unknown tokens.
    BadMerge(usize),
    /// More tokens than a u32 can number.
    TooManyTokens,
}

/// A [`BpeTokenizer`] built a piece at a time, so a loader can spread the work over many
/// short slices: every token first ([`BpeBuilder::push_token`]), then every merge
/// ([`BpeBuilder::push_merge`]), then [`BpeBuilder::finish`]. Each call does a bounded amount of
/// work (one map insertion and the token's own bytes).
#[derive(Clone, Debug)]
pub struct BpeBuilder {
    tokens: Vec<String>,
    token_types: Vec<i32>,
    ids: BTreeMap<String, u32>,
    merges: BTreeMap<(u32, u32), (u32, u32)>,
    merge_count: usize,
    unknown: Option<u32>,
    specials: Vec<(String, u32)>,
    decoded: Vec<Vec<u8>>,
    joined: String,
}

impl BpeBuilder {
    /// An empty vocabulary whose tokens will have `token_types` (GGUF types, may be empty) and
    /// whose unknown-byte token is `unknown`.
    pub fn new(token_types: Vec<i32>, unknown: Option<u32>) -> Self {
        Self {
            tokens: Vec::new(),
            token_types,
            ids: BTreeMap::new(),
            merges: BTreeMap::new(),
            merge_count: 0,
            unknown,
            specials: Vec::new(),
            decoded: Vec::new(),
            joined: String::new(),
        }
    }

    fn is_special(&self, id: usize) -> bool {
        matches!(self.token_types.get(id), Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED))
    }

    /// Tokens added so far.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Adds the next token (ids count up from 0). All tokens come before the first merge.
    pub fn push_token(&mut self, token: String) -> Result<(), BpeError> {
        let id = u32::try_from(self.tokens.len()).map_err(|_| BpeError::TooManyTokens)?;
        let special = self.is_special(id as usize);
        let decoded = if special {
            token.as_bytes().to_vec()
        } else {
            let mapped: Option<Vec<u8>> = token.chars().map(char_to_byte).collect();
            mapped.unwrap_or_else(|| token.as_bytes().to_vec())
        };
        if special && !token.is_empty() {
            self.specials.push((token.clone(), id));
        }
        self.decoded.push(decoded);
        self.ids.entry(token.clone()).or_insert(id);
        self.tokens.push(token);
        Ok(())
    }

    /// Adds the next merge ("left right"; earlier merges have priority).
    pub fn push_merge(&mut self, merge: &str) -> Result<(), BpeError> {
        let rank = self.merge_count;
        let (left, right) = merge.split_once(' ').ok_or(BpeError::BadMerge(rank))?;
        self.joined.clear();
        self.joined.push_str(left);
        self.joined.push_str(right);
        let lookup = |text: &str| self.ids.get(text).copied().ok_or(BpeError::BadMerge(rank));
        let key = (lookup(left)?, lookup(right)?);
        let merged = lookup(&self.joined)?;
        self.merges.entry(key).or_insert((rank as u32, merged));
        self.merge_count += 1;
        Ok(())
    }

    /// The finished tokenizer (the byte table and the specials' order: 256 lookups and a sort
    /// of the special tokens).
    pub fn finish(mut self) -> BpeTokenizer {
        let mut byte_tokens = [None; 256];
        let mut spelled = String::new();
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            spelled.clear();
            spelled.push(byte_to_char(byte as u8));
            *slot = self.ids.get(&spelled).copied();
        }
        let unknown = self.unknown.filter(|id| (*id as usize) < self.tokens.len());
        self.specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        BpeTokenizer {
            tokens: self.tokens,
            token_types: self.token_types,
            ids: self.ids,
            merges: self.merges,
            byte_tokens,
            unknown,
            specials: self.specials,
            decoded: self.decoded,
        }
    }
}

impl BpeTokenizer {
    /// Builds the tokenizer from the token strings, their GGUF types (may be empty), the
    /// merges ("left right", highest priority first) and the token standing for bytes that
    /// have no token of their own.
    pub fn new<'s>(
        tokens: Vec<String>,
        token_types: Vec<i32>,
        merges: impl Iterator<Item = &'s str>,
        unknown: Option<u32>,
    ) -> Result<Self, BpeError> {
        let mut builder = BpeBuilder::new(token_types, unknown);
        for token in tokens {
            builder.push_token(token)?;
        }
        for merge in merges {
            builder.push_merge(merge)?;
        }
        Ok(builder.finish())
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Frees up to `units` of the tokenizer's allocations (a token, a map entry, ...), so a
    /// retired tokenizer can be taken apart in short slices. Returns whether nothing is left;
    /// the tokenizer is unusable once this has been called.
    pub fn shed(&mut self, units: usize) -> bool {
        for _ in 0..units {
            let freed = self.ids.pop_last().is_some()
                || self.merges.pop_last().is_some()
                || self.decoded.pop().is_some()
                || self.tokens.pop().is_some()
                || self.specials.pop().is_some();
            if !freed {
                return true;
            }
        }
        self.ids.is_empty()
            && self.merges.is_empty()
            && self.decoded.is_empty()
            && self.tokens.is_empty()
            && self.specials.is_empty()
    }

    /// The token spelled exactly `text` (as stored in the vocabulary).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The bytes token `id` stands for.
    pub fn decode(&self, id: u32) -> &[u8] {
        self.decoded.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The token as stored in the vocabulary.
    pub fn spelling(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether token `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.token_types.get(id as usize) == Some(&TOKEN_TYPE_CONTROL)
    }

    /// Appends the tokens of `text` to `out`. Special tokens in the text become their ids.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token, the longest one at that position.
            let found = self
                .specials
                .iter()
                .filter_map(|(special, id)| rest.find(special.as_str()).map(|at| (at, special.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match found {
                Some((at, length, id)) => {
                    self.encode_plain(&rest[..at], out);
                    out.push(id);
                    rest = &rest[at + length..];
                }
                None => {
                    self.encode_plain(rest, out);
                    break;
                }
            }
        }
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols = Vec::new();
        pretokenize(text, |piece| {
            symbols.clear();
            symbols.extend(
                piece.bytes().filter_map(|byte| self.byte_tokens[usize::from(byte)].or(self.unknown)),
            );
            self.merge(&mut symbols);
            out.extend_from_slice(&symbols);
        });
    }

    /// Applies merges to `symbols`, lowest rank first (leftmost on ties), until none applies.
    fn merge(&self, symbols: &mut Vec<u32>) {
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(at, pair)| {
                    self.merges.get(&(pair[0], pair[1])).map(|&(rank, merged)| (rank, at, merged))
                })
                .min();
            let Some((_, at, merged)) = best else { break };
            symbols[at] = merged;
            symbols.remove(at + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn byte_mapping_is_a_bijection() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        // The definition: unprintable bytes are numbered in byte order from U+0100.
        let printable = |byte: u8| matches!(byte, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        for byte in 0..=255u8 {
            let expected = if printable(byte) {
                char::from(byte)
            } else {
                char::from_u32(0x100 + (0..byte).filter(|earlier| !printable(*earlier)).count() as u32)
                    .unwrap()
            };
            assert_eq!(byte_to_char(byte), expected);
            assert_eq!(char_to_byte(byte_to_char(byte)), Some(byte));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('\u{7f}'), None);
    }

    fn small() -> BpeTokenizer {
        let mut tokens: Vec<String> = (0..=255u8).map(|byte| byte_to_char(byte).to_string()).collect();
        let mut types = vec![1; 256];
        for token in ["he", "ll", "hell", "hello", "Ġw", "<|im_start|>"] {
            tokens.push(token.into());
            types.push(if token.starts_with('<') { TOKEN_TYPE_CONTROL } else { 1 });
        }
        BpeTokenizer::new(tokens, types, ["l l", "h e", "he ll", "hell o", "Ġ w"].into_iter(), None).unwrap()
    }

    #[test]
    fn merges_by_rank_and_recognises_specials() {
        let tokenizer = small();
        let mut ids = Vec::new();
        tokenizer.encode("hello<|im_start|> wx", &mut ids);
        let id = |text: &str| tokenizer.token_id(text).unwrap();
        assert_eq!(ids, [id("hello"), id("<|im_start|>"), id("Ġw"), id("x")]);
        let text: Vec<u8> = ids.iter().flat_map(|&token| tokenizer.decode(token).to_vec()).collect();
        assert_eq!(text, b"hello<|im_start|> wx");
        // Bytes without a token become the unknown token, or are dropped when there is none.
        let tokens = vec!["<unk>".into(), "a".into()];
        let unknown = BpeTokenizer::new(tokens.clone(), vec![], core::iter::empty(), Some(0)).unwrap();
        let mut ids = Vec::new();
        unknown.encode("a\u{4}a", &mut ids);
        assert_eq!(ids, [1, 0, 1]);
        let dropping = BpeTokenizer::new(tokens, vec![], core::iter::empty(), None).unwrap();
        ids.clear();
        dropping.encode("a\u{4}a", &mut ids);
        assert_eq!(ids, [1, 1]);
    }
}
