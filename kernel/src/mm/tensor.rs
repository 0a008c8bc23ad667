//! Typed dispatch: `TensorMemory` builds every pool over the boot-time `MemoryPlan` and routes
//! each request by tensor kind and size, handing back a reference-counted `TensorHandle`.

#![forbid(unsafe_code)]

use super::buddy::BuddyAllocator;
use super::chunk::{ChunkAllocator, Placement};
use super::dma::DmaPool;
use super::error::MemError;
use super::layout::{BLOCK, MemoryPlan, Region, RegionKind, SEGMENT};
use super::rt::RtPool;
use super::scope;
use super::slab::{CoreSlab, SlabDepot};
use super::stats::{MapRow, MemoryReport, PoolCounters, PoolLatency, PoolStatistics};
use crate::hil::{Clock, Deadline};
use crate::topology::Topology;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Bytes of a small page; buddy blocks and chunk granules are multiples of it.
pub const PAGE: u64 = 4096;
/// The largest buddy block of the KV cache and the activations: one arena segment.
pub const LARGEST_BUDDY_BLOCK: u64 = SEGMENT;
/// The largest block of the small-object region's buddy allocator (the slabs' source).
pub const LARGEST_SLAB_SOURCE_BLOCK: u64 = 1 << 20;
/// How long a protocol buffer may take to allocate (a reply's buffer, a received line, a
/// parsed request): far above the RT pool's O(1) cost, so a miss means the pool is starved or
/// the core was held, and the allocation is refused rather than late.
pub const PROTOCOL_DEADLINE_US: u64 = 50_000;

/// What a tensor is for; it decides the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// Model weights: chunk allocator, 2 MiB-aligned from 2 MiB up.
    Weights,
    /// A KV-cache block: the KV buddy allocator.
    KvCache,
    /// An activation or scratch tensor: slab below a page, activations buddy from a page up.
    Activation,
    /// A small object (at most 4 KiB): slab.
    Small,
    /// A console protocol buffer: the isolated real-time pool.
    Protocol,
    /// A device-visible buffer: the non-cacheable DMA pool.
    Device,
}

/// The LLM arena as a whole (see [`TensorMemory::arena`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStatistics {
    /// Bytes of the arena.
    pub capacity: u64,
    /// Bytes neither weights nor lent.
    pub free: u64,
    /// The largest free block: the largest model that fits now, without reclaiming.
    pub largest_free: u64,
    /// Bytes the weights hold.
    pub weights: u64,
    /// Bytes lent to the KV cache.
    pub kv_cache: u64,
    /// Bytes lent to the activations.
    pub activations: u64,
}

/// The pool that served an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Chunk allocator over the weights region.
    Weights,
    /// Buddy allocator over the KV-cache region.
    KvCache,
    /// Buddy allocator over the activations region.
    Activations,
    /// Slab caches, whose slabs come from the activations buddy.
    Slab,
    /// TLSF pool over the protocol region.
    Protocol,
    /// DMA pool over the DMA region.
    Dma,
}

impl Pool {
    /// The pool's name in reports and errors.
    pub fn name(self) -> &'static str {
        match self {
            Pool::Weights => "weights",
            Pool::KvCache => "kv-cache",
            Pool::Activations => "activations",
            Pool::Slab => "slab",
            Pool::Protocol => "protocol",
            Pool::Dma => "dma",
        }
    }

    /// Every pool, in the order of the memory-map report.
    pub const ALL: [Pool; 6] =
        [Pool::Dma, Pool::Protocol, Pool::Weights, Pool::KvCache, Pool::Activations, Pool::Slab];

    fn index(self) -> usize {
        self as usize
    }

    /// Whether each memory node has its own pool of this kind (the protocol and DMA pools
    /// are single).
    pub fn per_node(self) -> bool {
        !matches!(self, Pool::Protocol | Pool::Dma)
    }
}

/// A page size, Hermit style: the granule of a mapping (4 KiB level-3 pages or 2 MiB level-2
/// blocks), and so the size of the mapping a tensor sits in. The one page-size type of the
/// project: bsp's translation tables use it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB pages (tensors inside 4 KiB-granular allocations).
    Size4KiB,
    /// 2 MiB blocks (tensors in a run of whole blocks).
    Size2MiB,
}

impl PageSize {
    /// Bytes in one page of this size.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4KiB => PAGE,
            PageSize::Size2MiB => BLOCK,
        }
    }

    /// A short label for tables ("4K", "2M").
    pub fn label(self) -> &'static str {
        match self {
            PageSize::Size4KiB => "4K",
            PageSize::Size2MiB => "2M",
        }
    }
}

/// A live tensor allocation. Sharing it ([`TensorHandle::share`]) bumps a reference count;
/// [`TensorMemory::release`] drops one, and the memory returns to its pool with the last.
#[derive(Debug)]
pub struct TensorHandle {
    base: u64,
    size: u64,
    kind: TensorKind,
    pool: Pool,
    page_size: PageSize,
    /// The memory node whose pool holds it (0 for the single protocol and DMA pools).
    node: u8,
    /// The shared count, made on the first [`TensorHandle::share`]; `None` means one owner,
    /// so the common unshared tensor costs no extra allocation.
    references: Option<Arc<AtomicU32>>,
}

impl TensorHandle {
    /// First byte (a physical address; memory is identity-mapped).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes requested.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// What the tensor is for.
    pub fn kind(&self) -> TensorKind {
        self.kind
    }

    /// The pool that holds it.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// The page size it is mapped with.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The memory node whose pool holds it.
    pub fn node(&self) -> usize {
        usize::from(self.node)
    }

    /// How many handles share the allocation.
    pub fn reference_count(&self) -> u32 {
        self.references.as_ref().map_or(1, |references| references.load(Ordering::Acquire))
    }

    /// Another handle to the same allocation (for example a second sequence reading the same
    /// weights during a hot-swap).
    pub fn share(&mut self) -> TensorHandle {
        let references = self.references.get_or_insert_with(|| Arc::new(AtomicU32::new(1)));
        references.fetch_add(1, Ordering::AcqRel);
        TensorHandle { references: Some(Arc::clone(references)), ..*self }
    }
}

impl fmt::Display for TensorHandle {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{:?} {:#x}+{} in {:?} ({:?} pages, {} references)",
            self.kind,
            self.base,
            self.size,
            self.pool,
            self.page_size,
            self.reference_count()
        )
    }
}

