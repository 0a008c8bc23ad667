//! The image plan: every file with its place in the image, checked before anything is written,
//! and the image size and cluster size chosen for that content.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::options::Options;
use crate::{Error, mebibytes};

/// First sector of the FAT32 partition (1 MiB in, as SD card tools align it).
pub const PARTITION_FIRST_SECTOR: u64 = 2048;
/// Bytes in a sector.
pub const SECTOR_BYTES: u64 = 512;
/// Smallest image: enough for a FAT32 volume with 512-byte clusters.
pub const MINIMUM_IMAGE_BYTES: u64 = 64 << 20;
/// Largest image accepted.
pub const MAXIMUM_IMAGE_BYTES: u64 = 1 << 40;
/// The config.txt written when none is given: what the Raspberry Pi firmware needs to start
/// kernel8 on a Pi 3, 3+, Zero 2 W or 4, each setting with a comment above it (the firmware
/// takes `#` lines as comments; a comment after a value on the same line is not documented to
/// work, so there is none).
pub const DEFAULT_CONFIG: &str = "\
# Tessera: the Raspberry Pi firmware (start.elf, start4.elf) reads this file at power-on.
# Start the ARM cores in AArch64 (64-bit) state.
arm_64bit=1
# The image to load: Tessera's kernel, a raw binary with no arm64 header.
kernel=kernel8.img
# Load it at 0x80000, where kernel8 is linked (64-bit kernels otherwise load at 0x200000).
kernel_address=0x80000
# Turn the console UART on and hold the core clock steady; kernel8 routes its PL011 UART0 to
# GPIO 14 (TXD, pin 8) and 15 (RXD, pin 10) itself, at 115200 8N1.
enable_uart=1
# The PL011's input clock. kernel8 asks the firmware for it and computes its baud divisors from
# the answer, falling back to 48 MHz if the mailbox does not answer; this makes that exact.
init_uart_clock=48000000
";

/// Where a file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file on the host.
    Path(PathBuf),
    /// Bytes the tool makes itself (the default config.txt).
    Bytes(Vec<u8>),
}

/// One file of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path in the image, e.g. `/models/smollm2.gguf`.
    pub destination: String,
    /// Where the bytes come from.
    pub source: Source,
    /// Size in bytes.
    pub size: u64,
}

/// Everything needed to write the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The image file to write.
    pub output: PathBuf,
    /// The files, in the order they are written.
    pub entries: Vec<Entry>,
    /// The folders to create, parents first.
    pub directories: Vec<String>,
    /// The image size: a power of two.
    pub image_bytes: u64,
    /// The FAT32 cluster size.
    pub cluster_bytes: u32,
}

impl Plan {
    /// Bytes of file content.
    pub fn content_bytes(&self) -> u64 {
        self.entries.iter().map(|entry| entry.size).sum()
    }
}

/// The cluster size for a partition of this size: Microsoft's FAT32 defaults for 512-byte
/// sectors (512 B up to 260 MiB, then 4 KiB up to 8 GiB, 8 KiB, 16 KiB, and 32 KiB above 32 GiB).
pub fn cluster_bytes_for(partition_bytes: u64) -> u32 {
    match partition_bytes {
        bytes if bytes <= 260 << 20 => 512,
        bytes if bytes <= 8 << 30 => 4096,
        bytes if bytes <= 16 << 30 => 8192,
        bytes if bytes <= 32 << 30 => 16384,
        _ => 32768,
    }
}

/// About how many bytes of data an image of `image_bytes` holds: its clusters, after the
/// 1 MiB before the partition, 32 reserved sectors and two FATs of 4 bytes per cluster.
pub fn data_capacity(image_bytes: u64) -> u64 {
    let partition_bytes = image_bytes.saturating_sub(PARTITION_FIRST_SECTOR * SECTOR_BYTES);
    let cluster = u64::from(cluster_bytes_for(partition_bytes));
    let available = partition_bytes.saturating_sub(32 * SECTOR_BYTES);
    // Each cluster costs its own bytes plus 8 bytes of FAT.
    let clusters = available / (cluster + 8);
    clusters.saturating_sub(1) * cluster
}

