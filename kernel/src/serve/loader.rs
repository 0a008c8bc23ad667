//! Streaming a model file off the FAT32 volume into a weights buffer, with a progress bar.

#![forbid(unsafe_code)]

use crate::{
    fs::{File, FsError},
    hil::BlockDevice,
    mm::layout::MIB,
};
use alloc::string::String;
use core::fmt::{self, Write};

/// Bytes read per step: large enough for long multi-block transfers, small enough for a
/// smooth progress bar.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Why a file could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The file system or the card failed.
    Fs(FsError),
    /// The buffer is smaller than the file.
    BufferTooSmall {
        /// File bytes.
        file: u64,
        /// Buffer bytes.
        buffer: usize,
    },
    /// The file is empty.
    Empty,
    /// The file ended before its recorded size.
    ShortRead {
        /// Bytes read.
        read: u64,
        /// Bytes expected.
        expected: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Fs(error) => write!(formatter, "{error}"),
            LoadError::BufferTooSmall { file, buffer } => {
                write!(formatter, "the file has {file} bytes but the buffer only {buffer}")
            }
            LoadError::Empty => write!(formatter, "the file is empty"),
            LoadError::ShortRead { read, expected } => {
                write!(formatter, "the file ended after {read} of {expected} bytes")
            }
        }
    }
}

/// Reads all of `file` into the start of `destination`, calling `progress(done, total)` after
/// every chunk. Returns the file's size.
pub fn read_whole<D: BlockDevice>(
    file: &mut File<'_, D>,
    destination: &mut [u8],
    mut progress: impl FnMut(u64, u64),
) -> Result<usize, LoadError> {
    let total = file.size();
    if total == 0 {
        return Err(LoadError::Empty);
    }
    let length = usize::try_from(total)
        .ok()
        .filter(|&length| length <= destination.len())
        .ok_or(LoadError::BufferTooSmall { file: total, buffer: destination.len() })?;
    let mut done = 0usize;
    file.seek(0);
    while done < length {
        let end = (done + CHUNK_BYTES).min(length);
        let read = file.read_chunk(&mut destination[done..end]).map_err(LoadError::Fs)?;
        if read == 0 {
            return Err(LoadError::ShortRead { read: done as u64, expected: total });
        }
        done += read;
        progress(done as u64, total);
    }
    Ok(length)
}

/// One line of a progress bar: name, bar, percent, MiB done of total, and MiB/s.
pub fn progress_line(name: &str, done: u64, total: u64, elapsed_ns: u64) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(1);
    let filled = (done.min(total) * WIDTH / total) as usize;
    let mut line = String::new();
    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    let rate = if elapsed_ns == 0 { 0.0 } else { mib(done) / (elapsed_ns as f64 / 1e9) };
    let _ = write!(
        line,
        "\rloading {name} [{}{}] {:3}% {:6.1}/{:.1} MiB {:5.1} MiB/s",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        done.min(total) * 100 / total,
        mib(done),
        mib(total),
        rate
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_at_a_glance() {
        let line = progress_line("model.gguf", 45 * MIB, 100 * MIB, 9_000_000_000);
        assert!(line.starts_with("\rloading model.gguf [#############................."), "{line}");
        assert!(line.contains(" 45%   45.0/100.0 MiB   5.0 MiB/s"), "{line}");
        assert!(progress_line("x", 10, 10, 0).contains("100%"));
        assert!(progress_line("x", 0, 0, 0).contains("  0%"));
    }
}
