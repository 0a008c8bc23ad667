//! Paged KV cache: fixed-size KV blocks carved from buddy-allocated chunks, and a per-sequence
//! block table that implements [`KvStore`], so attention reads paged memory without knowing.
//!
//! A block holds `block_tokens` positions of one layer: their key rows, then their value rows.
//! Blocks are carved from 1 MiB chunks of the KV region, so a block size that is not a power of
//! two (SmolLM2: 16 × 192 × 2 × 4 = 24 KiB) wastes only the tail of each chunk, not a quarter
//! of every block as a power-of-two allocator would.
//!
//! Blocks carry reference counts, so sequences can share them:
//! - a full block can be published in the pool's prefix cache under a hash of its parent
//!   block's hash, its tokens, the model's identity and its layer;
//! - a new sequence whose prompt starts with cached blocks attaches them
//!   ([`PagedKv::with_prefix`]) instead of computing them again;
//! - a write into a block that another table also holds copies the block first
//!   (copy-on-write);
//! - a cached block that no table holds any more stays on an LRU list, evicted from its head
//!   when the pool needs a block; a finishing sequence releases its blocks last block first, so
//!   the ends of sequences are evicted before the prefixes they share.

#![allow(unsafe_code)]

use super::{
    MemError,
    buffer::{BackedMemory, TensorBuffer},
    scope,
    tensor::TensorKind,
};
use crate::{
    hil::{KvError, KvStore},
    telemetry::{self, EventKind},
};
use alloc::{collections::BTreeMap, vec::Vec};
use core::ptr::NonNull;

pub mod int8;
#[cfg(test)]
mod tests;
pub mod two_level;

/// Bytes of one chunk that blocks are carved from (half an arena segment, so the KV cache's
/// buddy allocator can give a segment back as soon as both its halves are free).
pub const CHUNK_BYTES: u64 = super::layout::SEGMENT / 2;

/// No block: the end of the LRU list.
const NO_BLOCK: u32 = u32::MAX;

/// Fixed-size KV blocks over the KV-cache pool, with reference counts and a prefix cache.
///
/// Invariants:
/// - every block lies inside one chunk and no two blocks overlap;
/// - every carved block is in exactly one of three states: held (its reference count equals
///   the number of [`KvBlock`] handles to it), cached (count zero, published, on the LRU list),
///   or free (count zero, unpublished, on the free list);
/// - a published block's contents never change while it is published: a handle writes only
///   into a block it holds alone, after taking it out of the cache;
/// - held + cached blocks never exceed the limit given to [`KvBlockPool::new`].
///
/// Time: allocation, release and sharing are O(1) (O(log n) when a cached block is evicted or
/// attached, for the hash map), except when a new chunk is taken from the buddy allocator
/// (O(buddy levels) plus carving the chunk).
pub struct KvBlockPool<'memory> {
    memory: &'memory BackedMemory,
    floats_per_block: usize,
    inner: spin::Mutex<PoolInner<'memory>>,
}

struct PoolInner<'memory> {
    /// The chunks, by slot; slot `i` holds blocks `i × per_chunk ..` (a released chunk leaves
    /// its slot empty, and the next chunk taken fills it with the same block numbers).
    chunks: Vec<Option<TensorBuffer<'memory>>>,
    blocks: Vec<BlockEntry>,
    free: Vec<u32>,
    /// Blocks with a reference count above zero.
    in_use: usize,
    limit_blocks: usize,
    cache: PrefixCache,
}

/// The bookkeeping of one carved block.
struct BlockEntry {
    address: NonNull<f32>,
    references: u32,
    /// The key the block is published under, if it is.
    published: Option<CacheKey>,
    /// LRU neighbours while the block is cached and unreferenced.
    previous: u32,
    next: u32,
}

// SAFETY: the block addresses point into chunk memory owned by the pool; they are only handed
// out under the lock, and written only through a handle that holds its block alone.
unsafe impl Send for PoolInner<'_> {}

