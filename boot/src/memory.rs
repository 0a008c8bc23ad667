//! The tensor memory manager over the regions boot mapped: the pools, backed by the real RAM
//! of each region.

use kernel::{
    boot_info::BootInfo,
    mm::{
        MemError,
        buffer::BackedMemory,
        tensor::{TensorMemory, TensorMemoryConfig},
    },
};

static BACKED_MEMORY: spin::Once<BackedMemory> = spin::Once::new();

/// Builds the pools over `info`'s plan (first call), and returns them.
pub fn backed_memory(info: &BootInfo) -> Result<&'static BackedMemory, MemError> {
    if let Some(memory) = BACKED_MEMORY.get() {
        return Ok(memory);
    }
    let config = TensorMemoryConfig {
        cache_line: info.cache_line as u64,
        topology: info.topology,
        ..Default::default()
    };
    let memory = TensorMemory::new(&info.plan, config)?;
    // SAFETY: boot mapped every region of the plan as read-write RAM for the rest of the run,
    // and nothing but these pools uses the tensor, protocol and DMA regions.
    let memory = BACKED_MEMORY.call_once(|| unsafe { BackedMemory::new(memory) });
    // Allocation scopes on the serving path now take from these pools.
    crate::heap::attach_pools(memory);
    Ok(memory)
}
