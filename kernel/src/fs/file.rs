//! `File`: an open file whose cluster chain was turned into extents of contiguous blocks, read in
//! caller-chosen chunks with one multi-block device read per extent piece.

use alloc::string::String;
use alloc::vec::Vec;

use super::error::FsError;
use super::fat::read_blocks;
use super::volume::Volume;
use crate::hil::{BLOCK_SIZE, BlockDevice};

/// A piece of a file that lies in consecutive device blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file of the extent's first byte (a multiple of the cluster size).
    pub file_offset: u64,
    /// First device block of the extent.
    pub first_block: u64,
    /// Blocks in the extent; the last extent ends at the block holding the file's last byte.
    pub block_count: u64,
}

impl Extent {
    /// Offset in the file just past the extent's last block.
    fn end_offset(&self) -> u64 {
        self.file_offset + self.block_count * BLOCK_SIZE as u64
    }
}

/// Where an opened file lies, kept without borrowing the volume, so a long read can be spread
/// over time (a model staged between generated tokens) and resumed with [`FileLayout::read_at`]
/// or [`Volume::reopen`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// The path it was opened with.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its checked extents, in file order.
    pub extents: Vec<Extent>,
}

/// An open file on a [`Volume`].
///
/// The chain was walked and checked when the file was opened, so reads touch only data blocks:
/// a read that is block-aligned issues one `read_blocks` per extent it covers, and only a
/// partial block at either end goes through a one-block bounce buffer.
#[derive(Debug)]
pub struct File<'volume, D: BlockDevice> {
    volume: &'volume mut Volume<D>,
    path: String,
    size: u64,
    extents: Vec<Extent>,
    position: u64,
}

impl<'volume, D: BlockDevice> File<'volume, D> {
    /// A file over already checked extents covering `size` bytes.
    pub(super) fn new(volume: &'volume mut Volume<D>, path: String, size: u64, extents: Vec<Extent>) -> Self {
        Self { volume, path, size, extents, position: 0 }
    }

    /// The volume the file is on.
    pub fn volume(&self) -> &Volume<D> {
        self.volume
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The offset the next [`File::read_chunk`] reads from.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes left between the position and the end of the file.
    pub fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.position)
    }

    /// Moves the position; a position at or past the end makes the next chunk empty.
    pub fn seek(&mut self, position: u64) {
        self.position = position;
    }

    /// The file's layout, to resume reading later without walking its chain again.
    pub fn layout(&self) -> FileLayout {
        FileLayout { path: self.path.clone(), size: self.size, extents: self.extents.clone() }
    }

    /// The file's extents of contiguous blocks, in file order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Reads the next chunk into `buffer` and advances the position. Returns the bytes read,
    /// `buffer.len()` except at the end of the file, where it is what is left (0 at the end).
    /// Bytes of `buffer` past the returned count are unspecified. A buffer whose length is a
    /// multiple of 512 keeps every chunk block-aligned, so each chunk costs one device read per
    /// extent it covers.
    pub fn read_chunk(&mut self, buffer: &mut [u8]) -> Result<usize, FsError> {
        let count = self.read_at(self.position, buffer)?;
        self.position += count as u64;
        Ok(count)
    }

    /// Reads from `offset` into `buffer` without moving the position. Returns the bytes read:
    /// `buffer.len()` or less at the end of the file, 0 at or past the end. Bytes of `buffer`
    /// past the returned count are unspecified.
    pub fn read_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<usize, FsError> {
        read_extents_at(&mut self.volume.device, &self.extents, self.size, offset, buffer)
    }
}

impl FileLayout {
    /// Reads from `offset` of the file into `buffer`, like [`File::read_at`], from `volume`
    /// (the volume the layout was taken from).
    pub fn read_at<D: BlockDevice>(
        &self,
        volume: &mut Volume<D>,
        offset: u64,
        buffer: &mut [u8],
    ) -> Result<usize, FsError> {
        read_extents_at(&mut volume.device, &self.extents, self.size, offset, buffer)
    }
}

/// Reads from `offset` of a file of `size` bytes lying in `extents` into `buffer` (see
/// [`File::read_at`]).
fn read_extents_at<D: BlockDevice>(
    device: &mut D,
    extents: &[Extent],
    size: u64,
    offset: u64,
    buffer: &mut [u8],
) -> Result<usize, FsError> {
    if offset >= size {
        return Ok(0);
    }
    let length = (buffer.len() as u64).min(size - offset) as usize;
    let mut done = 0;
    let mut bounce = [0u8; BLOCK_SIZE];
    while done < length {
        let position = offset + done as u64;
        let index = extents.partition_point(|extent| extent.end_offset() <= position);
        // The extents cover the whole size (checked at open), so this always finds one.
        let Some(extent) = extents.get(index).copied() else { return Ok(done) };
        let block_in_extent = (position - extent.file_offset) / BLOCK_SIZE as u64;
        let block = extent.first_block + block_in_extent;
        let within_block = (position % BLOCK_SIZE as u64) as usize;
        let wanted = length - done;
        if within_block == 0 {
            let space_blocks = ((buffer.len() - done) / BLOCK_SIZE) as u64;
            let wanted_blocks = wanted.div_ceil(BLOCK_SIZE) as u64;
            let blocks = space_blocks.min(wanted_blocks).min(extent.block_count - block_in_extent);
            if blocks > 0 {
                let bytes = blocks as usize * BLOCK_SIZE;
                read_blocks(device, block, &mut buffer[done..done + bytes])?;
                done += bytes.min(wanted);
                continue;
            }
        }
        read_blocks(device, block, &mut bounce)?;
        let take = (BLOCK_SIZE - within_block).min(wanted);
        buffer[done..done + take].copy_from_slice(&bounce[within_block..within_block + take]);
        done += take;
    }
    Ok(length)
}
