//! Directory entries: decoding 32-byte slots, assembling long file names (checksum checked, with
//! a fall back to the 8.3 name), and a cursor that walks a directory's clusters.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::error::FsError;
use super::fat::{ClusterRun, read_blocks};
use super::layout::{Layout, read_u16, read_u32};
use crate::hil::BlockDevice;

/// Bytes in one directory slot.
pub const ENTRY_SIZE: usize = 32;
/// Most slots a FAT directory may hold (2 MiB of slots).
pub const MAX_DIRECTORY_ENTRIES: u64 = 65_536;

/// Attribute bit: read only.
pub const ATTRIBUTE_READ_ONLY: u8 = 0x01;
/// Attribute bit: hidden.
pub const ATTRIBUTE_HIDDEN: u8 = 0x02;
/// Attribute bit: system file.
pub const ATTRIBUTE_SYSTEM: u8 = 0x04;
/// Attribute bit: the volume label.
pub const ATTRIBUTE_VOLUME_ID: u8 = 0x08;
/// Attribute bit: a directory.
pub const ATTRIBUTE_DIRECTORY: u8 = 0x10;
/// Attribute bit: changed since the last backup.
pub const ATTRIBUTE_ARCHIVE: u8 = 0x20;
/// The attribute value that marks a long-name slot.
const ATTRIBUTE_LONG_NAME: u8 = 0x0F;
/// Mask applied to the attributes before checking for a long-name slot.
const ATTRIBUTE_LONG_NAME_MASK: u8 = 0x3F;
/// First byte of a deleted slot.
const DELETED: u8 = 0xE5;
/// Ordinal flag of the last (first stored) long-name slot.
const LAST_LONG_SLOT: u8 = 0x40;
/// Characters held by one long-name slot.
const CHARACTERS_PER_SLOT: usize = 13;
/// Most long-name slots in one name (255 characters).
const MAX_LONG_SLOTS: usize = 20;
/// Offsets of the 13 UTF-16 code units within a long-name slot.
const LONG_NAME_OFFSETS: [usize; CHARACTERS_PER_SLOT] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// One file or subdirectory as listed in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryEntry {
    name: String,
    short_name: String,
    attributes: u8,
    first_cluster: u32,
    size: u32,
}

impl DirectoryEntry {
    /// The entry for the root directory, which has no slot of its own.
    pub(super) fn root(layout: &Layout) -> Self {
        Self {
            name: String::from("/"),
            short_name: String::from("/"),
            attributes: ATTRIBUTE_DIRECTORY,
            first_cluster: layout.root_cluster,
            size: 0,
        }
    }

    /// The long file name, or the 8.3 name when there is no valid long name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 8.3 name, as `BASE.EXT` (lower case where the entry's case flags say so).
    pub fn short_name(&self) -> &str {
        &self.short_name
    }

    /// The raw attribute bits (`ATTRIBUTE_*`).
    pub fn attributes(&self) -> u8 {
        self.attributes
    }

    /// True for a subdirectory.
    pub fn is_directory(&self) -> bool {
        self.attributes & ATTRIBUTE_DIRECTORY != 0
    }

    /// The file size in bytes (0 for directories).
    pub fn size(&self) -> u64 {
        u64::from(self.size)
    }

    /// The first cluster of the entry's chain (0 for an empty file).
    pub fn first_cluster(&self) -> u32 {
        self.first_cluster
    }

    /// True when `name` matches the long or the 8.3 name, ignoring case.
    pub fn matches(&self, name: &str) -> bool {
        names_equal(&self.name, name) || names_equal(&self.short_name, name)
    }
}

/// Compares two names case-insensitively (full Unicode lower-casing).
fn names_equal(left: &str, right: &str) -> bool {
    left.chars().flat_map(char::to_lowercase).eq(right.chars().flat_map(char::to_lowercase))
}

/// The checksum of an 8.3 name that its long-name slots carry.
pub fn short_name_checksum(name: &[u8]) -> u8 {
    name.iter().fold(0u8, |sum, &byte| ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(byte))
}

