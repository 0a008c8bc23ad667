//! Host tests of `kernel::fs`: real FAT32 images formatted by the `fatfs` crate behind an MBR of
//! our own, read back through an in-memory `BlockDevice` that can count reads, patch bytes and
//! fail chosen blocks.

extern crate std;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use std::io::{Cursor, Write};
use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::hil::{BLOCK_SIZE, BlockDevice, BlockError, check_transfer};

/// First block of the partition in every test image (as on a real SD card).
const PARTITION_FIRST_BLOCK: u64 = 2048;
/// Blocks in a test image: 40 MiB, just above the smallest FAT32 volume with 512-byte clusters.
const IMAGE_BLOCKS: u64 = 40 * 2048;

/// A block device over an image in memory, with patched blocks laid over it, a log of every
/// `read_blocks` call, and blocks that fail with a timeout.
pub(crate) struct MemoryDevice<'image> {
    image: &'image [u8],
    patches: BTreeMap<u64, [u8; BLOCK_SIZE]>,
    reads: Vec<(u64, u64)>,
    failing: BTreeMap<u64, BlockError>,
    block_count: u64,
}

impl<'image> MemoryDevice<'image> {
    fn new(image: &'image [u8]) -> Self {
        let block_count = (image.len() / BLOCK_SIZE) as u64;
        Self { image, patches: BTreeMap::new(), reads: Vec::new(), failing: BTreeMap::new(), block_count }
    }

    fn block(&self, block: u64) -> [u8; BLOCK_SIZE] {
        if let Some(patch) = self.patches.get(&block) {
            return *patch;
        }
        let start = block as usize * BLOCK_SIZE;
        let mut bytes = [0u8; BLOCK_SIZE];
        bytes.copy_from_slice(&self.image[start..start + BLOCK_SIZE]);
        bytes
    }

    /// Makes every read that touches `block` fail with `error` (for other modules' tests).
    pub(crate) fn fail(&mut self, block: u64, error: BlockError) {
        self.failing.insert(block, error);
    }

    /// Makes every block readable again.
    pub(crate) fn heal(&mut self) {
        self.failing.clear();
    }

    /// Overwrites bytes at an absolute byte offset of the device.
    fn patch(&mut self, offset: u64, bytes: &[u8]) {
        for (index, byte) in bytes.iter().enumerate() {
            let position = offset + index as u64;
            let block = position / BLOCK_SIZE as u64;
            let mut contents = self.block(block);
            contents[(position % BLOCK_SIZE as u64) as usize] = *byte;
            self.patches.insert(block, contents);
        }
    }
}

impl core::fmt::Debug for MemoryDevice<'_> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(formatter, "MemoryDevice({} blocks, {} patched)", self.block_count, self.patches.len())
    }
}

impl BlockDevice for MemoryDevice<'_> {
    fn block_count(&self) -> u64 {
        self.block_count
    }

    fn read_blocks(&mut self, first: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        let count = check_transfer(self.block_count, first, buffer.len())?;
        self.reads.push((first, count));
        if let Some((_, error)) = self.failing.range(first..first + count).next() {
            return Err(*error);
        }
        for (index, chunk) in buffer.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            chunk.copy_from_slice(&self.block(first + index as u64));
        }
        Ok(())
    }

    fn write_blocks(&mut self, first: u64, buffer: &[u8]) -> Result<(), BlockError> {
        check_transfer(self.block_count, first, buffer.len())?;
        self.patch(first * BLOCK_SIZE as u64, buffer);
        Ok(())
    }
}

