//! Raspberry Pi models and their memory budgets: which row of the budget table a board uses.

#![forbid(unsafe_code)]

use kernel::mm::layout::{Budget, MIB};

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

/// One row of the budget table: the budget written for a reference RAM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetRow {
    /// The board class the row was written for.
    pub name: &'static str,
    /// The RAM size the row's figures are for.
    pub reference_ram: u64,
    /// The split at that RAM size.
    pub budget: Budget,
}

const fn row(name: &'static str, ram_mib: u64, llm_mib: u64, protocol_mib: u64) -> BudgetRow {
    BudgetRow {
        name,
        reference_ram: ram_mib * MIB,
        budget: Budget {
            llm: llm_mib * MIB,
            protocol: protocol_mib * MIB,
            system: (ram_mib - llm_mib - protocol_mib) * MIB,
        },
    }
}

/// The budget table: LLM budget, protocol reserve and system overhead per board class.
pub const BUDGET_TABLE: [BudgetRow; 4] = [
    row("Pi Zero 2W", 512, 350, 64),
    row("Pi 3B+", 1024, 600, 128),
    row("Pi 4B", 4096, 2560, 256),
    row("Pi 5", 8192, 6144, 512),
];

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

/// The row for `model`, scaled to the RAM actually detected.
pub fn scaled_budget(model: BoardModel, ram: u64) -> (BudgetRow, Budget) {
    let row = budget_row(model, ram);
    (row, row.budget.scaled_to(row.reference_ram, ram))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_their_ram() {
        for row in BUDGET_TABLE {
            assert_eq!(row.budget.total(), row.reference_ram, "{}", row.name);
        }
        assert_eq!(BUDGET_TABLE[1].budget.system, 296 * MIB);
    }

    #[test]
    fn revision_codes() {
        assert_eq!(BoardModel::from_revision(0xa02082), BoardModel::Pi3B);
        assert_eq!(BoardModel::from_revision(0xa020d3), BoardModel::Pi3BPlus);
        assert_eq!(BoardModel::from_revision(0x9020e0), BoardModel::Pi3APlus);
        assert_eq!(BoardModel::from_revision(0x902120), BoardModel::PiZero2W);
        assert_eq!(BoardModel::from_revision(0xc03111), BoardModel::Pi4B);
        assert_eq!(BoardModel::from_revision(0x0000_000e), BoardModel::Unknown(0xe));
    }

    #[test]
    fn qemu_raspi3b_uses_pi3_row_scaled_to_960_mib() {
        let (row, budget) = scaled_budget(BoardModel::Pi3B, 960 * MIB);
        assert_eq!(row.name, "Pi 3B+");
        assert_eq!((budget.llm, budget.protocol, budget.system), (562 * MIB, 120 * MIB, 278 * MIB));
    }

    #[test]
    fn qemu_raspi3ap_uses_zero_row_scaled_to_448_mib() {
        let (row, budget) = scaled_budget(BoardModel::Pi3APlus, 448 * MIB);
        assert_eq!(row.name, "Pi Zero 2W");
        assert_eq!(budget.total(), 448 * MIB);
        assert_eq!((budget.llm, budget.protocol), (306 * MIB, 56 * MIB));
    }

    #[test]
    fn unknown_boards_follow_ram_and_always_fit() {
        assert_eq!(budget_row(BoardModel::Unknown(0), 300 * MIB).name, "Pi Zero 2W");
        assert_eq!(budget_row(BoardModel::Unknown(0), 2048 * MIB).name, "Pi 4B");
        assert_eq!(budget_row(BoardModel::Unknown(0), 16384 * MIB).name, "Pi 5");
        for ram_mib in (64..16384).step_by(62) {
            for model in [BoardModel::Pi3B, BoardModel::Pi4B, BoardModel::Unknown(1)] {
                let (_, budget) = scaled_budget(model, ram_mib * MIB);
                assert_eq!(budget.total(), ram_mib * MIB, "{model:?} at {ram_mib} MiB");
            }
        }
    }
}