/// Decodes the 11-byte 8.3 name of a slot into `BASE.EXT`.
fn decode_short_name(slot: &[u8; ENTRY_SIZE]) -> String {
    let case_flags = slot[12];
    let mut name = String::new();
    let mut push = |bytes: &[u8], lower: bool| {
        let length = bytes.iter().rposition(|&byte| byte != b' ').map_or(0, |last| last + 1);
        for &byte in &bytes[..length] {
            let character = if byte.is_ascii() { char::from(byte) } else { char::REPLACEMENT_CHARACTER };
            name.push(if lower { character.to_ascii_lowercase() } else { character });
        }
    };
    let mut base = [0u8; 8];
    base.copy_from_slice(&slot[0..8]);
    if base[0] == 0x05 {
        // 0x05 stands for a first byte of 0xE5, which would otherwise mark the slot deleted.
        base[0] = DELETED;
    }
    push(&base, case_flags & 0x08 != 0);
    if slot[8..11].iter().any(|&byte| byte != b' ') {
        push(b".", false);
        push(&slot[8..11], case_flags & 0x10 != 0);
    }
    name
}

/// Long-name slots gathered while walking towards their short entry.
#[derive(Debug)]
struct LongName {
    /// UTF-16 code units, slot by slot.
    units: [u16; MAX_LONG_SLOTS * CHARACTERS_PER_SLOT],
    /// Slots in the name; 0 when no name is being gathered.
    slots: usize,
    /// The ordinal of the slot expected next; 0 once all slots were seen.
    next: usize,
    /// The checksum every slot of this name carries.
    checksum: u8,
}

impl LongName {
    fn new() -> Self {
        Self { units: [0; MAX_LONG_SLOTS * CHARACTERS_PER_SLOT], slots: 0, next: 0, checksum: 0 }
    }

    fn reset(&mut self) {
        self.slots = 0;
        self.next = 0;
    }

    /// Takes one long-name slot; slots out of order start over or drop the name.
    fn add(&mut self, slot: &[u8; ENTRY_SIZE]) {
        let ordinal = usize::from(slot[0] & 0x1F);
        let checksum = slot[13];
        if slot[0] & LAST_LONG_SLOT != 0 {
            if ordinal == 0 || ordinal > MAX_LONG_SLOTS {
                self.reset();
                return;
            }
            self.slots = ordinal;
            self.checksum = checksum;
        } else if self.slots == 0 || ordinal == 0 || ordinal != self.next || checksum != self.checksum {
            self.reset();
            return;
        }
        let start = (ordinal - 1) * CHARACTERS_PER_SLOT;
        for (index, offset) in LONG_NAME_OFFSETS.iter().enumerate() {
            self.units[start + index] = read_u16(slot, *offset);
        }
        self.next = ordinal - 1;
    }

    /// The gathered name, if it is complete, belongs to a short name with this checksum, and is
    /// valid UTF-16.
    fn finish(&mut self, checksum: u8) -> Option<String> {
        let complete = self.slots > 0 && self.next == 0 && self.checksum == checksum;
        let slots = self.slots;
        self.reset();
        if !complete {
            return None;
        }
        let units = &self.units[..slots * CHARACTERS_PER_SLOT];
        let length = units.iter().position(|&unit| unit == 0).unwrap_or(units.len());
        let name: String =
            char::decode_utf16(units[..length].iter().copied()).collect::<Result<_, _>>().ok()?;
        if name.is_empty() { None } else { Some(name) }
    }
}

/// What one slot says.
enum Slot {
    /// The end of the directory.
    End,
    /// A slot to skip (deleted, long-name part, volume label, `.` or `..`).
    Skip,
    /// A file or subdirectory.
    Entry(DirectoryEntry),
}

