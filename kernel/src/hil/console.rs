//! `Console`: the serial line a person or a host program talks to.

use core::fmt;

/// A byte-oriented serial console.
///
/// Implementations must be usable from any core; they serialise internally.
pub trait Console: Sync {
    /// Writes all of `bytes`, blocking until the transmitter has accepted them.
    fn write_bytes(&self, bytes: &[u8]);

    /// Returns the next received byte, or `None` if nothing is waiting. Never blocks.
    fn read_byte(&self) -> Option<u8>;

    /// Blocks until every byte written so far has left the transmitter.
    fn flush(&self);

    /// When the most recent line end (CR or LF) was received, in ns of the board's clock, if
    /// the console records it (the interrupt-driven one does); used to measure how long
    /// control commands wait for their answer.
    fn line_end_ns(&self) -> Option<u64> {
        None
    }
}

/// Adapts a [`Console`] to [`core::fmt::Write`], so `write!` works on it.
pub struct ConsoleWriter<'a>(pub &'a dyn Console);

impl fmt::Write for ConsoleWriter<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.write_bytes(text.as_bytes());
        Ok(())
    }
}
