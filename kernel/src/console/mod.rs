//! The console's plumbing, under the server and over the board's UART: the receive ring the
//! UART interrupt fills (with flow control that leaves bytes in the UART when it is full), the
//! transmit ring the transmit interrupt empties, and line assembly. Both rings live in the
//! protocol (RT) pool; the server's control desk (`serve::desk`) reads lines from here.

pub mod line;
pub mod ring;
pub mod transmit;

/// Bytes of each of the console's two rings (receive and transmit), in the protocol pool.
pub const CONSOLE_RING_BYTES: u64 = 16 * 1024;
