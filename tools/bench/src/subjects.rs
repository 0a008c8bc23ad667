//! The allocators under test, behind one interface: Tessera's pools and the baseline crates,
//! each over a pre-touched arena (system malloc excepted: it brings its own memory).

use crate::trace::Kind;
use kernel::hil::Clock;
use kernel::mm::buddy::BuddyAllocator;
use kernel::mm::chunk::{ChunkAllocator, Placement};
use kernel::mm::layout::MemoryPlan;
use kernel::mm::rt::RtPool;
use kernel::mm::slab::{CoreSlab, SlabDepot};
use kernel::mm::tensor::{TensorHandle, TensorKind, TensorMemory, TensorMemoryConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::time::Instant;

/// A block of host memory, aligned to 2 MiB and written once per page so that no replay
/// takes a page fault.
pub struct Arena {
    base: NonNull<u8>,
    layout: Layout,
}

impl Arena {
    /// A pre-touched arena of `size` bytes.
    pub fn new(size: usize) -> Arena {
        let layout = Layout::from_size_align(size, 2 << 20).expect("arena layout");
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("arena memory");
        for offset in (0..size).step_by(4096) {
            // SAFETY: `offset < size`, inside the allocation just made.
            unsafe { base.as_ptr().add(offset).write_volatile(1) };
        }
        Arena { base, layout }
    }

    /// First byte.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Bytes.
    pub fn size(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// An allocator under test. `id`s come from the trace and index the subject's own table.
pub trait Subject {
    /// Allocates; `false` when the allocator is out of memory.
    fn alloc(&mut self, id: u32, size: usize, alignment: usize, kind: Kind) -> bool;
    /// Frees allocation `id`.
    fn free(&mut self, id: u32);
}

/// An allocator that does nothing, to measure the harness itself.
pub struct Nothing;

impl Subject for Nothing {
    fn alloc(&mut self, id: u32, _size: usize, _alignment: usize, _kind: Kind) -> bool {
        std::hint::black_box(id);
        true
    }

    fn free(&mut self, id: u32) {
        std::hint::black_box(id);
    }
}

/// A raw allocator from a baseline crate.
pub trait Raw {
    /// Allocates `layout`.
    fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>>;
    /// Frees a block from `allocate`.
    ///
    /// # Safety
    /// `pointer` came from `allocate` with `layout` and was not freed since.
    unsafe fn deallocate(&mut self, pointer: NonNull<u8>, layout: Layout);
}

/// A baseline allocator and its table of live blocks.
pub struct Baseline<R: Raw> {
    raw: R,
    table: Vec<Option<(NonNull<u8>, Layout)>>,
}

impl<R: Raw> Baseline<R> {
    /// Wraps `raw` for a trace with `ids` ids.
    pub fn new(raw: R, ids: usize) -> Self {
        Self { raw, table: vec![None; ids] }
    }
}

impl<R: Raw> Subject for Baseline<R> {
    fn alloc(&mut self, id: u32, size: usize, alignment: usize, _kind: Kind) -> bool {
        let layout = Layout::from_size_align(size, alignment).expect("trace layout");
        match self.raw.allocate(layout) {
            Some(pointer) => {
                self.table[id as usize] = Some((pointer, layout));
                true
            }
            None => false,
        }
    }

    fn free(&mut self, id: u32) {
        if let Some((pointer, layout)) = self.table[id as usize].take() {
            // SAFETY: the table holds each live block once, with its layout.
            unsafe { self.raw.deallocate(pointer, layout) };
        }
    }
}

/// rlsf's TLSF with 16 second-level classes, like Tessera's RT pool.
pub type RlsfTlsf = rlsf::Tlsf<'static, u32, u16, 28, 16>;

/// rlsf over an arena.
pub fn rlsf(arena: &Arena, size: usize) -> RlsfTlsf {
    let mut tlsf = RlsfTlsf::new();
    let block =
        NonNull::slice_from_raw_parts(NonNull::new(arena.base()).expect("arena"), size.min(arena.size()));
    // SAFETY: the arena outlives every replay, and nothing else uses it meanwhile.
    unsafe { tlsf.insert_free_block_ptr(block) };
    tlsf
}

impl Raw for RlsfTlsf {
    fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        rlsf::Tlsf::allocate(self, layout)
    }
    unsafe fn deallocate(&mut self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { rlsf::Tlsf::deallocate(self, pointer, layout.align()) }
    }
}

/// talc with manual heap management.
pub type Talc = talc::base::Talc<talc::source::Manual, talc::DefaultBinning>;

/// talc over an arena.
pub fn talc(arena: &Arena, size: usize) -> Talc {
    let mut talc = Talc::new(talc::source::Manual);
    // SAFETY: as for `rlsf`.
    unsafe { talc.claim(arena.base(), size.min(arena.size())) };
    talc
}

impl Raw for Talc {
    fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: the heap was claimed in `talc`.
        unsafe { talc::base::Talc::allocate(self, layout) }
    }
    unsafe fn deallocate(&mut self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { talc::base::Talc::deallocate(self, pointer.as_ptr(), layout) }
    }
}

/// buddy_system_allocator with blocks up to 4 GiB.
pub type BuddySystem = buddy_system_allocator::Heap<33>;

/// buddy_system_allocator over an arena.
pub fn buddy_system(arena: &Arena, size: usize) -> BuddySystem {
    let mut heap = BuddySystem::new();
    // SAFETY: as for `rlsf`.
    unsafe { heap.init(arena.base() as usize, size.min(arena.size())) };
    heap
}

impl Raw for BuddySystem {
    fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.alloc(layout).ok()
    }
    unsafe fn deallocate(&mut self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.dealloc(pointer, layout) }
    }
}

