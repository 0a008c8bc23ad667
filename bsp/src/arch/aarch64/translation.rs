//! AArch64 translation tables (VMSAv8-64, 4 KiB granule): a pure builder and walker.
//!
//! [`TranslationTables::build`] turns a list of [`Mapping`]s into descriptors. It touches no
//! register and no physical memory, so it is unit-tested on the host; boot runs the same code
//! on the real, statically allocated tables. The address space is 32 bits (T0SZ = 32): a
//! level-1 table of 4 entries, one level-2 table per mapped gibibyte, and level-3 tables where
//! a range is mapped in 4 KiB pages. Nearly everything is identity-mapped; the one exception is
//! the BCM2711's RAM above its hole, which follows the low RAM (see `kernel::mm::layout::RamMap`).

#![forbid(unsafe_code)]

use core::mem::offset_of;

/// Entries in one table.
pub const ENTRIES: usize = 512;
/// Bytes covered by one level-1 entry (1 GiB).
pub const LEVEL1_SPAN: u64 = 1 << 30;
/// Size of the virtual (and physical) address space: 32 bits.
pub const ADDRESS_SPACE: u64 = 1 << 32;

/// The granule of a mapping: the project's one page-size type, from the kernel's memory manager.
pub use kernel::hil::boundary::PageSize;

/// Memory type, as an index into MAIR_EL1 (see [`MAIR_VALUE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    /// Device-nGnRE: MMIO.
    Device = 0,
    /// Normal, inner and outer write-back, read/write-allocate.
    WriteBack = 1,
    /// Normal, non-cacheable: memory shared with devices.
    NonCacheable = 2,
}

/// MAIR_EL1: attribute 0 Device-nGnRE (0x04), 1 normal write-back (0xFF), 2 normal
/// non-cacheable (0x44).
pub const MAIR_VALUE: u64 = 0x04 | (0xFF << 8) | (0x44 << 16);

/// Access permissions at EL1. Only `ReadExecute` is executable (W^X).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only and executable: kernel text.
    ReadExecute,
    /// Read-only, never executable: rodata.
    ReadOnly,
    /// Read-write, never executable: data, stacks, heap, pools, MMIO.
    ReadWrite,
}

/// One range to map with one set of attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// What the range is, for the banner.
    pub name: &'static str,
    /// First (virtual) address.
    pub base: u64,
    /// The physical address `base` maps to (equal to it everywhere but the RAM above the
    /// BCM2711's hole).
    pub physical: u64,
    /// Length in bytes; a multiple of the granule.
    pub size: u64,
    /// Memory type.
    pub memory: MemoryType,
    /// Permissions.
    pub access: Access,
    /// Granule used to map it.
    pub granule: PageSize,
}

/// Why a mapping list could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Base or size is not a multiple of the granule.
    Misaligned {
        /// The offending mapping's name.
        name: &'static str,
    },
    /// The range runs past the 32-bit address space.
    OutOfRange {
        /// The offending mapping's name.
        name: &'static str,
    },
    /// The range overlaps a range mapped before it.
    Overlap {
        /// The offending mapping's name.
        name: &'static str,
        /// The first address already mapped.
        address: u64,
    },
    /// More level-2 or level-3 tables are needed than were reserved.
    OutOfTables,
}

/// The result of walking the tables for one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The output (physical) address.
    pub physical: u64,
    /// Memory type.
    pub memory: MemoryType,
    /// Permissions.
    pub access: Access,
    /// The size of the page or block that maps it.
    pub granule: PageSize,
}

