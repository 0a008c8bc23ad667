//! Paged KV cache: fixed-size KV blocks carved from buddy-allocated chunks, and a per-sequence
//! block table that implements [`KvStore`], so attention reads paged memory without knowing.
//!
//! A block holds `block_tokens` positions of one layer: their key rows, then their value rows.
//! Blocks are carved from 1 MiB chunks of the KV region, so a block size that is not a power of
//! two (SmolLM2: 16 × 192 × 2 × 4 = 24 KiB) wastes only the tail of each chunk, not a quarter
//! of every block as a power-of-two allocator would.

use super::{
    MemError,
    buffer::{BackedMemory, TensorBuffer},
    tensor::TensorKind,
};
use crate::hil::{KvError, KvStore};
use alloc::vec::Vec;
use core::ptr::NonNull;

/// Bytes of one chunk that blocks are carved from (the buddy allocator's largest block).
pub const CHUNK_BYTES: u64 = super::tensor::LARGEST_BUDDY_BLOCK;

/// Fixed-size KV blocks over the KV-cache pool.
///
/// Invariants: every block lies inside one chunk and no two live blocks overlap; a block is on
/// the free list or owned by exactly one [`KvBlock`]. Allocation and free are O(1) except when
/// a new chunk is taken from the buddy allocator (O(buddy levels)).
pub struct KvBlockPool<'memory> {
    memory: &'memory BackedMemory,
    floats_per_block: usize,
    inner: spin::Mutex<PoolInner<'memory>>,
}

struct PoolInner<'memory> {
    chunks: Vec<TensorBuffer<'memory>>,
    free: Vec<NonNull<f32>>,
    in_use: usize,
    limit_blocks: usize,
}

// SAFETY: the free list holds addresses of chunk memory owned by the pool; they are only handed
// out under the lock, and each to one owner.
unsafe impl Send for PoolInner<'_> {}

/// Counts of a [`KvBlockPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPoolStatistics {
    /// Blocks held by sequences.
    pub blocks_in_use: usize,
    /// Blocks carved and free.
    pub blocks_free: usize,
    /// Bytes of one block.
    pub block_bytes: usize,
    /// Chunks taken from the KV region.
    pub chunks: usize,
}

impl<'memory> KvBlockPool<'memory> {
    /// A pool of blocks of `floats_per_block` f32 values each, holding at most `limit_blocks`
    /// blocks at once (the KV budget).
    pub fn new(
        memory: &'memory BackedMemory,
        floats_per_block: usize,
        limit_blocks: usize,
    ) -> Result<Self, MemError> {
        let bytes = (floats_per_block * 4) as u64;
        if floats_per_block == 0 {
            return Err(MemError::ZeroSize { pool: "kv-blocks" });
        }
        if bytes > CHUNK_BYTES {
            return Err(MemError::TooLarge { pool: "kv-blocks", requested: bytes, limit: CHUNK_BYTES });
        }
        Ok(Self {
            memory,
            floats_per_block,
            inner: spin::Mutex::new(PoolInner {
                chunks: Vec::new(),
                free: Vec::new(),
                in_use: 0,
                limit_blocks,
            }),
        })
    }

    /// Values in one block.
    pub fn floats_per_block(&self) -> usize {
        self.floats_per_block
    }

    /// Takes a zeroed block.
    pub fn alloc(&self) -> Result<KvBlock<'_, 'memory>, KvError> {
        let mut inner = self.inner.lock();
        if inner.in_use >= inner.limit_blocks {
            return Err(KvError::OutOfMemory);
        }
        if inner.free.is_empty() {
            let mut chunk =
                self.memory.alloc(CHUNK_BYTES, TensorKind::KvCache).map_err(|_| KvError::OutOfMemory)?;
            let floats = chunk.as_f32_mut();
            for block in floats.chunks_exact_mut(self.floats_per_block) {
                inner.free.push(NonNull::from(block).cast());
            }
            inner.chunks.push(chunk);
        }
        let data = inner.free.pop().ok_or(KvError::OutOfMemory)?;
        inner.in_use += 1;
        drop(inner);
        let mut block = KvBlock { pool: self, data };
        block.fill(0.0);
        Ok(block)
    }

