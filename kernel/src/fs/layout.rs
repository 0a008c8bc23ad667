//! The volume's layout: the FAT32 partition found in the MBR and its validated boot sector.
//!
//! Everything the rest of `kernel::fs` trusts about the volume (where the FATs and the data area
//! lie, how many clusters exist) is checked here once, with checked arithmetic, against both the
//! partition and the device.

use super::error::{BootSectorProblem, FsError};
use crate::hil::BLOCK_SIZE;

/// MBR partition type: FAT32 addressed through CHS and LBA.
pub const PARTITION_TYPE_FAT32_CHS: u8 = 0x0B;
/// MBR partition type: FAT32 addressed through LBA only.
pub const PARTITION_TYPE_FAT32_LBA: u8 = 0x0C;

/// Fewest clusters a FAT32 volume has; fewer makes it FAT16 or FAT12.
pub const FAT32_MIN_CLUSTERS: u64 = 65_525;
/// Most clusters accepted, so that no valid cluster number reaches the reserved entry values
/// (0x0FFFFFF0 and up).
pub const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFEE;

/// Offset of the partition table in the MBR.
const PARTITION_TABLE_OFFSET: usize = 446;
/// Size of one partition table entry.
const PARTITION_ENTRY_SIZE: usize = 16;

/// A partition found in the MBR, in device blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The partition type byte.
    pub partition_type: u8,
    /// First block of the partition.
    pub first_block: u64,
    /// Blocks in the partition.
    pub block_count: u64,
}

/// Reads a little-endian `u16` at `offset`.
pub(super) fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    match bytes.get(offset..offset + 2) {
        Some(slice) => u16::from_le_bytes([slice[0], slice[1]]),
        None => 0,
    }
}

/// Reads a little-endian `u32` at `offset`.
pub(super) fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    match bytes.get(offset..offset + 4) {
        Some(slice) => u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]),
        None => 0,
    }
}

/// True when a 512-byte sector ends in the 55 AA signature.
fn has_signature(sector: &[u8]) -> bool {
    sector.get(510) == Some(&0x55) && sector.get(511) == Some(&0xAA)
}

/// Finds the first FAT32 partition (type 0x0B or 0x0C) in an MBR sector and checks that it lies
/// inside a device of `device_blocks` blocks.
pub fn find_fat32_partition(mbr: &[u8; BLOCK_SIZE], device_blocks: u64) -> Result<Partition, FsError> {
    if !has_signature(mbr) {
        return Err(FsError::NoPartitionTable);
    }
    let partition = (0..4)
        .map(|index| {
            let entry = PARTITION_TABLE_OFFSET + index * PARTITION_ENTRY_SIZE;
            Partition {
                partition_type: mbr.get(entry + 4).copied().unwrap_or(0),
                first_block: u64::from(read_u32(mbr, entry + 8)),
                block_count: u64::from(read_u32(mbr, entry + 12)),
            }
        })
        .find(|partition| {
            matches!(partition.partition_type, PARTITION_TYPE_FAT32_CHS | PARTITION_TYPE_FAT32_LBA)
                && partition.first_block > 0
                && partition.block_count > 0
        })
        .ok_or(FsError::NoFat32Partition)?;
    let end = partition.first_block + partition.block_count;
    if end > device_blocks {
        return Err(FsError::PartitionOutsideDevice {
            first_block: partition.first_block,
            block_count: partition.block_count,
            device_blocks,
        });
    }
    Ok(partition)
}

/// A validated FAT32 volume layout, in absolute device blocks.
///
/// Invariants (checked by [`Layout::parse`]): the FATs and the data area lie inside the partition,
/// which lies inside the device; `cluster_count` is in the FAT32 range; every FAT holds an entry
/// for every cluster; `root_cluster` names a cluster of the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// First block of the partition (the boot sector).
    pub partition_first_block: u64,
    /// Blocks the volume covers, from its boot sector.
    pub volume_blocks: u64,
    /// Blocks in one cluster (a power of two, 1 to 128).
    pub blocks_per_cluster: u64,
    /// First block of the FAT that is read.
    pub fat_first_block: u64,
    /// Blocks in one FAT.
    pub fat_blocks: u64,
    /// First block of the data area (cluster 2).
    pub data_first_block: u64,
    /// Number of data clusters; valid cluster numbers are 2 to `cluster_count + 1`.
    pub cluster_count: u64,
    /// First cluster of the root directory.
    pub root_cluster: u32,
}

