//! Fault diagnostics: a CPU exception explained in words, with its registers.

#![forbid(unsafe_code)]

use super::{
    exception_class::{FaultKind, Syndrome},
    kernel_map::{KernelImage, StackPart},
};
use core::fmt;

/// Which of the four vector kinds an exception came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKind {
    /// Synchronous: an instruction faulted.
    Synchronous,
    /// IRQ.
    Irq,
    /// FIQ.
    Fiq,
    /// System error.
    SError,
}

impl VectorKind {
    /// Decodes the low two bits of a vector index.
    pub fn from_index(index: u64) -> VectorKind {
        match index & 3 {
            0 => VectorKind::Synchronous,
            1 => VectorKind::Irq,
            2 => VectorKind::Fiq,
            _ => VectorKind::SError,
        }
    }
}

/// What the handler knows about a fault.
#[derive(Clone, Copy, Debug)]
pub struct FaultReport<'a> {
    /// The core that faulted.
    pub core: usize,
    /// The vector it came through.
    pub vector: VectorKind,
    /// ESR_EL1.
    pub syndrome: Syndrome,
    /// FAR_EL1: the faulting data address (aborts only).
    pub fault_address: u64,
    /// ELR_EL1: the faulting instruction.
    pub return_address: u64,
    /// SPSR_EL1: the interrupted state.
    pub saved_state: u64,
    /// x0 to x30.
    pub registers: &'a [u64; 31],
    /// The kernel image, to name stacks and sections.
    pub image: &'a KernelImage,
}

/// The one-line reason for a fault, as specific as the facts allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnosis {
    /// A read or write near address 0.
    NullDereference,
    /// A core ran off the bottom of a stack into its guard page.
    StackOverflow {
        /// The core whose stack it is.
        core: usize,
        /// Which stack.
        exception_stack: bool,
    },
    /// A write to read-only kernel text.
    WriteToText,
    /// An attempt to execute memory that is not executable.
    ExecuteNever,
    /// Anything else.
    Other,
}

impl FaultReport<'_> {
    /// Names the fault as precisely as possible.
    pub fn diagnosis(&self) -> Diagnosis {
        let Some(status) = self.syndrome.fault_status() else { return Diagnosis::Other };
        let translation = status.name() == "translation fault";
        let permission = status.name() == "permission fault";
        match self.syndrome.kind() {
            FaultKind::DataAbort => {
                if let Some((core, part)) = self.image.stack_part(self.fault_address)
                    && translation
                    && matches!(part, StackPart::ThreadGuard | StackPart::ExceptionGuard)
                {
                    return Diagnosis::StackOverflow {
                        core,
                        exception_stack: part == StackPart::ExceptionGuard,
                    };
                }
                if translation && self.fault_address < 4096 {
                    Diagnosis::NullDereference
                } else if permission
                    && self.syndrome.is_write()
                    && self.image.text.contains(&self.fault_address)
                {
                    Diagnosis::WriteToText
                } else {
                    Diagnosis::Other
                }
            }
            FaultKind::InstructionAbort if permission => Diagnosis::ExecuteNever,
            _ => Diagnosis::Other,
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnosis::NullDereference => write!(formatter, "null pointer dereference"),
            Diagnosis::StackOverflow { core, exception_stack } => write!(
                formatter,
                "stack overflow: core {core}'s {} stack ran into its guard page",
                if *exception_stack { "exception" } else { "thread" }
            ),
            Diagnosis::WriteToText => write!(formatter, "write to kernel text, which is read-only (W^X)"),
            Diagnosis::ExecuteNever => write!(formatter, "execution of non-executable memory (W^X)"),
            Diagnosis::Other => write!(formatter, "unexpected exception"),
        }
    }
}

impl fmt::Display for FaultReport<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "\r\n*** CPU exception on core {}: {}", self.core, self.diagnosis())?;
        write!(formatter, "    class:  ")?;
        match self.vector {
            VectorKind::Synchronous => write!(formatter, "{}", self.syndrome.class_name())?,
            VectorKind::Irq => write!(formatter, "unexpected IRQ")?,
            VectorKind::Fiq => write!(formatter, "unexpected FIQ")?,
            VectorKind::SError => write!(formatter, "SError (asynchronous external abort)")?,
        }
        if let Some(status) = self.syndrome.fault_status() {
            let access = match self.syndrome.kind() {
                FaultKind::DataAbort if self.syndrome.is_write() => "write to",
                FaultKind::DataAbort => "read of",
                _ => "fetch from",
            };
            write!(formatter, ", {status} on {access} {:#x}", self.fault_address)?;
        }
        writeln!(formatter)?;
        writeln!(
            formatter,
            "    ESR {:#010x}  FAR {:#018x}  ELR {:#018x}  SPSR {:#010x}",
            self.syndrome.0, self.fault_address, self.return_address, self.saved_state
        )?;
        for (row, chunk) in self.registers.chunks(4).enumerate() {
            write!(formatter, "   ")?;
            for (column, value) in chunk.iter().enumerate() {
                write!(formatter, " x{:<2} {value:#018x}", row * 4 + column)?;
            }
            writeln!(formatter)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> KernelImage {
        KernelImage {
            text: 0x8_0000..0x9_0000,
            rodata: 0x9_0000..0x9_4000,
            data: 0x9_4000..0xA_0000,
            stacks: 0xA_0000,
        }
    }

    fn report<'a>(image: &'a KernelImage, registers: &'a [u64; 31], esr: u64, far: u64) -> FaultReport<'a> {
        FaultReport {
            core: 1,
            vector: VectorKind::Synchronous,
            syndrome: Syndrome(esr),
            fault_address: far,
            return_address: 0x8_1000,
            saved_state: 0x3C4,
            registers,
            image,
        }
    }

    #[test]
    fn diagnoses_each_expected_fault() {
        let image = image();
        let registers = [7; 31];
        assert_eq!(report(&image, &registers, 0x9600_0007, 0).diagnosis(), Diagnosis::NullDereference);
        assert_eq!(report(&image, &registers, 0x9600_004F, 0x8_0400).diagnosis(), Diagnosis::WriteToText);
        assert_eq!(report(&image, &registers, 0x8600_000F, 0x9_5000).diagnosis(), Diagnosis::ExecuteNever);
        let guard = image.thread_stack_top(2) - 256 * 1024 - 16;
        assert_eq!(
            report(&image, &registers, 0x9600_0047, guard).diagnosis(),
            Diagnosis::StackOverflow { core: 2, exception_stack: false }
        );
        assert_eq!(report(&image, &registers, 0x0200_0000, 0).diagnosis(), Diagnosis::Other);
    }

    #[test]
    fn report_text_has_registers_and_reason() {
        let image = image();
        let registers = core::array::from_fn(|index| index as u64);
        let text = report(&image, &registers, 0x9600_0007, 0).to_string();
        assert!(text.contains("core 1: null pointer dereference"), "{text}");
        assert!(
            text.contains("data abort (same exception level), translation fault, level 3 on read of 0x0")
        );
        assert!(text.contains("ESR 0x96000007"));
        assert!(text.contains("x30 0x000000000000001e"));
    }
}
