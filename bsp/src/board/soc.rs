//! Which system-on-chip the kernel runs on, and where its blocks are: the BCM2837 (Pi 3 family,
//! Zero 2 W; QEMU raspi3b/raspi3ap) or the BCM2711 (Pi 4; QEMU raspi4b).
//!
//! One `kernel8.img` serves both. The pre-MMU stage tells them apart before it touches any
//! peripheral, from the core type in MIDR_EL1 alone: the BCM2837 has Cortex-A53 cores, the
//! BCM2711 Cortex-A72 cores. Reading MIDR needs no memory access, so every core answers the
//! question for itself at any time ([`Soc::current`]), with no shared state and no atomics.

#![forbid(unsafe_code)]

use crate::arch::aarch64::translation::{Access, Mapping, MemoryType, PageSize};

/// MIDR_EL1 part number of the Cortex-A53 (BCM2837).
pub const PART_CORTEX_A53: u64 = 0xD03;
/// MIDR_EL1 part number of the Cortex-A72 (BCM2711).
pub const PART_CORTEX_A72: u64 = 0xD08;
/// MIDR_EL1 implementer code of Arm.
const IMPLEMENTER_ARM: u64 = 0x41;

/// A supported system-on-chip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Soc {
    /// BCM2837 (and the Zero 2 W's RP3A0): Cortex-A53, peripherals at 0x3F000000, the BCM2835
    /// interrupt controller and the BCM2836 local block (core mailboxes) at 0x40000000.
    Bcm2837,
    /// BCM2711: Cortex-A72, peripherals at 0xFE000000, the ARM local block at 0xFF800000 with
    /// a GIC-400 in it.
    Bcm2711,
}

/// Where a chip's blocks are, as the ARM cores see them (identity-mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocMap {
    /// Start of the main peripheral window.
    pub peripherals: usize,
    /// Size of the main peripheral window (mapped as device memory).
    pub peripherals_size: usize,
    /// Start of the ARM local block.
    pub local_peripherals: usize,
    /// Size mapped for the local block.
    pub local_peripherals_size: usize,
    /// VideoCore mailbox 0.
    pub mailbox: usize,
    /// GPIO controller.
    pub gpio: usize,
    /// PL011 UART0.
    pub uart: usize,
    /// Hardware random number generator.
    pub rng: usize,
    /// BCM2835 DMA engine, channels 0-14.
    pub dma: usize,
    /// BCM2835 (legacy) interrupt controller.
    pub interrupt_controller: usize,
    /// GIC-400 distributor and CPU interface, where the chip has one.
    pub gic: Option<GicAddresses>,
}

/// The two GIC-400 register blocks Tessera uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicAddresses {
    /// The distributor (GICD).
    pub distributor: usize,
    /// The CPU interface (GICC).
    pub cpu_interface: usize,
}

impl Soc {
    /// The chip whose cores have this MIDR_EL1 value: Cortex-A72 cores mean a BCM2711; any
    /// other core (the Cortex-A53 of every Pi 3 and the Zero 2 W) a BCM2837.
    pub const fn from_main_id(main_id: u64) -> Soc {
        let implementer = (main_id >> 24) & 0xFF;
        let part = (main_id >> 4) & 0xFFF;
        if implementer == IMPLEMENTER_ARM && part == PART_CORTEX_A72 { Soc::Bcm2711 } else { Soc::Bcm2837 }
    }

    /// The chip this code runs on (from this core's MIDR_EL1; a BCM2837 on the host).
    pub fn current() -> Soc {
        Soc::from_main_id(crate::arch::aarch64::cpu::main_id())
    }

    /// The chip's name.
    pub const fn name(self) -> &'static str {
        match self {
            Soc::Bcm2837 => "BCM2837",
            Soc::Bcm2711 => "BCM2711",
        }
    }

    /// The crystal that drives the generic timer: 19.2 MHz on the BCM2837, 54 MHz on the
    /// BCM2711 (the rate their firmware programs into CNTFRQ_EL0).
    pub const fn crystal_hz(self) -> u64 {
        match self {
            Soc::Bcm2837 => 19_200_000,
            Soc::Bcm2711 => super::rpi4::memory_map::TIMER_HZ,
        }
    }

    /// Where the chip may have RAM above the hole that ends the mailbox's ARM memory: `(base,
    /// end)`, on the BCM2711 only (every BCM2837 board has at most 1 GiB, all below the hole).
    pub const fn high_ram_window(self) -> Option<(u64, u64)> {
        match self {
            Soc::Bcm2837 => None,
            Soc::Bcm2711 => {
                Some((super::rpi4::memory_map::HIGH_RAM_BASE, super::rpi4::memory_map::HIGH_RAM_END))
            }
        }
    }

    /// Where the chip's blocks are.
    pub const fn map(self) -> &'static SocMap {
        match self {
            Soc::Bcm2837 => &super::rpi3::memory_map::MAP,
            Soc::Bcm2711 => &super::rpi4::memory_map::MAP,
        }
    }

    /// The chip's MMIO windows, mapped as device memory, never executable.
    pub const fn device_mappings(self) -> [Mapping; 2] {
        let map = self.map();
        [
            device_mapping("peripherals", map.peripherals, map.peripherals_size),
            device_mapping("local peripherals", map.local_peripherals, map.local_peripherals_size),
        ]
    }
}

const fn device_mapping(name: &'static str, base: usize, size: usize) -> Mapping {
    Mapping {
        name,
        base: base as u64,
        physical: base as u64,
        size: size as u64,
        memory: MemoryType::Device,
        access: Access::ReadWrite,
        granule: PageSize::Size2MiB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_name_their_chip() {
        // QEMU's cortex-a53 (raspi3b) and cortex-a72 (raspi4b), and a Pi 3B+'s r0p4.
        assert_eq!(Soc::from_main_id(0x410F_D034), Soc::Bcm2837);
        assert_eq!(Soc::from_main_id(0x410F_D083), Soc::Bcm2711);
        assert_eq!(Soc::from_main_id(0x410F_D080), Soc::Bcm2711);
        // Another implementer's part 0xD08 is no Cortex-A72.
        assert_eq!(Soc::from_main_id(0x420F_D083), Soc::Bcm2837);
        assert_eq!(Soc::current(), Soc::Bcm2837, "the host stands in for a BCM2837");
    }

    #[test]
    fn windows_are_block_aligned_and_hold_their_blocks() {
        for soc in [Soc::Bcm2837, Soc::Bcm2711] {
            let map = soc.map();
            let [peripherals, local] = soc.device_mappings();
            for window in [peripherals, local] {
                assert_eq!(window.base % (2 << 20), 0, "{soc:?} {}", window.name);
                assert_eq!(window.size % (2 << 20), 0, "{soc:?} {}", window.name);
                assert!(window.base + window.size <= 1 << 32);
            }
            let inside = |address: usize, window: &Mapping| {
                (window.base..window.base + window.size).contains(&(address as u64))
            };
            for block in [map.mailbox, map.gpio, map.uart, map.rng, map.dma, map.interrupt_controller] {
                assert!(inside(block, &peripherals), "{soc:?} {block:#x}");
            }
            if let Some(gic) = map.gic {
                assert!(inside(gic.distributor, &local) && inside(gic.cpu_interface, &local));
            }
        }
        assert_eq!(Soc::Bcm2711.map().uart, 0xFE20_1000);
        assert_eq!(
            Soc::Bcm2711.map().gic,
            Some(GicAddresses { distributor: 0xFF84_1000, cpu_interface: 0xFF84_2000 })
        );
        assert_eq!(Soc::Bcm2837.map().gic, None);
    }
}
