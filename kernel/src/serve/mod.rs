//! Serving: the console loop, and the pieces of the console protocol.

pub mod admission;
mod batch;
pub mod chat;
mod commands;
pub mod config;
pub mod desk;
pub mod governor;
pub mod library;
pub mod line;
pub mod loader;
pub mod prepare;
pub mod pressure;
pub mod protocol;
pub mod reply;
pub mod retire;
pub mod ring;
pub mod scheduler;
pub mod server;
mod swap;
pub mod transmit;

/// Longest console line accepted, in bytes.
pub const MAX_LINE: usize = 1024;