/// Deterministic test bytes: a different sequence for every seed.
fn pattern(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes an MBR with one partition of `partition_type` covering the rest of the image.
fn write_mbr(image: &mut [u8], partition_type: u8) {
    let blocks = (image.len() / BLOCK_SIZE) as u64;
    let entry = &mut image[446..462];
    entry[4] = partition_type;
    entry[8..12].copy_from_slice(&(PARTITION_FIRST_BLOCK as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&((blocks - PARTITION_FIRST_BLOCK) as u32).to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xAA;
}

/// A formatted FAT32 image with an MBR; `populate` fills the file system.
fn build_image(populate: impl FnOnce(&fatfs::Dir<'_, Cursor<&mut [u8]>>)) -> Vec<u8> {
    let mut image = vec![0u8; IMAGE_BLOCKS as usize * BLOCK_SIZE];
    write_mbr(&mut image, PARTITION_TYPE_FAT32_LBA);
    let partition = &mut image[PARTITION_FIRST_BLOCK as usize * BLOCK_SIZE..];
    let options = fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32).bytes_per_cluster(512);
    fatfs::format_volume(Cursor::new(&mut *partition), options).expect("format");
    let file_system = fatfs::FileSystem::new(Cursor::new(partition), fatfs::FsOptions::new()).expect("mount");
    populate(&file_system.root_dir());
    file_system.unmount().expect("unmount");
    image
}

/// A mounted volume (over a leaked image) holding `files`, their folders created on the way:
/// for other modules' tests that read from a card.
pub(crate) fn fat_volume_with(files: &[(&str, &[u8])]) -> Volume<MemoryDevice<'static>> {
    let image = build_image(|root| {
        for (path, bytes) in files {
            let mut folder = String::new();
            for part in
                path.trim_start_matches('/').split('/').rev().skip(1).collect::<Vec<_>>().into_iter().rev()
            {
                folder.push('/');
                folder.push_str(part);
                let _ = root.create_dir(folder.trim_start_matches('/'));
            }
            write_file(root, path.trim_start_matches('/'), bytes);
        }
    });
    Volume::mount(MemoryDevice::new(Vec::leak(image))).expect("mount a built image")
}

fn write_file(directory: &fatfs::Dir<'_, Cursor<&mut [u8]>>, path: &str, bytes: &[u8]) {
    directory.create_file(path).expect("create").write_all(bytes).expect("write");
}

const MODEL_PATH: &str = "/models/smollm2-135m-instruct.gguf";
const FRAGMENTED_PATH: &str = "/models/Fragmented Model.bin";

/// The files of the shared test image, with their contents.
fn base_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("/kernel8.img", pattern(1, 3000)),
        ("/config.txt", b"arm_64bit=1\nkernel=kernel8.img\nenable_uart=1\n".to_vec()),
        ("/empty.bin", Vec::new()),
        (MODEL_PATH, pattern(2, 200 * 1024 + 77)),
        (FRAGMENTED_PATH, pattern(3, 5 * 512 + 100)),
        ("/models/spacer.bin", pattern(4, 700)),
        ("/deep/a/b/leaf.txt", b"leaf".to_vec()),
    ]
}

/// Names of the many-entry directory, long enough for three long-name slots each.
fn many_names() -> Vec<String> {
    (0..40).map(|index| std::format!("file number {index:02} with a long name.dat")).collect()
}

/// The shared test image, built once.
fn base_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        build_image(|root| {
            let files = base_files();
            root.create_dir("models").unwrap();
            root.create_dir("deep").unwrap();
            root.create_dir("deep/a").unwrap();
            root.create_dir("deep/a/b").unwrap();
            root.create_dir("many").unwrap();
            for (path, bytes) in &files {
                if *path != FRAGMENTED_PATH && *path != "/models/spacer.bin" {
                    write_file(root, &path[1..], bytes);
                }
            }
            // Interleave two files so the first one's clusters are split in two runs.
            let fragmented = &files.iter().find(|(path, _)| *path == FRAGMENTED_PATH).unwrap().1;
            let mut first = root.create_file(&FRAGMENTED_PATH[1..]).unwrap();
            first.write_all(&fragmented[..1024]).unwrap();
            write_file(
                root,
                "models/spacer.bin",
                &files.iter().find(|(p, _)| p.ends_with("spacer.bin")).unwrap().1,
            );
            first.write_all(&fragmented[1024..]).unwrap();
            drop(first);
            for (index, name) in many_names().iter().enumerate() {
                write_file(root, &std::format!("many/{name}"), &pattern(100 + index as u64, index));
            }
        })
    })
}

fn mount_base() -> Volume<MemoryDevice<'static>> {
    Volume::mount(MemoryDevice::new(base_image())).expect("mount the base image")
}

/// Reads a whole file in chunks of `chunk` bytes.
fn read_file<D: BlockDevice>(volume: &mut Volume<D>, path: &str, chunk: usize) -> Result<Vec<u8>, FsError> {
    let mut file = volume.open(path)?;
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; chunk];
    loop {
        let count = file.read_chunk(&mut buffer)?;
        if count == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&buffer[..count]);
    }
}