/// Where a published block is found: the hash of its token block and its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CacheKey {
    hash: u64,
    layer: u32,
}

/// What is known of a published block, checked on every lookup so that a hash collision can
/// only cost a miss, never attach the wrong block.
struct CacheEntry {
    block: u32,
    parent: u64,
    tokens: Vec<u32>,
}

/// The prefix cache: published blocks by key, and the LRU list of those no table holds.
///
/// The list runs from the head (evicted first) to the tail (queued last).
struct PrefixCache {
    entries: BTreeMap<CacheKey, CacheEntry>,
    head: u32,
    tail: u32,
    unreferenced: usize,
    statistics: PrefixStatistics,
}

/// Counts of a [`KvBlockPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPoolStatistics {
    /// Blocks held by sequences.
    pub blocks_in_use: usize,
    /// Blocks carved and free.
    pub blocks_free: usize,
    /// Blocks no sequence holds but the prefix cache keeps (evictable).
    pub blocks_cached: usize,
    /// Bytes of one block.
    pub block_bytes: usize,
    /// Chunks taken from the KV region.
    pub chunks: usize,
}

/// Counts of the prefix cache and of copy-on-write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStatistics {
    /// Prompt positions looked up by [`PagedKv::with_prefix`].
    pub queried_tokens: u64,
    /// Of those, positions found filled in the cache.
    pub hit_tokens: u64,
    /// Blocks published.
    pub published_blocks: u64,
    /// Cached blocks evicted to make room.
    pub evicted_blocks: u64,
    /// Blocks copied because a sequence wrote into a shared block.
    pub copied_blocks: u64,
}

