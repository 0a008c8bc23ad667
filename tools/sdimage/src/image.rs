//! Writing the image (a sparse file: MBR, then a FAT32 partition formatted and filled with the
//! `fatfs` crate) and reading it back through `kernel::fs`.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use kernel::fs::{PARTITION_TYPE_FAT32_LBA, Volume};

use crate::device::ImageDevice;
use crate::plan::{Entry, PARTITION_FIRST_SECTOR, Plan, SECTOR_BYTES, Source};
use crate::timestamp::BUILD_CLOCK;
use crate::{Error, mebibytes};

/// The MBR disk signature written into every image.
const DISK_SIGNATURE: u32 = 0x7E55_E2A0;
/// The FAT32 volume serial number written into every image, so builds repeat byte for byte.
const VOLUME_ID: u32 = 0x7E55_E2A0;
/// The volume label.
const VOLUME_LABEL: [u8; 11] = *b"TESSERA    ";
/// Bytes copied per write, and the progress step.
const COPY_CHUNK: usize = 1 << 20;
/// Files at least this large show progress while they are copied.
const PROGRESS_THRESHOLD: u64 = 8 << 20;

/// Encodes a sector number as an MBR cylinder-head-sector triple (255 heads, 63 sectors per
/// track), or the "beyond CHS" marker when it is too far for CHS.
fn cylinder_head_sector(sector: u64) -> [u8; 3] {
    let cylinder = sector / (255 * 63);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (sector / 63) % 255;
    let sector_in_track = sector % 63 + 1;
    [head as u8, (sector_in_track as u8) | (((cylinder >> 2) & 0xC0) as u8), cylinder as u8]
}

/// The MBR: one FAT32 (LBA) partition from sector 2048 to the end of the image.
pub fn master_boot_record(image_bytes: u64) -> [u8; 512] {
    let mut sector = [0u8; 512];
    let sectors = image_bytes / SECTOR_BYTES;
    let partition_sectors = (sectors - PARTITION_FIRST_SECTOR) as u32;
    sector[440..444].copy_from_slice(&DISK_SIGNATURE.to_le_bytes());
    let entry = &mut sector[446..462];
    entry[0] = 0x00;
    entry[1..4].copy_from_slice(&cylinder_head_sector(PARTITION_FIRST_SECTOR));
    entry[4] = PARTITION_TYPE_FAT32_LBA;
    entry[5..8].copy_from_slice(&cylinder_head_sector(sectors - 1));
    entry[8..12].copy_from_slice(&(PARTITION_FIRST_SECTOR as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&partition_sectors.to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xAA;
    sector
}

/// The partition of the image file as a stream for `fatfs`. Writes of zeros over bytes that are
/// already zero are skipped, so the holes of the sparse file stay holes.
struct PartitionWindow<'file> {
    file: &'file File,
    start: u64,
    length: u64,
    position: u64,
}

impl PartitionWindow<'_> {
    /// True when the image already holds only zeros in `length` bytes at `offset`.
    fn is_zero(&self, offset: u64, length: usize) -> io::Result<bool> {
        let mut buffer = vec![0u8; length.min(64 * 1024)];
        let mut done = 0;
        while done < length {
            let step = buffer.len().min(length - done);
            self.file.read_exact_at(&mut buffer[..step], offset + done as u64)?;
            if buffer[..step].iter().any(|&byte| byte != 0) {
                return Ok(false);
            }
            done += step;
        }
        Ok(true)
    }
}

impl Read for PartitionWindow<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = (buffer.len() as u64).min(self.length.saturating_sub(self.position)) as usize;
        let count = self.file.read_at(&mut buffer[..count], self.start + self.position)?;
        self.position += count as u64;
        Ok(count)
    }
}

impl Write for PartitionWindow<'_> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let count = (buffer.len() as u64).min(self.length.saturating_sub(self.position)) as usize;
        if count == 0 && !buffer.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        let offset = self.start + self.position;
        let zeros = buffer[..count].iter().all(|&byte| byte == 0);
        if !zeros || !self.is_zero(offset, count)? {
            self.file.write_all_at(&buffer[..count], offset)?;
        }
        self.position += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionWindow<'_> {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.length.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        match position {
            Some(position) if position <= self.length => {
                self.position = position;
                Ok(position)
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition")),
        }
    }
}

/// Shows how far the copy of one large file got, on stderr.
struct Progress {
    destination: String,
    total: u64,
    terminal: bool,
    shown_quarter: u64,
}

impl Progress {
    /// Shows `done` bytes of progress. A closed stderr only loses the progress, never the image.
    fn update(&mut self, done: u64) {
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        let line =
            format!("  {}  {percent:3}%  {} of {}", self.destination, mebibytes(done), mebibytes(self.total));
        let mut stderr = io::stderr().lock();
        if self.terminal {
            let end = if done == self.total { "\n" } else { "" };
            let _ = write!(stderr, "\r{line}{end}");
        } else if percent / 25 > self.shown_quarter || done == self.total {
            self.shown_quarter = percent / 25;
            let _ = writeln!(stderr, "{line}");
        }
    }
}

