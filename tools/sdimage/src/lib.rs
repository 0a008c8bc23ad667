//! Tessera's SD image builder (host, std): an MBR with one FAT32 partition holding kernel8.img,
//! config.txt, models under /models/ and, for a real Pi, the firmware files.
//!
//! [`options::parse_arguments`] reads the command line, [`plan::plan`] checks every input and
//! chooses the image size, [`image::write_image`] writes a sparse image with the `fatfs` crate,
//! and [`image::verify_image`] reads every file back through the kernel's own FAT32 reader
//! (`kernel::fs`) over [`device::ImageDevice`].

#![forbid(unsafe_code)]

use std::fmt;

pub mod device;
pub mod image;
pub mod options;
pub mod plan;
pub mod timestamp;

/// Why the tool failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The command line is wrong; the message says how.
    Usage(String),
    /// An input, the output or the image content is wrong; the message says which and why.
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Failed(message) => formatter.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

/// Formats a byte count in MiB with one decimal, for messages and progress.
pub fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