/// linked_list_allocator over an arena.
pub fn linked_list(arena: &Arena, size: usize) -> linked_list_allocator::Heap {
    let mut heap = linked_list_allocator::Heap::empty();
    // SAFETY: as for `rlsf`.
    unsafe { heap.init(arena.base(), size.min(arena.size())) };
    heap
}

impl Raw for linked_list_allocator::Heap {
    fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.allocate_first_fit(layout).ok()
    }
    unsafe fn deallocate(&mut self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { linked_list_allocator::Heap::deallocate(self, pointer, layout) }
    }
}

/// The host's malloc.
pub struct Malloc;

impl Raw for Malloc {
    fn allocate(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: trace layouts have non-zero sizes.
        NonNull::new(unsafe { System.alloc(layout) })
    }
    unsafe fn deallocate(&mut self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { System.dealloc(pointer.as_ptr(), layout) }
    }
}

/// Tessera's slab caches (one core) over a buddy allocator on the arena.
pub struct OurSlab {
    depot: SlabDepot<spin::Mutex<BuddyAllocator>>,
    core: CoreSlab,
    table: Vec<u64>,
}

impl OurSlab {
    /// Slabs over `size` bytes of `arena`, for a trace with `ids` ids.
    pub fn new(arena: &Arena, size: usize, ids: usize) -> Self {
        let buddy = BuddyAllocator::new("activations", arena.base() as u64, size as u64, 4096, 1 << 20)
            .expect("buddy over the arena");
        let depot = SlabDepot::new("slab", spin::Mutex::new(buddy), 16).expect("slab depot");
        let core = CoreSlab::new(&depot, 0);
        Self { depot, core, table: vec![0; ids] }
    }
}

impl Subject for OurSlab {
    fn alloc(&mut self, id: u32, size: usize, _alignment: usize, _kind: Kind) -> bool {
        match self.core.alloc(&self.depot, size as u64) {
            Ok(address) => {
                self.table[id as usize] = address;
                true
            }
            Err(_) => false,
        }
    }

    fn free(&mut self, id: u32) {
        self.core.free(&self.depot, self.table[id as usize]).expect("slab free");
    }
}

