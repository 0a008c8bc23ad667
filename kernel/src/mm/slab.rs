//! Slab caches: small objects (16 B – 4 KiB) in size classes, with a per-core magazine fast
//! path that refills from, and spills to, a shared depot fed by the buddy allocator.
//!
//! Objects are addresses: the magazines and depot lists hold them in heap-allocated arrays,
//! and each slab's allocated-object bitmap sits in a table beside the page source's range.
//! Nothing is written into the managed memory, so the whole module is safe Rust.

#![forbid(unsafe_code)]

use super::buddy::BuddyAllocator;
use super::error::MemError;
use super::stats::{PoolCounters, PoolStatistics};
use crate::telemetry::{self, EventKind, ShortName};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Bytes of one slab, taken from the page source in one piece.
pub const SLAB_BYTES: u64 = 16 * 1024;
/// Objects a magazine holds.
pub const MAGAZINE_CAPACITY: usize = 32;
/// Slabs' worth of objects each class's depot list has room for from the start, so the
/// lists (kept on the kernel heap) do not grow while serving until a class holds more than
/// this many slabs of free objects at once.
pub const DEPOT_RESERVED_SLABS: usize = 32;
/// Every size class the slab can offer; a depot keeps those that are multiples of its
/// alignment.
pub const SIZE_CLASSES: [u32; 16] =
    [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096];
/// The smallest class, and the step of the size-to-class table.
const SMALLEST: u64 = 16;
/// The largest object a slab hands out.
pub const LARGEST_OBJECT: u64 = 4096;
/// Bitmap words per slab: one bit per smallest object.
const BITMAP_WORDS: usize = (SLAB_BYTES / SMALLEST / 64) as usize;
/// A slot with no class: its slab is not in use.
const NO_CLASS: u8 = u8::MAX;

/// Where a slab depot gets its slabs: something that hands out and takes back blocks of
/// [`SLAB_BYTES`], aligned to [`SLAB_BYTES`], inside one fixed range.
pub trait PageSource: Sync + Send {
    /// The range every block comes from, as `(base, size)`.
    fn range(&self) -> (u64, u64);
    /// A block of `bytes` bytes aligned to `bytes`.
    fn take_pages(&self, bytes: u64) -> Result<u64, MemError>;
    /// Returns a block from [`PageSource::take_pages`].
    fn return_pages(&self, address: u64) -> Result<(), MemError>;
}

impl PageSource for spin::Mutex<BuddyAllocator> {
    fn range(&self) -> (u64, u64) {
        let buddy = self.lock();
        buddy.span()
    }

    fn take_pages(&self, bytes: u64) -> Result<u64, MemError> {
        self.lock().alloc(bytes)
    }

    fn return_pages(&self, address: u64) -> Result<(), MemError> {
        self.lock().free(address).map(drop)
    }
}

impl<Source: PageSource> PageSource for Arc<Source> {
    fn range(&self) -> (u64, u64) {
        Source::range(self)
    }

    fn take_pages(&self, bytes: u64) -> Result<u64, MemError> {
        Source::take_pages(self, bytes)
    }

    fn return_pages(&self, address: u64) -> Result<(), MemError> {
        Source::return_pages(self, address)
    }
}

/// Per-slab metadata, one per [`SLAB_BYTES`] of the source range: the slab's class (or
/// none) and a bit per object that is set while the object is live.
#[derive(Debug)]
struct SlabSlot {
    class: AtomicU8,
    allocated: [AtomicU64; BITMAP_WORDS],
}

/// The depot's locked state: free objects per class, and how many of each slab's objects
/// sit in those lists.
#[derive(Debug)]
struct DepotLists {
    free: Vec<Vec<u64>>,
    in_depot: Vec<u32>,
    slabs: u64,
    refills: u64,
    published: Tally,
    peak_live_bytes: u64,
}

impl DepotLists {
    /// Adds a core's unpublished counts to the depot's and updates the peak.
    fn publish(&mut self, tally: &mut Tally) {
        self.published.add(tally);
        *tally = Tally::default();
        self.peak_live_bytes = self.peak_live_bytes.max(self.published.live_bytes.max(0) as u64);
    }
}

/// Allocation counts a core has not yet published to the depot. Live bytes may be negative
/// on one core when it frees objects another core allocated.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    allocations: u64,
    frees: u64,
    live_bytes: i64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.allocations += other.allocations;
        self.frees += other.frees;
        self.live_bytes += other.live_bytes;
    }
}

