//! BCM2837 GPIO: function select and pull control, as far as the UART (and its RTS/CTS lines)
//! and the SD card need them.
//!
//! Pins and functions (BCM2837 ARM Peripherals, GPIO alternate functions; the Pi 3 firmware's
//! defaults): GPIO 14/15 carry UART0 on ALT0, GPIO 32/33 carry it on ALT3 (the firmware routes
//! the PL011 there, to the Bluetooth module), GPIO 34-39 carry the EMMC on ALT3 (the firmware
//! routes it there, to the WiFi chip's SDIO bus, on boards that have one), GPIO 48-53 carry the
//! EMMC on ALT3 (the SD card's CLK, CMD and DAT0-3), and GPIO 47 is the card-detect line.

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
    /// Function select for GPIO 30-39.
    GPFSEL3 [
        /// Pin 39 function (WiFi SDIO DAT3 on ALT3).
        FSEL39 OFFSET(27) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 38 function (WiFi SDIO DAT2 on ALT3).
        FSEL38 OFFSET(24) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 37 function (WiFi SDIO DAT1 on ALT3).
        FSEL37 OFFSET(21) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 36 function (WiFi SDIO DAT0 on ALT3).
        FSEL36 OFFSET(18) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 35 function (WiFi SDIO CMD on ALT3).
        FSEL35 OFFSET(15) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 34 function (WiFi SDIO CLK on ALT3).
        FSEL34 OFFSET(12) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 33 function (UART0 RXD on ALT3, the Bluetooth link).
        FSEL33 OFFSET(9) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 32 function (UART0 TXD on ALT3, the Bluetooth link).
        FSEL32 OFFSET(6) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111]
    ],
    /// Function select for GPIO 40-49.
    GPFSEL4 [
        /// Pin 49 function (SD CMD on ALT3).
        FSEL49 OFFSET(27) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 48 function (SD CLK on ALT3).
        FSEL48 OFFSET(24) NUMBITS(3) [Input = 0b000, AltFunc3 = 0b111],
        /// Pin 47 function (SD card detect, read as an input).
        FSEL47 OFFSET(21) NUMBITS(3) [Input = 0b000, Output = 0b001]
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
    ],
    /// Pull-up/down clock for GPIO 32-53 (bit n clocks pin 32 + n).
    GPPUDCLK1 [
        /// Clock pins 48-53 (SD CLK, CMD, DAT0-3).
        PUDCLK48_53 OFFSET(16) NUMBITS(6) [NoEffect = 0, AssertClock = 0b11_1111],
        /// Clock pin 47 (SD card detect).
        PUDCLK47 OFFSET(15) NUMBITS(1) [NoEffect = 0, AssertClock = 1]
    ]
}

register_structs! {
    /// GPIO register block.
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => _function_select0),
        (0x04 => GPFSEL1: ReadWrite<u32, GPFSEL1::Register>),
        (0x08 => _function_select2),
        (0x0C => GPFSEL3: ReadWrite<u32, GPFSEL3::Register>),
        (0x10 => GPFSEL4: ReadWrite<u32, GPFSEL4::Register>),
        (0x14 => GPFSEL5: ReadWrite<u32, GPFSEL5::Register>),
        (0x18 => _reserved1),
        (0x94 => GPPUD: ReadWrite<u32, GPPUD::Register>),
        (0x98 => GPPUDCLK0: ReadWrite<u32, GPPUDCLK0::Register>),
        (0x9C => GPPUDCLK1: ReadWrite<u32, GPPUDCLK1::Register>),
        (0xA0 => @END),
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

    /// Routes the SD card pins (GPIO 48-53) to the EMMC controller (ALT3) with their pull-ups
    /// on, and makes GPIO 47 (card detect) an input with its pull-up, as bare-metal SD drivers
    /// for the Pi 3 do (the firmware leaves these pins to its own SD host). QEMU's raspi3b
    /// routes the card by function 0 vs 4 and ignores ALT3 and the pulls.
    pub fn route_emmc(&self, clock: &dyn Clock) {
        self.registers.GPFSEL4.modify(GPFSEL4::FSEL47::Input);
        self.registers.GPFSEL4.modify(GPFSEL4::FSEL48::AltFunc3 + GPFSEL4::FSEL49::AltFunc3);
        self.registers.GPFSEL5.modify(
            GPFSEL5::FSEL50::AltFunc3
                + GPFSEL5::FSEL51::AltFunc3
                + GPFSEL5::FSEL52::AltFunc3
                + GPFSEL5::FSEL53::AltFunc3,
        );
        self.apply_pull(clock, GPPUD::PUD::PullUp, || {
            self.registers
                .GPPUDCLK1
                .write(GPPUDCLK1::PUDCLK47::AssertClock + GPPUDCLK1::PUDCLK48_53::AssertClock);
        });
        self.registers.GPPUDCLK1.set(0);
    }

    /// Makes GPIO 34-39 inputs, taking the EMMC controller off the WiFi chip's SDIO pins where
    /// the firmware leaves it on boards with WiFi, so that the controller drives only the SD
    /// card's pins (Circle does this on the 3B, 3A+ and 3B+). Pulls are left as they are.
    pub fn release_wifi_sdio_pins(&self) {
        self.registers.GPFSEL3.modify(
            GPFSEL3::FSEL34::Input
                + GPFSEL3::FSEL35::Input
                + GPFSEL3::FSEL36::Input
                + GPFSEL3::FSEL37::Input
                + GPFSEL3::FSEL38::Input
                + GPFSEL3::FSEL39::Input,
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

    /// Routes PL011 UART0 to GPIO 14 (TXD) and 15 (RXD) with pulls off, after taking it off
    /// GPIO 32/33 (ALT3), where the Pi 3 firmware leaves it for the Bluetooth module: one UART
    /// on two pin pairs would hear the Bluetooth chip on its receive line.
    pub fn route_uart0(&self, clock: &dyn Clock) {
        self.registers.GPFSEL3.modify(GPFSEL3::FSEL32::Input + GPFSEL3::FSEL33::Input);
        self.registers.GPFSEL1.modify(GPFSEL1::FSEL14::AltFunc0 + GPFSEL1::FSEL15::AltFunc0);
        self.apply_pull(clock, GPPUD::PUD::Off, || {
            self.registers
                .GPPUDCLK0
                .write(GPPUDCLK0::PUDCLK14::AssertClock + GPPUDCLK0::PUDCLK15::AssertClock);
        });
        self.registers.GPPUDCLK0.set(0);
    }

    /// The BCM2837 pull sequence: set the mode, wait, clock it into the pins `assert_clock`
    /// selects, wait, then release the mode (the caller clears the clock register it used).
    fn apply_pull(
        &self,
        clock: &dyn Clock,
        mode: tock_registers::fields::FieldValue<u32, GPPUD::Register>,
        assert_clock: impl FnOnce(),
    ) {
        self.registers.GPPUD.write(mode);
        clock.delay_us(5);
        assert_clock();
        clock.delay_us(5);
        self.registers.GPPUD.write(GPPUD::PUD::Off);
    }
}