/// Tessera's buddy allocator alone (4 KiB – 1 MiB).
pub struct OurBuddy {
    buddy: BuddyAllocator,
    table: Vec<u64>,
}

impl OurBuddy {
    /// A buddy allocator over `size` bytes of `arena`, for a trace with `ids` ids.
    pub fn new(arena: &Arena, size: usize, ids: usize) -> Self {
        let buddy = BuddyAllocator::new("kv-cache", arena.base() as u64, size as u64, 4096, 1 << 20)
            .expect("buddy over the arena");
        Self { buddy, table: vec![0; ids] }
    }
}

impl Subject for OurBuddy {
    fn alloc(&mut self, id: u32, size: usize, _alignment: usize, _kind: Kind) -> bool {
        match self.buddy.alloc(size as u64) {
            Ok(address) => {
                self.table[id as usize] = address;
                true
            }
            Err(_) => false,
        }
    }

    fn free(&mut self, id: u32) {
        self.buddy.free(self.table[id as usize]).expect("buddy free");
    }
}

/// Where Tessera places an allocation of `kind`: consecutive model generations at opposite
/// ends of the weights region (double-buffered hot-swap), everything else by best fit.
fn placement_of(kind: Kind) -> Placement {
    match kind {
        Kind::Weights { generation } if generation.is_multiple_of(2) => Placement::Low,
        Kind::Weights { .. } => Placement::High,
        _ => Placement::BestFit,
    }
}

/// Tessera's chunk allocator alone (weights).
pub struct OurChunk {
    chunk: ChunkAllocator,
    table: Vec<u64>,
}

impl OurChunk {
    /// A chunk allocator over `size` bytes of `arena` in 4 KiB granules.
    pub fn new(arena: &Arena, size: usize, ids: usize) -> Self {
        let chunk =
            ChunkAllocator::new("weights", arena.base() as u64, size as u64, 4096).expect("chunk allocator");
        Self { chunk, table: vec![0; ids] }
    }
}

impl Subject for OurChunk {
    fn alloc(&mut self, id: u32, size: usize, alignment: usize, kind: Kind) -> bool {
        match self.chunk.alloc_at(size as u64, alignment as u64, placement_of(kind)) {
            Ok(address) => {
                self.table[id as usize] = address;
                true
            }
            Err(_) => false,
        }
    }

    fn free(&mut self, id: u32) {
        self.chunk.free(self.table[id as usize]).expect("chunk free");
    }
}

/// An RT pool built once and lent to one replay at a time, as the kernel builds its pool
/// once at boot and keeps it: a fresh pool per replay would have just written its whole block
/// table (64 MiB at 1 GiB), so the trace's first touches of the table would miss cache and
/// TLB in every replay, where rlsf's headers live in the arena, warm from the previous one.
pub struct RtHome {
    pool: RefCell<Option<RtPool>>,
}

impl RtHome {
    /// A pool over `size` bytes of `arena` in blocks of `granule` bytes.
    pub fn new(arena: &Arena, size: usize, granule: u64) -> Self {
        let pool = RtPool::new("protocol", arena.base() as u64, size as u64, granule).expect("RT pool");
        Self { pool: RefCell::new(Some(pool)) }
    }
}

/// Tessera's RT pool alone: a fresh pool, or one lent by an [`RtHome`] and handed back when
/// the replay ends, with its leftover blocks freed and checked to be one free block again,
/// the state of a fresh pool.
pub struct OurRt<'a> {
    pool: RtPool,
    /// Address of each live id, 0 for none (no block starts at 0: the arena is not there).
    table: Vec<u64>,
    home: Option<&'a RtHome>,
}

impl<'a> OurRt<'a> {
    /// A fresh RT pool over `size` bytes of `arena` in blocks of `granule` bytes.
    pub fn new(arena: &Arena, size: usize, granule: u64, ids: usize) -> Self {
        let pool = RtPool::new("protocol", arena.base() as u64, size as u64, granule).expect("RT pool");
        Self { pool, table: vec![0; ids], home: None }
    }

