//! PL011 UART0 driver: 115200 8N1 with FIFOs, polled transmit and receive, optional RTS/CTS.
//!
//! Implements [`kernel::hil::Console`]. Interrupt-driven receive ([`Pl011Uart::receive_byte`],
//! [`Pl011Uart::set_receive_interrupts`]) and transmit ([`Pl011Transmitter`], driven by
//! [`kernel::console::transmit::TransmitQueue`]) build on the same registers. The interrupt mask
//! is shared by both, from any core and from the interrupt handler, so it is only written
//! through [`InterruptMask`].

use crate::mmio::Mmio;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kernel::hil::{Console, TransmitFifo};
use spin::Mutex;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite, WriteOnly},
};

register_bitfields! {
    u32,
    /// Data register, as read: the byte and its error flags.
    DR [
        /// Overrun: a byte arrived while the receive FIFO was full, and was lost.
        OE OFFSET(11) NUMBITS(1) [],
        /// The received byte.
        DATA OFFSET(0) NUMBITS(8) []
    ],
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
        /// CTS hardware flow control: transmit only while nUARTCTS is asserted.
        CTSEN OFFSET(15) NUMBITS(1) [Disabled = 0, Enabled = 1],
        /// RTS hardware flow control: nUARTRTS is deasserted while the receive FIFO is at its
        /// interrupt level.
        RTSEN OFFSET(14) NUMBITS(1) [Disabled = 0, Enabled = 1],
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
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => DR: ReadWrite<u32, DR::Register>),
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

/// A device register written from several contexts (any core, and the interrupt handler over
/// the code it interrupted), kept right without a lock: the wanted value lives in an atomic,
/// every change goes through it, and a writer writes the register until what it last wrote is
/// still the wanted value.
///
/// Why the register ends up holding the wanted value: take the last write to the register,
/// by writer W of value v. W then read the shadow and found v (or it would have written
/// again). Any change to the shadow after that read is followed by its writer's own write,
/// which would be later than W's; so there is none, and the shadow is v. Writers never wait
/// for each other, so the interrupt handler may use it while the code it interrupted is in the
/// middle of a write. For a moment the register can hold an older value; for the UART's mask
/// that is an interrupt taken or missed once, which the handler and the transmit pump allow
/// for (each decides from the state of its ring, not from the interrupt).
#[derive(Debug)]
pub struct InterruptMask {
    wanted: AtomicU32,
}

impl InterruptMask {
    /// A mask whose register holds `initial`.
    pub const fn new(initial: u32) -> Self {
        Self { wanted: AtomicU32::new(initial) }
    }

    /// Sets the bits of `set` and clears those of `clear`, then writes the register through
    /// `write` (which must complete the write before returning) until it holds the wanted value.
    pub fn update(&self, set: u32, clear: u32, write: impl Fn(u32)) {
        let change = |mask: u32| (mask | set) & !clear;
        // The closure never refuses, so this is always `Ok` with the value before the change.
        let before = self
            .wanted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |mask| Some(change(mask)))
            .unwrap_or_else(|current| current);
        let mut value = change(before);
        loop {
            write(value);
            let now = self.wanted.load(Ordering::SeqCst);
            if now == value {
                return;
            }
            value = now;
        }
    }

    /// The value the register is meant to hold.
    pub fn wanted(&self) -> u32 {
        self.wanted.load(Ordering::SeqCst)
    }
}

/// PL011 UART0. Polled access goes through one lock, so any core may print; the interrupt
/// paths use the unlocked accessors documented with each.
pub struct Pl011Uart {
    base: usize,
    registers: Mutex<Mmio<Registers>>,
    mask: InterruptMask,
    overruns: AtomicU64,
}