/// The shared half of the slab caches: size classes, slab metadata and the locked depot.
///
/// Invariants (checked by the tests):
/// - an object is in at most one place: live (its bit set), in one core's magazine, or in
///   the depot's list for its class (bit clear in both of the latter);
/// - a slab's slot names its class exactly while the slab is held from the page source;
/// - a slab goes back to the source only when all its objects are in the depot, so no
///   magazine ever holds an address of a returned slab;
/// - live bytes = the sum of the class sizes of live objects.
///
/// Time bounds: [`CoreSlab::alloc`] and [`CoreSlab::free`] are O(1) and lock-free while the
/// core's magazine has an object (alloc) or room (free): a table look-up, an atomic bitmap
/// update and an array push or pop. Otherwise they take the depot lock once and move
/// `MAGAZINE_CAPACITY / 2` objects (plus, on refill from an empty depot, one page-source
/// allocation and `SLAB_BYTES / class` pushes). [`SlabDepot::reclaim`] is O(free objects)
/// and belongs off the allocation path.
#[derive(Debug)]
pub struct SlabDepot<Source: PageSource> {
    name: &'static str,
    source: Source,
    classes: Vec<u32>,
    reciprocals: Vec<u64>,
    objects: Vec<u32>,
    class_of_size: Vec<u8>,
    table_base: u64,
    slots: Vec<SlabSlot>,
    lists: spin::Mutex<DepotLists>,
    failures: AtomicU64,
    bad_frees: AtomicU64,
}

impl<Source: PageSource> SlabDepot<Source> {
    /// A depot named `name` over `source`, offering the classes of [`SIZE_CLASSES`] that are
    /// multiples of `alignment` (a power of two from 16 to 4096), so every object is aligned
    /// to at least `alignment`.
    pub fn new(name: &'static str, source: Source, alignment: u64) -> Result<Self, MemError> {
        if !alignment.is_power_of_two() || !(SMALLEST..=LARGEST_OBJECT).contains(&alignment) {
            return Err(MemError::BadAlignment { pool: name, alignment });
        }
        let classes: Vec<u32> = SIZE_CLASSES
            .iter()
            .copied()
            .filter(|&class| u64::from(class).is_multiple_of(alignment))
            .collect();
        let mut class_of_size = vec![NO_CLASS; (LARGEST_OBJECT / SMALLEST) as usize + 1];
        for (step, entry) in class_of_size.iter_mut().enumerate() {
            let size = step as u64 * SMALLEST;
            if let Some(index) = classes.iter().position(|&class| u64::from(class) >= size) {
                *entry = index as u8;
            }
        }
        let (base, size) = source.range();
        let table_base = base & !(SLAB_BYTES - 1);
        let slot_count = (base + size - table_base).div_ceil(SLAB_BYTES) as usize;
        let slots = (0..slot_count)
            .map(|_| SlabSlot { class: AtomicU8::new(NO_CLASS), allocated: Default::default() })
            .collect();
        let lists = DepotLists {
            free: classes
                .iter()
                .map(|&class| {
                    Vec::with_capacity(DEPOT_RESERVED_SLABS * (SLAB_BYTES / u64::from(class)) as usize)
                })
                .collect(),
            in_depot: vec![0; slot_count],
            slabs: 0,
            refills: 0,
            published: Tally::default(),
            peak_live_bytes: 0,
        };
        let reciprocals = classes.iter().map(|&class| (1u64 << 32).div_ceil(u64::from(class))).collect();
        let objects = classes.iter().map(|&class| (SLAB_BYTES / u64::from(class)) as u32).collect();
        Ok(Self {
            name,
            source,
            classes,
            reciprocals,
            objects,
            class_of_size,
            table_base,
            slots,
            lists: spin::Mutex::new(lists),
            failures: AtomicU64::new(0),
            bad_frees: AtomicU64::new(0),
        })
    }

    /// The page source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The size classes offered, smallest first.
    pub fn classes(&self) -> &[u32] {
        &self.classes
    }

    /// The class size that holds `size` bytes, if a slab serves it.
    pub fn class_size(&self, size: u64) -> Option<u64> {
        self.class_index(size).map(|index| u64::from(self.classes[index]))
    }

