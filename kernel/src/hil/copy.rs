//! `CopyEngine`: a device that copies memory to memory while the cores go on computing (the
//! BCM2835 DMA engine on the Pi).
//!
//! The contract is start / poll / wait over one copy at a time. Addresses are the cores'
//! physical addresses (identity-mapped); the driver translates them to whatever its bus needs
//! and does any cache maintenance the copy requires. Starting a copy is `unsafe`: the engine
//! writes memory behind the compiler's back, so the caller promises the ranges are real memory
//! that nothing else touches until the copy is finished. `mm::copy::stage_copy` wraps it, leaving
//! its caller one promise: never to leak the staged copy.

#![allow(unsafe_code)]

use core::fmt;

/// One memory-to-memory copy: `length` bytes from `source` to `destination`, both physical
/// addresses of RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRequest {
    /// Physical address of the first byte read.
    pub source: u64,
    /// Physical address of the first byte written.
    pub destination: u64,
    /// Bytes to copy.
    pub length: u64,
}

/// What an engine can take: every request must satisfy all of these, or [`check_request`]
/// names the first it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyConstraints {
    /// The source address must be a multiple of this (a power of two).
    pub source_alignment: u64,
    /// The destination address must be a multiple of this (a power of two). An engine that
    /// invalidates the destination from the cores' caches needs whole cache lines here.
    pub destination_alignment: u64,
    /// The length must be a multiple of this (a power of two).
    pub length_granule: u64,
    /// The longest single copy in bytes.
    pub max_length: u64,
    /// Both ranges must end at or below this physical address (the engine's bus window).
    pub reachable_end: u64,
}

/// Whether the copy in flight has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    /// The engine is still copying.
    Busy,
    /// The copy has finished and every byte is visible to the cores.
    Done,
}

/// Why a copy was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyError {
    /// The request copies nothing.
    Empty,
    /// An address is not aligned as the engine requires.
    Misaligned {
        /// Which end of the copy: "source" or "destination".
        which: &'static str,
        /// The address given.
        address: u64,
        /// The alignment required.
        alignment: u64,
    },
    /// The length is not a multiple of the engine's granule.
    BadLength {
        /// The length given.
        length: u64,
        /// The granule required.
        granule: u64,
    },
    /// The length is more than one copy can move.
    TooLong {
        /// The length given.
        length: u64,
        /// The longest copy.
        max_length: u64,
    },
    /// A range reaches past the memory the engine can address (or wraps around).
    OutOfReach {
        /// Which end of the copy: "source" or "destination".
        which: &'static str,
        /// The range's first byte.
        address: u64,
        /// The range's length.
        length: u64,
    },
    /// The source and destination ranges overlap.
    Overlap,
    /// A copy is already in flight; wait for it first.
    Busy,
    /// There is no copy to poll or wait for.
    Idle,
    /// The copy did not finish before its deadline.
    Timeout,
    /// The engine reported an error; `status` is its raw error state for the log.
    Device {
        /// The engine's error bits.
        status: u32,
    },
}

impl fmt::Display for CopyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::Empty => write!(formatter, "copy of zero bytes"),
            CopyError::Misaligned { which, address, alignment } => {
                write!(formatter, "{which} {address:#x} is not {alignment}-byte aligned")
            }
            CopyError::BadLength { length, granule } => {
                write!(formatter, "length {length} is not a multiple of {granule} bytes")
            }
            CopyError::TooLong { length, max_length } => {
                write!(formatter, "length {length} is more than one copy can move ({max_length})")
            }
            CopyError::OutOfReach { which, address, length } => {
                write!(formatter, "{which} {address:#x} + {length} is outside the engine's reach")
            }
            CopyError::Overlap => write!(formatter, "source and destination overlap"),
            CopyError::Busy => write!(formatter, "a copy is already in flight"),
            CopyError::Idle => write!(formatter, "no copy is in flight"),
            CopyError::Timeout => write!(formatter, "the copy did not finish in time"),
            CopyError::Device { status } => write!(formatter, "the copy engine reported error {status:#x}"),
        }
    }
}