#[test]
fn fs_mounts_and_lists_the_root_and_subdirectories() {
    let mut volume = mount_base();
    let layout = *volume.layout();
    assert_eq!(layout.partition_first_block, PARTITION_FIRST_BLOCK);
    assert_eq!(layout.blocks_per_cluster, 1);
    assert!(layout.cluster_count >= FAT32_MIN_CLUSTERS);
    let root: Vec<(String, bool)> = volume
        .list("/")
        .unwrap()
        .iter()
        .map(|entry| (entry.name().to_string(), entry.is_directory()))
        .collect();
    let expected = [
        ("models", true),
        ("deep", true),
        ("many", true),
        ("kernel8.img", false),
        ("config.txt", false),
        ("empty.bin", false),
    ];
    assert_eq!(root.len(), expected.len(), "{root:?}");
    for (name, is_directory) in expected {
        assert!(root.contains(&(name.to_string(), is_directory)), "{name} missing from {root:?}");
    }
    let models: Vec<String> =
        volume.list("/models").unwrap().iter().map(|entry| entry.name().to_string()).collect();
    assert_eq!(models, ["smollm2-135m-instruct.gguf", "Fragmented Model.bin", "spacer.bin"]);
    let leaf = volume.list("/deep/a/b/").unwrap();
    assert_eq!(leaf.len(), 1);
    assert_eq!((leaf[0].name(), leaf[0].size()), ("leaf.txt", 4));
}

#[test]
fn fs_long_names_span_directory_clusters() {
    let mut volume = mount_base();
    let entries = volume.list("/many").unwrap();
    let names: Vec<&str> = entries.iter().map(DirectoryEntry::name).collect();
    assert_eq!(names, many_names());
    for (index, entry) in entries.iter().enumerate() {
        assert_eq!(entry.size(), index as u64);
        assert!(entry.short_name().len() <= 12, "{}", entry.short_name());
    }
    // 40 names of 4 slots each fill 10 clusters of 16 slots.
    assert!(volume.find("/many/FILE NUMBER 39 WITH A LONG NAME.DAT").is_ok());
}

#[test]
fn fs_reads_every_file_back_in_any_chunk_size() {
    let mut volume = mount_base();
    for (path, bytes) in base_files() {
        assert_eq!(volume.find(path).unwrap().size(), bytes.len() as u64, "{path}");
        for chunk in [512, 1000, 4096, 1 << 20] {
            assert_eq!(read_file(&mut volume, path, chunk).unwrap(), bytes, "{path} in chunks of {chunk}");
        }
    }
}

#[test]
fn fs_read_at_reads_small_unaligned_pieces() {
    let mut volume = mount_base();
    let expected = &base_files()[3].1;
    let mut file = volume.open(MODEL_PATH).unwrap();
    for (offset, length) in [(0usize, 1usize), (511, 2), (1000, 3000), (expected.len() - 10, 10), (100, 0)] {
        let mut buffer = vec![0u8; length];
        assert_eq!(file.read_at(offset as u64, &mut buffer).unwrap(), length);
        assert_eq!(buffer, expected[offset..offset + length]);
    }
    let mut buffer = [0u8; 64];
    assert_eq!(file.read_at(expected.len() as u64 - 5, &mut buffer).unwrap(), 5);
    assert_eq!(file.read_at(expected.len() as u64, &mut buffer).unwrap(), 0);
    assert_eq!(file.position(), 0, "read_at leaves the position alone");
    file.seek(expected.len() as u64 - 3);
    assert_eq!(file.remaining(), 3);
    assert_eq!(file.read_chunk(&mut buffer).unwrap(), 3);
    assert_eq!(file.read_chunk(&mut buffer).unwrap(), 0);
}

#[test]
fn fs_lookup_ignores_case_and_accepts_short_names() {
    let mut volume = mount_base();
    let entry = volume.find("/MODELS/SmolLM2-135M-Instruct.GGUF").unwrap();
    assert_eq!(entry.name(), "smollm2-135m-instruct.gguf");
    let short = std::format!("/models/{}", entry.short_name());
    assert_eq!(volume.find(&short).unwrap(), entry);
    assert_eq!(volume.find("/Deep/A/B/LEAF.TXT").unwrap().name(), "leaf.txt");
}

#[test]
fn fs_missing_paths_and_wrong_kinds_are_typed_errors() {
    let mut volume = mount_base();
    let missing = volume.find("/x.gguf").unwrap_err();
    assert_eq!(missing.to_string(), "file /x.gguf not found");
    assert_eq!(
        volume.open("/models/none.gguf").unwrap_err(),
        FsError::NotFound { path: "/models/none.gguf".into() }
    );
    assert_eq!(volume.open("/models").unwrap_err().to_string(), "/models is a directory, not a file");
    assert_eq!(
        volume.find("/config.txt/x").unwrap_err(),
        FsError::NotADirectory { path: "/config.txt".into() }
    );
    assert_eq!(
        volume.list("/config.txt").unwrap_err(),
        FsError::NotADirectory { path: "/config.txt".into() }
    );
    assert!(matches!(volume.open("models/x"), Err(FsError::InvalidPath { .. })));
    assert!(volume.open("/empty.bin").unwrap().extents().is_empty());
}

