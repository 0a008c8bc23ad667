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
/// Size classes (free lists), numbered `16 × first + second`. A pool has fewer than 2^31
/// granules, so classes stop at 464; the array is rounded up to a power of two so that a
/// masked class number indexes it without a bounds check.
const LISTS: usize = 512;
/// 64-bit words of the bitmap of non-empty classes.
const WORDS: usize = LISTS / 64;
/// End of an index-linked list. No table index reaches it (tables have < 2^31 entries), so
/// a lookup of `NONE` in the table finds nothing.
const NONE: u32 = u32::MAX;

/// The free flag, kept in the top bit of a block entry's size word.
const FREE_FLAG: u32 = 1 << 31;
/// The mark of a list head: its `previous_free` word is `HEAD | class`, past every table
/// index like `NONE`, so unlinking a head finds its list without recomputing the class.
const HEAD: u32 = 1 << 31;

/// Metadata of the block that starts at one granule, in 16 bytes: size in granules (0 when no
/// block starts there) with the free flag in its top bit, the physical predecessor, and two
/// list links (a list head's `previous_free` holds `HEAD | class`). A live block is on no
/// list, so its `next_free` word holds the bytes its caller requested instead.
#[derive(Clone, Copy, Debug, Default)]
struct BlockEntry {
    size_and_flag: u32,
    previous_physical: u32,
    next_free: u32,
    previous_free: u32,
}

impl BlockEntry {
    fn size(&self) -> u32 {
        self.size_and_flag & !FREE_FLAG
    }

    fn is_free(&self) -> bool {
        self.size_and_flag & FREE_FLAG != 0
    }

    /// Bytes requested for a live block.
    fn requested(&self) -> u32 {
        self.next_free
    }
}

/// The class a block of `size` granules is filed under, as `16 × first + second`: sizes below
/// 16 have a class each; above, the first level is the power of two and the second the next
/// four bits. Branch-free: `size | 16` makes the sizes below 16 share the shift of 16..31.
#[inline(always)]
fn class_of(size: u32) -> u32 {
    let shift = 27 - (size | 16).leading_zeros();
    (shift << SECOND_LEVEL_LOG2) + (size >> shift)
}

/// The first class whose every block holds `size` (≥ 1) granules: the class after the one
/// that holds `size - 1`, as the classes are contiguous ranges in increasing order.
#[inline(always)]
fn class_at_least(size: u32) -> u32 {
    class_of(size - 1) + 1
}

/// The free lists: one head per class, and a two-level bitmap of non-empty classes (a bit per
/// class in `words`, a bit per non-zero word in `summary`), so the first non-empty class at or
/// above a given one takes two trailing-zero counts.
#[derive(Debug)]
struct FreeLists {
    heads: [u32; LISTS],
    words: [u64; WORDS],
    summary: u64,
}

impl FreeLists {
    /// The first non-empty class at or above `class`, or `None`.
    #[inline(always)]
    fn find(&self, class: u32) -> Option<u32> {
        let word = class >> 6;
        let bits = self.words[word as usize & (WORDS - 1)] & (u64::MAX << (class & 63));
        if bits != 0 {
            return Some((word << 6) + bits.trailing_zeros());
        }
        // `word + 1 <= WORDS`, so the shift stays below 64.
        let above = self.summary & (u64::MAX << (word + 1));
        if above == 0 {
            return None;
        }
        let word = above.trailing_zeros();
        Some((word << 6) + self.words[word as usize & (WORDS - 1)].trailing_zeros())
    }

    #[inline(always)]
    fn mark(&mut self, class: usize) {
        self.words[(class >> 6) & (WORDS - 1)] |= 1 << (class & 63);
        self.summary |= 1 << (class >> 6);
    }

    #[inline(always)]
    fn unmark(&mut self, class: usize) {
        let word = &mut self.words[(class >> 6) & (WORDS - 1)];
        *word &= !(1 << (class & 63));
        if *word == 0 {
            self.summary &= !(1 << (class >> 6));
        }
    }

