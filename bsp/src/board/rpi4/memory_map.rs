//! Physical memory map of the BCM2711 (Raspberry Pi 4 Model B) as the ARM cores see it in the
//! firmware's default low-peripheral mode (QEMU raspi4b maps the same addresses).

use crate::board::soc::{GicAddresses, SocMap};

/// Start of the main peripheral window (VideoCore bus address 0x7E000000).
pub const PERIPHERALS: usize = 0xFE00_0000;
/// Size mapped for it: up to the ARM local block.
pub const PERIPHERALS_SIZE: usize = 0x0180_0000;
/// BCM2835-compatible DMA engine, channels 0-14 (the "legacy" channels 0-6 and lite 7-10).
pub const DMA: usize = PERIPHERALS + 0x7000;
/// The legacy BCM2835 interrupt controller (the GIC-400 takes over with `enable_gic=1`, the
/// firmware's default on the Pi 4).
pub const INTERRUPT_CONTROLLER: usize = PERIPHERALS + 0xB200;
/// VideoCore mailbox 0.
pub const MAILBOX: usize = PERIPHERALS + 0xB880;
/// Hardware random number generator (an RNG200).
pub const RNG: usize = PERIPHERALS + 0x10_4000;
/// GPIO controller.
pub const GPIO: usize = PERIPHERALS + 0x20_0000;
/// PL011 UART0.
pub const PL011_UART: usize = PERIPHERALS + 0x20_1000;
/// The Arasan SDHCI ("EMMC"), on the Pi 4 wired to the WiFi chip; QEMU raspi4b puts the card
/// here (docs/BOOT.md).
pub const EMMC: usize = PERIPHERALS + 0x30_0000;
/// EMMC2, the SDHCI wired to the Pi 4's card slot.
pub const EMMC2: usize = PERIPHERALS + 0x34_0000;
/// The ARM local block (core timers, local routing, the GIC-400).
pub const LOCAL_PERIPHERALS: usize = 0xFF80_0000;
/// Size mapped for the local block (one 2 MiB block, holding the GIC at +0x40000).
pub const LOCAL_PERIPHERALS_SIZE: usize = 0x20_0000;
/// GIC-400 distributor.
pub const GIC_DISTRIBUTOR: usize = LOCAL_PERIPHERALS + 0x4_1000;
/// GIC-400 CPU interface.
pub const GIC_CPU_INTERFACE: usize = LOCAL_PERIPHERALS + 0x4_2000;
/// The generic timer's frequency the Pi 4 firmware programs: 54 MHz, the crystal. (QEMU 10.0's
/// raspi4b leaves its CNTFRQ at QEMU's 62.5 MHz; docs/QEMU.md.)
pub const TIMER_HZ: u64 = 54_000_000;

/// Where RAM resumes above the VideoCore's share (which ends the RAM the mailbox reports, just
/// below 1 GiB).
pub const HIGH_RAM_BASE: u64 = 0x4000_0000;
/// Where that RAM ends at the latest: the low-peripheral mode's windows start at 0xFC000000 (a
/// 4 GiB board's firmware lists 0x40000000-0xFC000000; RAM above 4 GiB is beyond Tessera's
/// 32-bit address space).
pub const HIGH_RAM_END: u64 = 0xFC00_0000;

/// The BCM2711's blocks, for code that serves both chips.
pub const MAP: SocMap = SocMap {
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
    gic: Some(GicAddresses { distributor: GIC_DISTRIBUTOR, cpu_interface: GIC_CPU_INTERFACE }),
};
