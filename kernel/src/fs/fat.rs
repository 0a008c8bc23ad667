//! The file allocation table: reading entries through a small window and walking cluster chains
//! into runs of contiguous clusters, with every link checked.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::error::{ChainFault, FsError};
use super::layout::{Layout, read_u32};
use crate::hil::{BLOCK_SIZE, BlockDevice};

/// Blocks of the FAT read at once (16 blocks hold 2048 entries).
const WINDOW_BLOCKS: u64 = 16;
/// Entries in one FAT block.
const ENTRIES_PER_BLOCK: u64 = (BLOCK_SIZE / 4) as u64;
/// FAT32 entries use only their low 28 bits.
const ENTRY_MASK: u32 = 0x0FFF_FFFF;
/// The bad-cluster mark.
const BAD_CLUSTER: u32 = 0x0FFF_FFF7;
/// Values from here up end a chain.
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;
/// Values from here up to the bad-cluster mark are reserved.
const RESERVED_HIGH: u32 = 0x0FFF_FFF0;

/// Reads device blocks, turning a device failure into [`FsError::Read`].
pub(super) fn read_blocks<D: BlockDevice>(
    device: &mut D,
    first: u64,
    buffer: &mut [u8],
) -> Result<(), FsError> {
    device.read_blocks(first, buffer).map_err(|error| FsError::Read {
        block: first,
        count: (buffer.len() / BLOCK_SIZE) as u64,
        error,
    })
}

/// What a FAT entry says about the cluster after this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// The chain goes on at this cluster.
    Next(u32),
    /// The chain ends here.
    End,
    /// The entry is not a valid link.
    Broken(u32, ChainFault),
}

/// A run of clusters that follow each other on the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ClusterRun {
    /// First cluster of the run.
    pub first_cluster: u32,
    /// Clusters in the run (at least 1).
    pub cluster_count: u64,
}

/// A chain walked to its end.
#[derive(Debug)]
pub(super) struct Chain {
    /// The runs of the first clusters kept (see [`FatWindow::walk`]).
    pub runs: Vec<ClusterRun>,
    /// Clusters in the whole chain.
    pub cluster_count: u64,
}

/// A window of consecutive FAT blocks kept in memory, so walking a chain costs one multi-block
/// read per 2048 entries rather than one read per entry.
#[derive(Debug)]
pub(super) struct FatWindow {
    /// The cached blocks.
    bytes: Vec<u8>,
    /// First FAT block (relative to the FAT) held, when `bytes` holds anything.
    first_block: Option<u64>,
    /// Blocks held.
    block_count: u64,
}

