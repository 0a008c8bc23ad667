//! A FAT32 reader of our own for streaming model files off the SD card: MBR, validated boot
//! sector, long file names, and files read as runs of contiguous blocks, one multi-block
//! `read_blocks` per run.
//!
//! [`Volume::mount`] finds the first FAT32 partition in the MBR of any
//! [`BlockDevice`](crate::hil::BlockDevice). [`Volume::find`], [`Volume::entries`] and
//! [`Volume::list`] look up paths case-insensitively by long or 8.3 name. [`Volume::open`] walks a
//! file's whole cluster chain once, checking every link, and gives a [`File`] that knows its
//! [`Extent`]s; [`File::read_chunk`] then streams it in chunks of the caller's size.
//! [`Volume::begin_open`] and [`Volume::continue_open`] do the same walk a bounded number of
//! links at a time, and [`FileLayout::read_at`] reads an opened file later without a `File`, so
//! a model loads in small pieces between generated tokens.
//!
//! Nothing here panics on any bytes the device returns: every offset is bounds-checked, every
//! chain walk is bounded by the volume's cluster count, and every failure is an [`FsError`] whose
//! `Display` says what is wrong. The reader never writes.

#![forbid(unsafe_code)]

mod directory;
mod error;
mod fat;
mod file;
mod layout;
mod volume;

#[cfg(test)]
pub(crate) mod tests;

pub use directory::{
    ATTRIBUTE_ARCHIVE, ATTRIBUTE_DIRECTORY, ATTRIBUTE_HIDDEN, ATTRIBUTE_READ_ONLY, ATTRIBUTE_SYSTEM,
    ATTRIBUTE_VOLUME_ID, DirectoryEntry, short_name_checksum,
};
pub use error::{BootSectorProblem, ChainFault, FsError};
pub use file::{Extent, File, FileLayout};
pub use layout::{
    FAT32_MAX_CLUSTERS, FAT32_MIN_CLUSTERS, Layout, PARTITION_TYPE_FAT32_CHS, PARTITION_TYPE_FAT32_LBA,
    Partition, find_fat32_partition,
};
pub use volume::{Entries, Opening, Volume};