    fn class_index(&self, size: u64) -> Option<usize> {
        if size == 0 || size > LARGEST_OBJECT {
            return None;
        }
        let entry = self.class_of_size[size.div_ceil(SMALLEST) as usize];
        (entry != NO_CLASS).then_some(usize::from(entry))
    }

    fn objects_per_slab(&self, class: usize) -> u32 {
        self.objects[class]
    }

    /// The index of the object at `offset` in a slab of `class`, without a division:
    /// `offset × ⌈2³² / size⌉ >> 32` equals `offset / size` exactly for every offset below
    /// [`SLAB_BYTES`] (the rounding error stays under `2¹⁴ / 2³²`, less than the smallest
    /// fractional step `1 / size`).
    fn object_index(&self, class: usize, offset: u64) -> u64 {
        (offset * self.reciprocals[class]) >> 32
    }

    fn slot_of(&self, address: u64) -> Option<(usize, u64)> {
        let offset = address.checked_sub(self.table_base)?;
        let slot = (offset / SLAB_BYTES) as usize;
        (slot < self.slots.len()).then_some((slot, offset % SLAB_BYTES))
    }

    /// Fills `magazine` half way from the depot, carving a new slab when the depot is empty.
    fn refill(&self, class: usize, magazine: &mut Magazine, tally: &mut Tally) -> Result<(), MemError> {
        let mut lists = self.lists.lock();
        lists.publish(tally);
        if lists.free[class].is_empty() {
            // The slow path: a new slab from the page source.
            telemetry::record(EventKind::AllocationSlowPath {
                pool: ShortName::new(self.name),
                bytes: u64::from(self.classes[class]),
            });
            let slab = self.source.take_pages(SLAB_BYTES)?;
            let Some((slot, 0)) = self.slot_of(slab) else {
                // The source broke its contract; hand the block back and report it.
                let _ = self.source.return_pages(slab);
                return Err(MemError::ForeignFree { pool: self.name, address: slab });
            };
            self.slots[slot].class.store(class as u8, Ordering::Release);
            let count = self.objects_per_slab(class);
            let size = u64::from(self.classes[class]);
            lists.free[class].extend((0..u64::from(count)).rev().map(|index| slab + index * size));
            lists.in_depot[slot] = count;
            lists.slabs += 1;
        }
        lists.refills += 1;
        let take = (MAGAZINE_CAPACITY / 2).min(lists.free[class].len());
        for _ in 0..take {
            let Some(object) = lists.free[class].pop() else { break };
            if let Some((slot, _)) = self.slot_of(object) {
                lists.in_depot[slot] -= 1;
            }
            magazine.objects[magazine.count] = object;
            magazine.count += 1;
        }
        Ok(())
    }

    /// Moves the older half of `magazine` into the depot (all of it when `everything`).
    fn spill(&self, class: usize, magazine: &mut Magazine, tally: &mut Tally, everything: bool) {
        let keep = if everything { 0 } else { magazine.count / 2 };
        let mut lists = self.lists.lock();
        lists.publish(tally);
        for &object in &magazine.objects[..magazine.count - keep] {
            if let Some((slot, _)) = self.slot_of(object) {
                lists.in_depot[slot] += 1;
            }
            lists.free[class].push(object);
        }
        magazine.objects.copy_within(magazine.count - keep..magazine.count, 0);
        magazine.count = keep;
    }

    /// Returns every slab whose objects are all in the depot to the page source. Returns the
    /// number of slabs released. O(free objects); call it off the allocation path.
    pub fn reclaim(&self) -> u64 {
        let mut lists = self.lists.lock();
        let mut released = 0;
        for class in 0..self.classes.len() {
            let full = self.objects_per_slab(class);
            let DepotLists { free, in_depot, .. } = &mut *lists;
            let empty_slab =
                |object: u64| self.slot_of(object).is_some_and(|(slot, _)| in_depot[slot] == full);
            free[class].retain(|&object| !empty_slab(object));
            for (index, (slot, count)) in self.slots.iter().zip(in_depot.iter_mut()).enumerate() {
                if *count == full && usize::from(slot.class.load(Ordering::Acquire)) == class {
                    *count = 0;
                    slot.class.store(NO_CLASS, Ordering::Release);
                    let base = self.table_base + index as u64 * SLAB_BYTES;
                    if self.source.return_pages(base).is_ok() {
                        released += 1;
                    }
                }
            }
        }
        lists.slabs -= released;
        released
    }