const VALID: u64 = 1;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTRIBUTE_INDEX_SHIFT: u64 = 2;
const ACCESS_READ_ONLY: u64 = 1 << 7; // AP[2]
const SHAREABILITY_INNER: u64 = 0b11 << 8;
const SHAREABILITY_OUTER: u64 = 0b10 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const PRIVILEGED_EXECUTE_NEVER: u64 = 1 << 53;
const UNPRIVILEGED_EXECUTE_NEVER: u64 = 1 << 54;
const ADDRESS_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// Descriptor bits (other than type and address) for a memory type and permission.
pub fn attribute_bits(memory: MemoryType, access: Access) -> u64 {
    let shareability = match memory {
        MemoryType::Device => SHAREABILITY_OUTER,
        MemoryType::WriteBack | MemoryType::NonCacheable => SHAREABILITY_INNER,
    };
    let permissions = match access {
        Access::ReadExecute => ACCESS_READ_ONLY,
        Access::ReadOnly => ACCESS_READ_ONLY | PRIVILEGED_EXECUTE_NEVER,
        Access::ReadWrite => PRIVILEGED_EXECUTE_NEVER,
    };
    // EL0 never runs here: no page is ever executable from EL0.
    ((memory as u64) << ATTRIBUTE_INDEX_SHIFT)
        | shareability
        | ACCESS_FLAG
        | permissions
        | UNPRIVILEGED_EXECUTE_NEVER
}

fn decode_attributes(descriptor: u64) -> (MemoryType, Access) {
    let memory = match (descriptor >> ATTRIBUTE_INDEX_SHIFT) & 0b111 {
        0 => MemoryType::Device,
        1 => MemoryType::WriteBack,
        _ => MemoryType::NonCacheable,
    };
    let read_only = descriptor & ACCESS_READ_ONLY != 0;
    let executable = descriptor & PRIVILEGED_EXECUTE_NEVER == 0;
    let access = match (read_only, executable) {
        (true, true) => Access::ReadExecute,
        (true, false) => Access::ReadOnly,
        (false, _) => Access::ReadWrite,
    };
    (memory, access)
}

/// One 4 KiB-aligned table of 512 descriptors.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(4096))]
pub struct Table(pub [u64; ENTRIES]);

/// A complete set of tables for a 32-bit identity map: one level-1 table, up to four level-2
/// tables and `LEVEL3` level-3 tables.
///
/// Table addresses in descriptors are computed from the physical address of the structure
/// itself, which the caller passes in, so the same code serves the real tables and host tests.
#[derive(Clone, Debug)]
#[repr(C, align(4096))]
pub struct TranslationTables<const LEVEL3: usize> {
    level1: Table,
    level2: [Table; 4],
    level3: [Table; LEVEL3],
    level3_used: usize,
}

impl<const LEVEL3: usize> Default for TranslationTables<LEVEL3> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const LEVEL3: usize> TranslationTables<LEVEL3> {
    /// Empty tables: nothing mapped.
    pub const fn new() -> Self {
        Self {
            level1: Table([0; ENTRIES]),
            level2: [Table([0; ENTRIES]); 4],
            level3: [Table([0; ENTRIES]); LEVEL3],
            level3_used: 0,
        }
    }

    /// The level-1 table's offset from the start of the structure (it is the first field).
    pub const fn root_offset() -> u64 {
        offset_of!(Self, level1) as u64
    }

    fn level2_offset(index: usize) -> u64 {
        (offset_of!(Self, level2) + index * size_of::<Table>()) as u64
    }

    fn level3_offset(index: usize) -> u64 {
        (offset_of!(Self, level3) + index * size_of::<Table>()) as u64
    }

    /// How many level-3 tables are in use.
    pub fn level3_used(&self) -> usize {
        self.level3_used
    }

    /// Clears everything, then maps each of `mappings`. `self_physical` is the physical address
    /// of `self`, used to link tables together.
    pub fn build(&mut self, self_physical: u64, mappings: &[Mapping]) -> Result<(), MapError> {
        *self = Self::new();
        for (index, entry) in self.level1.0.iter_mut().take(4).enumerate() {
            *entry = (self_physical + Self::level2_offset(index)) | TABLE_OR_PAGE | VALID;
        }
        mappings.iter().try_for_each(|mapping| self.map(self_physical, mapping))
    }

