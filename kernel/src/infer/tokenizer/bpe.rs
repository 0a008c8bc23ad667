//! GPT-2-style byte-level BPE over a vocabulary and merges from GGUF metadata, held in the
//! tokenizer's flat tables ([`super::tables`]).
//!
//! Text is cut at special tokens, pre-tokenized ([`super::pretokenize`]), each pre-token's
//! bytes are mapped to the printable characters GPT-2 uses for bytes, and merges are applied
//! lowest rank first.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use super::pretokenize::pretokenize;
use super::tables::Tables;

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

/// Appends the byte-level BPE tokens of `text` to `out`, with the vocabulary and merges of
/// `tables`. Special tokens in the text become their ids; the rest is pre-tokenized, each
/// piece's bytes become byte tokens (or the unknown token, or nothing), and merges apply lowest
/// rank first.
pub fn encode(tables: Tables<'_>, unknown: Option<u32>, text: &str, out: &mut Vec<u32>) {
    let mut rest = text;
    let mut symbols = Vec::new();
    while !rest.is_empty() {
        // The earliest special token, the longest one at that position (the specials are
        // listed longest first, so the first of equals wins).
        let found = tables
            .specials()
            .filter_map(|id| {
                let special =
                    core::str::from_utf8(tables.spelling(id)).ok().filter(|text| !text.is_empty())?;
                rest.find(special).map(|at| (at, special.len(), id))
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        match found {
            Some((at, length, id)) => {
                encode_plain(tables, unknown, &rest[..at], &mut symbols, out);
                out.push(id);
                rest = &rest[at + length..];
            }
            None => {
                encode_plain(tables, unknown, rest, &mut symbols, out);
                break;
            }
        }
    }
}

fn encode_plain(
    tables: Tables<'_>,
    unknown: Option<u32>,
    text: &str,
    symbols: &mut Vec<u32>,
    out: &mut Vec<u32>,
) {
    pretokenize(text, |piece| {
        symbols.clear();
        symbols.extend(piece.bytes().filter_map(|byte| tables.byte_token(byte).or(unknown)));
        merge(tables, symbols);
        out.extend_from_slice(symbols);
    });
}

/// Applies merges to `symbols`, lowest rank first (leftmost on ties), until none applies.
fn merge(tables: Tables<'_>, symbols: &mut Vec<u32>) {
    loop {
        let best = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(at, pair)| tables.merge(pair[0], pair[1]).map(|(rank, merged)| (rank, at, merged)))
            .min();
        let Some((_, at, merged)) = best else { break };
        symbols[at] = merged;
        symbols.remove(at + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::tokenizer::{
        Tokenizer,
        tests::{tokenizer_with, try_tokenizer_with},
    };
    use crate::model::ModelErrorKind;
    use alloc::string::{String, ToString};
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

    fn small() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8).map(|byte| byte_to_char(byte).to_string()).collect();
        let mut types = vec![1; 256];
        for token in ["he", "ll", "hell", "hello", "Ġw", "<|im_start|>"] {
            tokens.push(token.into());
            types.push(if token.starts_with('<') { TOKEN_TYPE_CONTROL } else { 1 });
        }
        tokenizer_with(&tokens, &types, &["l l", "h e", "he ll", "hell o", "Ġ w"], None)
    }

    #[test]
    fn merges_by_rank_and_recognises_specials() {
        let tokenizer = small();
        let mut ids = Vec::new();
        tokenizer.encode("hello<|im_start|> wx", &mut ids);
        let id = |text: &str| tokenizer.token_id(text).unwrap();
        assert_eq!(ids, [id("hello"), id("<|im_start|>"), id("Ġw"), id("x")]);
        let text: Vec<u8> = ids.iter().flat_map(|&token| tokenizer.decode(None, token).to_vec()).collect();
        assert_eq!(text, b"hello<|im_start|> wx");
        // Bytes without a token become the unknown token, or are dropped when there is none.
        let tokens = ["<unk>".to_string(), "a".to_string()];
        let unknown = tokenizer_with(&tokens, &[], &[], Some(0));
        let mut ids = Vec::new();
        unknown.encode("a\u{4}a", &mut ids);
        assert_eq!(ids, [1, 0, 1]);
        let dropping = tokenizer_with(&tokens, &[], &[], None);
        ids.clear();
        dropping.encode("a\u{4}a", &mut ids);
        assert_eq!(ids, [1, 1]);
    }

    #[test]
    fn bad_merges_are_refused() {
        let tokens = ["a".to_string(), "b".to_string(), "ab".to_string()];
        assert!(try_tokenizer_with(&tokens, &[], &["a b"], None).is_ok());
        for merge in ["ab", "a c", "b b"] {
            let error = try_tokenizer_with(&tokens, &[], &[merge], None).unwrap_err();
            assert_eq!(
                error.kind,
                ModelErrorKind::InvalidTokenizer("a merge names unknown tokens"),
                "{merge}"
            );
        }
    }
}