#[test]
fn fs_contiguous_file_reads_with_one_call_per_chunk() {
    let mut volume = mount_base();
    let size = base_files()[3].1.len();
    let extents = volume.open(MODEL_PATH).unwrap().extents().to_vec();
    assert_eq!(extents.len(), 1, "a file written in one go is contiguous");
    assert_eq!(extents[0].block_count, size.div_ceil(BLOCK_SIZE) as u64);

    let mut file = volume.open(MODEL_PATH).unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0;
    let reads_before = file.volume().device().reads.len();
    loop {
        let count = file.read_chunk(&mut buffer).unwrap();
        if count == 0 {
            break;
        }
        total += count;
    }
    assert_eq!(total, size);
    let reads = volume.device().reads.len() - reads_before;
    assert_eq!(reads, size.div_ceil(64 * 1024), "one multi-block read per 64 KiB chunk");

    let mut whole = vec![0u8; 1 << 20];
    let mut file = volume.open(MODEL_PATH).unwrap();
    let reads_before = file.volume().device().reads.len();
    assert_eq!(file.read_chunk(&mut whole).unwrap(), size);
    drop(file);
    let reads = &volume.device().reads[reads_before..];
    assert_eq!(reads, [(extents[0].first_block, extents[0].block_count)], "the whole file in one read");
}

#[test]
fn fs_fragmented_file_reads_with_one_call_per_extent() {
    let mut volume = mount_base();
    let expected = base_files()[4].1.clone();
    let mut file = volume.open(FRAGMENTED_PATH).unwrap();
    let extents = file.extents().to_vec();
    assert_eq!(extents.len(), 2, "{extents:?}");
    assert_eq!(extents[0].block_count, 2);
    assert_eq!(extents[1].file_offset, 1024);
    let mut buffer = vec![0u8; 8192];
    let reads_before = file.volume().device().reads.len();
    assert_eq!(file.read_chunk(&mut buffer).unwrap(), expected.len());
    let reads_after = file.volume().device().reads.len();
    drop(file);
    assert_eq!(&buffer[..expected.len()], expected);
    let reads = &volume.device().reads[reads_before..reads_after];
    let expected_reads: Vec<(u64, u64)> =
        extents.iter().map(|extent| (extent.first_block, extent.block_count)).collect();
    assert_eq!(reads, expected_reads);
}

/// Byte offset on the device of the active FAT's entry for `cluster`.
fn fat_entry_offset(layout: &Layout, cluster: u32) -> u64 {
    layout.fat_first_block * BLOCK_SIZE as u64 + u64::from(cluster) * 4
}

/// The base image with FAT entries rewritten, mounted.
fn with_fat_entries(entries: &[(u32, u32)]) -> Volume<MemoryDevice<'static>> {
    let volume = mount_base();
    let layout = *volume.layout();
    let mut device = volume.into_device();
    for (cluster, value) in entries {
        device.patch(fat_entry_offset(&layout, *cluster), &value.to_le_bytes());
    }
    Volume::mount(device).unwrap()
}

#[test]
fn fs_looped_chain_is_detected() {
    let first = mount_base().find(MODEL_PATH).unwrap().first_cluster();
    let mut volume = with_fat_entries(&[(first + 3, first)]);
    let error = volume.open(MODEL_PATH).unwrap_err();
    assert!(matches!(&error, FsError::ChainLoop { limit, .. } if *limit == volume.layout().cluster_count));
    assert!(
        error.to_string().starts_with("cluster chain of /models/smollm2-135m-instruct.gguf loops"),
        "{error}"
    );

    let directory = mount_base().find("/many").unwrap().first_cluster();
    let mut volume = with_fat_entries(&[(directory, directory)]);
    assert!(matches!(volume.list("/many"), Err(FsError::ChainLoop { .. })));
    assert!(matches!(volume.find("/many/x"), Err(FsError::ChainLoop { .. })));
}

