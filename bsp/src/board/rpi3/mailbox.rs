//! VideoCore mailbox property channel (BCM2837 and BCM2711): board revision, ARM memory, clock
//! rates, and the Pi 4 firmware's GPIO lines.
//!
//! The message buffer lives in memory the VideoCore reads directly: the DMA region
//! (non-cacheable), or any RAM before the MMU is on. Requests are bounded by a timeout on the
//! generic timer.

use crate::{board::rpi3::memory_map::BUS_UNCACHED, mmio::Mmio};
use kernel::hil::Clock;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, WriteOnly},
};

register_bitfields! {
    u32,
    /// Mailbox status.
    STATUS [
        /// Nothing to read.
        EMPTY OFFSET(30) NUMBITS(1) [],
        /// No room to write.
        FULL OFFSET(31) NUMBITS(1) []
    ]
}

register_structs! {
    /// Mailbox 0 (VideoCore to ARM) and mailbox 1 (ARM to VideoCore) registers.
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x00 => READ: ReadOnly<u32>),
        (0x04 => _reserved0),
        (0x18 => STATUS: ReadOnly<u32, STATUS::Register>),
        (0x1C => _reserved1),
        (0x20 => WRITE: WriteOnly<u32>),
        (0x24 => _reserved2),
        (0x38 => WRITE_STATUS: ReadOnly<u32, STATUS::Register>),
        (0x3C => @END),
    }
}

/// The property channel (ARM to VideoCore).
const PROPERTY_CHANNEL: u32 = 8;
const REQUEST: u32 = 0;
const RESPONSE_SUCCESS: u32 = 0x8000_0000;
const TAG_RESPONSE: u32 = 1 << 31;
const END_TAG: u32 = 0;
const TIMEOUT_US: u64 = 100_000;

/// Property tags this driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Tag {
    /// Board revision code.
    BoardRevision = 0x0001_0002,
    /// ARM memory: base and size.
    ArmMemory = 0x0001_0005,
    /// Rate of a clock, by clock id.
    ClockRate = 0x0003_0002,
    /// Drive one of the firmware's GPIO lines (the Pi 4's GPIO expander: lines 128 and up).
    SetGpioState = 0x0003_8041,
}

/// Clock ids for [`Tag::ClockRate`].
pub const CLOCK_UART: u32 = 2;

/// The Pi 4's firmware GPIO line that selects the SD card's I/O supply: 1 for 1.8 V, 0 for
/// 3.3 V (line 4 of the GPIO expander, which the firmware numbers from 128).
pub const EXPANDER_SD_IO_1V8: u32 = 128 + 4;

/// Why a mailbox call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxError {
    /// The VideoCore did not answer in time.
    Timeout,
    /// The VideoCore answered without the success code.
    Failed(u32),
    /// The answer to the tag is missing or too short.
    BadResponse,
}

/// Words in the message buffer (must fit the DMA page it lives in).
pub const BUFFER_WORDS: usize = 36;

/// The mailbox, with the address of its message buffer.
pub struct Mailbox {
    registers: Mmio<Registers>,
    buffer: *mut u32,
}

// SAFETY: the buffer pointer refers to memory owned by the mailbox alone (see `new`); callers
// serialise calls through `&mut self`.
unsafe impl Send for Mailbox {}

impl Mailbox {
    /// A driver for the block at `base`, using the 16-byte-aligned buffer at `buffer`.
    ///
    /// # Safety
    /// `base` must be the mailbox block, mapped as device memory. `buffer` must point to
    /// `BUFFER_WORDS` words, 16-byte aligned, below 1 GiB, that nothing else uses, and that the
    /// VideoCore sees without cache maintenance (non-cacheable, or MMU off).
    pub unsafe fn new(base: usize, buffer: *mut u32) -> Self {
        // SAFETY: forwarded from the caller.
        Self { registers: unsafe { Mmio::new(base) }, buffer }
    }

    /// Sends one property tag with `request` values and returns the response values.
    pub fn property<const N: usize>(
        &mut self,
        clock: &dyn Clock,
        tag: Tag,
        request: [u32; N],
    ) -> Result<[u32; N], MailboxError> {
        let mut message = [0u32; BUFFER_WORDS];
        message[1] = REQUEST;
        message[2] = tag as u32;
        message[3] = (N * 4) as u32;
        message[4] = 0;
        message[5..5 + N].copy_from_slice(&request);
        message[5 + N] = END_TAG;
        let length = 6 + N;
        message[0] = (length * 4) as u32;
        for (index, word) in message.iter().take(length).enumerate() {
            // SAFETY: `new` guarantees BUFFER_WORDS words at `buffer`; index < length ≤ that.
            unsafe { self.buffer.add(index).write_volatile(*word) };
        }
        self.call(clock)?;
        // SAFETY: as above; the VideoCore has written its answer into the same words.
        let read = |index: usize| unsafe { self.buffer.add(index).read_volatile() };
        match read(1) {
            RESPONSE_SUCCESS => {}
            code => return Err(MailboxError::Failed(code)),
        }
        let answer_length = read(4);
        if answer_length & TAG_RESPONSE == 0 || (answer_length & !TAG_RESPONSE) as usize > N * 4 {
            return Err(MailboxError::BadResponse);
        }
        Ok(core::array::from_fn(|index| read(5 + index)))
    }

    fn call(&mut self, clock: &dyn Clock) -> Result<(), MailboxError> {
        let address = (self.buffer as usize as u32 & 0x3FFF_FFFF) | BUS_UNCACHED;
        let deadline = clock.deadline_after_us(TIMEOUT_US);
        barrier();
        while self.registers.WRITE_STATUS.is_set(STATUS::FULL) {
            if deadline.passed(clock) {
                return Err(MailboxError::Timeout);
            }
        }
        self.registers.WRITE.set(address | PROPERTY_CHANNEL);
        loop {
            while self.registers.STATUS.is_set(STATUS::EMPTY) {
                if deadline.passed(clock) {
                    return Err(MailboxError::Timeout);
                }
            }
            if self.registers.READ.get() == address | PROPERTY_CHANNEL {
                barrier();
                return Ok(());
            }
        }
    }

    /// The board revision code.
    pub fn board_revision(&mut self, clock: &dyn Clock) -> Result<u32, MailboxError> {
        Ok(self.property(clock, Tag::BoardRevision, [0])?[0])
    }

    /// ARM memory as (base, size) in bytes.
    pub fn arm_memory(&mut self, clock: &dyn Clock) -> Result<(u32, u32), MailboxError> {
        let [base, size] = self.property(clock, Tag::ArmMemory, [0, 0])?;
        Ok((base, size))
    }

    /// Drives the firmware's GPIO line `line` to `state` (0 or 1).
    pub fn set_firmware_gpio(
        &mut self,
        clock: &dyn Clock,
        line: u32,
        state: u32,
    ) -> Result<(), MailboxError> {
        self.property(clock, Tag::SetGpioState, [line, state]).map(|_| ())
    }

    /// The rate of clock `id` in Hz.
    pub fn clock_rate(&mut self, clock: &dyn Clock, id: u32) -> Result<u32, MailboxError> {
        Ok(self.property(clock, Tag::ClockRate, [id, 0])?[1])
    }
}

/// Orders the buffer writes before the mailbox write, and the mailbox read before buffer reads.
fn barrier() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a full-system data synchronisation barrier has no memory-safety effect.
    unsafe {
        core::arch::asm!("dsb sy", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}
