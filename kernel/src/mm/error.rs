//! `MemError`: every way a tensor-memory operation can fail, each with a readable message.

#![forbid(unsafe_code)]

use super::layout::RegionKind;
use core::fmt;

/// Why an allocation, a free or a pool construction failed. No pool operation panics; each
/// failure is one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// A request for zero bytes.
    ZeroSize {
        /// The pool asked.
        pool: &'static str,
    },
    /// An alignment that is not a power of two.
    BadAlignment {
        /// The pool asked.
        pool: &'static str,
        /// The alignment given.
        alignment: u64,
    },
    /// The request is larger than anything this pool hands out.
    TooLarge {
        /// The pool asked.
        pool: &'static str,
        /// Bytes requested.
        requested: u64,
        /// The largest request the pool accepts.
        limit: u64,
    },
    /// No free block is large enough.
    OutOfMemory {
        /// The pool asked.
        pool: &'static str,
        /// Bytes requested.
        requested: u64,
        /// Bytes free in the pool.
        free: u64,
        /// The largest free block.
        largest_free: u64,
    },
    /// The address is already free.
    DoubleFree {
        /// The pool asked.
        pool: &'static str,
        /// The address given.
        address: u64,
    },
    /// The address was never handed out by this pool (outside it, or not a block start).
    ForeignFree {
        /// The pool asked.
        pool: &'static str,
        /// The address given.
        address: u64,
    },
    /// The allocation could not finish before its deadline; nothing was allocated.
    DeadlineMissed {
        /// The pool asked.
        pool: &'static str,
        /// The deadline, in clock ticks.
        deadline_ticks: u64,
        /// When the allocation would have finished (or did), in clock ticks.
        finish_ticks: u64,
    },
    /// A pool was given a region it cannot be built over.
    UnusableRegion {
        /// The pool being built.
        pool: &'static str,
        /// The region's kind.
        kind: RegionKind,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A core index at or past the number of per-core caches.
    NoSuchCore {
        /// The index given.
        core: usize,
        /// The number of cores the pool was built for.
        cores: usize,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemError::ZeroSize { pool } => write!(formatter, "{pool}: a request for zero bytes"),
            MemError::BadAlignment { pool, alignment } => {
                write!(formatter, "{pool}: alignment {alignment} is not a power of two")
            }
            MemError::TooLarge { pool, requested, limit } => write!(
                formatter,
                "{pool}: {} requested but this pool hands out at most {}",
                Bytes(requested),
                Bytes(limit)
            ),
            MemError::OutOfMemory { pool, requested, free, largest_free } => write!(
                formatter,
                "{pool}: out of memory: {} requested, {} free, largest free block {}",
                Bytes(requested),
                Bytes(free),
                Bytes(largest_free)
            ),
            MemError::DoubleFree { pool, address } => {
                write!(formatter, "{pool}: double free of {address:#x}")
            }
            MemError::ForeignFree { pool, address } => {
                write!(formatter, "{pool}: {address:#x} is not a block this pool handed out")
            }
            MemError::DeadlineMissed { pool, deadline_ticks, finish_ticks } => write!(
                formatter,
                "{pool}: allocation would finish at tick {finish_ticks}, after its deadline at tick {deadline_ticks}"
            ),
            MemError::UnusableRegion { pool, kind, reason } => {
                write!(formatter, "{pool}: cannot use the {} region: {reason}", kind.name())
            }
            MemError::NoSuchCore { core, cores } => {
                write!(formatter, "core {core} has no cache (built for {cores} cores)")
            }
        }
    }
}

/// A byte count printed with a binary unit (`512 B`, `4.0 KiB`, `280.0 MiB`, `1.5 GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return formatter.pad(&alloc::format!("{} B", self.0));
        }
        let mut unit = 0;
        let mut scale: u64 = 1024;
        while unit + 1 < UNITS.len() && self.0 >= scale * 1024 {
            scale *= 1024;
            unit += 1;
        }
        // One decimal, computed in integers so no float formatting is needed.
        let tenths = (u128::from(self.0) * 10 + u128::from(scale) / 2) / u128::from(scale);
        formatter.pad(&alloc::format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit]))
    }
}

/// `value` rounded up to a multiple of `alignment` (a power of two), or `None` on overflow.
pub fn align_up(value: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    value.checked_add(alignment - 1).map(|sum| sum & !(alignment - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn bytes_print_with_binary_units() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(4096).to_string(), "4.0 KiB");
        assert_eq!(Bytes(280 << 20).to_string(), "280.0 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn errors_read_plainly() {
        let error =
            MemError::OutOfMemory { pool: "kv-cache", requested: 1 << 20, free: 4096, largest_free: 4096 };
        assert_eq!(
            error.to_string(),
            "kv-cache: out of memory: 1.0 MiB requested, 4.0 KiB free, largest free block 4.0 KiB"
        );
        assert_eq!(
            MemError::DoubleFree { pool: "slab", address: 0x1000 }.to_string(),
            "slab: double free of 0x1000"
        );
    }

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(0, 64), Some(0));
        assert_eq!(align_up(65, 64), Some(128));
        assert_eq!(align_up(u64::MAX, 64), None);
    }
}