    /// Writes a free block of `size` granules at `block` after `previous_physical` and puts it
    /// at the head of its class.
    #[inline(always)]
    fn push(&mut self, blocks: &mut [BlockEntry], block: u32, size: u32, previous_physical: u32) {
        let class = class_of(size) as usize & (LISTS - 1);
        let head = self.heads[class];
        if let Some(entry) = blocks.get_mut(block as usize) {
            *entry = BlockEntry {
                size_and_flag: size | FREE_FLAG,
                previous_physical,
                next_free: head,
                previous_free: HEAD | class as u32,
            };
        }
        if let Some(next) = blocks.get_mut(head as usize) {
            next.previous_free = block;
        }
        self.heads[class] = block;
        self.mark(class);
    }

    /// Takes the first block off the non-empty list `class`; returns it and its entry.
    #[inline(always)]
    fn pop(&mut self, blocks: &mut [BlockEntry], class: usize) -> (u32, BlockEntry) {
        let block = self.heads[class];
        let entry = blocks[block as usize];
        self.heads[class] = entry.next_free;
        match blocks.get_mut(entry.next_free as usize) {
            Some(next) => next.previous_free = HEAD | class as u32,
            None => self.unmark(class),
        }
        (block, entry)
    }

    /// Takes a free block off its list, given its entry's two list links.
    #[inline(always)]
    fn unlink(&mut self, blocks: &mut [BlockEntry], previous_free: u32, next_free: u32) {
        match blocks.get_mut(previous_free as usize) {
            Some(previous) => previous.next_free = next_free,
            None => {
                let class = previous_free as usize & (LISTS - 1);
                self.heads[class] = next_free;
                if next_free == NONE {
                    self.unmark(class);
                }
            }
        }
        if let Some(next) = blocks.get_mut(next_free as usize) {
            next.previous_free = previous_free;
        }
    }
}

/// The pool's running counts. Reserved bytes are not counted separately: they are the pool
/// less its free granules, and their peak is the pool less the lowest free count seen.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    allocations: u64,
    frees: u64,
    failures: u64,
    bad_frees: u64,
    live_bytes: u64,
    peak_live_bytes: u64,
    free_granules: u32,
    least_free_granules: u32,
}

