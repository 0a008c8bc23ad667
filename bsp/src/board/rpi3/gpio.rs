//! BCM2837 GPIO: function select and pull control, as far as the UART (and its RTS/CTS lines)
//! and the SD card need them.

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
        /// Pin 17 function (UART0 RTS on ALT3).
        FSEL17 OFFSET(21) NUMBITS(3) [Input = 0b000, Output = 0b001, AltFunc3 = 0b111],
        /// Pin 16 function (UART0 CTS on ALT3).
        FSEL16 OFFSET(18) NUMBITS(3) [Input = 0b000, Output = 0b001, AltFunc3 = 0b111],
        /// Pin 15 function.
        FSEL15 OFFSET(15) NUMBITS(3) [Input = 0b000, Output = 0b001, AltFunc0 = 0b100],
        /// Pin 14 function.
        FSEL14 OFFSET(12) NUMBITS(3) [Input = 0b000, Output = 0b001, AltFunc0 = 0b100]
    ],
    /// Function select for GPIO 40-49.
    GPFSEL4 [
        /// Pin 49 function (SD CMD on ALT3).
        FSEL49 OFFSET(27) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 48 function (SD CLK on ALT3).
        FSEL48 OFFSET(24) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111]
    ],
    /// Function select for GPIO 50-59.
    GPFSEL5 [
        /// Pin 53 function (SD DAT3 on ALT3).
        FSEL53 OFFSET(9) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 52 function (SD DAT2 on ALT3).
        FSEL52 OFFSET(6) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 51 function (SD DAT1 on ALT3).
        FSEL51 OFFSET(3) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 50 function (SD DAT0 on ALT3).
        FSEL50 OFFSET(0) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111]
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
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => _function_select0),
        (0x04 => GPFSEL1: ReadWrite<u32, GPFSEL1::Register>),
        (0x08 => _function_select2),
        (0x10 => GPFSEL4: ReadWrite<u32, GPFSEL4::Register>),
        (0x14 => GPFSEL5: ReadWrite<u32, GPFSEL5::Register>),
        (0x18 => _reserved1),
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

    /// Routes the SD card pins (GPIO 48-53) to the EMMC controller (ALT3), as the Pi 3's
    /// firmware leaves them for the SD host. QEMU's raspi3b routes by function 0 vs 4 and
    /// ignores ALT3, so this is harmless there.
    pub fn route_emmc(&self) {
        self.registers.GPFSEL4.modify(GPFSEL4::FSEL48::AltFunc3 + GPFSEL4::FSEL49::AltFunc3);
        self.registers.GPFSEL5.modify(
            GPFSEL5::FSEL50::AltFunc3
                + GPFSEL5::FSEL51::AltFunc3
                + GPFSEL5::FSEL52::AltFunc3
                + GPFSEL5::FSEL53::AltFunc3,
        );
    }

    /// Routes UART0's flow-control lines: GPIO 16 as CTS0 and GPIO 17 as RTS0 (ALT3), as on the
    /// Pi 3's 40-pin header (pins 36 and 11). Pulls stay as the firmware set them: the reset
    /// pull-down on GPIO 16 reads as CTS asserted (active low) when nothing is connected, so
    /// transmit still flows with the line unwired.
    pub fn route_uart0_flow_control(&self) {
        self.registers.GPFSEL1.modify(GPFSEL1::FSEL16::AltFunc3 + GPFSEL1::FSEL17::AltFunc3);
    }

    /// Gives GPIO 16 and 17 back as inputs (flow control off).
    pub fn release_uart0_flow_control(&self) {
        self.registers.GPFSEL1.modify(GPFSEL1::FSEL16::Input + GPFSEL1::FSEL17::Input);
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