impl Pl011Uart {
    /// A driver for the block at `base`. Call [`Pl011Uart::init`] before use on hardware.
    ///
    /// # Safety
    /// `base` must be the PL011 block, mapped as device memory, with this the only driver.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            base,
            // SAFETY: forwarded from the caller.
            registers: Mutex::new(unsafe { Mmio::new(base) }),
            mask: InterruptMask::new(0),
            overruns: AtomicU64::new(0),
        }
    }

    /// An unlocked handle to the block, for the paths that must not wait for the lock.
    fn unlocked(&self) -> Mmio<Registers> {
        // SAFETY: the same block as the locked handle. Unlocked users touch disjoint parts:
        // receive reads DR and FR and writes the receive bits of ICR; transmit writes DR, reads
        // FR and MIS, writes the transmit bits of ICR; IMSC is written only through `mask`.
        unsafe { Mmio::new(self.base) }
    }

    /// Writes the interrupt mask register: every change goes through [`InterruptMask`].
    fn update_mask(&self, set: u32, clear: u32) {
        let registers = self.unlocked();
        self.mask.update(set, clear, |value| {
            registers.IMSC.set(value);
            // The write must reach the UART before the writer checks whether it is still the
            // wanted value.
            aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
        });
    }

    /// Programs 115200 8N1 with FIFOs from the UART's input clock, without flow control.
    pub fn init(&self, clock_hz: u32) {
        configure(&self.registers.lock(), clock_hz);
    }

    /// Turns RTS/CTS hardware flow control on or off (the pins are routed separately: GPIO 16
    /// and 17 on ALT3 on the Pi 3). The UART is disabled while its control register changes,
    /// as the PL011 requires, once the line is idle. Bytes put into the transmit FIFO without
    /// the lock meanwhile (the interrupt-driven transmit path) wait in the FIFO: flush first.
    pub fn set_hardware_flow_control(&self, enabled: bool) {
        let registers = self.registers.lock();
        while registers.FR.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
        registers.CR.set(0);
        let flow = if enabled {
            CR::RTSEN::Enabled + CR::CTSEN::Enabled
        } else {
            CR::RTSEN::Disabled + CR::CTSEN::Disabled
        };
        registers.CR.write(CR::UARTEN::Enabled + CR::TXE::Enabled + CR::RXE::Enabled + flow);
    }

    /// Sets the FIFO levels (receive at 1/8: two bytes, which is also where RTS drops under
    /// RTS/CTS; transmit at 1/2) and unmasks the receive interrupts (FIFO at its level, or
    /// receive timeout), so received bytes are collected by the IRQ handler.
    pub fn enable_receive_interrupts(&self) {
        self.registers.lock().IFLS.write(IFLS::RXIFLSEL::OneEighth + IFLS::TXIFLSEL::OneHalf);
        self.set_receive_interrupts(true);
    }

    /// Unmasks (`true`) or masks both receive interrupts (FIFO level and receive timeout).
    /// Masked, received bytes stay in the FIFO; once it is full the sender is held back (by
    /// RTS with flow control on; QEMU stops reading its input) or, without flow control on a
    /// board, further bytes overrun. Safe from the interrupt handler and from any core.
    pub fn set_receive_interrupts(&self, enabled: bool) {
        let receive = INTERRUPTS::RX::SET.value | INTERRUPTS::RT::SET.value;
        if enabled {
            self.update_mask(receive, 0);
        } else {
            self.update_mask(0, receive);
        }
    }

    /// Clears the receive interrupts. Clear first, then read the FIFO empty: a byte that lands
    /// after the clear raises the interrupt again, whereas clearing after reading could
    /// swallow the interrupt of a byte that arrived in between.
    pub fn acknowledge_receive(&self) {
        self.unlocked().ICR.write(ICR::RX::SET + ICR::RT::SET);
    }

    /// The next received byte, if the FIFO holds one, without the lock: for the interrupt
    /// handler, and for the console loop while it keeps that handler out. A byte flagged with
    /// an overrun is counted in [`Pl011Uart::overruns`] (the bytes lost before it are gone).
    pub fn receive_byte(&self) -> Option<u8> {
        let registers = self.unlocked();
        if registers.FR.is_set(FR::RXFE) {
            return None;
        }
        let word = registers.DR.extract();
        if word.is_set(DR::OE) {
            self.overruns.fetch_add(1, Ordering::Relaxed);
        }
        Some(word.read(DR::DATA) as u8)
    }

    /// Overruns the UART has flagged: times bytes were lost because its receive FIFO was full.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// Whether the transmit interrupt is asserted and unmasked (for the IRQ handler).
    pub fn transmit_pending(&self) -> bool {
        self.unlocked().MIS.is_set(INTERRUPTS::TX)
    }

    /// The transmit FIFO and its interrupt, for the interrupt-driven transmit queue. Once
    /// interrupt-driven transmit starts, it is the only writer of DR (the queue's pump lock
    /// serialises its users).
    pub fn transmitter(&self) -> Pl011Transmitter<'_> {
        Pl011Transmitter { uart: self, registers: self.unlocked() }
    }

    /// Writes bytes without taking the lock: only for fault and panic reports, when the lock
    /// may be held by the code that failed (a report may interleave with a half-written line,
    /// which is acceptable for a last-words diagnostic).
    pub fn write_bytes_unlocked(&self, bytes: &[u8]) {
        let registers = self.unlocked();
        bytes.iter().for_each(|&byte| put(&registers, byte));
    }
}

/// The PL011's transmit FIFO and transmit interrupt, as [`TransmitFifo`] sees them.
pub struct Pl011Transmitter<'uart> {
    uart: &'uart Pl011Uart,
    registers: Mmio<Registers>,
}

