//! BCM2836 per-core local peripherals: the core mailboxes used to wake parked cores.

use crate::mmio::Mmio;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_structs! {
    /// The local peripheral block (only the registers Tessera uses are named).
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => _control),
        (0x0C => GPU_INTERRUPT_ROUTING: ReadWrite<u32>),
        (0x10 => _timers),
        (0x50 => MAILBOX_INTERRUPT_CONTROL: [ReadWrite<u32>; 4]),
        (0x60 => IRQ_SOURCE: [ReadOnly<u32>; 4]),
        (0x70 => _fiq_source),
        (0x80 => MAILBOX_SET: [WriteOnly<u32>; 16]),
        (0xC0 => MAILBOX_CLEAR: [ReadWrite<u32>; 16]),
        (0x100 => @END),
    }
}

/// Bit in `MAILBOX_INTERRUPT_CONTROL` that routes mailbox 0 to the core's IRQ line.
const MAILBOX0_IRQ: u32 = 1 << 0;
/// Bit in `IRQ_SOURCE` for mailbox 0.
pub const SOURCE_MAILBOX0: u32 = 1 << 4;
/// Bit in `IRQ_SOURCE` for the peripheral (GPU) interrupt controller.
pub const SOURCE_PERIPHERAL: u32 = 1 << 8;

/// The per-core mailboxes. Mailbox 0 of each core is its wake-up doorbell.
pub struct LocalInterrupts {
    registers: Mmio<Registers>,
}

impl LocalInterrupts {
    /// A driver for the block at `base`.
    ///
    /// # Safety
    /// `base` must be the BCM2836 local block, mapped as device memory. Each core only
    /// touches its own control and clear registers, and the set registers are write-only
    /// doorbells, so concurrent use from every core is sound.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded from the caller.
        Self { registers: unsafe { Mmio::new(base) } }
    }

    /// Routes `core`'s mailbox 0 to its IRQ line, so a doorbell ends its `wfi`.
    pub fn enable_doorbell(&self, core: usize) {
        self.registers.MAILBOX_INTERRUPT_CONTROL[core].set(MAILBOX0_IRQ);
    }

    /// Rings `core`'s doorbell with the bits `value` (ORed into its mailbox 0).
    pub fn ring(&self, core: usize, value: u32) {
        self.registers.MAILBOX_SET[core * 4].set(value);
    }

    /// Reads and clears `core`'s mailbox 0, returning the bits that were set.
    pub fn take(&self, core: usize) -> u32 {
        let value = self.registers.MAILBOX_CLEAR[core * 4].get();
        if value != 0 {
            self.registers.MAILBOX_CLEAR[core * 4].set(value);
        }
        value
    }

    /// Routes the peripheral interrupt controller's IRQ output to `core`.
    pub fn route_peripherals_to(&self, core: usize) {
        self.registers.GPU_INTERRUPT_ROUTING.set(core as u32 & 0b11);
    }

    /// The pending IRQ sources of `core`.
    pub fn irq_source(&self, core: usize) -> u32 {
        self.registers.IRQ_SOURCE[core].get()
    }
}

// SAFETY: see `new`: per-core registers and write-only doorbells.
unsafe impl Sync for LocalInterrupts {}
