//! Real-time pool: a two-level segregated-fit (TLSF) allocator for console protocol buffers,
//! with O(1) allocate and free and deadline-aware allocation.
//!
//! The pool owns its own region (the protocol region), so pressure on the tensor pools can
//! never fail an RT allocation. Block metadata lives in a table with one entry per granule,
//! allocated once at construction; the managed memory is never touched.

#![forbid(unsafe_code)]

use super::error::{MemError, align_up};
use super::stats::{PoolCounters, PoolStatistics};
use crate::hil::{Clock, Deadline};
use alloc::vec;
use alloc::vec::Vec;

/// log2 of the number of second-level classes per first-level class.
const SECOND_LEVEL_LOG2: u32 = 4;
/// Second-level classes per first-level class.
const SECOND_LEVELS: usize = 1 << SECOND_LEVEL_LOG2;
/// First-level classes: enough for any block of up to `u32::MAX` granules.
const FIRST_LEVELS: usize = 32 - SECOND_LEVEL_LOG2 as usize + 1;
/// End of an index-linked list.
const NONE: u32 = u32::MAX;

/// The free flag, kept in the top bit of a block entry's size word.
const FREE_FLAG: u32 = 1 << 31;

/// Metadata of the block that starts at one granule, in 16 bytes: size in granules (0 when no
/// block starts there) with the free flag in its top bit, the physical predecessor, and two
/// list links. A live block is on no list, so its `next_free` word holds the bytes its caller
/// requested instead.
#[derive(Clone, Copy, Debug, Default)]
struct BlockEntry {
    size_and_flag: u32,
    previous_physical: u32,
    next_free: u32,
    previous_free: u32,
}

impl BlockEntry {
    /// A block head of `size` granules after `previous_physical`, on no list.
    fn head(size: u32, previous_physical: u32, free: bool) -> Self {
        let flag = if free { FREE_FLAG } else { 0 };
        Self { size_and_flag: size | flag, previous_physical, next_free: NONE, previous_free: NONE }
    }

    fn size(&self) -> u32 {
        self.size_and_flag & !FREE_FLAG
    }

    fn set_size(&mut self, size: u32) {
        self.size_and_flag = (self.size_and_flag & FREE_FLAG) | size;
    }

    fn is_free(&self) -> bool {
        self.size_and_flag & FREE_FLAG != 0
    }

    fn set_free(&mut self, free: bool) {
        if free { self.size_and_flag |= FREE_FLAG } else { self.size_and_flag &= !FREE_FLAG }
    }

    /// Bytes requested for a live block.
    fn requested(&self) -> u32 {
        self.next_free
    }
}

/// The class `(first, second)` a block of `size` granules is filed under.
#[inline(always)]
fn class_of(size: u32) -> (usize, usize) {
    if size < SECOND_LEVELS as u32 {
        return (0, size as usize);
    }
    let top = 31 - size.leading_zeros();
    ((top - SECOND_LEVEL_LOG2 + 1) as usize, ((size >> (top - SECOND_LEVEL_LOG2)) as usize) ^ SECOND_LEVELS)
}

/// The first class whose every block holds `size` granules, or `None` past the largest.
fn class_at_least(size: u32) -> Option<(usize, usize)> {
    if size < SECOND_LEVELS as u32 {
        return Some(class_of(size));
    }
    let top = 31 - size.leading_zeros();
    let rounded = u64::from(size) + (1u64 << (top - SECOND_LEVEL_LOG2)) - 1;
    u32::try_from(rounded).ok().map(class_of)
}

/// A TLSF pool over one region.
///
/// Free blocks are filed in `FIRST_LEVELS × 16` size classes, each a doubly linked list
/// threaded through the block table; a bitmap of non-empty first-level classes and one of
/// non-empty second-level classes per first level find a fitting class with two
/// trailing-zero counts. Every block records the granule of its physical predecessor, and
/// its successor starts right after it, so both neighbours are found in O(1).
///
/// Invariants (checked by the property tests):
/// - blocks tile the pool exactly: each starts where its predecessor ends, and records it;
/// - no two free blocks are physical neighbours (frees merge eagerly);
/// - a free block is on exactly the list of its class, and the bitmaps mirror the lists;
/// - free granules + reserved granules = pool granules.
///
/// Time bounds: `alloc` and `free` run a fixed number of steps whatever the pool size: no
/// loop depends on the number of blocks or the pool size (one class computation, two bitmap
/// searches, at most two splits or two merges, each O(1) list surgery). A request is served
/// from a class whose every block fits, so the first block of the list always fits
/// ("good fit", as in TLSF). Compaction does not exist: nothing moves.
#[derive(Debug)]
pub struct RtPool {
    name: &'static str,
    base: u64,
    granule_shift: u32,
    granules: u32,
    blocks: Vec<BlockEntry>,
    first_bitmap: u32,
    second_bitmaps: [u32; FIRST_LEVELS],
    heads: [u32; FIRST_LEVELS * SECOND_LEVELS],
    free_granules: u64,
    counters: PoolCounters,
    worst_case_ticks: u64,
}

