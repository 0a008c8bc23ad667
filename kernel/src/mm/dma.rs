//! DMA pool: device-visible buffers (mailbox property buffers, DMA control blocks) in the
//! non-cacheable DMA region, with alignment chosen per request.

#![forbid(unsafe_code)]

use super::chunk::ChunkAllocator;
use super::error::MemError;
use super::layout::{Region, RegionKind};
use super::stats::PoolStatistics;

/// An allocator over the DMA region. Blocks are multiples of the cache line and aligned to at
/// least the cache line, so a buffer never shares a line with another; the region itself is
/// mapped non-cacheable, so devices see what the cores wrote without cache maintenance.
///
/// Invariants and time bounds are those of [`ChunkAllocator`] (address-ordered, coalescing,
/// O(log n)); the pool only adds the region check and the cache-line granule.
#[derive(Debug)]
pub struct DmaPool {
    blocks: ChunkAllocator,
}

impl DmaPool {
    /// A pool over `region`, which must be the non-cacheable DMA region, with blocks of
    /// `cache_line` bytes (a power of two read from the CPU at boot).
    pub fn new(region: Region, cache_line: u64) -> Result<Self, MemError> {
        if region.kind.cacheable() {
            return Err(MemError::UnusableRegion {
                pool: "dma",
                kind: region.kind,
                reason: "DMA buffers need the non-cacheable region",
            });
        }
        debug_assert_eq!(region.kind, RegionKind::Dma);
        Ok(Self { blocks: ChunkAllocator::new("dma", region.base, region.size, cache_line)? })
    }

    /// Allocates `size` bytes aligned to `alignment` (a power of two; at least the cache line
    /// is used). Returns the bus-visible physical address.
    pub fn alloc(&mut self, size: u64, alignment: u64) -> Result<u64, MemError> {
        self.blocks.alloc(size, alignment)
    }

    /// Allocates like [`DmaPool::alloc`] and clears the buffer through `zero(base, length)`.
    pub fn alloc_zeroed(
        &mut self,
        size: u64,
        alignment: u64,
        zero: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, MemError> {
        self.blocks.alloc_zeroed(size, alignment, zero)
    }

    /// Frees the buffer at `address`. Returns the bytes that were requested.
    pub fn free(&mut self, address: u64) -> Result<u64, MemError> {
        self.blocks.free(address)
    }

    /// The cache-line granule.
    pub fn cache_line(&self) -> u64 {
        self.blocks.granule()
    }

    /// Number of free blocks.
    pub fn free_block_count(&self) -> usize {
        self.blocks.free_block_count()
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> PoolStatistics {
        self.blocks.statistics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DMA: Region = Region { kind: RegionKind::Dma, base: 0x20_0000, size: 0x20_0000 };

    #[test]
    fn refuses_cacheable_memory() {
        let heap = Region { kind: RegionKind::Heap, ..DMA };
        let error = DmaPool::new(heap, 64).unwrap_err();
        assert_eq!(
            alloc::string::ToString::to_string(&error),
            "dma: cannot use the heap region: DMA buffers need the non-cacheable region"
        );
    }

    #[test]
    fn buffers_never_share_a_cache_line() {
        let mut pool = DmaPool::new(DMA, 64).unwrap();
        let mailbox = pool.alloc(36, 16).unwrap();
        let control_block = pool.alloc(32, 32).unwrap();
        assert_eq!(mailbox % 64, 0);
        assert_eq!(control_block % 64, 0);
        assert!(control_block >= mailbox + 64 || mailbox >= control_block + 64);
        assert_eq!(pool.free(mailbox), Ok(36));
        assert!(matches!(pool.free(mailbox), Err(MemError::DoubleFree { .. })));
        assert_eq!(pool.free(control_block), Ok(32));
        assert_eq!(pool.free_block_count(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn alignment_is_honoured(
            requests in proptest::collection::vec((1u64..16 * 1024, 4u32..16), 1..60),
            cache_line_log2 in 5u32..8,
        ) {
            let mut pool = DmaPool::new(DMA, 1 << cache_line_log2).unwrap();
            let mut live = Vec::new();
            for (size, alignment_log2) in requests {
                let address = pool.alloc(size, 1 << alignment_log2).unwrap();
                prop_assert_eq!(address % (1u64 << alignment_log2.max(cache_line_log2)), 0);
                prop_assert!(DMA.contains(address) && address + size <= DMA.end());
                for &(other, other_size) in &live {
                    prop_assert!(address + size <= other || other + other_size <= address);
                }
                live.push((address, size));
            }
            for (address, size) in live {
                prop_assert_eq!(pool.free(address), Ok(size));
            }
            prop_assert_eq!(pool.free_block_count(), 1);
        }
    }
}