impl TransmitFifo for Pl011Transmitter<'_> {
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
        let transmit = INTERRUPTS::TX::SET.value;
        if enabled {
            self.uart.update_mask(transmit, 0);
        } else {
            self.uart.update_mask(0, transmit);
        }
    }

    fn depth(&self) -> usize {
        FIFO_DEPTH
    }
}

/// Programs 115200 8N1 with FIFOs from a UART clock of `clock_hz`, without flow control, once
/// the line is idle. Plain register writes: no lock, no atomics.
fn configure(registers: &Registers, clock_hz: u32) {
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

/// UART0 before the MMU and caches are on: plain register access, with no lock and no atomic
/// anywhere (a load/store-exclusive pair needs cacheable memory on a Cortex-A53, and with the
/// MMU off every access is Device memory). Boot's early console and its pre-MMU failure and
/// panic reports write through it; once the MMU is on, [`Pl011Uart`] takes over the same block.
pub struct EarlyUart {
    registers: Mmio<Registers>,
}

impl EarlyUart {
    /// A handle to the block at `base`.
    ///
    /// # Safety
    /// `base` must be the PL011 block, reachable as device memory (with the MMU off, every
    /// address is), and nothing else may drive the UART while this handle is used.
    pub const unsafe fn new(base: usize) -> Self {
        // SAFETY: forwarded from the caller.
        Self { registers: unsafe { Mmio::new(base) } }
    }

    /// Programs 115200 8N1 from a UART clock of `clock_hz`.
    pub fn init(&self, clock_hz: u32) {
        configure(&self.registers, clock_hz);
    }

    /// Writes `bytes`, waiting for room in the transmit FIFO.
    pub fn write_bytes(&self, bytes: &[u8]) {
        bytes.iter().for_each(|&byte| put(&self.registers, byte));
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
        (!registers.FR.is_set(FR::RXFE)).then(|| registers.DR.read(DR::DATA) as u8)
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

    #[test]
    fn mask_updates_set_and_clear_bits() {
        let register = AtomicU32::new(0);
        let mask = InterruptMask::new(0);
        let write = |value| register.store(value, Ordering::SeqCst);
        mask.update(0b0111_0000, 0, write);
        mask.update(0, 0b0010_0000, write);
        mask.update(0b0010_0000, 0b0001_0000, write);
        assert_eq!((mask.wanted(), register.load(Ordering::SeqCst)), (0b0110_0000, 0b0110_0000));
    }

    /// Writers on several threads change disjoint bits, and one of them is interrupted in the
    /// middle of its register write by another change (as the IRQ handler interrupts the
    /// console loop): once all are done, the register holds exactly the wanted bits.
    #[test]
    fn concurrent_mask_writers_leave_the_register_right() {
        use std::sync::Arc;
        for round in 0..200u32 {
            let register = Arc::new(AtomicU32::new(0));
            let mask = Arc::new(InterruptMask::new(0));
            let threads: Vec<_> = (0..4u32)
                .map(|thread| {
                    let (register, mask) = (Arc::clone(&register), Arc::clone(&mask));
                    std::thread::spawn(move || {
                        let bit = 1 << thread;
                        for step in 0..200u32 {
                            let write = |value| {
                                // A stale value can land late: yield between reading and writing.
                                if (step + round) % 7 == 0 {
                                    std::thread::yield_now();
                                }
                                register.store(value, Ordering::SeqCst);
                            };
                            if step % 2 == 0 {
                                mask.update(bit, 0, write);
                            } else {
                                mask.update(0, bit, write);
                            }
                        }
                        // Threads 0 and 2 end with their bit set, 1 and 3 with it cleared.
                        if thread % 2 == 0 {
                            mask.update(bit, 0, |value| register.store(value, Ordering::SeqCst));
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|thread| thread.join().unwrap());
            assert_eq!(mask.wanted(), 0b0101);
            assert_eq!(register.load(Ordering::SeqCst), 0b0101, "round {round}");
        }
    }

    /// The handler case: a change made while another write is half done (value computed, not
    /// yet written) is not undone by the late write.
    #[test]
    fn a_change_inside_a_write_survives_the_late_write() {
        let register = AtomicU32::new(0);
        let mask = InterruptMask::new(0b0011_0000);
        let interrupted = core::cell::Cell::new(false);
        mask.update(0b0010_0000, 0, |value| {
            if !interrupted.replace(true) {
                // The "handler" masks receive (bit 4) before the interrupted write lands.
                mask.update(0, 0b0001_0000, |inner| register.store(inner, Ordering::SeqCst));
            }
            register.store(value, Ordering::SeqCst);
        });
        assert_eq!(register.load(Ordering::SeqCst), 0b0010_0000);
    }
}