    /// A snapshot of the counters, counting the unpublished allocations of `cores` (pass every
    /// core's cache for exact live bytes and counts). Reserved bytes are the slabs held from
    /// the source and free bytes are those slabs' bytes not live. Every free object serves its
    /// own class, so external fragmentation does not apply: the free bytes are reported as one
    /// extent. The peak of live bytes is sampled when a core exchanges with the depot, so it
    /// can trail the true peak by up to a magazine per core and class.
    pub fn statistics(&self, cores: &[&CoreSlab]) -> PoolStatistics {
        self.statistics_visiting(|visit| cores.iter().for_each(|core| visit(core)))
    }

    /// Like [`SlabDepot::statistics`], for per-core caches reached one at a time (each behind
    /// its own lock): `cores` calls its argument with each. Allocates nothing.
    pub fn statistics_visiting(&self, cores: impl FnOnce(&mut dyn FnMut(&CoreSlab))) -> PoolStatistics {
        let (slabs, mut tally, peak) = {
            let lists = self.lists.lock();
            (lists.slabs, lists.published, lists.peak_live_bytes)
        };
        cores(&mut |core| tally.add(&core.tally));
        let live = tally.live_bytes.max(0) as u64;
        let (base, capacity) = self.source.range();
        let reserved = slabs * SLAB_BYTES;
        PoolStatistics {
            name: self.name,
            base,
            capacity,
            counters: PoolCounters {
                allocations: tally.allocations,
                frees: tally.frees,
                failures: self.failures.load(Ordering::Relaxed),
                bad_frees: self.bad_frees.load(Ordering::Relaxed),
                live_bytes: live,
                reserved_bytes: reserved,
                peak_live_bytes: peak.max(live),
                peak_reserved_bytes: reserved,
                zeroed_bytes: 0,
            },
            free_bytes: reserved.saturating_sub(live),
            largest_free: reserved.saturating_sub(live),
        }
    }

    /// Slabs currently held from the page source.
    pub fn slab_count(&self) -> u64 {
        self.lists.lock().slabs
    }

    /// Times a magazine was refilled from the depot.
    pub fn refill_count(&self) -> u64 {
        self.lists.lock().refills
    }
}

/// One class's magazine: a stack of free object addresses owned by one core.
#[derive(Clone, Copy, Debug)]
struct Magazine {
    objects: [u64; MAGAZINE_CAPACITY],
    count: usize,
}

/// One core's slab cache: a magazine per size class. Each core owns its `CoreSlab` (it is
/// not shared), which is what makes the fast path free of locks; only refills and spills
/// touch the shared [`SlabDepot`]. Use a `CoreSlab` only with the depot it was made for.
#[derive(Debug)]
pub struct CoreSlab {
    core: usize,
    magazines: Vec<Magazine>,
    tally: Tally,
}

impl CoreSlab {
    /// An empty cache for core `core` of `depot`.
    pub fn new<Source: PageSource>(depot: &SlabDepot<Source>, core: usize) -> Self {
        Self {
            core,
            magazines: vec![Magazine { objects: [0; MAGAZINE_CAPACITY], count: 0 }; depot.classes.len()],
            tally: Tally::default(),
        }
    }

