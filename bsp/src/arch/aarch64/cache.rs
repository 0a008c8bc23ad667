//! Data cache maintenance by address to the point of coherency, for devices that read and
//! write RAM without seeing the cores' caches (the BCM2835 DMA engine).
//!
//! On a real Pi the Cortex-A53 caches are not coherent with the DMA engine: a buffer a device
//! reads must be cleaned first (dirty lines written back), and a buffer a device wrote must be
//! invalidated afterwards (stale lines dropped). QEMU models no caches, so there these are
//! plain instructions with no visible effect; the code is for the hardware.

/// The cache lines covering `[address, address + length)`: the first line's address and the
/// number of lines. `line` is the smallest data cache line (a power of two, from CTR_EL0).
pub fn lines(address: usize, length: usize, line: usize) -> (usize, usize) {
    if length == 0 {
        return (address & !(line - 1), 0);
    }
    let first = address & !(line - 1);
    let end = address.saturating_add(length).next_multiple_of(line);
    (first, (end - first) / line)
}

#[cfg(target_arch = "aarch64")]
mod imp {
    use super::lines;
    use aarch64_cpu::asm::barrier;

    /// Writes back every dirty line of the range to the point of coherency, so a device reads
    /// what the cores wrote. The lines stay valid in the cache.
    pub fn clean_to_coherency(address: usize, length: usize, line: usize) {
        let (first, count) = lines(address, length, line);
        for index in 0..count {
            let at = first + index * line;
            // SAFETY: cleaning a line only writes its dirty data back to memory; the memory's
            // contents as the cores see them do not change. DC CVAC is allowed at EL1.
            unsafe { core::arch::asm!("dc cvac, {}", in(reg) at, options(nostack, preserves_flags)) };
        }
        barrier::dsb(barrier::SY);
    }

    /// Writes back and then drops every line of the range, so no dirty line can later be
    /// evicted on top of what a device writes there.
    pub fn clean_and_invalidate(address: usize, length: usize, line: usize) {
        let (first, count) = lines(address, length, line);
        for index in 0..count {
            let at = first + index * line;
            // SAFETY: clean-and-invalidate writes dirty data back before dropping the line,
            // so nothing the cores wrote is lost. DC CIVAC is allowed at EL1.
            unsafe { core::arch::asm!("dc civac, {}", in(reg) at, options(nostack, preserves_flags)) };
        }
        barrier::dsb(barrier::SY);
    }

    /// Drops every line of the range without writing it back, so the next reads fetch what a
    /// device wrote to memory.
    ///
    /// # Safety
    /// `address` and `length` must be multiples of `line`, and the cores must hold no data in
    /// the range that is newer than memory and still wanted (a device has just overwritten it).
    pub unsafe fn invalidate(address: usize, length: usize, line: usize) {
        debug_assert!(address.is_multiple_of(line) && length.is_multiple_of(line));
        let (first, count) = lines(address, length, line);
        for index in 0..count {
            let at = first + index * line;
            // SAFETY: the caller guarantees whole lines whose cached contents are stale; DC
            // IVAC is allowed at EL1 (SCTLR_EL1.UCI is irrelevant there).
            unsafe { core::arch::asm!("dc ivac, {}", in(reg) at, options(nostack, preserves_flags)) };
        }
        barrier::dsb(barrier::SY);
    }
}

#[cfg(not(target_arch = "aarch64"))]
mod imp {
    /// Host stand-in: a fence.
    pub fn clean_to_coherency(_address: usize, _length: usize, _line: usize) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
    /// Host stand-in: a fence.
    pub fn clean_and_invalidate(_address: usize, _length: usize, _line: usize) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
    /// Host stand-in: a fence.
    ///
    /// # Safety
    /// None on the host; the contract is that of the aarch64 version.
    pub unsafe fn invalidate(_address: usize, _length: usize, _line: usize) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

pub use imp::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cover_the_range_and_no_more() {
        assert_eq!(lines(0x1000, 64, 64), (0x1000, 1));
        assert_eq!(lines(0x1001, 64, 64), (0x1000, 2));
        assert_eq!(lines(0x103F, 1, 64), (0x1000, 1));
        assert_eq!(lines(0x1040, 0, 64), (0x1040, 0));
        assert_eq!(lines(0x1000, 4096, 64), (0x1000, 64));
    }
}