/// Decodes one slot, feeding long-name parts into `long_name`.
fn decode_slot(slot: &[u8; ENTRY_SIZE], long_name: &mut LongName) -> Slot {
    let attributes = slot[11];
    if slot[0] == 0 {
        return Slot::End;
    }
    if slot[0] == DELETED {
        long_name.reset();
        return Slot::Skip;
    }
    if attributes & ATTRIBUTE_LONG_NAME_MASK == ATTRIBUTE_LONG_NAME {
        long_name.add(slot);
        return Slot::Skip;
    }
    if attributes & ATTRIBUTE_VOLUME_ID != 0 || slot[0] == b'.' {
        long_name.reset();
        return Slot::Skip;
    }
    let short_name = decode_short_name(slot);
    let name = long_name.finish(short_name_checksum(&slot[0..11])).unwrap_or_else(|| short_name.clone());
    let first_cluster = (u32::from(read_u16(slot, 20)) << 16) | u32::from(read_u16(slot, 26));
    let is_directory = attributes & ATTRIBUTE_DIRECTORY != 0;
    Slot::Entry(DirectoryEntry {
        name,
        short_name,
        attributes,
        first_cluster,
        size: if is_directory { 0 } else { read_u32(slot, 28) },
    })
}

/// A position in a directory whose cluster chain was already walked and checked.
#[derive(Debug)]
pub(super) struct DirectoryCursor {
    runs: Vec<ClusterRun>,
    run_index: usize,
    cluster_in_run: u64,
    cluster: Vec<u8>,
    slot_index: usize,
    loaded: bool,
    finished: bool,
    long_name: LongName,
}

impl DirectoryCursor {
    /// A cursor at the first slot of the directory made of `runs`.
    pub fn new(layout: &Layout, runs: Vec<ClusterRun>) -> Self {
        Self {
            runs,
            run_index: 0,
            cluster_in_run: 0,
            cluster: vec![0; layout.cluster_bytes() as usize],
            slot_index: 0,
            loaded: false,
            finished: false,
            long_name: LongName::new(),
        }
    }

    /// Loads the next cluster of the directory; false at the end of the chain.
    fn load_next_cluster<D: BlockDevice>(
        &mut self,
        device: &mut D,
        layout: &Layout,
    ) -> Result<bool, FsError> {
        if self.loaded {
            self.cluster_in_run += 1;
        }
        let Some(mut run) = self.runs.get(self.run_index).copied() else { return Ok(false) };
        if self.cluster_in_run >= run.cluster_count {
            self.run_index += 1;
            self.cluster_in_run = 0;
            match self.runs.get(self.run_index) {
                Some(next) => run = *next,
                None => return Ok(false),
            }
        }
        // Runs come from a checked chain, so every cluster in them is valid.
        let cluster = u64::from(run.first_cluster) + self.cluster_in_run;
        let block = layout.cluster_first_block(cluster as u32);
        read_blocks(device, block, &mut self.cluster)?;
        self.loaded = true;
        self.slot_index = 0;
        Ok(true)
    }