/// How the pools are built, beyond the plan itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMemoryConfig {
    /// Cache-line size in bytes (boot reads it from CTR_EL0); every tensor is aligned to it.
    pub cache_line: u64,
    /// The cores (each gets its own slab caches) and the memory nodes they sit on (each gets
    /// its own weights, KV and activation pools).
    pub topology: Topology,
    /// Upper bound on the RT pool's block-table entries; the granule grows to fit.
    pub rt_table_entries: u64,
}

impl Default for TensorMemoryConfig {
    fn default() -> Self {
        Self { cache_line: 64, topology: Topology::from_mpidr(4), rt_table_entries: 65536 }
    }
}

type SharedBuddy = Arc<spin::Mutex<BuddyAllocator>>;

/// One allocation request, routed.
#[derive(Clone, Copy)]
struct Request {
    core: usize,
    pool: Pool,
    size: u64,
    alignment: u64,
    placement: Placement,
}

/// The pools of one memory node: its slice of the LLM arena, and of the small-object region.
///
/// The arena's chunk allocator owns the slice: model weights are its own allocations, and it
/// lends [`SEGMENT`]s to the KV-cache and activations buddy allocators, which span the whole
/// slice but own only the segments lent to them. A buddy that runs out borrows a segment
/// (from the high end of the arena, so weights packed from the low end stay contiguous);
/// [`TensorMemory::reclaim_segments`] takes wholly free segments back.
#[derive(Debug)]
struct NodePools {
    arena: spin::Mutex<ChunkAllocator>,
    kv_cache: spin::Mutex<BuddyAllocator>,
    activations: spin::Mutex<BuddyAllocator>,
    /// Counters of the weights alone (the arena's own also count the segments it lent).
    weights: spin::Mutex<PoolCounters>,
    slab: SlabDepot<SharedBuddy>,
}

impl NodePools {
    /// The pools over slice `node` of `nodes` of the arena and of the small-object region.
    fn new(plan: &MemoryPlan, node: usize, nodes: usize, cache_line: u64) -> Result<Self, MemError> {
        let arena = node_slice(plan.region(RegionKind::Arena), node, nodes, SEGMENT, "arena")?;
        let small =
            node_slice(plan.region(RegionKind::Small), node, nodes, LARGEST_SLAB_SOURCE_BLOCK, "small")?;
        let spanning = |name| BuddyAllocator::owning_nothing(name, arena.base, arena.size, PAGE, SEGMENT);
        let small_buddy =
            BuddyAllocator::new("small", small.base, small.size, PAGE, LARGEST_SLAB_SOURCE_BLOCK)?;
        Ok(Self {
            arena: spin::Mutex::new(ChunkAllocator::new("weights", arena.base, arena.size, PAGE)?),
            kv_cache: spin::Mutex::new(spanning("kv-cache")?),
            activations: spin::Mutex::new(spanning("activations")?),
            weights: spin::Mutex::new(PoolCounters::default()),
            slab: SlabDepot::new("slab", Arc::new(spin::Mutex::new(small_buddy)), cache_line.max(16))?,
        })
    }

    /// An allocation of `size` bytes from `buddy` (this node's KV-cache or activations
    /// allocator), borrowing a segment from the arena when it has no block large enough.
    /// Lock order: the buddy, then the arena.
    fn buddy_alloc(&self, buddy: &spin::Mutex<BuddyAllocator>, size: u64) -> Result<u64, MemError> {
        let mut buddy = buddy.lock();
        // Borrow first when no free block is large enough, so only a real failure is counted.
        if buddy.largest_free() < size.max(PAGE).next_power_of_two()
            && size <= SEGMENT
            && let Ok(segment) = self.arena.lock().alloc_at(SEGMENT, SEGMENT, Placement::High)
        {
            buddy.donate(segment)?;
        }
        buddy.alloc(size)
    }

    /// Gives the arena back every wholly free segment of the KV-cache and activations
    /// allocators; returns the bytes given back.
    fn reclaim_segments(&self) -> u64 {
        let mut returned = 0;
        for buddy in [&self.kv_cache, &self.activations] {
            let mut buddy = buddy.lock();
            while let Some(segment) = buddy.take_free_segment() {
                // The arena lent this segment, so taking it back cannot fail.
                let _ = self.arena.lock().free(segment);
                returned += SEGMENT;
            }
        }
        returned
    }

    /// The weights' figures: the arena's free space, the weights' own counters, and as
    /// capacity what the weights could hold now (the arena less the segments it lent).
    fn weights_statistics(&self) -> PoolStatistics {
        let lent = self.kv_cache.lock().capacity() + self.activations.lock().capacity();
        let arena = self.arena.lock().statistics();
        PoolStatistics {
            capacity: arena.capacity.saturating_sub(lent),
            counters: *self.weights.lock(),
            ..arena
        }
    }
}

/// Slice `node` of `nodes` of `region`: equal shares in address order, with inner boundaries
/// rounded down to `alignment`. A board whose nodes are consecutive address ranges gets each
/// node's share inside that node's memory; a single node gets the whole region.
fn node_slice(
    region: Region,
    node: usize,
    nodes: usize,
    alignment: u64,
    pool: &'static str,
) -> Result<Region, MemError> {
    let boundary = |index: usize| -> u64 {
        match index {
            0 => region.base,
            index if index >= nodes => region.end(),
            index => {
                let share = (u128::from(region.size) * index as u128 / nodes as u128) as u64;
                (region.base + share) & !(alignment - 1)
            }
        }
    };
    let (start, end) = (boundary(node).max(region.base), boundary(node + 1));
    if end <= start || (nodes > 1 && end - start < alignment) {
        return Err(MemError::UnusableRegion {
            pool,
            kind: region.kind,
            reason: "too small to give every memory node a slice",
        });
    }
    Ok(Region { kind: region.kind, base: start, size: end - start })
}

