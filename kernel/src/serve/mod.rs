//! Serving: the console loop, and the pieces of the console protocol.

pub mod admission;
mod batch;
pub mod chat;
mod commands;
pub mod config;
pub mod desk;
pub mod generation;
pub mod governor;
pub mod library;
pub mod loader;
pub mod prepare;
pub mod pressure;
pub mod protocol;
pub mod reply;
pub mod retire;
pub mod scheduler;
pub mod server;
pub mod stops;
mod swap;
pub mod swap_cost;

/// Longest console line accepted from a person (the line editor's limit), in bytes.
pub const MAX_LINE: usize = 1024;

/// Longest machine-mode request line (a line that starts with `{`), in bytes: room for a
/// conversation of [`protocol::MAX_PROMPT_BYTES`] with its JSON around it.
pub const MAX_MACHINE_LINE: usize = 16 * 1024;

/// Protocol-pool bytes one request in flight may hold at once besides a long machine-mode
/// line: a line of up to [`MAX_LINE`], its parsed request and the record being rendered for it.
const PROTOCOL_BYTES_PER_REQUEST: u64 = 2 * MAX_LINE as u64 + 512;

/// Protocol-pool bytes of long machine-mode lines at once: the lines queued for the server
/// (at most [`desk::MAX_QUEUED_LINE_BYTES`], passed by at most one line), the line being read
/// (its long buffer), and the line being handled with its parsed request.
const PROTOCOL_LINE_BYTES: u64 = (desk::MAX_QUEUED_LINE_BYTES + 4 * MAX_MACHINE_LINE) as u64;

/// Protocol-pool bytes of the largest answer to a command (a full trace, `/stats`, `/mem`).
const PROTOCOL_ANSWER_BYTES: u64 = 64 * 1024;

/// The protocol (RT) pool's reserve: the two console rings, plus what every request that may
/// be in flight (waiting or running) holds, plus the long machine-mode lines, plus one
/// command's answer; times four.
pub const PROTOCOL_RESERVE_BYTES: u64 = 4
    * (2 * crate::console::CONSOLE_RING_BYTES
        + admission::MAX_IN_FLIGHT as u64 * PROTOCOL_BYTES_PER_REQUEST
        + PROTOCOL_LINE_BYTES
        + PROTOCOL_ANSWER_BYTES);
