//! Bounds-checked little-endian cursor over a byte buffer, shared by the model parsers.

use super::error::{ModelError, ModelErrorKind};

/// A cursor that never reads past the end of its buffer: every read returns a typed error
/// carrying the offset where it failed.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// A cursor at `position` (clamped to the end of `bytes`).
    pub fn at(bytes: &'a [u8], position: usize) -> Self {
        Self { bytes, position: position.min(bytes.len()) }
    }

    /// Current offset from the start of the buffer.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// An error of `kind` at the current offset.
    pub fn error(&self, kind: ModelErrorKind) -> ModelError {
        ModelError::new(self.position, kind)
    }

    /// The next `length` bytes.
    pub fn take(&mut self, length: u64) -> Result<&'a [u8], ModelError> {
        let available = self.remaining();
        match usize::try_from(length) {
            Ok(length) if length <= available => {
                let slice = &self.bytes[self.position..self.position + length];
                self.position += length;
                Ok(slice)
            }
            _ => Err(self.error(ModelErrorKind::Truncated { needed: length, available })),
        }
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let slice = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ModelError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, ModelError> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, ModelError> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian i32.
    pub fn i32(&mut self) -> Result<i32, ModelError> {
        self.array().map(i32::from_le_bytes)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, ModelError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian f32.
    pub fn f32(&mut self) -> Result<f32, ModelError> {
        self.array().map(f32::from_le_bytes)
    }

    /// Moves the cursor to `position`, which must not be past the end.
    pub fn seek(&mut self, position: usize) -> Result<(), ModelError> {
        if position > self.bytes.len() {
            return Err(self.error(ModelErrorKind::TooLarge { what: "offset", value: position as u64 }));
        }
        self.position = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_end() {
        let mut reader = Reader::new(&[1, 0, 0, 0, 2, 0]);
        assert_eq!(reader.u32().unwrap(), 1);
        assert_eq!(reader.position(), 4);
        let error = reader.u32().unwrap_err();
        assert_eq!(error.offset, 4);
        assert_eq!(error.kind, ModelErrorKind::Truncated { needed: 4, available: 2 });
        assert_eq!(reader.u16().unwrap(), 2);
        assert!(reader.take(u64::MAX).is_err());
    }
}
