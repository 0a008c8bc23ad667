//! `FsError`: every way reading the FAT32 volume can fail, each with a message a person can act on.

use alloc::string::String;
use core::fmt;

use crate::hil::BlockError;

/// What is wrong with the boot sector (BIOS parameter block) of the FAT32 partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootSectorProblem {
    /// The sector does not end in the 55 AA signature.
    Signature,
    /// Bytes per sector is not 512.
    BytesPerSector(u16),
    /// Sectors per cluster is zero, not a power of two, or above 128.
    SectorsPerCluster(u8),
    /// No reserved sectors: the FAT would overlap the boot sector.
    ReservedSectors,
    /// The number of FATs is zero.
    FatCount,
    /// A FAT12/FAT16 field is set (root entry count, 16-bit FAT size) or the 32-bit FAT size is zero.
    NotFat32Fields,
    /// The total sector count is zero.
    TotalSectors,
    /// The volume claims more sectors than its partition holds.
    LargerThanPartition {
        /// Sectors the boot sector claims.
        volume_sectors: u64,
        /// Sectors the partition holds.
        partition_sectors: u64,
    },
    /// The reserved sectors and FATs leave no room for data.
    NoDataArea,
    /// The cluster count says the volume is not FAT32 (FAT32 needs 65525 to 268435438 clusters).
    ClusterCount(u64),
    /// One FAT is too small to hold an entry for every cluster.
    FatTooSmall {
        /// Entries one FAT holds.
        entries: u64,
        /// Entries needed: the cluster count plus the two reserved entries.
        needed: u64,
    },
    /// The active FAT named by the mirroring flags does not exist.
    ActiveFat(u8),
    /// The root directory's first cluster is outside the data area.
    RootCluster(u32),
}

impl fmt::Display for BootSectorProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signature => write!(formatter, "no 55 AA signature"),
            Self::BytesPerSector(value) => {
                write!(formatter, "{value} bytes per sector (only 512 is supported)")
            }
            Self::SectorsPerCluster(value) => {
                write!(formatter, "{value} sectors per cluster (must be a power of two up to 128)")
            }
            Self::ReservedSectors => write!(formatter, "no reserved sectors"),
            Self::FatCount => write!(formatter, "zero FATs"),
            Self::NotFat32Fields => write!(formatter, "FAT12/FAT16 fields set or FAT size zero: not FAT32"),
            Self::TotalSectors => write!(formatter, "total sector count is zero"),
            Self::LargerThanPartition { volume_sectors, partition_sectors } => write!(
                formatter,
                "volume claims {volume_sectors} sectors but its partition holds {partition_sectors}"
            ),
            Self::NoDataArea => write!(formatter, "reserved sectors and FATs leave no data area"),
            Self::ClusterCount(count) => {
                write!(formatter, "{count} clusters is not a FAT32 volume (needs 65525 to 268435438)")
            }
            Self::FatTooSmall { entries, needed } => {
                write!(formatter, "a FAT holds {entries} entries but the volume needs {needed}")
            }
            Self::ActiveFat(index) => write!(formatter, "active FAT {index} does not exist"),
            Self::RootCluster(cluster) => {
                write!(formatter, "root directory cluster {cluster} is outside the volume")
            }
        }
    }
}

/// How a link in a cluster chain is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainFault {
    /// The entry marks the cluster free, so the chain was cut.
    Free,
    /// The entry holds a reserved value (1, or 0x0FFFFFF0..=0x0FFFFFF6).
    Reserved,
    /// The entry marks a bad cluster.
    BadCluster,
    /// The entry names a cluster outside the FAT.
    OutsideFat,
}

impl fmt::Display for ChainFault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Free => write!(formatter, "a free cluster"),
            Self::Reserved => write!(formatter, "a reserved value"),
            Self::BadCluster => write!(formatter, "a bad-cluster mark"),
            Self::OutsideFat => write!(formatter, "a cluster outside the FAT"),
        }
    }
}

