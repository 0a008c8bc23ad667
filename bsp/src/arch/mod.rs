//! Architecture support (AArch64 only, for now).

pub mod aarch64;
