//! The ARM generic timer (CNTPCT_EL0 / CNTFRQ_EL0) as a [`kernel::hil::Clock`].
//!
//! Its frequency is what the firmware wrote into CNTFRQ_EL0: 19.2 MHz on a Pi 3, 54 MHz (the
//! crystal) on a Pi 4, 62.5 MHz under QEMU 7.2-10.0's raspi3b and raspi4b. Nothing in the
//! kernel assumes one rate. A CNTFRQ left at 0 (firmware that did not program it) reads as the
//! chip's crystal rate instead ([`frequency_or_crystal`]).

use crate::board::soc::Soc;
use kernel::hil::Clock;

/// The generic timer's frequency: `cntfrq` as the firmware set it, or, when it is 0, the
/// crystal rate of `soc` (the counter's input on both chips).
pub const fn frequency_or_crystal(cntfrq: u64, soc: Soc) -> u64 {
    if cntfrq != 0 { cntfrq } else { soc.crystal_hz() }
}

/// The EL1 physical counter. Needs CNTHCTL_EL2 to allow EL1 access, which boot sets.
#[derive(Debug, Default, Clone, Copy)]
pub struct GenericTimer;

impl Clock for GenericTimer {
    fn ticks(&self) -> u64 {
        #[cfg(target_arch = "aarch64")]
        {
            use aarch64_cpu::{asm::barrier, registers::CNTPCT_EL0};
            use tock_registers::interfaces::Readable;
            // An isb stops the counter read being hoisted above earlier instructions.
            barrier::isb(barrier::SY);
            CNTPCT_EL0.get()
        }
        #[cfg(not(target_arch = "aarch64"))]
        unreachable!("the generic timer exists only on aarch64")
    }

    fn frequency_hz(&self) -> u64 {
        #[cfg(target_arch = "aarch64")]
        {
            use aarch64_cpu::registers::CNTFRQ_EL0;
            use tock_registers::interfaces::Readable;
            frequency_or_crystal(CNTFRQ_EL0.get(), Soc::current())
        }
        #[cfg(not(target_arch = "aarch64"))]
        unreachable!("the generic timer exists only on aarch64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprogrammed_frequency_reads_as_the_crystal() {
        assert_eq!(frequency_or_crystal(62_500_000, Soc::Bcm2711), 62_500_000);
        assert_eq!(frequency_or_crystal(0, Soc::Bcm2711), 54_000_000);
        assert_eq!(frequency_or_crystal(0, Soc::Bcm2837), 19_200_000);
    }
}
