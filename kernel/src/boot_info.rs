//! What boot found and decided, handed to the kernel as plain data, and the boot banner.

#![forbid(unsafe_code)]

use crate::{
    mm::layout::{MIB, MemoryPlan},
    topology::Topology,
};
use core::fmt;

/// Where the layout seed came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedSource {
    /// The hardware random number generator.
    Hardware,
    /// A fixed seed asked for by the build (tests).
    Fixed,
    /// The hardware generator failed; the seed is the timer count.
    TimerFallback,
}

/// Where the RAM size came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// The firmware's mailbox property channel.
    Mailbox,
    /// The device tree passed at entry.
    DeviceTree,
}

/// One mapping, described for the memory-map table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// What the range is.
    pub name: &'static str,
    /// First address.
    pub base: u64,
    /// The physical address `base` maps to (equal to it but above the BCM2711's RAM hole).
    pub physical: u64,
    /// Length in bytes.
    pub size: u64,
    /// Memory type, e.g. "normal WB", "normal NC", "device".
    pub memory: &'static str,
    /// Permissions: "RX", "RO" or "RW".
    pub access: &'static str,
    /// Mapping granule: "4K" or "2M".
    pub granule: &'static str,
}

/// Maximum number of entries in [`BootInfo::mappings`].
pub const MAX_MAP_ENTRIES: usize = 32;

/// Everything the kernel learns from boot.
#[derive(Clone, Debug)]
pub struct BootInfo {
    /// The board's name.
    pub board: &'static str,
    /// The firmware's board revision code.
    pub board_revision: u32,
    /// The exception level the kernel was entered at (2 from firmware, 3 from an ELF in QEMU).
    pub entry_level: u8,
    /// The exception level the kernel runs at (1).
    pub exception_level: u8,
    /// Cores that reported in.
    pub cores_online: usize,
    /// Cores and memory nodes, from the device tree or MPIDR (1 node on every Raspberry Pi).
    pub topology: Topology,
    /// Smallest data cache line in bytes, from CTR_EL0.
    pub cache_line: usize,
    /// The layout seed.
    pub seed: u64,
    /// Where the seed came from.
    pub seed_source: SeedSource,
    /// Where the RAM size came from.
    pub memory_source: MemorySource,
    /// Whether a valid device tree was passed at entry.
    pub device_tree: bool,
    /// The budget row used, by name.
    pub budget_row: &'static str,
    /// The typed RAM regions.
    pub plan: MemoryPlan,
    /// Every mapping boot made, in the order made.
    pub mappings: [Option<MapEntry>; MAX_MAP_ENTRIES],
}

impl BootInfo {
    /// The mappings that are present.
    pub fn map_entries(&self) -> impl Iterator<Item = &MapEntry> {
        self.mappings.iter().flatten()
    }

    /// The boot banner: version, board, exception level, cores, cache line, seed, budget
    /// and memory map.
    pub fn banner(&self) -> Banner<'_> {
        Banner(self)
    }
}

/// Displays a [`BootInfo`] as the boot banner.
pub struct Banner<'a>(&'a BootInfo);

fn size_text(bytes: u64, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        write!(formatter, "{:>6} MiB", bytes / MIB)
    } else {
        write!(formatter, "{:>6} KiB", bytes.div_ceil(1024))
    }
}

