//! Streaming detokenization: token bytes in, text out, never a partial UTF-8 sequence.

#![forbid(unsafe_code)]

use alloc::string::String;

/// Holds back the bytes of an unfinished UTF-8 character until the rest arrives.
/// Invalid bytes become U+FFFD.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    pending: [u8; 4],
    pending_length: usize,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends to `out` the complete characters that `bytes` finishes.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        for &byte in bytes {
            self.pending[self.pending_length] = byte;
            self.pending_length += 1;
            loop {
                match core::str::from_utf8(&self.pending[..self.pending_length]) {
                    Ok(text) => {
                        out.push_str(text);
                        self.pending_length = 0;
                        break;
                    }
                    Err(error) if error.error_len().is_none() => break,
                    Err(error) => {
                        // Emit the valid prefix and a replacement, keep what follows the bad bytes.
                        let valid = error.valid_up_to();
                        let bad_end = valid + error.error_len().unwrap_or(1);
                        if let Ok(text) = core::str::from_utf8(&self.pending[..valid]) {
                            out.push_str(text);
                        }
                        out.push(char::REPLACEMENT_CHARACTER);
                        self.pending.copy_within(bad_end..self.pending_length, 0);
                        self.pending_length -= bad_end;
                        if self.pending_length == 0 {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Flushes an unfinished character as U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if self.pending_length > 0 {
            out.push(char::REPLACEMENT_CHARACTER);
            self.pending_length = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_points_never_matter(text in "\\PC{0,20}", cuts in proptest::collection::vec(0usize..80, 0..6)) {
            let bytes = text.as_bytes();
            let mut points: alloc::vec::Vec<usize> = cuts.into_iter().map(|cut| cut.min(bytes.len())).collect();
            points.sort_unstable();
            let mut decoder = StreamDecoder::new();
            let mut out = String::new();
            let mut previous = 0;
            for point in points.into_iter().chain([bytes.len()]) {
                let before = out.len();
                decoder.push(&bytes[previous..point], &mut out);
                prop_assert!(text.starts_with(&out), "emitted text diverged at {before}");
                previous = point;
            }
            decoder.finish(&mut out);
            prop_assert_eq!(out, text);
        }

        #[test]
        fn arbitrary_bytes_give_valid_text(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut decoder = StreamDecoder::new();
            let mut out = String::new();
            for byte in &bytes {
                decoder.push(core::slice::from_ref(byte), &mut out);
            }
            decoder.finish(&mut out);
            prop_assert_eq!(out, String::from_utf8_lossy(&bytes));
        }
    }
}
