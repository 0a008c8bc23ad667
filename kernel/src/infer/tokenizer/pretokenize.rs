//! SmolLM2's pre-tokenization: every digit on its own, then the GPT-2 splitting rule
//! (contractions, letter runs, number runs, symbol runs, whitespace runs), each optionally led
//! by one space. Character classes are Unicode general categories.

#![forbid(unsafe_code)]

use unicode_general_category::{GeneralCategory, get_general_category};

/// Whether `character` is a letter (general category L*).
pub fn is_letter(character: char) -> bool {
    use GeneralCategory::*;
    matches!(
        get_general_category(character),
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter
    )
}

/// Whether `character` is a number (general category N*).
pub fn is_number(character: char) -> bool {
    use GeneralCategory::*;
    matches!(get_general_category(character), DecimalNumber | LetterNumber | OtherNumber)
}

fn is_other(character: char) -> bool {
    !character.is_whitespace() && !is_letter(character) && !is_number(character)
}

/// Calls `emit` with each pre-token of `text`, in order; together they cover `text`.
pub fn pretokenize<'t>(text: &'t str, mut emit: impl FnMut(&'t str)) {
    // Digits first: each numeric character stands alone, the text between is split further.
    let mut start = 0;
    for (index, character) in text.char_indices() {
        if is_number(character) {
            split_gpt2(&text[start..index], &mut emit);
            let end = index + character.len_utf8();
            emit(&text[index..end]);
            start = end;
        }
    }
    split_gpt2(&text[start..], &mut emit);
}

/// The GPT-2 rule, tried alternative by alternative at each position:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2<'t>(text: &'t str, emit: &mut impl FnMut(&'t str)) {
    let mut rest = text;
    while !rest.is_empty() {
        let length = match_at(rest);
        emit(&rest[..length]);
        rest = &rest[length..];
    }
}

/// Byte length of the match at the start of `text` (never 0 for non-empty text).
fn match_at(text: &str) -> usize {
    for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
        if let Some(after) = text.strip_prefix('\'')
            && after.starts_with(suffix)
        {
            return 1 + suffix.len();
        }
    }
    let after_space = text.strip_prefix(' ').unwrap_or(text);
    let space = text.len() - after_space.len();
    for class in [is_letter as fn(char) -> bool, is_number, is_other] {
        let run = run_length(after_space, class);
        if run > 0 {
            return space + run;
        }
    }
    let whitespace = run_length(text, char::is_whitespace);
    if whitespace == text.len() {
        return whitespace;
    }
    // A whitespace run followed by something else leaves its last character to the next
    // token, unless the run is a single character.
    let last = text[..whitespace].chars().next_back().map_or(0, char::len_utf8);
    if whitespace > last { whitespace - last } else { whitespace.max(first_length(text)) }
}

fn run_length(text: &str, class: impl Fn(char) -> bool) -> usize {
    text.char_indices().find(|(_, character)| !class(*character)).map_or(text.len(), |(index, _)| index)
}

fn first_length(text: &str) -> usize {
    text.chars().next().map_or(0, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn split(text: &str) -> Vec<&str> {
        let mut pieces = Vec::new();
        pretokenize(text, |piece| pieces.push(piece));
        pieces
    }

    #[test]
    fn splits_like_smollm2() {
        assert_eq!(split("Hello world's 2024!!"), ["Hello", " world", "'s", " ", "2", "0", "2", "4", "!!"]);
        assert_eq!(split("a  b\n\nc   "), ["a", " ", " b", "\n", "\n", "c", "   "]);
        assert_eq!(split("über café ½"), ["über", " café", " ", "½"]);
        assert_eq!(split(" 🙂🙂 x"), [" 🙂🙂", " x"]);
        assert_eq!(split(""), Vec::<&str>::new());
    }
}