impl Layout {
    /// Parses and validates the boot sector of `partition`.
    pub fn parse(boot_sector: &[u8; BLOCK_SIZE], partition: Partition) -> Result<Self, FsError> {
        if !has_signature(boot_sector) {
            return Err(BootSectorProblem::Signature.into());
        }
        let bytes_per_sector = read_u16(boot_sector, 11);
        if usize::from(bytes_per_sector) != BLOCK_SIZE {
            return Err(BootSectorProblem::BytesPerSector(bytes_per_sector).into());
        }
        let sectors_per_cluster = boot_sector[13];
        if !sectors_per_cluster.is_power_of_two() || sectors_per_cluster > 128 {
            return Err(BootSectorProblem::SectorsPerCluster(sectors_per_cluster).into());
        }
        let reserved_sectors = u64::from(read_u16(boot_sector, 14));
        if reserved_sectors == 0 {
            return Err(BootSectorProblem::ReservedSectors.into());
        }
        let fat_count = u64::from(boot_sector[16]);
        if fat_count == 0 {
            return Err(BootSectorProblem::FatCount.into());
        }
        let root_entry_count = read_u16(boot_sector, 17);
        let fat_size_16 = read_u16(boot_sector, 22);
        let fat_size = u64::from(read_u32(boot_sector, 36));
        if root_entry_count != 0 || fat_size_16 != 0 || fat_size == 0 {
            return Err(BootSectorProblem::NotFat32Fields.into());
        }
        let total_sectors_16 = u64::from(read_u16(boot_sector, 19));
        let total_sectors =
            if total_sectors_16 != 0 { total_sectors_16 } else { u64::from(read_u32(boot_sector, 32)) };
        if total_sectors == 0 {
            return Err(BootSectorProblem::TotalSectors.into());
        }
        if total_sectors > partition.block_count {
            return Err(BootSectorProblem::LargerThanPartition {
                volume_sectors: total_sectors,
                partition_sectors: partition.block_count,
            }
            .into());
        }
        // All of these are below 2^16 + 2^8 * 2^32, far from overflowing u64.
        let data_offset = reserved_sectors + fat_count * fat_size;
        if data_offset >= total_sectors {
            return Err(BootSectorProblem::NoDataArea.into());
        }
        let blocks_per_cluster = u64::from(sectors_per_cluster);
        let cluster_count = (total_sectors - data_offset) / blocks_per_cluster;
        if !(FAT32_MIN_CLUSTERS..=FAT32_MAX_CLUSTERS).contains(&cluster_count) {
            return Err(BootSectorProblem::ClusterCount(cluster_count).into());
        }
        let entries = fat_size * (BLOCK_SIZE as u64 / 4);
        if entries < cluster_count + 2 {
            return Err(BootSectorProblem::FatTooSmall { entries, needed: cluster_count + 2 }.into());
        }
        // Bit 7 of the extended flags set means only one FAT is active: the one in bits 0-3.
        let extended_flags = read_u16(boot_sector, 40);
        let active_fat = if extended_flags & 0x80 != 0 { (extended_flags & 0x0F) as u8 } else { 0 };
        if u64::from(active_fat) >= fat_count {
            return Err(BootSectorProblem::ActiveFat(active_fat).into());
        }
        let root_cluster = read_u32(boot_sector, 44);
        if !(2..cluster_count + 2).contains(&u64::from(root_cluster)) {
            return Err(BootSectorProblem::RootCluster(root_cluster).into());
        }
        let start = partition.first_block;
        Ok(Self {
            partition_first_block: start,
            volume_blocks: total_sectors,
            blocks_per_cluster,
            fat_first_block: start + reserved_sectors + u64::from(active_fat) * fat_size,
            fat_blocks: fat_size,
            data_first_block: start + data_offset,
            cluster_count,
            root_cluster,
        })
    }

    /// Bytes in one cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.blocks_per_cluster * BLOCK_SIZE as u64
    }

    /// True when `cluster` names a cluster of the data area.
    pub fn is_valid_cluster(&self, cluster: u32) -> bool {
        (2..self.cluster_count + 2).contains(&u64::from(cluster))
    }

    /// First device block of a valid `cluster`.
    pub fn cluster_first_block(&self, cluster: u32) -> u64 {
        self.data_first_block + (u64::from(cluster) - 2) * self.blocks_per_cluster
    }
}
