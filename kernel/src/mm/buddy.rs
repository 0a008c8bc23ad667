//! Buddy allocator: power-of-two blocks from 4 KiB to 1 MiB (activations, KV blocks, slabs).
//!
//! Metadata is external: per 4 KiB page a state byte, in one dense array, and an 8-byte entry
//! (free-list links, or a live block's requested size), allocated once at construction.
//! Nothing is written into the managed memory.

#![forbid(unsafe_code)]

use super::error::{MemError, align_up};
use super::stats::{PoolCounters, PoolStatistics};
use alloc::vec;
use alloc::vec::Vec;

/// End of an index-linked list.
const NONE: u32 = u32::MAX;
/// State bit: the page heads a free block (the low bits hold its order).
const FREE: u8 = 0x40;
/// State bit: the page heads a live block (the low bits hold its order).
const LIVE: u8 = 0x80;
/// Mask of the order in a state byte.
const ORDER_MASK: u8 = 0x3f;
/// Slots in the per-order arrays: orders are below 32 (`max_block ≤ 2^31`), so an order
/// reduced modulo this indexes them without a bounds check.
const ORDERS: usize = 32;

/// The words of one minimum-size page. On a free block's head: its free-list links. On a live
/// block's head, `next` holds the size its caller asked for (a live block is on no list).
/// Elsewhere unused. The state bytes live apart, densely, so the buddy checks of a deep merge
/// touch one or two cache lines.
#[derive(Clone, Copy, Debug)]
struct PageWords {
    next: u32,
    previous: u32,
}

/// A binary buddy allocator over one address range.
///
/// Blocks have `min_block << order` bytes for `order` in `0..=max_order` and sit at an offset
/// from the range's base that is a multiple of their size, so the base must be aligned to the
/// largest block for addresses to be naturally aligned (it is trimmed inward if not).
///
/// Invariants (checked by the property tests):
/// - every page belongs to exactly one block; a block's head page holds `FREE | order` or
///   `LIVE | order`, every other page holds 0;
/// - a free block of order `k < max_order` never has a free buddy of order `k` (merges are
///   eager), and it is on list `k` exactly once;
/// - bit `k` of the non-empty mask is set exactly when list `k` is not empty;
/// - free bytes + reserved bytes = capacity.
///
/// Time bounds: finding a buddy is one index computation and one byte compare; `alloc` is
/// O(1) to pick a list (a trailing-zeros on the mask) plus O(levels) splits; `free` is
/// O(levels) merges, each an O(1) unlink of a doubly linked list. No operation scans a list.
#[derive(Debug)]
pub struct BuddyAllocator {
    name: &'static str,
    base: u64,
    page_count: u32,
    page_shift: u32,
    max_order: u32,
    heads: [u32; ORDERS],
    free_counts: [u32; ORDERS],
    nonempty: u32,
    states: Vec<u8>,
    words: Vec<PageWords>,
    /// Per maximal block of the range (a segment): whether the allocator owns it.
    owned: Vec<bool>,
    owned_bytes: u64,
    free_bytes: u64,
    counters: PoolCounters,
}

impl BuddyAllocator {
    /// A buddy allocator named `name` over `[base, base + size)` with blocks from
    /// `min_block` to `max_block` bytes (powers of two, `max_block ≤ 2 GiB`), owning all of it.
    pub fn new(
        name: &'static str,
        base: u64,
        size: u64,
        min_block: u64,
        max_block: u64,
    ) -> Result<Self, MemError> {
        let mut allocator = Self::owning_nothing(name, base, size, min_block, max_block)?;
        allocator.owned.fill(true);
        allocator.owned_bytes = u64::from(allocator.page_count) << allocator.page_shift;
        // Cover the range with the largest aligned blocks that fit.
        let mut page = 0u32;
        while page < allocator.page_count {
            let mut order = allocator.max_order.min(page.trailing_zeros());
            while page + (1 << order) > allocator.page_count {
                order -= 1;
            }
            allocator.push_free(page, order);
            allocator.free_bytes += allocator.block_bytes(order);
            page += 1 << order;
        }
        Ok(allocator)
    }

