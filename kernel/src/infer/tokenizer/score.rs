//! llama2.c's tokenizer: characters (or their bytes as `<0xXX>` tokens) merged pairwise,
//! the pair whose merged token has the highest score first.

#![forbid(unsafe_code)]

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Token id of `<s>` in llama2.c vocabularies.
pub const BOS: u32 = 1;
/// Token id of `</s>` in llama2.c vocabularies.
pub const EOS: u32 = 2;
/// Byte `b` is token `b + BYTE_OFFSET` when a character has no token of its own.
pub const BYTE_OFFSET: u32 = 3;

/// A score-based vocabulary.
#[derive(Clone, Debug)]
pub struct ScoreTokenizer {
    tokens: Vec<Vec<u8>>,
    scores: Vec<f32>,
    ids: BTreeMap<Vec<u8>, u32>,
}

impl ScoreTokenizer {
    /// Builds the tokenizer from each token's bytes and score.
    pub fn new(tokens: Vec<Vec<u8>>, scores: Vec<f32>) -> Self {
        let mut ids = BTreeMap::new();
        for (id, token) in tokens.iter().enumerate() {
            ids.entry(token.clone()).or_insert(id as u32);
        }
        Self { tokens, scores, ids }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The token whose bytes are `bytes`.
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.ids.get(bytes).copied()
    }

    /// Appends the tokens of `text` to `out`, with llama2.c's leading-space convention and no
    /// BOS.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols = Vec::new();
        if let Some(space) = self.token_id(b" ") {
            symbols.push(space);
        }
        let mut buffer = [0u8; 4];
        for character in text.chars() {
            let bytes = character.encode_utf8(&mut buffer).as_bytes();
            match self.token_id(bytes) {
                Some(id) => symbols.push(id),
                None => symbols.extend(bytes.iter().map(|&byte| u32::from(byte) + BYTE_OFFSET)),
            }
        }
        let mut joined = Vec::new();
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for (at, pair) in symbols.windows(2).enumerate() {
                joined.clear();
                joined.extend_from_slice(self.bytes(pair[0]));
                joined.extend_from_slice(self.bytes(pair[1]));
                if let Some(id) = self.token_id(&joined) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(best_score, ..)| score > best_score) {
                        best = Some((score, at, id));
                    }
                }
            }
            let Some((_, at, id)) = best else { break };
            symbols[at] = id;
            symbols.remove(at + 1);
        }
        out.extend_from_slice(&symbols);
    }

    /// The stored bytes of token `id`.
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.tokens.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The bytes token `id` stands for after `previous`: `<0xXX>` becomes the byte, and the
    /// leading space of the first word after BOS is dropped.
    pub fn decode(&self, previous: Option<u32>, id: u32) -> Vec<u8> {
        let mut piece = self.bytes(id);
        if previous == Some(BOS) && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        if piece.len() == 6
            && piece.starts_with(b"<0x")
            && piece.ends_with(b">")
            && let Some(byte) =
                core::str::from_utf8(&piece[3..5]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            return alloc::vec![byte];
        }
        piece.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;

    #[test]
    fn merges_highest_score_first_and_falls_back_to_bytes() {
        let mut tokens: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
        tokens.extend((0..=255u8).map(|byte| format!("<0x{byte:02X}>").into_bytes()));
        for piece in [" ", "a", "b", " a", "ab", " ab"] {
            tokens.push(piece.as_bytes().to_vec());
        }
        let mut scores = vec![0.0; tokens.len()];
        let count = scores.len();
        scores[count - 3] = 1.0; // " a"
        scores[count - 2] = 5.0; // "ab"
        scores[count - 1] = 2.0; // " ab"
        let tokenizer = ScoreTokenizer::new(tokens, scores);
        let mut ids = Vec::new();
        tokenizer.encode("ab\u{e9}", &mut ids);
        // "ab" merges first, then " " + "ab"; é has no token and becomes its two bytes.
        assert_eq!(ids, [count as u32 - 1, 0xc3 + BYTE_OFFSET, 0xa9 + BYTE_OFFSET]);
        assert_eq!(tokenizer.decode(Some(BOS), count as u32 - 1), b"ab");
        assert_eq!(tokenizer.decode(Some(5), 0xc3 + BYTE_OFFSET), [0xc3]);
    }
}
