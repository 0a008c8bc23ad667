//! Serving: the console loop, and the pieces of the console protocol.

pub mod chat;
pub mod config;
pub mod desk;
pub mod library;
pub mod line;
pub mod loader;
pub mod protocol;
pub mod retire;
pub mod ring;
pub mod server;

/// Longest console line accepted, in bytes.
pub const MAX_LINE: usize = 1024;
