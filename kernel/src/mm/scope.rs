//! Typed allocation scopes: which pool serves the allocations a core makes through `alloc`
//! (`Vec`, `String`, `Box`, ...) while it runs a piece of the serving path.
//!
//! The global heap is for boot-time bookkeeping. Once the pools exist, the serving code says
//! what each piece of work allocates for, [`with`]`(TensorKind::Small, || ...)` around a
//! request's own objects, [`with`]`(TensorKind::Protocol, || ...)` around the console's lines
//! and records, and the board's global allocator (boot's `TypedHeap`) asks [`route`] where
//! each allocation goes:
//!
//! - [`TensorKind::Small`]: the core's slab cache below a page, the activations buddy above;
//! - [`TensorKind::Activation`]: the same routing (scratch tensors that are not sized ahead);
//! - [`TensorKind::Protocol`]: the RT pool;
//! - inside the allocator itself (a pool growing its own bookkeeping): the board's metadata
//!   pool, which no pool operation locks, so no pool lock is ever taken twice;
//! - outside any scope, or for an alignment or size no pool serves: the global heap, where
//!   it is counted ([`HeapCounters`]), so a test can show that serving leaves the heap alone.
//!
//! A release finds its pool from the address alone (see `TensorMemory::release_address`), so
//! an object may be freed in any scope. Scopes nest; each core has its own.

#![forbid(unsafe_code)]

use super::tensor::TensorKind;
use crate::hil::{HeapStatistics, board_time};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Cores whose scopes are tracked; a core numbered higher always allocates from the heap.
pub const MAX_CORES: usize = 8;

/// No scope: the heap.
const NONE: u8 = 0;

static SCOPES: [AtomicU8; MAX_CORES] = [const { AtomicU8::new(NONE) }; MAX_CORES];
static IN_ALLOCATOR: [AtomicBool; MAX_CORES] = [const { AtomicBool::new(false) }; MAX_CORES];

fn code(kind: TensorKind) -> u8 {
    match kind {
        TensorKind::Small => 1,
        TensorKind::Activation => 2,
        TensorKind::Protocol => 3,
        // Weights, KV blocks and device buffers are always allocated explicitly, by size and
        // lifetime the caller knows; a scope of theirs routes nothing.
        TensorKind::Weights | TensorKind::KvCache | TensorKind::Device => NONE,
    }
}

fn kind_of(code: u8) -> Option<TensorKind> {
    match code {
        1 => Some(TensorKind::Small),
        2 => Some(TensorKind::Activation),
        3 => Some(TensorKind::Protocol),
        _ => None,
    }
}

/// The number of the calling core (0 on the host, where no board is installed).
pub fn current_core() -> usize {
    board_time().map_or(0, |board| (board.core)() as usize)
}

/// Runs `work` with the calling core's allocations served from `kind`'s pool, then restores
/// the scope that was in force before.
pub fn with<T>(kind: TensorKind, work: impl FnOnce() -> T) -> T {
    with_on(current_core(), kind, work)
}

/// [`with`] on core `core`.
fn with_on<T>(core: usize, kind: TensorKind, work: impl FnOnce() -> T) -> T {
    swapped(core, code(kind), work)
}

/// Runs `work` with `core`'s scope set to `code`, then restores it.
fn swapped<T>(core: usize, code: u8, work: impl FnOnce() -> T) -> T {
    let Some(slot) = SCOPES.get(core) else { return work() };
    let previous = slot.swap(code, Ordering::Relaxed);
    let result = work();
    slot.store(previous, Ordering::Relaxed);
    result
}

/// The scope in force on `core`, if any.
pub fn current(core: usize) -> Option<TensorKind> {
    kind_of(SCOPES.get(core)?.load(Ordering::Relaxed))
}

/// Where one allocation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The pool of this kind, on the given core.
    Pool(TensorKind),
    /// The global heap.
    Heap,
}

/// Where an allocation of `size` bytes aligned to `alignment` on `core` goes, given the
/// alignment the pools guarantee for it (`pool_alignment`). The caller has entered the
/// allocator ([`enter`]); a core that was already inside it (a pool growing its own
/// bookkeeping) allocates from the heap, so no pool lock is taken twice.
pub fn route(
    core: usize,
    size: usize,
    alignment: usize,
    pool_alignment: impl Fn(TensorKind) -> u64,
) -> Route {
    match current(core) {
        Some(kind) if size > 0 && alignment as u64 <= pool_alignment(kind) => Route::Pool(kind),
        _ => Route::Heap,
    }
}

/// Enters the allocator on `core`: `false` when the core is already inside it (or is not
/// tracked), and then nothing may be taken from a pool. Call [`leave`] after a `true`.
pub fn enter(core: usize) -> bool {
    IN_ALLOCATOR.get(core).is_some_and(|busy| !busy.swap(true, Ordering::Acquire))
}