impl<'memory> KvBlockPool<'memory> {
    /// A pool of blocks of `floats_per_block` f32 values each, holding at most `limit_blocks`
    /// blocks at once (the KV budget), cached ones included.
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
                blocks: Vec::new(),
                free: Vec::new(),
                in_use: 0,
                limit_blocks: limit_blocks.min(NO_BLOCK as usize),
                cache: PrefixCache {
                    entries: BTreeMap::new(),
                    head: NO_BLOCK,
                    tail: NO_BLOCK,
                    unreferenced: 0,
                    statistics: PrefixStatistics::default(),
                },
            }),
        })
    }

    /// Values in one block.
    pub fn floats_per_block(&self) -> usize {
        self.floats_per_block
    }

    /// Takes a zeroed block.
    pub fn alloc(&self) -> Result<KvBlock<'_, 'memory>, KvError> {
        let mut block = self.alloc_for_overwrite()?;
        block.make_mut()?.fill(0.0);
        Ok(block)
    }

    /// Takes a block without clearing it: its values are whatever it last held (zero for a
    /// block never used). For callers that write every value before reading it, as a
    /// [`PagedKv`] does.
    pub fn alloc_for_overwrite(&self) -> Result<KvBlock<'_, 'memory>, KvError> {
        let mut inner = self.inner.lock();
        let id = inner.take(self.memory, self.floats_per_block)?;
        let data = inner.blocks[id as usize].address;
        Ok(KvBlock { pool: self, id, data })
    }

    /// Current counts.
    pub fn statistics(&self) -> KvPoolStatistics {
        let inner = self.inner.lock();
        KvPoolStatistics {
            blocks_in_use: inner.in_use,
            blocks_free: inner.free.len(),
            blocks_cached: inner.cache.unreferenced,
            block_bytes: self.floats_per_block * 4,
            chunks: inner.chunks.iter().flatten().count(),
        }
    }

    /// Sets the most blocks held and cached at once (the KV budget), as the memory the KV
    /// cache may use changes. Lowering it below what is held takes nothing away: new blocks
    /// then come from the prefix cache, or are refused.
    pub fn set_limit(&self, limit_blocks: usize) {
        self.inner.lock().limit_blocks = limit_blocks.min(NO_BLOCK as usize);
    }

    /// Gives every chunk whose blocks are all free back to the KV cache's memory pool (so
    /// the arena can take it back); returns the chunks released. The bookkeeping shrinks
    /// with the chunks: the slots after the last chunk kept go, with their blocks' entries,
    /// and the lists give back the room they no longer need, so a pool that grew and shrank
    /// back holds no more bookkeeping than its chunks need. O(blocks); off the token path.
    pub fn release_free_chunks(&self) -> usize {
        let per_chunk = self.blocks_per_chunk();
        let mut inner = self.inner.lock();
        let mut released = 0;
        for slot in 0..inner.chunks.len() {
            let ids = slot * per_chunk..(slot + 1) * per_chunk;
            let idle = inner.chunks[slot].is_some()
                && inner.blocks[ids.clone()]
                    .iter()
                    .all(|entry| entry.references == 0 && entry.published.is_none());
            if idle {
                inner.free.retain(|id| !ids.contains(&(*id as usize)));
                inner.chunks[slot] = None;
                released += 1;
            }
        }
        if released > 0 {
            inner.trim(per_chunk);
        }
        released
    }

    /// Blocks carved from one chunk.
    fn blocks_per_chunk(&self) -> usize {
        CHUNK_BYTES as usize / (self.floats_per_block * 4)
    }

    /// Bytes the pool's bookkeeping has room for (its chunk, block and free lists, by
    /// capacity; the prefix cache's entries are not counted): what it holds in the
    /// small-object pools beside its chunks.
    pub fn bookkeeping_bytes(&self) -> usize {
        let inner = self.inner.lock();
        inner.chunks.capacity() * core::mem::size_of::<Option<TensorBuffer<'memory>>>()
            + inner.blocks.capacity() * core::mem::size_of::<BlockEntry>()
            + inner.free.capacity() * core::mem::size_of::<u32>()
    }

    /// Most blocks held and cached at once (the budget given to [`KvBlockPool::new`]).
    pub fn limit_blocks(&self) -> usize {
        self.inner.lock().limit_blocks
    }

    /// Blocks a sequence could still take: the budget minus the blocks held (cached blocks
    /// count as available, since taking a block evicts them).
    pub fn available_blocks(&self) -> usize {
        let inner = self.inner.lock();
        inner.limit_blocks.saturating_sub(inner.in_use)
    }

    /// Counts of the prefix cache and of copy-on-write.
    pub fn prefix_statistics(&self) -> PrefixStatistics {
        self.inner.lock().cache.statistics
    }

    /// Evicts every cached block that no sequence holds (the first action under memory
    /// pressure) and returns how many were evicted. Blocks still held stay published.
    pub fn drop_cached(&self) -> usize {
        let mut inner = self.inner.lock();
        let mut evicted = 0;
        while let Some(id) = inner.evict_head() {
            inner.free.push(id);
            evicted += 1;
        }
        if evicted > 0 {
            telemetry::record(EventKind::KvEviction { blocks: evicted as u64 });
        }
        evicted
    }

    fn handle(&self, id: u32, data: NonNull<f32>) -> KvBlock<'_, 'memory> {
        KvBlock { pool: self, id, data }
    }
}

impl<'memory> PoolInner<'memory> {
    /// Drops the empty chunk slots after the last chunk held, with their blocks' entries (all
    /// free and unpublished, so on no list but the free list, which no longer names them), and
    /// shrinks the lists to what they hold. The lists are small objects whatever the caller's
    /// scope, as when they grow (see [`PoolInner::take`]).
    fn trim(&mut self, per_chunk: usize) {
        let slots = self.chunks.iter().rposition(Option::is_some).map_or(0, |last| last + 1);
        self.chunks.truncate(slots);
        self.blocks.truncate(slots * per_chunk);
        debug_assert!(self.free.iter().all(|&id| (id as usize) < self.blocks.len()));
        scope::with(TensorKind::Small, || {
            self.chunks.shrink_to_fit();
            self.blocks.shrink_to_fit();
            self.free.shrink_to_fit();
        });
    }