    /// Current counts.
    pub fn statistics(&self) -> KvPoolStatistics {
        let inner = self.inner.lock();
        KvPoolStatistics {
            blocks_in_use: inner.in_use,
            blocks_free: inner.free.len(),
            block_bytes: self.floats_per_block * 4,
            chunks: inner.chunks.len(),
        }
    }
}

/// One block, owned by one sequence; returns to its pool when dropped.
pub struct KvBlock<'pool, 'memory> {
    pool: &'pool KvBlockPool<'memory>,
    data: NonNull<f32>,
}

impl core::ops::Deref for KvBlock<'_, '_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `data` points at `floats_per_block` values inside a chunk the pool keeps alive
        // for its whole life, and this block is their only owner.
        unsafe { core::slice::from_raw_parts(self.data.as_ptr(), self.pool.floats_per_block) }
    }
}

impl core::ops::DerefMut for KvBlock<'_, '_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(self.data.as_ptr(), self.pool.floats_per_block) }
    }
}

impl Drop for KvBlock<'_, '_> {
    fn drop(&mut self) {
        let mut inner = self.pool.inner.lock();
        inner.free.push(self.data);
        inner.in_use -= 1;
    }
}

/// One sequence's KV cache in blocks of `block_tokens` positions per layer.
pub struct PagedKv<'pool, 'memory> {
    pool: &'pool KvBlockPool<'memory>,
    layers: usize,
    kv_dim: usize,
    block_tokens: usize,
    capacity: usize,
    /// Block `b` of layer `l` is `blocks[b * layers + l]`.
    blocks: Vec<KvBlock<'pool, 'memory>>,
}

impl<'pool, 'memory> PagedKv<'pool, 'memory> {
    /// An empty cache for `layers` layers of `kv_dim` values, in blocks of `block_tokens`
    /// positions, holding at most `capacity` positions (the sequence's quota). The pool's
    /// blocks must hold `2 × block_tokens × kv_dim` values.
    pub fn new(
        pool: &'pool KvBlockPool<'memory>,
        layers: usize,
        kv_dim: usize,
        block_tokens: usize,
        capacity: usize,
    ) -> Option<Self> {
        (block_tokens > 0 && pool.floats_per_block() == 2 * block_tokens * kv_dim && layers > 0)
            .then(|| Self { pool, layers, kv_dim, block_tokens, capacity, blocks: Vec::new() })
    }

    /// Blocks this sequence holds.
    pub fn blocks_held(&self) -> usize {
        self.blocks.len()
    }

    fn locate(&self, layer: usize, position: usize) -> (usize, usize) {
        (position / self.block_tokens * self.layers + layer, position % self.block_tokens * self.kv_dim)
    }
}

/// Floats a block needs for `block_tokens` positions of `kv_dim` values (keys and values).
pub fn floats_per_block(block_tokens: usize, kv_dim: usize) -> usize {
    2 * block_tokens * kv_dim
}