    /// Like [`BuddyAllocator::new`], owning none of the range yet: memory arrives one maximal
    /// block (a segment) at a time through [`BuddyAllocator::donate`], and a segment that is
    /// wholly free leaves through [`BuddyAllocator::take_free_segment`]. Its metadata covers
    /// the whole range from the start, so neither allocates.
    pub fn owning_nothing(
        name: &'static str,
        base: u64,
        size: u64,
        min_block: u64,
        max_block: u64,
    ) -> Result<Self, MemError> {
        for alignment in [min_block, max_block] {
            if !alignment.is_power_of_two() || max_block < min_block {
                return Err(MemError::BadAlignment { pool: name, alignment });
            }
        }
        let page_shift = min_block.trailing_zeros();
        let max_order = max_block.trailing_zeros() - page_shift;
        if max_block > 1 << 31 {
            return Err(MemError::TooLarge { pool: name, requested: max_block, limit: 1 << 31 });
        }
        if size >> page_shift > u64::from(u32::MAX - 1) {
            return Err(MemError::TooLarge {
                pool: name,
                requested: size,
                limit: u64::from(u32::MAX - 1) << page_shift,
            });
        }
        let start = align_up(base, max_block).unwrap_or(u64::MAX);
        let end = base.saturating_add(size) & !(min_block - 1);
        let pages = (end.saturating_sub(start) >> page_shift) as u32;
        let count = pages as usize;
        Ok(Self {
            name,
            base: start.min(end),
            page_count: pages,
            page_shift,
            max_order,
            heads: [NONE; ORDERS],
            free_counts: [0; ORDERS],
            nonempty: 0,
            states: vec![0; count],
            words: vec![PageWords { next: NONE, previous: NONE }; count],
            owned: vec![false; count.div_ceil(1 << max_order)],
            owned_bytes: 0,
            free_bytes: 0,
            counters: PoolCounters::default(),
        })
    }

    /// Takes ownership of the segment (one maximal block) at `address`: it becomes one free
    /// block. O(1).
    pub fn donate(&mut self, address: u64) -> Result<(), MemError> {
        let foreign = MemError::ForeignFree { pool: self.name, address };
        let offset = address.checked_sub(self.base).ok_or(foreign)?;
        let segment = (offset / self.max_block()) as usize;
        let pages = 1u64 << self.max_order;
        if offset % self.max_block() != 0 || (segment as u64 + 1) * pages > u64::from(self.page_count) {
            return Err(foreign);
        }
        if core::mem::replace(&mut self.owned[segment], true) {
            return Err(MemError::DoubleFree { pool: self.name, address });
        }
        self.push_free((segment as u64 * pages) as u32, self.max_order);
        self.free_bytes += self.max_block();
        self.owned_bytes += self.max_block();
        Ok(())
    }

    /// Gives up a segment that is wholly free (a free maximal block), if there is one, and
    /// returns its address. O(1).
    pub fn take_free_segment(&mut self) -> Option<u64> {
        let page = self.heads[self.max_order as usize % ORDERS];
        if page == NONE {
            return None;
        }
        self.unlink(page, self.max_order);
        self.owned[(page >> self.max_order) as usize] = false;
        self.free_bytes -= self.max_block();
        self.owned_bytes -= self.max_block();
        Some(self.base + (u64::from(page) << self.page_shift))
    }

    /// The whole range the allocator may ever own, as `(base, size)`.
    pub fn span(&self) -> (u64, u64) {
        (self.base, u64::from(self.page_count) << self.page_shift)
    }

    /// The pool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The first byte managed.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Whether `address` lies inside the range the allocator spans.
    pub fn contains(&self, address: u64) -> bool {
        address.wrapping_sub(self.base) < self.span().1
    }

    /// Bytes owned (all of the range for [`BuddyAllocator::new`]; the donated segments for
    /// [`BuddyAllocator::owning_nothing`]).
    pub fn capacity(&self) -> u64 {
        self.owned_bytes
    }

    /// The smallest block, in bytes.
    pub fn min_block(&self) -> u64 {
        1 << self.page_shift
    }

    /// The largest block, in bytes.
    pub fn max_block(&self) -> u64 {
        self.block_bytes(self.max_order)
    }

    fn block_bytes(&self, order: u32) -> u64 {
        1u64 << (self.page_shift + order)
    }

    /// The order of the smallest block that holds `size` bytes, if any does.
    fn order_for(&self, size: u64) -> Option<u32> {
        let pages = ((size >> self.page_shift) + u64::from(size & (self.min_block() - 1) != 0)).max(1);
        let order = pages.next_power_of_two().trailing_zeros();
        (order <= self.max_order).then_some(order)
    }