    fn map(&mut self, self_physical: u64, mapping: &Mapping) -> Result<(), MapError> {
        let step = mapping.granule.bytes();
        if !mapping.base.is_multiple_of(step)
            || !mapping.size.is_multiple_of(step)
            || !mapping.physical.is_multiple_of(step)
        {
            return Err(MapError::Misaligned { name: mapping.name });
        }
        for start in [mapping.base, mapping.physical] {
            match start.checked_add(mapping.size) {
                Some(end) if end <= ADDRESS_SPACE => {}
                _ => return Err(MapError::OutOfRange { name: mapping.name }),
            }
        }
        let attributes = attribute_bits(mapping.memory, mapping.access);
        for address in (mapping.base..mapping.base + mapping.size).step_by(step as usize) {
            let output = address - mapping.base + mapping.physical;
            let overlap = MapError::Overlap { name: mapping.name, address };
            let level1_index = (address / LEVEL1_SPAN) as usize;
            let level2_index = ((address >> 21) & 0x1FF) as usize;
            let level2_entry = self.level2[level1_index].0[level2_index];
            match mapping.granule {
                PageSize::Size2MiB => {
                    if level2_entry != 0 {
                        return Err(overlap);
                    }
                    self.level2[level1_index].0[level2_index] = output | attributes | VALID;
                }
                PageSize::Size4KiB => {
                    let table = if level2_entry == 0 {
                        if self.level3_used == LEVEL3 {
                            return Err(MapError::OutOfTables);
                        }
                        let table = self.level3_used;
                        self.level3_used += 1;
                        self.level2[level1_index].0[level2_index] =
                            (self_physical + Self::level3_offset(table)) | TABLE_OR_PAGE | VALID;
                        table
                    } else if level2_entry & TABLE_OR_PAGE != 0 {
                        self.level3_index(self_physical, level2_entry).ok_or(MapError::OutOfTables)?
                    } else {
                        return Err(overlap);
                    };
                    let level3_index = ((address >> 12) & 0x1FF) as usize;
                    let entry = &mut self.level3[table].0[level3_index];
                    if *entry != 0 {
                        return Err(overlap);
                    }
                    *entry = output | attributes | TABLE_OR_PAGE | VALID;
                }
            }
        }
        Ok(())
    }

    fn level3_index(&self, self_physical: u64, descriptor: u64) -> Option<usize> {
        let offset = (descriptor & ADDRESS_MASK).checked_sub(self_physical + Self::level3_offset(0))?;
        let index = (offset / size_of::<Table>() as u64) as usize;
        (index < self.level3_used).then_some(index)
    }

    /// Walks the tables for `address`, as the MMU would. `None` means a translation fault.
    pub fn translate(&self, self_physical: u64, address: u64) -> Option<Translation> {
        if address >= ADDRESS_SPACE {
            return None;
        }
        let level1 = self.level1.0[(address / LEVEL1_SPAN) as usize];
        if level1 & VALID == 0 {
            return None;
        }
        let level2_table = ((level1 & ADDRESS_MASK) - self_physical - Self::level2_offset(0)) / 4096;
        let level2 = self.level2.get(level2_table as usize)?.0[((address >> 21) & 0x1FF) as usize];
        if level2 & VALID == 0 {
            return None;
        }
        let (descriptor, granule) = if level2 & TABLE_OR_PAGE == 0 {
            (level2, PageSize::Size2MiB)
        } else {
            let table = self.level3_index(self_physical, level2)?;
            (self.level3[table].0[((address >> 12) & 0x1FF) as usize], PageSize::Size4KiB)
        };
        if descriptor & VALID == 0 {
            return None;
        }
        let offset_mask = granule.bytes() - 1;
        let (memory, access) = decode_attributes(descriptor);
        Some(Translation {
            physical: (descriptor & ADDRESS_MASK & !offset_mask) | (address & offset_mask),
            memory,
            access,
            granule,
        })
    }

