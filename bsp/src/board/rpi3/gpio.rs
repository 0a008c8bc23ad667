//! BCM2837 and BCM2711 GPIO: function select and pull control, as far as the UART (and its
//! RTS/CTS lines) and the SD card need them. The two chips share the function-select registers;
//! pulls differ: the BCM2837 clocks a pull mode into the pins it selects (GPPUD, GPPUDCLK0/1),
//! the BCM2711 has two bits per pin to write directly (GPIO_PUP_PDN_CNTRL_REG0-3 from 0xE4).
//!
//! Pins and functions (BCM2837 ARM Peripherals, GPIO alternate functions; the Pi 3 firmware's
//! defaults): GPIO 14/15 carry UART0 on ALT0, GPIO 32/33 carry it on ALT3 (the firmware routes
//! the PL011 there, to the Bluetooth module), GPIO 34-39 carry the EMMC on ALT3 (the firmware
//! routes it there, to the WiFi chip's SDIO bus, on boards that have one), GPIO 48-53 carry the
//! EMMC on ALT3 (the SD card's CLK, CMD and DAT0-3), and GPIO 47 is the card-detect line.

use crate::{board::soc::Soc, mmio::Mmio};
use kernel::hil::Clock;
use tock_registers::{
    interfaces::{ReadWriteable, Readable, Writeable},
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
        (0x98 => GPPUDCLK: [ReadWrite<u32>; 2]),
        (0xA0 => _reserved2),
        (0xE4 => GPIO_PUP_PDN_CNTRL: [ReadWrite<u32>; 4]),
        (0xF4 => @END),
    }
}

/// A pin's pull resistor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// Neither pull-up nor pull-down.
    Off,
    /// Pull-up.
    Up,
}

/// GPIO 14 and 15 (UART0 TXD, RXD).
const UART0_PINS: u64 = 0b11 << 14;
/// GPIO 47 (SD card detect) and 48-53 (SD CLK, CMD, DAT0-3).
const SD_PINS: u64 = 0b111_1111 << 47;

/// The BCM2711's pull field value for `pull` (GPIO_PUP_PDN_CNTRL: 0 none, 1 up, 2 down).
const fn bcm2711_pull_bits(pull: Pull) -> u32 {
    match pull {
        Pull::Off => 0b00,
        Pull::Up => 0b01,
    }
}

/// The GPIO controller of a BCM2837 or a BCM2711.
pub struct Gpio {
    registers: Mmio<Registers>,
    soc: Soc,
}

impl Gpio {
    /// A driver for the block at `base` on chip `soc`.
    ///
    /// # Safety
    /// `base` must be the GPIO block, mapped as device memory, with this the only driver.
    pub const unsafe fn new(base: usize, soc: Soc) -> Self {
        // SAFETY: forwarded from the caller.
        Self { registers: unsafe { Mmio::new(base) }, soc }
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
        self.set_pull(clock, SD_PINS, Pull::Up);
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
        self.set_pull(clock, UART0_PINS, Pull::Off);
    }

    /// Sets the pull of every pin in `pins` (bit n: GPIO n) to `pull`, the chip's way.
    pub fn set_pull(&self, clock: &dyn Clock, pins: u64, pull: Pull) {
        match self.soc {
            Soc::Bcm2837 => self.clock_in_pull(clock, pins, pull),
            Soc::Bcm2711 => self.write_pull(pins, pull),
        }
    }

    /// The BCM2837 pull sequence: set the mode, wait, clock it into the selected pins, wait,
    /// then release the mode and the clocks.
    fn clock_in_pull(&self, clock: &dyn Clock, pins: u64, pull: Pull) {
        let mode = match pull {
            Pull::Off => GPPUD::PUD::Off,
            Pull::Up => GPPUD::PUD::PullUp,
        };
        self.registers.GPPUD.write(mode);
        clock.delay_us(5);
        self.registers.GPPUDCLK[0].set(pins as u32);
        self.registers.GPPUDCLK[1].set((pins >> 32) as u32);
        clock.delay_us(5);
        self.registers.GPPUD.write(GPPUD::PUD::Off);
        self.registers.GPPUDCLK[0].set(0);
        self.registers.GPPUDCLK[1].set(0);
    }

    /// The BCM2711 way: two bits per pin, sixteen pins per register, written in place.
    fn write_pull(&self, pins: u64, pull: Pull) {
        for (index, register) in self.registers.GPIO_PUP_PDN_CNTRL.iter().enumerate() {
            let mut value = register.get();
            for pin in (0..16).filter(|pin| pins & 1 << (index * 16 + pin) != 0) {
                value = (value & !(0b11 << (2 * pin))) | bcm2711_pull_bits(pull) << (2 * pin);
            }
            if value != register.get() {
                register.set(value);
            }
        }
    }
}
