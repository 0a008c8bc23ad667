//! Raspberry Pi 3 family board (BCM2837): QEMU raspi3b/raspi3ap, real 3B/3B+/3A+, Zero 2W.

pub mod dma;
pub mod gpio;
pub mod interrupt_controller;
pub mod local_interrupts;
pub mod mailbox;
pub mod memory_map;
pub mod pl011_uart;
pub mod rng;

use crate::arch::aarch64::translation::{Access, Mapping, MemoryType, PageSize};

/// The board's MMIO windows, mapped as device memory, never executable.
pub const DEVICE_MAPPINGS: [Mapping; 2] = [
    Mapping {
        name: "peripherals",
        base: memory_map::PERIPHERALS as u64,
        size: memory_map::PERIPHERALS_SIZE as u64,
        memory: MemoryType::Device,
        access: Access::ReadWrite,
        granule: PageSize::Size2MiB,
    },
    Mapping {
        name: "local peripherals",
        base: memory_map::LOCAL_PERIPHERALS as u64,
        size: memory_map::LOCAL_PERIPHERALS_SIZE as u64,
        memory: MemoryType::Device,
        access: Access::ReadWrite,
        granule: PageSize::Size2MiB,
    },
];