impl RtPool {
    /// A pool named `name` over `[base, base + size)` in blocks of `granule` bytes (a power of
    /// two). The table costs 16 bytes per granule, allocated here, never later.
    pub fn new(name: &'static str, base: u64, size: u64, granule: u64) -> Result<Self, MemError> {
        if !granule.is_power_of_two() {
            return Err(MemError::BadAlignment { pool: name, alignment: granule });
        }
        let granule_shift = granule.trailing_zeros();
        let start = align_up(base, granule).unwrap_or(u64::MAX);
        let end = base.saturating_add(size) & !(granule - 1);
        let granules = end.saturating_sub(start) >> granule_shift;
        let granules =
            u32::try_from(granules).ok().filter(|&count| count < FREE_FLAG).ok_or(MemError::TooLarge {
                pool: name,
                requested: size,
                limit: u64::from(FREE_FLAG - 1) << granule_shift,
            })?;
        let mut pool = Self {
            name,
            base: start.min(end),
            granule_shift,
            granules,
            blocks: vec![BlockEntry::default(); granules as usize],
            first_bitmap: 0,
            second_bitmaps: [0; FIRST_LEVELS],
            heads: [NONE; FIRST_LEVELS * SECOND_LEVELS],
            free_granules: u64::from(granules),
            counters: PoolCounters::default(),
            worst_case_ticks: 0,
        };
        if granules > 0 {
            pool.blocks[0] = BlockEntry::head(granules, NONE, true);
            pool.insert_free(0);
        }
        Ok(pool)
    }

    /// A granule for a pool of `size` bytes whose table has at most `max_entries` entries,
    /// and no smaller than `minimum` (a power of two, e.g. the cache line).
    pub fn granule_for(size: u64, max_entries: u64, minimum: u64) -> u64 {
        size.div_ceil(max_entries.max(1)).next_power_of_two().max(minimum)
    }

    /// The pool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The block granule in bytes.
    pub fn granule(&self) -> u64 {
        1 << self.granule_shift
    }

    /// Bytes managed.
    pub fn capacity(&self) -> u64 {
        u64::from(self.granules) << self.granule_shift
    }

    /// Allocates `size` bytes aligned to `alignment` (at least the granule). Returns the base.
    pub fn alloc(&mut self, size: u64, alignment: u64) -> Result<u64, MemError> {
        let result = self.take(size, alignment);
        if result.is_err() {
            self.counters.failures += 1;
        }
        result
    }

    /// Allocates like [`RtPool::alloc`], but only if the allocation finishes by `deadline` on
    /// `clock`. The pool remembers the longest allocation it has seen (in ticks); when even
    /// that would end past the deadline it refuses up front, and if an allocation still ends
    /// late it is undone. Either way the error is [`MemError::DeadlineMissed`] and nothing
    /// stays allocated.
    pub fn alloc_within(
        &mut self,
        size: u64,
        alignment: u64,
        deadline: Deadline,
        clock: &dyn Clock,
    ) -> Result<u64, MemError> {
        let start = clock.ticks();
        let predicted = start.saturating_add(self.worst_case_ticks);
        if predicted > deadline.at_ticks {
            self.counters.failures += 1;
            return Err(MemError::DeadlineMissed {
                pool: self.name,
                deadline_ticks: deadline.at_ticks,
                finish_ticks: predicted,
            });
        }
        let address = self.alloc(size, alignment)?;
        let finish = clock.ticks();
        self.worst_case_ticks = self.worst_case_ticks.max(finish.saturating_sub(start));
        if finish > deadline.at_ticks {
            // Undo; the block was just handed out, so the free cannot fail.
            let _ = self.free(address);
            self.counters.failures += 1;
            return Err(MemError::DeadlineMissed {
                pool: self.name,
                deadline_ticks: deadline.at_ticks,
                finish_ticks: finish,
            });
        }
        Ok(address)
    }