    /// The pool of `home`, for one replay.
    pub fn lent(home: &'a RtHome, ids: usize) -> Self {
        let pool = home.pool.borrow_mut().take().expect("the RT pool is lent to one replay at a time");
        Self { pool, table: vec![0; ids], home: Some(home) }
    }
}

impl Drop for OurRt<'_> {
    fn drop(&mut self) {
        let Some(home) = self.home else {
            return;
        };
        for address in self.table.iter_mut().filter(|address| **address != 0) {
            self.pool.free(std::mem::take(address)).expect("RT free of a leftover block");
        }
        let capacity = self.pool.capacity();
        assert_eq!(self.pool.block_count(), (1, 0), "the lent RT pool is one free block again");
        assert_eq!(self.pool.largest_free(), capacity);
        assert_eq!(self.pool.statistics().counters.live_bytes, 0);
        let empty = RtPool::new("spare", 0, 0, 1).expect("empty RT pool");
        *home.pool.borrow_mut() = Some(std::mem::replace(&mut self.pool, empty));
    }
}

impl Subject for OurRt<'_> {
    fn alloc(&mut self, id: u32, size: usize, alignment: usize, _kind: Kind) -> bool {
        match self.pool.alloc(size as u64, alignment as u64) {
            Ok(address) => {
                self.table[id as usize] = address;
                true
            }
            Err(_) => false,
        }
    }

    fn free(&mut self, id: u32) {
        self.pool.free(std::mem::take(&mut self.table[id as usize])).expect("RT free");
    }
}

/// A kernel clock over the host's monotonic clock, one tick per nanosecond.
pub struct HostClock(Instant);

impl Clock for HostClock {
    fn ticks(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    fn frequency_hz(&self) -> u64 {
        1_000_000_000
    }
}

/// The whole tensor memory manager over a boot-policy plan.
pub struct OurTensorMemory {
    /// The manager, public for statistics.
    pub memory: TensorMemory,
    table: Vec<Option<TensorHandle>>,
    clock: Option<HostClock>,
}

impl OurTensorMemory {
    /// The manager over `plan` (the arena stands for RAM; the pools keep their metadata on
    /// the host heap and never touch the memory they manage).
    pub fn new(plan: &MemoryPlan, ids: usize) -> Self {
        let config = TensorMemoryConfig {
            cache_line: 64,
            topology: kernel::topology::Topology::from_mpidr(1),
            rt_table_entries: 65536,
        };
        let memory = TensorMemory::new(plan, config).expect("tensor memory over the plan");
        Self { memory, table: (0..ids).map(|_| None).collect(), clock: None }
    }

    /// Like [`OurTensorMemory::new`], timing every operation into the pools' histograms.
    pub fn timed(plan: &MemoryPlan, ids: usize) -> Self {
        Self { clock: Some(HostClock(Instant::now())), ..Self::new(plan, ids) }
    }
}

impl Subject for OurTensorMemory {
    fn alloc(&mut self, id: u32, size: usize, _alignment: usize, kind: Kind) -> bool {
        let tensor_kind = match kind {
            Kind::Weights { .. } => TensorKind::Weights,
            Kind::KvCache => TensorKind::KvCache,
            Kind::Activation => TensorKind::Activation,
            Kind::Small => TensorKind::Small,
            Kind::Protocol => TensorKind::Protocol,
        };
        let placement = placement_of(kind);
        let result = match &self.clock {
            Some(clock) => self.memory.alloc_timed(0, size as u64, tensor_kind, placement, clock),
            None => self.memory.alloc_placed(0, size as u64, tensor_kind, placement),
        };
        match result {
            Ok(handle) => {
                self.table[id as usize] = Some(handle);
                true
            }
            Err(_) => false,
        }
    }

    fn free(&mut self, id: u32) {
        if let Some(handle) = self.table[id as usize].take() {
            match &self.clock {
                Some(clock) => self.memory.release_timed(0, handle, clock),
                None => self.memory.release(handle),
            }
            .expect("tensor release");
        }
    }
}
