//! Raspberry Pi 4 Model B board (BCM2711): its memory map and the GIC-400. The blocks it shares
//! with the BCM2837 (PL011, mailbox, GPIO, SDHCI, DMA) use the `rpi3` and `board` drivers at
//! the addresses of [`memory_map`].

pub mod gic;
pub mod memory_map;
pub mod rng200;
