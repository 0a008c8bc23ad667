//! BCM2835 DMA engine: one full (non-lite) channel driven as a memory-to-memory
//! [`kernel::hil::CopyEngine`].
//!
//! A copy is described by a 32-byte control block in the non-cacheable DMA region (the
//! kernel's `DmaPool` hands it out); the channel fetches the block over the VideoCore bus, so
//! every address the engine sees is a bus address, not an ARM physical one.
//!
//! Bus addresses: the VideoCore bus sees SDRAM four times, at 0x00000000, 0x40000000,
//! 0x80000000 and 0xC0000000, with different VideoCore L2 cache behaviour. On a real Pi 2/3
//! the ARM's own accesses bypass the VideoCore L2, so DMA must use the 0xC0000000 alias
//! ("direct, uncached") to stay coherent with the cores; Linux's BCM2837 device tree maps DMA
//! the same way. QEMU's raspi machines map RAM at all four aliases of the DMA engine's address
//! space and model no cache, so any alias works there; this driver always uses 0xC0000000,
//! which is right for both.
//!
//! Cache maintenance: the A53's caches are not coherent with the engine. Before a copy the
//! source is cleaned to the point of coherency and the destination cleaned and invalidated;
//! after it the destination is invalidated again (the core may have fetched lines
//! speculatively meanwhile). The destination must therefore be whole cache lines, which the
//! engine's constraints demand. Buffers in the non-cacheable DMA region skip all of it. QEMU
//! models no caches, but the code is what the hardware needs.

