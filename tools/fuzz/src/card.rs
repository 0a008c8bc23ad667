//! A sparse SD card image: the form the `fat32` target takes its input in, and the block
//! device that serves it to `kernel::fs`.
//!
//! A FAT32 volume is at least 32 MiB, far more than a fuzzer can mutate, but all but a few of
//! its blocks are zero. The sparse form holds only the blocks that are not:
//!
//! ```text
//! u32 LE  block count of the card
//! then records, each: u32 LE block number, 512 bytes of that block
//! ```
//!
//! A block no record names reads as zeros; a later record for the same block wins; a last
//! record cut short is padded with zeros. A block number with bit 31 set names block
//! `number & 0x7FFF_FFFF` as failing: every read that touches it fails with a data error, as a
//! worn card's would.

use std::collections::{BTreeMap, BTreeSet};

use kernel::hil::{BLOCK_SIZE, BlockDevice, BlockError, check_transfer};

/// Bytes of one record: the block number and the block.
pub const RECORD_BYTES: usize = 4 + BLOCK_SIZE;

/// The bit of a record's block number that marks the block as failing.
pub const FAILING_BIT: u32 = 1 << 31;

/// A card whose blocks come from a sparse image.
#[derive(Debug, Default)]
pub struct SparseCard {
    block_count: u64,
    blocks: BTreeMap<u64, [u8; BLOCK_SIZE]>,
    failing: BTreeSet<u64>,
    /// Blocks read so far (each block of a multi-block read counts).
    pub blocks_read: u64,
}

impl SparseCard {
    /// The card the sparse image `bytes` describes (any bytes describe one).
    pub fn parse(bytes: &[u8]) -> Self {
        let mut card = Self::default();
        let Some((count, mut rest)) = bytes.split_first_chunk::<4>() else {
            return card;
        };
        card.block_count = u64::from(u32::from_le_bytes(*count));
        while let Some((number, after)) = rest.split_first_chunk::<4>() {
            let number = u32::from_le_bytes(*number);
            let length = after.len().min(BLOCK_SIZE);
            let mut block = [0u8; BLOCK_SIZE];
            block[..length].copy_from_slice(&after[..length]);
            rest = &after[length..];
            let index = u64::from(number & !FAILING_BIT);
            if number & FAILING_BIT != 0 {
                card.failing.insert(index);
            } else {
                card.blocks.insert(index, block);
            }
        }
        card
    }

    /// The sparse image of the whole card image `image` (its length rounded down to blocks):
    /// one record for each block that is not all zeros.
    pub fn sparse_image(image: &[u8]) -> Vec<u8> {
        let block_count = u32::try_from(image.len() / BLOCK_SIZE).unwrap_or(u32::MAX);
        let mut out = block_count.to_le_bytes().to_vec();
        for (index, block) in image.chunks_exact(BLOCK_SIZE).enumerate() {
            if block.iter().any(|&byte| byte != 0) {
                out.extend_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_le_bytes());
                out.extend_from_slice(block);
            }
        }
        out
    }
}

impl BlockDevice for SparseCard {
    fn block_count(&self) -> u64 {
        self.block_count
    }

    fn read_blocks(&mut self, first: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        let count = check_transfer(self.block_count, first, buffer.len())?;
        if self.failing.range(first..first + count).next().is_some() {
            return Err(BlockError::DataError);
        }
        for (index, block) in buffer.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            let number = first + index as u64;
            match self.blocks.get(&number) {
                Some(contents) => block.copy_from_slice(contents),
                None => block.fill(0),
            }
        }
        self.blocks_read += count;
        Ok(())
    }

    fn write_blocks(&mut self, _first: u64, _buffer: &[u8]) -> Result<(), BlockError> {
        // The kernel's volume is read-only; a write would be a defect of its own.
        panic!("kernel::fs wrote to the card");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_images_round_trip_and_mark_failing_blocks() {
        let mut image = vec![0u8; 8 * BLOCK_SIZE];
        image[3 * BLOCK_SIZE + 7] = 0xAB;
        image[5 * BLOCK_SIZE] = 1;
        let sparse = SparseCard::sparse_image(&image);
        assert_eq!(sparse.len(), 4 + 2 * RECORD_BYTES, "only the two blocks that are not zero");
        let mut card = SparseCard::parse(&sparse);
        assert_eq!(card.block_count(), 8);
        let mut read = vec![0xFFu8; 8 * BLOCK_SIZE];
        card.read_blocks(0, &mut read).unwrap();
        assert_eq!(read, image);
        assert_eq!(card.read_blocks(7, &mut [0u8; 2 * BLOCK_SIZE]), Err(BlockError::OutOfRange));

        let mut failing = sparse.clone();
        failing.extend_from_slice(&(4 | FAILING_BIT).to_le_bytes());
        let mut card = SparseCard::parse(&failing);
        assert_eq!(card.read_blocks(2, &mut [0u8; 3 * BLOCK_SIZE]), Err(BlockError::DataError));
        assert!(card.read_blocks(5, &mut [0u8; BLOCK_SIZE]).is_ok());
    }
}
