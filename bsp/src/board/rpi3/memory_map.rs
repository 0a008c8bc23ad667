//! Physical memory map of the BCM2837 (Raspberry Pi 3, Zero 2W) as the ARM cores see it.

/// Start of the peripheral window (the VideoCore bus address 0x7E000000 seen from the ARM).
pub const PERIPHERALS: usize = 0x3F00_0000;
/// Size of the peripheral window.
pub const PERIPHERALS_SIZE: usize = 0x0100_0000;
/// System timer.
pub const SYSTEM_TIMER: usize = PERIPHERALS + 0x3000;
/// BCM2835 DMA engine, channels 0-14 (channel 15 is at `PERIPHERALS + 0xE0_5000`).
pub const DMA: usize = PERIPHERALS + 0x7000;
/// BCM2835 interrupt controller.
pub const INTERRUPT_CONTROLLER: usize = PERIPHERALS + 0xB200;
/// VideoCore mailbox 0.
pub const MAILBOX: usize = PERIPHERALS + 0xB880;
/// Hardware random number generator.
pub const RNG: usize = PERIPHERALS + 0x10_4000;
/// GPIO controller.
pub const GPIO: usize = PERIPHERALS + 0x20_0000;
/// PL011 UART0.
pub const PL011_UART: usize = PERIPHERALS + 0x20_1000;
/// Arasan SDHCI (EMMC) controller.
pub const EMMC: usize = PERIPHERALS + 0x30_0000;
/// BCM2836 per-core local peripherals (core timers, mailboxes, interrupt routing).
pub const LOCAL_PERIPHERALS: usize = 0x4000_0000;
/// Size mapped for the local peripherals (one 2 MiB block).
pub const LOCAL_PERIPHERALS_SIZE: usize = 0x20_0000;
/// The firmware's spin table: core N (1..=3) waits for an entry address at `SPIN_TABLE + 8 * N`.
pub const SPIN_TABLE: usize = 0xD8;
/// ARM physical address to VideoCore bus address, uncached alias (for DMA and mailbox).
pub const BUS_UNCACHED: u32 = 0xC000_0000;

/// The BCM2837's blocks, for code that serves both chips (`super::super::soc`).
pub const MAP: crate::board::soc::SocMap = crate::board::soc::SocMap {
    peripherals: PERIPHERALS,
    peripherals_size: PERIPHERALS_SIZE,
    local_peripherals: LOCAL_PERIPHERALS,
    local_peripherals_size: LOCAL_PERIPHERALS_SIZE,
    mailbox: MAILBOX,
    gpio: GPIO,
    uart: PL011_UART,
    rng: RNG,
    dma: DMA,
    interrupt_controller: INTERRUPT_CONTROLLER,
    gic: None,
};
