//! Raspberry Pi models and their memory budgets: which row of the budget table a board uses.

#![forbid(unsafe_code)]

use crate::board::soc::Soc;
use kernel::hil::boundary::{Budget, MIB, PROTOCOL_RESERVE_BYTES, RamMap, system_need};

/// A Raspberry Pi model, decoded from the firmware's board revision code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoardModel {
    /// Pi 3 Model B.
    Pi3B,
    /// Pi 3 Model B+.
    Pi3BPlus,
    /// Pi 3 Model A+ (512 MiB; QEMU `raspi3ap`).
    Pi3APlus,
    /// Pi Zero 2 W (512 MiB).
    PiZero2W,
    /// Pi 4 Model B.
    Pi4B,
    /// Pi 5.
    Pi5,
    /// A revision code this table does not know; the budget row follows the RAM size.
    Unknown(u32),
}

impl BoardModel {
    /// Decodes a new-style revision code (bit 23 set; type in bits 11:4).
    pub fn from_revision(revision: u32) -> BoardModel {
        if revision & (1 << 23) == 0 {
            return BoardModel::Unknown(revision);
        }
        match (revision >> 4) & 0xFF {
            0x08 => BoardModel::Pi3B,
            0x0D => BoardModel::Pi3BPlus,
            0x0E => BoardModel::Pi3APlus,
            0x12 => BoardModel::PiZero2W,
            0x11 => BoardModel::Pi4B,
            0x17 => BoardModel::Pi5,
            _ => BoardModel::Unknown(revision),
        }
    }

    /// Whether the firmware leaves the EMMC controller on the WiFi chip's SDIO pins (GPIO
    /// 34-39), which the SD driver must release: the 3B, 3A+ and 3B+, as Circle lists them.
    /// The Zero 2 W also has WiFi, but no reference releases its pins, so neither does Tessera.
    pub fn wifi_on_emmc_pins(self) -> bool {
        matches!(self, BoardModel::Pi3B | BoardModel::Pi3APlus | BoardModel::Pi3BPlus)
    }

    /// The chip the model is built on, where Tessera knows it (the Pi 5's BCM2712 is not
    /// supported).
    pub fn soc(self) -> Option<Soc> {
        match self {
            BoardModel::Pi3B | BoardModel::Pi3BPlus | BoardModel::Pi3APlus | BoardModel::PiZero2W => {
                Some(Soc::Bcm2837)
            }
            BoardModel::Pi4B => Some(Soc::Bcm2711),
            BoardModel::Pi5 | BoardModel::Unknown(_) => None,
        }
    }

    /// The model's name.
    pub fn name(self) -> &'static str {
        match self {
            BoardModel::Pi3B => "Raspberry Pi 3 Model B",
            BoardModel::Pi3BPlus => "Raspberry Pi 3 Model B+",
            BoardModel::Pi3APlus => "Raspberry Pi 3 Model A+",
            BoardModel::PiZero2W => "Raspberry Pi Zero 2 W",
            BoardModel::Pi4B => "Raspberry Pi 4 Model B",
            BoardModel::Pi5 => "Raspberry Pi 5",
            BoardModel::Unknown(_) => "unknown Raspberry Pi",
        }
    }
}

/// Bytes of RAM a new-style revision code names (bits 22:20: 256 MiB shifted left by them).
pub fn revision_ram(revision: u32) -> Option<u64> {
    let code = (revision >> 20) & 0b111;
    (revision & (1 << 23) != 0 && code <= 5).then(|| (256 * MIB) << code)
}

/// The board's RAM as the memory plan lays it out: the `low` bytes the mailbox reports from
/// address 0 and, on a chip with RAM above the hole that ends them, the part of the revision
/// code's RAM that lies there (as Circle does on the Pi 4: the mailbox reports only the part
/// below the VideoCore's share, and the device tree is not always there).
pub fn ram_map(soc: Soc, revision: u32, low: u64) -> RamMap {
    match (soc.high_ram_window(), revision_ram(revision)) {
        (Some((base, end)), Some(total)) if total > base && low <= base => {
            RamMap::with_high(low, base, total.min(end) - base)
        }
        _ => RamMap::contiguous(low),
    }
}

/// One row of the budget table: what a board class reserves. The protocol reserve is the
/// same on every board ([`PROTOCOL_RESERVE_BYTES`], sized from its need); everything else the
/// system share leaves is the LLM arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetRow {
    /// The board class the row was written for.
    pub name: &'static str,
    /// The RAM size the row was written for (which row an unknown board takes).
    pub reference_ram: u64,
    /// Bytes for the kernel image, DMA, the heap (which grows with the arena's metadata), the
    /// small-object pool and at most 32 MiB of layout slack.
    pub system: u64,
}

