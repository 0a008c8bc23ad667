//! Line assembly for the console: CR, LF and CRLF each end a line; backspace edits.

#![forbid(unsafe_code)]

use core::fmt;

/// What a line could not be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// The line passed the length limit; the rest of it up to the line end was dropped.
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The line is not valid UTF-8.
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong { limit } => write!(formatter, "line longer than {limit} bytes, dropped"),
            LineError::InvalidUtf8 { offset } => {
                write!(formatter, "line is not valid UTF-8 (bad byte at offset {offset}), dropped")
            }
        }
    }
}

/// The result of feeding one byte.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// Nothing to do yet.
    Pending,
    /// Bytes to echo back to a terminal (the typed byte, or an erase sequence).
    Echo(&'a [u8]),
    /// A complete line, without its terminator.
    Line(&'a str),
    /// A line was rejected.
    Error(LineError),
}

/// Assembles bytes into lines of at most `LIMIT` bytes, with no allocation.
#[derive(Debug)]
pub struct LineReader<const LIMIT: usize> {
    buffer: [u8; LIMIT],
    length: usize,
    overflowed: bool,
    after_carriage_return: bool,
    echo: [u8; 1],
}

const ERASE: &[u8] = b"\x08 \x08";

impl<const LIMIT: usize> Default for LineReader<LIMIT> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const LIMIT: usize> LineReader<LIMIT> {
    /// An empty reader.
    pub const fn new() -> Self {
        Self { buffer: [0; LIMIT], length: 0, overflowed: false, after_carriage_return: false, echo: [0] }
    }

    /// Feeds one received byte.
    pub fn push(&mut self, byte: u8) -> LineEvent<'_> {
        let after_carriage_return = core::mem::replace(&mut self.after_carriage_return, byte == b'\r');
        match byte {
            b'\n' if after_carriage_return => LineEvent::Pending,
            b'\r' | b'\n' => self.finish(),
            0x08 | 0x7F => {
                if self.length > 0 && !self.overflowed {
                    self.length -= 1;
                    // Drop a whole UTF-8 character, not just its last byte.
                    while self.length > 0 && self.buffer[self.length] & 0xC0 == 0x80 {
                        self.length -= 1;
                    }
                    LineEvent::Echo(ERASE)
                } else {
                    LineEvent::Pending
                }
            }
            _ if self.length == LIMIT || self.overflowed => {
                self.overflowed = true;
                LineEvent::Pending
            }
            _ => {
                self.buffer[self.length] = byte;
                self.length += 1;
                if byte.is_ascii_graphic() || byte == b' ' || byte >= 0x80 {
                    self.echo[0] = byte;
                    LineEvent::Echo(&self.echo)
                } else {
                    LineEvent::Pending
                }
            }
        }
    }

    fn finish(&mut self) -> LineEvent<'_> {
        let length = core::mem::take(&mut self.length);
        if core::mem::take(&mut self.overflowed) {
            return LineEvent::Error(LineError::TooLong { limit: LIMIT });
        }
        match core::str::from_utf8(&self.buffer[..length]) {
            Ok(text) => LineEvent::Line(text),
            Err(error) => LineEvent::Error(LineError::InvalidUtf8 { offset: error.valid_up_to() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines<const LIMIT: usize>(input: &[u8]) -> Vec<Result<String, LineError>> {
        let mut reader = LineReader::<LIMIT>::new();
        let mut out = Vec::new();
        for &byte in input {
            match reader.push(byte) {
                LineEvent::Line(text) => out.push(Ok(text.to_string())),
                LineEvent::Error(error) => out.push(Err(error)),
                LineEvent::Pending | LineEvent::Echo(_) => {}
            }
        }
        out
    }

    #[test]
    fn every_terminator_ends_one_line() {
        let expected: Vec<Result<String, LineError>> =
            vec![Ok("a".into()), Ok("b".into()), Ok("c".into()), Ok("".into()), Ok("d".into())];
        assert_eq!(lines::<16>(b"a\rb\nc\r\n\r\nd\n"), expected);
    }

    #[test]
    fn backspace_edits_whole_characters() {
        assert_eq!(lines::<16>(b"ab\x7fc\r"), vec![Ok("ac".to_string())]);
        assert_eq!(lines::<16>("xé\x08\r".as_bytes()), vec![Ok("x".to_string())]);
        assert_eq!(lines::<16>(b"\x7f\x7fz\n"), vec![Ok("z".to_string())]);
    }

    #[test]
    fn overlong_and_invalid_lines_are_errors_and_reader_recovers() {
        assert_eq!(
            lines::<4>(b"12345678\nok\n"),
            vec![Err(LineError::TooLong { limit: 4 }), Ok("ok".to_string())]
        );
        assert_eq!(
            lines::<16>(b"a\xff\nfine\r"),
            vec![Err(LineError::InvalidUtf8 { offset: 1 }), Ok("fine".to_string())]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_lines_fit(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            for line in lines::<64>(&input).into_iter().flatten() {
                prop_assert!(line.len() <= 64);
                prop_assert!(!line.contains('\r') && !line.contains('\n'));
            }
        }
    }
}
