//! Backed tensor memory: the pools over regions that are real, mapped RAM, handing out owning
//! buffers that read and write that RAM and return it to their pool when dropped.
//!
//! This, [`copy`](super::copy), [`handout`](super::handout) and the KV block handles of
//! [`kv`](super::kv) are the only places in `mm` that touch the memory itself; every allocator
//! stays a pure address-range manager.

#![allow(unsafe_code)]

use super::{
    MemError,
    chunk::Placement,
    tensor::{TensorHandle, TensorKind, TensorMemory},
};
use crate::hil::{Clock, Deadline, board_time};
use core::{
    mem::ManuallyDrop,
    ops::{Deref, DerefMut},
};

/// A [`TensorMemory`] whose regions are known to be real memory.
#[derive(Debug)]
pub struct BackedMemory {
    memory: TensorMemory,
}

impl BackedMemory {
    /// Wraps `memory`.
    ///
    /// # Safety
    /// Every region of the plan `memory` was built from must be RAM that is mapped read-write
    /// for as long as this value lives, and used by nothing but these pools.
    pub unsafe fn new(memory: TensorMemory) -> Self {
        Self { memory }
    }

    /// The pools (statistics, reports, raw handles).
    pub fn memory(&self) -> &TensorMemory {
        &self.memory
    }

    /// Allocates `size` bytes of `kind` as an owning, zero-filled buffer.
    pub fn alloc(&self, size: u64, kind: TensorKind) -> Result<TensorBuffer<'_>, MemError> {
        self.alloc_on(0, size, kind)
    }

    /// Like [`BackedMemory::alloc`], on core `core` (whose slab cache serves small requests
    /// and takes the buffer back when it is dropped).
    pub fn alloc_on(&self, core: usize, size: u64, kind: TensorKind) -> Result<TensorBuffer<'_>, MemError> {
        self.alloc_placed(core, size, kind, Placement::BestFit)
    }

    /// Like [`BackedMemory::alloc_on`], with weights placed as `placement` says (see
    /// [`TensorMemory::alloc_placed`]). Timed into the pool's latency histogram once boot has
    /// installed the board's clock.
    pub fn alloc_placed(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        placement: Placement,
    ) -> Result<TensorBuffer<'_>, MemError> {
        let mut buffer = self.alloc_uninit(core, size, kind, placement)?;
        buffer.fill(0);
        Ok(buffer)
    }

    /// Like [`BackedMemory::alloc_placed`], without the zero-fill: the buffer holds whatever
    /// its memory held last (an earlier owner's bytes). For a buffer its owner writes in full
    /// before it reads any of it, such as a model file streamed into its weights buffer: a
    /// 93 MiB model would otherwise be written twice, the first time in one uninterruptible
    /// fill.
    ///
    /// Why this is sound behind a safe API: a buffer's bytes are reached only through the
    /// address its pool handed out, and [`BackedMemory::new`]'s contract makes every such byte
    /// plain, mapped RAM that holds some value whatever happened there before (no Rust
    /// allocation the compiler can see spans it). Skipping the fill can therefore show stale
    /// bytes, never undefined ones. The callers keep the rule anyway: the staged model load
    /// writes every byte of the file before it validates or reads any, and the model's table
    /// builders write every byte of their tables before a view reads them.
    pub fn alloc_uninit(
        &self,
        core: usize,
        size: u64,
        kind: TensorKind,
        placement: Placement,
    ) -> Result<TensorBuffer<'_>, MemError> {
        let handle = match board_time() {
            Some(board) => self.memory.alloc_timed(core, size, kind, placement, board.clock)?,
            None => self.memory.alloc_placed(core, size, kind, placement)?,
        };
        Ok(TensorBuffer { owner: self, core, handle: ManuallyDrop::new(handle) })
    }
}

impl BackedMemory {
    /// A protocol-pool buffer of `size` bytes, only if the RT pool hands it out by `deadline`
    /// (see [`TensorMemory::alloc_protocol_within`]). Not cleared: the caller writes it.
    pub fn protocol_within(
        &self,
        size: u64,
        deadline: Deadline,
        clock: &dyn Clock,
    ) -> Result<TensorBuffer<'_>, MemError> {
        let handle = self.memory.alloc_protocol_within(size, deadline, clock)?;
        Ok(TensorBuffer { owner: self, core: 0, handle: ManuallyDrop::new(handle) })
    }
}

/// An allocation from a [`BackedMemory`] pool, usable as bytes (and, being cache-line
/// aligned, as `f32`s). Dropping it releases the allocation.
#[derive(Debug)]
pub struct TensorBuffer<'memory> {
    owner: &'memory BackedMemory,
    core: usize,
    handle: ManuallyDrop<TensorHandle>,
}