/// A TLSF pool over one region.
///
/// Free blocks are filed in size classes (16 per power of two), each a doubly linked list
/// threaded through the block table; a two-level bitmap of non-empty classes finds a fitting
/// class with two trailing-zero counts. Every block records the granule of its physical
/// predecessor, and its successor starts right after it, so both neighbours are found in O(1).
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
///
/// The hot paths are written for a short instruction count: each table entry is read once
/// into a local, a lookup that may miss (a list end, the pool's end) is one checked `get`
/// that doubles as the end test, and every failure is built in a cold function, so the
/// paths that succeed spill no registers.
#[derive(Debug)]
pub struct RtPool {
    name: &'static str,
    base: u64,
    granule_shift: u32,
    blocks: Vec<BlockEntry>,
    lists: FreeLists,
    counts: Counts,
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
            blocks: vec![BlockEntry::default(); granules as usize],
            lists: FreeLists { heads: [NONE; LISTS], words: [0; WORDS], summary: 0 },
            counts: Counts { free_granules: granules, least_free_granules: granules, ..Counts::default() },
            worst_case_ticks: 0,
        };
        if granules > 0 {
            pool.lists.push(&mut pool.blocks, 0, granules, NONE);
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
        (self.blocks.len() as u64) << self.granule_shift
    }

    /// Whether `address` lies inside the pool.
    pub fn contains(&self, address: u64) -> bool {
        address.wrapping_sub(self.base) < self.capacity()
    }

    /// Allocates `size` bytes aligned to `alignment` (at least the granule). Returns the base.
    #[inline]
    pub fn alloc(&mut self, size: u64, alignment: u64) -> Result<u64, MemError> {
        // Zero, or more than a live entry can record: the failure path sorts out which.
        if size.wrapping_sub(1) >= u64::from(u32::MAX) {
            return Err(self.refuse(size, alignment));
        }
        // One test for a power of two no larger than the granule (0 wraps to a huge mask).
        let mask = alignment.wrapping_sub(1);
        if alignment & mask != 0 || mask >= self.granule() {
            return self.alloc_aligned(size, alignment);
        }
        let needed = ((size - 1) >> self.granule_shift) as u32 + 1;
        // A request past the pool finds no class either, so it needs no test of its own.
        let Some(class) = self.lists.find(class_at_least(needed)) else {
            return Err(self.refuse(size, alignment));
        };
        let (block, entry) = self.lists.pop(&mut self.blocks, class as usize & (LISTS - 1));
        Ok(self.carve(block, entry.size(), needed, size))
    }

    /// The allocation path for an alignment above the granule (or not a power of two, which
    /// is refused): the search asks for enough extra granules to align inside the block, and
    /// a free front part is split off.
    #[inline(never)]
    fn alloc_aligned(&mut self, size: u64, alignment: u64) -> Result<u64, MemError> {
        if !alignment.is_power_of_two() {
            return Err(self.refuse(size, alignment));
        }
        let shift = self.granule_shift;
        let needed = size.div_ceil(self.granule());
        let search = needed + (alignment >> shift) - 1;
        let Some(class) = u32::try_from(search)
            .ok()
            .filter(|&search| search as usize <= self.blocks.len())
            .and_then(|search| self.lists.find(class_at_least(search)))
        else {
            return Err(self.refuse(size, alignment));
        };
        let (mut block, entry) = self.lists.pop(&mut self.blocks, class as usize & (LISTS - 1));
        let mut block_size = entry.size();
        let address = self.address_of(block);
        let front = ((align_up(address, alignment).unwrap_or(address) - address) >> shift) as u32;
        if front > 0 {
            self.lists.push(&mut self.blocks, block, front, entry.previous_physical);
            let rest = block + front;
            block_size -= front;
            self.blocks[rest as usize].previous_physical = block;
            if let Some(after) = self.blocks.get_mut((rest + block_size) as usize) {
                after.previous_physical = rest;
            }
            block = rest;
        }
        Ok(self.carve(block, block_size, needed as u32, size))
    }

    /// Makes the first `needed` granules of the unlisted block at `block` (of `block_size`
    /// granules) live for a request of `size` bytes, filing the rest as a free block; returns
    /// the block's address.
    #[inline(always)]
    fn carve(&mut self, block: u32, block_size: u32, needed: u32, size: u64) -> u64 {
        let blocks = self.blocks.as_mut_slice();
        if block_size > needed {
            let tail = block + needed;
            self.lists.push(blocks, tail, block_size - needed, block);
            if let Some(after) = blocks.get_mut((block + block_size) as usize) {
                after.previous_physical = tail;
            }
        }
        if let Some(entry) = blocks.get_mut(block as usize) {
            entry.size_and_flag = needed;
            entry.next_free = size as u32; // A live block keeps its requested size here.
        }
        let counts = &mut self.counts;
        counts.allocations += 1;
        counts.live_bytes += size;
        counts.peak_live_bytes = counts.peak_live_bytes.max(counts.live_bytes);
        counts.free_granules -= needed;
        counts.least_free_granules = counts.least_free_granules.min(counts.free_granules);
        self.address_of(block)
    }

    /// Counts a failed allocation of `size` bytes at `alignment` and says why it failed.
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, size: u64, alignment: u64) -> MemError {
        self.counts.failures += 1;
        if size == 0 {
            return MemError::ZeroSize { pool: self.name };
        }
        if !alignment.is_power_of_two() {
            return MemError::BadAlignment { pool: self.name, alignment };
        }
        // Saturating: a size near 2^64 with an alignment near 2^63 would overflow.
        let padding = (alignment.max(self.granule()) >> self.granule_shift) - 1;
        let granules = size.div_ceil(self.granule()).saturating_add(padding);
        if granules > self.blocks.len() as u64 || size > u64::from(u32::MAX) {
            return MemError::TooLarge { pool: self.name, requested: size, limit: self.capacity() };
        }
        MemError::OutOfMemory {
            pool: self.name,
            requested: size,
            free: self.free_bytes(),
            largest_free: self.largest_free(),
        }
    }

    /// Allocates like [`RtPool::alloc`], but only if the allocation finishes by `deadline` on
    /// `clock`. The pool remembers the longest allocation it has seen finish in time (in
    /// ticks); when even that would end past the deadline it refuses up front, and if an
    /// allocation still ends late it is undone. Either way the error is
    /// [`MemError::DeadlineMissed`] and nothing stays allocated. A late allocation is not
    /// learnt from: its time is most likely the core's (an interrupt, or a virtual CPU the host
    /// held), not the pool's, and learning it would refuse every later allocation up front.
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
            self.counts.failures += 1;
            return Err(MemError::DeadlineMissed {
                pool: self.name,
                deadline_ticks: deadline.at_ticks,
                finish_ticks: predicted,
            });
        }
        let address = self.alloc(size, alignment)?;
        let finish = clock.ticks();
        if finish > deadline.at_ticks {
            // Undo; the block was just handed out, so the free cannot fail.
            let _ = self.free(address);
            self.counts.failures += 1;
            return Err(MemError::DeadlineMissed {
                pool: self.name,
                deadline_ticks: deadline.at_ticks,
                finish_ticks: finish,
            });
        }
        self.worst_case_ticks = self.worst_case_ticks.max(finish.saturating_sub(start));
        Ok(address)
    }

    /// The longest allocation seen by [`RtPool::alloc_within`], in clock ticks.
    pub fn worst_case_ticks(&self) -> u64 {
        self.worst_case_ticks
    }

    /// Frees the block at `address`, merging it with free neighbours. Returns the bytes the
    /// caller had requested. A block freed twice is refused: as [`MemError::DoubleFree`]
    /// while it is still a free block of its own, or as [`MemError::ForeignFree`] once it
    /// has merged into a free neighbour (its address no longer starts a block).
    #[inline]
    pub fn free(&mut self, address: u64) -> Result<u64, MemError> {
        let offset = address.wrapping_sub(self.base);
        let index = offset >> self.granule_shift;
        // An address below the base wraps to an offset past the table.
        let (index, entry) =
            match usize::try_from(index).ok().and_then(|index| Some((index, self.blocks.get(index)?))) {
                // Live blocks only: a size word of 0 starts no block, one with the flag is free.
                Some((index, &entry))
                    if (index as u64) << self.granule_shift == offset
                        && entry.size_and_flag.wrapping_sub(1) < FREE_FLAG - 1 =>
                {
                    (index, entry)
                }
                _ => return Err(self.refuse_free(address)),
            };
        let blocks = self.blocks.as_mut_slice();
        let block = index as u32;
        let size = entry.size_and_flag;
        let (mut start, mut total, mut previous_physical) = (block, size, entry.previous_physical);
        if let Some(&next) = blocks.get((block + size) as usize)
            && next.is_free()
        {
            self.lists.unlink(blocks, next.previous_free, next.next_free);
            blocks[(block + size) as usize].size_and_flag = 0;
            total += next.size();
        }
        if let Some(&previous) = blocks.get(entry.previous_physical as usize)
            && previous.is_free()
        {
            self.lists.unlink(blocks, previous.previous_free, previous.next_free);
            blocks[index].size_and_flag = 0;
            start = entry.previous_physical;
            total += previous.size();
            previous_physical = previous.previous_physical;
        }
        self.lists.push(blocks, start, total, previous_physical);
        if let Some(after) = blocks.get_mut((start + total) as usize) {
            after.previous_physical = start;
        }
        let counts = &mut self.counts;
        counts.frees += 1;
        counts.live_bytes -= u64::from(entry.requested());
        counts.free_granules += size;
        Ok(u64::from(entry.requested()))
    }

    /// Counts a refused free of `address` and says why it was refused.
    #[cold]
    #[inline(never)]
    fn refuse_free(&mut self, address: u64) -> MemError {
        self.counts.bad_frees += 1;
        let offset = address.wrapping_sub(self.base);
        let entry =
            usize::try_from(offset >> self.granule_shift).ok().and_then(|index| self.blocks.get(index));
        match entry {
            Some(entry)
                if address >= self.base
                    && offset & (self.granule() - 1) == 0
                    && entry.size() > 0
                    && entry.is_free() =>
            {
                MemError::DoubleFree { pool: self.name, address }
            }
            _ => MemError::ForeignFree { pool: self.name, address },
        }
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
        u64::from(self.counts.free_granules) << self.granule_shift
    }

    /// The largest free block in bytes. It is in the highest non-empty class; that one list is
    /// walked, so this is for reports, not for the allocation path.
    pub fn largest_free(&self) -> u64 {
        let lists = &self.lists;
        if lists.summary == 0 {
            return 0;
        }
        let word = 63 - lists.summary.leading_zeros() as usize;
        let class = word * 64 + 63 - lists.words[word].leading_zeros() as usize;
        let mut block = lists.heads[class];
        let mut largest = 0;
        while let Some(entry) = self.blocks.get(block as usize) {
            largest = largest.max(entry.size());
            block = entry.next_free;
        }
        u64::from(largest) << self.granule_shift
    }

    /// Number of blocks, free and live; O(blocks), for tests and reports.
    pub fn block_count(&self) -> (usize, usize) {
        let (mut free, mut live) = (0, 0);
        let mut block = 0;
        while let Some(entry) = self.blocks.get(block) {
            if entry.is_free() {
                free += 1
            } else {
                live += 1
            }
            block += entry.size().max(1) as usize;
        }
        (free, live)
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> PoolStatistics {
        let counts = &self.counts;
        let granules = self.blocks.len() as u64;
        PoolStatistics {
            name: self.name,
            base: self.base,
            capacity: self.capacity(),
            counters: PoolCounters {
                allocations: counts.allocations,
                frees: counts.frees,
                failures: counts.failures,
                bad_frees: counts.bad_frees,
                live_bytes: counts.live_bytes,
                reserved_bytes: (granules - u64::from(counts.free_granules)) << self.granule_shift,
                peak_live_bytes: counts.peak_live_bytes,
                peak_reserved_bytes: (granules - u64::from(counts.least_free_granules)) << self.granule_shift,
                zeroed_bytes: 0,
            },
            free_bytes: self.free_bytes(),
            largest_free: self.largest_free(),
        }
    }

    fn address_of(&self, block: u32) -> u64 {
        self.base + (u64::from(block) << self.granule_shift)
    }

    /// Checks every invariant in the type's documentation; for tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let granules = self.blocks.len() as u32;
        let mut block = 0;
        let mut previous = NONE;
        let mut free_granules = 0;
        let mut reserved = 0;
        let mut listed = std::collections::HashSet::new();
        while block < granules {
            let entry = self.blocks[block as usize];
            assert!(entry.size() > 0, "granule {block} starts no block");
            assert_eq!(entry.previous_physical, previous, "block {block} has a stale predecessor");
            if entry.is_free() {
                assert!(
                    previous == NONE || !self.blocks[previous as usize].is_free(),
                    "free neighbours at {block}"
                );
                free_granules += entry.size();
                listed.insert(block);
            } else {
                reserved += entry.size();
            }
            for inner in block + 1..block + entry.size() {
                assert_eq!(self.blocks[inner as usize].size_and_flag, 0);
            }
            previous = block;
            block += entry.size();
        }
        assert_eq!(block, granules, "blocks overrun the pool");
        let lists = &self.lists;
        for class in 0..LISTS {
            let mut block = lists.heads[class];
            let marked = lists.words[class / 64] & (1 << (class % 64)) != 0;
            assert_eq!(block != NONE, marked, "class {class}: bitmap and list disagree");
            let mut previous = HEAD | class as u32;
            while block != NONE {
                let entry = self.blocks[block as usize];
                assert_eq!(class_of(entry.size()) as usize, class);
                assert_eq!(entry.previous_free, previous, "block {block} has a stale list link");
                assert!(listed.remove(&block), "block {block} listed twice or not free");
                previous = block;
                block = entry.next_free;
            }
        }
        for word in 0..WORDS {
            assert_eq!(lists.words[word] != 0, lists.summary & (1 << word) != 0);
        }
        assert_eq!(lists.summary >> WORDS, 0);
        assert!(listed.is_empty(), "free blocks missing from their lists");
        assert_eq!(free_granules, self.counts.free_granules);
        assert_eq!(free_granules + reserved, granules);
        assert!(self.counts.least_free_granules <= free_granules);
        let counters = self.statistics().counters;
        assert_eq!(counters.reserved_bytes, u64::from(reserved) << self.granule_shift);
        assert!(counters.peak_reserved_bytes >= counters.reserved_bytes);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// A 1 MHz clock that advances a fixed step on every read: deterministic, not timed.
    pub(crate) struct SteppingClock {
        pub(crate) ticks: AtomicU64,
        pub(crate) step: u64,
    }

    impl SteppingClock {
        /// A clock at `start` that advances `step` ticks on every read.
        pub(crate) fn new(start: u64, step: u64) -> Self {
            Self { ticks: AtomicU64::new(start), step }
        }
    }

    impl Clock for SteppingClock {
        fn ticks(&self) -> u64 {
            self.ticks.fetch_add(self.step, Ordering::Relaxed)
        }
        fn frequency_hz(&self) -> u64 {
            1_000_000
        }
    }

    /// The class as the textbook two-level mapping computes it, with a branch for the small
    /// sizes: the reference for the branch-free [`class_of`].
    fn two_level_class(size: u32) -> u32 {
        if size < 16 {
            return size;
        }
        let top = 31 - size.leading_zeros();
        let first = top - SECOND_LEVEL_LOG2 + 1;
        let second = (size >> (top - SECOND_LEVEL_LOG2)) ^ 16;
        16 * first + second
    }

    #[test]
    fn classes_cover_sizes_in_order() {
        assert_eq!(class_of(1), 1);
        assert_eq!(class_of(15), 15);
        assert_eq!(class_of(16), 16);
        assert_eq!(class_of(31), 31);
        assert_eq!(class_of(32), 32);
        assert_eq!(class_of(33), 32);
        assert_eq!(class_of(34), 33);
        assert_eq!(class_of(u32::MAX), 463);
        assert_eq!(class_at_least(u32::MAX), 464, "past every class a pool can file");
        assert!((class_at_least(FREE_FLAG - 1) as usize) < LISTS);
        let mut previous = 0;
        for size in 1..5000u32 {
            let class = class_of(size);
            assert_eq!(class, two_level_class(size));
            assert!(class >= previous, "classes are monotone");
            previous = class;
            let fitting = class_at_least(size);
            // Every block filed in the search class holds `size`, and the class below does
            // not guarantee it.
            let smallest_in_class = (1..=size * 2).find(|&s| class_of(s) == fitting).unwrap();
            assert!(smallest_in_class >= size, "size {size}: class {fitting} starts at {smallest_in_class}");
            assert!(class_of(size - 1) < fitting);
        }
        for shift in 4..32 {
            for size in
                [(1u32 << shift) - 1, 1 << shift, (1 << shift) + 1, (1u32 << shift) | (1 << (shift - 1))]
            {
                assert_eq!(class_of(size), two_level_class(size), "size {size:#x}");
            }
        }
    }

    #[test]
    fn bad_requests_and_frees_are_typed_and_counted() {
        let base = 0x100_0000;
        let mut pool = RtPool::new("protocol", base, 64 * 1024, 256).unwrap();
        assert!(matches!(pool.alloc(0, 64), Err(MemError::ZeroSize { .. })));
        assert!(matches!(pool.alloc(64, 0), Err(MemError::BadAlignment { alignment: 0, .. })));
        assert!(matches!(pool.alloc(64, 96), Err(MemError::BadAlignment { alignment: 96, .. })));
        assert!(matches!(pool.alloc(1 << 32, 64), Err(MemError::TooLarge { .. })));
        assert!(matches!(pool.alloc(64 * 1024 + 1, 64), Err(MemError::TooLarge { .. })));
        assert!(matches!(pool.alloc(32 * 1024, 64 * 1024), Err(MemError::TooLarge { .. })));
        let whole = pool.alloc(64 * 1024, 256).unwrap();
        assert_eq!(whole, base);
        assert!(matches!(pool.alloc(1, 64), Err(MemError::OutOfMemory { free: 0, largest_free: 0, .. })));
        assert!(matches!(pool.alloc(1, 4096), Err(MemError::OutOfMemory { .. })));
        assert_eq!(pool.statistics().counters.failures, 8);
        assert_eq!(pool.free(whole), Ok(64 * 1024));
        let first = pool.alloc(300, 64).unwrap();
        let second = pool.alloc(300, 64).unwrap();
        for foreign in [base - 256, base + 1, first + 256, base + 64 * 1024, u64::MAX, 0] {
            assert!(
                matches!(pool.free(foreign), Err(MemError::ForeignFree { address, .. }) if address == foreign),
                "{foreign:#x}"
            );
        }
        assert_eq!(pool.allocation(second), Some((512, 300)));
        assert_eq!(pool.free(second), Ok(300));
        // `second` absorbed the free rest of the pool and still starts that block.
        assert!(matches!(pool.free(second), Err(MemError::DoubleFree { .. })));
        assert_eq!(pool.allocation(second), None);
        let third = pool.alloc(300, 64).unwrap();
        assert_eq!(third, second);
        let fourth = pool.alloc(300, 64).unwrap();
        let fifth = pool.alloc(300, 64).unwrap();
        assert_eq!(pool.free(third), Ok(300));
        assert!(matches!(pool.free(third), Err(MemError::DoubleFree { .. })), "a free block of its own");
        assert_eq!(pool.free(fourth), Ok(300));
        // `fourth` merged into `third` before it: its address no longer starts a block.
        assert!(matches!(pool.free(fourth), Err(MemError::ForeignFree { .. })));
        assert_eq!(pool.statistics().counters.bad_frees, 9);
        pool.check_invariants();
        for address in [first, fifth] {
            pool.free(address).unwrap();
        }
        assert_eq!(pool.block_count(), (1, 0));
        let counters = pool.statistics().counters;
        assert_eq!((counters.allocations, counters.frees), (6, 6));
        assert_eq!(counters.peak_reserved_bytes, 64 * 1024);
        assert_eq!(counters.reserved_bytes, 0);
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
    fn one_stalled_allocation_does_not_refuse_the_next() {
        let mut pool = RtPool::new("protocol", 0x100_0000, MIB, 256).unwrap();
        // The deadline is read at tick 0 (due at 1,000), the allocation starts at 600 and,
        // the core held meanwhile, ends at 1,200.
        let stalled = SteppingClock { ticks: AtomicU64::new(0), step: 600 };
        let late = pool.alloc_within(64, 64, stalled.deadline_after_us(1000), &stalled);
        assert!(matches!(late, Err(MemError::DeadlineMissed { .. })), "{late:?}");
        assert_eq!(pool.worst_case_ticks(), 0, "a late allocation teaches the pool nothing");
        let clock = SteppingClock { ticks: AtomicU64::new(0), step: 10 };
        let address = pool.alloc_within(64, 64, clock.deadline_after_us(1000), &clock).unwrap();
        assert_eq!(pool.worst_case_ticks(), 10);
        assert_eq!(pool.free(address), Ok(64));
        assert_eq!(pool.statistics().counters.failures, 1);
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
        fn any_request_or_free_gets_an_address_or_a_typed_error(
            requests in proptest::collection::vec((any::<u64>(), any::<u64>(), 0u8..4), 1..64),
            granule_log2 in 0u32..12,
        ) {
            let base = 0x4000_0000;
            let mut pool = RtPool::new("protocol", base, 256 * 1024, 1 << granule_log2).unwrap();
            for (size, alignment, shape) in requests {
                // Half the alignments are powers of two, up to 2^63; half the sizes are small.
                let alignment = if shape & 1 != 0 { 1 << (alignment % 64) } else { alignment };
                let size = if shape & 2 != 0 { size % (64 * 1024) } else { size };
                match pool.alloc(size, alignment) {
                    Ok(address) => {
                        prop_assert_eq!(address % alignment.max(pool.granule()), 0);
                        prop_assert!(address >= base && address - base + size <= pool.capacity());
                        prop_assert_eq!(pool.allocation(address).map(|(_, requested)| requested), Some(size));
                    }
                    Err(MemError::ZeroSize { .. }) => prop_assert_eq!(size, 0),
                    Err(MemError::BadAlignment { .. }) => prop_assert!(!alignment.is_power_of_two()),
                    Err(MemError::TooLarge { .. } | MemError::OutOfMemory { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
                // A free of an arbitrary address is refused, or frees a live block.
                let address = base.wrapping_add(size % (512 * 1024)).wrapping_sub(alignment % 4096);
                match pool.free(address) {
                    Ok(_) | Err(MemError::DoubleFree { .. } | MemError::ForeignFree { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected {:?}", other),
                }
                pool.check_invariants();
            }
        }

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
            let mut peak_reserved = 0;
            let mut peak_live = 0;
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
                let counters = pool.statistics().counters;
                prop_assert_eq!(counters.live_bytes, requested);
                peak_live = peak_live.max(requested);
                peak_reserved = peak_reserved.max(counters.reserved_bytes);
                prop_assert_eq!(counters.peak_live_bytes, peak_live);
                prop_assert_eq!(counters.peak_reserved_bytes, peak_reserved);
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