    /// Takes a block with a reference count of one: a free one, else one carved from a new
    /// chunk, else the least recently used cached one.
    fn take(&mut self, memory: &'memory BackedMemory, floats_per_block: usize) -> Result<u32, KvError> {
        let id = if self.in_use + self.cache.unreferenced >= self.limit_blocks {
            self.evict_for_take()?
        } else if let Some(id) = self.free.pop() {
            id
        } else if let Some(chunk) = self.new_chunk(memory, floats_per_block) {
            // The lists grow as small objects, whatever the caller's scope.
            scope::with(TensorKind::Small, || self.carve(chunk, floats_per_block));
            self.free.pop().ok_or(KvError::OutOfMemory)?
        } else {
            self.evict_for_take()?
        };
        self.blocks[id as usize].references = 1;
        self.in_use += 1;
        Ok(id)
    }

    /// Carves `chunk` into free blocks, in the first empty slot (whose block numbers it takes
    /// over) or a new one at the end.
    fn carve(&mut self, mut chunk: TensorBuffer<'memory>, floats_per_block: usize) {
        let slot = self.chunks.iter().position(Option::is_none).unwrap_or(self.chunks.len());
        let first = slot * (CHUNK_BYTES as usize / (floats_per_block * 4));
        for (index, block) in chunk.as_f32_mut().chunks_exact_mut(floats_per_block).enumerate() {
            let entry = BlockEntry {
                address: NonNull::from(block).cast(),
                references: 0,
                published: None,
                previous: NO_BLOCK,
                next: NO_BLOCK,
            };
            match self.blocks.get_mut(first + index) {
                Some(old) => *old = entry,
                None => self.blocks.push(entry),
            }
            self.free.push((first + index) as u32);
        }
        match self.chunks.get_mut(slot) {
            Some(empty) => *empty = Some(chunk),
            None => self.chunks.push(Some(chunk)),
        }
    }

    /// A new chunk from the KV region, unless the region is full or its blocks could not all
    /// be numbered below [`NO_BLOCK`].
    fn new_chunk(
        &self,
        memory: &'memory BackedMemory,
        floats_per_block: usize,
    ) -> Option<TensorBuffer<'memory>> {
        let per_chunk = CHUNK_BYTES as usize / (floats_per_block * 4);
        (self.blocks.len() + per_chunk < NO_BLOCK as usize)
            .then(|| memory.alloc(CHUNK_BYTES, TensorKind::KvCache).ok())
            .flatten()
    }

    /// Adds a reference to a block that is held or cached.
    fn share(&mut self, id: u32) {
        if self.blocks[id as usize].references == 0 {
            self.unlink(id);
            self.in_use += 1;
        }
        self.blocks[id as usize].references += 1;
    }

    /// Drops one reference; a block nobody holds goes to the LRU tail if it is published, or
    /// to the free list.
    fn release(&mut self, id: u32) {
        let entry = &mut self.blocks[id as usize];
        entry.references = entry.references.checked_sub(1).expect("KV block released more often than held");
        if entry.references > 0 {
            return;
        }
        self.in_use -= 1;
        if entry.published.is_some() {
            self.push_tail(id);
        } else {
            self.free.push(id);
        }
    }

    /// Takes a block out of the prefix cache, so it can be written.
    fn unpublish(&mut self, id: u32) {
        if let Some(key) = self.blocks[id as usize].published.take() {
            self.cache.entries.remove(&key);
        }
    }

    /// Unpublishes the LRU head and returns it (its reference count is zero).
    fn evict_head(&mut self) -> Option<u32> {
        let id = self.cache.head;
        if id == NO_BLOCK {
            return None;
        }
        self.unlink(id);
        self.unpublish(id);
        self.cache.statistics.evicted_blocks += 1;
        Some(id)
    }

    /// [`PoolInner::evict_head`] to make room for one new block, traced.
    fn evict_for_take(&mut self) -> Result<u32, KvError> {
        let id = self.evict_head().ok_or(KvError::OutOfMemory)?;
        telemetry::record(EventKind::KvEviction { blocks: 1 });
        Ok(id)
    }

    fn push_tail(&mut self, id: u32) {
        let tail = self.cache.tail;
        let entry = &mut self.blocks[id as usize];
        entry.previous = tail;
        entry.next = NO_BLOCK;
        if tail == NO_BLOCK {
            self.cache.head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.cache.tail = id;
        self.cache.unreferenced += 1;
    }

    fn unlink(&mut self, id: u32) {
        let (previous, next) = {
            let entry = &mut self.blocks[id as usize];
            let links = (entry.previous, entry.next);
            entry.previous = NO_BLOCK;
            entry.next = NO_BLOCK;
            links
        };
        if previous == NO_BLOCK {
            self.cache.head = next;
        } else {
            self.blocks[previous as usize].next = next;
        }
        if next == NO_BLOCK {
            self.cache.tail = previous;
        } else {
            self.blocks[next as usize].previous = previous;
        }
        self.cache.unreferenced -= 1;
    }
}

