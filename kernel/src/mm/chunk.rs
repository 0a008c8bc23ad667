//! Chunk allocator: large, long-lived blocks (model weights) over one address range.
//!
//! The allocator manages addresses only; its metadata lives on the kernel heap, so it runs on
//! the host without touching the memory it hands out.

#![forbid(unsafe_code)]

use super::error::{MemError, align_up};
use super::stats::{PoolCounters, PoolStatistics};
use alloc::collections::{BTreeMap, BTreeSet};

/// A live allocation: the block it holds and what the caller asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Allocation {
    block_size: u64,
    requested: u64,
}

/// Where in the range [`ChunkAllocator::alloc_at`] places a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Best fit by size, lowest address among equal sizes, at the bottom of the chosen block
    /// (what [`ChunkAllocator::alloc`] does).
    BestFit,
    /// Packed from the bottom of the range upward: the lowest free block that fits among the
    /// [`EXTREME_CANDIDATES`] lowest, at its bottom; failing that, best fit.
    Low,
    /// Packed from the top of the range downward: the highest free block that fits among the
    /// [`EXTREME_CANDIDATES`] highest, at its top; failing that, best fit (highest address
    /// among equal sizes), at the top of the chosen block.
    High,
    /// [`Placement::Low`] or [`Placement::High`], whichever end of the range touches the
    /// larger free block (low on a tie). A model staged while another is live goes to the end
    /// away from it, so the two never interleave and the free space between them stays one
    /// block when either is freed (double-buffered hot-swap).
    Apart,
}

/// How many free blocks at one end of the range [`Placement::Low`] and [`Placement::High`]
/// look at before falling back to best fit; a constant, so placement stays O(log n).
pub const EXTREME_CANDIDATES: usize = 4;

/// An address-ordered, coalescing allocator for big blocks, with optional 2 MiB (or any
/// power-of-two) alignment.
///
/// Policy ([`ChunkAllocator::alloc`]): best fit by size, lowest address among equal sizes;
/// if the smallest fitting block cannot meet the alignment, the smallest block that is large
/// enough for any alignment padding is taken instead, so no search goes past two look-ups.
/// [`ChunkAllocator::alloc_at`] can instead pack a generation of blocks from either end of
/// the range ([`Placement`]).
///
/// Invariants (checked by the property tests):
/// - every block, free or live, starts and ends on a multiple of the granule;
/// - free blocks never overlap or touch one another (neighbours are always merged), and the
///   free-by-address and free-by-size indexes hold the same blocks;
/// - free bytes + reserved bytes = capacity;
/// - a live block's base satisfies the alignment asked for it.
///
/// Time bounds, for `n` free blocks and `m` live blocks: `alloc` and `alloc_at` O(log n),
/// `free` O(log n + log m), statistics O(log n).
#[derive(Debug)]
pub struct ChunkAllocator {
    name: &'static str,
    base: u64,
    size: u64,
    granule: u64,
    free_by_address: BTreeMap<u64, u64>,
    free_by_size: BTreeSet<(u64, u64)>,
    live: BTreeMap<u64, Allocation>,
    counters: PoolCounters,
}

impl ChunkAllocator {
    /// An allocator named `name` over `[base, base + size)`. Blocks are multiples of
    /// `granule` (a power of two); the range is trimmed inward to granule boundaries.
    pub fn new(name: &'static str, base: u64, size: u64, granule: u64) -> Result<Self, MemError> {
        if !granule.is_power_of_two() {
            return Err(MemError::BadAlignment { pool: name, alignment: granule });
        }
        let start = align_up(base, granule).ok_or(MemError::ZeroSize { pool: name })?;
        let end = base.saturating_add(size) & !(granule - 1);
        let size = end.saturating_sub(start);
        let mut allocator = Self {
            name,
            base: start,
            size,
            granule,
            free_by_address: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            live: BTreeMap::new(),
            counters: PoolCounters::default(),
        };
        if size > 0 {
            allocator.insert_free(start, size);
        }
        Ok(allocator)
    }

    /// The pool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The block granule.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Allocates `size` bytes whose base is a multiple of `alignment` (at least the granule).
    /// Returns the base address.
    pub fn alloc(&mut self, size: u64, alignment: u64) -> Result<u64, MemError> {
        self.alloc_at(size, alignment, Placement::BestFit)
    }