    /// The next file or subdirectory, or `None` at the end of the directory.
    pub fn next_entry<D: BlockDevice>(
        &mut self,
        device: &mut D,
        layout: &Layout,
    ) -> Result<Option<DirectoryEntry>, FsError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if !self.loaded || self.slot_index * ENTRY_SIZE >= self.cluster.len() {
                match self.load_next_cluster(device, layout) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.finished = true;
                        return Ok(None);
                    }
                    Err(error) => {
                        self.finished = true;
                        return Err(error);
                    }
                }
            }
            let offset = self.slot_index * ENTRY_SIZE;
            self.slot_index += 1;
            let mut slot = [0u8; ENTRY_SIZE];
            slot.copy_from_slice(&self.cluster[offset..offset + ENTRY_SIZE]);
            match decode_slot(&slot, &mut self.long_name) {
                Slot::End => self.finished = true,
                Slot::Skip => {}
                Slot::Entry(entry) => return Ok(Some(entry)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_slot(name: &[u8; 11], attributes: u8) -> [u8; ENTRY_SIZE] {
        let mut slot = [0u8; ENTRY_SIZE];
        slot[..11].copy_from_slice(name);
        slot[11] = attributes;
        slot
    }

    fn long_slot(ordinal: u8, checksum: u8, text: &str) -> [u8; ENTRY_SIZE] {
        let mut slot = [0u8; ENTRY_SIZE];
        slot[0] = ordinal;
        slot[11] = ATTRIBUTE_LONG_NAME;
        slot[13] = checksum;
        let mut units: Vec<u16> = text.encode_utf16().collect();
        if units.len() < CHARACTERS_PER_SLOT {
            units.push(0);
        }
        units.resize(CHARACTERS_PER_SLOT, 0xFFFF);
        for (unit, offset) in units.iter().zip(LONG_NAME_OFFSETS) {
            slot[offset..offset + 2].copy_from_slice(&unit.to_le_bytes());
        }
        slot
    }

    fn decode_all(slots: &[[u8; ENTRY_SIZE]]) -> Vec<DirectoryEntry> {
        let mut long_name = LongName::new();
        let mut entries = Vec::new();
        for slot in slots {
            match decode_slot(slot, &mut long_name) {
                Slot::End => break,
                Slot::Skip => {}
                Slot::Entry(entry) => entries.push(entry),
            }
        }
        entries
    }

    #[test]
    fn fs_short_names_with_case_flags_and_escaped_first_byte() {
        let mut slot = short_slot(b"README  TXT", ATTRIBUTE_ARCHIVE);
        slot[12] = 0x08 | 0x10;
        assert_eq!(decode_all(&[slot])[0].name(), "readme.txt");
        let mut escaped = short_slot(b"\x05BC        ", 0);
        escaped[12] = 0;
        assert_eq!(decode_all(&[escaped])[0].short_name(), "\u{FFFD}BC");
        let directory = short_slot(b"MODELS     ", ATTRIBUTE_DIRECTORY);
        let entries = decode_all(&[directory]);
        assert_eq!(entries[0].name(), "MODELS");
        assert!(entries[0].is_directory());
    }

    #[test]
    fn fs_long_name_across_two_slots_with_checksum() {
        let short = *b"SMOLLM~1GGU";
        let checksum = short_name_checksum(&short);
        let name = "smollm2-135m.gguf";
        let slots = [
            long_slot(LAST_LONG_SLOT | 2, checksum, &name[13..]),
            long_slot(1, checksum, &name[..13]),
            short_slot(&short, ATTRIBUTE_ARCHIVE),
        ];
        let entries = decode_all(&slots);
        assert_eq!(entries[0].name(), name);
        assert_eq!(entries[0].short_name(), "SMOLLM~1.GGU");
        assert!(entries[0].matches("SmolLM2-135M.GGUF"));
        assert!(entries[0].matches("smollm~1.ggu"));
        assert!(!entries[0].matches("smollm2.gguf"));
    }

    #[test]
    fn fs_long_name_falls_back_on_bad_checksum_or_missing_slot() {
        let short = *b"SMOLLM~1GGU";
        let checksum = short_name_checksum(&short);
        let name = "smollm2-135m.gguf";
        let wrong = [
            long_slot(LAST_LONG_SLOT | 2, checksum ^ 1, &name[13..]),
            long_slot(1, checksum ^ 1, &name[..13]),
            short_slot(&short, 0),
        ];
        assert_eq!(decode_all(&wrong)[0].name(), "SMOLLM~1.GGU");
        let missing = [long_slot(LAST_LONG_SLOT | 2, checksum, &name[13..]), short_slot(&short, 0)];
        assert_eq!(decode_all(&missing)[0].name(), "SMOLLM~1.GGU");
        let deleted_between = [
            long_slot(LAST_LONG_SLOT | 2, checksum, &name[13..]),
            short_slot(b"\xE5ELETED    ", 0),
            long_slot(1, checksum, &name[..13]),
            short_slot(&short, 0),
        ];
        assert_eq!(decode_all(&deleted_between)[0].name(), "SMOLLM~1.GGU");
    }

    #[test]
    fn fs_skips_labels_dots_and_deleted_and_stops_at_end() {
        let slots = [
            short_slot(b"TESSERA    ", ATTRIBUTE_VOLUME_ID),
            short_slot(b".          ", ATTRIBUTE_DIRECTORY),
            short_slot(b"..         ", ATTRIBUTE_DIRECTORY),
            short_slot(b"\xE5GONE   BIN", 0),
            short_slot(b"KEPT    BIN", 0),
            [0u8; ENTRY_SIZE],
            short_slot(b"AFTER   BIN", 0),
        ];
        let entries = decode_all(&slots);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name(), "KEPT.BIN");
    }
}
