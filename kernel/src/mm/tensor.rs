//! Typed dispatch: `TensorMemory` builds every pool over the boot-time `MemoryPlan` and routes
//! each request by tensor kind and size, handing back a reference-counted `TensorHandle`.

#![forbid(unsafe_code)]

use super::buddy::BuddyAllocator;
use super::chunk::ChunkAllocator;
use super::dma::DmaPool;
use super::error::MemError;
use super::layout::{BLOCK, MemoryPlan, RegionKind};
use super::rt::RtPool;
use super::slab::{CoreSlab, LARGEST_OBJECT, SlabDepot};
use super::stats::{MemoryReport, PoolLatency, PoolStatistics};
use crate::hil::{Clock, Deadline};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

/// Bytes of a small page; buddy blocks and chunk granules are multiples of it.
pub const PAGE: u64 = 4096;
/// The largest buddy block (activations and KV blocks).
pub const LARGEST_BUDDY_BLOCK: u64 = 1 << 20;

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
    /// Every pool, in the order of the memory-map report.
    pub const ALL: [Pool; 6] =
        [Pool::Dma, Pool::Protocol, Pool::Weights, Pool::KvCache, Pool::Activations, Pool::Slab];

    fn index(self) -> usize {
        self as usize
    }
}

/// The size of the mapping a tensor sits in, Hermit style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// Inside 4 KiB-granular allocations.
    Size4KiB,
    /// A run of whole 2 MiB blocks.
    Size2MiB,
}

impl PageSize {
    /// Bytes in one page of this size.
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4KiB => PAGE,
            PageSize::Size2MiB => BLOCK,
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
    /// Cores with their own slab cache.
    pub cores: usize,
    /// Upper bound on the RT pool's block-table entries; the granule grows to fit.
    pub rt_table_entries: u64,
}

impl Default for TensorMemoryConfig {
    fn default() -> Self {
        Self { cache_line: 64, cores: 4, rt_table_entries: 65536 }
    }
}

type SharedBuddy = Arc<spin::Mutex<BuddyAllocator>>;

/// The tensor memory manager: one pool per region, routed by [`TensorKind`].
///
/// Routing: weights → chunk; KV blocks → KV buddy; activations → slab below a page and the
/// activations buddy from a page to 1 MiB; small objects → slab; protocol → RT pool; device
/// buffers → DMA pool. Every pool is behind its own lock except the slab fast path, whose
/// per-core caches are locked only by their own core (uncontended); each pool's own doc
/// comment gives its invariants and time bounds.
#[derive(Debug)]
pub struct TensorMemory {
    cache_line: u64,
    weights: spin::Mutex<ChunkAllocator>,
    kv_cache: spin::Mutex<BuddyAllocator>,
    slab: SlabDepot<SharedBuddy>,
    core_caches: Vec<spin::Mutex<CoreSlab>>,
    protocol: spin::Mutex<RtPool>,
    dma: spin::Mutex<DmaPool>,
    latency: spin::Mutex<[PoolLatency; 6]>,
}