/// Leaves the allocator entered by [`enter`] on `core`.
pub fn leave(core: usize) {
    if let Some(busy) = IN_ALLOCATOR.get(core) {
        busy.store(false, Ordering::Release);
    }
}

/// Whether `core` is inside a pool operation now (so an allocation it makes must come from
/// the heap).
pub fn inside(core: usize) -> bool {
    IN_ALLOCATOR.get(core).is_none_or(|busy| busy.load(Ordering::Relaxed))
}

/// Runs `work`, a pool operation that takes pool locks, with the calling core marked as
/// inside the allocator: whatever `work` allocates through `alloc` comes from the heap, never
/// from a pool whose lock `work` may hold.
pub fn guarded<T>(work: impl FnOnce() -> T) -> T {
    let core = current_core();
    let entered = enter(core);
    let result = work();
    if entered {
        leave(core);
    }
    result
}

/// Counters of the global heap, updated by the board's allocator.
#[derive(Debug, Default)]
pub struct HeapCounters {
    capacity: AtomicU64,
    live: AtomicU64,
    peak: AtomicU64,
    allocations: AtomicU64,
    frees: AtomicU64,
}

impl HeapCounters {
    /// Counters of an empty heap.
    pub const fn new() -> Self {
        Self {
            capacity: AtomicU64::new(0),
            live: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }

    /// Sets the bytes the heap manages.
    pub fn set_capacity(&self, bytes: u64) {
        self.capacity.store(bytes, Ordering::Relaxed);
    }

    /// Counts an allocation of `bytes`.
    pub fn allocated(&self, bytes: u64) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    /// Counts a release of `bytes`.
    pub fn released(&self, bytes: u64) {
        self.frees.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn statistics(&self) -> HeapStatistics {
        HeapStatistics {
            capacity_bytes: self.capacity.load(Ordering::Relaxed),
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
            allocations: self.allocations.load(Ordering::Relaxed),
            frees: self.frees.load(Ordering::Relaxed),
            ..HeapStatistics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host runs every test on "core 0"; these tests use other core numbers, each its own,
    /// so they never see another test's scope.
    #[test]
    fn routes_follow_the_scope() {
        let core = 5;
        let alignment = |_| 64;
        assert_eq!(route(core, 100, 8, alignment), Route::Heap, "no scope: the heap");
        SCOPES[core].store(code(TensorKind::Small), Ordering::Relaxed);
        assert_eq!(route(core, 100, 8, alignment), Route::Pool(TensorKind::Small));
        assert_eq!(route(core, 100, 128, alignment), Route::Heap, "an alignment no pool gives");
        assert_eq!(route(core, 0, 8, alignment), Route::Heap, "zero bytes");
        SCOPES[core].store(NONE, Ordering::Relaxed);
        assert_eq!(route(MAX_CORES, 100, 8, alignment), Route::Heap, "an untracked core");
        assert!(!enter(MAX_CORES), "an untracked core never enters");
    }

    #[test]
    fn with_restores_the_outer_scope() {
        assert_eq!(current_core(), 0, "the host has no board");
        let core = 7;
        let (inner, innermost) = with_on(core, TensorKind::Small, || {
            let inner = current(core);
            (inner, with_on(core, TensorKind::Protocol, || current(core)))
        });
        assert_eq!(inner, Some(TensorKind::Small));
        assert_eq!(innermost, Some(TensorKind::Protocol));
        assert_eq!(current(core), None);
        let (outside, after) =
            with_on(core, TensorKind::Small, || (swapped(core, NONE, || current(core)), current(core)));
        assert_eq!((outside, after), (None, Some(TensorKind::Small)), "outside, then back in");
        assert_eq!(code(TensorKind::Weights), NONE, "weights never come from a scope");
    }

    #[test]
    fn heap_counters_track_live_and_peak() {
        let counters = HeapCounters::new();
        counters.set_capacity(1000);
        counters.allocated(300);
        counters.allocated(200);
        counters.released(300);
        let statistics = counters.statistics();
        assert_eq!(
            statistics,
            HeapStatistics {
                capacity_bytes: 1000,
                live_bytes: 200,
                peak_bytes: 500,
                allocations: 2,
                frees: 1,
                ..HeapStatistics::default()
            }
        );
        assert!(enter(6), "a core outside the allocator enters");
        assert!(inside(6));
        assert!(!enter(6), "and cannot enter twice");
        leave(6);
        assert!(!inside(6));
        assert!(inside(MAX_CORES), "an untracked core counts as inside: it gets the heap");
    }
}