    /// Allocates a block of at least `size` bytes, aligned to its own size. Returns its base.
    pub fn alloc(&mut self, size: u64) -> Result<u64, MemError> {
        let result = self.take(size);
        if result.is_err() {
            self.counters.failures += 1;
        }
        result
    }

    fn take(&mut self, size: u64) -> Result<u64, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { pool: self.name });
        }
        let Some(order) = self.order_for(size) else {
            return Err(MemError::TooLarge { pool: self.name, requested: size, limit: self.max_block() });
        };
        let candidates = self.nonempty & !((1u32 << order) - 1);
        if candidates == 0 {
            return Err(MemError::OutOfMemory {
                pool: self.name,
                requested: size,
                free: self.free_bytes,
                largest_free: self.largest_free(),
            });
        }
        let mut found = candidates.trailing_zeros();
        let page = self.heads[found as usize % ORDERS];
        self.unlink(page, found);
        while found > order {
            found -= 1;
            self.push_free(page + (1 << found), found);
        }
        self.states[page as usize] = LIVE | order as u8;
        self.words[page as usize].next = size as u32;
        let block = self.block_bytes(order);
        self.free_bytes -= block;
        self.counters.record_allocation(size, block);
        Ok(self.base + (u64::from(page) << self.page_shift))
    }

    /// Frees the block at `address`, merging it with free buddies. Returns the bytes the caller
    /// had requested.
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
        if offset & (self.min_block() - 1) != 0 || offset >> self.page_shift >= u64::from(self.page_count) {
            return Err(foreign);
        }
        let mut page = (offset >> self.page_shift) as u32;
        let state = self.states[page as usize];
        if state & LIVE == 0 {
            return Err(if self.free_block_containing(page) {
                MemError::DoubleFree { pool: self.name, address }
            } else {
                foreign
            });
        }
        let mut order = u32::from(state & ORDER_MASK);
        let requested = u64::from(self.words[page as usize].next);
        self.states[page as usize] = 0;
        let block = self.block_bytes(order);
        while order < self.max_order {
            let buddy = page ^ (1 << order);
            // One bounds check both guards the index and stops at the range's end.
            if self.states.get(buddy as usize).is_none_or(|&state| state != FREE | order as u8) {
                break;
            }
            self.unlink(buddy, order);
            page = page.min(buddy);
            order += 1;
        }
        self.push_free(page, order);
        self.free_bytes += block;
        self.counters.record_free(requested, block);
        Ok(requested)
    }

    /// Whether `page` lies inside a free block: O(levels), looking at the one candidate head
    /// per order.
    fn free_block_containing(&self, page: u32) -> bool {
        (0..=self.max_order).any(|order| {
            let head = page & !((1u32 << order) - 1);
            self.states[head as usize] == FREE | order as u8
        })
    }

    /// The live block at `address`, as `(block size, requested size)`.
    pub fn allocation(&self, address: u64) -> Option<(u64, u64)> {
        let offset = address.checked_sub(self.base)?;
        if offset & (self.min_block() - 1) != 0 || offset >> self.page_shift >= u64::from(self.page_count) {
            return None;
        }
        let page = (offset >> self.page_shift) as usize;
        let state = self.states[page];
        (state & LIVE != 0)
            .then(|| (self.block_bytes(u32::from(state & ORDER_MASK)), u64::from(self.words[page].next)))
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// The largest free block, in bytes (0 when none).
    pub fn largest_free(&self) -> u64 {
        if self.nonempty == 0 { 0 } else { self.block_bytes(31 - self.nonempty.leading_zeros()) }
    }

    /// A snapshot of the counters.
    ///
    /// No request is larger than one maximal block, so every free maximal block serves the
    /// largest request: for fragmentation they count together as one free extent. With no
    /// free maximal block, the largest free block is the extent.
    pub fn statistics(&self) -> PoolStatistics {
        let maximal = u64::from(self.free_counts[self.max_order as usize % ORDERS]) * self.max_block();
        PoolStatistics {
            name: self.name,
            base: self.base,
            capacity: self.capacity(),
            counters: self.counters,
            free_bytes: self.free_bytes,
            largest_free: if maximal > 0 { maximal } else { self.largest_free() },
        }
    }

    /// Number of free blocks; O(levels).
    pub fn free_block_count(&self) -> usize {
        self.free_counts.iter().map(|&count| count as usize).sum()
    }

    /// The number of free blocks the range splits into when nothing is live.
    pub fn initial_block_count(&self) -> usize {
        let mut count = 0;
        let mut page = 0u32;
        while page < self.page_count {
            let mut order = self.max_order.min(page.trailing_zeros());
            while page + (1 << order) > self.page_count {
                order -= 1;
            }
            count += 1;
            page += 1 << order;
        }
        count
    }

    /// Puts the block of `order` at `page` at the head of its free list. Inlined: it runs
    /// once per split level and once per free.
    #[inline(always)]
    fn push_free(&mut self, page: u32, order: u32) {
        let slot = order as usize % ORDERS;
        let head = self.heads[slot];
        self.words[page as usize] = PageWords { next: head, previous: NONE };
        self.states[page as usize] = FREE | order as u8;
        if head != NONE {
            self.words[head as usize].previous = page;
        }
        self.heads[slot] = page;
        self.free_counts[slot] += 1;
        self.nonempty |= 1 << slot;
    }

    /// Takes the free block of `order` at `page` off its list. Inlined: it runs once per
    /// merge level and once per allocation.
    ///
    /// Taking off the head leaves the new head's `previous` stale instead of clearing it,
    /// which saves a store to another page's entry on every level of a deep merge: the head
    /// is recognised by `heads[order]`, and a `previous` is only read off a block that is
    /// not the head, which [`BuddyAllocator::push_free`] sets whenever a block stops being
    /// the head.
    #[inline(always)]
    fn unlink(&mut self, page: u32, order: u32) {
        let slot = order as usize % ORDERS;
        let PageWords { next, previous } = self.words[page as usize];
        self.states[page as usize] = 0;
        if self.heads[slot] == page {
            self.heads[slot] = next;
            if next == NONE {
                self.nonempty &= !(1 << slot);
            }
        } else {
            self.words[previous as usize].next = next;
            if next != NONE {
                self.words[next as usize].previous = previous;
            }
        }
        self.free_counts[slot] -= 1;
    }

    /// Checks every invariant in the type's documentation; for tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut owner = vec![false; self.page_count as usize];
        let mut reserved = 0;
        let mut page = 0u32;
        let segment_pages = 1u32 << self.max_order;
        let mut owned = 0;
        while page < self.page_count {
            if !self.owned[(page / segment_pages) as usize] {
                let end = (page + segment_pages).min(self.page_count);
                assert!(
                    (page..end).all(|inner| self.states[inner as usize] == 0),
                    "an unowned page is in use"
                );
                page = end;
                continue;
            }
            if page.is_multiple_of(segment_pages) {
                owned += self
                    .block_bytes(self.max_order)
                    .min(u64::from(self.page_count - page) << self.page_shift);
            }
            let state = self.states[page as usize];
            assert!(state & (FREE | LIVE) != 0, "page {page} is not covered by a block head");
            let order = u32::from(state & ORDER_MASK);
            assert_eq!(page % (1 << order), 0, "block at page {page} misaligned for order {order}");
            for inner in page + 1..page + (1 << order) {
                assert_eq!(self.states[inner as usize], 0);
            }
            owner[page as usize] = true;
            if state & LIVE != 0 {
                reserved += self.block_bytes(order);
            } else if order < self.max_order {
                let buddy = page ^ (1 << order);
                assert!(
                    buddy >= self.page_count || self.states[buddy as usize] != state,
                    "free buddies {page} and {buddy} were not merged"
                );
            }
            page += 1 << order;
        }
        for order in 0..=self.max_order {
            let mut page = self.heads[order as usize % ORDERS];
            assert_eq!(page != NONE, self.nonempty & (1 << order) != 0);
            let mut previous = NONE;
            let mut count = 0;
            while page != NONE {
                count += 1;
                assert_eq!(self.states[page as usize], FREE | order as u8);
                if previous != NONE {
                    assert_eq!(
                        self.words[page as usize].previous, previous,
                        "only the head's link may be stale"
                    );
                }
                assert!(core::mem::take(&mut owner[page as usize]), "page {page} listed twice");
                previous = page;
                page = self.words[page as usize].next;
            }
            assert_eq!(count, self.free_counts[order as usize % ORDERS], "free count of order {order}");
        }
        assert_eq!(reserved, self.counters.reserved_bytes);
        assert_eq!(owned, self.owned_bytes, "owned bytes are the owned segments");
        assert_eq!(self.free_bytes + reserved, self.capacity());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    #[test]
    fn split_and_merge_round_trip() {
        let mut buddy = BuddyAllocator::new("kv-cache", 0x10_0000, 2 * MIB, 4 * KIB, MIB).unwrap();
        assert_eq!(buddy.free_block_count(), 2);
        let small = buddy.alloc(4 * KIB).unwrap();
        assert_eq!(buddy.free_block_count(), 9, "one 1 MiB block split into eight levels");
        let odd = buddy.alloc(12 * KIB).unwrap();
        assert_eq!(odd % (16 * KIB), 0);
        assert_eq!(buddy.allocation(odd), Some((16 * KIB, 12 * KIB)));
        buddy.check_invariants();
        assert_eq!(buddy.free(small), Ok(4 * KIB));
        assert_eq!(buddy.free(small), Err(MemError::DoubleFree { pool: "kv-cache", address: small }));
        assert_eq!(
            buddy.free(odd + 4 * KIB),
            Err(MemError::ForeignFree { pool: "kv-cache", address: odd + 4 * KIB })
        );
        assert_eq!(buddy.free(odd), Ok(12 * KIB));
        assert_eq!(buddy.free(odd), Err(MemError::DoubleFree { pool: "kv-cache", address: odd }));
        assert_eq!(buddy.free_block_count(), 2);
        buddy.check_invariants();
    }

    #[test]
    fn limits_are_errors() {
        let mut buddy = BuddyAllocator::new("activations", 0, MIB, 4 * KIB, MIB).unwrap();
        assert_eq!(buddy.alloc(0), Err(MemError::ZeroSize { pool: "activations" }));
        assert!(matches!(buddy.alloc(MIB + 1), Err(MemError::TooLarge { limit, .. }) if limit == MIB));
        buddy.alloc(MIB).unwrap();
        assert!(matches!(buddy.alloc(4 * KIB), Err(MemError::OutOfMemory { free: 0, .. })));
        assert!(matches!(buddy.free(2 * MIB), Err(MemError::ForeignFree { .. })));
        assert!(matches!(BuddyAllocator::new("x", 0, MIB, 3000, MIB), Err(MemError::BadAlignment { .. })));
    }

    #[test]
    fn unaligned_ranges_are_trimmed_and_fully_covered() {
        let buddy = BuddyAllocator::new("activations", 0x1000, 3 * MIB + 20 * KIB, 4 * KIB, MIB).unwrap();
        assert_eq!(buddy.base(), MIB);
        assert_eq!(buddy.capacity(), 2 * MIB + 24 * KIB);
        assert_eq!(buddy.free_block_count(), 4, "1 MiB, 1 MiB, 16 KiB, 8 KiB");
        buddy.check_invariants();
    }

    #[test]
    fn segments_are_donated_and_taken_back_whole() {
        let mut buddy =
            BuddyAllocator::owning_nothing("kv-cache", 0x4000_0000, 8 * MIB, 4 * KIB, 2 * MIB).unwrap();
        assert_eq!((buddy.capacity(), buddy.free_bytes()), (0, 0));
        assert!(matches!(buddy.alloc(4 * KIB), Err(MemError::OutOfMemory { .. })), "owns nothing yet");
        assert_eq!(buddy.span(), (0x4000_0000, 8 * MIB));
        buddy.donate(0x4000_0000 + 4 * MIB).unwrap();
        assert_eq!(
            buddy.donate(0x4000_0000 + 4 * MIB),
            Err(MemError::DoubleFree { pool: "kv-cache", address: 0x4040_0000 })
        );
        assert!(
            matches!(buddy.donate(0x4000_0000 + MIB), Err(MemError::ForeignFree { .. })),
            "not a segment start"
        );
        assert!(
            matches!(buddy.donate(0x4000_0000 + 8 * MIB), Err(MemError::ForeignFree { .. })),
            "past the end"
        );
        let small = buddy.alloc(4 * KIB).unwrap();
        assert!((0x4040_0000..0x4060_0000).contains(&small), "from the donated segment");
        buddy.check_invariants();
        assert_eq!(buddy.take_free_segment(), None, "its only segment is in use");
        buddy.donate(0x4000_0000).unwrap();
        assert_eq!(buddy.take_free_segment(), Some(0x4000_0000), "the free one goes back");
        buddy.free(small).unwrap();
        assert_eq!(buddy.take_free_segment(), Some(0x4040_0000));
        assert_eq!((buddy.capacity(), buddy.free_bytes()), (0, 0));
        buddy.check_invariants();
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Alloc(u64),
        Free(usize),
    }

    #[derive(Clone, Debug)]
    enum SegmentOperation {
        Alloc(u64),
        Free(usize),
        Donate(u64),
        Take,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_traces_keep_every_invariant(
            operations in proptest::collection::vec(
                prop_oneof![
                    3 => (1u64..=MIB).prop_map(Operation::Alloc),
                    2 => any::<usize>().prop_map(Operation::Free),
                ],
                1..200,
            ),
            extra_pages in 0u64..300,
        ) {
            let size = 3 * MIB + extra_pages * 4 * KIB;
            let mut buddy = BuddyAllocator::new("activations", 0x4000_0000, size, 4 * KIB, MIB).unwrap();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for operation in operations {
                match operation {
                    Operation::Alloc(size) => match buddy.alloc(size) {
                        Ok(address) => {
                            let block = size.next_power_of_two().max(4 * KIB);
                            prop_assert_eq!((address - buddy.base()) % block, 0);
                            prop_assert_eq!(address % block, 0);
                            for &(other, other_size) in &live {
                                prop_assert!(address + size <= other || other + other_size <= address);
                            }
                            live.push((address, size));
                        }
                        Err(MemError::OutOfMemory { largest_free, .. }) => {
                            prop_assert!(largest_free < size.next_power_of_two().max(4 * KIB));
                        }
                        Err(other) => prop_assert!(false, "unexpected {:?}", other),
                    },
                    Operation::Free(pick) => {
                        if live.is_empty() {
                            continue;
                        }
                        let (address, size) = live.swap_remove(pick % live.len());
                        prop_assert_eq!(buddy.free(address), Ok(size));
                        let again = buddy.free(address);
                        prop_assert!(matches!(again, Err(MemError::DoubleFree { .. })), "{:?}", again);
                    }
                }
                let requested: u64 = live.iter().map(|&(_, size)| size).sum();
                prop_assert_eq!(buddy.statistics().counters.live_bytes, requested);
                buddy.check_invariants();
            }
            for (address, size) in live {
                prop_assert_eq!(buddy.free(address), Ok(size));
            }
            buddy.check_invariants();
            prop_assert_eq!(buddy.free_block_count(), buddy.initial_block_count());
            prop_assert_eq!(buddy.free_bytes(), buddy.capacity());
        }

        /// Segments donated and taken back among allocations: every allocation lies in an
        /// owned segment, a segment comes back only when wholly free, and the owned bytes are
        /// always the donated less the taken.
        #[test]
        fn donated_segments_keep_every_invariant(
            operations in proptest::collection::vec(
                prop_oneof![
                    3 => (1u64..=2 * MIB).prop_map(SegmentOperation::Alloc),
                    2 => any::<usize>().prop_map(SegmentOperation::Free),
                    1 => (0u64..8).prop_map(SegmentOperation::Donate),
                    1 => Just(SegmentOperation::Take),
                ],
                1..200,
            ),
        ) {
            let base = 0x4000_0000;
            let mut buddy = BuddyAllocator::owning_nothing("activations", base, 16 * MIB, 4 * KIB, 2 * MIB).unwrap();
            let mut owned: Vec<u64> = Vec::new();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for operation in operations {
                match operation {
                    SegmentOperation::Alloc(size) => {
                        if let Ok(address) = buddy.alloc(size) {
                            let segment = address & !(2 * MIB - 1);
                            prop_assert!(owned.contains(&segment), "{address:#x} outside the owned segments");
                            live.push((address, size));
                        }
                    }
                    SegmentOperation::Free(pick) => {
                        if !live.is_empty() {
                            let (address, size) = live.swap_remove(pick % live.len());
                            prop_assert_eq!(buddy.free(address), Ok(size));
                        }
                    }
                    SegmentOperation::Donate(index) => {
                        let segment = base + index * 2 * MIB;
                        let result = buddy.donate(segment);
                        prop_assert_eq!(result.is_ok(), !owned.contains(&segment));
                        if result.is_ok() {
                            owned.push(segment);
                        }
                    }
                    SegmentOperation::Take => {
                        if let Some(segment) = buddy.take_free_segment() {
                            prop_assert!(live.iter().all(|&(address, _)| address & !(2 * MIB - 1) != segment));
                            owned.retain(|&other| other != segment);
                        }
                    }
                }
                prop_assert_eq!(buddy.capacity(), owned.len() as u64 * 2 * MIB);
                buddy.check_invariants();
            }
        }
    }
}