#[test]
fn fs_truncated_and_broken_chains_are_detected() {
    let first = mount_base().find(FRAGMENTED_PATH).unwrap().first_cluster();
    let mut volume = with_fat_entries(&[(first + 1, 0x0FFF_FFFF)]);
    let error = volume.open(FRAGMENTED_PATH).unwrap_err();
    assert_eq!(error, FsError::ChainTooShort { path: FRAGMENTED_PATH.into(), clusters: 2, needed: 6 });
    assert_eq!(
        error.to_string(),
        "cluster chain of /models/Fragmented Model.bin ends after 2 clusters but the file needs 6"
    );

    let model = mount_base().find(MODEL_PATH).unwrap().first_cluster();
    let cases = [(0, ChainFault::Free), (1, ChainFault::Reserved), (0x0FFF_FFF7, ChainFault::BadCluster)];
    for (value, fault) in cases {
        let mut volume = with_fat_entries(&[(model, value)]);
        let error = volume.open(MODEL_PATH).unwrap_err();
        assert_eq!(error, FsError::BrokenChain { path: MODEL_PATH.into(), cluster: model, value, fault });
    }
    let mut volume = with_fat_entries(&[(model, 0x0FF0_0000)]);
    let error = volume.open(MODEL_PATH).unwrap_err();
    assert!(matches!(error, FsError::BrokenChain { fault: ChainFault::OutsideFat, .. }));
    assert!(error.to_string().contains("points to a cluster outside the FAT (0x0ff00000)"), "{error}");
}

/// Opens `path` one link of its chain per call, counting the calls.
fn open_in_pieces(
    volume: &mut Volume<MemoryDevice<'static>>,
    path: &str,
) -> Result<(FileLayout, usize), FsError> {
    let mut opening = volume.begin_open(path)?;
    let mut calls = 1;
    loop {
        if let Some(layout) = volume.continue_open(&mut opening, 1)? {
            return Ok((layout, calls));
        }
        calls += 1;
    }
}

#[test]
fn fs_opening_in_pieces_gives_what_open_gives() {
    let mut volume = mount_base();
    for (path, bytes) in base_files() {
        let (layout, calls) = open_in_pieces(&mut volume, path).unwrap();
        let whole = volume.open(path).unwrap().layout();
        assert_eq!(layout, whole, "{path}");
        let clusters = (bytes.len() as u64).div_ceil(volume.layout().cluster_bytes()) as usize;
        assert_eq!(calls, clusters.max(1), "{path}: one link per call");
        let mut read = vec![0u8; bytes.len()];
        assert_eq!(layout.read_at(&mut volume, 0, &mut read).unwrap(), bytes.len());
        assert_eq!(read, bytes, "{path} read through its layout");
    }
    // Broken chains fail the same way, whichever way the file is opened.
    let model = mount_base().find(MODEL_PATH).unwrap().first_cluster();
    let fragmented = mount_base().find(FRAGMENTED_PATH).unwrap().first_cluster();
    for (entries, path) in [
        (vec![(model + 3, model)], MODEL_PATH),
        (vec![(fragmented + 1, 0x0FFF_FFFF)], FRAGMENTED_PATH),
        (vec![(model, 0)], MODEL_PATH),
        (vec![(model, 0x0FF0_0000)], MODEL_PATH),
    ] {
        let mut volume = with_fat_entries(&entries);
        let whole = volume.open(path).unwrap_err();
        assert_eq!(open_in_pieces(&mut volume, path).unwrap_err(), whole);
    }
}

/// Byte offset on the device of the 32-byte slot of the short entry named `short_name` in the
/// root directory.
fn root_slot_offset(volume: &mut Volume<MemoryDevice<'static>>, short_name: &[u8; 11]) -> u64 {
    let layout = *volume.layout();
    let start = layout.cluster_first_block(layout.root_cluster) * BLOCK_SIZE as u64;
    let cluster = &base_image()[start as usize..start as usize + layout.cluster_bytes() as usize];
    let index = cluster.chunks(32).position(|slot| &slot[..11] == short_name).expect("slot present");
    start + index as u64 * 32
}

#[test]
fn fs_sizes_past_the_chain_are_detected() {
    let mut volume = mount_base();
    let slot = root_slot_offset(&mut volume, b"KERNEL8 IMG");
    let mut device = volume.into_device();
    device.patch(slot + 28, &5000u32.to_le_bytes());
    let mut volume = Volume::mount(device).unwrap();
    let error = volume.open("/kernel8.img").unwrap_err();
    assert_eq!(error, FsError::ChainTooShort { path: "/kernel8.img".into(), clusters: 6, needed: 10 });

    let mut device = volume.into_device();
    device.patch(slot + 28, &u32::MAX.to_le_bytes());
    let mut volume = Volume::mount(device).unwrap();
    assert!(matches!(volume.open("/kernel8.img"), Err(FsError::ChainTooShort { clusters: 6, .. })));

    let mut device = volume.into_device();
    device.patch(slot + 20, &[0, 0]);
    device.patch(slot + 26, &[0, 0]);
    let mut volume = Volume::mount(device).unwrap();
    let error = volume.open("/kernel8.img").unwrap_err();
    assert!(matches!(error, FsError::BrokenChain { cluster: 0, value: 0, fault: ChainFault::Free, .. }));
}

