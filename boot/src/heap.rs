//! The global allocator: the boot-time heap, counted, and the typed pools for whatever the
//! serving path allocates inside an allocation scope (`kernel::mm::scope`).
//!
//! Until the tensor pools exist every allocation comes from the heap region. Afterwards, an
//! allocation made inside a scope goes to that scope's pool (the core's slab cache, the
//! activations buddy or the RT pool); one made outside any scope, or that no pool can serve,
//! still comes from the heap and is counted, so `/mem` and the `mem` record show exactly
//! what the heap served after boot.

use core::alloc::{GlobalAlloc, Layout};
use kernel::{
    hil::HeapStatistics,
    mm::{
        buffer::BackedMemory,
        scope::{self, HeapCounters, Route},
        tensor::TensorKind,
    },
};
use linked_list_allocator::LockedHeap;

/// The heap region's allocator, its counters, and the pools once they exist.
pub struct TypedHeap {
    heap: LockedHeap,
    counters: HeapCounters,
    pools: spin::Once<&'static BackedMemory>,
}

#[global_allocator]
static HEAP: TypedHeap =
    TypedHeap { heap: LockedHeap::empty(), counters: HeapCounters::new(), pools: spin::Once::new() };

/// Hands the heap region `[base, base + size)` to the allocator.
///
/// # Safety
/// The range must be mapped read-write, cacheable, used by nothing else, and this must be
/// called once, before any allocation.
pub unsafe fn init(base: u64, size: u64) {
    // SAFETY: as the caller promised.
    unsafe { HEAP.heap.lock().init(base as *mut u8, size as usize) };
    HEAP.counters.set_capacity(size);
}

/// From now on, scoped allocations come from `memory`'s pools.
pub fn attach_pools(memory: &'static BackedMemory) {
    HEAP.pools.call_once(|| memory);
}

/// What the heap has served so far.
pub fn statistics() -> HeapStatistics {
    HEAP.counters.statistics()
}

impl TypedHeap {
    /// An allocation from a pool, if the core's scope asks for one and the pool has room.
    fn pool_alloc(&self, layout: Layout) -> Option<*mut u8> {
        let memory = self.pools.get()?.memory();
        let core = scope::current_core();
        if scope::inside(core) {
            return None;
        }
        let size = layout.size() as u64;
        let pool_alignment = |kind: TensorKind| match kind {
            TensorKind::Protocol => memory.cache_line(),
            _ => memory.alignment(size, TensorKind::Activation),
        };
        let address = match scope::route(core, layout.size(), layout.align(), pool_alignment) {
            Route::Pool(kind) => memory.alloc_address(core, size, kind).ok(),
            Route::Heap => None,
        };
        address.map(|address| address as *mut u8)
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

// SAFETY: every pointer returned is either from the linked-list heap (valid for `layout`) or
// a pool allocation of at least `layout.size()` bytes, aligned to at least `layout.align()`
// (checked by `scope::route` against the pool's guarantee), in mapped RAM owned by nothing
// else; `dealloc` sends each pointer back to where its address says it came from.
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
        let Some(pools) = self.pools.get() else { return };
        // A release can only fail for an address no pool handed out; GlobalAlloc's contract
        // rules that out.
        let _ = pools.memory().release_address(scope::current_core(), pointer as u64, layout.size() as u64);
    }
}
