//! Line assembly for the console: CR, LF and CRLF each end a line; backspace edits; a line
//! holding control characters (other than tab) is noise, refused with a short error and never
//! taken for a prompt.

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
    /// The line holds a control character other than tab: line noise, binary data, or a
    /// terminal's escape sequence.
    Noise {
        /// The first control character.
        control: char,
        /// Its byte offset in the line.
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
            LineError::Noise { control, offset } => {
                write!(formatter, "noise (control U+{:04X} at offset {offset}), dropped", u32::from(*control))
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

/// Whether `character` makes a line noise: a C0 or C1 control character or DEL, except tab.
pub fn is_noise(character: char) -> bool {
    character.is_control() && character != '\t'
}

/// What a finished line's bytes are: its text, or why it is refused (a control character
/// before anything else, then invalid UTF-8). A C0 control byte is found even in a line that
/// is not valid UTF-8 (such a byte is always a character of its own).
pub fn classify(bytes: &[u8]) -> Result<&str, LineError> {
    if let Some(offset) = bytes.iter().position(|&byte| is_control_byte(byte)) {
        return Err(LineError::Noise { control: char::from(bytes[offset]), offset });
    }
    let text = core::str::from_utf8(bytes)
        .map_err(|error| LineError::InvalidUtf8 { offset: error.valid_up_to() })?;
    match text.char_indices().find(|&(_, character)| is_noise(character)) {
        Some((offset, control)) => Err(LineError::Noise { control, offset }),
        None => Ok(text),
    }
}

/// A byte that is a control character on its own (C0 or DEL), other than tab.
fn is_control_byte(byte: u8) -> bool {
    is_noise(char::from(byte)) && byte < 0x80
}

/// Whether a byte is echoed as typed (printable ASCII, space, or part of a UTF-8 character).
fn is_echoed(byte: u8) -> bool {
    byte.is_ascii_graphic() || byte == b' ' || byte >= 0x80
}

/// Assembles bytes into lines of at most `LIMIT` bytes, with no allocation: a
/// [`LineAssembler`] over a buffer of its own.
#[derive(Debug)]
pub struct LineReader<const LIMIT: usize> {
    buffer: [u8; LIMIT],
    assembler: LineAssembler,
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
        Self { buffer: [0; LIMIT], assembler: LineAssembler::new() }
    }

    /// Feeds one received byte.
    pub fn push(&mut self, byte: u8) -> LineEvent<'_> {
        self.assembler.push(&mut self.buffer, byte)
    }
}

/// The line editor's state, over a buffer its caller keeps: the line's bytes are in the
/// first [`LineAssembler::length`] bytes of the buffer passed to each
/// [`LineAssembler::push`], and a line passes its limit when it does not fit in that buffer.
/// The caller may hand over a larger buffer in the middle of a line (with the bytes so far
/// copied into it) to let that line grow: the console desk does so for machine-mode lines.
///
/// Echo: a byte is echoed when it is printable and the line holds no control byte before it;
/// once a line is known to be noise nothing more of it is echoed, and backspace echoes an
/// erase only for a character that was echoed.
#[derive(Clone, Debug, Default)]
pub struct LineAssembler {
    length: usize,
    /// Control bytes held in the line so far.
    controls: usize,
    overflowed: bool,
    after_carriage_return: bool,
    echo: [u8; 1],
}

impl LineAssembler {
    /// An empty line.
    pub const fn new() -> Self {
        Self { length: 0, controls: 0, overflowed: false, after_carriage_return: false, echo: [0] }
    }

    /// Bytes of the line so far.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Whether pushing `byte` with a buffer of `capacity` bytes would make the line too long:
    /// it is a byte of the line (not a line end or an erase), the buffer is full, and the line
    /// has not overflowed already.
    pub fn would_overflow(&self, capacity: usize, byte: u8) -> bool {
        !matches!(byte, b'\r' | b'\n' | 0x08 | 0x7F) && !self.overflowed && self.length >= capacity
    }

    /// Feeds one received byte, the line so far being in `buffer` (the same bytes every call,
    /// in the same or a larger buffer).
    pub fn push<'a>(&'a mut self, buffer: &'a mut [u8], byte: u8) -> LineEvent<'a> {
        if self.length > buffer.len() {
            // A smaller buffer than the line already filled: the line cannot fit.
            self.length = buffer.len();
            self.overflowed = true;
        }
        let after_carriage_return = core::mem::replace(&mut self.after_carriage_return, byte == b'\r');
        match byte {
            b'\n' if after_carriage_return => LineEvent::Pending,
            b'\r' | b'\n' => self.finish(buffer),
            0x08 | 0x7F => self.erase(buffer),
            _ if self.length >= buffer.len() || self.overflowed => {
                self.overflowed = true;
                LineEvent::Pending
            }
            _ => {
                buffer[self.length] = byte;
                self.length += 1;
                if is_control_byte(byte) {
                    self.controls += 1;
                    LineEvent::Pending
                } else if is_echoed(byte) && self.controls == 0 {
                    self.echo[0] = byte;
                    LineEvent::Echo(&self.echo)
                } else {
                    LineEvent::Pending
                }
            }
        }
    }

