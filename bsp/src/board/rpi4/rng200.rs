//! The BCM2711's RNG200 hardware random number generator. Implements [`kernel::hil::Rng`].
//!
//! A different block from the BCM2835's generator at the same address: a control register
//! whose low bits start the generator, a threshold of bits to collect first, and a FIFO with a
//! word count.

use crate::mmio::Mmio;
use kernel::hil::{Clock, Rng, RngError};
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_structs! {
    /// RNG200 register block (the registers Tessera uses).
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => CTRL: ReadWrite<u32>),
        (0x04 => _resets),
        (0x10 => TOTAL_BIT_COUNT_THRESHOLD: ReadWrite<u32>),
        (0x14 => _interrupts),
        (0x20 => FIFO_DATA: ReadOnly<u32>),
        (0x24 => FIFO_COUNT: ReadOnly<u32>),
        (0x28 => @END),
    }
}

/// CTRL's generator-enable field (bits 12:0), and the value that starts it.
const GENERATOR_MASK: u32 = 0x1FFF;
const GENERATOR_ENABLE: u32 = 0x1;
/// CTRL's sample clock divider (bits 20:13), as the Pi's own driver sets it.
const DIVIDER: u32 = 0x3 << 13;
/// Bits collected before the FIFO is first filled.
const WARMUP_BITS: u32 = 0x4_0000;
/// FIFO_COUNT's word count (bits 7:0).
const COUNT_MASK: u32 = 0xFF;
const TIMEOUT_US: u64 = 100_000;

/// The RNG200, with the clock it times out on.
pub struct Rng200<'clock> {
    registers: Mmio<Registers>,
    clock: &'clock dyn Clock,
}

impl<'clock> Rng200<'clock> {
    /// A driver for the block at `base`; starts the generator if it is not running.
    ///
    /// # Safety
    /// `base` must be the RNG200 block, mapped as device memory, with this the only driver.
    pub unsafe fn new(base: usize, clock: &'clock dyn Clock) -> Self {
        // SAFETY: forwarded from the caller.
        let rng = Self { registers: unsafe { Mmio::new(base) }, clock };
        if rng.registers.CTRL.get() & GENERATOR_MASK == 0 {
            rng.registers.TOTAL_BIT_COUNT_THRESHOLD.set(WARMUP_BITS);
            rng.registers.CTRL.set(DIVIDER | GENERATOR_ENABLE);
        }
        rng
    }
}

// SAFETY: after construction the block is only read (FIFO_COUNT, FIFO_DATA); concurrent reads of
// the FIFO at worst hand two callers different words.
unsafe impl Sync for Rng200<'_> {}

impl Rng for Rng200<'_> {
    fn next_u32(&self) -> Result<u32, RngError> {
        let deadline = self.clock.deadline_after_us(TIMEOUT_US);
        while self.registers.FIFO_COUNT.get() & COUNT_MASK == 0 {
            if deadline.passed(self.clock) {
                return Err(RngError::Timeout);
            }
        }
        Ok(self.registers.FIFO_DATA.get())
    }
}