/// Bytes of clusters the content takes with this cluster size, directories included.
pub fn bytes_needed(entries: &[Entry], directories: &[String], cluster_bytes: u32) -> u64 {
    let cluster = u64::from(cluster_bytes);
    let files: u64 = entries.iter().map(|entry| entry.size.div_ceil(cluster).max(1) * cluster).sum();
    // Slots per directory: the end marker, `.` and `..` with their long names, and one short
    // slot plus one long-name slot per 13 characters for each child.
    let mut slots: BTreeMap<&str, u64> = BTreeMap::new();
    slots.insert("", 1);
    for directory in directories {
        slots.insert(directory.as_str(), 5);
    }
    let children =
        entries.iter().map(|entry| entry.destination.as_str()).chain(directories.iter().map(String::as_str));
    for child in children {
        let (parent, name) = child.rsplit_once('/').unwrap_or(("", child));
        let name_slots = 1 + (name.encode_utf16().count() as u64).div_ceil(13);
        *slots.entry(parent).or_insert(1) += name_slots;
    }
    let directories: u64 = slots.values().map(|count| (count * 32).div_ceil(cluster).max(1) * cluster).sum();
    files + directories
}

/// Checks one name of an image path against FAT's long-name rules.
fn check_name(path: &str, name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("an empty name".to_string())
    } else if name == "." || name == ".." {
        Some(format!("the name {name:?}"))
    } else if name.encode_utf16().count() > 255 {
        Some("a name longer than 255 characters".to_string())
    } else if let Some(bad) =
        name.chars().find(|character| u32::from(*character) < 0x20 || "\"*:<>?\\|".contains(*character))
    {
        Some(format!("the character {bad:?}, which FAT names cannot hold"))
    } else if name.ends_with('.') || name.ends_with(' ') {
        Some("a name ending in a dot or a space".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Failed(format!("image path {path} has {problem}"))),
        None => Ok(()),
    }
}

/// Normalizes an image path to `/a/b`; a trailing `/` means "this folder, same file name".
fn image_path(destination: &str, source: &Path) -> Result<String, Error> {
    let mut path =
        if destination.starts_with('/') { destination.to_string() } else { format!("/{destination}") };
    if path.ends_with('/') {
        let name = source.file_name().and_then(|name| name.to_str()).ok_or_else(|| {
            Error::Failed(format!("{} has no usable file name for {destination}", source.display()))
        })?;
        path.push_str(name);
    }
    for name in path[1..].split('/') {
        check_name(&path, name)?;
    }
    Ok(path)
}

/// The size of a regular file on the host, or an error naming what it was for.
fn file_size(path: &Path, what: &str) -> Result<u64, Error> {
    let metadata = fs::metadata(path)
        .map_err(|error| Error::Failed(format!("cannot read {what} {}: {error}", path.display())))?;
    if !metadata.is_file() {
        return Err(Error::Failed(format!("{what} {} is not a regular file", path.display())));
    }
    Ok(metadata.len())
}