    /// The raw level-2 or level-3 descriptor that maps `address`, for read-back checks.
    pub fn leaf_descriptor(&self, self_physical: u64, address: u64) -> Option<u64> {
        let level2 = self.level2.get((address / LEVEL1_SPAN) as usize)?.0[((address >> 21) & 0x1FF) as usize];
        if level2 & (VALID | TABLE_OR_PAGE) == VALID | TABLE_OR_PAGE {
            let table = self.level3_index(self_physical, level2)?;
            Some(self.level3[table].0[((address >> 12) & 0x1FF) as usize])
        } else {
            Some(level2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: u64 = 0x10_0000;

    fn mapping(name: &'static str, base: u64, size: u64, granule: PageSize) -> Mapping {
        Mapping {
            name,
            base,
            physical: base,
            size,
            memory: MemoryType::WriteBack,
            access: Access::ReadWrite,
            granule,
        }
    }

    fn kernel_like() -> Vec<Mapping> {
        vec![
            Mapping {
                name: "text",
                base: 0x8_0000,
                physical: 0x8_0000,
                size: 0x2_0000,
                memory: MemoryType::WriteBack,
                access: Access::ReadExecute,
                granule: PageSize::Size4KiB,
            },
            Mapping {
                name: "rodata",
                base: 0xA_0000,
                physical: 0xA_0000,
                size: 0x1_0000,
                memory: MemoryType::WriteBack,
                access: Access::ReadOnly,
                granule: PageSize::Size4KiB,
            },
            mapping("data", 0xB_0000, 0x15_0000, PageSize::Size4KiB),
            Mapping {
                name: "dma",
                base: 0x20_0000,
                physical: 0x20_0000,
                size: 0x20_0000,
                memory: MemoryType::NonCacheable,
                access: Access::ReadWrite,
                granule: PageSize::Size2MiB,
            },
            mapping("ram", 0x40_0000, 0x3BC0_0000, PageSize::Size2MiB),
            Mapping {
                name: "mmio",
                base: 0x3F00_0000,
                physical: 0x3F00_0000,
                size: 0x100_0000,
                memory: MemoryType::Device,
                access: Access::ReadWrite,
                granule: PageSize::Size2MiB,
            },
            Mapping {
                name: "local",
                base: 0x4000_0000,
                physical: 0x4000_0000,
                size: 0x20_0000,
                memory: MemoryType::Device,
                access: Access::ReadWrite,
                granule: PageSize::Size2MiB,
            },
        ]
    }

    #[test]
    fn kernel_layout_translates_as_planned() {
        let mut tables = Box::new(TranslationTables::<4>::new());
        tables.build(BASE, &kernel_like()).unwrap();
        assert_eq!(tables.level3_used(), 1);
        assert_eq!(tables.translate(BASE, 0), None, "page 0 is a null guard");
        assert_eq!(tables.translate(BASE, 0x7_FFFF), None);
        let text = tables.translate(BASE, 0x8_0123).unwrap();
        assert_eq!(
            (text.physical, text.access, text.granule),
            (0x8_0123, Access::ReadExecute, PageSize::Size4KiB)
        );
        assert_eq!(tables.translate(BASE, 0xA_0000).unwrap().access, Access::ReadOnly);
        let dma = tables.translate(BASE, 0x20_1000).unwrap();
        assert_eq!((dma.memory, dma.granule), (MemoryType::NonCacheable, PageSize::Size2MiB));
        let uart = tables.translate(BASE, 0x3F20_1000).unwrap();
        assert_eq!((uart.memory, uart.access), (MemoryType::Device, Access::ReadWrite));
        assert_eq!(tables.translate(BASE, 0x3C00_0000), None, "VideoCore memory is not mapped");
        assert!(tables.translate(BASE, 0x4000_0040).is_some());
        assert_eq!(tables.translate(BASE, 0x8000_0000), None);
        assert_eq!(tables.translate(BASE, ADDRESS_SPACE), None);
    }

    #[test]
    fn descriptors_have_expected_bits() {
        let mut tables = Box::new(TranslationTables::<4>::new());
        tables.build(BASE, &kernel_like()).unwrap();
        let text = tables.leaf_descriptor(BASE, 0x8_0000).unwrap();
        assert_eq!(text & 0b11, 0b11, "level-3 page");
        assert_eq!(text & PRIVILEGED_EXECUTE_NEVER, 0, "text is executable");
        assert_ne!(text & ACCESS_READ_ONLY, 0, "text is read-only");
        let data = tables.leaf_descriptor(BASE, 0xB_0000).unwrap();
        assert_ne!(data & PRIVILEGED_EXECUTE_NEVER, 0, "data is never executable");
        assert_eq!(data & ACCESS_READ_ONLY, 0, "data is writable");
        let block = tables.leaf_descriptor(BASE, 0x40_0000).unwrap();
        assert_eq!(block & 0b11, 0b01, "level-2 block");
        assert_eq!(block & ADDRESS_MASK, 0x40_0000);
    }

    /// The BCM2711's RAM above the hole: addresses from 0x3C000000 on reach 0x40000000 on.
    #[test]
    fn a_mapping_may_point_elsewhere() {
        let mut tables = Box::new(TranslationTables::<1>::new());
        let high =
            Mapping { physical: 0x4000_0000, ..mapping("high", 0x3C00_0000, 0x40_0000, PageSize::Size2MiB) };
        tables.build(BASE, &[high]).unwrap();
        assert_eq!(tables.translate(BASE, 0x3C00_0010).unwrap().physical, 0x4000_0010);
        assert_eq!(tables.translate(BASE, 0x3C3F_FFF8).unwrap().physical, 0x403F_FFF8);
        assert_eq!(tables.translate(BASE, 0x4000_0000), None, "the output range is not mapped at itself");
        let odd = Mapping { physical: 0x4000_1000, ..high };
        assert_eq!(tables.build(BASE, &[odd]), Err(MapError::Misaligned { name: "high" }));
        let beyond = Mapping { physical: 0xFFE0_0000, ..high };
        assert_eq!(tables.build(BASE, &[beyond]), Err(MapError::OutOfRange { name: "high" }));
    }

    #[test]
    fn errors() {
        let mut tables = Box::new(TranslationTables::<1>::new());
        assert_eq!(
            tables.build(BASE, &[mapping("odd", 0x1000, 0x20_0000, PageSize::Size2MiB)]),
            Err(MapError::Misaligned { name: "odd" })
        );
        assert_eq!(
            tables.build(BASE, &[mapping("high", 0xFFE0_0000, 0x40_0000, PageSize::Size2MiB)]),
            Err(MapError::OutOfRange { name: "high" })
        );
        assert_eq!(
            tables.build(
                BASE,
                &[
                    mapping("a", 0, 0x40_0000, PageSize::Size2MiB),
                    mapping("b", 0x20_1000, 0x1000, PageSize::Size4KiB)
                ]
            ),
            Err(MapError::Overlap { name: "b", address: 0x20_1000 })
        );
        assert_eq!(
            tables.build(
                BASE,
                &[
                    mapping("a", 0, 0x1000, PageSize::Size4KiB),
                    mapping("b", 0x20_0000, 0x1000, PageSize::Size4KiB)
                ]
            ),
            Err(MapError::OutOfTables)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random disjoint page runs: each mapped page translates to itself with its own
        /// attributes, and every other page faults.
        #[test]
        fn random_page_runs_translate_exactly(runs in proptest::collection::vec((0u64..1024, 1u64..8, 0usize..3), 1..12)) {
            let mut taken = std::collections::BTreeSet::new();
            let mut mappings = Vec::new();
            for (start, length, access) in runs {
                let pages: Vec<u64> = (start..start + length).collect();
                if pages.iter().any(|page| taken.contains(page)) { continue; }
                taken.extend(pages.iter().copied());
                let access = [Access::ReadExecute, Access::ReadOnly, Access::ReadWrite][access];
                mappings.push(Mapping { access, ..mapping("run", start * 4096, length * 4096, PageSize::Size4KiB) });
            }
            let mut tables = Box::new(TranslationTables::<3>::new());
            tables.build(BASE, &mappings).unwrap();
            for page in 0..1040u64 {
                let found = tables.translate(BASE, page * 4096 + 8);
                match mappings.iter().find(|m| (m.base..m.base + m.size).contains(&(page * 4096))) {
                    Some(m) => {
                        let found = found.unwrap();
                        prop_assert_eq!(found.physical, page * 4096 + 8);
                        prop_assert_eq!(found.access, m.access);
                    }
                    None => prop_assert!(found.is_none()),
                }
            }
        }
    }
}