const fn row(name: &'static str, ram_mib: u64, system_mib: u64) -> BudgetRow {
    BudgetRow { name, reference_ram: ram_mib * MIB, system: system_mib * MIB }
}

// The protocol reserve, sized from its need, is a few MiB (it was 120 MiB of 960).
const _: () = assert!(PROTOCOL_RESERVE_BYTES > 4 * 2 * kernel::hil::boundary::CONSOLE_RING_BYTES);
const _: () = assert!(PROTOCOL_RESERVE_BYTES < 8 * MIB);

/// The budget table: the system share per board class.
pub const BUDGET_TABLE: [BudgetRow; 4] =
    [row("Pi Zero 2W", 512, 72), row("Pi 3B+", 1024, 72), row("Pi 4B", 4096, 96), row("Pi 5", 8192, 128)];

/// Chooses the budget row for `model`; a board the table does not name takes the smallest row
/// whose reference RAM is at least `ram` (or the largest row).
pub fn budget_row(model: BoardModel, ram: u64) -> BudgetRow {
    let index = match model {
        BoardModel::PiZero2W | BoardModel::Pi3APlus => 0,
        BoardModel::Pi3B | BoardModel::Pi3BPlus => 1,
        BoardModel::Pi4B => 2,
        BoardModel::Pi5 => 3,
        BoardModel::Unknown(_) => {
            BUDGET_TABLE.iter().position(|row| row.reference_ram >= ram).unwrap_or(BUDGET_TABLE.len() - 1)
        }
    };
    BUDGET_TABLE[index]
}