/// Copies one entry into an open `fatfs` file, reporting progress for large files.
fn copy_entry(entry: &Entry, target: &mut impl Write, show_progress: bool) -> Result<(), Error> {
    let write_failed = |error: io::Error| {
        Error::Failed(format!("cannot write {} into the image: {error}", entry.destination))
    };
    let mut progress = (show_progress && entry.size >= PROGRESS_THRESHOLD).then(|| Progress {
        destination: entry.destination.clone(),
        total: entry.size,
        terminal: io::stderr().is_terminal(),
        shown_quarter: 0,
    });
    match &entry.source {
        Source::Bytes(bytes) => target.write_all(bytes).map_err(write_failed)?,
        Source::Path(path) => {
            let read_failed =
                |error: io::Error| Error::Failed(format!("cannot read {}: {error}", path.display()));
            let mut source = File::open(path).map_err(read_failed)?;
            let mut buffer = vec![0u8; COPY_CHUNK];
            let mut done = 0u64;
            loop {
                let count = source.read(&mut buffer).map_err(read_failed)?;
                if count == 0 {
                    break;
                }
                target.write_all(&buffer[..count]).map_err(write_failed)?;
                done += count as u64;
                if let Some(progress) = progress.as_mut() {
                    progress.update(done.min(entry.size));
                }
            }
            if done != entry.size {
                return Err(Error::Failed(format!(
                    "{} changed while it was copied ({done} bytes, expected {})",
                    path.display(),
                    entry.size
                )));
            }
        }
    }
    target.flush().map_err(write_failed)
}

/// Writes the image described by `plan`: a sparse file of `plan.image_bytes`, the MBR, and the
/// formatted and filled FAT32 partition. With `show_progress`, large files report progress on
/// stderr.
pub fn write_image(plan: &Plan, show_progress: bool) -> Result<(), Error> {
    let output = plan.output.display();
    let output_failed = |error: io::Error| Error::Failed(format!("cannot write image {output}: {error}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&plan.output)
        .map_err(output_failed)?;
    // set_len leaves a hole: only what is written below takes disk space.
    file.set_len(plan.image_bytes).map_err(output_failed)?;
    file.write_all_at(&master_boot_record(plan.image_bytes), 0).map_err(output_failed)?;

    let start = PARTITION_FIRST_SECTOR * SECTOR_BYTES;
    let window = || PartitionWindow { file: &file, start, length: plan.image_bytes - start, position: 0 };
    let format_options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .bytes_per_cluster(plan.cluster_bytes)
        .volume_id(VOLUME_ID)
        .volume_label(VOLUME_LABEL);
    let fat_failed =
        |error: io::Error| Error::Failed(format!("cannot format the FAT32 partition of {output}: {error}"));
    fatfs::format_volume(window(), format_options).map_err(fat_failed)?;
    let file_system_options = fatfs::FsOptions::new().time_provider(&BUILD_CLOCK);
    let file_system = fatfs::FileSystem::new(window(), file_system_options).map_err(fat_failed)?;
    {
        let root = file_system.root_dir();
        for directory in &plan.directories {
            root.create_dir(&directory[1..]).map_err(|error| {
                Error::Failed(format!("cannot create folder {directory} in the image: {error}"))
            })?;
        }
        for entry in &plan.entries {
            let mut target = root.create_file(&entry.destination[1..]).map_err(|error| {
                Error::Failed(format!("cannot create {} in the image: {error}", entry.destination))
            })?;
            copy_entry(entry, &mut target, show_progress)?;
        }
    }
    file_system.unmount().map_err(fat_failed)?;
    file.sync_all().map_err(output_failed)
}

/// Reads every file of `plan` back through the kernel's FAT32 reader and compares it with its
/// source, byte for byte.
pub fn verify_image(plan: &Plan) -> Result<(), Error> {
    let failed =
        |what: String| Error::Failed(format!("read-back check of {}: {what}", plan.output.display()));
    let device = ImageDevice::open(&plan.output).map_err(|error| failed(error.to_string()))?;
    let mut volume = Volume::mount(device).map_err(|error| failed(error.to_string()))?;
    let mut expected = vec![0u8; COPY_CHUNK];
    let mut actual = vec![0u8; COPY_CHUNK];
    for entry in &plan.entries {
        let mut file = volume.open(&entry.destination).map_err(|error| failed(error.to_string()))?;
        if file.size() != entry.size {
            return Err(failed(format!(
                "{} holds {} bytes, expected {}",
                entry.destination,
                file.size(),
                entry.size
            )));
        }
        let mut source: Box<dyn Read> = match &entry.source {
            Source::Bytes(bytes) => Box::new(io::Cursor::new(bytes.clone())),
            Source::Path(path) => Box::new(File::open(path).map_err(|error| failed(error.to_string()))?),
        };
        loop {
            let count = file.read_chunk(&mut actual).map_err(|error| failed(error.to_string()))?;
            if count == 0 {
                break;
            }
            source.read_exact(&mut expected[..count]).map_err(|error| failed(error.to_string()))?;
            if expected[..count] != actual[..count] {
                let offset = file.position() - count as u64;
                return Err(failed(format!(
                    "{} differs from its source near byte {offset}",
                    entry.destination
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_entry_has_type_start_size_and_chs() {
        let sector = master_boot_record(64 << 20);
        let entry = &sector[446..462];
        assert_eq!(entry[4], 0x0C);
        assert_eq!(&entry[1..4], [32, 33, 0], "sector 2048 is cylinder 0, head 32, sector 33");
        assert_eq!(&entry[5..8], [40, 32, 8], "sector 131071 is cylinder 8, head 40, sector 32");
        assert_eq!(u32::from_le_bytes(entry[8..12].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(entry[12..16].try_into().unwrap()), (64 << 11) - 2048);
        assert_eq!(&sector[510..], [0x55, 0xAA]);
        assert!(sector[462..510].iter().all(|&byte| byte == 0), "one partition only");
        let four_gibibytes = master_boot_record(4 << 30);
        assert_eq!(
            &four_gibibytes[446 + 5..446 + 8],
            [42, 160, 10],
            "cylinder 522 puts its top bits in byte 2"
        );
        let sixteen_gibibytes = master_boot_record(16 << 30);
        assert_eq!(&sixteen_gibibytes[446 + 5..446 + 8], [0xFE, 0xFF, 0xFF], "past the CHS range");
    }
}
