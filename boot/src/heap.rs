//! The global allocator: the boot-time heap, counted; the typed pools for whatever the
//! serving path allocates inside an allocation scope (`kernel::mm::scope`); and the pools'
//! own metadata pool.
//!
//! Until the tensor pools exist every allocation comes from the heap. Afterwards:
//! - an allocation made inside a scope goes to that scope's pool (the core's slab cache, the
//!   activations buddy or the RT pool);
//! - one a pool makes for its own bookkeeping while it works (a tree node of the arena's
//!   chunk allocator, a longer free list of the slab depot) goes to the metadata pool, a small
//!   TLSF pool at the top of the heap region that no pool operation ever takes a lock of;
//! - anything else (outside any scope, what no pool can serve, or a protocol allocation that
//!   missed its deadline) comes from the heap and is counted, so `/mem` and the `mem` record
//!   show exactly what the heap served after boot.

use core::alloc::{GlobalAlloc, Layout};
use kernel::{
    hil::{self, HeapStatistics},
    mm::{
        buffer::BackedMemory,
        rt::RtPool,
        scope::{self, HeapCounters, Route},
        tensor::TensorKind,
    },
};
use linked_list_allocator::LockedHeap;

/// Bytes at the top of the heap region for the pools' metadata.
pub const METADATA_BYTES: u64 = 2 << 20;
/// The metadata pool's block granule (and so the alignment it gives).
const METADATA_GRANULE: u64 = 64;

/// The heap region's allocators, the heap's counters, and the pools once they exist.
pub struct TypedHeap {
    heap: LockedHeap,
    counters: HeapCounters,
    metadata: spin::Once<spin::Mutex<RtPool>>,
    pools: spin::Once<&'static BackedMemory>,
}

#[global_allocator]
static HEAP: TypedHeap = TypedHeap {
    heap: LockedHeap::empty(),
    counters: HeapCounters::new(),
    metadata: spin::Once::new(),
    pools: spin::Once::new(),
};

/// Hands the heap region `[base, base + size)` to the allocators: the heap below
/// [`METADATA_BYTES`] of metadata pool.
///
/// # Safety
/// The range must be mapped read-write, cacheable, used by nothing else, larger than
/// [`METADATA_BYTES`], and this must be called once, before any allocation.
pub unsafe fn init(base: u64, size: u64) {
    let heap = size - METADATA_BYTES;
    // SAFETY: as the caller promised; the metadata pool's range is apart from it.
    unsafe { HEAP.heap.lock().init(base as *mut u8, heap as usize) };
    HEAP.counters.set_capacity(heap);
    // The pool's table comes from the heap just initialised; a failure leaves no metadata
    // pool, and the pools' bookkeeping then comes from the heap.
    if let Ok(pool) = RtPool::new("pool metadata", base + heap, METADATA_BYTES, METADATA_GRANULE) {
        HEAP.metadata.call_once(|| spin::Mutex::new(pool));
    }
}

/// From now on, scoped allocations come from `memory`'s pools.
pub fn attach_pools(memory: &'static BackedMemory) {
    HEAP.pools.call_once(|| memory);
}

/// What the heap has served so far, and the metadata pool's use.
pub fn statistics() -> HeapStatistics {
    let mut statistics = HEAP.counters.statistics();
    if let Some(metadata) = HEAP.metadata.get() {
        let metadata = metadata.lock().statistics();
        statistics.metadata_capacity_bytes = metadata.capacity;
        statistics.metadata_live_bytes = metadata.counters.live_bytes;
    }
    statistics
}

impl TypedHeap {
    /// An allocation from a pool, if the core's scope asks for one and the pool has room; or
    /// from the metadata pool, for a pool's own bookkeeping.
    fn pool_alloc(&self, layout: Layout) -> Option<*mut u8> {
        let memory = self.pools.get()?.memory();
        let core = scope::current_core();
        if scope::inside(core) {
            return self.metadata_alloc(layout);
        }
        let size = layout.size() as u64;
        let pool_alignment = |kind: TensorKind| match kind {
            TensorKind::Protocol => memory.cache_line(),
            _ => memory.alignment(size, TensorKind::Activation),
        };
        let address = match scope::route(core, layout.size(), layout.align(), pool_alignment) {
            // A protocol allocation has a deadline on the board's clock; one that misses it
            // (counted among the protocol pool's failures) falls back to the counted heap.
            Route::Pool(kind) => {
                let clock = hil::board_time().map(|board| board.clock);
                memory.alloc_address(core, size, kind, clock).ok()
            }
            Route::Heap => None,
        };
        address.map(|address| address as *mut u8)
    }

    fn metadata_alloc(&self, layout: Layout) -> Option<*mut u8> {
        if layout.size() == 0 || layout.align() as u64 > METADATA_GRANULE {
            return None;
        }
        let address = self.metadata.get()?.lock().alloc(layout.size() as u64, METADATA_GRANULE).ok()?;
        Some(address as *mut u8)
    }

    fn heap_alloc(&self, layout: Layout) -> *mut u8 {
        let pointer =
            self.heap.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr());
        if !pointer.is_null() {
            self.counters.allocated(layout.size() as u64);
        }
        pointer
    }

    fn in_heap(&self, pointer: *mut u8) -> bool {
        let heap = self.heap.lock();
        (heap.bottom()..heap.top()).contains(&pointer)
    }
}

// SAFETY: every pointer returned is from the linked-list heap (valid for `layout`), the
// metadata pool or a tensor pool: an allocation of at least `layout.size()` bytes, aligned to
// at least `layout.align()` (checked against what the pool guarantees), in mapped RAM owned by
// nothing else; `dealloc` sends each pointer back to where its address says it came from.
unsafe impl GlobalAlloc for TypedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.pool_alloc(layout).unwrap_or_else(|| self.heap_alloc(layout))
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if self.in_heap(pointer) {
            self.counters.released(layout.size() as u64);
            // SAFETY: the pointer came from this heap with this layout (GlobalAlloc's contract).
            unsafe { self.heap.lock().deallocate(core::ptr::NonNull::new_unchecked(pointer), layout) };
            return;
        }
        if let Some(metadata) = self.metadata.get() {
            let mut metadata = metadata.lock();
            if metadata.contains(pointer as u64) {
                // The pool handed this address out (GlobalAlloc's contract), so this succeeds.
                let _ = metadata.free(pointer as u64);
                return;
            }
        }
        let Some(pools) = self.pools.get() else { return };
        // A release can only fail for an address no pool handed out; GlobalAlloc's contract
        // rules that out.
        let _ = pools.memory().release_address(scope::current_core(), pointer as u64, layout.size() as u64);
    }
}