/// Why an operation on the FAT32 volume failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsError {
    /// The block device failed a read.
    Read {
        /// First block of the failed transfer.
        block: u64,
        /// Number of blocks in the failed transfer.
        count: u64,
        /// What the device reported.
        error: BlockError,
    },
    /// The device holds no blocks: no card is inserted, or the card is empty.
    EmptyDevice,
    /// Block 0 has no 55 AA signature, so it is not an MBR.
    NoPartitionTable,
    /// No partition of type 0x0B or 0x0C (FAT32) is in the MBR.
    NoFat32Partition,
    /// The FAT32 partition reaches past the end of the device.
    PartitionOutsideDevice {
        /// First block of the partition.
        first_block: u64,
        /// Blocks in the partition.
        block_count: u64,
        /// Blocks on the device.
        device_blocks: u64,
    },
    /// The partition's boot sector is not a valid FAT32 boot sector.
    BadBootSector(BootSectorProblem),
    /// A path is empty, relative, or holds an empty name.
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// Nothing at this path.
    NotFound {
        /// The path as given.
        path: String,
    },
    /// A directory was expected but this is a file.
    NotADirectory {
        /// The path of the file.
        path: String,
    },
    /// A file was expected but this is a directory.
    IsADirectory {
        /// The path of the directory.
        path: String,
    },
    /// A cluster chain has a broken link.
    BrokenChain {
        /// The file or directory the chain belongs to.
        path: String,
        /// The cluster whose FAT entry (or, for the first link, whose directory entry) is broken.
        cluster: u32,
        /// The value found.
        value: u32,
        /// What the value means.
        fault: ChainFault,
    },
    /// A cluster chain runs longer than the volume has clusters, so it loops.
    ChainLoop {
        /// The file or directory the chain belongs to.
        path: String,
        /// The step bound that was passed (the volume's cluster count).
        limit: u64,
    },
    /// A file's cluster chain ends before the file's size is covered.
    ChainTooShort {
        /// The file.
        path: String,
        /// Clusters in the chain.
        clusters: u64,
        /// Clusters the size needs.
        needed: u64,
    },
    /// A directory holds more entries than FAT allows (65536).
    DirectoryTooLarge {
        /// The directory.
        path: String,
    },
}

impl fmt::Display for FsError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { block, count: 1, error } => {
                write!(formatter, "read error at block {block}: {error}")
            }
            Self::Read { block, count, error } => {
                write!(formatter, "read error at block {block} ({count} blocks): {error}")
            }
            Self::EmptyDevice => write!(formatter, "the device holds no blocks (is a card inserted?)"),
            Self::NoPartitionTable => write!(formatter, "no partition table: block 0 is not an MBR"),
            Self::NoFat32Partition => write!(formatter, "no FAT32 partition in the MBR"),
            Self::PartitionOutsideDevice { first_block, block_count, device_blocks } => write!(
                formatter,
                "FAT32 partition (blocks {first_block}..{}) reaches past the end of the device ({device_blocks} blocks)",
                first_block.saturating_add(*block_count)
            ),
            Self::BadBootSector(problem) => write!(formatter, "bad FAT32 boot sector: {problem}"),
            Self::InvalidPath { path } => {
                write!(formatter, "invalid path {path:?}: paths start with / and hold no empty names")
            }
            Self::NotFound { path } => write!(formatter, "file {path} not found"),
            Self::NotADirectory { path } => write!(formatter, "{path} is a file, not a directory"),
            Self::IsADirectory { path } => write!(formatter, "{path} is a directory, not a file"),
            Self::BrokenChain { path, cluster, value, fault } => write!(
                formatter,
                "cluster chain of {path} is broken at cluster {cluster}: it points to {fault} ({value:#010x})"
            ),
            Self::ChainLoop { path, limit } => {
                write!(formatter, "cluster chain of {path} loops (longer than the volume's {limit} clusters)")
            }
            Self::ChainTooShort { path, clusters, needed } => write!(
                formatter,
                "cluster chain of {path} ends after {clusters} clusters but the file needs {needed}"
            ),
            Self::DirectoryTooLarge { path } => {
                write!(formatter, "directory {path} holds more than 65536 entries")
            }
        }
    }
}

impl core::error::Error for FsError {}

impl From<BootSectorProblem> for FsError {
    fn from(problem: BootSectorProblem) -> Self {
        Self::BadBootSector(problem)
    }
}