#[test]
fn fs_long_name_with_bad_checksum_in_a_real_directory() {
    let mut volume = mount_base();
    let entry = volume.find(MODEL_PATH).unwrap();
    let short_name = entry.short_name().to_string();
    let directory = volume.find("/models").unwrap().first_cluster();
    let layout = *volume.layout();
    let start = layout.cluster_first_block(directory) * BLOCK_SIZE as u64;
    let cluster = base_image()[start as usize..start as usize + 512].to_vec();
    // The first two-slot long name in the directory is the model's (`.` and `..` take one each).
    let slot = cluster.chunks(32).position(|slot| slot[11] == 0x0F && slot[0] == 0x42).unwrap() as u64;
    let mut device = volume.into_device();
    device.patch(start + slot * 32 + 13, &[cluster[slot as usize * 32 + 13] ^ 0x5A]);
    let mut volume = Volume::mount(device).unwrap();
    let names: Vec<String> =
        volume.list("/models").unwrap().iter().map(|entry| entry.name().to_string()).collect();
    assert_eq!(names[0], short_name);
    assert!(matches!(volume.find(MODEL_PATH), Err(FsError::NotFound { .. })));
    let by_short = std::format!("/models/{short_name}");
    assert_eq!(read_file(&mut volume, &by_short, 4096).unwrap(), base_files()[3].1);
}

/// The base image with bytes of the boot sector replaced, mounted.
fn mount_with_boot_patch(offset: u64, bytes: &[u8]) -> Result<Volume<MemoryDevice<'static>>, FsError> {
    let mut device = MemoryDevice::new(base_image());
    device.patch(PARTITION_FIRST_BLOCK * BLOCK_SIZE as u64 + offset, bytes);
    Volume::mount(device)
}

#[test]
fn fs_garbage_boot_sectors_are_rejected() {
    use BootSectorProblem as Problem;
    let partition_sectors = IMAGE_BLOCKS - PARTITION_FIRST_BLOCK;
    let cases: [(u64, &[u8], Problem); 11] = [
        (510, &[0, 0], Problem::Signature),
        (11, &1000u16.to_le_bytes(), Problem::BytesPerSector(1000)),
        (13, &[3], Problem::SectorsPerCluster(3)),
        (13, &[0], Problem::SectorsPerCluster(0)),
        (14, &[0, 0], Problem::ReservedSectors),
        (16, &[0], Problem::FatCount),
        (17, &512u16.to_le_bytes(), Problem::NotFat32Fields),
        (32, &0u32.to_le_bytes(), Problem::TotalSectors),
        (
            32,
            &(partition_sectors as u32 + 1).to_le_bytes(),
            Problem::LargerThanPartition { volume_sectors: partition_sectors + 1, partition_sectors },
        ),
        (44, &0u32.to_le_bytes(), Problem::RootCluster(0)),
        (36, &0x0100_0000u32.to_le_bytes(), Problem::NoDataArea),
    ];
    for (offset, bytes, problem) in cases {
        let error = mount_with_boot_patch(offset, bytes).unwrap_err();
        assert_eq!(error, FsError::BadBootSector(problem), "patch at {offset}");
        assert!(error.to_string().starts_with("bad FAT32 boot sector: "));
    }
    // Eight sectors per cluster leaves too few clusters for FAT32.
    let error = mount_with_boot_patch(13, &[8]).unwrap_err();
    assert!(matches!(error, FsError::BadBootSector(Problem::ClusterCount(_))), "{error}");
    let error = mount_with_boot_patch(36, &1u32.to_le_bytes()).unwrap_err();
    assert!(matches!(error, FsError::BadBootSector(Problem::FatTooSmall { entries: 128, .. })), "{error}");
    let error = mount_with_boot_patch(40, &0x0083u16.to_le_bytes()).unwrap_err();
    assert_eq!(error, FsError::BadBootSector(Problem::ActiveFat(3)));
}

