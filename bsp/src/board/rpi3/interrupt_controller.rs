//! BCM2835 ARM interrupt controller (peripheral interrupts) and the routing of its output
//! through the BCM2836 local controller to a core.

use crate::mmio::Mmio;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_structs! {
    /// Interrupt controller register block.
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => BASIC_PENDING: ReadOnly<u32>),
        (0x04 => PENDING: [ReadOnly<u32>; 2]),
        (0x0C => FIQ_CONTROL: ReadWrite<u32>),
        (0x10 => ENABLE: [WriteOnly<u32>; 2]),
        (0x18 => ENABLE_BASIC: WriteOnly<u32>),
        (0x1C => DISABLE: [WriteOnly<u32>; 2]),
        (0x24 => DISABLE_BASIC: WriteOnly<u32>),
        (0x28 => @END),
    }
}

/// A peripheral interrupt number (0-63) of the BCM2835 controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeripheralIrq(pub u32);

impl PeripheralIrq {
    /// PL011 UART0.
    pub const UART: PeripheralIrq = PeripheralIrq(57);
    /// BCM2835 DMA channel 0.
    pub const DMA0: PeripheralIrq = PeripheralIrq(16);

    fn bank_and_bit(self) -> (usize, u32) {
        ((self.0 / 32) as usize, 1 << (self.0 % 32))
    }
}

/// The peripheral interrupt controller.
pub struct InterruptController {
    registers: Mmio<Registers>,
}

impl InterruptController {
    /// A driver for the block at `base`.
    ///
    /// # Safety
    /// `base` must be the BCM2835 interrupt controller, mapped as device memory. Its enable and
    /// disable registers are write-one-to-set/clear, so concurrent use is sound.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded from the caller.
        Self { registers: unsafe { Mmio::new(base) } }
    }

    /// Lets `irq` reach the cores.
    pub fn enable(&self, irq: PeripheralIrq) {
        let (bank, bit) = irq.bank_and_bit();
        self.registers.ENABLE[bank].set(bit);
    }

    /// Stops `irq` reaching the cores.
    pub fn disable(&self, irq: PeripheralIrq) {
        let (bank, bit) = irq.bank_and_bit();
        self.registers.DISABLE[bank].set(bit);
    }

    /// Whether `irq` is pending (and enabled).
    pub fn is_pending(&self, irq: PeripheralIrq) -> bool {
        let (bank, bit) = irq.bank_and_bit();
        self.registers.PENDING[bank].get() & bit != 0
    }
}

// SAFETY: see `new`.
unsafe impl Sync for InterruptController {}