    /// The longest allocation seen by [`RtPool::alloc_within`], in clock ticks.
    pub fn worst_case_ticks(&self) -> u64 {
        self.worst_case_ticks
    }

    fn take(&mut self, size: u64, alignment: u64) -> Result<u64, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { pool: self.name });
        }
        if !alignment.is_power_of_two() {
            return Err(MemError::BadAlignment { pool: self.name, alignment });
        }
        let alignment = alignment.max(self.granule());
        // Granules by shift, not division: the granule is a power of two.
        let needed = (size >> self.granule_shift) + u64::from(size & (self.granule() - 1) != 0);
        let padding = (alignment >> self.granule_shift) - 1;
        let search = needed + padding;
        if search > u64::from(self.granules) || size > u64::from(u32::MAX) {
            return Err(MemError::TooLarge { pool: self.name, requested: size, limit: self.capacity() });
        }
        let search = search as u32;
        let needed = needed as u32;
        let Some((first, second)) =
            class_at_least(search).and_then(|(first, second)| self.find_fitting(first, second))
        else {
            return Err(MemError::OutOfMemory {
                pool: self.name,
                requested: size,
                free: self.free_granules << self.granule_shift,
                largest_free: self.largest_free(),
            });
        };
        let mut block = self.pop_head(first, second);
        // Only an alignment above the granule can need a free front part.
        if padding > 0 {
            let address = self.address_of(block);
            let front =
                ((align_up(address, alignment).unwrap_or(address) - address) >> self.granule_shift) as u32;
            if front > 0 {
                let rest = self.split(block, front);
                self.insert_free(block);
                block = rest;
            }
        }
        if self.blocks[block as usize].size() > needed {
            let tail = self.split(block, needed);
            self.insert_free(tail);
        }
        let entry = &mut self.blocks[block as usize];
        entry.set_free(false);
        entry.next_free = size as u32; // A live block keeps its requested size here.
        self.free_granules -= u64::from(needed);
        self.counters.record_allocation(size, u64::from(needed) << self.granule_shift);
        Ok(self.address_of(block))
    }

    /// Frees the block at `address`, merging it with free neighbours. Returns the bytes the
    /// caller had requested. A block freed twice is refused: as [`MemError::DoubleFree`]
    /// while it is still a free block of its own, or as [`MemError::ForeignFree`] once it
    /// has merged into a free neighbour (its address no longer starts a block).
    pub fn free(&mut self, address: u64) -> Result<u64, MemError> {
        let result = self.give_back(address);
        if result.is_err() {
            self.counters.bad_frees += 1;
        }
        result
    }

    fn give_back(&mut self, address: u64) -> Result<u64, MemError> {
        let foreign = MemError::ForeignFree { pool: self.name, address };
        let offset = address.checked_sub(self.base).ok_or(foreign)?;
        if offset & (self.granule() - 1) != 0 || offset >> self.granule_shift >= u64::from(self.granules) {
            return Err(foreign);
        }
        let mut block = (offset >> self.granule_shift) as u32;
        let entry = self.blocks[block as usize];
        if entry.size() == 0 {
            return Err(foreign);
        }
        if entry.is_free() {
            return Err(MemError::DoubleFree { pool: self.name, address });
        }
        self.blocks[block as usize].set_free(true);
        let next = block + entry.size();
        if next < self.granules && self.blocks[next as usize].is_free() {
            self.remove_free(next);
            self.absorb_next(block);
        }
        let previous = entry.previous_physical;
        if previous != NONE && self.blocks[previous as usize].is_free() {
            self.remove_free(previous);
            self.absorb_next(previous);
            block = previous;
        }
        self.insert_free(block);
        self.free_granules += u64::from(entry.size());
        self.counters
            .record_free(u64::from(entry.requested()), u64::from(entry.size()) << self.granule_shift);
        Ok(u64::from(entry.requested()))
    }

    /// The live block at `address`, as `(block size, requested size)`.
    pub fn allocation(&self, address: u64) -> Option<(u64, u64)> {
        let offset = address.checked_sub(self.base)?;
        let entry = self.blocks.get(usize::try_from(offset >> self.granule_shift).ok()?)?;
        (offset & (self.granule() - 1) == 0 && entry.size() > 0 && !entry.is_free())
            .then(|| (u64::from(entry.size()) << self.granule_shift, u64::from(entry.requested())))
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free_granules << self.granule_shift
    }

    /// The largest free block in bytes. It is in the highest non-empty class; that one list is
    /// walked, so this is for reports, not for the allocation path.
    pub fn largest_free(&self) -> u64 {
        if self.first_bitmap == 0 {
            return 0;
        }
        let first = (31 - self.first_bitmap.leading_zeros()) as usize;
        let second = (31 - self.second_bitmaps[first].leading_zeros()) as usize;
        let mut block = self.heads[first * SECOND_LEVELS + second];
        let mut largest = 0;
        while block != NONE {
            largest = largest.max(self.blocks[block as usize].size());
            block = self.blocks[block as usize].next_free;
        }
        u64::from(largest) << self.granule_shift
    }

    /// Number of blocks, free and live; O(blocks), for tests and reports.
    pub fn block_count(&self) -> (usize, usize) {
        let (mut free, mut live) = (0, 0);
        let mut block = 0;
        while block < self.granules {
            let entry = &self.blocks[block as usize];
            if entry.is_free() {
                free += 1
            } else {
                live += 1
            }
            block += entry.size().max(1);
        }
        (free, live)
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> PoolStatistics {
        PoolStatistics {
            name: self.name,
            base: self.base,
            capacity: self.capacity(),
            counters: self.counters,
            free_bytes: self.free_bytes(),
            largest_free: self.largest_free(),
        }
    }

    fn address_of(&self, block: u32) -> u64 {
        self.base + (u64::from(block) << self.granule_shift)
    }

    /// The first non-empty class at or above `(first, second)`.
    #[inline(always)]
    fn find_fitting(&self, first: usize, second: usize) -> Option<(usize, usize)> {
        let mut first = first;
        let mut seconds = self.second_bitmaps.get(first)? & (u32::MAX << second);
        if seconds == 0 {
            let firsts = self.first_bitmap & u32::MAX.checked_shl(first as u32 + 1).unwrap_or(0);
            if firsts == 0 {
                return None;
            }
            first = firsts.trailing_zeros() as usize;
            seconds = self.second_bitmaps[first];
        }
        Some((first, seconds.trailing_zeros() as usize))
    }

    /// Takes the first block off the non-empty list of class `(first, second)`: the
    /// allocation path's removal, which knows the class and that the block has no
    /// predecessor on its list.
    #[inline(always)]
    fn pop_head(&mut self, first: usize, second: usize) -> u32 {
        let list = first * SECOND_LEVELS + second;
        let block = self.heads[list];
        let next = self.blocks[block as usize].next_free;
        self.heads[list] = next;
        if next != NONE {
            self.blocks[next as usize].previous_free = NONE;
        } else {
            self.second_bitmaps[first] &= !(1 << second);
            if self.second_bitmaps[first] == 0 {
                self.first_bitmap &= !(1 << first);
            }
        }
        block
    }

    /// Splits `block` after `keep` granules; returns the new block holding the rest, which
    /// inherits the free flag and is on no list.
    #[inline(always)]
    fn split(&mut self, block: u32, keep: u32) -> u32 {
        let entry = self.blocks[block as usize];
        let rest = block + keep;
        self.blocks[rest as usize] = BlockEntry::head(entry.size() - keep, block, entry.is_free());
        let after = rest + entry.size() - keep;
        if after < self.granules {
            self.blocks[after as usize].previous_physical = rest;
        }
        self.blocks[block as usize].set_size(keep);
        rest
    }

    /// Merges the block after `block` into it. The absorbed block must be off its list.
    #[inline(always)]
    fn absorb_next(&mut self, block: u32) {
        let size = self.blocks[block as usize].size();
        let next = block + size;
        let next_size = self.blocks[next as usize].size();
        self.blocks[next as usize] = BlockEntry::default();
        self.blocks[block as usize].set_size(size + next_size);
        let after = next + next_size;
        if after < self.granules {
            self.blocks[after as usize].previous_physical = block;
        }
    }

    #[inline(always)]
    fn insert_free(&mut self, block: u32) {
        let (first, second) = class_of(self.blocks[block as usize].size());
        let list = first * SECOND_LEVELS + second;
        let head = self.heads[list];
        let entry = &mut self.blocks[block as usize];
        entry.set_free(true);
        entry.next_free = head;
        entry.previous_free = NONE;
        if head != NONE {
            self.blocks[head as usize].previous_free = block;
        }
        self.heads[list] = block;
        self.first_bitmap |= 1 << first;
        self.second_bitmaps[first] |= 1 << second;
    }

    #[inline(always)]
    fn remove_free(&mut self, block: u32) {
        let entry = self.blocks[block as usize];
        let (first, second) = class_of(entry.size());
        let list = first * SECOND_LEVELS + second;
        if entry.previous_free == NONE {
            self.heads[list] = entry.next_free;
        } else {
            self.blocks[entry.previous_free as usize].next_free = entry.next_free;
        }
        if entry.next_free != NONE {
            self.blocks[entry.next_free as usize].previous_free = entry.previous_free;
        }
        if self.heads[list] == NONE {
            self.second_bitmaps[first] &= !(1 << second);
            if self.second_bitmaps[first] == 0 {
                self.first_bitmap &= !(1 << first);
            }
        }
    }

    /// Checks every invariant in the type's documentation; for tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut block = 0;
        let mut previous = NONE;
        let mut free_granules = 0;
        let mut reserved = 0;
        let mut listed = std::collections::HashSet::new();
        while block < self.granules {
            let entry = self.blocks[block as usize];
            assert!(entry.size() > 0, "granule {block} starts no block");
            assert_eq!(entry.previous_physical, previous, "block {block} has a stale predecessor");
            if entry.is_free() {
                assert!(
                    previous == NONE || !self.blocks[previous as usize].is_free(),
                    "free neighbours at {block}"
                );
                free_granules += u64::from(entry.size());
                listed.insert(block);
            } else {
                reserved += u64::from(entry.size()) << self.granule_shift;
            }
            for inner in block + 1..block + entry.size() {
                assert_eq!(self.blocks[inner as usize].size(), 0);
            }
            previous = block;
            block += entry.size();
        }
        assert_eq!(block, self.granules, "blocks overrun the pool");
        for first in 0..FIRST_LEVELS {
            for second in 0..SECOND_LEVELS {
                let mut block = self.heads[first * SECOND_LEVELS + second];
                assert_eq!(block != NONE, self.second_bitmaps[first] & (1 << second) != 0);
                while block != NONE {
                    assert_eq!(class_of(self.blocks[block as usize].size()), (first, second));
                    assert!(listed.remove(&block), "block {block} listed twice or not free");
                    block = self.blocks[block as usize].next_free;
                }
            }
            assert_eq!(self.second_bitmaps[first] != 0, self.first_bitmap & (1 << first) != 0);
        }
        assert!(listed.is_empty(), "free blocks missing from their lists");
        assert_eq!(free_granules, self.free_granules);
        assert_eq!(reserved, self.counters.reserved_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// A clock that advances a fixed step on every read: deterministic, not timed.
    struct SteppingClock {
        ticks: AtomicU64,
        step: u64,
    }

    impl Clock for SteppingClock {
        fn ticks(&self) -> u64 {
            self.ticks.fetch_add(self.step, Ordering::Relaxed)
        }
        fn frequency_hz(&self) -> u64 {
            1_000_000
        }
    }

    #[test]
    fn classes_cover_sizes_in_order() {
        assert_eq!(class_of(1), (0, 1));
        assert_eq!(class_of(16), (1, 0));
        assert_eq!(class_of(31), (1, 15));
        assert_eq!(class_of(32), (2, 0));
        assert_eq!(class_of(u32::MAX), (FIRST_LEVELS - 1, 15));
        let mut previous = (0, 0);
        for size in 1..5000u32 {
            let class = class_of(size);
            assert!(class >= previous, "classes are monotone");
            previous = class;
            let (first, second) = class_at_least(size).unwrap();
            // Every block filed at or above the search class holds `size`.
            let smallest_in_class = (size..=size * 2).find(|&s| class_of(s) == (first, second)).unwrap();
            assert!(smallest_in_class >= size);
            assert!(class_of(smallest_in_class - 1) < (first, second) || smallest_in_class == size);
        }
        assert_eq!(class_at_least(u32::MAX), None);
    }

    #[test]
    fn deadline_misses_are_typed_and_leave_nothing_allocated() {
        let mut pool = RtPool::new("protocol", 0x100_0000, MIB, 256).unwrap();
        let clock = SteppingClock { ticks: AtomicU64::new(0), step: 10 };
        let deadline = clock.deadline_after_us(1000);
        let address = pool.alloc_within(1000, 64, deadline, &clock).unwrap();
        assert_eq!(pool.worst_case_ticks(), 10, "one step between the two clock reads");
        // A deadline that has already passed.
        let missed = pool.alloc_within(1000, 64, Deadline { at_ticks: 5 }, &clock);
        assert!(matches!(missed, Err(MemError::DeadlineMissed { deadline_ticks: 5, .. })), "{missed:?}");
        // A deadline that is reachable only if the allocation took no time at all.
        let now = clock.ticks.load(Ordering::Relaxed);
        let tight = pool.alloc_within(1000, 64, Deadline { at_ticks: now + 5 }, &clock);
        assert!(matches!(tight, Err(MemError::DeadlineMissed { .. })), "{tight:?}");
        assert_eq!(pool.block_count(), (1, 1), "only the first allocation is live");
        assert_eq!(pool.free(address), Ok(1000));
        assert_eq!(pool.block_count(), (1, 0));
        assert_eq!(pool.statistics().counters.failures, 2);
    }

    #[test]
    fn alignment_padding_stays_usable() {
        let mut pool = RtPool::new("protocol", 0x100_0100, MIB, 256).unwrap();
        let aligned = pool.alloc(100, 64 * 1024).unwrap();
        assert_eq!(aligned % (64 * 1024), 0);
        let small = pool.alloc(256, 256).unwrap();
        assert!(small < aligned, "the padding before the aligned block is free again");
        pool.check_invariants();
        assert_eq!(pool.free(aligned), Ok(100));
        assert_eq!(pool.free(small), Ok(256));
        assert_eq!(pool.block_count(), (1, 0));
        assert!(matches!(pool.alloc(2 * MIB, 256), Err(MemError::TooLarge { .. })));
        assert!(matches!(pool.alloc(1, 48), Err(MemError::BadAlignment { .. })));
    }

    #[test]
    fn granule_keeps_the_table_bounded() {
        assert_eq!(RtPool::granule_for(120 * MIB, 65536, 64), 2048);
        assert_eq!(RtPool::granule_for(MIB, 65536, 64), 64);
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Alloc { size: u64, alignment_log2: u32 },
        Free(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_traces_keep_every_invariant(
            operations in proptest::collection::vec(
                prop_oneof![
                    3 => (1u64..64 * 1024, 0u32..14)
                        .prop_map(|(size, alignment_log2)| Operation::Alloc { size, alignment_log2 }),
                    2 => any::<usize>().prop_map(Operation::Free),
                ],
                1..250,
            ),
            pool_kib in 64u64..2048,
            granule_log2 in 6u32..10,
        ) {
            let mut pool = RtPool::new("protocol", 0x200_0000, pool_kib * 1024, 1 << granule_log2).unwrap();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for operation in operations {
                match operation {
                    Operation::Alloc { size, alignment_log2 } => match pool.alloc(size, 1 << alignment_log2) {
                        Ok(address) => {
                            prop_assert_eq!(address % (1 << alignment_log2), 0);
                            prop_assert!(address >= 0x200_0000 && address + size <= 0x200_0000 + pool.capacity());
                            for &(other, other_size) in &live {
                                prop_assert!(address + size <= other || other + other_size <= address);
                            }
                            live.push((address, size));
                        }
                        Err(MemError::OutOfMemory { free, .. }) => prop_assert_eq!(free, pool.free_bytes()),
                        Err(MemError::TooLarge { .. }) => prop_assert!(size + (1 << alignment_log2) > pool.capacity()),
                        Err(other) => prop_assert!(false, "unexpected {:?}", other),
                    },
                    Operation::Free(pick) => {
                        if live.is_empty() {
                            continue;
                        }
                        let (address, size) = live.swap_remove(pick % live.len());
                        prop_assert_eq!(pool.free(address), Ok(size));
                        let again = pool.free(address);
                        prop_assert!(
                            matches!(again, Err(MemError::DoubleFree { .. } | MemError::ForeignFree { .. })),
                            "{:?}", again
                        );
                    }
                }
                let requested: u64 = live.iter().map(|&(_, size)| size).sum();
                prop_assert_eq!(pool.statistics().counters.live_bytes, requested);
            }
            pool.check_invariants();
            for (address, size) in live {
                prop_assert_eq!(pool.free(address), Ok(size));
            }
            pool.check_invariants();
            prop_assert_eq!(pool.block_count(), (1, 0), "freeing everything leaves one block");
            prop_assert_eq!(pool.largest_free(), pool.capacity());
        }
    }
}