use crate::{
    arch::aarch64::cache,
    board::rpi3::memory_map::{BUS_UNCACHED, DMA, PERIPHERALS},
    mmio::Mmio,
};
use core::ops::Range;
use kernel::hil::{Clock, CopyConstraints, CopyEngine, CopyError, CopyRequest, CopyStatus, check_request};
use tock_registers::{
    LocalRegisterCopy,
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_bitfields! {
    u32,
    /// Channel control and status.
    CS [
        /// The channel is running (write 1 to start, 0 to pause).
        ACTIVE OFFSET(0) NUMBITS(1) [],
        /// The transfer is complete (write 1 to clear).
        END OFFSET(1) NUMBITS(1) [],
        /// The channel raised its interrupt (write 1 to clear).
        INT OFFSET(2) NUMBITS(1) [],
        /// The peripheral's DREQ line.
        DREQ OFFSET(3) NUMBITS(1) [],
        /// The channel is paused.
        PAUSED OFFSET(4) NUMBITS(1) [],
        /// The channel is held by a DREQ.
        DREQ_STOPS_DMA OFFSET(5) NUMBITS(1) [],
        /// Writes are still outstanding on the bus.
        WAITING_FOR_OUTSTANDING_WRITES OFFSET(6) NUMBITS(1) [],
        /// An error is flagged in the DEBUG register.
        ERROR OFFSET(8) NUMBITS(1) [],
        /// AXI priority of normal transactions.
        PRIORITY OFFSET(16) NUMBITS(4) [],
        /// AXI priority of panic transactions.
        PANIC_PRIORITY OFFSET(20) NUMBITS(4) [],
        /// Wait for every write's response before ending the transfer.
        WAIT_FOR_OUTSTANDING_WRITES OFFSET(28) NUMBITS(1) [],
        /// Keep running while a debugger halts the VideoCore.
        DISDEBUG OFFSET(29) NUMBITS(1) [],
        /// Abort the current control block (self-clearing).
        ABORT OFFSET(30) NUMBITS(1) [],
        /// Reset the channel (self-clearing).
        RESET OFFSET(31) NUMBITS(1) []
    ],
    /// Transfer information: the first word of a control block.
    TI [
        /// Interrupt when this block completes.
        INTEN OFFSET(0) NUMBITS(1) [],
        /// Two-dimensional (stride) mode.
        TDMODE OFFSET(1) NUMBITS(1) [],
        /// Wait for each write's response.
        WAIT_RESP OFFSET(3) NUMBITS(1) [],
        /// Increment the destination address.
        DEST_INC OFFSET(4) NUMBITS(1) [],
        /// Destination transfer width.
        DEST_WIDTH OFFSET(5) NUMBITS(1) [Bits32 = 0, Bits128 = 1],
        /// Gate writes on the peripheral's DREQ.
        DEST_DREQ OFFSET(6) NUMBITS(1) [],
        /// Do not write.
        DEST_IGNORE OFFSET(7) NUMBITS(1) [],
        /// Increment the source address.
        SRC_INC OFFSET(8) NUMBITS(1) [],
        /// Source transfer width.
        SRC_WIDTH OFFSET(9) NUMBITS(1) [Bits32 = 0, Bits128 = 1],
        /// Gate reads on the peripheral's DREQ.
        SRC_DREQ OFFSET(10) NUMBITS(1) [],
        /// Do not read (write zeros).
        SRC_IGNORE OFFSET(11) NUMBITS(1) [],
        /// Burst length in words, minus one.
        BURST_LENGTH OFFSET(12) NUMBITS(4) [],
        /// Peripheral whose DREQ paces the transfer (0: none, continuous).
        PERMAP OFFSET(16) NUMBITS(5) [],
        /// Dummy cycles after each write.
        WAITS OFFSET(21) NUMBITS(5) [],
        /// Do not issue wide writes as two-beat bursts.
        NO_WIDE_BURSTS OFFSET(26) NUMBITS(1) []
    ],
    /// Channel debug and error state.
    DEBUG [
        /// The AXI read-last signal was missing (write 1 to clear).
        READ_LAST_NOT_SET_ERROR OFFSET(0) NUMBITS(1) [],
        /// The read FIFO overflowed or underflowed (write 1 to clear).
        FIFO_ERROR OFFSET(1) NUMBITS(1) [],
        /// A read returned an AXI error (write 1 to clear).
        READ_ERROR OFFSET(2) NUMBITS(1) [],
        /// Writes in flight.
        OUTSTANDING_WRITES OFFSET(4) NUMBITS(4) [],
        /// The channel's AXI id.
        DMA_ID OFFSET(8) NUMBITS(8) [],
        /// The state machine's state.
        DMA_STATE OFFSET(16) NUMBITS(9) [],
        /// Engine version.
        VERSION OFFSET(25) NUMBITS(3) [],
        /// A lite channel (shorter transfers, no 2D mode, narrow).
        LITE OFFSET(28) NUMBITS(1) []
    ]
}

register_structs! {
    /// One channel's registers. TI to NEXTCONBK mirror the control block being run.
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub ChannelRegisters {
        (0x00 => CS: ReadWrite<u32, CS::Register>),
        (0x04 => CONBLK_AD: ReadWrite<u32>),
        (0x08 => TI: ReadOnly<u32, TI::Register>),
        (0x0C => SOURCE_AD: ReadOnly<u32>),
        (0x10 => DEST_AD: ReadOnly<u32>),
        (0x14 => TXFR_LEN: ReadOnly<u32>),
        (0x18 => STRIDE: ReadOnly<u32>),
        (0x1C => NEXTCONBK: ReadOnly<u32>),
        (0x20 => DEBUG: ReadWrite<u32, DEBUG::Register>),
        (0x24 => _reserved),
        (0x100 => @END),
    }
}

register_structs! {
    /// The block of channels 0-14 with the global interrupt status and enable registers
    /// (channel 15 sits elsewhere and is not used).
    #[expect(non_snake_case, reason = "fields carry the register names of the datasheet, in upper case")]
    pub Registers {
        (0x000 => CHANNELS: [ChannelRegisters; CHANNELS]),
        (0xF00 => _reserved0),
        (0xFE0 => INT_STATUS: ReadWrite<u32>),
        (0xFE4 => _reserved1),
        (0xFF0 => ENABLE: ReadWrite<u32>),
        (0xFF4 => @END),
    }
}

/// Channels in the main register block.
pub const CHANNELS: usize = 15;
/// The DMA block's ARM physical address.
pub const DMA_BASE: usize = DMA;
/// Channel 5: a full channel (channels 7-14 are lite) that the firmware leaves to the ARM
/// (its device tree's `brcm,dma-channel-mask` is 0x7f35 on the Pi 3).
pub const DEFAULT_CHANNEL: usize = 5;
/// Alignment the engine needs for a control block.
pub const CONTROL_BLOCK_ALIGNMENT: u64 = 32;
/// Largest length in a full channel's 30-bit TXFR_LEN.
const MAX_TRANSFER_LENGTH: u64 = (1 << 30) - 1;
/// ARM physical memory the engine reaches through the bus alias: everything below the
/// peripherals (on the BCM2711 the legacy channels reach the same first GiB).
const REACHABLE_END: u64 = PERIPHERALS as u64;
/// A copy times out after this, plus [`TIMEOUT_US_PER_MIB`] for each MiB.
const TIMEOUT_BASE_US: u64 = 10_000;
/// Per MiB allowance: 20 ms, i.e. a floor of 50 MB/s (the engine does several hundred).
const TIMEOUT_US_PER_MIB: u64 = 20_000;
/// A channel reset must finish within this.
const RESET_TIMEOUT_US: u64 = 1_000;
/// AXI priorities for normal and panic transactions (the middle of the range and the top).
const PRIORITY: u32 = 8;
const PANIC_PRIORITY: u32 = 15;

/// A control block as the engine reads it from memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct ControlBlock {
    /// Transfer information ([`TI`]).
    pub transfer_information: u32,
    /// Source bus address.
    pub source: u32,
    /// Destination bus address.
    pub destination: u32,
    /// Length in bytes.
    pub length: u32,
    /// 2D-mode strides (unused: zero).
    pub stride: u32,
    /// Bus address of the next control block, or zero for the last.
    pub next: u32,
    /// Reserved; must be zero.
    pub reserved: [u32; 2],
}