/// One reference to a block; the reference is dropped with the handle, and a block nobody
/// holds returns to its pool (to the prefix cache's LRU list if it is published).
///
/// Reading is always allowed; writing goes through [`KvBlock::make_mut`], which copies a
/// shared block first.
pub struct KvBlock<'pool, 'memory> {
    pool: &'pool KvBlockPool<'memory>,
    id: u32,
    data: NonNull<f32>,
}

impl<'pool, 'memory> KvBlock<'pool, 'memory> {
    /// Another handle to the same block (its reference count goes up by one).
    pub fn share(&self) -> Self {
        self.pool.inner.lock().share(self.id);
        self.pool.handle(self.id, self.data)
    }

    /// How many handles refer to this block.
    pub fn references(&self) -> u32 {
        self.pool.inner.lock().blocks[self.id as usize].references
    }

    /// The block's values, writable. A block held by another handle is first copied into a
    /// block of its own (copy-on-write); a block held only here but published leaves the
    /// prefix cache, since its contents are about to change.
    pub fn make_mut(&mut self) -> Result<&mut [f32], KvError> {
        let mut inner = self.pool.inner.lock();
        if inner.blocks[self.id as usize].references > 1 {
            let id = inner.take(self.pool.memory, self.pool.floats_per_block)?;
            inner.cache.statistics.copied_blocks += 1;
            let copy = self.pool.handle(id, inner.blocks[id as usize].address);
            drop(inner);
            // SAFETY: `copy` is a new block held by nothing else, and the source is shared
            // (count above one, one of them ours), so no handle writes either while we copy.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.data.as_ptr(),
                    copy.data.as_ptr(),
                    self.pool.floats_per_block,
                );
            }
            // The old reference is dropped with the old handle.
            *self = copy;
        } else {
            inner.unpublish(self.id);
            drop(inner);
        }
        // SAFETY: the block is held by this handle alone and is not published, so no other
        // handle can be made to it except through `self`, which `&mut self` borrows; its
        // `floats_per_block` values lie in a chunk that stays allocated while any block of it
        // is referenced (`release_free_chunks` frees only chunks whose blocks all have no
        // reference), and this handle holds one.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.data.as_ptr(), self.pool.floats_per_block) })
    }
}

// SAFETY: through `&KvBlock` a core can only read the block's values (`Deref`) or touch the
// pool's bookkeeping under its lock (`share`, `references`); the values are written only
// through `make_mut`, which takes `&mut self` and writes a block no other handle holds. So
// handles read from several cores at once (attention, a head per core) never see a write.
unsafe impl Sync for KvBlock<'_, '_> {}

impl core::ops::Deref for KvBlock<'_, '_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `data` points at `floats_per_block` values inside a chunk that stays allocated
        // while this handle holds its reference (`release_free_chunks` frees only chunks no
        // block of which is referenced); they are written only through `make_mut`, which
        // needs the block to be held by one handle alone, so never while another reads them.
        unsafe { core::slice::from_raw_parts(self.data.as_ptr(), self.pool.floats_per_block) }
    }
}