impl KvStore for PagedKv<'_, '_> {
    fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    fn layers(&self) -> usize {
        self.layers
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn write(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) -> Result<(), KvError> {
        if position >= self.capacity {
            return Err(KvError::PositionOutOfRange { position, capacity: self.capacity });
        }
        if layer >= self.layers {
            return Err(KvError::LayerOutOfRange { layer });
        }
        for row in [key, value] {
            if row.len() != self.kv_dim {
                return Err(KvError::WrongRowLength { length: row.len(), expected: self.kv_dim });
            }
        }
        let needed = (position / self.block_tokens + 1) * self.layers;
        while self.blocks.len() < needed {
            self.blocks.push(self.pool.alloc()?);
        }
        let (block, offset) = self.locate(layer, position);
        let values_offset = self.block_tokens * self.kv_dim + offset;
        let data = &mut self.blocks[block];
        data[offset..offset + self.kv_dim].copy_from_slice(key);
        data[values_offset..values_offset + self.kv_dim].copy_from_slice(value);
        Ok(())
    }

    fn key(&self, layer: usize, position: usize) -> &[f32] {
        let (block, offset) = self.locate(layer, position);
        &self.blocks[block][offset..offset + self.kv_dim]
    }

    fn value(&self, layer: usize, position: usize) -> &[f32] {
        let (block, offset) = self.locate(layer, position);
        let start = self.block_tokens * self.kv_dim + offset;
        &self.blocks[block][start..start + self.kv_dim]
    }

    fn truncate(&mut self, length: usize) {
        self.blocks.truncate(length.div_ceil(self.block_tokens) * self.layers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hil::SingleCpu,
        infer::{
            ContiguousKv, State, forward,
            synthetic::{SyntheticFormat, SyntheticSpec},
        },
        mm::{buffer::tests::host_backed_memory, layout::MIB},
        model::{ModelFile, TensorType},
    };
    use proptest::prelude::*;

    fn logits_with(kv: &mut dyn KvStore, model: &ModelFile<'_>, tokens: &[u32]) -> Vec<f32> {
        let weights = &model.weights;
        let mut state = State::new(weights);
        let mut all = Vec::new();
        for (position, &token) in tokens.iter().enumerate() {
            all.extend_from_slice(forward(weights, &mut state, kv, &SingleCpu, token, position).unwrap());
        }
        all
    }

    #[test]
    fn paged_logits_equal_contiguous_for_every_block_size() {
        let spec = SyntheticSpec {
            dim: 64,
            hidden_dim: 96,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            vocab_size: 300,
            context_length: 80,
            tied: true,
            seed: 5,
        };
        let generated = spec.generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap();
        let model = ModelFile::parse(&generated.model).unwrap();
        let config = model.weights.config;
        let tokens: Vec<u32> = (0..70).map(|index| (index * 37 % 300) as u32).collect();
        let mut contiguous =
            ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
        let expected = logits_with(&mut contiguous, &model, &tokens);
        let memory = host_backed_memory(64 * MIB);
        for block_tokens in [8, 16, 32] {
            let pool =
                KvBlockPool::new(memory, floats_per_block(block_tokens, config.kv_dim()), 1000).unwrap();
            let mut paged = PagedKv::new(&pool, config.layers, config.kv_dim(), block_tokens, 80).unwrap();
            assert_eq!(logits_with(&mut paged, &model, &tokens), expected, "block size {block_tokens}");
            assert_eq!(paged.blocks_held(), 70usize.div_ceil(block_tokens) * config.layers);
            drop(paged);
            assert_eq!(pool.statistics().blocks_in_use, 0, "blocks return on drop");
        }
    }

    #[test]
    fn quota_and_budget_are_errors() {
        let memory = host_backed_memory(32 * MIB);
        let pool = KvBlockPool::new(memory, floats_per_block(4, 8), 2).unwrap();
        let mut paged = PagedKv::new(&pool, 1, 8, 4, 100).unwrap();
        let row = [1.0f32; 8];
        for position in 0..8 {
            paged.write(0, position, &row, &row).unwrap();
        }
        assert_eq!(paged.write(0, 8, &row, &row), Err(KvError::OutOfMemory), "pool limit of 2 blocks");
        assert_eq!(
            paged.write(0, 100, &row, &row),
            Err(KvError::PositionOutOfRange { position: 100, capacity: 100 })
        );
        assert_eq!(paged.write(1, 0, &row, &row), Err(KvError::LayerOutOfRange { layer: 1 }));
        assert_eq!(
            paged.write(0, 0, &row[..3], &row),
            Err(KvError::WrongRowLength { length: 3, expected: 8 })
        );
        paged.truncate(3);
        assert_eq!(pool.statistics().blocks_in_use, 1);
        assert!(PagedKv::new(&pool, 1, 9, 4, 10).is_none(), "block shape must match the pool");
        assert!(KvBlockPool::new(memory, 0, 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Rows read back are the rows written, for random layers, positions and block sizes.
        #[test]
        fn rows_round_trip(block_tokens in 1usize..9, writes in proptest::collection::vec((0usize..3, 0usize..40, any::<i16>()), 1..60)) {
            let memory = host_backed_memory(16 * MIB);
            let pool = KvBlockPool::new(memory, floats_per_block(block_tokens, 4), 10_000).unwrap();
            let mut paged = PagedKv::new(&pool, 3, 4, block_tokens, 40).unwrap();
            let mut model = std::collections::HashMap::new();
            for (layer, position, value) in writes {
                let key = [f32::from(value); 4];
                let val = [f32::from(value) + 0.5; 4];
                paged.write(layer, position, &key, &val).unwrap();
                model.insert((layer, position), value);
            }
            for ((layer, position), value) in model {
                prop_assert_eq!(paged.key(layer, position), &[f32::from(value); 4]);
                prop_assert_eq!(paged.value(layer, position), &[f32::from(value) + 0.5; 4]);
            }
        }
    }
}