/// Why the engine could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaSetupError {
    /// The channel number is not 0-14.
    NoSuchChannel(usize),
    /// The channel is a lite channel, too short for tensor copies.
    LiteChannel(usize),
    /// The control block's address is not 32-byte aligned.
    MisalignedControlBlock(u64),
    /// The control block is outside the memory the engine reaches.
    UnreachableControlBlock(u64),
    /// The channel did not come out of reset in time.
    ResetTimeout,
}

/// ARM physical address → VideoCore bus address through the uncached ("direct") alias, or
/// `None` when the address is outside the SDRAM the bus alias covers.
pub fn bus_address(physical: u64) -> Option<u32> {
    (physical < REACHABLE_END).then_some(physical as u32 | BUS_UNCACHED)
}

/// The engine's constraints for a machine whose smallest data cache line is `cache_line` and
/// whose addresses below `ram_end` are RAM at the same physical addresses (the memory plan's
/// `ram_map.low`: past it, a Pi 4's arena is RAM above 1 GiB, which the engine cannot reach,
/// and whose addresses are not its physical ones).
pub fn constraints(cache_line: u64, ram_end: u64) -> CopyConstraints {
    CopyConstraints {
        // The engine moves 32-bit words (QEMU loops on 4-byte steps too).
        source_alignment: 4,
        // Whole lines, so invalidating the destination never drops a neighbour's data.
        destination_alignment: cache_line,
        length_granule: cache_line,
        max_length: MAX_TRANSFER_LENGTH / cache_line * cache_line,
        reachable_end: REACHABLE_END.min(ram_end),
    }
}

/// The transfer information for a plain memory-to-memory copy: both addresses increment,
/// 128-bit reads and writes, write responses awaited, no DREQ pacing, no interrupt.
fn copy_transfer_information() -> u32 {
    let mut information = LocalRegisterCopy::<u32, TI::Register>::new(0);
    information.write(
        TI::SRC_INC::SET
            + TI::DEST_INC::SET
            + TI::SRC_WIDTH::Bits128
            + TI::DEST_WIDTH::Bits128
            + TI::WAIT_RESP::SET
            + TI::PERMAP.val(0),
    );
    information.get()
}

/// A channel of the DMA engine, its control block, and the clock its waits are bounded by.
pub struct DmaEngine<'clock> {
    registers: Mmio<Registers>,
    channel: usize,
    control_block: *mut ControlBlock,
    control_block_bus: u32,
    clock: &'clock dyn Clock,
    cache_line: u64,
    uncached: Range<u64>,
    ram_end: u64,
    in_flight: Option<InFlight>,
}

/// The copy a channel is running.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    request: CopyRequest,
    deadline: kernel::hil::Deadline,
}

impl<'clock> DmaEngine<'clock> {
    /// A driver for `channel` of the engine at `base`, using the control block at the ARM
    /// physical address `control_block`. Enables and resets the channel. Buffers wholly inside
    /// `uncached` (the non-cacheable DMA region) need no cache maintenance, and get none.
    /// Copies reach only below `ram_end` (see [`constraints`]).
    ///
    /// # Safety
    /// `base` must be the DMA block ([`DMA_BASE`]), mapped as device memory, and no other
    /// driver may use `channel`. `control_block` must be 32 bytes of non-cacheable memory
    /// (from the DMA pool), used by nothing else while the driver lives. `cache_line` must be
    /// the smallest data cache line (CTR_EL0). `uncached` must be mapped non-cacheable on
    /// every core (or be empty). Every address below `ram_end` must be identity-mapped.
    pub unsafe fn new(
        base: usize,
        channel: usize,
        control_block: u64,
        clock: &'clock dyn Clock,
        cache_line: u64,
        uncached: Range<u64>,
        ram_end: u64,
    ) -> Result<Self, DmaSetupError> {
        if channel >= CHANNELS {
            return Err(DmaSetupError::NoSuchChannel(channel));
        }
        if !control_block.is_multiple_of(CONTROL_BLOCK_ALIGNMENT) {
            return Err(DmaSetupError::MisalignedControlBlock(control_block));
        }
        let size = core::mem::size_of::<ControlBlock>() as u64;
        let control_block_bus = bus_address(control_block)
            .filter(|_| control_block.saturating_add(size) <= REACHABLE_END.min(ram_end))
            .ok_or(DmaSetupError::UnreachableControlBlock(control_block))?;
        let engine = Self {
            // SAFETY: forwarded from the caller.
            registers: unsafe { Mmio::new(base) },
            channel,
            control_block: control_block as *mut ControlBlock,
            control_block_bus,
            clock,
            cache_line,
            uncached,
            ram_end,
            in_flight: None,
        };
        if engine.channel().DEBUG.is_set(DEBUG::LITE) {
            return Err(DmaSetupError::LiteChannel(channel));
        }
        let enabled = engine.registers.ENABLE.get();
        engine.registers.ENABLE.set(enabled | 1 << channel);
        engine.reset()?;
        Ok(engine)
    }

