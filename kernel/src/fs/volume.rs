//! `Volume`: a mounted FAT32 volume on a block device, with path lookup, directory listing and
//! opening files.

use alloc::string::String;
use alloc::vec::Vec;

use super::directory::{DirectoryCursor, DirectoryEntry, ENTRY_SIZE, MAX_DIRECTORY_ENTRIES};
use super::error::FsError;
use super::fat::{ChainWalk, FatWindow, read_blocks};
use super::file::{Extent, File, FileLayout};
use super::layout::{Layout, find_fat32_partition};
use crate::hil::{BLOCK_SIZE, BlockDevice};

/// A file being opened a piece of its cluster chain at a time ([`Volume::begin_open`]).
#[derive(Clone, Debug)]
pub struct Opening {
    path: String,
    size: u64,
    /// Clusters the size needs.
    needed: u64,
    walk: ChainWalk,
}

impl Opening {
    /// The file's size in bytes (from its directory entry).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Clusters of its chain walked so far.
    pub fn clusters_walked(&self) -> u64 {
        self.walk.clusters_walked()
    }
}

/// A FAT32 volume found through the MBR of a block device.
///
/// Mounting checks the partition and the boot sector once; every later operation checks each
/// cluster chain it follows, so no bytes on the device can make it panic or loop: the worst a
/// corrupt volume does is return an [`FsError`].
#[derive(Debug)]
pub struct Volume<D: BlockDevice> {
    pub(super) device: D,
    layout: Layout,
    fat: FatWindow,
}

impl<D: BlockDevice> Volume<D> {
    /// Reads the MBR, finds the first FAT32 partition (type 0x0B or 0x0C) and validates its boot
    /// sector.
    pub fn mount(mut device: D) -> Result<Self, FsError> {
        let device_blocks = device.block_count();
        if device_blocks == 0 {
            return Err(FsError::EmptyDevice);
        }
        let mut sector = [0u8; BLOCK_SIZE];
        read_blocks(&mut device, 0, &mut sector)?;
        let partition = find_fat32_partition(&sector, device_blocks)?;
        read_blocks(&mut device, partition.first_block, &mut sector)?;
        let layout = Layout::parse(&sector, partition)?;
        Ok(Self { device, layout, fat: FatWindow::new() })
    }

    /// The validated layout of the volume.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The block device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The block device, mutably. The cached FAT blocks are dropped, in case the caller writes.
    pub fn device_mut(&mut self) -> &mut D {
        self.fat.invalidate();
        &mut self.device
    }

    /// Gives the block device back.
    pub fn into_device(self) -> D {
        self.device
    }

    /// Looks up `path` (absolute, `/`-separated, case-insensitive, long or 8.3 names) and returns
    /// its entry. `/` is the root directory.
    pub fn find(&mut self, path: &str) -> Result<DirectoryEntry, FsError> {
        let names = split_path(path)?;
        let mut current = DirectoryEntry::root(&self.layout);
        let mut walked = String::new();
        for name in names {
            if !current.is_directory() {
                return Err(FsError::NotADirectory { path: walked });
            }
            let shown = if walked.is_empty() { "/" } else { walked.as_str() };
            let mut cursor = self.directory_cursor(shown, current.first_cluster())?;
            let mut found = None;
            while let Some(entry) = cursor.next_entry(&mut self.device, &self.layout)? {
                if entry.matches(name) {
                    found = Some(entry);
                    break;
                }
            }
            current = found.ok_or_else(|| FsError::NotFound { path: String::from(path) })?;
            walked.push('/');
            walked.push_str(current.name());
        }
        Ok(current)
    }