impl FatWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self { bytes: vec![0; WINDOW_BLOCKS as usize * BLOCK_SIZE], first_block: None, block_count: 0 }
    }

    /// Forgets the cached blocks, so the next lookup reads the device again.
    pub fn invalidate(&mut self) {
        self.first_block = None;
    }

    /// Reads the raw FAT entry of a valid `cluster`.
    fn entry<D: BlockDevice>(
        &mut self,
        device: &mut D,
        layout: &Layout,
        cluster: u32,
    ) -> Result<u32, FsError> {
        let block = u64::from(cluster) / ENTRIES_PER_BLOCK;
        let cached = match self.first_block {
            Some(first) => block >= first && block < first + self.block_count,
            None => false,
        };
        if !cached {
            // The layout guarantees `block < layout.fat_blocks`, so the window is never empty.
            let count = WINDOW_BLOCKS.min(layout.fat_blocks - block);
            let length = count as usize * BLOCK_SIZE;
            self.first_block = None;
            read_blocks(device, layout.fat_first_block + block, &mut self.bytes[..length])?;
            self.first_block = Some(block);
            self.block_count = count;
        }
        let first = self.first_block.unwrap_or(block);
        let offset =
            (block - first) as usize * BLOCK_SIZE + (u64::from(cluster) % ENTRIES_PER_BLOCK) as usize * 4;
        Ok(read_u32(&self.bytes, offset) & ENTRY_MASK)
    }

    /// Reads and classifies the FAT entry of a valid `cluster`.
    fn link<D: BlockDevice>(
        &mut self,
        device: &mut D,
        layout: &Layout,
        cluster: u32,
    ) -> Result<Link, FsError> {
        let value = self.entry(device, layout, cluster)?;
        Ok(match value {
            0 => Link::Broken(value, ChainFault::Free),
            1 => Link::Broken(value, ChainFault::Reserved),
            BAD_CLUSTER => Link::Broken(value, ChainFault::BadCluster),
            END_OF_CHAIN.. => Link::End,
            RESERVED_HIGH.. => Link::Broken(value, ChainFault::Reserved),
            next if layout.is_valid_cluster(next) => Link::Next(next),
            _ => Link::Broken(value, ChainFault::OutsideFat),
        })
    }

    /// Walks the chain that starts at `first_cluster` to its end.
    ///
    /// Runs are recorded for the first `keep_clusters` clusters only, so a hostile chain costs no
    /// more memory than the caller needs; the rest is walked to check it ends. The walk takes at
    /// most `layout.cluster_count` steps: a longer chain must visit a cluster twice, so it is
    /// reported as a loop. Time O(chain length), one device read per 2048 entries.
    pub fn walk<D: BlockDevice>(
        &mut self,
        device: &mut D,
        layout: &Layout,
        path: &str,
        first_cluster: u32,
        keep_clusters: u64,
    ) -> Result<Chain, FsError> {
        let mut walk = ChainWalk::new(first_cluster, keep_clusters);
        loop {
            if let Some(chain) = self.walk_on(device, layout, path, &mut walk, usize::MAX)? {
                return Ok(chain);
            }
        }
    }

    /// Follows up to `links` more links of `walk` (at least one). Returns the chain once its end
    /// is reached, with the checks of [`FatWindow::walk`].
    pub fn walk_on<D: BlockDevice>(
        &mut self,
        device: &mut D,
        layout: &Layout,
        path: &str,
        walk: &mut ChainWalk,
        links: usize,
    ) -> Result<Option<Chain>, FsError> {
        let broken = |cluster: u32, value: u32, fault: ChainFault| FsError::BrokenChain {
            path: String::from(path),
            cluster,
            value,
            fault,
        };
        if walk.count == 0 && !layout.is_valid_cluster(walk.cluster) {
            let fault = if walk.cluster == 0 { ChainFault::Free } else { ChainFault::OutsideFat };
            return Err(broken(0, walk.cluster, fault));
        }
        for _ in 0..links.max(1) {
            walk.count += 1;
            if walk.count > layout.cluster_count {
                return Err(FsError::ChainLoop { path: String::from(path), limit: layout.cluster_count });
            }
            let cluster = walk.cluster;
            if walk.count <= walk.keep_clusters {
                match walk.runs.last_mut() {
                    Some(run) if u64::from(run.first_cluster) + run.cluster_count == u64::from(cluster) => {
                        run.cluster_count += 1;
                    }
                    _ => walk.runs.push(ClusterRun { first_cluster: cluster, cluster_count: 1 }),
                }
            }
            match self.link(device, layout, cluster)? {
                Link::Next(next) => walk.cluster = next,
                Link::End => {
                    let runs = core::mem::take(&mut walk.runs);
                    return Ok(Some(Chain { runs, cluster_count: walk.count }));
                }
                Link::Broken(value, fault) => return Err(broken(cluster, value, fault)),
            }
        }
        Ok(None)
    }
}

/// A cluster chain being walked a bounded number of links at a time
/// ([`FatWindow::walk_on`]), so a large file can be opened in pieces.
#[derive(Clone, Debug)]
pub struct ChainWalk {
    /// The cluster whose link is read next.
    cluster: u32,
    /// Clusters visited so far.
    count: u64,
    /// Clusters whose runs are kept.
    keep_clusters: u64,
    runs: Vec<ClusterRun>,
}

impl ChainWalk {
    /// A walk from `first_cluster` keeping the runs of the first `keep_clusters` clusters.
    pub fn new(first_cluster: u32, keep_clusters: u64) -> Self {
        Self { cluster: first_cluster, count: 0, keep_clusters, runs: Vec::new() }
    }

    /// Clusters visited so far.
    pub fn clusters_walked(&self) -> u64 {
        self.count
    }
}
