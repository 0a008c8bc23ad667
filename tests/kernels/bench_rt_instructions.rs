//! QEMU benchmark (not a test; `make bench`): instructions per RT-pool allocation and free,
//! counted with the PMU's instructions-retired event under `-icount shift=0`, for Tessera's
//! TLSF pool and rlsf side by side on the same protocol-like trace, across pool sizes.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::{alloc::Layout, cell::RefCell, hint::black_box, mem::MaybeUninit, ptr::NonNull};
use kernel::{
    mm::{layout::RegionKind, rt::RtPool},
    rand::SplitMix64,
};
use systests::{
    TEST_CONFIG, ensure, pass,
    pmu::{count, start_counting},
};

boot::entry!(main, TEST_CONFIG);

type Rlsf = rlsf::Tlsf<'static, u32, u16, 28, 16>;

/// Operations in the trace.
const OPERATIONS: usize = 4000;

struct Counts {
    alloc: Vec<u32>,
    free: Vec<u32>,
}

fn quantiles(values: &mut [u32]) -> (u32, u32, u32) {
    values.sort_unstable();
    let at = |fraction: f64| values[((values.len() - 1) as f64 * fraction) as usize];
    (at(0.5), at(0.99), values[values.len() - 1])
}

/// Replays the trace: sizes of 64 B to 8 KiB, about 64 buffers live.
fn replay(mut alloc: impl FnMut(usize) -> Option<u64>, mut free: impl FnMut(u64, usize)) -> Counts {
    let mut random = SplitMix64::new(7);
    let mut live: Vec<(u64, usize)> = Vec::new();
    let mut counts = Counts { alloc: Vec::new(), free: Vec::new() };
    for _ in 0..OPERATIONS {
        if live.len() < 32 || (live.len() < 96 && random.below(2) == 0) {
            // `black_box` on both sides of the counter read: the size is computed before
            // counting starts, and the allocator cannot start its own work on it (its class
            // mapping, say) before then.
            let size = black_box(64usize << random.below(8));
            let mut result = None;
            counts.alloc.push(count(|| result = alloc(black_box(size))));
            if let Some(address) = result {
                live.push((address, size));
            }
        } else {
            let (address, size) = black_box(live.swap_remove(random.below(live.len() as u64) as usize));
            counts.free.push(count(|| free(black_box(address), size)));
        }
    }
    counts
}

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(start_counting(), "the instructions-retired event is unsupported: run QEMU with -icount shift=0");
    let region = info.plan.region(RegionKind::Protocol);
    boot::println!(
        "| pool size | allocator | alloc p50 | alloc p99 | alloc max | free p50 | free p99 | free max |"
    );
    boot::println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for pool_mib in [1u64, 4, 16, 64] {
        let size = pool_mib << 20;
        let granule = RtPool::granule_for(size, 65536, 64);
        let tessera = RefCell::new(RtPool::new("protocol", region.base, size, granule).expect("RT pool"));
        let mut counts = replay(
            |size| tessera.borrow_mut().alloc(size as u64, 64).ok(),
            |address, _| {
                let _ = tessera.borrow_mut().free(address);
            },
        );
        let (a50, a99, amax) = quantiles(&mut counts.alloc);
        let (f50, f99, fmax) = quantiles(&mut counts.free);
        boot::println!("| {pool_mib} MiB | tessera RT | {a50} | {a99} | {amax} | {f50} | {f99} | {fmax} |");

        let rlsf = RefCell::new(Rlsf::new());
        // SAFETY: the protocol region is mapped RAM that nothing else uses in this benchmark,
        // and the Tessera pool above is done with it.
        let block: &'static mut [MaybeUninit<u8>] =
            unsafe { core::slice::from_raw_parts_mut(region.base as *mut MaybeUninit<u8>, size as usize) };
        rlsf.borrow_mut().insert_free_block(block);
        let mut counts = replay(
            |size| {
                rlsf.borrow_mut()
                    .allocate(Layout::from_size_align(size, 64).ok()?)
                    .map(|pointer| pointer.as_ptr() as u64)
            },
            |address, _| {
                // SAFETY: `address` came from this allocator with alignment 64 and is freed once.
                unsafe {
                    rlsf.borrow_mut().deallocate(NonNull::new(address as *mut u8).expect("non-null"), 64)
                }
            },
        );
        let (a50, a99, amax) = quantiles(&mut counts.alloc);
        let (f50, f99, fmax) = quantiles(&mut counts.free);
        boot::println!("| {pool_mib} MiB | rlsf | {a50} | {a99} | {amax} | {f50} | {f99} | {fmax} |");
    }
    boot::println!("instruction counts done");
    pass()
}
