//! QEMU benchmark (not a test; `make bench`): the BCM2835 DMA engine against the NEON
//! `tensor_copy`, 4 KiB to 4 MiB, under `-icount shift=0`. For each size it counts the
//! instructions the core retires (PMU event 0x08) and the virtual time that passes, for the
//! NEON copy and for a DMA copy from start to completion (of which: the cache maintenance
//! the driver does for cacheable buffers). Both copies are checked byte for byte.

#![no_std]
#![no_main]

extern crate alloc;

use bsp::{
    arch::aarch64::{cache, timer::GenericTimer},
    board::{
        rpi3::dma::{DEFAULT_CHANNEL, DmaEngine},
        soc::Soc,
    },
};
use kernel::{
    hil::{Clock, CopyEngine, CopyRequest, ticks_to_ns},
    mm::{copy::tensor_copy, layout::RegionKind, tensor::TensorKind},
    rand::SplitMix64,
};
use systests::{
    TEST_CONFIG, ensure, fail, pass,
    pmu::{count, start_counting},
};

boot::entry!(main, TEST_CONFIG);

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Runs per measurement; the smallest count is kept (under icount they repeat anyway).
const RUNS: usize = 3;

/// The fewest instructions and the least virtual time (ns) over [`RUNS`] runs of `operation`.
fn measure(clock: &GenericTimer, mut operation: impl FnMut()) -> (u32, u64) {
    let (mut instructions, mut ticks) = (u32::MAX, u64::MAX);
    for _ in 0..RUNS {
        let start = clock.ticks();
        instructions = instructions.min(count(&mut operation));
        ticks = ticks.min(clock.ticks() - start);
    }
    (instructions, ticks_to_ns(ticks, clock.frequency_hz()))
}

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(start_counting(), "the instructions-retired event is unsupported: run QEMU with -icount shift=0");
    let memory = boot::memory::backed_memory(info).unwrap_or_else(|error| fail(format_args!("{error}")));
    let clock = &GenericTimer;
    let line = info.cache_line;
    let control_block = memory
        .memory()
        .alloc(32, TensorKind::Device)
        .unwrap_or_else(|error| fail(format_args!("no control block: {error}")));
    let dma_region = info.plan.region(RegionKind::Dma);
    let uncached = dma_region.base..dma_region.end();
    // SAFETY: the chip's DMA block is the engine, mapped as device memory by boot; nothing else drives a
    // DMA channel; the control block is 32 bytes of the non-cacheable DMA region, owned here.
    let mut engine = unsafe {
        DmaEngine::new(
            Soc::current().map().dma,
            DEFAULT_CHANNEL,
            control_block.base(),
            clock,
            line as u64,
            uncached,
            info.plan.ram_map.low,
        )
    }
    .unwrap_or_else(|error| fail(format_args!("DMA setup: {error:?}")));

    boot::println!(
        "| size | NEON instructions | NEON virtual µs | DMA instructions | of which cache maintenance | DMA virtual µs | DMA/NEON instructions | DMA into the DMA region: instructions | ratio to NEON |"
    );
    boot::println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in [4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB] {
        let kind = if size > MIB { TensorKind::Weights } else { TensorKind::Activation };
        let alloc = || {
            memory
                .alloc(size as u64, kind)
                .unwrap_or_else(|error| fail(format_args!("{size} bytes: {error}")))
        };
        let (mut source, mut destination) = (alloc(), alloc());
        let mut random = SplitMix64::new(size as u64);
        for chunk in source.chunks_mut(8) {
            chunk.copy_from_slice(&random.next_u64().to_le_bytes());
        }

        let (neon_instructions, neon_ns) = measure(clock, || {
            tensor_copy(&mut destination, &source);
        });
        ensure!(destination[..] == source[..], "NEON copy of {size} bytes differs");
        destination.fill(0);

        let request = CopyRequest {
            source: source.as_ptr() as u64,
            destination: destination.as_mut_ptr() as u64,
            length: size as u64,
        };
        let (dma_instructions, dma_ns) = measure(clock, || {
            // SAFETY: both ranges are live pool buffers borrowed for this whole block, and
            // nothing touches them until `wait` returns.
            let started = unsafe { engine.start(request) };
            if let Err(error) = started.and_then(|()| engine.wait()) {
                fail(format_args!("DMA copy of {size} bytes: {error}"));
            }
        });
        ensure!(destination[..] == source[..], "DMA copy of {size} bytes differs");

        // The same maintenance the driver does around a copy, counted alone.
        let (maintenance, _) = measure(clock, || {
            cache::clean_to_coherency(request.source as usize, size, line);
            cache::clean_and_invalidate(request.destination as usize, size, line);
            // SAFETY: the destination is whole lines of a buffer owned here, whose contents
            // are not needed (it was just checked).
            unsafe { cache::invalidate(request.destination as usize, size, line) };
        });
        // Into the non-cacheable DMA region (2 MiB, so up to 1 MiB): only the source is
        // cleaned.
        let staging = (size <= MIB).then(|| {
            let mut staging = memory
                .alloc(size as u64, TensorKind::Device)
                .unwrap_or_else(|error| fail(format_args!("{size} bytes of DMA region: {error}")));
            let request = CopyRequest { destination: staging.as_mut_ptr() as u64, ..request };
            let (instructions, _) = measure(clock, || {
                // SAFETY: both ranges are live pool buffers borrowed here, untouched until
                // `wait` returns.
                let started = unsafe { engine.start(request) };
                if let Err(error) = started.and_then(|()| engine.wait()) {
                    fail(format_args!("DMA copy of {size} bytes into the DMA region: {error}"));
                }
            });
            ensure!(staging[..] == source[..], "DMA copy of {size} bytes into the DMA region differs");
            instructions
        });
        let (staging_instructions, staging_ratio) = match staging {
            Some(instructions) => (
                alloc::format!("{instructions}"),
                alloc::format!("{:.3}", f64::from(instructions) / f64::from(neon_instructions)),
            ),
            None => ("-".into(), "-".into()),
        };
        let label = if size >= MIB {
            alloc::format!("{} MiB", size / MIB)
        } else {
            alloc::format!("{} KiB", size / KIB)
        };
        boot::println!(
            "| {label} | {neon_instructions} | {:.1} | {dma_instructions} | {maintenance} | {:.1} | {:.3} | {staging_instructions} | {staging_ratio} |",
            neon_ns as f64 / 1000.0,
            dma_ns as f64 / 1000.0,
            f64::from(dma_instructions) / f64::from(neon_instructions)
        );
    }
    boot::println!("DMA vs NEON done");
    pass()
}