/// Checks `request` against `constraints`; every engine calls it before starting a copy.
pub fn check_request(request: &CopyRequest, constraints: &CopyConstraints) -> Result<(), CopyError> {
    let CopyRequest { source, destination, length } = *request;
    if length == 0 {
        return Err(CopyError::Empty);
    }
    for (which, address, alignment) in [
        ("source", source, constraints.source_alignment),
        ("destination", destination, constraints.destination_alignment),
    ] {
        if !address.is_multiple_of(alignment.max(1)) {
            return Err(CopyError::Misaligned { which, address, alignment });
        }
    }
    if !length.is_multiple_of(constraints.length_granule.max(1)) {
        return Err(CopyError::BadLength { length, granule: constraints.length_granule });
    }
    if length > constraints.max_length {
        return Err(CopyError::TooLong { length, max_length: constraints.max_length });
    }
    for (which, address) in [("source", source), ("destination", destination)] {
        match address.checked_add(length) {
            Some(end) if end <= constraints.reachable_end => {}
            _ => return Err(CopyError::OutOfReach { which, address, length }),
        }
    }
    if source < destination + length && destination < source + length {
        return Err(CopyError::Overlap);
    }
    Ok(())
}

/// A memory-to-memory copy engine. One copy is in flight at a time.
pub trait CopyEngine {
    /// What requests this engine accepts.
    fn constraints(&self) -> CopyConstraints;

    /// Starts copying `request`, after checking it with [`check_request`] (a refused request
    /// leaves the engine idle). Returns as soon as the engine runs; the copy goes on while
    /// the core computes.
    ///
    /// # Safety
    /// Both ranges must be RAM, mapped for as long as the copy runs. Until [`poll`] has
    /// returned [`CopyStatus::Done`] (or [`wait`] has returned), nothing may read or write
    /// the destination range, and nothing may write the source range.
    ///
    /// [`poll`]: CopyEngine::poll
    /// [`wait`]: CopyEngine::wait
    unsafe fn start(&mut self, request: CopyRequest) -> Result<(), CopyError>;

    /// Whether the copy in flight has finished. Once it returns `Done` (or an error) the
    /// engine is idle again, and a second poll returns [`CopyError::Idle`].
    fn poll(&mut self) -> Result<CopyStatus, CopyError>;

    /// Waits, bounded by the engine's own timeout, until the copy in flight finishes. When it
    /// returns, with or without an error, the engine is idle: a failed or overdue copy has
    /// been stopped, so the destination is no longer written.
    fn wait(&mut self) -> Result<(), CopyError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONSTRAINTS: CopyConstraints = CopyConstraints {
        source_alignment: 4,
        destination_alignment: 64,
        length_granule: 64,
        max_length: 1 << 30,
        reachable_end: 1 << 30,
    };

    fn request(source: u64, destination: u64, length: u64) -> CopyRequest {
        CopyRequest { source, destination, length }
    }

    #[test]
    fn each_constraint_has_its_own_error() {
        let check = |r| check_request(&r, &CONSTRAINTS);
        assert_eq!(check(request(0x1000, 0x2000, 0x1000)), Ok(()));
        assert_eq!(check(request(0x1000, 0x2000, 0)), Err(CopyError::Empty));
        assert_eq!(
            check(request(0x1002, 0x2000, 64)),
            Err(CopyError::Misaligned { which: "source", address: 0x1002, alignment: 4 })
        );
        assert_eq!(
            check(request(0x1004, 0x2020, 64)),
            Err(CopyError::Misaligned { which: "destination", address: 0x2020, alignment: 64 })
        );
        assert_eq!(
            check(request(0x1000, 0x2000, 100)),
            Err(CopyError::BadLength { length: 100, granule: 64 })
        );
        assert_eq!(
            check(request(0, 1 << 31, 1 << 31)),
            Err(CopyError::TooLong { length: 1 << 31, max_length: 1 << 30 })
        );
        assert_eq!(
            check(request(0x1000, (1 << 30) - 64, 128)),
            Err(CopyError::OutOfReach { which: "destination", address: (1 << 30) - 64, length: 128 })
        );
        assert_eq!(check(request(0x1000, 0x1040, 0x100)), Err(CopyError::Overlap));
        assert_eq!(
            CopyError::Misaligned { which: "source", address: 0x1002, alignment: 4 }.to_string(),
            "source 0x1002 is not 4-byte aligned"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the numbers, the check never panics, and an accepted request meets every
        /// constraint.
        #[test]
        fn accepted_requests_meet_every_constraint(
            source in any::<u64>(),
            destination in any::<u64>(),
            length in any::<u64>(),
        ) {
            let r = request(source, destination, length);
            if check_request(&r, &CONSTRAINTS).is_ok() {
                prop_assert!(length > 0 && length % 64 == 0 && length <= CONSTRAINTS.max_length);
                prop_assert!(source % 4 == 0 && destination % 64 == 0);
                prop_assert!(source + length <= 1 << 30 && destination + length <= 1 << 30);
                prop_assert!(source + length <= destination || destination + length <= source);
            }
        }
    }
}