    /// The core this cache belongs to.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Allocates an object of at least `size` bytes. Returns its address.
    pub fn alloc<Source: PageSource>(
        &mut self,
        depot: &SlabDepot<Source>,
        size: u64,
    ) -> Result<u64, MemError> {
        let result = self.take(depot, size);
        if result.is_err() {
            depot.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn take<Source: PageSource>(&mut self, depot: &SlabDepot<Source>, size: u64) -> Result<u64, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { pool: depot.name });
        }
        let Some(class) = depot.class_index(size) else {
            return Err(MemError::TooLarge { pool: depot.name, requested: size, limit: LARGEST_OBJECT });
        };
        let magazine = &mut self.magazines[class];
        if magazine.count == 0 {
            depot.refill(class, magazine, &mut self.tally).map_err(|error| match error {
                MemError::OutOfMemory { free, largest_free, .. } => {
                    MemError::OutOfMemory { pool: depot.name, requested: size, free, largest_free }
                }
                other => other,
            })?;
        }
        magazine.count -= 1;
        let address = magazine.objects[magazine.count];
        let class_size = u64::from(depot.classes[class]);
        if let Some((slot, offset)) = depot.slot_of(address) {
            let index = depot.object_index(class, offset);
            let bit = 1u64 << (index % 64);
            let previous =
                depot.slots[slot].allocated[(index / 64) as usize].fetch_or(bit, Ordering::Relaxed);
            debug_assert_eq!(previous & bit, 0, "object {address:#x} handed out twice");
        }
        self.tally.allocations += 1;
        self.tally.live_bytes += class_size as i64;
        Ok(address)
    }

    /// Frees the object at `address`, which any core may have allocated. Returns its class
    /// size. Double frees and addresses that are not live objects are refused.
    pub fn free<Source: PageSource>(
        &mut self,
        depot: &SlabDepot<Source>,
        address: u64,
    ) -> Result<u64, MemError> {
        let result = self.give_back(depot, address);
        if result.is_err() {
            depot.bad_frees.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn give_back<Source: PageSource>(
        &mut self,
        depot: &SlabDepot<Source>,
        address: u64,
    ) -> Result<u64, MemError> {
        let foreign = MemError::ForeignFree { pool: depot.name, address };
        let (slot, offset) = depot.slot_of(address).ok_or(foreign)?;
        let class = depot.slots[slot].class.load(Ordering::Acquire);
        if class == NO_CLASS {
            return Err(foreign);
        }
        let class = usize::from(class);
        let class_size = u64::from(depot.classes[class]);
        let index = depot.object_index(class, offset);
        if index * class_size != offset || index >= u64::from(depot.objects_per_slab(class)) {
            return Err(foreign);
        }
        let bit = 1u64 << (index % 64);
        let previous = depot.slots[slot].allocated[(index / 64) as usize].fetch_and(!bit, Ordering::Relaxed);
        if previous & bit == 0 {
            return Err(MemError::DoubleFree { pool: depot.name, address });
        }
        let magazine = &mut self.magazines[class];
        if magazine.count == MAGAZINE_CAPACITY {
            depot.spill(class, magazine, &mut self.tally, false);
        }
        magazine.objects[magazine.count] = address;
        magazine.count += 1;
        self.tally.frees += 1;
        self.tally.live_bytes -= class_size as i64;
        Ok(class_size)
    }

    /// Moves every cached object back to the depot (before a core goes idle, or before
    /// [`SlabDepot::reclaim`]).
    pub fn drain<Source: PageSource>(&mut self, depot: &SlabDepot<Source>) {
        for (class, magazine) in self.magazines.iter_mut().enumerate() {
            if magazine.count > 0 {
                depot.spill(class, magazine, &mut self.tally, true);
            }
        }
        depot.lists.lock().publish(&mut self.tally);
    }

    /// Objects cached in this core's magazines.
    pub fn cached_objects(&self) -> usize {
        self.magazines.iter().map(|magazine| magazine.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    const MIB: u64 = 1 << 20;

    fn depot(alignment: u64) -> SlabDepot<spin::Mutex<BuddyAllocator>> {
        let buddy = BuddyAllocator::new("activations", 0x800_0000, 4 * MIB, 4096, MIB).unwrap();
        SlabDepot::new("slab", spin::Mutex::new(buddy), alignment).unwrap()
    }

    fn source_is_whole(depot: &SlabDepot<spin::Mutex<BuddyAllocator>>) -> bool {
        let buddy = depot.source().lock();
        buddy.free_bytes() == buddy.capacity() && buddy.free_block_count() == buddy.initial_block_count()
    }

    #[test]
    fn classes_follow_the_alignment() {
        assert_eq!(depot(16).classes().len(), 16);
        assert_eq!(depot(64).classes(), [64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]);
        assert_eq!(depot(128).class_size(65), Some(128));
        assert_eq!(depot(128).class_size(129), Some(256));
        assert_eq!(depot(16).class_size(17), Some(32));
        assert_eq!(depot(16).class_size(4097), None);
        assert!(matches!(
            SlabDepot::new(
                "slab",
                spin::Mutex::new(BuddyAllocator::new("b", 0, MIB, 4096, MIB).unwrap()),
                24
            ),
            Err(MemError::BadAlignment { .. })
        ));
    }

    #[test]
    fn object_index_needs_no_division() {
        let depot = depot(16);
        for (class, &size) in depot.classes().iter().enumerate() {
            for offset in 0..SLAB_BYTES {
                assert_eq!(depot.object_index(class, offset), offset / u64::from(size), "class {size}");
            }
        }
    }

    #[test]
    fn misuse_is_detected() {
        let depot = depot(16);
        let mut core = CoreSlab::new(&depot, 0);
        let object = core.alloc(&depot, 100).unwrap();
        assert_eq!(
            core.free(&depot, object + 16),
            Err(MemError::ForeignFree { pool: "slab", address: object + 16 })
        );
        assert_eq!(core.free(&depot, 0x10), Err(MemError::ForeignFree { pool: "slab", address: 0x10 }));
        assert_eq!(core.free(&depot, object), Ok(128));
        assert_eq!(core.free(&depot, object), Err(MemError::DoubleFree { pool: "slab", address: object }));
        assert!(matches!(core.alloc(&depot, 5000), Err(MemError::TooLarge { .. })));
        assert!(matches!(core.alloc(&depot, 0), Err(MemError::ZeroSize { .. })));
        let statistics = depot.statistics(&[&core]);
        assert_eq!(statistics.counters.bad_frees, 3);
        assert_eq!(statistics.counters.failures, 2);
    }

    #[test]
    fn exhaustion_is_out_of_memory() {
        let buddy = BuddyAllocator::new("activations", 0, 64 * 1024, 4096, 64 * 1024).unwrap();
        let depot = SlabDepot::new("slab", spin::Mutex::new(buddy), 16).unwrap();
        let mut core = CoreSlab::new(&depot, 0);
        for _ in 0..16 {
            core.alloc(&depot, 4096).unwrap();
        }
        assert!(matches!(
            core.alloc(&depot, 4096),
            Err(MemError::OutOfMemory { pool: "slab", requested: 4096, .. })
        ));
    }

    #[test]
    fn carving_a_new_slab_is_traced_as_a_slow_path() {
        use crate::telemetry::{EventKind, TRACE};
        let buddy = BuddyAllocator::new("activations", 0, 64 * 1024, 4096, 64 * 1024).unwrap();
        let depot = SlabDepot::new("slab-traced", spin::Mutex::new(buddy), 16).unwrap();
        let mut core = CoreSlab::new(&depot, 0);
        core.alloc(&depot, 48).unwrap();
        let slow = |event: &crate::telemetry::TraceEvent| matches!(event.kind, EventKind::AllocationSlowPath { pool, bytes: 48 } if pool.as_str() == "slab-traced");
        assert!(TRACE.snapshot(TRACE.capacity()).iter().any(slow), "the first allocation carved a slab");
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Alloc { core: usize, size: u64 },
        Free { core: usize, pick: usize },
        Drain { core: usize },
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn random_traces_keep_every_invariant(
            operations in proptest::collection::vec(
                prop_oneof![
                    6 => (0usize..2, 1u64..=4096).prop_map(|(core, size)| Operation::Alloc { core, size }),
                    5 => (0usize..2, any::<usize>()).prop_map(|(core, pick)| Operation::Free { core, pick }),
                    1 => (0usize..2).prop_map(|core| Operation::Drain { core }),
                ],
                1..300,
            ),
            alignment_log2 in 4u32..8,
        ) {
            let alignment = 1 << alignment_log2;
            let depot = depot(alignment);
            let mut cores = [CoreSlab::new(&depot, 0), CoreSlab::new(&depot, 1)];
            let mut live: Vec<(u64, u64)> = Vec::new();
            for operation in operations {
                match operation {
                    Operation::Alloc { core, size } => {
                        let address = cores[core].alloc(&depot, size).unwrap();
                        let class = depot.class_size(size).unwrap();
                        prop_assert!(class >= size);
                        prop_assert_eq!(address % alignment, 0);
                        for &(other, other_class) in &live {
                            prop_assert!(address + class <= other || other + other_class <= address);
                        }
                        live.push((address, class));
                    }
                    Operation::Free { core, pick } => {
                        if live.is_empty() {
                            continue;
                        }
                        let (address, class) = live.swap_remove(pick % live.len());
                        prop_assert_eq!(cores[core].free(&depot, address), Ok(class));
                        let again = cores[1 - core].free(&depot, address);
                        prop_assert!(matches!(again, Err(MemError::DoubleFree { .. })), "{:?}", again);
                    }
                    Operation::Drain { core } => cores[core].drain(&depot),
                }
                let bytes: u64 = live.iter().map(|&(_, class)| class).sum();
                prop_assert_eq!(depot.statistics(&[&cores[0], &cores[1]]).counters.live_bytes, bytes);
                prop_assert!(depot.slab_count() * SLAB_BYTES >= bytes);
            }
            for (address, _) in live {
                cores[0].free(&depot, address).unwrap();
            }
            for core in &mut cores {
                core.drain(&depot);
                prop_assert_eq!(core.cached_objects(), 0);
            }
            let held = depot.slab_count();
            prop_assert_eq!(depot.reclaim(), held);
            prop_assert_eq!(depot.slab_count(), 0);
            prop_assert!(source_is_whole(&depot), "every slab went back and the buddy re-merged");
        }
    }

    #[test]
    fn four_cores_allocate_at_once() {
        let depot = depot(64);
        let (base, size) = depot.source().range();
        // One byte per 64-byte unit of the range: 1 while a live object covers it.
        let owned: Vec<AtomicU8> = (0..size / 64).map(|_| AtomicU8::new(0)).collect();
        let mailbox: Mutex<Vec<u64>> = Mutex::new(Vec::new());
        let claim = |address: u64, class: u64, value: u8| {
            for unit in (address - base) / 64..(address - base + class) / 64 {
                let previous = owned[unit as usize].swap(value, Ordering::AcqRel);
                assert_eq!(previous, 1 - value, "unit {unit} claimed twice or freed twice");
            }
        };
        let caches: Vec<CoreSlab> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|core| {
                    let (depot, claim, mailbox) = (&depot, &claim, &mailbox);
                    scope.spawn(move || {
                        let mut cache = CoreSlab::new(depot, core);
                        let mut random = crate::rand::SplitMix64::new(core as u64 + 1);
                        let mut mine: Vec<u64> = Vec::new();
                        for _ in 0..4000 {
                            if mine.len() < 200 && random.below(10) < 6 {
                                let size = 1 + random.below(1024);
                                let address = cache.alloc(depot, size).unwrap();
                                claim(address, depot.class_size(size).unwrap(), 1);
                                mine.push(address);
                            } else if let Some(address) = mine.pop() {
                                if random.below(4) == 0 {
                                    mailbox.lock().unwrap().push(address);
                                } else {
                                    let class = object_class(depot, address);
                                    claim(address, class, 0);
                                    assert_eq!(cache.free(depot, address), Ok(class));
                                }
                            }
                            // Free another core's object now and then.
                            if random.below(8) == 0 {
                                let foreign = mailbox.lock().unwrap().pop();
                                if let Some(address) = foreign {
                                    let class = object_class(depot, address);
                                    claim(address, class, 0);
                                    assert_eq!(cache.free(depot, address), Ok(class));
                                }
                            }
                        }
                        for address in mine {
                            let class = object_class(depot, address);
                            claim(address, class, 0);
                            cache.free(depot, address).unwrap();
                        }
                        cache
                    })
                })
                .collect();
            workers.into_iter().map(|worker| worker.join().unwrap()).collect()
        });
        let mut cleaner = CoreSlab::new(&depot, 0);
        for address in mailbox.into_inner().unwrap() {
            let class = object_class(&depot, address);
            claim(address, class, 0);
            cleaner.free(&depot, address).unwrap();
        }
        assert!(owned.iter().all(|unit| unit.load(Ordering::Relaxed) == 0));
        let mut caches: Vec<CoreSlab> = caches.into_iter().chain([cleaner]).collect();
        let statistics = depot.statistics(&caches.iter().collect::<Vec<_>>());
        assert_eq!(statistics.counters.live_bytes, 0);
        assert_eq!(statistics.counters.allocations, statistics.counters.frees);
        assert!(statistics.counters.allocations > 4 * 1000);
        for cache in &mut caches {
            cache.drain(&depot);
        }
        assert_eq!(
            depot.statistics(&[]).counters.frees,
            statistics.counters.frees,
            "drained caches published"
        );
        depot.reclaim();
        assert!(source_is_whole(&depot));
    }

    /// The class size of a live object, read from its slab's slot.
    fn object_class(depot: &SlabDepot<spin::Mutex<BuddyAllocator>>, address: u64) -> u64 {
        let (slot, _) = depot.slot_of(address).unwrap();
        u64::from(depot.classes[usize::from(depot.slots[slot].class.load(Ordering::Acquire))])
    }
}
