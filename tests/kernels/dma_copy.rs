//! QEMU test: the BCM2835 DMA engine copies real data. Its control block comes from the DMA
//! pool (non-cacheable region); copies of 64 B to 4 MiB go straight through the engine, and
//! `stage_copy` splits unaligned copies between the engine and the core. Every byte is checked,
//! and so are the bytes around each destination. Refused requests come back as typed errors,
//! and a 4 MiB copy is staged while the core computes a checksum.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use bsp::{
    arch::aarch64::timer::GenericTimer,
    board::{
        rpi3::dma::{DEFAULT_CHANNEL, DmaEngine, DmaSetupError},
        soc::Soc,
    },
};
use kernel::{
    hil::{CopyEngine, CopyError, CopyRequest, CopyStatus},
    mm::{
        buffer::{BackedMemory, TensorBuffer},
        copy::{Fallback, OFFLOAD_MIN_BYTES, stage_copy},
        layout::RegionKind,
        tensor::{TensorHandle, TensorKind},
    },
    rand::SplitMix64,
};
use systests::{TEST_CONFIG, ensure, fail, pass};

boot::entry!(main, TEST_CONFIG);

const GUARD: u8 = 0xA5;
const MIB: u64 = 1 << 20;

fn fill_random(bytes: &mut [u8], seed: u64) {
    let mut random = SplitMix64::new(seed);
    for chunk in bytes.chunks_mut(8) {
        let word = random.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// A buffer from the weights pool, which places it at the arena's bottom, in the engine's
/// reach on every board.
fn alloc<'memory>(memory: &'memory BackedMemory, size: u64) -> TensorBuffer<'memory> {
    memory
        .alloc(size, TensorKind::Weights)
        .unwrap_or_else(|error| fail(format_args!("allocating {size} bytes: {error}")))
}

/// Copies `length` bytes from the start of `source` to the start of `destination` through the
/// engine alone, and returns the polls it took.
fn engine_copy(engine: &mut DmaEngine<'_>, destination: &mut [u8], source: &[u8], length: usize) -> u32 {
    let request = CopyRequest {
        source: source.as_ptr() as u64,
        destination: destination.as_mut_ptr() as u64,
        length: length as u64,
    };
    // SAFETY: both ranges lie inside live pool buffers (RAM) that this function borrows, so
    // nothing else reads or writes them until the copy is polled to completion below.
    if let Err(error) = unsafe { engine.start(request) } {
        fail(format_args!("a {length}-byte copy was refused: {error}"));
    }
    let mut polls = 0;
    loop {
        polls += 1;
        match engine.poll() {
            Ok(CopyStatus::Done) => return polls,
            Ok(CopyStatus::Busy) => ensure!(polls < 10_000_000, "the engine never finished"),
            Err(error) => fail(format_args!("a {length}-byte copy failed: {error}")),
        }
    }
}

fn main(info: &'static boot::BootInfo) -> ! {
    let memory = boot::memory::backed_memory(info).unwrap_or_else(|error| fail(format_args!("{error}")));
    let cache_line = info.cache_line as u64;
    let control_block = memory
        .memory()
        .alloc(32, TensorKind::Device)
        .unwrap_or_else(|error| fail(format_args!("no control block: {error}")));
    let mut engine = set_up_engine(info, &control_block, &GenericTimer);
    refuses_the_ram_above_the_seam(&mut engine, info, memory);
    engine_copies(&mut engine, memory, cache_line);
    refused_requests(&mut engine, memory);
    staged_copies(&mut engine, memory, cache_line);
    copy_beside_compute(&mut engine, memory);
    boot::println!("DMA copies verified");
    pass()
}

/// On a Pi 4 the arena runs on past the identity-mapped RAM into the RAM above 1 GiB, which
/// the engine cannot reach (and whose addresses are not its physical ones). The arena lends
/// the activations segments from its top, so an activation buffer lies up there: a copy out
/// of it must be refused as out of reach. (The other buffers are weights, which come from the
/// arena's bottom, in reach on both boards.) Nothing to check on a board without that part.
fn refuses_the_ram_above_the_seam(engine: &mut DmaEngine<'_>, info: &boot::BootInfo, memory: &BackedMemory) {
    let seam = info.plan.ram_map.low;
    if info.plan.ram_map.high == 0 {
        return;
    }
    let mut high = memory
        .alloc(8192, TensorKind::Activation)
        .unwrap_or_else(|error| fail(format_args!("allocating an activation buffer: {error}")));
    ensure!(high.as_ptr() as u64 >= seam, "the activation buffer at {:p} is below the seam", high.as_ptr());
    let (first, second) = high.split_at_mut(4096);
    let request =
        CopyRequest { source: first.as_ptr() as u64, destination: second.as_mut_ptr() as u64, length: 4096 };
    // SAFETY: both ranges lie inside `high`, borrowed here; the request is refused before the
    // engine starts.
    match unsafe { engine.start(request) } {
        Err(CopyError::OutOfReach { .. }) => {
            boot::println!("refused (above the seam at {seam:#x}): out of reach")
        }
        other => fail(format_args!("a copy above the seam was not refused as out of reach: {other:?}")),
    }
}

