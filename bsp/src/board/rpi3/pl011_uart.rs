//! PL011 UART0 driver: 115200 8N1 with FIFOs, polled transmit and receive.
//!
//! Implements [`kernel::hil::Console`]. Interrupt-driven receive ([`Pl011Uart::drain_receive`])
//! and transmit ([`Pl011Transmitter`], driven by [`kernel::serve::transmit::TransmitQueue`])
//! build on the same registers.

use crate::mmio::Mmio;
use kernel::{hil::Console, serve::transmit::TransmitFifo};
use spin::Mutex;
use tock_registers::{
    interfaces::{ReadWriteable, Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_bitfields! {
    u32,
    /// Flag register.
    FR [
        /// Transmit FIFO empty.
        TXFE OFFSET(7) NUMBITS(1) [],
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// Receive FIFO empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ],
    /// Integer baud rate divisor.
    IBRD [
        /// The integer part.
        BAUD_DIVINT OFFSET(0) NUMBITS(16) []
    ],
    /// Fractional baud rate divisor.
    FBRD [
        /// The fractional part, in 1/64.
        BAUD_DIVFRAC OFFSET(0) NUMBITS(6) []
    ],
    /// Line control.
    LCR_H [
        /// Word length.
        WLEN OFFSET(5) NUMBITS(2) [FiveBit = 0b00, SixBit = 0b01, SevenBit = 0b10, EightBit = 0b11],
        /// FIFOs enabled.
        FEN OFFSET(4) NUMBITS(1) [FifosDisabled = 0, FifosEnabled = 1]
    ],
    /// Control.
    CR [
        /// Receive enable.
        RXE OFFSET(9) NUMBITS(1) [Disabled = 0, Enabled = 1],
        /// Transmit enable.
        TXE OFFSET(8) NUMBITS(1) [Disabled = 0, Enabled = 1],
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) [Disabled = 0, Enabled = 1]
    ],
    /// Interrupt mask set/clear, raw and masked status.
    INTERRUPTS [
        /// Receive timeout (data waiting below the FIFO level).
        RT OFFSET(6) NUMBITS(1) [],
        /// Transmit FIFO below its level.
        TX OFFSET(5) NUMBITS(1) [],
        /// Receive FIFO at or above its level.
        RX OFFSET(4) NUMBITS(1) []
    ],
    /// FIFO levels that raise the RX and TX interrupts.
    IFLS [
        /// Receive level.
        RXIFLSEL OFFSET(3) NUMBITS(3) [OneEighth = 0b000, OneQuarter = 0b001, OneHalf = 0b010],
        /// Transmit level.
        TXIFLSEL OFFSET(0) NUMBITS(3) [OneEighth = 0b000, OneQuarter = 0b001, OneHalf = 0b010]
    ],
    /// Interrupt clear.
    ICR [
        /// Clear the receive timeout interrupt.
        RT OFFSET(6) NUMBITS(1) [],
        /// Clear the transmit interrupt.
        TX OFFSET(5) NUMBITS(1) [],
        /// Clear the receive interrupt.
        RX OFFSET(4) NUMBITS(1) [],
        /// Clear every interrupt.
        ALL OFFSET(0) NUMBITS(11) []
    ]
}

register_structs! {
    /// PL011 register block.
    #[allow(non_snake_case)]
    pub Registers {
        (0x00 => DR: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => FR: ReadOnly<u32, FR::Register>),
        (0x1C => _reserved1),
        (0x24 => IBRD: WriteOnly<u32, IBRD::Register>),
        (0x28 => FBRD: WriteOnly<u32, FBRD::Register>),
        (0x2C => LCR_H: WriteOnly<u32, LCR_H::Register>),
        (0x30 => CR: WriteOnly<u32, CR::Register>),
        (0x34 => IFLS: ReadWrite<u32, IFLS::Register>),
        (0x38 => IMSC: ReadWrite<u32, INTERRUPTS::Register>),
        (0x3C => RIS: ReadOnly<u32, INTERRUPTS::Register>),
        (0x40 => MIS: ReadOnly<u32, INTERRUPTS::Register>),
        (0x44 => ICR: WriteOnly<u32, ICR::Register>),
        (0x48 => @END),
    }
}

/// The baud rate Tessera uses on its console.
pub const BAUD_RATE: u32 = 115_200;

/// Entries in each FIFO (BCM2835 ARM Peripherals, UART chapter: 16 × 8 bits transmit).
pub const FIFO_DEPTH: usize = 16;

/// Integer and fractional (1/64) divisors for `baud` from a UART clock of `clock_hz`,
/// rounded to nearest.
pub fn baud_divisors(clock_hz: u32, baud: u32) -> (u32, u32) {
    // divisor = clock / (16 * baud); in 1/64 units, rounded.
    let sixty_fourths = (u64::from(clock_hz) * 4 + u64::from(baud) / 2) / u64::from(baud);
    ((sixty_fourths / 64) as u32, (sixty_fourths % 64) as u32)
}

/// PL011 UART0. All access goes through one lock, so any core may print.
pub struct Pl011Uart {
    base: usize,
    registers: Mutex<Mmio<Registers>>,
}

impl Pl011Uart {
    /// A driver for the block at `base`. Call [`Pl011Uart::init`] before use on hardware.
    ///
    /// # Safety
    /// `base` must be the PL011 block, mapped as device memory, with this the only driver.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded from the caller.
        Self { base, registers: Mutex::new(unsafe { Mmio::new(base) }) }
    }

    /// Programs 115200 8N1 with FIFOs from the UART's input clock.
    pub fn init(&self, clock_hz: u32) {
        let registers = self.registers.lock();
        while registers.FR.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
        registers.CR.set(0);
        registers.ICR.write(ICR::ALL::SET);
        let (integer, fraction) = baud_divisors(clock_hz, BAUD_RATE);
        registers.IBRD.write(IBRD::BAUD_DIVINT.val(integer));
        registers.FBRD.write(FBRD::BAUD_DIVFRAC.val(fraction));
        registers.LCR_H.write(LCR_H::WLEN::EightBit + LCR_H::FEN::FifosEnabled);
        registers.CR.write(CR::UARTEN::Enabled + CR::TXE::Enabled + CR::RXE::Enabled);
    }

    /// Raises the receive interrupts (FIFO at 1/8 full, or receive timeout), so received bytes
    /// are collected by [`Pl011Uart::drain_receive`] from the IRQ handler.
    pub fn enable_receive_interrupts(&self) {
        let registers = self.registers.lock();
        registers.IFLS.write(IFLS::RXIFLSEL::OneEighth + IFLS::TXIFLSEL::OneHalf);
        registers.IMSC.modify(INTERRUPTS::RX::SET + INTERRUPTS::RT::SET);
    }

    /// Whether the transmit interrupt is asserted and unmasked (for the IRQ handler).
    pub fn transmit_pending(&self) -> bool {
        // SAFETY: reading MIS has no side effects; see `drain_receive` for sharing the block.
        let registers: Mmio<Registers> = unsafe { Mmio::new(self.base) };
        registers.MIS.is_set(INTERRUPTS::TX)
    }

    /// The transmit FIFO and its interrupt, for the interrupt-driven transmit queue.
    pub fn transmitter(&self) -> Pl011Transmitter {
        // SAFETY: same block as the locked handle. The transmitter only writes DR, reads FR and
        // writes the TX bits of ICR and IMSC; once interrupt-driven transmit starts, it is the
        // only writer of DR (the queue's pump lock serialises its users), and IMSC's receive
        // bits are set once, before it starts.
        Pl011Transmitter { registers: unsafe { Mmio::new(self.base) } }
    }

    /// From the IRQ handler: hands every received byte to `sink` and clears the receive
    /// interrupts. Returns how many bytes were taken. Does not take the transmit lock: the
    /// handler may interrupt a transmission on the same core.
    pub fn drain_receive(&self, mut sink: impl FnMut(u8)) -> usize {
        // SAFETY: receive uses FR, DR reads and ICR, which no transmit path touches (transmit
        // only writes DR and reads FR), so sharing the block with a locked writer is sound.
        let registers: Mmio<Registers> = unsafe { Mmio::new(self.base) };
        // Clear first, then drain: a byte that lands after the clear raises the interrupt again,
        // whereas clearing after the drain could swallow the interrupt of a byte that arrived
        // in between and leave a full FIFO that never interrupts again.
        registers.ICR.write(ICR::RX::SET + ICR::RT::SET);
        let mut count = 0;
        while !registers.FR.is_set(FR::RXFE) {
            sink(registers.DR.get() as u8);
            count += 1;
        }
        count
    }

    /// Writes bytes without taking the lock: only for fault and panic reports, when the lock
    /// may be held by the code that failed.
    pub fn write_bytes_unlocked(&self, bytes: &[u8]) {
        // SAFETY: same block as the locked handle; a fault report may interleave with a
        // half-written line, which is acceptable for a last-words diagnostic.
        let registers: Mmio<Registers> = unsafe { Mmio::new(self.base) };
        bytes.iter().for_each(|&byte| put(&registers, byte));
    }
}

/// The PL011's transmit FIFO and transmit interrupt, as [`TransmitFifo`] sees them.
pub struct Pl011Transmitter {
    registers: Mmio<Registers>,
}

impl TransmitFifo for Pl011Transmitter {
    fn has_room(&self) -> bool {
        !self.registers.FR.is_set(FR::TXFF)
    }

    fn put(&self, byte: u8) {
        self.registers.DR.set(u32::from(byte));
    }

    fn acknowledge(&self) {
        self.registers.ICR.write(ICR::TX::SET);
    }

    fn interrupt_on_room(&self, enabled: bool) {
        self.registers.IMSC.modify(if enabled { INTERRUPTS::TX::SET } else { INTERRUPTS::TX::CLEAR });
    }

    fn depth(&self) -> usize {
        FIFO_DEPTH
    }
}

fn put(registers: &Registers, byte: u8) {
    while registers.FR.is_set(FR::TXFF) {
        core::hint::spin_loop();
    }
    registers.DR.set(u32::from(byte));
}

impl Console for Pl011Uart {
    fn write_bytes(&self, bytes: &[u8]) {
        let registers = self.registers.lock();
        bytes.iter().for_each(|&byte| put(&registers, byte));
    }

    fn read_byte(&self) -> Option<u8> {
        let registers = self.registers.lock();
        (!registers.FR.is_set(FR::RXFE)).then(|| registers.DR.get() as u8)
    }

    fn flush(&self) {
        let registers = self.registers.lock();
        while !registers.FR.is_set(FR::TXFE) || registers.FR.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors_for_pi_clocks() {
        assert_eq!(baud_divisors(48_000_000, 115_200), (26, 3));
        assert_eq!(baud_divisors(3_000_000, 115_200), (1, 40));
    }
}
