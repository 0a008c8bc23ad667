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

    /// Runs the data cache instruction `$operation` (`cvac`, `civac` or `ivac`) on `$count`
    /// lines of `$line` bytes from `$first`: four lines per loop step through four address
    /// registers (2.5 instructions a line), then the remainder one by one.
    macro_rules! by_line {
        ($operation:literal, $first:expr, $count:expr, $line:expr) => {{
            let (first, count, line): (usize, usize, usize) = ($first, $count, $line);
            let steps = count / 4;
            if steps > 0 {
                // SAFETY: cleaning (`cvac`, `civac`) never changes what memory holds, so it is
                // sound on any mapped address (an unmapped one faults as a load would); for
                // `ivac` the caller of `invalidate` promises the lines hold nothing to keep
                // (its `# Safety`). The loop touches exactly `4 * steps` lines from `first`
                // and changes only the declared registers and the flags.
                unsafe {
                    core::arch::asm!(
                        "2:",
                        concat!("dc ", $operation, ", {a0}"),
                        concat!("dc ", $operation, ", {a1}"),
                        concat!("dc ", $operation, ", {a2}"),
                        concat!("dc ", $operation, ", {a3}"),
                        "add {a0}, {a0}, {stride}",
                        "add {a1}, {a1}, {stride}",
                        "add {a2}, {a2}, {stride}",
                        "add {a3}, {a3}, {stride}",
                        "subs {steps}, {steps}, #1",
                        "b.ne 2b",
                        a0 = inout(reg) first => _,
                        a1 = inout(reg) first + line => _,
                        a2 = inout(reg) first + 2 * line => _,
                        a3 = inout(reg) first + 3 * line => _,
                        stride = in(reg) 4 * line,
                        steps = inout(reg) steps => _,
                        options(nostack),
                    );
                }
            }
            for index in steps * 4..count {
                let at = first + index * line;
                // SAFETY: as above, for one of the remaining lines.
                unsafe { core::arch::asm!(concat!("dc ", $operation, ", {}"), in(reg) at, options(nostack)) };
            }
        }};
    }

    /// Writes back every dirty line of the range to the point of coherency, so a device reads
    /// what the cores wrote. The lines stay valid in the cache.
    pub fn clean_to_coherency(address: usize, length: usize, line: usize) {
        let (first, count) = lines(address, length, line);
        // Cleaning only writes dirty data back to memory; what the cores read does not
        // change. DC CVAC is allowed at EL1.
        by_line!("cvac", first, count, line);
        barrier::dsb(barrier::SY);
    }

    /// Writes back and then drops every line of the range, so no dirty line can later be
    /// evicted on top of what a device writes there.
    pub fn clean_and_invalidate(address: usize, length: usize, line: usize) {
        let (first, count) = lines(address, length, line);
        // Clean-and-invalidate writes dirty data back before dropping a line, so nothing the
        // cores wrote is lost. DC CIVAC is allowed at EL1.
        by_line!("civac", first, count, line);
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
        // The caller guarantees whole lines whose cached contents are stale. DC IVAC is
        // allowed at EL1.
        by_line!("ivac", first, count, line);
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