/// Checks that bad setups (a misaligned control block, a channel that does not exist) are
/// refused with typed errors, then sets the engine up on `control_block`, which must lie in
/// the DMA region, and checks that it starts idle.
fn set_up_engine<'clock>(
    info: &'static boot::BootInfo,
    control_block: &TensorHandle,
    clock: &'clock GenericTimer,
) -> DmaEngine<'clock> {
    let dma_region = info.plan.region(RegionKind::Dma);
    ensure!(dma_region.contains(control_block.base()), "control block outside the DMA region");
    let uncached = dma_region.base..dma_region.end();

    // Setup errors come back typed, before any register is touched.
    // SAFETY: both calls fail their argument checks before using the register block.
    let misaligned = unsafe {
        DmaEngine::new(
            Soc::current().map().dma,
            DEFAULT_CHANNEL,
            control_block.base() + 8,
            clock,
            64,
            0..0,
            1 << 30,
        )
    };
    ensure!(
        matches!(misaligned, Err(DmaSetupError::MisalignedControlBlock(_))),
        "misaligned control block accepted"
    );
    // SAFETY: as above.
    let no_channel = unsafe {
        DmaEngine::new(Soc::current().map().dma, 15, control_block.base(), clock, 64, 0..0, 1 << 30)
    };
    ensure!(matches!(no_channel, Err(DmaSetupError::NoSuchChannel(15))), "channel 15 accepted");

    // SAFETY: the chip's DMA block is the engine, mapped as device memory by boot; nothing else drives a
    // DMA channel; the control block is 32 bytes of the non-cacheable DMA region, owned by the
    // caller for as long as the engine lives.
    let mut engine = unsafe {
        DmaEngine::new(
            Soc::current().map().dma,
            DEFAULT_CHANNEL,
            control_block.base(),
            clock,
            info.cache_line as u64,
            uncached,
            info.plan.ram_map.low,
        )
    }
    .unwrap_or_else(|error| fail(format_args!("DMA setup: {error:?}")));
    ensure!(engine.poll() == Err(CopyError::Idle), "an idle engine reported a copy");
    engine
}

/// The engine alone, 64 B to 4 MiB, every byte checked and the guard line after it.
fn engine_copies(engine: &mut DmaEngine<'_>, memory: &BackedMemory, cache_line: u64) {
    let mut sizes = Vec::new();
    for (index, length) in [64usize, 4096, 65536, 1 << 20, 4 << 20].into_iter().enumerate() {
        let mut source = alloc(memory, length as u64);
        let mut destination = alloc(memory, length as u64 + cache_line);
        fill_random(&mut source, index as u64 + 1);
        destination.fill(GUARD);
        engine_copy(engine, &mut destination, &source, length);
        ensure!(destination[..length] == source[..], "{length}-byte engine copy differs");
        ensure!(destination[length..].iter().all(|&byte| byte == GUARD), "{length}-byte copy overran");
        sizes.push(length);
    }
    boot::println!("engine copies of {sizes:?} bytes verified byte for byte");
}

/// Refused requests: typed errors, and the engine stays usable (and refuses a second copy
/// while one is in flight).
fn refused_requests(engine: &mut DmaEngine<'_>, memory: &BackedMemory) {
    let mut buffer = alloc(memory, 8192);
    let base = buffer.as_mut_ptr() as u64;
    let refused = [
        (CopyRequest { source: base, destination: base + 4096, length: 100 }, "bad length"),
        (CopyRequest { source: base, destination: base + 1024, length: 4096 }, "overlap"),
        (CopyRequest { source: base, destination: base + 4096, length: 0 }, "empty"),
    ];
    for (request, what) in refused {
        // SAFETY: both ranges lie inside `buffer`, which nothing touches until the engine is
        // done (these requests are refused before the engine starts).
        match unsafe { engine.start(request) } {
            Ok(()) => fail(format_args!("{what} request accepted")),
            Err(error) => boot::println!("refused ({what}): {error}"),
        }
    }
    let (first, second) = buffer.split_at_mut(4096);
    first.fill(0x3C);
    let request =
        CopyRequest { source: first.as_ptr() as u64, destination: second.as_mut_ptr() as u64, length: 4096 };
    // SAFETY: `first` and `second` are disjoint halves of `buffer`, borrowed here, untouched
    // until the copy is polled to completion.
    ensure!(unsafe { engine.start(request) }.is_ok(), "start after refusals failed");
    // SAFETY: as above; the engine refuses a second copy while the first is in flight.
    let busy = unsafe { engine.start(request) };
    ensure!(busy == Err(CopyError::Busy), "a second copy was accepted while one was in flight: {busy:?}");
    ensure!(engine.wait().is_ok(), "waiting for the copy failed");
    ensure!(second.iter().all(|&byte| byte == 0x3C), "copy after refusals differs");
}

