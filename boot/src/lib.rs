//! Tessera boot: the entry point and the place where everything is wired together.
//!
//! `_start` parks secondaries, drops to EL1, turns FP/SIMD on, sets per-core stacks with guard
//! pages and the exception vectors, and zeroes BSS; [`premmu`] probes the board, plans memory,
//! builds the translation tables and wakes the secondaries, with no lock and no atomic, and
//! turns each core's MMU on; [`start`] finishes on core 0 and hands over to the binary. A binary
//! (the `kernel8` image or a QEMU test kernel) supplies its main function and configuration with
//! [`entry!`].

#![no_std]

extern crate alloc;

pub mod console;
pub mod cpus;
mod entry;
pub mod exception;
mod handoff;
pub mod heap;
mod interrupts;
pub mod irq;
pub mod memory;
mod panic;
pub mod premmu;
pub mod start;
pub mod storage;

pub use kernel::boot_info::BootInfo;

/// Boot-time choices a binary makes.
#[derive(Debug, Clone, Copy)]
pub struct BootConfig {
    /// Place the tensor regions with this seed instead of one from the hardware RNG.
    pub fixed_seed: Option<u64>,
    /// Exit QEMU through semihosting on panic or fault (test kernels). Without `-semihosting`
    /// QEMU would hang on the exit call, so `kernel8` leaves it off.
    pub semihosting: bool,
}

/// Declares the binary's main function and boot configuration.
///
/// ```ignore
/// boot::entry!(main, boot::BootConfig { fixed_seed: None, semihosting: false });
/// fn main(info: &'static boot::BootInfo) -> ! { ... }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path, $config:expr) => {
        /// The boot configuration of this binary.
        #[unsafe(no_mangle)]
        pub static __TESSERA_CONFIG: $crate::BootConfig = $config;

        /// Called by boot once the MMU is on and every core has reported in.
        #[unsafe(no_mangle)]
        pub fn __tessera_main(info: &'static $crate::BootInfo) -> ! {
            $main(info)
        }
    };
}
