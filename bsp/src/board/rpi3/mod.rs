//! Raspberry Pi 3 family board (BCM2837): QEMU raspi3b/raspi3ap, real 3B/3B+/3A+, Zero 2W. Its
//! MMIO windows are `soc::Soc::Bcm2837.device_mappings()`; the PL011, mailbox, GPIO and DMA
//! drivers here serve the BCM2711 too, at its addresses.

pub mod dma;
pub mod gpio;
pub mod interrupt_controller;
pub mod local_interrupts;
pub mod mailbox;
pub mod memory_map;
pub mod pl011_uart;
pub mod rng;