    /// Iterates over the files and subdirectories of the directory at `path` (`.`, `..`,
    /// deleted slots and the volume label are skipped). The iterator ends after an error.
    pub fn entries(&mut self, path: &str) -> Result<Entries<'_, D>, FsError> {
        let entry = self.find(path)?;
        if !entry.is_directory() {
            return Err(FsError::NotADirectory { path: String::from(path) });
        }
        let cursor = self.directory_cursor(path, entry.first_cluster())?;
        Ok(Entries { volume: self, cursor })
    }

    /// Lists the directory at `path` (see [`Volume::entries`]).
    pub fn list(&mut self, path: &str) -> Result<Vec<DirectoryEntry>, FsError> {
        self.entries(path)?.collect()
    }

    /// Opens a file again from a layout taken from an earlier [`File`] on this volume, without
    /// walking its chain again. The volume is read-only, so the layout stays valid.
    pub fn reopen(&mut self, layout: &FileLayout) -> File<'_, D> {
        File::new(self, layout.path.clone(), layout.size, layout.extents.clone())
    }

    /// Opens the file at `path`, walking and checking its whole cluster chain: it must end,
    /// within the volume's cluster count, and cover the file's size.
    pub fn open(&mut self, path: &str) -> Result<File<'_, D>, FsError> {
        let mut opening = self.begin_open(path)?;
        loop {
            if let Some(layout) = self.continue_open(&mut opening, usize::MAX)? {
                return Ok(File::new(self, layout.path, layout.size, layout.extents));
            }
        }
    }

    /// Starts opening the file at `path` a piece at a time: looks it up; the chain is walked by
    /// [`Volume::continue_open`], so a large file's chain (tens of thousands of links) is
    /// never walked at once.
    pub fn begin_open(&mut self, path: &str) -> Result<Opening, FsError> {
        let entry = self.find(path)?;
        if entry.is_directory() {
            return Err(FsError::IsADirectory { path: String::from(path) });
        }
        let size = entry.size();
        let needed = size.div_ceil(self.layout.cluster_bytes());
        Ok(Opening {
            path: String::from(path),
            size,
            needed,
            walk: ChainWalk::new(entry.first_cluster(), needed),
        })
    }

    /// Follows up to `links` more links of `opening`'s cluster chain (at least one). Returns
    /// the file's layout once the chain is walked and checked, as [`Volume::open`] checks it.
    pub fn continue_open(
        &mut self,
        opening: &mut Opening,
        links: usize,
    ) -> Result<Option<FileLayout>, FsError> {
        if opening.size == 0 {
            let path = core::mem::take(&mut opening.path);
            return Ok(Some(FileLayout { path, size: 0, extents: Vec::new() }));
        }
        let Some(chain) =
            self.fat.walk_on(&mut self.device, &self.layout, &opening.path, &mut opening.walk, links)?
        else {
            return Ok(None);
        };
        if chain.cluster_count < opening.needed {
            return Err(FsError::ChainTooShort {
                path: opening.path.clone(),
                clusters: chain.cluster_count,
                needed: opening.needed,
            });
        }
        let mut extents = Vec::new();
        let mut blocks_left = opening.size.div_ceil(BLOCK_SIZE as u64);
        let mut file_offset = 0;
        for run in chain.runs {
            let block_count = (run.cluster_count * self.layout.blocks_per_cluster).min(blocks_left);
            extents.push(Extent {
                file_offset,
                first_block: self.layout.cluster_first_block(run.first_cluster),
                block_count,
            });
            file_offset += block_count * BLOCK_SIZE as u64;
            blocks_left -= block_count;
            if blocks_left == 0 {
                break;
            }
        }
        let path = core::mem::take(&mut opening.path);
        Ok(Some(FileLayout { path, size: opening.size, extents }))
    }

    /// A cursor over the directory whose chain starts at `first_cluster`, after checking that
    /// chain and its length.
    fn directory_cursor(&mut self, path: &str, first_cluster: u32) -> Result<DirectoryCursor, FsError> {
        let keep = (MAX_DIRECTORY_ENTRIES * ENTRY_SIZE as u64).div_ceil(self.layout.cluster_bytes());
        let chain = self.fat.walk(&mut self.device, &self.layout, path, first_cluster, keep)?;
        if chain.cluster_count > keep {
            return Err(FsError::DirectoryTooLarge { path: String::from(path) });
        }
        Ok(DirectoryCursor::new(&self.layout, chain.runs))
    }
}

/// Splits an absolute path into its names; `/` alone gives none, and one trailing `/` is allowed.
fn split_path(path: &str) -> Result<Vec<&str>, FsError> {
    let invalid = || FsError::InvalidPath { path: String::from(path) };
    let relative = path.strip_prefix('/').ok_or_else(invalid)?;
    let relative = relative.strip_suffix('/').unwrap_or(relative);
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = relative.split('/').collect();
    if names.iter().any(|name| name.is_empty()) {
        return Err(invalid());
    }
    Ok(names)
}

/// An iterator over the entries of one directory, borrowing the volume.
#[derive(Debug)]
pub struct Entries<'volume, D: BlockDevice> {
    volume: &'volume mut Volume<D>,
    cursor: DirectoryCursor,
}

impl<D: BlockDevice> Iterator for Entries<'_, D> {
    type Item = Result<DirectoryEntry, FsError>;

    fn next(&mut self) -> Option<Self::Item> {
        let volume = &mut *self.volume;
        self.cursor.next_entry(&mut volume.device, &volume.layout).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_paths_split_into_names() {
        assert_eq!(split_path("/"), Ok(Vec::new()));
        assert_eq!(split_path("/models/"), Ok(alloc::vec!["models"]));
        assert_eq!(split_path("/models/a.gguf"), Ok(alloc::vec!["models", "a.gguf"]));
        assert!(matches!(split_path("models"), Err(FsError::InvalidPath { .. })));
        assert!(matches!(split_path(""), Err(FsError::InvalidPath { .. })));
        assert!(matches!(split_path("/a//b"), Err(FsError::InvalidPath { .. })));
    }
}