/// Adds every file under `directory` (sorted, recursively) at `prefix` in the image.
fn add_folder(entries: &mut Vec<Entry>, directory: &Path, prefix: &str) -> Result<(), Error> {
    let unreadable = |error: std::io::Error| {
        Error::Failed(format!("cannot read firmware folder {}: {error}", directory.display()))
    };
    let mut children: Vec<PathBuf> = fs::read_dir(directory)
        .map_err(unreadable)?
        .map(|child| child.map(|child| child.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    children.sort();
    for child in children {
        let name = child.file_name().and_then(|name| name.to_str()).ok_or_else(|| {
            Error::Failed(format!("firmware file {} has a name that is not UTF-8", child.display()))
        })?;
        let destination = format!("{prefix}/{name}");
        if child.is_dir() {
            add_folder(entries, &child, &destination)?;
        } else {
            let size = file_size(&child, "firmware file")?;
            check_name(&destination, name)?;
            entries.push(Entry { destination, source: Source::Path(child), size });
        }
    }
    Ok(())
}

/// Checks every input and chooses the image size and cluster size.
pub fn plan(options: &Options) -> Result<Plan, Error> {
    let mut entries = Vec::new();
    let kernel_size = file_size(&options.kernel, "kernel")?;
    entries.push(Entry {
        destination: "/kernel8.img".to_string(),
        source: Source::Path(options.kernel.clone()),
        size: kernel_size,
    });
    match &options.config {
        Some(config) => entries.push(Entry {
            destination: "/config.txt".to_string(),
            source: Source::Path(config.clone()),
            size: file_size(config, "config")?,
        }),
        None => entries.push(Entry {
            destination: "/config.txt".to_string(),
            source: Source::Bytes(DEFAULT_CONFIG.as_bytes().to_vec()),
            size: DEFAULT_CONFIG.len() as u64,
        }),
    }
    if let Some(firmware) = &options.firmware {
        add_folder(&mut entries, firmware, "")?;
    }
    for model in &options.models {
        let size = file_size(model, "model")?;
        let destination = image_path("/models/", model)?;
        entries.push(Entry { destination, source: Source::Path(model.clone()), size });
    }
    for (source, destination) in &options.files {
        let size = file_size(source, "file")?;
        let destination = image_path(destination, source)?;
        entries.push(Entry { destination, source: Source::Path(source.clone()), size });
    }

    // Names are case-insensitive on FAT: two entries may not land on the same path, and no
    // file may stand where a folder is needed.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for entry in &entries {
        if let Some(earlier) = seen.insert(entry.destination.to_lowercase(), &entry.destination) {
            return Err(Error::Failed(format!(
                "two files would be written to {earlier} (names ignore case)"
            )));
        }
    }
    let mut directories: Vec<String> = Vec::new();
    for entry in &entries {
        let mut end = 0;
        while let Some(slash) = entry.destination[end + 1..].find('/') {
            end += 1 + slash;
            let directory = entry.destination[..end].to_string();
            if seen.contains_key(&directory.to_lowercase()) {
                return Err(Error::Failed(format!("{directory} is needed as a folder but is also a file")));
            }
            if !directories.iter().any(|known| known.eq_ignore_ascii_case(&directory)) {
                directories.push(directory);
            }
        }
    }
    directories.sort_by_key(|directory| (directory.matches('/').count(), directory.clone()));

    let image_bytes = match options.size {
        Some(size) => check_size(size, &entries, &directories)?,
        None => default_size(&entries, &directories)?,
    };
    let cluster_bytes = cluster_bytes_for(image_bytes - PARTITION_FIRST_SECTOR * SECTOR_BYTES);
    Ok(Plan { output: options.output.clone(), entries, directories, image_bytes, cluster_bytes })
}

/// Bytes the content needs in an image of this size.
fn needed_in(image_bytes: u64, entries: &[Entry], directories: &[String]) -> u64 {
    let partition_bytes = image_bytes - PARTITION_FIRST_SECTOR * SECTOR_BYTES;
    bytes_needed(entries, directories, cluster_bytes_for(partition_bytes))
}

/// Checks a size given with `--size`.
fn check_size(size: u64, entries: &[Entry], directories: &[String]) -> Result<u64, Error> {
    if !size.is_power_of_two() {
        return Err(Error::Usage(format!(
            "--size {size} bytes is not a power of two (QEMU needs one), e.g. 256M or 4G"
        )));
    }
    if !(MINIMUM_IMAGE_BYTES..=MAXIMUM_IMAGE_BYTES).contains(&size) {
        return Err(Error::Usage(format!("--size must be from 64M to 1T, not {}", mebibytes(size))));
    }
    let needed = needed_in(size, entries, directories);
    let capacity = data_capacity(size);
    if needed > capacity {
        return Err(Error::Failed(format!(
            "the content needs {} but a {} image holds about {}: give a larger --size or leave it out",
            mebibytes(needed),
            mebibytes(size),
            mebibytes(capacity)
        )));
    }
    Ok(size)
}

/// The smallest power of two from 64 MiB up that holds the content with a margin of a tenth
/// plus 4 MiB.
pub fn default_size(entries: &[Entry], directories: &[String]) -> Result<u64, Error> {
    let mut size = MINIMUM_IMAGE_BYTES;
    while size <= MAXIMUM_IMAGE_BYTES {
        let needed = needed_in(size, entries, directories);
        if needed + needed / 10 + (4 << 20) <= data_capacity(size) {
            return Ok(size);
        }
        size *= 2;
    }
    Err(Error::Failed("the content does not fit in the largest image (1 TiB)".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(destination: &str, size: u64) -> Entry {
        Entry { destination: destination.to_string(), source: Source::Bytes(Vec::new()), size }
    }

    #[test]
    fn the_default_config_boots_kernel8_and_explains_every_setting() {
        let lines: Vec<&str> = DEFAULT_CONFIG.lines().collect();
        for setting in [
            "arm_64bit=1",
            "kernel=kernel8.img",
            "kernel_address=0x80000",
            "enable_uart=1",
            "init_uart_clock=48000000",
        ] {
            let index =
                lines.iter().position(|line| *line == setting).unwrap_or_else(|| panic!("{setting} missing"));
            assert!(index > 0 && lines[index - 1].starts_with('#'), "{setting} has no comment above it");
        }
        // Every line is a comment or one of those settings: no comment after a value.
        for line in &lines {
            assert!(line.starts_with('#') || !line.contains('#'), "{line}");
        }
        // init_uart_clock matches the driver's fallback clock (its divisors for 115200 baud).
        assert_eq!(bsp_free_divisors(48_000_000), (26, 3));
    }

    /// The PL011's divisors for 115200 baud from `clock_hz` (the formula of bsp's
    /// `baud_divisors`, which this host tool cannot link), rounded to nearest 1/64.
    fn bsp_free_divisors(clock_hz: u64) -> (u64, u64) {
        let sixty_fourths = (clock_hz * 4 + 115_200 / 2) / 115_200;
        (sixty_fourths / 64, sixty_fourths % 64)
    }

    #[test]
    fn cluster_sizes_follow_the_fat32_defaults() {
        assert_eq!(cluster_bytes_for(63 << 20), 512);
        assert_eq!(cluster_bytes_for(255 << 20), 512);
        assert_eq!(cluster_bytes_for(511 << 20), 4096);
        assert_eq!(cluster_bytes_for(4095 << 20), 4096);
        assert_eq!(cluster_bytes_for(16 << 30), 8192);
        assert_eq!(cluster_bytes_for(64 << 30), 32768);
    }

    #[test]
    fn default_size_is_the_smallest_power_of_two_with_margin() {
        let small = [entry("/kernel8.img", 100_000), entry("/config.txt", 50)];
        assert_eq!(default_size(&small, &[]).unwrap(), 64 << 20);
        let models = ["/models".to_string()];
        let with_model = [entry("/kernel8.img", 100_000), entry("/models/smollm2.gguf", 98_000_000)];
        assert_eq!(default_size(&with_model, &models).unwrap(), 128 << 20);
        let large = [entry("/models/big.gguf", 120 << 20)];
        assert_eq!(default_size(&large, &models).unwrap(), 256 << 20);
        let exact = [entry("/models/big.gguf", 57 << 20)];
        assert_eq!(
            default_size(&exact, &models).unwrap(),
            128 << 20,
            "57 MiB plus the margin does not fit in 64 MiB"
        );
        for entries in [&small[..], &with_model, &large] {
            let size = default_size(entries, &models).unwrap();
            assert!(size.is_power_of_two());
            assert!(bytes_needed(entries, &models, cluster_bytes_for(size)) < data_capacity(size));
        }
    }

    #[test]
    fn capacity_accounts_for_the_fats() {
        // 64 MiB: 63 MiB of partition, 512-byte clusters, two FATs of about 0.5 MiB each.
        let capacity = data_capacity(64 << 20);
        assert!(capacity > 61 << 20 && capacity < 63 << 20, "{capacity}");
    }

    #[test]
    fn directory_slots_are_counted() {
        let many: Vec<Entry> =
            (0..100).map(|index| entry(&format!("/d/a long file name number {index}"), 1)).collect();
        let directories = ["/d".to_string()];
        // 100 files of one cluster each, the root, and /d with 100 × 3 slots + 5 = 305 slots.
        // 305 slots of 32 bytes fill 20 clusters; the root holds the end marker and "d" (3 slots).
        assert_eq!(bytes_needed(&many, &directories, 512), 100 * 512 + 20 * 512 + 512);
    }

    #[test]
    fn image_paths_are_checked() {
        let source = Path::new("/tmp/model.gguf");
        assert_eq!(image_path("/models/", source).unwrap(), "/models/model.gguf");
        assert_eq!(image_path("tessera.cfg", source).unwrap(), "/tessera.cfg");
        assert!(image_path("/a*b", source).unwrap_err().to_string().contains("'*'"));
        assert!(image_path("/a//b", source).unwrap_err().to_string().contains("an empty name"));
        assert!(image_path("/x/../y", source).is_err());
        assert!(image_path(&format!("/{}", "n".repeat(256)), source).is_err());
    }
}