#[test]
fn fs_partition_table_problems_are_reported() {
    let mut device = MemoryDevice::new(base_image());
    device.patch(446 + 4, &[0x83]);
    let error = Volume::mount(device).unwrap_err();
    assert_eq!(error, FsError::NoFat32Partition);
    assert_eq!(error.to_string(), "no FAT32 partition in the MBR");

    let mut device = MemoryDevice::new(base_image());
    device.patch(510, &[0, 0]);
    assert_eq!(Volume::mount(device).unwrap_err(), FsError::NoPartitionTable);

    let mut device = MemoryDevice::new(base_image());
    device.block_count = IMAGE_BLOCKS - 1;
    let error = Volume::mount(device).unwrap_err();
    assert!(
        matches!(error, FsError::PartitionOutsideDevice { device_blocks, .. } if device_blocks == IMAGE_BLOCKS - 1)
    );

    // A partition of type 0x0B works like 0x0C.
    let mut device = MemoryDevice::new(base_image());
    device.patch(446 + 4, &[PARTITION_TYPE_FAT32_CHS]);
    assert!(Volume::mount(device).is_ok());

    let mut device = MemoryDevice::new(base_image());
    device.failing.insert(0, BlockError::Timeout);
    let error = Volume::mount(device).unwrap_err();
    assert_eq!(error.to_string(), "read error at block 0: device timed out");
}

#[test]
fn fs_directory_iteration_stops_after_an_error() {
    let volume = mount_base();
    let layout = *volume.layout();
    let mut device = volume.into_device();
    let directory =
        Volume::mount(MemoryDevice::new(base_image())).unwrap().find("/many").unwrap().first_cluster();
    device.failing.insert(layout.cluster_first_block(directory), BlockError::DataError);
    let mut volume = Volume::mount(device).unwrap();
    let mut entries = volume.entries("/many").unwrap();
    let error = entries.next().unwrap().unwrap_err();
    assert_eq!(
        error.to_string(),
        std::format!(
            "read error at block {}: data error (CRC) on transfer",
            layout.cluster_first_block(directory)
        )
    );
    assert!(entries.next().is_none());
    assert!(volume.list("/").is_ok(), "other directories still read");
}

#[test]
fn fs_empty_device_fails_cleanly() {
    let error = Volume::mount(MemoryDevice::new(&[])).unwrap_err();
    assert_eq!(error, FsError::EmptyDevice);
    assert_eq!(error.to_string(), "the device holds no blocks (is a card inserted?)");
    // Less than one block is no device either.
    let error = Volume::mount(MemoryDevice::new(&base_image()[..256])).unwrap_err();
    assert_eq!(error, FsError::EmptyDevice);
    let mut device = MemoryDevice::new(base_image());
    device.failing.insert(PARTITION_FIRST_BLOCK, BlockError::Timeout);
    let error = Volume::mount(device).unwrap_err();
    assert_eq!(error, FsError::Read { block: PARTITION_FIRST_BLOCK, count: 1, error: BlockError::Timeout });
}

/// Walks every directory (to a bounded depth) and reads every file; returns what it saw. Any
/// error is a fine answer; a panic or a wrong byte count is not.
fn exercise(volume: &mut Volume<MemoryDevice<'_>>) -> Result<usize, FsError> {
    let mut pending = vec![(String::from("/"), 0)];
    let mut seen = 0;
    while let Some((path, depth)) = pending.pop() {
        for entry in volume.list(&path)? {
            seen += 1;
            if seen > 400 {
                return Ok(seen);
            }
            let child = if path == "/" {
                std::format!("/{}", entry.name())
            } else {
                std::format!("{path}/{}", entry.name())
            };
            if entry.name().contains('/') || entry.name().is_empty() {
                continue;
            }
            if entry.is_directory() {
                if depth < 4 {
                    pending.push((child, depth + 1));
                }
            } else if let Ok(mut file) = volume.open(&child) {
                let size = file.size();
                let mut buffer = vec![0u8; 4096];
                let mut total = 0u64;
                while total < (1 << 20) {
                    let count = file.read_chunk(&mut buffer)?;
                    if count == 0 {
                        break;
                    }
                    total += count as u64;
                }
                assert!(total == size || total >= 1 << 20, "{child}: read {total} of {size} bytes");
            }
        }
    }
    Ok(seen)
}

#[test]
fn fs_exercise_reads_the_intact_image() {
    let mut volume = mount_base();
    assert_eq!(exercise(&mut volume), Ok(6 + 3 + 1 + 1 + 1 + 40));
}

