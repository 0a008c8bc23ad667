//! BCM2837 GPIO: function select and pull control, as far as the UART needs them.

use crate::mmio::Mmio;
use kernel::hil::Clock;
use tock_registers::{
    interfaces::{ReadWriteable, Writeable},
    register_bitfields, register_structs,
    registers::ReadWrite,
};

register_bitfields! {
    u32,
    /// Function select for GPIO 10-19.
    GPFSEL1 [
        /// Pin 15 function.
        FSEL15 OFFSET(15) NUMBITS(3) [Input = 0b000, Output = 0b001, AltFunc0 = 0b100],
        /// Pin 14 function.
        FSEL14 OFFSET(12) NUMBITS(3) [Input = 0b000, Output = 0b001, AltFunc0 = 0b100]
    ],
    /// Pull-up/down control (BCM2837).
    GPPUD [
        /// Pull mode applied by the next clock pulse.
        PUD OFFSET(0) NUMBITS(2) [Off = 0b00, PullDown = 0b01, PullUp = 0b10]
    ],
    /// Pull-up/down clock for GPIO 0-31.
    GPPUDCLK0 [
        /// Clock pin 15.
        PUDCLK15 OFFSET(15) NUMBITS(1) [NoEffect = 0, AssertClock = 1],
        /// Clock pin 14.
        PUDCLK14 OFFSET(14) NUMBITS(1) [NoEffect = 0, AssertClock = 1]
    ]
}

register_structs! {
    /// GPIO register block.
    #[allow(non_snake_case)]
    pub Registers {
        (0x00 => _function_select0),
        (0x04 => GPFSEL1: ReadWrite<u32, GPFSEL1::Register>),
        (0x08 => _reserved1),
        (0x94 => GPPUD: ReadWrite<u32, GPPUD::Register>),
        (0x98 => GPPUDCLK0: ReadWrite<u32, GPPUDCLK0::Register>),
        (0x9C => @END),
    }
}

/// The GPIO controller.
pub struct Gpio {
    registers: Mmio<Registers>,
}

impl Gpio {
    /// A driver for the block at `base`.
    ///
    /// # Safety
    /// `base` must be the GPIO block, mapped as device memory, with this the only driver.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded from the caller.
        Self { registers: unsafe { Mmio::new(base) } }
    }

    /// Routes PL011 UART0 to GPIO 14 (TXD) and 15 (RXD) with pulls off.
    pub fn route_uart0(&self, clock: &dyn Clock) {
        self.registers.GPFSEL1.modify(GPFSEL1::FSEL14::AltFunc0 + GPFSEL1::FSEL15::AltFunc0);
        // The BCM2837 pull sequence: set the mode, wait, clock it into the pins, wait, release.
        self.registers.GPPUD.write(GPPUD::PUD::Off);
        clock.delay_us(5);
        self.registers.GPPUDCLK0.write(GPPUDCLK0::PUDCLK14::AssertClock + GPPUDCLK0::PUDCLK15::AssertClock);
        clock.delay_us(5);
        self.registers.GPPUD.write(GPPUD::PUD::Off);
        self.registers.GPPUDCLK0.set(0);
    }
}
