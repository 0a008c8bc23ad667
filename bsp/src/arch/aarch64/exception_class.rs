//! Decoding of the exception syndrome register (ESR_EL1) into words, for fault diagnostics.

#![forbid(unsafe_code)]

use core::fmt;

/// The fields of an ESR value that a diagnostic needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syndrome(pub u64);

/// A coarse classification of a synchronous exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A data access faulted (load, store, or stack push).
    DataAbort,
    /// An instruction fetch faulted.
    InstructionAbort,
    /// Anything else (undefined instruction, SVC, breakpoint, ...).
    Other,
}

impl Syndrome {
    /// The exception class, ESR bits 31:26.
    pub fn class(self) -> u8 {
        ((self.0 >> 26) & 0x3F) as u8
    }

    /// The instruction-specific syndrome, ESR bits 24:0.
    pub fn iss(self) -> u32 {
        (self.0 & 0x1FF_FFFF) as u32
    }

    /// The exception class in words.
    pub fn class_name(self) -> &'static str {
        match self.class() {
            0x00 => "unknown reason (undefined instruction)",
            0x01 => "trapped WFI/WFE",
            0x07 => "access to SIMD/floating point (trapped)",
            0x0E => "illegal execution state",
            0x15 => "SVC instruction (AArch64)",
            0x18 => "trapped MSR/MRS/system instruction",
            0x20 => "instruction abort from a lower exception level",
            0x21 => "instruction abort (same exception level)",
            0x22 => "PC alignment fault",
            0x24 => "data abort from a lower exception level",
            0x25 => "data abort (same exception level)",
            0x26 => "SP alignment fault",
            0x2C => "trapped floating-point exception",
            0x2F => "SError interrupt",
            0x30 | 0x31 => "breakpoint",
            0x32 | 0x33 => "software step",
            0x34 | 0x35 => "watchpoint",
            0x3C => "BRK instruction (AArch64)",
            _ => "unrecognised exception class",
        }
    }

    /// Data abort, instruction abort, or other.
    pub fn kind(self) -> FaultKind {
        match self.class() {
            0x24 | 0x25 => FaultKind::DataAbort,
            0x20 | 0x21 => FaultKind::InstructionAbort,
            _ => FaultKind::Other,
        }
    }

    /// For aborts: the fault status code (DFSC/IFSC) in words, e.g. "permission fault, level 3".
    pub fn fault_status(self) -> Option<FaultStatus> {
        (self.kind() != FaultKind::Other).then(|| FaultStatus((self.iss() & 0x3F) as u8))
    }

    /// For data aborts: whether the access was a write (ISS bit 6, WnR).
    pub fn is_write(self) -> bool {
        self.kind() == FaultKind::DataAbort && self.iss() & (1 << 6) != 0
    }
}

/// A data or instruction fault status code (the low six bits of the ISS of an abort).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStatus(pub u8);

impl FaultStatus {
    /// The translation table level the fault happened at, where the code names one.
    pub fn level(self) -> Option<u8> {
        matches!(self.0 >> 2, 0b0001..=0b0011).then_some(self.0 & 0b11)
    }

    /// The kind of fault, without the level.
    pub fn name(self) -> &'static str {
        match self.0 >> 2 {
            0b0000 => "address size fault",
            0b0001 => "translation fault",
            0b0010 => "access flag fault",
            0b0011 => "permission fault",
            _ => match self.0 {
                0b01_0000 => "synchronous external abort",
                0b10_0001 => "alignment fault",
                0b11_0000 => "TLB conflict abort",
                _ => "other fault",
            },
        }
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level() {
            Some(level) => write!(formatter, "{}, level {level}", self.name()),
            None => write!(formatter, "{}", self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_observed_null_read() {
        // A null read with page 0 unmapped, as observed under QEMU: ESR 0x96000007.
        let syndrome = Syndrome(0x9600_0007);
        assert_eq!(syndrome.kind(), FaultKind::DataAbort);
        assert_eq!(syndrome.class_name(), "data abort (same exception level)");
        assert!(!syndrome.is_write());
        let status = syndrome.fault_status().unwrap();
        assert_eq!(status.level(), Some(3));
        assert_eq!(format!("{status}"), "translation fault, level 3");
    }

    #[test]
    fn decodes_write_permission_and_exec_faults() {
        let write_to_text = Syndrome(0x9600_004F);
        assert!(write_to_text.is_write());
        assert_eq!(format!("{}", write_to_text.fault_status().unwrap()), "permission fault, level 3");
        let execute_data = Syndrome(0x8600_000F);
        assert_eq!(execute_data.kind(), FaultKind::InstructionAbort);
        assert_eq!(execute_data.fault_status().unwrap().name(), "permission fault");
        let undefined = Syndrome(0x0200_0000);
        assert_eq!(undefined.kind(), FaultKind::Other);
        assert_eq!(undefined.fault_status(), None);
        assert_eq!(format!("{}", FaultStatus(0b10_0001)), "alignment fault");
    }
}
