//! The BCM2711's GIC-400 (GICv2): the distributor routes the PL011's interrupt to core 0, and
//! software-generated interrupts (SGIs) are the cores' doorbells.
//!
//! Only what Tessera needs is driven: enabling the distributor and each core's CPU interface,
//! one shared peripheral interrupt (the PL011, interrupt ID 153: VideoCore IRQ 57 at SPI 121),
//! raising an SGI on another core, and acknowledging what is pending. The GIC may or may not
//! implement the security extensions (a real Pi 4's does, and its firmware stub leaves every
//! interrupt in group 1 for the non-secure world; QEMU raspi4b's does not): the bits used here
//! mean "enable" in both views.

use crate::mmio::Mmio;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_structs! {
    /// The distributor (GICD), the registers Tessera uses.
    #[expect(non_snake_case, reason = "fields carry the register names of the GIC architecture, in upper case")]
    pub DistributorRegisters {
        (0x000 => CTLR: ReadWrite<u32>),
        (0x004 => _identification),
        (0x100 => ISENABLER: [ReadWrite<u32>; 32]),
        (0x180 => ICENABLER: [ReadWrite<u32>; 32]),
        (0x200 => _pending),
        (0x400 => IPRIORITYR: [ReadWrite<u8>; 1024]),
        (0x800 => ITARGETSR: [ReadWrite<u8>; 1024]),
        (0xC00 => ICFGR: [ReadWrite<u32>; 64]),
        (0xD00 => _reserved),
        (0xF00 => SGIR: WriteOnly<u32>),
        (0xF04 => @END),
    }
}

register_structs! {
    /// A core's CPU interface (GICC; each core sees its own at the same address).
    #[expect(non_snake_case, reason = "fields carry the register names of the GIC architecture, in upper case")]
    pub CpuInterfaceRegisters {
        (0x00 => CTLR: ReadWrite<u32>),
        (0x04 => PMR: ReadWrite<u32>),
        (0x08 => _binary_point),
        (0x0C => IAR: ReadOnly<u32>),
        (0x10 => EOIR: WriteOnly<u32>),
        (0x14 => @END),
    }
}

/// The PL011 UART0's interrupt ID (SPI 121).
pub const UART_INTERRUPT: u32 = 153;
/// Interrupt IDs of this value and above are special ("spurious": nothing is pending).
pub const SPURIOUS: u32 = 1020;
/// The number of SGI IDs (0-15).
pub const SGI_COUNT: u32 = 16;
/// Priority given to every interrupt Tessera enables (the lower, the more urgent; one level).
const PRIORITY: u8 = 0xA0;
/// Priority mask: every priority above the lowest is signalled.
const PRIORITY_MASK: u32 = 0xFF;

/// An acknowledged interrupt: its ID and, for an SGI, the core that raised it. It must be
/// passed back to [`Gic400::end`] once handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acknowledged(u32);

impl Acknowledged {
    /// The interrupt ID (0-15 SGIs, 16-31 PPIs, 32 and up SPIs).
    pub fn id(self) -> u32 {
        self.0 & 0x3FF
    }

    /// Whether this is a software-generated interrupt.
    pub fn is_sgi(self) -> bool {
        self.id() < SGI_COUNT
    }
}

/// The GIC-400.
pub struct Gic400 {
    distributor: Mmio<DistributorRegisters>,
    cpu_interface: Mmio<CpuInterfaceRegisters>,
}

impl Gic400 {
    /// A driver for the distributor at `distributor` and the CPU interface at `cpu_interface`.
    ///
    /// # Safety
    /// Both must be the GIC-400's blocks, mapped as device memory. Core 0 alone configures the
    /// distributor ([`Gic400::enable_distributor`], [`Gic400::route_to_core0`]); each core
    /// drives its own (banked) CPU interface; SGIR is a write-only doorbell any core may write.
    /// So concurrent use from every core is sound.
    pub const unsafe fn new(distributor: usize, cpu_interface: usize) -> Self {
        // SAFETY: forwarded from the caller.
        unsafe { Self { distributor: Mmio::new(distributor), cpu_interface: Mmio::new(cpu_interface) } }
    }

    /// Turns the distributor on (both groups), so enabled interrupts and SGIs are forwarded.
    pub fn enable_distributor(&self) {
        self.distributor.CTLR.set(0b11);
    }

    /// Turns this core's CPU interface on with every priority signalled, and enables the SGIs
    /// (their enable bits are banked per core; a GIC-400 keeps them enabled anyway).
    pub fn enable_this_core(&self) {
        for id in 0..SGI_COUNT as usize {
            self.distributor.IPRIORITYR[id].set(PRIORITY);
        }
        self.distributor.ISENABLER[0].set((1 << SGI_COUNT) - 1);
        self.cpu_interface.PMR.set(PRIORITY_MASK);
        self.cpu_interface.CTLR.set(0b11);
    }

    /// Routes shared peripheral interrupt `id` to core 0, level-sensitive, and enables it.
    pub fn route_to_core0(&self, id: u32) {
        let index = id as usize;
        self.distributor.IPRIORITYR[index].set(PRIORITY);
        self.distributor.ITARGETSR[index].set(1);
        let (word, shift) = (index / 16, (index % 16) * 2);
        let config = self.distributor.ICFGR[word].get() & !(0b11 << shift);
        self.distributor.ICFGR[word].set(config);
        self.distributor.ISENABLER[index / 32].set(1 << (index % 32));
    }

    /// Stops forwarding shared peripheral interrupt `id`.
    pub fn disable(&self, id: u32) {
        self.distributor.ICENABLER[id as usize / 32].set(1 << (id % 32));
    }

    /// Raises SGI `sgi` (0-15) on `core`.
    pub fn raise_sgi(&self, core: usize, sgi: u32) {
        // Target list filter 0 (the listed cores), CPU target list bit `core`. A non-secure
        // write (Tessera runs in the non-secure EL1) raises the SGI as group 1 where the GIC has
        // security extensions, the group the firmware stub gives the non-secure world.
        self.distributor.SGIR.set((1 << (16 + core)) | (sgi & 0xF));
    }

    /// Acknowledges the most urgent interrupt pending on this core, if any.
    pub fn acknowledge(&self) -> Option<Acknowledged> {
        let value = self.cpu_interface.IAR.get();
        (value & 0x3FF < SPURIOUS).then_some(Acknowledged(value))
    }

    /// Ends an acknowledged interrupt, so it can be signalled again.
    pub fn end(&self, interrupt: Acknowledged) {
        self.cpu_interface.EOIR.set(interrupt.0);
    }
}

// SAFETY: see `new`: core 0 configures the distributor, each core its own banked interface.
unsafe impl Sync for Gic400 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_values_split_into_id_and_kind() {
        // An SGI 2 from core 3: source CPU in bits 12:10.
        let sgi = Acknowledged((3 << 10) | 2);
        assert_eq!((sgi.id(), sgi.is_sgi()), (2, true));
        let uart = Acknowledged(UART_INTERRUPT);
        assert_eq!((uart.id(), uart.is_sgi()), (153, false));
    }
}