impl Drop for KvBlock<'_, '_> {
    fn drop(&mut self) {
        self.pool.inner.lock().release(self.id);
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
    /// Leading positions written in every layer (the most that may be published).
    filled: usize,
    /// The blocks in int8 while the sequence waits (then `blocks` is empty).
    compressed: Option<Compressed<'pool, 'memory>>,
}

/// A sequence's blocks compressed to int8 ([`int8`]): the codes of `count` blocks packed into
/// pool blocks, and each block's two scales.
struct Compressed<'pool, 'memory> {
    packed: Vec<KvBlock<'pool, 'memory>>,
    scales: Vec<[f32; 2]>,
    count: usize,
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
        (block_tokens > 0 && pool.floats_per_block() == 2 * block_tokens * kv_dim && layers > 0).then(|| {
            Self {
                pool,
                layers,
                kv_dim,
                block_tokens,
                capacity,
                blocks: Vec::new(),
                filled: 0,
                compressed: None,
            }
        })
    }

    /// Blocks this sequence holds (packed ones, while compressed).
    pub fn blocks_held(&self) -> usize {
        self.blocks.len() + self.compressed.as_ref().map_or(0, |compressed| compressed.packed.len())
    }

    /// Whether the blocks are compressed to int8 ([`PagedKv::compress`]).
    pub fn is_compressed(&self) -> bool {
        self.compressed.is_some()
    }

    /// Compresses the blocks to int8 with a scale per block half ([`int8`]), four blocks into
    /// one, for a sequence that waits; returns the blocks freed. Nothing happens (0) when the
    /// cache is already compressed, empty, or shares a block with another table (a shared
    /// block would not be freed). The next write decompresses, as [`PagedKv::decompress`].
    pub fn compress(&mut self) -> Result<usize, KvError> {
        if self.compressed.is_some()
            || self.blocks.is_empty()
            || self.blocks.iter().any(|block| block.references() > 1)
        {
            return Ok(0);
        }
        let floats = self.pool.floats_per_block();
        let half = floats / 2;
        let words_per_block = floats.div_ceil(4);
        let before = self.blocks.len();
        let mut codes = alloc::vec![0i8; floats];
        let mut words = alloc::vec![0.0f32; words_per_block];
        let mut staged = Vec::with_capacity(floats);
        let mut compressed =
            Compressed { packed: Vec::new(), scales: Vec::with_capacity(before), count: before };
        // A packed block is taken once the blocks whose codes fill it are released, so this
        // needs no free block.
        for block in core::mem::take(&mut self.blocks) {
            compressed.scales.push(int8::compress_block(&block, half, &mut codes));
            int8::pack(&codes, &mut words);
            staged.extend_from_slice(&words);
            drop(block);
            if staged.len() + words_per_block > floats {
                compressed.packed.push(self.packed_block(&mut staged)?);
            }
        }
        if !staged.is_empty() {
            compressed.packed.push(self.packed_block(&mut staged)?);
        }
        let freed = before - compressed.packed.len();
        self.compressed = Some(compressed);
        Ok(freed)
    }

    /// A block holding `staged` (then emptied).
    fn packed_block(&self, staged: &mut Vec<f32>) -> Result<KvBlock<'pool, 'memory>, KvError> {
        let mut block = self.pool.alloc_for_overwrite()?;
        block.make_mut()?[..staged.len()].copy_from_slice(staged);
        staged.clear();
        Ok(block)
    }