    /// The channel number.
    pub fn channel_number(&self) -> usize {
        self.channel
    }

    fn channel(&self) -> &ChannelRegisters {
        &self.registers.CHANNELS[self.channel]
    }

    /// Resets the channel and clears its end, interrupt and error flags.
    fn reset(&self) -> Result<(), DmaSetupError> {
        let channel = self.channel();
        channel.CS.write(CS::RESET::SET);
        let deadline = self.clock.deadline_after_us(RESET_TIMEOUT_US);
        while channel.CS.is_set(CS::ACTIVE) {
            if deadline.passed(self.clock) {
                return Err(DmaSetupError::ResetTimeout);
            }
            core::hint::spin_loop();
        }
        channel.CS.write(CS::END::SET + CS::INT::SET);
        channel
            .DEBUG
            .write(DEBUG::READ_LAST_NOT_SET_ERROR::SET + DEBUG::FIFO_ERROR::SET + DEBUG::READ_ERROR::SET);
        Ok(())
    }

    /// Stops a copy that failed or overran its deadline, leaving the channel idle.
    fn stop(&mut self) {
        self.in_flight = None;
        let channel = self.channel();
        channel.CS.write(CS::ABORT::SET);
        // A reset that does not finish leaves the channel reporting busy; the next start sees
        // it (CopyError::Busy), so the result can be ignored here.
        let _ = self.reset();
    }

    /// The error bits of the channel, if it reports an error.
    fn error_status(&self) -> Option<u32> {
        let channel = self.channel();
        if !channel.CS.is_set(CS::ERROR) {
            return None;
        }
        let debug = channel.DEBUG.extract();
        let errors = debug.read(DEBUG::READ_LAST_NOT_SET_ERROR)
            | debug.read(DEBUG::FIFO_ERROR) << 1
            | debug.read(DEBUG::READ_ERROR) << 2;
        Some(errors)
    }

    /// Whether `[address, address + length)` is cacheable memory, so needs maintenance.
    fn cacheable(&self, address: u64, length: u64) -> bool {
        !(self.uncached.start <= address && address + length <= self.uncached.end)
    }

    fn finish(&mut self, request: CopyRequest) {
        self.in_flight = None;
        self.channel().CS.write(CS::END::SET);
        if !self.cacheable(request.destination, request.length) {
            return;
        }
        // SAFETY: the constraints made the destination whole cache lines, and `start`'s
        // contract reserved it for the engine, which has just overwritten all of it: no line
        // holds data the cores still want.
        unsafe {
            cache::invalidate(request.destination as usize, request.length as usize, self.cache_line as usize)
        };
    }
}

impl Drop for DmaEngine<'_> {
    /// Stops a copy still in flight, so the channel does not outlive its driver.
    fn drop(&mut self) {
        if self.in_flight.is_some() {
            self.stop();
        }
    }
}

// SAFETY: the control block and channel are owned by this driver alone (see `new`), and every
// access goes through `&mut self` or reads registers; moving it to another core is fine.
unsafe impl Send for DmaEngine<'_> {}