/// The tensor memory manager: pools over each region, routed by [`TensorKind`].
///
/// Routing: weights → chunk; KV blocks → KV buddy; activations → slab below a page and the
/// activations buddy from a page to 1 MiB; small objects → slab; protocol → RT pool; device
/// buffers → DMA pool. Every pool is behind its own lock except the slab fast path, whose
/// per-core caches are locked only by their own core (uncontended); each pool's own doc
/// comment gives its invariants and time bounds.
///
/// Per node: the weights, KV-cache and activations regions are split into one slice per
/// memory node of the topology, each with its own pools. A request on core `c` is served from
/// `c`'s node first and from the other nodes in order when that one is exhausted (counted in
/// [`TensorMemory::remote_allocations`]); a handle remembers its node, so a release from any
/// core returns the memory to the pool it came from. Each core keeps one slab cache per node.
/// The protocol and DMA pools are single: they are small and device-bound. On a Raspberry Pi
/// there is one node, and all of this is one set of pools.
#[derive(Debug)]
pub struct TensorMemory {
    cache_line: u64,
    nodes: Vec<NodePools>,
    /// The node of each core.
    core_nodes: Vec<usize>,
    /// `core_caches[core * nodes + node]`: core `core`'s slab cache for node `node`'s depot.
    core_caches: Vec<spin::Mutex<CoreSlab>>,
    remote_allocations: AtomicU64,
    protocol: spin::Mutex<RtPool>,
    dma: spin::Mutex<DmaPool>,
    latency: spin::Mutex<[PoolLatency; 6]>,
}

impl TensorMemory {
    /// Builds every pool over the regions of `plan`, the tensor regions split per memory node.
    pub fn new(plan: &MemoryPlan, config: TensorMemoryConfig) -> Result<Self, MemError> {
        let cache_line = config.cache_line;
        // At least 4 bytes: every allocation is aligned to a cache line, and buffers are read
        // as f32 (`TensorBuffer::as_f32`) on that promise.
        if !cache_line.is_power_of_two() || !(4..=PAGE).contains(&cache_line) {
            return Err(MemError::BadAlignment { pool: "tensor", alignment: cache_line });
        }
        let topology = config.topology;
        let node_count = topology.nodes().max(1);
        let nodes = (0..node_count)
            .map(|node| NodePools::new(plan, node, node_count, cache_line))
            .collect::<Result<Vec<_>, _>>()?;
        let cores = topology.cores().max(1);
        let core_nodes: Vec<usize> =
            (0..cores).map(|core| topology.node_of(core).min(node_count - 1)).collect();
        let core_caches = (0..cores)
            .flat_map(|core| {
                nodes.iter().map(move |pools| spin::Mutex::new(CoreSlab::new(&pools.slab, core)))
            })
            .collect();
        let protocol = plan.region(RegionKind::Protocol);
        let rt_granule = RtPool::granule_for(protocol.size, config.rt_table_entries, cache_line);
        Ok(Self {
            cache_line,
            nodes,
            core_nodes,
            core_caches,
            remote_allocations: AtomicU64::new(0),
            protocol: spin::Mutex::new(RtPool::new("protocol", protocol.base, protocol.size, rt_granule)?),
            dma: spin::Mutex::new(DmaPool::new(plan.region(RegionKind::Dma), cache_line)?),
            latency: spin::Mutex::new([PoolLatency::default(); 6]),
        })
    }

    /// Memory nodes, each with its own weights, KV-cache and activation pools.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The memory node of core `core`.
    pub fn node_of(&self, core: usize) -> Result<usize, MemError> {
        self.core_nodes.get(core).copied().ok_or(MemError::NoSuchCore { core, cores: self.core_nodes.len() })
    }

    /// Allocations served from another node than the requesting core's, because its own was
    /// exhausted.
    pub fn remote_allocations(&self) -> u64 {
        self.remote_allocations.load(Ordering::Relaxed)
    }

    /// The cache-line size every tensor is aligned to.
    pub fn cache_line(&self) -> u64 {
        self.cache_line
    }

    /// The pool a request of `size` bytes of `kind` goes to.
    pub fn route(&self, size: u64, kind: TensorKind) -> Pool {
        match kind {
            TensorKind::Weights => Pool::Weights,
            TensorKind::KvCache => Pool::KvCache,
            TensorKind::Activation if size < PAGE => Pool::Slab,
            TensorKind::Activation => Pool::Activations,
            TensorKind::Small => Pool::Slab,
            TensorKind::Protocol => Pool::Protocol,
            TensorKind::Device => Pool::Dma,
        }
    }

    /// The alignment a request of `size` bytes of `kind` gets: 2 MiB for weights of 2 MiB or
    /// more, a page for smaller weights, the block size for buddy blocks, and the cache line
    /// for everything else.
    pub fn alignment(&self, size: u64, kind: TensorKind) -> u64 {
        match self.route(size, kind) {
            Pool::Weights if size >= BLOCK => BLOCK,
            Pool::Weights => PAGE,
            Pool::KvCache | Pool::Activations => size.max(PAGE).next_power_of_two(),
            Pool::Slab | Pool::Protocol | Pool::Dma => self.cache_line,
        }
    }

    /// Allocates `size` bytes for a tensor of `kind`, using core 0's slab cache.
    pub fn alloc(&self, size: u64, kind: TensorKind) -> Result<TensorHandle, MemError> {
        self.alloc_on(0, size, kind)
    }

    /// Allocates `size` bytes for a tensor of `kind` on core `core`: from the pools of the
    /// core's memory node (whose slab cache on that core serves small requests), or of the
    /// next node with room when they are exhausted.
    pub fn alloc_on(&self, core: usize, size: u64, kind: TensorKind) -> Result<TensorHandle, MemError> {
        self.alloc_placed(core, size, kind, Placement::BestFit)
    }

    /// Like [`TensorMemory::alloc_on`], with weights placed in their node's region as
    /// `placement` says ([`Placement::Apart`] puts a model staged for a hot-swap at the end
    /// away from the live one, so the two never interleave). Other kinds ignore `placement`.
    pub fn alloc_placed(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        placement: Placement,
    ) -> Result<TensorHandle, MemError> {
        scope::guarded(|| self.alloc_unguarded(core, size, kind, placement))
    }