    /// Restores compressed blocks to f32 (values within half an int8 step of what they were).
    /// On failure (no memory for the blocks) the cache stays compressed and intact.
    pub fn decompress(&mut self) -> Result<(), KvError> {
        let Some(compressed) = &self.compressed else { return Ok(()) };
        let floats = self.pool.floats_per_block();
        let words_per_block = floats.div_ceil(4);
        let per_packed = (floats / words_per_block).max(1);
        let mut codes = alloc::vec![0i8; floats];
        let mut blocks = Vec::with_capacity(compressed.count);
        for index in 0..compressed.count {
            let packed = &compressed.packed[index / per_packed];
            let start = index % per_packed * words_per_block;
            int8::unpack(&packed[start..start + words_per_block], &mut codes);
            let mut block = self.pool.alloc_for_overwrite()?;
            int8::decompress_block(&codes, floats / 2, compressed.scales[index], block.make_mut()?);
            blocks.push(block);
        }
        self.blocks = blocks;
        self.compressed = None;
        Ok(())
    }

    /// Blocks a sequence of `positions` positions holds (every layer).
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_tokens) * self.layers
    }

    /// Positions per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Empties this cache, then attaches the cached blocks of the longest cached prefix of
    /// `tokens` (prompt tokens of the model `model`, an identity the caller keeps unique per
    /// weights). Returns how many positions are filled, at most `tokens.len() - 1`: the caller
    /// computes the rest from there, and always the last prompt token, whose logits it needs
    /// (writing it into a shared block copies that block).
    pub fn with_prefix(&mut self, model: u64, tokens: &[u32]) -> usize {
        self.truncate(0);
        let usable = tokens.len().min(self.capacity);
        let mut parent = self.root_hash(model);
        let mut attached = 0;
        let mut inner = self.pool.inner.lock();
        for block_tokens in tokens[..usable].chunks_exact(self.block_tokens) {
            let hash = chain_hash(parent, block_tokens);
            let mut found = alloc::vec![NO_BLOCK; self.layers];
            for (layer, slot) in found.iter_mut().enumerate() {
                let key = CacheKey { hash, layer: layer as u32 };
                match inner.cache.entries.get(&key) {
                    Some(entry) if entry.parent == parent && entry.tokens == block_tokens => {
                        *slot = entry.block
                    }
                    _ => break,
                }
            }
            if found.contains(&NO_BLOCK) {
                break;
            }
            for &id in &found {
                inner.share(id);
                self.blocks.push(self.pool.handle(id, inner.blocks[id as usize].address));
            }
            attached += self.block_tokens;
            parent = hash;
        }
        let filled = attached.min(tokens.len().saturating_sub(1));
        inner.cache.statistics.queried_tokens += tokens.len() as u64;
        inner.cache.statistics.hit_tokens += filled as u64;
        self.filled = filled;
        filled
    }

    /// Publishes this sequence's full blocks in the prefix cache, where `tokens[i]` is the
    /// token whose rows were written at position `i` and `model` is as in
    /// [`PagedKv::with_prefix`]. Only blocks whose positions are all written are published;
    /// a token block already cached keeps its cached copy. Returns the blocks newly published.
    pub fn publish(&mut self, model: u64, tokens: &[u32]) -> usize {
        // Compressed blocks are not published: their values are no longer exact.
        let full =
            if self.compressed.is_some() { 0 } else { tokens.len().min(self.filled) / self.block_tokens };
        let mut parent = self.root_hash(model);
        let mut published = 0usize;
        let mut inner = self.pool.inner.lock();
        for (index, block_tokens) in tokens.chunks_exact(self.block_tokens).take(full).enumerate() {
            let hash = chain_hash(parent, block_tokens);
            for layer in 0..self.layers {
                let key = CacheKey { hash, layer: layer as u32 };
                let id = self.blocks[index * self.layers + layer].id;
                if inner.cache.entries.contains_key(&key) || inner.blocks[id as usize].published.is_some() {
                    continue;
                }
                inner
                    .cache
                    .entries
                    .insert(key, CacheEntry { block: id, parent, tokens: block_tokens.to_vec() });
                inner.blocks[id as usize].published = Some(key);
                published += 1;
            }
            parent = hash;
        }
        inner.cache.statistics.published_blocks += published as u64;
        published
    }

    /// A second sequence with the same contents, sharing every block (for parallel sampling
    /// from one prompt): each block's count goes up by one, and whichever sequence writes into
    /// a shared block first copies it.
    pub fn fork(&self) -> Self {
        Self {
            pool: self.pool,
            layers: self.layers,
            kv_dim: self.kv_dim,
            block_tokens: self.block_tokens,
            capacity: self.capacity,
            blocks: self.blocks.iter().map(KvBlock::share).collect(),
            filled: self.filled,
            compressed: self.compressed.as_ref().map(|compressed| Compressed {
                packed: compressed.packed.iter().map(KvBlock::share).collect(),
                scales: compressed.scales.clone(),
                count: compressed.count,
            }),
        }
    }

    /// The hash every chain starts from: the model's identity and the block shape.
    fn root_hash(&self, model: u64) -> u64 {
        [self.layers as u64, self.kv_dim as u64, self.block_tokens as u64]
            .into_iter()
            .fold(mix(0, model), mix)
    }

    fn locate(&self, layer: usize, position: usize) -> (usize, usize) {
        (position / self.block_tokens * self.layers + layer, position % self.block_tokens * self.kv_dim)
    }
}