/// Blocks worth mutating: the MBR, the reserved sectors, the start of both FATs and the first
/// data clusters (root, subdirectories, small files).
fn interesting_blocks() -> Vec<u64> {
    let layout = *mount_base().layout();
    let mut blocks = vec![0];
    blocks.extend(layout.partition_first_block..layout.partition_first_block + 8);
    blocks.extend(layout.fat_first_block..layout.fat_first_block + 4);
    blocks.extend(layout.fat_first_block + layout.fat_blocks..layout.fat_first_block + layout.fat_blocks + 2);
    blocks.extend(layout.data_first_block..layout.data_first_block + 48);
    blocks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn fs_random_corruption_never_panics(
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), 0..BLOCK_SIZE, any::<u8>()), 1..24)
    ) {
        let blocks = interesting_blocks();
        let mut device = MemoryDevice::new(base_image());
        for (block, offset, value) in mutations {
            device.patch(*block.get(&blocks) * BLOCK_SIZE as u64 + offset as u64, &[value]);
        }
        if let Ok(mut volume) = Volume::mount(device) {
            let _ = exercise(&mut volume);
        }
    }

    #[test]
    fn fs_read_errors_fail_cleanly(
        failing in proptest::collection::vec((any::<prop::sample::Index>(), 0..3usize), 1..4),
        chunk_blocks in 1usize..200,
    ) {
        let extent = mount_base().open(MODEL_PATH).unwrap().extents()[0];
        let mut candidates = interesting_blocks();
        candidates.extend(extent.first_block..extent.first_block + extent.block_count);
        let kinds = [BlockError::Timeout, BlockError::DataError, BlockError::NoDevice];
        let mut device = MemoryDevice::new(base_image());
        device.failing = failing.iter().map(|(index, kind)| (*index.get(&candidates), kinds[*kind])).collect();
        let bad = device.failing.clone();
        let result = Volume::mount(device).and_then(|mut volume| {
            let bytes = read_file(&mut volume, MODEL_PATH, chunk_blocks * BLOCK_SIZE);
            let touched = volume
                .device()
                .reads
                .iter()
                .any(|(first, count)| bad.range(*first..*first + *count).next().is_some());
            bytes.map(|bytes| (bytes, touched))
        });
        match result {
            Ok((bytes, touched)) => {
                prop_assert!(!touched, "a read of a failing block succeeded");
                prop_assert_eq!(bytes, base_files()[3].1.clone());
            }
            Err(FsError::Read { block, count, error }) => {
                let first_bad = bad.range(block..block + count).next();
                prop_assert_eq!(first_bad.map(|(_, kind)| *kind), Some(error), "error at block {}", block);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fs_boot_sector_parse_upholds_its_invariants(
        noise in proptest::collection::vec(any::<u8>(), BLOCK_SIZE),
        sectors_per_cluster_shift in 0u32..9,
        reserved_sectors in 0u16..64,
        fat_count in 0u8..4,
        fat_blocks in 0u32..20_000,
        total_sectors in 0u32..3_000_000,
        root_cluster in 0u32..100,
        partition_blocks in 1u64..3_000_000,
    ) {
        let mut sector = [0u8; BLOCK_SIZE];
        sector.copy_from_slice(&noise);
        sector[11..13].copy_from_slice(&512u16.to_le_bytes());
        sector[13] = (1u32 << sectors_per_cluster_shift) as u8;
        sector[14..16].copy_from_slice(&reserved_sectors.to_le_bytes());
        sector[16] = fat_count;
        sector[17..20].fill(0);
        sector[22..24].fill(0);
        sector[32..36].copy_from_slice(&total_sectors.to_le_bytes());
        sector[36..40].copy_from_slice(&fat_blocks.to_le_bytes());
        sector[40] &= 0x8F;
        sector[44..48].copy_from_slice(&root_cluster.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
        let partition = Partition { partition_type: PARTITION_TYPE_FAT32_LBA, first_block: 2048, block_count: partition_blocks };
        if let Ok(layout) = Layout::parse(&sector, partition) {
            let partition_end = partition.first_block + partition.block_count;
            prop_assert!(layout.blocks_per_cluster.is_power_of_two() && layout.blocks_per_cluster <= 128);
            prop_assert!((FAT32_MIN_CLUSTERS..=FAT32_MAX_CLUSTERS).contains(&layout.cluster_count));
            prop_assert!(layout.fat_first_block > partition.first_block);
            prop_assert!(layout.fat_first_block + layout.fat_blocks <= layout.data_first_block);
            prop_assert!(layout.fat_blocks * 128 >= layout.cluster_count + 2);
            prop_assert!(layout.data_first_block + layout.cluster_count * layout.blocks_per_cluster <= partition_end);
            prop_assert!(layout.partition_first_block + layout.volume_blocks <= partition_end);
            prop_assert!(layout.is_valid_cluster(layout.root_cluster));
            let last = (layout.cluster_count + 1) as u32;
            prop_assert!(layout.cluster_first_block(last) + layout.blocks_per_cluster <= partition_end);
        }
    }
}
