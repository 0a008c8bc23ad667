//! QEMU test: the tensor pools run on the real typed regions with the MMU on, and all four
//! cores hammer the slab, buddy and KV pools at once. Every buffer is filled with a pattern
//! unique to its core and round and checked before it is freed (overlapping blocks would
//! corrupt each other's patterns); afterwards every pool's live bytes are back to baseline.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use boot::cpus::PiCpus;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::{
    hil::Cpus,
    mm::tensor::{Pool, TensorKind},
    rand::SplitMix64,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

const ROUNDS: usize = 200;

fn main(info: &'static boot::BootInfo) -> ! {
    let memory =
        boot::memory::backed_memory(info).unwrap_or_else(|error| systests::fail(format_args!("{error}")));
    let pools = [Pool::Slab, Pool::Activations, Pool::KvCache];
    let baseline: Vec<u64> =
        pools.iter().map(|&pool| memory.memory().statistics(pool).counters.live_bytes).collect();
    let cpus = PiCpus::new(4);
    let corrupted = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let operations = AtomicUsize::new(0);
    cpus.run_on_all(&|core| {
        let mut random = SplitMix64::new(core as u64 + 1);
        let mut live = Vec::new();
        for round in 0..ROUNDS {
            let (size, kind) = match random.below(3) {
                0 => (16 + random.below(4000), TensorKind::Small),
                1 => (4096 << random.below(6), TensorKind::Activation),
                _ => (4096 << random.below(8), TensorKind::KvCache),
            };
            match memory.alloc_on(core, size, kind) {
                Ok(mut buffer) => {
                    let tag = (core * 64 + round % 64) as u8;
                    buffer.fill(tag);
                    live.push((tag, buffer));
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            if live.len() > 24 || random.below(3) == 0 {
                let index = random.below(live.len() as u64 + 1) as usize;
                if index < live.len() {
                    let (tag, buffer) = live.swap_remove(index);
                    if buffer.iter().any(|&byte| byte != tag) {
                        corrupted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            operations.fetch_add(1, Ordering::Relaxed);
        }
        for (tag, buffer) in live {
            if buffer.iter().any(|&byte| byte != tag) {
                corrupted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    ensure!(operations.load(Ordering::Relaxed) == 4 * ROUNDS, "not every core ran its rounds");
    ensure!(
        corrupted.load(Ordering::Relaxed) == 0,
        "{} buffers were overwritten by another",
        corrupted.load(Ordering::Relaxed)
    );
    ensure!(failures.load(Ordering::Relaxed) == 0, "{} allocations failed", failures.load(Ordering::Relaxed));
    memory.memory().reclaim();
    for (pool, before) in pools.iter().zip(baseline) {
        let after = memory.memory().statistics(*pool).counters.live_bytes;
        ensure!(after == before, "{pool:?} holds {after} live bytes after the test, {before} before");
    }
    boot::print!("{}", memory.memory().report());
    boot::println!("4 cores x {ROUNDS} rounds: no overlap, accounting back to baseline");
    pass()
}
