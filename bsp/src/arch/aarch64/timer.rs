//! The ARM generic timer (CNTPCT_EL0 / CNTFRQ_EL0) as a [`kernel::hil::Clock`].

use kernel::hil::Clock;

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
            CNTFRQ_EL0.get()
        }
        #[cfg(not(target_arch = "aarch64"))]
        unreachable!("the generic timer exists only on aarch64")
    }
}