    /// Like [`ChunkAllocator::alloc`], placed as `placement` says.
    pub fn alloc_at(&mut self, size: u64, alignment: u64, placement: Placement) -> Result<u64, MemError> {
        let result = self.carve(size, alignment, placement);
        if result.is_err() {
            self.counters.failures += 1;
        }
        result
    }

    /// Like [`ChunkAllocator::alloc`], then clears the block by calling `zero(base, length)`.
    /// The memory itself is the caller's to touch, so clearing is the caller's hook; the
    /// bytes cleared are counted in [`PoolCounters::zeroed_bytes`].
    pub fn alloc_zeroed(
        &mut self,
        size: u64,
        alignment: u64,
        zero: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, MemError> {
        let base = self.alloc(size, alignment)?;
        zero(base, size);
        self.counters.zeroed_bytes += size;
        Ok(base)
    }

    /// The end of the range that touches the larger free block: [`Placement::Low`] or
    /// [`Placement::High`] (low on a tie, and when nothing is free).
    pub fn roomier_end(&self) -> Placement {
        let end = self.base + self.size;
        let low = self.free_by_address.first_key_value().filter(|&(&base, _)| base == self.base);
        let high = self.free_by_address.last_key_value().filter(|&(&base, &size)| base + size == end);
        if high.map_or(0, |(_, &size)| size) > low.map_or(0, |(_, &size)| size) {
            Placement::High
        } else {
            Placement::Low
        }
    }

    fn carve(&mut self, size: u64, alignment: u64, placement: Placement) -> Result<u64, MemError> {
        let name = self.name;
        if size == 0 {
            return Err(MemError::ZeroSize { pool: name });
        }
        if !alignment.is_power_of_two() {
            return Err(MemError::BadAlignment { pool: name, alignment });
        }
        let alignment = alignment.max(self.granule);
        let too_large = MemError::TooLarge { pool: name, requested: size, limit: self.size };
        let block_size = align_up(size, self.granule).ok_or(too_large)?;
        if block_size > self.size {
            return Err(too_large);
        }
        let fits = |&(free_size, free_base): &(u64, u64)| {
            align_up(free_base, alignment)
                .is_some_and(|aligned| aligned + block_size <= free_base + free_size)
        };
        let placement = if placement == Placement::Apart { self.roomier_end() } else { placement };
        let high = placement == Placement::High;
        // Low and High: the first fitting block among the few at their end of the range.
        let extreme = match placement {
            Placement::Low => self
                .free_by_address
                .iter()
                .take(EXTREME_CANDIDATES)
                .map(|(&base, &size)| (size, base))
                .find(fits),
            Placement::High => self
                .free_by_address
                .iter()
                .rev()
                .take(EXTREME_CANDIDATES)
                .map(|(&base, &size)| (size, base))
                .find(fits),
            Placement::BestFit | Placement::Apart => None,
        };
        // Best fit: the smallest block that fits as is; failing that, the smallest block with
        // room for the worst-case padding, which always fits. Among equal sizes the lowest
        // address, or the highest for High.
        let smallest_from = |minimum: u64| {
            let (size, base) = *self.free_by_size.range((minimum, 0)..).next()?;
            if high {
                self.free_by_size.range((size, base)..=(size, u64::MAX)).next_back().copied()
            } else {
                Some((size, base))
            }
        };
        let chosen = extreme.or_else(|| smallest_from(block_size).filter(fits)).or_else(|| {
            let padded = block_size.checked_add(alignment - self.granule)?;
            smallest_from(padded).filter(fits)
        });
        let Some((free_size, free_base)) = chosen else {
            return Err(MemError::OutOfMemory {
                pool: name,
                requested: size,
                free: self.free_bytes(),
                largest_free: self.largest_free(),
            });
        };
        self.remove_free(free_base, free_size);
        let aligned = if high {
            (free_base + free_size - block_size) & !(alignment - 1)
        } else {
            align_up(free_base, alignment).unwrap_or(free_base)
        };
        if aligned > free_base {
            self.insert_free(free_base, aligned - free_base);
        }
        let tail = free_base + free_size - (aligned + block_size);
        if tail > 0 {
            self.insert_free(aligned + block_size, tail);
        }
        self.live.insert(aligned, Allocation { block_size, requested: size });
        self.counters.record_allocation(size, block_size);
        Ok(aligned)
    }

    /// Frees the block at `base`, merging it with free neighbours. Returns the bytes the
    /// caller had requested. A second free of the same block is a [`MemError::DoubleFree`]; an
    /// address that is not a live block's base is a [`MemError::ForeignFree`].
    pub fn free(&mut self, base: u64) -> Result<u64, MemError> {
        let Some(allocation) = self.live.remove(&base) else {
            self.counters.bad_frees += 1;
            let inside_free = self
                .free_by_address
                .range(..=base)
                .next_back()
                .is_some_and(|(&start, &len)| base < start + len);
            return Err(if inside_free {
                MemError::DoubleFree { pool: self.name, address: base }
            } else {
                MemError::ForeignFree { pool: self.name, address: base }
            });
        };
        let mut start = base;
        let mut size = allocation.block_size;
        if let Some((&previous, &previous_size)) = self.free_by_address.range(..base).next_back()
            && previous + previous_size == base
        {
            self.remove_free(previous, previous_size);
            start = previous;
            size += previous_size;
        }
        if let Some(&next_size) = self.free_by_address.get(&(base + allocation.block_size)) {
            self.remove_free(base + allocation.block_size, next_size);
            size += next_size;
        }
        self.insert_free(start, size);
        self.counters.record_free(allocation.requested, allocation.block_size);
        Ok(allocation.requested)
    }

    /// The live block at `base`, as `(block size, requested size)`.
    pub fn allocation(&self, base: u64) -> Option<(u64, u64)> {
        self.live.get(&base).map(|allocation| (allocation.block_size, allocation.requested))
    }

    /// Whether `[address, address + length)` lies inside the managed range.
    pub fn contains(&self, address: u64, length: u64) -> bool {
        address >= self.base && address.saturating_add(length) <= self.base + self.size
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.size - self.counters.reserved_bytes
    }

    /// The largest free block.
    pub fn largest_free(&self) -> u64 {
        self.free_by_size.last().map_or(0, |&(size, _)| size)
    }

    /// Number of free blocks.
    pub fn free_block_count(&self) -> usize {
        self.free_by_address.len()
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> PoolStatistics {
        PoolStatistics {
            name: self.name,
            base: self.base,
            capacity: self.size,
            counters: self.counters,
            free_bytes: self.free_bytes(),
            largest_free: self.largest_free(),
        }
    }

    fn insert_free(&mut self, base: u64, size: u64) {
        self.free_by_address.insert(base, size);
        self.free_by_size.insert((size, base));
    }

    fn remove_free(&mut self, base: u64, size: u64) {
        self.free_by_address.remove(&base);
        self.free_by_size.remove(&(size, base));
    }

    /// Checks every invariant in the type's documentation; for tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.free_by_address.len(), self.free_by_size.len());
        let mut previous_end = None;
        let mut free_total = 0;
        for (&base, &size) in &self.free_by_address {
            assert!(self.free_by_size.contains(&(size, base)));
            assert!(size > 0 && base % self.granule == 0 && size % self.granule == 0);
            if let Some(end) = previous_end {
                assert!(base > end, "free blocks at {end:#x} and {base:#x} touch or overlap");
            }
            previous_end = Some(base + size);
            free_total += size;
        }
        let reserved: u64 = self.live.values().map(|allocation| allocation.block_size).sum();
        let requested: u64 = self.live.values().map(|allocation| allocation.requested).sum();
        assert_eq!(reserved, self.counters.reserved_bytes);
        assert_eq!(requested, self.counters.live_bytes);
        assert_eq!(free_total + reserved, self.size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn aligned_weights_land_on_two_mebibytes() {
        let mut chunk = ChunkAllocator::new("weights", 0x4020_0000 + 4096, 64 * MIB, 4096).unwrap();
        let small = chunk.alloc(MIB, 4096).unwrap();
        let big = chunk.alloc(5 * MIB, 2 * MIB).unwrap();
        assert_eq!(big % (2 * MIB), 0);
        assert!(small + MIB <= big || big + 5 * MIB <= small);
        chunk.check_invariants();
        assert_eq!(chunk.free(big), Ok(5 * MIB));
        assert_eq!(chunk.free(big), Err(MemError::DoubleFree { pool: "weights", address: big }));
        assert_eq!(
            chunk.free(small + 4096),
            Err(MemError::ForeignFree { pool: "weights", address: small + 4096 })
        );
        assert_eq!(chunk.free(small), Ok(MIB));
        assert_eq!(chunk.free_block_count(), 1);
    }

    #[test]
    fn zeroing_goes_through_the_hook_and_is_counted() {
        let mut chunk = ChunkAllocator::new("weights", 0, 16 * MIB, 4096).unwrap();
        let mut cleared = Vec::new();
        let base =
            chunk.alloc_zeroed(3 * MIB, 2 * MIB, &mut |start, length| cleared.push((start, length))).unwrap();
        assert_eq!(cleared, [(base, 3 * MIB)]);
        assert_eq!(chunk.statistics().counters.zeroed_bytes, 3 * MIB);
        chunk.alloc(MIB, 4096).unwrap();
        assert_eq!(chunk.statistics().counters.zeroed_bytes, 3 * MIB, "plain allocations are not counted");
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut chunk = ChunkAllocator::new("weights", 0, 8 * MIB, 4096).unwrap();
        assert_eq!(chunk.alloc(0, 4096), Err(MemError::ZeroSize { pool: "weights" }));
        assert_eq!(chunk.alloc(MIB, 3), Err(MemError::BadAlignment { pool: "weights", alignment: 3 }));
        assert!(matches!(chunk.alloc(u64::MAX, 4096), Err(MemError::TooLarge { .. })));
        assert!(matches!(chunk.alloc(9 * MIB, 4096), Err(MemError::TooLarge { .. })));
        chunk.alloc(6 * MIB, 4096).unwrap();
        assert!(matches!(
            chunk.alloc(4 * MIB, 4096),
            Err(MemError::OutOfMemory { free, largest_free, .. }) if free == 2 * MIB && largest_free == 2 * MIB
        ));
        assert_eq!(chunk.statistics().counters.failures, 5);
    }

    #[test]
    fn high_placement_packs_down_from_the_top() {
        let mut chunk = ChunkAllocator::new("weights", 0, 64 * MIB, 4096).unwrap();
        let first = chunk.alloc_at(3 * MIB, 2 * MIB, Placement::High).unwrap();
        assert_eq!(first, 60 * MIB, "the highest 2 MiB boundary with room for 3 MiB");
        let second = chunk.alloc_at(5 * MIB + 4096, 2 * MIB, Placement::High).unwrap();
        assert_eq!(second, 54 * MIB);
        // A small block fills the padding gap above the first block, not the bottom.
        let small = chunk.alloc_at(MIB, 4096, Placement::High).unwrap();
        assert_eq!(small, 63 * MIB);
        let low = chunk.alloc_at(3 * MIB, 2 * MIB, Placement::Low).unwrap();
        assert_eq!(low, 0);
        chunk.check_invariants();
        assert_eq!(chunk.allocation(second), Some((5 * MIB + 4096, 5 * MIB + 4096)));
        for base in [first, second, small, low] {
            chunk.free(base).unwrap();
        }
        assert_eq!(chunk.free_block_count(), 1);
    }

    #[test]
    fn staged_generations_alternate_ends_and_leave_one_free_block() {
        let mut chunk = ChunkAllocator::new("weights", 0x20_0000, 100 * MIB, 4096).unwrap();
        assert_eq!(chunk.roomier_end(), Placement::Low, "a tie goes low");
        let mut active = chunk.alloc_at(30 * MIB, 2 * MIB, Placement::Apart).unwrap();
        assert_eq!(active, 0x20_0000);
        for (model, expected_end) in [(40, Placement::High), (35, Placement::Low), (20, Placement::High)] {
            assert_eq!(chunk.roomier_end(), expected_end);
            let staged = chunk.alloc_at(model * MIB, 2 * MIB, Placement::Apart).unwrap();
            match expected_end {
                Placement::High => assert_eq!(staged + model * MIB, 0x20_0000 + 100 * MIB),
                _ => assert_eq!(staged, 0x20_0000),
            }
            chunk.free(active).unwrap();
            assert_eq!(chunk.free_block_count(), 1, "one model live, one free block");
            assert_eq!(chunk.statistics().fragmentation_permille(), 0);
            active = staged;
        }
        chunk.check_invariants();
    }

    #[test]
    fn placements_fall_back_to_best_fit_and_fail_cleanly() {
        let mut chunk = ChunkAllocator::new("weights", 0, 16 * MIB, 4096).unwrap();
        let blocks: Vec<u64> = (0..16).map(|_| chunk.alloc(MIB, 4096).unwrap()).collect();
        // Free holes of 1 MiB at the ends and one of 2 MiB in the middle.
        for index in [0, 2, 4, 6, 11, 13, 15, 8, 9] {
            chunk.free(blocks[index]).unwrap();
        }
        // The four free blocks at each end are 1 MiB: a 2 MiB request falls back to best fit.
        assert_eq!(chunk.alloc_at(2 * MIB, 4096, Placement::High), Ok(8 * MIB));
        assert_eq!(chunk.alloc_at(MIB, 4096, Placement::High), Ok(15 * MIB));
        assert_eq!(chunk.alloc_at(MIB, 4096, Placement::Low), Ok(0));
        assert!(matches!(
            chunk.alloc_at(2 * MIB, 4096, Placement::Apart),
            Err(MemError::OutOfMemory { largest_free, .. }) if largest_free == MIB
        ));
        chunk.check_invariants();
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Alloc { size: u64, align_log2: u32, placement: Placement },
        Free { pick: usize },
    }

    fn operation() -> impl Strategy<Value = Operation> {
        let placement = prop_oneof![
            Just(Placement::BestFit),
            Just(Placement::Low),
            Just(Placement::High),
            Just(Placement::Apart),
        ];
        prop_oneof![
            3 => (1u64..12 * MIB, 12u32..23, placement)
                .prop_map(|(size, align_log2, placement)| Operation::Alloc { size, align_log2, placement }),
            2 => any::<usize>().prop_map(|pick| Operation::Free { pick }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_traces_keep_every_invariant(
            operations in proptest::collection::vec(operation(), 1..120),
            offset_pages in 0u64..512,
        ) {
            let base = 0x1000_0000 + offset_pages * 4096;
            let mut chunk = ChunkAllocator::new("weights", base, 64 * MIB, 4096).unwrap();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for operation in operations {
                match operation {
                    Operation::Alloc { size, align_log2, placement } => {
                        let alignment = 1 << align_log2;
                        match chunk.alloc_at(size, alignment, placement) {
                            Ok(address) => {
                                prop_assert_eq!(address % alignment, 0);
                                prop_assert!(chunk.contains(address, size));
                                for &(other, other_size) in &live {
                                    prop_assert!(address + size <= other || other + other_size <= address);
                                }
                                live.push((address, size));
                            }
                            Err(MemError::OutOfMemory { free, .. }) => {
                                prop_assert_eq!(free, chunk.free_bytes());
                            }
                            Err(other) => prop_assert!(false, "unexpected {:?}", other),
                        }
                    }
                    Operation::Free { pick } => {
                        if live.is_empty() {
                            continue;
                        }
                        let (address, size) = live.swap_remove(pick % live.len());
                        prop_assert_eq!(chunk.free(address), Ok(size));
                        let double_free = chunk.free(address);
                        prop_assert!(
                            matches!(double_free, Err(MemError::DoubleFree { .. })),
                            "double free not caught: {:?}", double_free
                        );
                    }
                }
                chunk.check_invariants();
            }
            let foreign = chunk.free(base - 4096);
            prop_assert!(matches!(foreign, Err(MemError::ForeignFree { .. })), "{:?}", foreign);
            for (address, size) in live {
                prop_assert_eq!(chunk.free(address), Ok(size));
            }
            chunk.check_invariants();
            prop_assert_eq!(chunk.free_block_count(), 1, "freeing everything leaves one block");
            prop_assert_eq!(chunk.statistics().fragmentation_permille(), 0);
        }
    }
}