impl TensorBuffer<'_> {
    /// The allocation's handle (address, size, pool).
    pub fn handle(&self) -> &TensorHandle {
        &self.handle
    }

    /// The buffer as `f32`s (its length rounded down to whole values).
    pub fn as_f32(&self) -> &[f32] {
        // SAFETY: allocations are aligned to at least a cache line, which `TensorMemory::new`
        // requires to be at least 4 bytes; every bit
        // pattern is a valid f32, and the slice covers only this allocation.
        unsafe {
            core::slice::from_raw_parts(self.handle.base() as *const f32, self.handle.size() as usize / 4)
        }
    }

    /// The buffer as mutable `f32`s.
    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_f32`, and `&mut self` makes the borrow unique.
        unsafe {
            core::slice::from_raw_parts_mut(self.handle.base() as *mut f32, self.handle.size() as usize / 4)
        }
    }
}

impl Deref for TensorBuffer<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `BackedMemory::new` guarantees the pool's addresses are mapped RAM; the handle
        // is live until drop and owned by this buffer alone.
        unsafe { core::slice::from_raw_parts(self.handle.base() as *const u8, self.handle.size() as usize) }
    }
}

impl DerefMut for TensorBuffer<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(self.handle.base() as *mut u8, self.handle.size() as usize) }
    }
}

impl Drop for TensorBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle is taken exactly once, here.
        let handle = unsafe { ManuallyDrop::take(&mut self.handle) };
        // A release can only fail for a handle the pools never issued; this one they did.
        let _ = match board_time() {
            Some(board) => self.owner.memory.release_timed(self.core, handle, board.clock),
            None => self.owner.memory.release_on(self.core, handle),
        };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mm::{
        layout::{BLOCK, Budget, MIB, MemoryPlan, RamMap, Region, RegionKind},
        tensor::{Pool, TensorMemoryConfig},
    };
    use std::alloc::{Layout, alloc_zeroed};

    /// Pools over a real, leaked host arena of `size` bytes (2 MiB aligned), split like a
    /// board's plan. For tests that need memory behind the addresses.
    pub(crate) fn host_backed_memory(size: u64) -> &'static BackedMemory {
        let layout = Layout::from_size_align(size as usize, BLOCK as usize).unwrap();
        // SAFETY: a non-zero size and a power-of-two alignment.
        let base = unsafe { alloc_zeroed(layout) } as u64;
        assert_ne!(base, 0);
        let eighth = size / 8 / BLOCK * BLOCK;
        let kinds = [
            (RegionKind::Kernel, 0),
            (RegionKind::Dma, BLOCK),
            (RegionKind::Heap, 0),
            (RegionKind::Protocol, eighth),
            (RegionKind::Small, eighth),
            (RegionKind::Arena, size - BLOCK - 2 * eighth),
        ];
        let mut cursor = base;
        let regions = kinds.map(|(kind, bytes)| {
            let region = Region { kind, base: cursor, size: bytes };
            cursor += bytes;
            region
        });
        let plan = MemoryPlan {
            regions,
            ram_map: RamMap::contiguous(size),
            budget: Budget { llm: size - BLOCK - 2 * eighth, protocol: eighth, system: BLOCK + eighth },
            seed: 0,
        };
        let memory = TensorMemory::new(&plan, TensorMemoryConfig::default()).unwrap();
        // SAFETY: the arena is leaked (lives forever), zeroed, and used by nothing else.
        Box::leak(Box::new(unsafe { BackedMemory::new(memory) }))
    }

    #[test]
    fn buffers_hold_data_and_return_to_their_pools() {
        let backed = host_backed_memory(32 * MIB);
        let baseline = backed.memory().statistics(Pool::KvCache).counters.live_bytes;
        {
            let mut block = backed.alloc(64 * 1024, TensorKind::KvCache).unwrap();
            assert!(block.iter().all(|&byte| byte == 0), "buffers start zeroed");
            block.as_f32_mut()[10] = 2.5;
            assert_eq!(block.as_f32()[10], 2.5);
            assert_eq!(block.len(), 64 * 1024);
            let mut weights = backed.alloc(3 * MIB, TensorKind::Weights).unwrap();
            weights[MIB as usize] = 7;
            assert_eq!(weights[MIB as usize], 7);
            assert!(backed.memory().statistics(Pool::KvCache).counters.live_bytes > baseline);
        }
        assert_eq!(
            backed.memory().statistics(Pool::KvCache).counters.live_bytes,
            baseline,
            "dropped buffers are freed"
        );
    }
}
