//! llama2.c's tokenizer: characters (or their bytes as `<0xXX>` tokens) merged pairwise,
//! the pair whose merged token has the highest score first, over the tokenizer's flat tables
//! ([`super::tables`]).

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::tables::Tables;

/// Token id of `<s>` in llama2.c vocabularies.
pub const BOS: u32 = 1;
/// Token id of `</s>` in llama2.c vocabularies.
pub const EOS: u32 = 2;
/// Byte `b` is token `b + BYTE_OFFSET` when a character has no token of its own.
pub const BYTE_OFFSET: u32 = 3;

/// Every byte value once, so a `<0xXX>` token decodes to a slice of it.
static BYTE_VALUES: [u8; 256] = {
    let mut values = [0u8; 256];
    let mut index = 0;
    while index < 256 {
        values[index] = index as u8;
        index += 1;
    }
    values
};

/// Appends the tokens of `text` to `out`, with llama2.c's leading-space convention and no
/// BOS, using the vocabulary and scores of `tables`.
pub fn encode(tables: Tables<'_>, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut symbols = Vec::new();
    if let Some(space) = tables.find(&[b" "]) {
        symbols.push(space);
    }
    let mut buffer = [0u8; 4];
    for character in text.chars() {
        let bytes = character.encode_utf8(&mut buffer).as_bytes();
        match tables.find(&[bytes]) {
            Some(id) => symbols.push(id),
            None => symbols.extend(bytes.iter().map(|&byte| u32::from(byte) + BYTE_OFFSET)),
        }
    }
    loop {
        let mut best: Option<(f32, usize, u32)> = None;
        for (at, pair) in symbols.windows(2).enumerate() {
            if let Some(id) = tables.find(&[tables.spelling(pair[0]), tables.spelling(pair[1])]) {
                let score = tables.score(id);
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

/// The bytes token `id` stands for after `previous`: `<0xXX>` becomes the byte, and the
/// leading space of the first word after BOS is dropped.
pub fn decode<'t>(tables: Tables<'t>, previous: Option<u32>, id: u32) -> &'t [u8] {
    let mut piece = tables.spelling(id);
    if previous == Some(BOS) && piece.first() == Some(&b' ') {
        piece = &piece[1..];
    }
    if piece.len() == 6
        && piece.starts_with(b"<0x")
        && piece.ends_with(b">")
        && let Some(byte) =
            core::str::from_utf8(&piece[3..5]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok())
    {
        let byte = usize::from(byte);
        return &BYTE_VALUES[byte..byte + 1];
    }
    piece
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Tokenizer;
    use alloc::format;
    use alloc::vec;

    #[test]
    fn merges_highest_score_first_and_falls_back_to_bytes() {
        let mut tokens: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
        tokens.extend((0..=255u8).map(|byte| format!("<0x{byte:02X}>").into_bytes()));
        for piece in [" ", "a", "b", " a", "ab", " ab"] {
            tokens.push(piece.as_bytes().to_vec());
        }
        let mut scores = vec![0.0f32; tokens.len()];
        let count = scores.len();
        scores[count - 3] = 1.0; // " a"
        scores[count - 2] = 5.0; // "ab"
        scores[count - 1] = 2.0; // " ab"
        let mut file = (tokens.len() as u32).to_le_bytes().to_vec();
        for (token, score) in tokens.iter().zip(&scores) {
            file.extend_from_slice(&score.to_le_bytes());
            file.extend_from_slice(&(token.len() as i32).to_le_bytes());
            file.extend_from_slice(token);
        }
        let tokenizer = Tokenizer::from_llama2c(&file, tokens.len()).unwrap();
        let mut ids = Vec::new();
        tokenizer.encode("ab\u{e9}", &mut ids);
        // "ab" merges first, then " " + "ab"; é has no token and becomes its two bytes.
        assert_eq!(ids, [count as u32 - 1, 0xc3 + BYTE_OFFSET, 0xa9 + BYTE_OFFSET]);
        assert_eq!(tokenizer.decode(Some(BOS), count as u32 - 1), b"ab");
        assert_eq!(tokenizer.decode(Some(5), 0xc3 + BYTE_OFFSET), [0xc3]);
        assert_eq!(tokenizer.token_id("ab"), Some(count as u32 - 2));
        assert_eq!(tokenizer.spelling(count as u32 - 1).as_deref(), Some(" ab"));
    }

    /// Found by the llama2c fuzz target (tools/fuzz/regressions/llama2c/): a vocabulary without
    /// all 256 byte tokens encoded a character it had no token for as ids past its end.
    #[test]
    fn a_vocabulary_without_the_byte_tokens_is_refused() {
        let tokens: Vec<Vec<u8>> = (0..258).map(|index: u32| format!("t{index}").into_bytes()).collect();
        let mut file = 8u32.to_le_bytes().to_vec();
        for token in &tokens {
            file.extend_from_slice(&0f32.to_le_bytes());
            file.extend_from_slice(&(token.len() as i32).to_le_bytes());
            file.extend_from_slice(token);
        }
        let Err(error) = Tokenizer::from_llama2c(&file, tokens.len()) else {
            panic!("a short vocabulary was accepted")
        };
        assert!(format!("{error}").contains("256 byte tokens"), "{error}");
    }
}
