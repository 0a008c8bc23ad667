//! The tensor memory manager over the regions boot mapped, and the one place where a pool's
//! address becomes a Rust slice.

use kernel::{
    boot_info::BootInfo,
    mm::{
        MemError,
        tensor::{TensorHandle, TensorMemory, TensorMemoryConfig},
    },
};

static TENSOR_MEMORY: spin::Once<TensorMemory> = spin::Once::new();

/// Builds the pools over `info`'s plan (first call), and returns them.
pub fn tensor_memory(info: &BootInfo) -> Result<&'static TensorMemory, MemError> {
    if let Some(memory) = TENSOR_MEMORY.get() {
        return Ok(memory);
    }
    let config = TensorMemoryConfig {
        cache_line: info.cache_line as u64,
        cores: info.cores_online,
        ..Default::default()
    };
    let memory = TensorMemory::new(&info.plan, config)?;
    Ok(TENSOR_MEMORY.call_once(|| memory))
}

/// The bytes of a live allocation, for as long as the program runs.
///
/// # Safety
/// `handle` must come from [`tensor_memory`]'s pools (so it lies in mapped RAM), must never be
/// released while the slice is in use, and no other slice over it may exist.
pub unsafe fn bytes_mut(handle: &TensorHandle) -> &'static mut [u8] {
    // SAFETY: the caller guarantees the range is mapped, owned and unaliased.
    unsafe { core::slice::from_raw_parts_mut(handle.base() as *mut u8, handle.size() as usize) }
}