/// stage_copy across alignments: the engine takes the aligned middle when the source can
/// follow the destination's alignment, the core the rest; the data is exact either way. A
/// copy too short for the engine is the core's.
fn staged_copies(engine: &mut DmaEngine<'_>, memory: &BackedMemory, cache_line: u64) {
    let source_length = 3 * OFFLOAD_MIN_BYTES + 200;
    let mut source = alloc(memory, source_length as u64);
    fill_random(&mut source, 99);
    let (mut offloaded, mut on_core) = (0, 0);
    for destination_offset in [0usize, 1, 4, 60, 64] {
        for source_offset in [0usize, 1, 4, 60] {
            if staged_copy(engine, memory, cache_line, &source, destination_offset, source_offset) {
                offloaded += 1;
            } else {
                on_core += 1;
            }
        }
    }
    // SAFETY: the staged copy is finished below, never leaked.
    let short = unsafe { stage_copy(Some(engine), alloc(memory, 4096), 0, &source[..4096]) }.finish();
    ensure!(short.1.fallback == Some(Fallback::Short) && short.0[..] == source[..4096], "short copy");
    boot::println!(
        "staged copies: {offloaded} offloaded, {on_core} refused as misaligned and copied by the core"
    );
}

/// One staged copy out of `source` at `source_offset` to a fresh buffer at
/// `destination_offset`: the data exact, the guard bytes around it untouched, every byte
/// accounted for, and the engine used exactly when the source is aligned for it. Returns
/// whether the engine took part.
fn staged_copy(
    engine: &mut DmaEngine<'_>,
    memory: &BackedMemory,
    cache_line: u64,
    source: &[u8],
    destination_offset: usize,
    source_offset: usize,
) -> bool {
    let length = 2 * OFFLOAD_MIN_BYTES + 3 * source_offset + destination_offset + 13;
    let mut destination = alloc(memory, (length + destination_offset + 128) as u64);
    destination.fill(GUARD);
    let staged =
        // SAFETY: the staged copy is finished below, never leaked.
        unsafe { stage_copy(Some(engine), destination, destination_offset, &source[source_offset..][..length]) };
    let (destination, report) = staged.finish();
    let copied = &destination[destination_offset..destination_offset + length];
    ensure!(
        copied == &source[source_offset..source_offset + length],
        "staged copy ({destination_offset}, {source_offset}) differs"
    );
    ensure!(
        destination[..destination_offset].iter().all(|&byte| byte == GUARD)
            && destination[destination_offset + length..].iter().all(|&byte| byte == GUARD),
        "staged copy ({destination_offset}, {source_offset}) wrote outside its range"
    );
    ensure!(report.engine_bytes + report.cpu_bytes == length, "bytes unaccounted: {report:?}");
    // The engine's part is usable exactly when the source is 4-byte aligned at the
    // first whole destination line.
    let head = (cache_line as usize
        - (destination.as_ptr() as usize + destination_offset) % cache_line as usize)
        % cache_line as usize;
    let source_aligned = (source.as_ptr() as usize + source_offset + head).is_multiple_of(4);
    if source_aligned {
        ensure!(report.engine_bytes > 0 && report.fallback.is_none(), "not offloaded: {report:?}");
    } else {
        ensure!(
            matches!(report.fallback, Some(Fallback::Refused(CopyError::Misaligned { which: "source", .. }))),
            "misaligned source not refused: {report:?}"
        );
    }
    source_aligned
}

/// Overlap: stage 4 MiB of "weights" and compute a checksum of other data meanwhile; both
/// come out exact.
fn copy_beside_compute(engine: &mut DmaEngine<'_>, memory: &BackedMemory) {
    let mut weights = alloc(memory, 4 * MIB);
    fill_random(&mut weights, 7);
    let mut activations = alloc(memory, MIB);
    fill_random(&mut activations, 8);
    // SAFETY: the staged copy is finished below, never leaked.
    let mut staged = unsafe { stage_copy(Some(engine), alloc(memory, 4 * MIB), 0, &weights) };
    let mut checksum = 0u64;
    let mut finished_during_compute = false;
    for (round, chunk) in activations.chunks(4096).enumerate() {
        checksum = chunk.iter().fold(checksum, |sum, &byte| sum.rotate_left(5) ^ u64::from(byte));
        if round % 32 == 0 && !finished_during_compute {
            finished_during_compute = staged.is_finished();
        }
    }
    let (staged_weights, report) = staged.finish();
    ensure!(staged_weights[..] == weights[..], "staged weights differ");
    ensure!(report.engine_bytes == 4 * MIB as usize && report.cpu_bytes == 0, "weights: {report:?}");
    let expected = activations
        .chunks(4096)
        .fold(0u64, |sum, chunk| chunk.iter().fold(sum, |sum, &byte| sum.rotate_left(5) ^ u64::from(byte)));
    ensure!(checksum == expected, "the compute beside the copy went wrong");
    weights.fill(0);
    activations.fill(0);
    boot::println!(
        "4 MiB staged by DMA while the core computed (engine done {} the compute ended)",
        if finished_during_compute { "before" } else { "after" }
    );
}