impl TensorMemory {
    /// Builds every pool over the regions of `plan`.
    pub fn new(plan: &MemoryPlan, config: TensorMemoryConfig) -> Result<Self, MemError> {
        let cache_line = config.cache_line;
        if !cache_line.is_power_of_two() || cache_line > PAGE {
            return Err(MemError::BadAlignment { pool: "tensor", alignment: cache_line });
        }
        let cores = config.cores.max(1);
        let weights = plan.region(RegionKind::Weights);
        let kv_cache = plan.region(RegionKind::KvCache);
        let activations = plan.region(RegionKind::Activations);
        let protocol = plan.region(RegionKind::Protocol);
        let activations_buddy = BuddyAllocator::new(
            "activations",
            activations.base,
            activations.size,
            PAGE,
            LARGEST_BUDDY_BLOCK,
        )?;
        let slab = SlabDepot::new("slab", Arc::new(spin::Mutex::new(activations_buddy)), cache_line.max(16))?;
        let core_caches = (0..cores).map(|core| spin::Mutex::new(CoreSlab::new(&slab, core))).collect();
        let rt_granule = RtPool::granule_for(protocol.size, config.rt_table_entries, cache_line);
        Ok(Self {
            cache_line,
            weights: spin::Mutex::new(ChunkAllocator::new("weights", weights.base, weights.size, PAGE)?),
            kv_cache: spin::Mutex::new(BuddyAllocator::new(
                "kv-cache",
                kv_cache.base,
                kv_cache.size,
                PAGE,
                LARGEST_BUDDY_BLOCK,
            )?),
            slab,
            core_caches,
            protocol: spin::Mutex::new(RtPool::new("protocol", protocol.base, protocol.size, rt_granule)?),
            dma: spin::Mutex::new(DmaPool::new(plan.region(RegionKind::Dma), cache_line)?),
            latency: spin::Mutex::new([PoolLatency::default(); 6]),
        })
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

    /// Allocates `size` bytes for a tensor of `kind` on core `core` (whose slab cache serves
    /// small requests).
    pub fn alloc_on(&self, core: usize, size: u64, kind: TensorKind) -> Result<TensorHandle, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize { pool: "tensor" });
        }
        let pool = self.route(size, kind);
        let alignment = self.alignment(size, kind);
        let base = match pool {
            Pool::Weights => self.weights.lock().alloc(size, alignment)?,
            Pool::KvCache => self.kv_cache.lock().alloc(size)?,
            Pool::Activations => self.slab.source().lock().alloc(size)?,
            Pool::Slab => {
                if size > LARGEST_OBJECT {
                    return Err(MemError::TooLarge { pool: "slab", requested: size, limit: LARGEST_OBJECT });
                }
                self.core_cache(core)?.lock().alloc(&self.slab, size)?
            }
            Pool::Protocol => self.protocol.lock().alloc(size, alignment)?,
            Pool::Dma => self.dma.lock().alloc(size, alignment)?,
        };
        let page_size = if alignment >= BLOCK { PageSize::Size2MiB } else { PageSize::Size4KiB };
        Ok(TensorHandle { base, size, kind, pool, page_size, references: None })
    }

    /// Allocates `size` bytes of weights placed in the weights region as `placement` says;
    /// [`Placement::Apart`](super::chunk::Placement::Apart) puts a model staged for a hot-swap
    /// at the end away from the live one, so the two never interleave.
    pub fn alloc_weights_at(
        &self,
        size: u64,
        placement: super::chunk::Placement,
    ) -> Result<TensorHandle, MemError> {
        let alignment = self.alignment(size, TensorKind::Weights);
        let base = self.weights.lock().alloc_at(size, alignment, placement)?;
        let page_size = if alignment >= BLOCK { PageSize::Size2MiB } else { PageSize::Size4KiB };
        Ok(TensorHandle {
            base,
            size,
            kind: TensorKind::Weights,
            pool: Pool::Weights,
            page_size,
            references: None,
        })
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
        let base = self.protocol.lock().alloc_within(size, self.cache_line, deadline, clock)?;
        Ok(TensorHandle {
            base,
            size,
            kind: TensorKind::Protocol,
            pool: Pool::Protocol,
            page_size: PageSize::Size4KiB,
            references: None,
        })
    }

    fn core_cache(&self, core: usize) -> Result<&spin::Mutex<CoreSlab>, MemError> {
        self.core_caches.get(core).ok_or(MemError::NoSuchCore { core, cores: self.core_caches.len() })
    }

    /// Drops one reference to `handle`'s allocation, on core 0. Returns the references left;
    /// at zero the memory went back to its pool.
    pub fn release(&self, handle: TensorHandle) -> Result<u32, MemError> {
        self.release_on(0, handle)
    }

    /// Drops one reference to `handle`'s allocation on core `core`. Returns the references
    /// left; at zero the memory went back to its pool.
    pub fn release_on(&self, core: usize, handle: TensorHandle) -> Result<u32, MemError> {
        let cache = if handle.pool == Pool::Slab { Some(self.core_cache(core)?) } else { None };
        let left =
            handle.references.as_ref().map_or(0, |references| references.fetch_sub(1, Ordering::AcqRel) - 1);
        if left > 0 {
            return Ok(left);
        }
        match handle.pool {
            Pool::Weights => self.weights.lock().free(handle.base).map(drop),
            Pool::KvCache => self.kv_cache.lock().free(handle.base).map(drop),
            Pool::Activations => self.slab.source().lock().free(handle.base).map(drop),
            Pool::Slab => match cache {
                Some(cache) => cache.lock().free(&self.slab, handle.base).map(drop),
                None => Ok(()),
            },
            Pool::Protocol => self.protocol.lock().free(handle.base).map(drop),
            Pool::Dma => self.dma.lock().free(handle.base).map(drop),
        }?;
        Ok(0)
    }

    /// [`TensorMemory::alloc_on`], timed on `clock` into the pool's allocation histogram.
    pub fn alloc_timed(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        clock: &dyn Clock,
    ) -> Result<TensorHandle, MemError> {
        let start = clock.now_ns();
        let result = self.alloc_on(core, size, kind);
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

    /// Moves every core's cached slab objects to the depot and returns empty slabs to the
    /// activations buddy. Returns the slabs released. Call it off the allocation path.
    pub fn reclaim(&self) -> u64 {
        for cache in &self.core_caches {
            cache.lock().drain(&self.slab);
        }
        self.slab.reclaim()
    }

    /// A snapshot of one pool.
    pub fn statistics(&self, pool: Pool) -> PoolStatistics {
        match pool {
            Pool::Weights => self.weights.lock().statistics(),
            Pool::KvCache => self.kv_cache.lock().statistics(),
            Pool::Activations => self.slab.source().lock().statistics(),
            Pool::Slab => {
                let guards: Vec<_> = self.core_caches.iter().map(|cache| cache.lock()).collect();
                let cores: Vec<&CoreSlab> = guards.iter().map(|guard| &**guard).collect();
                self.slab.statistics(&cores)
            }
            Pool::Protocol => self.protocol.lock().statistics(),
            Pool::Dma => self.dma.lock().statistics(),
        }
    }

    /// The memory map with usage bars, for the console (`{}` prints it).
    pub fn report(&self) -> MemoryReport {
        let latency = *self.latency.lock();
        MemoryReport {
            pools: Pool::ALL.iter().map(|&pool| (self.statistics(pool), latency[pool.index()])).collect(),
            cache_line: self.cache_line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::layout::{Budget, MIB};
    use alloc::string::ToString;
    use proptest::prelude::*;

    fn small_plan(seed: u64) -> MemoryPlan {
        let budget = Budget { llm: 64 * MIB, protocol: 8 * MIB, system: 56 * MIB };
        MemoryPlan::new(128 * MIB, budget, MIB, seed).unwrap()
    }

    fn memory(cache_line: u64) -> TensorMemory {
        TensorMemory::new(&small_plan(7), TensorMemoryConfig { cache_line, cores: 4, rt_table_entries: 4096 })
            .unwrap()
    }

    #[test]
    fn each_kind_lands_in_its_region() {
        let plan = small_plan(7);
        let memory = memory(64);
        let cases = [
            (TensorKind::Weights, 5 * MIB, RegionKind::Weights, Pool::Weights, 2 * MIB),
            (TensorKind::Weights, 100 * 1024, RegionKind::Weights, Pool::Weights, PAGE),
            (TensorKind::KvCache, 48 * 1024, RegionKind::KvCache, Pool::KvCache, 64 * 1024),
            (TensorKind::Activation, 300 * 1024, RegionKind::Activations, Pool::Activations, 512 * 1024),
            (TensorKind::Activation, 1000, RegionKind::Activations, Pool::Slab, 64),
            (TensorKind::Small, 24, RegionKind::Activations, Pool::Slab, 64),
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
        let error = memory.alloc(2 * MIB, TensorKind::KvCache).unwrap_err();
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
        assert_eq!(memory.weights.lock().allocation(base), Some((10 * MIB, 10 * MIB)), "still live");
        assert_eq!(reader.reference_count(), 1);
        assert_eq!(memory.release(reader), Ok(0));
        assert_eq!(memory.weights.lock().allocation(base), None);
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
        assert!(matches!(
            memory.alloc(64, TensorKind::Small),
            Err(MemError::OutOfMemory { pool: "slab", .. })
        ));
        let buffer = memory.alloc(4096, TensorKind::Protocol).unwrap();
        assert_eq!(buffer.pool(), Pool::Protocol);
        for handle in held.into_iter().chain([buffer]) {
            memory.release(handle).unwrap();
        }
    }

    #[test]
    fn protocol_buffers_respect_deadlines() {
        use core::sync::atomic::AtomicU64;
        struct StepClock(AtomicU64);
        impl Clock for StepClock {
            fn ticks(&self) -> u64 {
                self.0.fetch_add(7, Ordering::Relaxed)
            }
            fn frequency_hz(&self) -> u64 {
                1_000_000
            }
        }
        let memory = memory(64);
        let clock = StepClock(AtomicU64::new(100));
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
    fn report_lists_every_pool_with_a_bar() {
        let memory = memory(64);
        let weights = memory.alloc(16 * MIB, TensorKind::Weights).unwrap();
        memory.record_latency(Pool::Weights, false, 1500);
        let text = memory.report().to_string();
        for name in ["dma", "protocol", "weights", "kv-cache", "activations", "slab"] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("16.0 MiB"), "{text}");
        assert!(text.contains("[##########..........]"), "weights fill 16 of 32 MiB:\n{text}");
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn every_scaled_pi3_plan_builds_and_serves_each_kind(ram_blocks in 64u64..1024, seed in any::<u64>()) {
            let ram = ram_blocks * 2 * MIB;
            let reference = Budget { llm: 600 * MIB, protocol: 128 * MIB, system: 296 * MIB };
            let budget = reference.scaled_to(1024 * MIB, ram);
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
            requests in proptest::collection::vec((kind(), 1u64..(3 << 20), any::<bool>()), 1..80),
            cache_line_log2 in 5u32..8,
        ) {
            let memory = memory(1 << cache_line_log2);
            let mut live: Vec<TensorHandle> = Vec::new();
            for (kind, size, release_one) in requests {
                let size = match kind {
                    TensorKind::Small => size % 4096 + 1,
                    TensorKind::Device => size % (64 * 1024) + 1,
                    TensorKind::KvCache | TensorKind::Activation => size % LARGEST_BUDDY_BLOCK + 1,
                    _ => size,
                };
                match memory.alloc(size, kind) {
                    Ok(handle) => {
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
                    prop_assert_eq!(memory.release(handle), Ok(0));
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
            for pool in Pool::ALL {
                let statistics = memory.statistics(pool);
                prop_assert_eq!(statistics.counters.reserved_bytes, 0, "{:?}", pool);
                prop_assert_eq!(statistics.free_bytes, if pool == Pool::Slab { 0 } else { statistics.capacity });
            }
            prop_assert_eq!(memory.weights.lock().free_block_count(), 1);
            prop_assert_eq!(memory.protocol.lock().block_count(), (1, 0));
            let activations = memory.slab.source().lock();
            prop_assert_eq!(activations.free_block_count(), activations.initial_block_count());
        }
    }
}