impl CopyEngine for DmaEngine<'_> {
    fn constraints(&self) -> CopyConstraints {
        constraints(self.cache_line, self.ram_end)
    }

    unsafe fn start(&mut self, request: CopyRequest) -> Result<(), CopyError> {
        check_request(&request, &self.constraints())?;
        if self.in_flight.is_some() || self.channel().CS.is_set(CS::ACTIVE) {
            return Err(CopyError::Busy);
        }
        // check_request kept both ranges below the reach, so both translate.
        let translate = |which: &'static str, address: u64| {
            bus_address(address).ok_or(CopyError::OutOfReach { which, address, length: request.length })
        };
        let source = translate("source", request.source)?;
        let destination = translate("destination", request.destination)?;
        let line = self.cache_line as usize;
        if self.cacheable(request.source, request.length) {
            cache::clean_to_coherency(request.source as usize, request.length as usize, line);
        }
        if self.cacheable(request.destination, request.length) {
            cache::clean_and_invalidate(request.destination as usize, request.length as usize, line);
        }
        let block = ControlBlock {
            transfer_information: copy_transfer_information(),
            source,
            destination,
            length: request.length as u32,
            stride: 0,
            next: 0,
            reserved: [0; 2],
        };
        // SAFETY: `new`'s contract: 32 aligned bytes of non-cacheable memory that only this
        // driver uses, and the channel is idle (checked above), so the engine is not reading it.
        unsafe { self.control_block.write_volatile(block) };
        barrier();
        let timeout_us = TIMEOUT_BASE_US + request.length.div_ceil(1 << 20) * TIMEOUT_US_PER_MIB;
        self.in_flight = Some(InFlight { request, deadline: self.clock.deadline_after_us(timeout_us) });
        let channel = self.channel();
        channel.CONBLK_AD.set(self.control_block_bus);
        channel.CS.write(
            CS::ACTIVE::SET
                + CS::WAIT_FOR_OUTSTANDING_WRITES::SET
                + CS::PRIORITY.val(PRIORITY)
                + CS::PANIC_PRIORITY.val(PANIC_PRIORITY),
        );
        Ok(())
    }

    fn poll(&mut self) -> Result<CopyStatus, CopyError> {
        let Some(InFlight { request, deadline }) = self.in_flight else { return Err(CopyError::Idle) };
        if let Some(status) = self.error_status() {
            self.stop();
            return Err(CopyError::Device { status });
        }
        let status = self.channel().CS.extract();
        if status.is_set(CS::ACTIVE) {
            if deadline.passed(self.clock) {
                self.stop();
                return Err(CopyError::Timeout);
            }
            return Ok(CopyStatus::Busy);
        }
        if !status.is_set(CS::END) {
            // Idle without having ended: the channel was stopped from outside.
            self.stop();
            return Err(CopyError::Device { status: status.get() });
        }
        barrier();
        self.finish(request);
        Ok(CopyStatus::Done)
    }

    fn wait(&mut self) -> Result<(), CopyError> {
        loop {
            match self.poll()? {
                CopyStatus::Done => return Ok(()),
                CopyStatus::Busy => core::hint::spin_loop(),
            }
        }
    }
}

/// Orders control-block and buffer writes before the register write that starts the engine,
/// and the engine's completion before the core reads the destination.
fn barrier() {
    #[cfg(target_arch = "aarch64")]
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_addresses_use_the_uncached_alias() {
        assert_eq!(bus_address(0), Some(0xC000_0000));
        assert_eq!(bus_address(0x0020_0040), Some(0xC020_0040));
        assert_eq!(bus_address(0x3EFF_FFFF), Some(0xFEFF_FFFF));
        assert_eq!(bus_address(0x3F00_0000), None, "peripherals are not RAM");
        assert_eq!(bus_address(0x1_0000_0000), None);
    }

    #[test]
    fn a_copy_block_increments_both_sides_without_pacing() {
        let information = LocalRegisterCopy::<u32, TI::Register>::new(copy_transfer_information());
        assert!(information.is_set(TI::SRC_INC) && information.is_set(TI::DEST_INC));
        assert!(information.matches_all(TI::SRC_WIDTH::Bits128 + TI::DEST_WIDTH::Bits128));
        assert_eq!(information.read(TI::PERMAP), 0);
        assert!(!information.is_set(TI::TDMODE) && !information.is_set(TI::INTEN));
        assert_eq!(core::mem::size_of::<ControlBlock>(), 32);
        assert_eq!(core::mem::align_of::<ControlBlock>(), 32);
    }

    #[test]
    fn constraints_ask_for_whole_lines_below_the_peripherals() {
        let limits = constraints(64, 1 << 30);
        assert_eq!(limits.destination_alignment, 64);
        assert_eq!(limits.max_length % 64, 0);
        assert!(limits.max_length < 1 << 30);
        assert_eq!(limits.reachable_end, 0x3F00_0000);
        // Below the end of the identity-mapped RAM (a Pi 4's arena goes on above it).
        assert_eq!(constraints(64, 0x3C00_0000).reachable_end, 0x3C00_0000);
    }
}