/// The row for `model`, and the budget it gives the RAM actually detected (a system share at
/// least what that much RAM needs, when a board has more RAM than its row was written for).
pub fn scaled_budget(model: BoardModel, ram: u64) -> (BudgetRow, Budget) {
    let row = budget_row(model, ram);
    (row, Budget::reserving(ram, row.system.max(system_need(ram)), PROTOCOL_RESERVE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::hil::boundary::{BLOCK, MemoryPlan, RegionKind, SEGMENT};

    /// SmolLM2-135M-Instruct (Q4_1), the default model: 93.3 MiB.
    const SMOLLM2_BYTES: u64 = 97_846_560;

    /// The plan of `ram` bytes on `model`, with a kernel image as large as kernel8's.
    fn plan(model: BoardModel, ram: u64) -> MemoryPlan {
        let (_, budget) = scaled_budget(model, ram);
        MemoryPlan::new(ram, budget, 0x30_0000, 7).unwrap()
    }

    /// The budget targets, on every row at its own RAM size and on QEMU's boards:
    /// weights + KV + activations (the arena) ≥ 80% of RAM; with SmolLM2 loaded, the KV cache
    /// can grow to ≥ 400 MiB (boards of 1 GiB and up); the largest model that can load (the
    /// arena less the activations' headroom and one segment of KV) ≥ 60% of RAM.
    #[test]
    fn every_row_meets_the_memory_targets() {
        let boards = [
            (BoardModel::PiZero2W, 512 * MIB),
            (BoardModel::Pi3APlus, 448 * MIB),
            (BoardModel::Pi3B, 960 * MIB),
            (BoardModel::Pi3BPlus, 1024 * MIB),
            (BoardModel::Pi4B, 2048 * MIB),
            (BoardModel::Pi4B, 4096 * MIB),
            (BoardModel::Pi5, 8192 * MIB),
        ];
        for (model, ram) in boards {
            let plan = plan(model, ram);
            let arena = plan.region(RegionKind::Arena).size;
            assert!(arena * 10 >= ram * 8, "{model:?} at {} MiB: arena {} MiB", ram / MIB, arena / MIB);
            let headroom = 8 * MIB;
            let largest_model = arena - headroom - SEGMENT;
            assert!(largest_model * 10 >= ram * 6, "{model:?}: largest model {} MiB", largest_model / MIB);
            if ram >= 960 * MIB {
                let kv = arena - SMOLLM2_BYTES.div_ceil(BLOCK) * BLOCK - headroom;
                assert!(kv >= 400 * MIB, "{model:?}: KV with SmolLM2 {} MiB", kv / MIB);
            }
            assert!(plan.slack() <= 32 * MIB);
            assert_eq!(
                plan.region(RegionKind::Protocol).size,
                PROTOCOL_RESERVE_BYTES.div_ceil(BLOCK) * BLOCK
            );
        }
    }

    #[test]
    fn revision_codes() {
        assert_eq!(BoardModel::from_revision(0xa02082), BoardModel::Pi3B);
        assert_eq!(BoardModel::from_revision(0xa020d3), BoardModel::Pi3BPlus);
        assert_eq!(BoardModel::from_revision(0x9020e0), BoardModel::Pi3APlus);
        assert_eq!(BoardModel::from_revision(0x902120), BoardModel::PiZero2W);
        assert_eq!(BoardModel::from_revision(0xc03111), BoardModel::Pi4B);
        // QEMU raspi4b's revision (2 GiB, revision 1.5).
        assert_eq!(BoardModel::from_revision(0xb03115), BoardModel::Pi4B);
        assert_eq!(BoardModel::Pi4B.soc(), Some(Soc::Bcm2711));
        assert_eq!(BoardModel::PiZero2W.soc(), Some(Soc::Bcm2837));
        assert_eq!(BoardModel::Pi5.soc(), None);
        assert_eq!(BoardModel::from_revision(0x0000_000e), BoardModel::Unknown(0xe));
    }

    #[test]
    fn ram_above_the_hole() {
        assert_eq!(revision_ram(0xa02082), Some(1024 * MIB));
        assert_eq!(revision_ram(0x902120), Some(512 * MIB));
        assert_eq!(revision_ram(0xb03115), Some(2048 * MIB));
        assert_eq!(revision_ram(0xd03114), Some(8192 * MIB));
        assert_eq!(revision_ram(0x0000_000e), None, "old-style codes name no size here");
        // QEMU raspi4b: 960 MiB from the mailbox, 1 GiB more from 1 GiB on.
        assert_eq!(
            ram_map(Soc::Bcm2711, 0xb03115, 960 * MIB),
            RamMap::with_high(960 * MIB, 1 << 30, 1 << 30)
        );
        // A 4 GiB Pi 4 (gpu_mem 76): the firmware's 0x40000000-0xFC000000; 8 GiB stops there too.
        let four = RamMap::with_high(948 * MIB, 1 << 30, 0xBC00_0000);
        assert_eq!(ram_map(Soc::Bcm2711, 0xc03111, 948 * MIB), four);
        assert_eq!(ram_map(Soc::Bcm2711, 0xd03114, 948 * MIB), four);
        assert_eq!(four.total(), 3956 * MIB);
        // 1 GiB Pi 4s and every BCM2837 board: the mailbox's RAM is all there is.
        assert_eq!(ram_map(Soc::Bcm2711, 0xa03111, 948 * MIB), RamMap::contiguous(948 * MIB));
        assert_eq!(ram_map(Soc::Bcm2837, 0xa02082, 960 * MIB), RamMap::contiguous(960 * MIB));
        assert_eq!(ram_map(Soc::Bcm2711, 0x0000_000e, 948 * MIB), RamMap::contiguous(948 * MIB));
        // Every plan over them keeps the fixed regions below the hole.
        for (revision, low) in [(0xb03115, 960 * MIB), (0xc03111, 948 * MIB), (0xd03114, 948 * MIB)] {
            let ram_map = ram_map(Soc::Bcm2711, revision, low);
            let (_, budget) = scaled_budget(BoardModel::Pi4B, ram_map.total());
            let plan = MemoryPlan::across(ram_map, budget, 0x30_0000, 11).unwrap();
            assert!(plan.region(RegionKind::Arena).size * 10 >= ram_map.total() * 9);
        }
    }

    #[test]
    fn qemu_raspi3b_uses_the_pi3_row() {
        let (row, budget) = scaled_budget(BoardModel::Pi3B, 960 * MIB);
        assert_eq!(row.name, "Pi 3B+");
        assert_eq!((budget.llm, budget.protocol, budget.system), (884 * MIB, 4 * MIB, 72 * MIB));
    }

    #[test]
    fn qemu_raspi3ap_uses_the_zero_row() {
        let (row, budget) = scaled_budget(BoardModel::Pi3APlus, 448 * MIB);
        assert_eq!(row.name, "Pi Zero 2W");
        assert_eq!(budget.total(), 448 * MIB);
        assert_eq!((budget.llm, budget.protocol), (372 * MIB, 4 * MIB));
    }

    #[test]
    fn unknown_boards_follow_ram_and_always_fit() {
        assert_eq!(budget_row(BoardModel::Unknown(0), 300 * MIB).name, "Pi Zero 2W");
        assert_eq!(budget_row(BoardModel::Unknown(0), 2048 * MIB).name, "Pi 4B");
        assert_eq!(budget_row(BoardModel::Unknown(0), 16384 * MIB).name, "Pi 5");
        for ram_mib in (128..16384).step_by(62) {
            for model in [BoardModel::Pi3B, BoardModel::Pi4B, BoardModel::Unknown(1)] {
                let (_, budget) = scaled_budget(model, ram_mib * MIB);
                assert_eq!(budget.total(), ram_mib * MIB, "{model:?} at {ram_mib} MiB");
                if ram_mib >= 256 {
                    assert!(
                        MemoryPlan::new(ram_mib * MIB, budget, 0x30_0000, 1).is_ok(),
                        "{model:?} at {ram_mib} MiB"
                    );
                }
            }
        }
    }
}