    fn alloc_unguarded(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        placement: Placement,
    ) -> Result<TensorHandle, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { pool: "tensor" });
        }
        let pool = self.route(size, kind);
        let alignment = self.alignment(size, kind);
        let page_size = if alignment >= BLOCK { PageSize::Size2MiB } else { PageSize::Size4KiB };
        let handle = |base, node: usize| TensorHandle {
            base,
            size,
            kind,
            pool,
            page_size,
            node: node as u8,
            references: None,
        };
        let request = Request { core, pool, size, alignment, placement };
        if !pool.per_node() {
            return self.alloc_from_node(request, 0).map(|base| handle(base, 0));
        }
        let local = self.node_of(core)?;
        let first = self.alloc_from_node(request, local);
        if !matches!(first, Err(MemError::OutOfMemory { .. })) {
            return first.map(|base| handle(base, local));
        }
        for node in (1..self.nodes.len()).map(|step| (local + step) % self.nodes.len()) {
            if let Ok(base) = self.alloc_from_node(request, node) {
                self.remote_allocations.fetch_add(1, Ordering::Relaxed);
                return Ok(handle(base, node));
            }
        }
        first.map(|base| handle(base, local))
    }

    /// One allocation from pool `pool`: node `node`'s for the per-node pools.
    fn alloc_from_node(&self, request: Request, node: usize) -> Result<u64, MemError> {
        let Request { core, pool, size, alignment, placement } = request;
        let pools = &self.nodes[node];
        match pool {
            Pool::Weights => {
                let base = pools.arena.lock().alloc_at(size, alignment, placement)?;
                let block = pools.arena.lock().allocation(base).map_or(size, |(block, _)| block);
                pools.weights.lock().record_allocation(size, block);
                Ok(base)
            }
            Pool::KvCache => pools.buddy_alloc(&pools.kv_cache, size),
            Pool::Activations => pools.buddy_alloc(&pools.activations, size),
            Pool::Slab => self.core_cache(core, node)?.lock().alloc(&pools.slab, size),
            Pool::Protocol => self.protocol.lock().alloc(size, alignment),
            Pool::Dma => self.dma.lock().alloc(size, alignment),
        }
    }

    /// Allocates a protocol buffer of `size` bytes from the RT pool, only if that finishes by
    /// `deadline` on `clock` (see [`RtPool::alloc_within`]); otherwise
    /// [`MemError::DeadlineMissed`] and nothing is allocated.
    pub fn alloc_protocol_within(
        &self,
        size: u64,
        deadline: Deadline,
        clock: &dyn Clock,
    ) -> Result<TensorHandle, MemError> {
        let base =
            scope::guarded(|| self.protocol.lock().alloc_within(size, self.cache_line, deadline, clock))?;
        Ok(TensorHandle {
            base,
            size,
            kind: TensorKind::Protocol,
            pool: Pool::Protocol,
            page_size: PageSize::Size4KiB,
            node: 0,
            references: None,
        })
    }

    /// Allocates `size` bytes for an allocation scope of `kind` on core `core` (see
    /// [`super::scope`]): small and activation objects from the slab below a page and the
    /// activations buddy above, protocol objects from the RT pool (every other kind is served
    /// as an activation). With a `clock`, a protocol object must be allocated within
    /// [`PROTOCOL_DEADLINE_US`] (see [`TensorMemory::alloc_protocol_within`]), else
    /// [`MemError::DeadlineMissed`], counted among the pool's failures. Returns the address
    /// only; [`TensorMemory::release_address`] takes it back.
    pub fn alloc_address(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        clock: Option<&dyn Clock>,
    ) -> Result<u64, MemError> {
        match (kind, clock) {
            (TensorKind::Protocol, Some(clock)) => {
                let deadline = clock.deadline_after_us(PROTOCOL_DEADLINE_US);
                self.alloc_protocol_within(size, deadline, clock).map(|handle| handle.base)
            }
            (TensorKind::Protocol, None) => self.alloc_on(core, size, kind).map(|handle| handle.base),
            _ => self.alloc_on(core, size, TensorKind::Activation).map(|handle| handle.base),
        }
    }

    /// Releases an allocation made by [`TensorMemory::alloc_address`] of `size` bytes at
    /// `address`, found by its address (the protocol region, or a node's activations) and its
    /// size (the slab below a page).
    pub fn release_address(&self, core: usize, address: u64, size: u64) -> Result<(), MemError> {
        let (pool, node) = if self.protocol.lock().contains(address) {
            (Pool::Protocol, 0)
        } else {
            let node = self
                .nodes
                .iter()
                .position(|pools| {
                    pools.slab.source().lock().contains(address) || pools.activations.lock().contains(address)
                })
                .ok_or(MemError::ForeignFree { pool: "scope", address })?;
            (self.route(size, TensorKind::Activation), node)
        };
        let handle = TensorHandle {
            base: address,
            size,
            kind: TensorKind::Activation,
            pool,
            page_size: PageSize::Size4KiB,
            node: node as u8,
            references: None,
        };
        self.release_on(core, handle).map(drop)
    }

    /// Core `core`'s slab cache for node `node`.
    fn core_cache(&self, core: usize, node: usize) -> Result<&spin::Mutex<CoreSlab>, MemError> {
        self.node_of(core)?;
        Ok(&self.core_caches[core * self.nodes.len() + node])
    }

    /// Drops one reference to `handle`'s allocation, on core 0. Returns the references left;
    /// at zero the memory went back to its pool.
    pub fn release(&self, handle: TensorHandle) -> Result<u32, MemError> {
        self.release_on(0, handle)
    }

    /// Drops one reference to `handle`'s allocation on core `core`. Returns the references
    /// left; at zero the memory went back to its pool.
    pub fn release_on(&self, core: usize, handle: TensorHandle) -> Result<u32, MemError> {
        scope::guarded(|| self.release_unguarded(core, handle))
    }

    fn release_unguarded(&self, core: usize, handle: TensorHandle) -> Result<u32, MemError> {
        let node = usize::from(handle.node);
        let cache = if handle.pool == Pool::Slab { Some(self.core_cache(core, node)?) } else { None };
        let left =
            handle.references.as_ref().map_or(0, |references| references.fetch_sub(1, Ordering::AcqRel) - 1);
        if left > 0 {
            return Ok(left);
        }
        let pools = &self.nodes[node];
        match handle.pool {
            Pool::Weights => {
                let block = pools.arena.lock().allocation(handle.base).map(|(block, _)| block);
                let requested = pools.arena.lock().free(handle.base)?;
                pools.weights.lock().record_free(requested, block.unwrap_or(requested));
                Ok(())
            }
            Pool::KvCache => pools.kv_cache.lock().free(handle.base).map(drop),
            Pool::Activations => pools.activations.lock().free(handle.base).map(drop),
            Pool::Slab => match cache {
                Some(cache) => cache.lock().free(&pools.slab, handle.base).map(drop),
                None => Ok(()),
            },
            Pool::Protocol => self.protocol.lock().free(handle.base).map(drop),
            Pool::Dma => self.dma.lock().free(handle.base).map(drop),
        }?;
        Ok(0)
    }

    /// [`TensorMemory::alloc_placed`], timed on `clock` into the pool's allocation histogram.
    pub fn alloc_timed(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        placement: Placement,
        clock: &dyn Clock,
    ) -> Result<TensorHandle, MemError> {
        let start = clock.now_ns();
        let result = self.alloc_placed(core, size, kind, placement);
        let elapsed = clock.now_ns().saturating_sub(start);
        self.latency.lock()[self.route(size, kind).index()].alloc.record(elapsed);
        result
    }

    /// [`TensorMemory::release_on`], timed on `clock` into the pool's free histogram.
    pub fn release_timed(
        &self,
        core: usize,
        handle: TensorHandle,
        clock: &dyn Clock,
    ) -> Result<u32, MemError> {
        let pool = handle.pool;
        let start = clock.now_ns();
        let result = self.release_on(core, handle);
        let elapsed = clock.now_ns().saturating_sub(start);
        self.latency.lock()[pool.index()].free.record(elapsed);
        result
    }

    /// Adds a caller-measured duration to a pool's allocation or free histogram.
    pub fn record_latency(&self, pool: Pool, free: bool, duration_ns: u64) {
        let mut latency = self.latency.lock();
        let histograms = &mut latency[pool.index()];
        if free { histograms.free.record(duration_ns) } else { histograms.alloc.record(duration_ns) }
    }

    /// Gives the arena back every wholly free segment the KV cache and the activations hold
    /// (on every node), so weights can use it; returns the bytes given back. O(segments
    /// returned).
    pub fn reclaim_segments(&self) -> u64 {
        scope::guarded(|| self.nodes.iter().map(NodePools::reclaim_segments).sum())
    }

    /// The arena of every node together: its capacity, free bytes and largest free block
    /// (counting segments lent but wholly free as lent), and the bytes the KV cache and the
    /// activations own.
    pub fn arena(&self) -> ArenaStatistics {
        scope::guarded(|| {
            self.nodes.iter().fold(ArenaStatistics::default(), |total, pools| {
                let arena = pools.arena.lock().statistics();
                ArenaStatistics {
                    capacity: total.capacity + arena.capacity,
                    free: total.free + arena.free_bytes,
                    largest_free: total.largest_free.max(arena.largest_free),
                    weights: total.weights + pools.weights.lock().reserved_bytes,
                    kv_cache: total.kv_cache + pools.kv_cache.lock().capacity(),
                    activations: total.activations + pools.activations.lock().capacity(),
                }
            })
        })
    }

    /// Moves every core's cached slab objects to the depot and returns empty slabs to the
    /// small-object buddy. Returns the slabs released. Call it off the allocation path.
    pub fn reclaim(&self) -> u64 {
        scope::guarded(|| self.reclaim_unguarded())
    }

    fn reclaim_unguarded(&self) -> u64 {
        let nodes = self.nodes.len();
        for (index, cache) in self.core_caches.iter().enumerate() {
            cache.lock().drain(&self.nodes[index % nodes].slab);
        }
        self.nodes.iter().map(|pools| pools.slab.reclaim()).sum()
    }

    /// A snapshot of one pool, summed over the memory nodes for the per-node pools (peaks are
    /// then the sum of each node's peak).
    pub fn statistics(&self, pool: Pool) -> PoolStatistics {
        if !pool.per_node() {
            return self.node_statistics(0, pool);
        }
        (1..self.nodes.len()).fold(self.node_statistics(0, pool), |total, node| {
            total.combined(&self.node_statistics(node, pool))
        })
    }

    /// A snapshot of one pool on memory node `node` (the protocol and DMA pools are on every
    /// node's list as themselves).
    pub fn node_statistics(&self, node: usize, pool: Pool) -> PoolStatistics {
        scope::guarded(|| self.node_statistics_unguarded(node, pool))
    }

    fn node_statistics_unguarded(&self, node: usize, pool: Pool) -> PoolStatistics {
        let Some(pools) = self.nodes.get(node) else {
            return PoolStatistics::empty(pool.name());
        };
        match pool {
            Pool::Weights => pools.weights_statistics(),
            Pool::KvCache => pools.kv_cache.lock().statistics(),
            Pool::Activations => pools.activations.lock().statistics(),
            Pool::Slab => pools.slab.statistics_visiting(|visit| {
                for cache in self.core_caches.iter().skip(node).step_by(self.nodes.len()) {
                    visit(&cache.lock());
                }
            }),
            Pool::Protocol => self.protocol.lock().statistics(),
            Pool::Dma => self.dma.lock().statistics(),
        }
    }

    /// The memory map with usage bars, for the console (`{}` prints it): one row per pool,
    /// and per node for the per-node pools when there are several nodes.
    pub fn report(&self) -> MemoryReport {
        let latency = *self.latency.lock();
        let nodes = self.nodes.len();
        let mut rows = Vec::new();
        for pool in Pool::ALL {
            if pool.per_node() && nodes > 1 {
                rows.extend((0..nodes).map(|node| MapRow {
                    statistics: self.node_statistics(node, pool),
                    latency: latency[pool.index()],
                    node: Some(node),
                }));
            } else {
                rows.push(MapRow {
                    statistics: self.statistics(pool),
                    latency: latency[pool.index()],
                    node: None,
                });
            }
        }
        MemoryReport { rows, cache_line: self.cache_line, nodes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::layout::{Budget, MIB};
    use crate::mm::rt::tests::SteppingClock;
    use alloc::string::ToString;
    use proptest::prelude::*;

    /// 160 MiB: a 96 MiB arena (64 MiB plus the slack past 32 MiB), 8 MiB of protocol.
    fn small_plan(seed: u64) -> MemoryPlan {
        MemoryPlan::new(160 * MIB, Budget::reserving(160 * MIB, 88 * MIB, 8 * MIB), MIB, seed).unwrap()
    }

    fn memory(cache_line: u64) -> TensorMemory {
        memory_on_nodes(cache_line, 1)
    }

    /// Four cores; core `c` on node `c × nodes ÷ 4` (cores 0-1 and 2-3 for two nodes).
    fn topology(nodes: usize) -> Topology {
        let regs: Vec<[u8; 4]> = (0..4u32).map(u32::to_be_bytes).collect();
        let node_ids: Vec<[u8; 4]> = (0..4).map(|core| ((core * nodes / 4) as u32).to_be_bytes()).collect();
        let cpus = regs
            .iter()
            .zip(&node_ids)
            .map(|(reg, node)| crate::topology::CpuNode { reg, numa_node_id: Some(node) });
        Topology::from_device_tree(cpus, 1, []).unwrap()
    }

    fn memory_on_nodes(cache_line: u64, nodes: usize) -> TensorMemory {
        let config = TensorMemoryConfig { cache_line, topology: topology(nodes), rt_table_entries: 4096 };
        TensorMemory::new(&small_plan(7), config).unwrap()
    }

    #[test]
    fn each_kind_lands_in_its_region() {
        let plan = small_plan(7);
        let memory = memory(64);
        let cases = [
            (TensorKind::Weights, 5 * MIB, RegionKind::Arena, Pool::Weights, 2 * MIB),
            (TensorKind::Weights, 100 * 1024, RegionKind::Arena, Pool::Weights, PAGE),
            (TensorKind::KvCache, 48 * 1024, RegionKind::Arena, Pool::KvCache, 64 * 1024),
            (TensorKind::Activation, 300 * 1024, RegionKind::Arena, Pool::Activations, 512 * 1024),
            (TensorKind::Activation, 1000, RegionKind::Small, Pool::Slab, 64),
            (TensorKind::Small, 24, RegionKind::Small, Pool::Slab, 64),
            (TensorKind::Protocol, 1500, RegionKind::Protocol, Pool::Protocol, 64),
            (TensorKind::Device, 36, RegionKind::Dma, Pool::Dma, 64),
        ];
        for (kind, size, region, pool, alignment) in cases {
            let handle = memory.alloc(size, kind).unwrap();
            assert_eq!(handle.pool(), pool, "{handle}");
            assert!(plan.region(region).contains(handle.base()), "{handle}");
            assert!(handle.end() <= plan.region(region).end(), "{handle}");
            assert_eq!(handle.base() % alignment, 0, "{handle}");
            assert_eq!(memory.alignment(size, kind), alignment);
            let expected_page = if alignment == 2 * MIB { PageSize::Size2MiB } else { PageSize::Size4KiB };
            assert_eq!(handle.page_size(), expected_page);
        }
    }

    #[test]
    fn failures_are_typed_and_readable() {
        let memory = memory(64);
        assert_eq!(
            memory.alloc(0, TensorKind::Weights).unwrap_err().to_string(),
            "tensor: a request for zero bytes"
        );
        let error = memory.alloc(8192, TensorKind::Small).unwrap_err();
        assert_eq!(error.to_string(), "slab: 8.0 KiB requested but this pool hands out at most 4.0 KiB");
        let error = memory.alloc(4 * MIB, TensorKind::KvCache).unwrap_err();
        assert!(matches!(error, MemError::TooLarge { pool: "kv-cache", .. }), "{error}");
        let error = memory.alloc(1 << 40, TensorKind::Weights).unwrap_err();
        assert!(matches!(error, MemError::TooLarge { pool: "weights", .. }), "{error}");
        assert_eq!(
            memory.alloc_on(9, 64, TensorKind::Small).unwrap_err(),
            MemError::NoSuchCore { core: 9, cores: 4 }
        );
        assert!(matches!(
            TensorMemory::new(&small_plan(1), TensorMemoryConfig { cache_line: 96, ..Default::default() }),
            Err(MemError::BadAlignment { alignment: 96, .. })
        ));
        assert!(matches!(
            TensorMemory::new(&small_plan(1), TensorMemoryConfig { cache_line: 2, ..Default::default() }),
            Err(MemError::BadAlignment { alignment: 2, .. })
        ));
    }

    #[test]
    fn shared_handles_free_with_the_last_reference() {
        let memory = memory(64);
        let mut weights = memory.alloc(10 * MIB, TensorKind::Weights).unwrap();
        assert_eq!(weights.reference_count(), 1);
        let reader = weights.share();
        assert_eq!(weights.reference_count(), 2);
        let base = weights.base();
        assert_eq!(memory.release(weights), Ok(1));
        assert_eq!(memory.nodes[0].arena.lock().allocation(base), Some((10 * MIB, 10 * MIB)), "still live");
        assert_eq!(reader.reference_count(), 1);
        assert_eq!(memory.release(reader), Ok(0));
        assert_eq!(memory.nodes[0].arena.lock().allocation(base), None);
        assert_eq!(memory.statistics(Pool::Weights).counters.live_bytes, 0);
    }

    #[test]
    fn protocol_survives_tensor_exhaustion() {
        let memory = memory(64);
        let mut held = Vec::new();
        for (kind, size) in
            [(TensorKind::Weights, 4 * MIB), (TensorKind::KvCache, MIB), (TensorKind::Activation, MIB)]
        {
            loop {
                match memory.alloc(size, kind) {
                    Ok(handle) => held.push(handle),
                    Err(MemError::OutOfMemory { .. }) => break,
                    Err(other) => panic!("unexpected {other}"),
                }
            }
        }
        let buffer = memory.alloc(4096, TensorKind::Protocol).unwrap();
        assert_eq!(buffer.pool(), Pool::Protocol);
        for handle in held.into_iter().chain([buffer]) {
            memory.release(handle).unwrap();
        }
    }

    #[test]
    fn protocol_buffers_respect_deadlines() {
        let memory = memory(64);
        let clock = SteppingClock::new(100, 7);
        let buffer = memory.alloc_protocol_within(300, clock.deadline_after_us(50), &clock).unwrap();
        assert_eq!(
            (buffer.pool(), buffer.kind(), buffer.base() % 64),
            (Pool::Protocol, TensorKind::Protocol, 0)
        );
        let late = memory.alloc_protocol_within(300, Deadline { at_ticks: 0 }, &clock);
        assert!(matches!(late, Err(MemError::DeadlineMissed { pool: "protocol", .. })), "{late:?}");
        memory.release(buffer).unwrap();
        assert_eq!(memory.statistics(Pool::Protocol).counters.live_bytes, 0);
    }

    #[test]
    fn scoped_protocol_allocations_meet_their_bound_or_are_refused() {
        let memory = memory(64);
        let steady = SteppingClock::new(0, 1);
        let line = memory.alloc_address(0, 200, TensorKind::Protocol, Some(&steady)).unwrap();
        let unbounded = memory.alloc_address(0, 200, TensorKind::Protocol, None).unwrap();
        let protocol = |memory: &TensorMemory| memory.statistics(Pool::Protocol).counters;
        assert_eq!((protocol(&memory).live_bytes, protocol(&memory).failures), (400, 0));
        // Each reading jumps past the bound: the pool refuses and counts it, holding nothing.
        let stalled = SteppingClock::new(0, PROTOCOL_DEADLINE_US + 1);
        let late = memory.alloc_address(0, 200, TensorKind::Protocol, Some(&stalled));
        assert!(matches!(late, Err(MemError::DeadlineMissed { pool: "protocol", .. })), "{late:?}");
        assert_eq!((protocol(&memory).live_bytes, protocol(&memory).failures), (400, 1));
        // Other scopes take no deadline: a small object comes from the slab whatever the clock.
        let small = memory.alloc_address(0, 200, TensorKind::Small, Some(&stalled)).unwrap();
        for (address, size) in [(line, 200), (unbounded, 200), (small, 200)] {
            memory.release_address(0, address, size).unwrap();
        }
        assert_eq!(protocol(&memory).live_bytes, 0);
    }

    #[test]
    fn report_lists_every_pool_with_a_bar() {
        let memory = memory(64);
        let weights = memory.alloc(16 * MIB, TensorKind::Weights).unwrap();
        memory.record_latency(Pool::Weights, false, 1500);
        let text = memory.report().to_string();
        for name in ["dma", "protocol", "weights", "kv-cache", "activations", "slab"] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("16.0 MiB"), "{text}");
        assert!(text.contains("[####................]"), "weights fill 16 of 96 MiB:\n{text}");
        assert!(text.contains("1500 ns"), "{text}");
        memory.release(weights).unwrap();
    }

    #[test]
    fn four_cores_share_the_manager() {
        let memory = memory(64);
        let handles: Vec<TensorHandle> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|core| {
                    let memory = &memory;
                    scope.spawn(move || {
                        let mut random = crate::rand::SplitMix64::new(100 + core as u64);
                        let mut kept = Vec::new();
                        for round in 0..600 {
                            let kind =
                                [TensorKind::Small, TensorKind::Activation, TensorKind::KvCache][round % 3];
                            let size =
                                1 + random.below(if kind == TensorKind::Small { 4096 } else { 64 * 1024 });
                            let handle = memory.alloc_on(core, size, kind).unwrap();
                            if random.below(3) == 0 {
                                kept.push(handle);
                            } else {
                                memory.release_on(core, handle).unwrap();
                            }
                        }
                        kept
                    })
                })
                .collect();
            workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
        });
        let mut ranges: Vec<(u64, u64)> =
            handles.iter().map(|handle| (handle.base(), handle.end())).collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{:#x?} overlaps {:#x?}", pair[0], pair[1]);
        }
        for (index, handle) in handles.into_iter().enumerate() {
            memory.release_on(index % 4, handle).unwrap();
        }
        memory.reclaim();
        for pool in Pool::ALL {
            let statistics = memory.statistics(pool);
            assert_eq!(statistics.counters.live_bytes, 0, "{pool:?}");
            assert_eq!(statistics.counters.reserved_bytes, 0, "{pool:?}");
        }
    }

    #[test]
    fn the_arena_lends_segments_and_takes_them_back() {
        let plan = small_plan(3);
        let memory = memory(64);
        let arena = plan.region(RegionKind::Arena);
        // KV blocks borrow a segment from the high end; weights cannot use it meanwhile.
        let kv = memory.alloc(MIB, TensorKind::KvCache).unwrap();
        assert!(kv.base() >= arena.end() - SEGMENT, "{kv}");
        assert_eq!(memory.statistics(Pool::KvCache).capacity, SEGMENT);
        assert_eq!(memory.statistics(Pool::Weights).capacity, arena.size - SEGMENT);
        let whole = memory.alloc(arena.size, TensorKind::Weights);
        assert!(matches!(whole, Err(MemError::OutOfMemory { .. })), "the segment is lent");
        let activations = memory.alloc(64 * 1024, TensorKind::Activation).unwrap();
        assert_eq!(memory.arena().kv_cache + memory.arena().activations, 2 * SEGMENT);
        // A segment in use stays lent; a free one goes back.
        memory.release(activations).unwrap();
        assert_eq!(memory.reclaim_segments(), SEGMENT);
        assert_eq!(memory.reclaim_segments(), 0);
        memory.release(kv).unwrap();
        assert_eq!(memory.reclaim_segments(), SEGMENT);
        let whole = memory.alloc(arena.size, TensorKind::Weights).unwrap();
        assert_eq!(memory.arena().largest_free, 0);
        assert!(matches!(memory.alloc(MIB, TensorKind::KvCache), Err(MemError::OutOfMemory { .. })));
        memory.release(whole).unwrap();
        let statistics = memory.arena();
        assert_eq!(
            (statistics.free, statistics.largest_free, statistics.weights),
            (arena.size, arena.size, 0)
        );
    }

    #[test]
    fn node_slices_tile_each_region() {
        let region = Region { kind: RegionKind::Arena, base: 6 * MIB, size: 100 * MIB };
        for nodes in 1..=4 {
            let slices: Vec<Region> =
                (0..nodes).map(|node| node_slice(region, node, nodes, BLOCK, "weights").unwrap()).collect();
            assert_eq!(slices[0].base, region.base);
            assert_eq!(slices[nodes - 1].end(), region.end());
            for pair in slices.windows(2) {
                assert_eq!(pair[0].end(), pair[1].base, "{nodes} nodes");
                assert_eq!(pair[1].base % BLOCK, 0);
            }
        }
        let tiny = Region { kind: RegionKind::Arena, base: 0, size: 3 * MIB };
        assert_eq!(
            node_slice(tiny, 0, 4, MIB, "arena").unwrap_err().to_string(),
            "arena: cannot use the llm arena region: too small to give every memory node a slice"
        );
        let plan = small_plan(7);
        let config = TensorMemoryConfig { topology: topology(4), ..Default::default() };
        let built = TensorMemory::new(&plan, config).map(|memory| memory.node_count());
        assert!(
            matches!(built, Ok(4) | Err(MemError::UnusableRegion { .. })),
            "four nodes either fit or are refused with a typed error: {built:?}"
        );
    }

    #[test]
    fn each_core_is_served_by_its_own_node_first() {
        let plan = small_plan(7);
        let memory = memory_on_nodes(64, 2);
        assert_eq!((memory.node_count(), memory.node_of(2), memory.node_of(3)), (2, Ok(1), Ok(1)));
        let weights = plan.region(RegionKind::Arena);
        let middle = node_slice(weights, 1, 2, BLOCK, "arena").unwrap().base;
        let near = memory.alloc_on(0, 3 * MIB, TensorKind::Weights).unwrap();
        let far = memory.alloc_on(3, 3 * MIB, TensorKind::Weights).unwrap();
        assert_eq!((near.node(), far.node()), (0, 1));
        assert!(near.end() <= middle && far.base() >= middle, "{near} / {far}");
        for kind in [TensorKind::KvCache, TensorKind::Activation, TensorKind::Small] {
            let handle = memory.alloc_on(2, 2048, kind).unwrap();
            assert_eq!(handle.node(), 1, "{handle}");
            memory.release_on(0, handle).unwrap();
        }
        // Node 1's weights run out: core 2 is served from node 0, and it is counted.
        let mut held = vec![near, far];
        while memory.alloc_on(2, 4 * MIB, TensorKind::Weights).map(|handle| held.push(handle)).is_ok() {}
        let nodes_used: std::collections::HashSet<usize> = held.iter().map(TensorHandle::node).collect();
        assert_eq!(nodes_used.len(), 2);
        assert!(memory.remote_allocations() > 0);
        assert!(matches!(
            memory.alloc_on(2, 4 * MIB, TensorKind::Weights),
            Err(MemError::OutOfMemory { pool: "weights", .. })
        ));
        let text = memory.report().to_string();
        assert!(text.contains("2 memory nodes, tensor pools per node"), "{text}");
        assert!(
            text.contains("weights@1") && text.contains("kv-cache@0") && text.contains("protocol "),
            "{text}"
        );
        for (index, handle) in held.into_iter().enumerate() {
            memory.release_on(index % 4, handle).unwrap();
        }
        memory.reclaim();
        memory.reclaim_segments();
        for pool in Pool::ALL {
            assert_eq!(memory.statistics(pool).counters.reserved_bytes, 0, "{pool:?}");
        }
        let total = memory.statistics(Pool::Weights);
        assert_eq!(total.capacity, weights.size);
        assert_eq!(total.free_bytes, weights.size);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn every_scaled_pi3_plan_builds_and_serves_each_kind(ram_blocks in 64u64..1024, seed in any::<u64>()) {
            let ram = ram_blocks * 2 * MIB;
            let budget = Budget::reserving(ram, crate::mm::layout::system_need(ram), 4 * MIB);
            let Ok(plan) = MemoryPlan::new(ram, budget, MIB, seed) else {
                return Ok(());
            };
            let memory = TensorMemory::new(&plan, TensorMemoryConfig::default()).unwrap();
            for (kind, size) in [
                (TensorKind::Weights, 3 * MIB),
                (TensorKind::KvCache, 24 * 1024),
                (TensorKind::Activation, 1152),
                (TensorKind::Small, 40),
                (TensorKind::Protocol, 512),
                (TensorKind::Device, 64),
            ] {
                let handle = memory.alloc(size, kind).unwrap();
                let region = plan.regions.iter().find(|region| region.contains(handle.base())).unwrap();
                prop_assert!(handle.end() <= region.end());
                prop_assert_eq!(handle.base() % memory.alignment(size, kind), 0);
                memory.release(handle).unwrap();
            }
            memory.reclaim();
            for pool in Pool::ALL {
                prop_assert_eq!(memory.statistics(pool).counters.reserved_bytes, 0, "{:?}", pool);
            }
        }
    }

    fn kind() -> impl Strategy<Value = TensorKind> {
        prop_oneof![
            Just(TensorKind::Weights),
            Just(TensorKind::KvCache),
            Just(TensorKind::Activation),
            Just(TensorKind::Small),
            Just(TensorKind::Protocol),
            Just(TensorKind::Device),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_requests_never_overlap_and_account_exactly(
            requests in proptest::collection::vec((kind(), 1u64..(3 << 20), any::<bool>(), 0usize..4), 1..80),
            cache_line_log2 in 5u32..8,
            nodes in 1usize..3,
        ) {
            let memory = memory_on_nodes(1 << cache_line_log2, nodes);
            let mut live: Vec<TensorHandle> = Vec::new();
            for (kind, size, release_one, core) in requests {
                let size = match kind {
                    TensorKind::Small => size % 4096 + 1,
                    TensorKind::Device => size % (64 * 1024) + 1,
                    TensorKind::KvCache | TensorKind::Activation => size % LARGEST_BUDDY_BLOCK + 1,
                    _ => size,
                };
                match memory.alloc_on(core, size, kind) {
                    Ok(handle) => {
                        prop_assert!(handle.node() < nodes);
                        prop_assert_eq!(handle.base() % memory.cache_line(), 0);
                        prop_assert_eq!(handle.base() % memory.alignment(size, kind), 0);
                        for other in &live {
                            prop_assert!(handle.end() <= other.base() || other.end() <= handle.base());
                        }
                        live.push(handle);
                    }
                    Err(MemError::OutOfMemory { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected {}", other),
                }
                if release_one && !live.is_empty() {
                    let handle = live.swap_remove(size as usize % live.len());
                    prop_assert_eq!(memory.release_on(3 - core, handle), Ok(0));
                }
                for pool in [Pool::Weights, Pool::KvCache, Pool::Protocol, Pool::Dma] {
                    let expected: u64 = live.iter().filter(|handle| handle.pool() == pool).map(|handle| handle.size()).sum();
                    prop_assert_eq!(memory.statistics(pool).counters.live_bytes, expected, "{:?}", pool);
                }
            }
            for handle in live {
                prop_assert_eq!(memory.release(handle), Ok(0));
            }
            memory.reclaim();
            memory.reclaim_segments();
            for pool in Pool::ALL {
                let statistics = memory.statistics(pool);
                prop_assert_eq!(statistics.counters.reserved_bytes, 0, "{:?}", pool);
                prop_assert_eq!(statistics.free_bytes, if pool == Pool::Slab { 0 } else { statistics.capacity });
            }
            prop_assert_eq!(memory.protocol.lock().block_count(), (1, 0));
            for pools in &memory.nodes {
                prop_assert_eq!(pools.arena.lock().free_block_count(), 1, "every segment came back");
                prop_assert_eq!(pools.kv_cache.lock().capacity() + pools.activations.lock().capacity(), 0);
                let small = pools.slab.source().lock();
                prop_assert_eq!(small.free_block_count(), small.initial_block_count());
            }
        }
    }
}