impl Drop for PagedKv<'_, '_> {
    fn drop(&mut self) {
        self.truncate(0);
    }
}

/// One step of the 64-bit hash: mixes `word` into `state` (multiply, rotate, and the
/// SplitMix64 finaliser).
fn mix(state: u64, word: u64) -> u64 {
    let mut value =
        (state ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31) ^ state.rotate_left(17);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The hash of a token block: its parent's hash and its tokens.
fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    tokens.iter().fold(mix(parent, tokens.len() as u64), |state, &token| mix(state, u64::from(token)))
}

/// Blocks of `floats_per_block` values that a KV region of `region_bytes` yields: whole
/// chunks, each carved into whole blocks (a chunk's tail that no block fits is not counted).
pub fn blocks_in_region(region_bytes: u64, floats_per_block: usize) -> usize {
    let block_bytes = (floats_per_block as u64 * 4).max(1);
    ((region_bytes / CHUNK_BYTES) * (CHUNK_BYTES / block_bytes)) as usize
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
        crate::hil::check_write(self, layer, position, key, value)?;
        self.decompress()?;
        let needed = (position / self.block_tokens + 1) * self.layers;
        while self.blocks.len() < needed {
            self.blocks.push(self.pool.alloc_for_overwrite()?);
        }
        let (block, offset) = self.locate(layer, position);
        let values_offset = self.block_tokens * self.kv_dim + offset;
        let data = self.blocks[block].make_mut()?;
        data[offset..offset + self.kv_dim].copy_from_slice(key);
        data[values_offset..values_offset + self.kv_dim].copy_from_slice(value);
        if layer + 1 == self.layers && position == self.filled {
            self.filled += 1;
        }
        Ok(())
    }

    /// The keys from `position` to the end of its block.
    fn keys_from(&self, layer: usize, position: usize) -> &[f32] {
        let (block, offset) = self.locate(layer, position);
        &self.blocks[block][offset..self.block_tokens * self.kv_dim]
    }

    /// The values from `position` to the end of its block.
    fn values_from(&self, layer: usize, position: usize) -> &[f32] {
        let (block, offset) = self.locate(layer, position);
        let values = self.block_tokens * self.kv_dim;
        &self.blocks[block][values + offset..2 * values]
    }

    fn truncate(&mut self, length: usize) {
        let keep = length.div_ceil(self.block_tokens) * self.layers;
        if let Some(compressed) = &mut self.compressed {
            compressed.count = compressed.count.min(keep);
            if compressed.count == 0 {
                self.compressed = None;
            }
        }
        // Last block first, so a finished sequence's tail reaches the LRU list before its
        // prefix and is evicted first.
        while self.blocks.len() > keep {
            self.blocks.pop();
        }
        self.filled = self.filled.min(length);
    }
}
