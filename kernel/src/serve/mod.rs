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

/// Longest console line accepted, in bytes.
pub const MAX_LINE: usize = 1024;

/// Protocol-pool bytes one request in flight may hold at once: its line, its parsed request
/// and the record being rendered for it.
const PROTOCOL_BYTES_PER_REQUEST: u64 = 2 * MAX_LINE as u64 + 512;

/// Protocol-pool bytes of the largest answer to a command (a full trace, `/stats`, `/mem`).
const PROTOCOL_ANSWER_BYTES: u64 = 64 * 1024;

/// The protocol (RT) pool's reserve: the two console rings, plus what every request that may
/// be in flight (waiting or running) holds, plus one command's answer; times four.
pub const PROTOCOL_RESERVE_BYTES: u64 = 4
    * (2 * crate::console::CONSOLE_RING_BYTES
        + admission::MAX_IN_FLIGHT as u64 * PROTOCOL_BYTES_PER_REQUEST
        + PROTOCOL_ANSWER_BYTES);