impl fmt::Display for Banner<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.0;
        let seed_source = match info.seed_source {
            SeedSource::Hardware => "hardware RNG",
            SeedSource::Fixed => "fixed",
            SeedSource::TimerFallback => "timer fallback: RNG failed",
        };
        let memory_source = match (info.memory_source, info.device_tree) {
            (MemorySource::DeviceTree, _) => "device tree; the mailbox agrees",
            (MemorySource::Mailbox, true) => "mailbox; a device tree was passed",
            (MemorySource::Mailbox, false) => "mailbox; no device tree at entry",
        };
        let budget = info.plan.budget;
        writeln!(formatter, "Tessera {} - LLM inference unikernel", env!("CARGO_PKG_VERSION"))?;
        writeln!(formatter, "  board        {} (revision {:#08x})", info.board, info.board_revision)?;
        writeln!(formatter, "  level        EL{} (entered at EL{})", info.exception_level, info.entry_level)?;
        writeln!(formatter, "  cores        {} online", info.cores_online)?;
        writeln!(formatter, "  topology     {}", info.topology)?;
        writeln!(formatter, "  cache line   {} bytes (CTR_EL0)", info.cache_line)?;
        writeln!(formatter, "  layout seed  {:#018x} ({seed_source})", info.seed)?;
        let ram_map = info.plan.ram_map;
        write!(formatter, "  memory       {} MiB ARM RAM ({memory_source})", ram_map.low / MIB)?;
        if ram_map.high > 0 {
            write!(
                formatter,
                " + {} MiB at {:#x}, above the VideoCore's (board revision): {} MiB",
                ram_map.high / MIB,
                ram_map.high_base,
                ram_map.total() / MIB
            )?;
        }
        writeln!(formatter)?;
        writeln!(
            formatter,
            "  budget       row {}: LLM arena {} MiB, protocol {} MiB, system {} MiB",
            info.budget_row,
            budget.llm / MIB,
            budget.protocol / MIB,
            budget.system / MIB
        )?;
        writeln!(formatter, "  memory map")?;
        writeln!(
            formatter,
            "    region                   base          end         size   type      acc page"
        )?;
        for entry in info.map_entries() {
            write!(
                formatter,
                "    {:<18} {:#010x} - {:#010x}   ",
                entry.name,
                entry.base,
                entry.base + entry.size
            )?;
            size_text(entry.size, formatter)?;
            write!(formatter, "   {:<9} {:<3} {}", entry.memory, entry.access, entry.granule)?;
            if entry.physical != entry.base {
                write!(formatter, "  at physical {:#010x}", entry.physical)?;
            }
            writeln!(formatter)?;
        }
        write!(formatter, "    unmapped: page 0 (null guard), stack guard pages, slack ")?;
        size_text(info.plan.slack(), formatter)?;
        writeln!(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::layout::{Budget, RamMap};

    fn info(plan: MemoryPlan, entries: &[MapEntry]) -> BootInfo {
        let mut mappings = [None; MAX_MAP_ENTRIES];
        for (slot, entry) in mappings.iter_mut().zip(entries) {
            *slot = Some(*entry);
        }
        BootInfo {
            board: "Raspberry Pi 3 Model B",
            board_revision: 0xa02082,
            entry_level: 2,
            exception_level: 1,
            cores_online: 4,
            topology: Topology::from_mpidr(4),
            cache_line: 64,
            seed: 9,
            seed_source: SeedSource::Fixed,
            memory_source: MemorySource::Mailbox,
            device_tree: false,
            budget_row: "Pi 3B+",
            plan,
            mappings,
        }
    }

    const TEXT: MapEntry = MapEntry {
        name: "kernel text",
        base: 0x8_0000,
        physical: 0x8_0000,
        size: 0x1_0000,
        memory: "normal WB",
        access: "RX",
        granule: "4K",
    };

    #[test]
    fn banner_names_every_field() {
        let budget = Budget::reserving(960 * MIB, 72 * MIB, 4 * MIB);
        let plan = MemoryPlan::new(960 * MIB, budget, 0x1A_0000, 9).unwrap();
        let text = info(plan, &[TEXT]).banner().to_string();
        for expected in [
            "Tessera 0.1.0",
            "Raspberry Pi 3 Model B (revision 0xa02082)",
            "EL1 (entered at EL2)",
            "4 online",
            "topology     4 cores, 1 memory node (MPIDR, no usable device tree): a single node, so no NUMA gain is claimed",
            "64 bytes",
            "0x0000000000000009 (fixed)",
            "960 MiB ARM RAM (mailbox; no device tree at entry)",
            "LLM arena 884 MiB, protocol 4 MiB, system 72 MiB",
            "kernel text        0x00080000 - 0x00090000       64 KiB   normal WB RX  4K",
        ] {
            assert!(text.contains(expected), "banner lacks {expected:?}:\n{text}");
        }
        assert!(!text.contains("at physical"), "everything is identity-mapped:\n{text}");
    }

    /// QEMU raspi4b: the banner says where the RAM above the hole came from and where the
    /// arena's part there really is.
    #[test]
    fn banner_shows_the_ram_above_the_hole() {
        let ram_map = RamMap::with_high(960 * MIB, 1 << 30, 1 << 30);
        let budget = Budget::reserving(ram_map.total(), 96 * MIB, 4 * MIB);
        let plan = MemoryPlan::across(ram_map, budget, 0x1A_0000, 9).unwrap();
        let high = MapEntry {
            name: "llm arena (high)",
            base: 960 * MIB,
            physical: 1 << 30,
            size: 64 * MIB,
            memory: "normal WB",
            access: "RW",
            granule: "2M",
        };
        let text = info(plan, &[TEXT, high]).banner().to_string();
        for expected in [
            "960 MiB ARM RAM (mailbox; no device tree at entry) + 1024 MiB at 0x40000000, above the VideoCore's (board revision): 1984 MiB",
            "llm arena (high)   0x3c000000 - 0x40000000       64 MiB   normal WB RW  2M  at physical 0x40000000",
        ] {
            assert!(text.contains(expected), "banner lacks {expected:?}:\n{text}");
        }
    }
}
