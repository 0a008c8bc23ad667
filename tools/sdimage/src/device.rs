//! `ImageDevice`: an image file on the host seen as a `kernel::hil::BlockDevice`, so the kernel's
//! own FAT32 reader can check what the builder wrote.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use kernel::hil::{BLOCK_SIZE, BlockDevice, BlockError, check_transfer};

/// An image file read and written in 512-byte blocks.
#[derive(Debug)]
pub struct ImageDevice {
    file: File,
    block_count: u64,
}

impl ImageDevice {
    /// Opens an image for reading and writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let block_count = file.metadata()?.len() / BLOCK_SIZE as u64;
        Ok(Self { file, block_count })
    }
}

impl BlockDevice for ImageDevice {
    fn block_count(&self) -> u64 {
        self.block_count
    }

    fn read_blocks(&mut self, first: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        check_transfer(self.block_count, first, buffer.len())?;
        self.file.read_exact_at(buffer, first * BLOCK_SIZE as u64).map_err(|_| BlockError::DataError)
    }

    fn write_blocks(&mut self, first: u64, buffer: &[u8]) -> Result<(), BlockError> {
        check_transfer(self.block_count, first, buffer.len())?;
        self.file.write_all_at(buffer, first * BLOCK_SIZE as u64).map_err(|_| BlockError::DataError)
    }
}
