//! BCM2835 hardware random number generator. Implements [`kernel::hil::Rng`].

use crate::mmio::Mmio;
use kernel::hil::{Clock, Rng, RngError};
use tock_registers::{
    interfaces::{ReadWriteable, Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_bitfields! {
    u32,
    /// Control.
    CTRL [
        /// Generator enabled.
        ENABLE OFFSET(0) NUMBITS(1) [Disabled = 0, Enabled = 1]
    ],
    /// Status.
    STATUS [
        /// Words waiting in the FIFO.
        READY_WORDS OFFSET(24) NUMBITS(8) [],
        /// Warm-up count: values to discard after enabling.
        WARMUP_COUNT OFFSET(0) NUMBITS(20) []
    ],
    /// Interrupt mask.
    INT_MASK [
        /// Masks the "data ready" interrupt.
        INT_OFF OFFSET(0) NUMBITS(1) [Unmasked = 0, Masked = 1]
    ]
}

register_structs! {
    /// RNG register block.
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => CTRL: ReadWrite<u32, CTRL::Register>),
        (0x04 => STATUS: ReadWrite<u32, STATUS::Register>),
        (0x08 => DATA: ReadOnly<u32>),
        (0x0C => _reserved),
        (0x10 => INT_MASK: ReadWrite<u32, INT_MASK::Register>),
        (0x14 => @END),
    }
}

const WARMUP_VALUES: u32 = 0x4_0000;
const TIMEOUT_US: u64 = 100_000;

/// The hardware RNG, with the clock it times out on.
pub struct HardwareRng<'clock> {
    registers: Mmio<Registers>,
    clock: &'clock dyn Clock,
}

impl<'clock> HardwareRng<'clock> {
    /// A driver for the block at `base`; starts the generator if it is not running.
    ///
    /// # Safety
    /// `base` must be the RNG block, mapped as device memory, with this the only driver.
    pub unsafe fn new(base: usize, clock: &'clock dyn Clock) -> Self {
        // SAFETY: forwarded from the caller.
        let rng = Self { registers: unsafe { Mmio::new(base) }, clock };
        if !rng.registers.CTRL.is_set(CTRL::ENABLE) {
            rng.registers.STATUS.write(STATUS::WARMUP_COUNT.val(WARMUP_VALUES));
            rng.registers.INT_MASK.modify(INT_MASK::INT_OFF::Masked);
            rng.registers.CTRL.modify(CTRL::ENABLE::Enabled);
        }
        rng
    }
}

// SAFETY: the register block is only read (DATA, STATUS) after construction; concurrent reads
// of the FIFO at worst hand two callers different words, which is what they want.
unsafe impl Sync for HardwareRng<'_> {}

impl Rng for HardwareRng<'_> {
    fn next_u32(&self) -> Result<u32, RngError> {
        let deadline = self.clock.deadline_after_us(TIMEOUT_US);
        while self.registers.STATUS.read(STATUS::READY_WORDS) == 0 {
            if deadline.passed(self.clock) {
                return Err(RngError::Timeout);
            }
        }
        Ok(self.registers.DATA.get())
    }
}