    /// Backspace or DEL: drops the last character (a whole UTF-8 sequence, not just its last
    /// byte), and erases it on the terminal if it was echoed.
    fn erase(&mut self, buffer: &[u8]) -> LineEvent<'static> {
        if self.length == 0 || self.overflowed {
            return LineEvent::Pending;
        }
        self.length -= 1;
        while self.length > 0 && buffer[self.length] & 0xC0 == 0x80 {
            self.length -= 1;
        }
        let first = buffer[self.length];
        if is_control_byte(first) {
            self.controls -= 1;
            LineEvent::Pending
        } else if is_echoed(first) && self.controls == 0 {
            LineEvent::Echo(ERASE)
        } else {
            LineEvent::Pending
        }
    }

    fn finish<'a>(&mut self, buffer: &'a [u8]) -> LineEvent<'a> {
        let length = core::mem::take(&mut self.length).min(buffer.len());
        self.controls = 0;
        if core::mem::take(&mut self.overflowed) {
            return LineEvent::Error(LineError::TooLong { limit: buffer.len() });
        }
        match classify(&buffer[..length]) {
            Ok(text) => LineEvent::Line(text),
            Err(error) => LineEvent::Error(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines<const LIMIT: usize>(input: &[u8]) -> Vec<Result<String, LineError>> {
        read::<LIMIT>(input).0
    }

    /// The lines (or errors) and everything echoed.
    fn read<const LIMIT: usize>(input: &[u8]) -> (Vec<Result<String, LineError>>, Vec<u8>) {
        let mut reader = LineReader::<LIMIT>::new();
        let (mut out, mut echoed) = (Vec::new(), Vec::new());
        for &byte in input {
            match reader.push(byte) {
                LineEvent::Line(text) => out.push(Ok(text.to_string())),
                LineEvent::Error(error) => out.push(Err(error)),
                LineEvent::Echo(bytes) => echoed.extend_from_slice(bytes),
                LineEvent::Pending => {}
            }
        }
        (out, echoed)
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

    #[test]
    fn a_line_grows_into_a_larger_buffer_handed_over_midway() {
        let mut assembler = LineAssembler::new();
        let (mut small, mut large) = ([0u8; 4], [0u8; 8]);
        for &byte in b"abcd" {
            assert!(!assembler.would_overflow(small.len(), byte));
            assembler.push(&mut small, byte);
        }
        assert!(assembler.would_overflow(small.len(), b'e'));
        assert!(!assembler.would_overflow(small.len(), b'\r'), "a line end never overflows");
        large[..4].copy_from_slice(&small);
        for &byte in b"efgh" {
            assembler.push(&mut large, byte);
        }
        assert_eq!(assembler.push(&mut large, b'\r'), LineEvent::Line("abcdefgh"));
        // Past the larger buffer the line is too long, with that buffer's size as the limit.
        for &byte in b"123456789" {
            assembler.push(&mut large, byte);
        }
        assert_eq!(assembler.push(&mut large, b'\n'), LineEvent::Error(LineError::TooLong { limit: 8 }));
        // A buffer smaller than the line so far makes it too long, never a panic.
        for &byte in b"123456" {
            assembler.push(&mut large, byte);
        }
        assert_eq!(assembler.push(&mut small, 0x7F), LineEvent::Pending);
        assert_eq!(assembler.push(&mut small, b'\r'), LineEvent::Error(LineError::TooLong { limit: 4 }));
        assert_eq!(assembler.length(), 0);
    }

    #[test]
    fn control_characters_make_a_line_noise_but_tab_does_not() {
        assert_eq!(
            lines::<32>(b"up\x1b[A\rtab\tok\r\x00\rx\xc2\x9by\r\xff\x01\rafter\r"),
            vec![
                Err(LineError::Noise { control: '\x1b', offset: 2 }),
                Ok("tab\tok".to_string()),
                Err(LineError::Noise { control: '\0', offset: 0 }),
                // A C1 control (U+009B, CSI) is noise too.
                Err(LineError::Noise { control: '\u{9b}', offset: 1 }),
                // A control byte is found before the invalid UTF-8 around it.
                Err(LineError::Noise { control: '\x01', offset: 1 }),
                Ok("after".to_string()),
            ]
        );
        assert_eq!(
            LineError::Noise { control: '\x1b', offset: 2 }.to_string(),
            "noise (control U+001B at offset 2), dropped"
        );
    }

    #[test]
    fn a_noise_line_is_not_echoed_past_its_first_control_byte() {
        let (out, echoed) = read::<32>(b"ab\x03cd\r");
        assert_eq!(out, [Err(LineError::Noise { control: '\x03', offset: 2 })]);
        assert_eq!(echoed, b"ab");
        // Erasing what was not echoed erases nothing on the terminal; once the control byte is
        // gone, the line is clean and echoes again.
        let (out, echoed) = read::<32>(b"ab\x03c\x7f\x7f\x7fe\r");
        assert_eq!(out, [Ok("ae".to_string())]);
        assert_eq!(echoed, b"ab\x08 \x08e");
    }

    /// The reader, written plainly over a `Vec`: what [`LineReader`] must agree with.
    fn reference(input: &[u8], limit: usize) -> Vec<Result<String, LineError>> {
        let (mut out, mut line, mut overflowed, mut after_carriage_return) =
            (Vec::new(), Vec::new(), false, false);
        for &byte in input {
            let after = core::mem::replace(&mut after_carriage_return, byte == b'\r');
            match byte {
                b'\n' if after => {}
                b'\r' | b'\n' => {
                    out.push(if overflowed {
                        Err(LineError::TooLong { limit })
                    } else {
                        reference_classify(&line)
                    });
                    line.clear();
                    overflowed = false;
                }
                0x08 | 0x7F if !overflowed => {
                    // The last byte, the continuation bytes before it, and the byte they
                    // continue.
                    let mut removed = line.pop();
                    while removed.is_some_and(|byte| byte & 0xC0 == 0x80) && !line.is_empty() {
                        removed = line.pop();
                    }
                }
                0x08 | 0x7F => {}
                _ if line.len() == limit || overflowed => overflowed = true,
                _ => line.push(byte),
            }
        }
        out
    }

    fn reference_classify(bytes: &[u8]) -> Result<String, LineError> {
        if let Some(offset) = bytes.iter().position(|&byte| (byte < 0x20 && byte != b'\t') || byte == 0x7F) {
            return Err(LineError::Noise { control: bytes[offset] as char, offset });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|error| LineError::InvalidUtf8 { offset: error.valid_up_to() })?;
        match text.char_indices().find(|(_, character)| (0x80..=0x9F).contains(&u32::from(*character))) {
            Some((offset, control)) => Err(LineError::Noise { control, offset }),
            None => Ok(text.to_string()),
        }
    }

    /// Bytes that look like a terminal session: mostly text, some editing and line ends, the
    /// odd control byte or escape sequence, and raw binary.
    fn console_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => proptest::collection::vec(0x20u8..0x7F, 0..12),
            2 => any::<String>().prop_map(String::into_bytes),
            2 => proptest::sample::select(vec![b"\r".to_vec(), b"\n".to_vec(), b"\r\n".to_vec(), vec![0x7F], vec![0x08], b"\t".to_vec()]),
            1 => proptest::sample::select(vec![b"\x1b[A".to_vec(), vec![0x03], vec![0x00], "\u{9b}".as_bytes().to_vec()]),
            1 => proptest::collection::vec(any::<u8>(), 0..16),
        ];
        proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_lines_fit(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            for line in lines::<64>(&input).into_iter().flatten() {
                prop_assert!(line.len() <= 64);
                prop_assert!(!line.contains('\r') && !line.contains('\n'));
            }
        }

        /// Fed anything, the reader agrees with the plain reference, no accepted line holds a
        /// control character other than tab, and the echo holds none but the erase sequence's
        /// backspaces.
        #[test]
        fn noise_never_becomes_a_line(
            input in prop_oneof![console_bytes(), proptest::collection::vec(any::<u8>(), 0..600)],
        ) {
            let (out, echoed) = read::<48>(&input);
            prop_assert_eq!(&out, &reference(&input, 48));
            for line in out.iter().flatten() {
                prop_assert!(!line.chars().any(is_noise), "{:?}", line);
            }
            prop_assert!(echoed.iter().all(|&byte| byte == 0x08 || !is_control_byte(byte)), "{:?}", echoed);
        }

        #[test]
        fn classify_refuses_exactly_the_lines_with_control_characters(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            match classify(&bytes) {
                Ok(text) => prop_assert!(!text.chars().any(is_noise)),
                Err(LineError::Noise { control, offset }) => {
                    prop_assert!(is_noise(control));
                    let mut encoded = [0u8; 4];
                    prop_assert!(bytes[offset..].starts_with(control.encode_utf8(&mut encoded).as_bytes()));
                }
                Err(LineError::InvalidUtf8 { .. }) => {
                    prop_assert!(std::str::from_utf8(&bytes).is_err());
                    prop_assert!(!bytes.iter().any(|&byte| is_control_byte(byte)));
                }
                Err(LineError::TooLong { .. }) => prop_assert!(false, "classify never says too long"),
            }
        }
    }
}
