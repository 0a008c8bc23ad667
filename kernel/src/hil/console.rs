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

    /// Moves the received bytes waiting, up to `out`'s length, into `out`, oldest first;
    /// returns how many. Never blocks. (The interrupt-driven console takes them from its ring
    /// in one step.)
    fn read_bytes(&self, out: &mut [u8]) -> usize {
        let mut count = 0;
        while count < out.len()
            && let Some(byte) = self.read_byte()
        {
            out[count] = byte;
            count += 1;
        }
        count
    }

    /// Blocks until every byte written so far has left the transmitter.
    fn flush(&self);

    /// When the most recent line end (CR or LF) was received, in ns of the board's clock, if
    /// the console records it (the interrupt-driven one does); used to measure how long
    /// control commands wait for their answer.
    fn line_end_ns(&self) -> Option<u64> {
        None
    }

    /// Bytes through the console so far, if it counts them (the interrupt-driven one does).
    fn traffic(&self) -> Option<ConsoleTraffic> {
        None
    }

    /// Switches the line's hardware flow control. Returns what was set up, in a few words, or
    /// why it cannot be (the default: this console has none).
    fn set_flow_control(&self, _flow_control: FlowControl) -> Result<&'static str, &'static str> {
        Err("this console has no hardware flow control")
    }
}

/// Hardware flow control on a serial line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlowControl {
    /// None: when the kernel stops reading, the UART's FIFO fills and further bytes are lost
    /// in the UART (counted as dropped).
    #[default]
    None,
    /// RTS/CTS: the UART drops RTS while its receive FIFO is at its level, so the sender waits,
    /// and sends only while CTS is asserted.
    RtsCts,
}

/// Bytes through an interrupt-driven console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleTraffic {
    /// Bytes the receive interrupt took from the UART.
    pub received: u64,
    /// Bytes lost: dropped because the receive ring was full, or overrun in the UART (each
    /// overrun the UART flags counts one).
    pub dropped: u64,
    /// The most received bytes ever waiting at once.
    pub receive_high_water: u64,
    /// Times the receive ring filled and the sender was held back (receive flow control).
    pub receive_pauses: u64,
    /// Bytes handed to the UART by the transmit path.
    pub sent: u64,
    /// Interrupts the transmit FIFO raised.
    pub transmit_interrupts: u64,
    /// Writes that found the transmit ring full and waited for the line.
    pub transmit_waits: u64,
}

impl fmt::Display for ConsoleTraffic {
    /// Two `/stats` lines, each ending in CR LF.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "console rx   {} bytes, {} dropped, at most {} waiting, sender held back {} times\r\n\
             console tx   {} bytes, {} transmit interrupts, {} waits for a full ring\r\n",
            self.received,
            self.dropped,
            self.receive_high_water,
            self.receive_pauses,
            self.sent,
            self.transmit_interrupts,
            self.transmit_waits
        )
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

/// The transmit side of a UART, as the pump drives it.
pub trait TransmitFifo {
    /// Whether the FIFO can take another byte now.
    fn has_room(&self) -> bool;
    /// Puts one byte into the FIFO (only called when [`TransmitFifo::has_room`] said so).
    fn put(&self, byte: u8);
    /// Clears the transmit interrupt, before the pump refills the FIFO.
    fn acknowledge(&self);
    /// Enables (`true`) or masks the transmit interrupt.
    fn interrupt_on_room(&self, enabled: bool);
    /// Most bytes the FIFO holds: the pump moves at most this many per call.
    fn depth(&self) -> usize;
}
