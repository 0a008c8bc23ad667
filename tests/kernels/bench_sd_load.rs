//! QEMU benchmark: how fast a model file streams off a FAT32 card through the SDHCI driver,
//! with one block per command (CMD17) against Tessera's runs of contiguous blocks (CMD18).
//! Both read the same file through the same FAT32 reader into the same 1 MiB buffer; only the
//! block device differs. Times are the generic timer's, which under `-icount` is virtual time.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use bsp::{
    arch::aarch64::timer::GenericTimer,
    board::{
        rpi3::{mailbox::Mailbox, memory_map},
        sdhci::{Sdhci, Variant},
    },
};
use kernel::{
    fs::Volume,
    hil::{BLOCK_SIZE, BlockDevice, BlockError, Clock},
    mm::layout::RegionKind,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// The model the runner puts on the card.
const MODEL: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Bytes read per call of the file reader.
const CHUNK: usize = 1 << 20;

/// A block device that asks the card for one block per command.
struct OneBlockAtATime<D>(D);

impl<D: BlockDevice> BlockDevice for OneBlockAtATime<D> {
    fn block_count(&self) -> u64 {
        self.0.block_count()
    }

    fn read_blocks(&mut self, first: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        for (index, block) in buffer.chunks_mut(BLOCK_SIZE).enumerate() {
            self.0.read_blocks(first + index as u64, block)?;
        }
        Ok(())
    }

    fn write_blocks(&mut self, first: u64, buffer: &[u8]) -> Result<(), BlockError> {
        self.0.write_blocks(first, buffer)
    }
}

/// What one pass over the file measured.
struct Pass {
    bytes: u64,
    read_ns: u64,
    checksum: u64,
}

/// Reads the whole model through `volume`, timing only the reads.
fn read_model<D: BlockDevice>(volume: &mut Volume<D>, clock: &dyn Clock, buffer: &mut [u8]) -> Pass {
    let mut file =
        volume.open(MODEL).unwrap_or_else(|error| systests::fail(format_args!("{MODEL}: {error}")));
    let size = file.size();
    let (mut offset, mut read_ns, mut checksum) = (0u64, 0u64, 0xcbf2_9ce4_8422_2325u64);
    while offset < size {
        let started = clock.now_ns();
        let read = file
            .read_at(offset, buffer)
            .unwrap_or_else(|error| systests::fail(format_args!("read at {offset}: {error}")));
        read_ns += clock.now_ns() - started;
        ensure!(read > 0, "the file ended early at {offset}");
        // A cheap checksum of each chunk's words, so the two passes are seen to read the same.
        for word in buffer[..read].chunks(8).step_by(61) {
            checksum = (checksum ^ word[0] as u64).wrapping_mul(0x0100_0000_01b3);
        }
        offset += read as u64;
    }
    Pass { bytes: offset, read_ns, checksum }
}

fn main(info: &'static boot::BootInfo) -> ! {
    static CLOCK: GenericTimer = GenericTimer;
    let dma = info.plan.region(RegionKind::Dma);
    // SAFETY: the mailbox block; the DMA region's first page is free in this test.
    let mut mailbox = unsafe { Mailbox::new(memory_map::MAILBOX, dma.base as *mut u32) };
    let base_clock = mailbox.clock_rate(&CLOCK, Variant::Bcm2837Emmc.clock_id()).ok();
    boot::console::gpio().route_emmc();
    // SAFETY: the EMMC block is mapped as device memory and this is its only driver.
    let card = match unsafe { Sdhci::new(Variant::Bcm2837Emmc, &CLOCK, base_clock) } {
        Ok(card) => card,
        Err(error) => systests::fail(format_args!("card init failed: {error}")),
    };
    let mut buffer = vec![0u8; CHUNK];

    let mut volume =
        Volume::mount(card).unwrap_or_else(|error| systests::fail(format_args!("mount: {error}")));
    let before = volume.device().counters();
    let multi = read_model(&mut volume, &CLOCK, &mut buffer);
    let multi_commands = volume.device().counters().read_commands - before.read_commands;

    let card = volume.into_device();
    let before = card.counters();
    let mut volume = Volume::mount(OneBlockAtATime(card))
        .unwrap_or_else(|error| systests::fail(format_args!("mount: {error}")));
    let single = read_model(&mut volume, &CLOCK, &mut buffer);
    let single_commands = volume.device().0.counters().read_commands - before.read_commands;

    ensure!(
        multi.bytes == single.bytes && multi.checksum == single.checksum,
        "the two passes read different bytes"
    );
    let mib = multi.bytes as f64 / (1024.0 * 1024.0);
    let rate = |pass: &Pass| mib / (pass.read_ns as f64 / 1e9);
    boot::println!("| reads | read commands | MiB | read time (virtual) | MiB/s | vs CMD17 |");
    boot::println!("|---|---:|---:|---:|---:|---:|");
    for (name, pass, commands) in [
        ("one block per command (CMD17)", &single, single_commands),
        ("runs of blocks (CMD18)", &multi, multi_commands),
    ] {
        boot::println!(
            "| {name} | {commands} | {mib:.1} | {:.3} s | {:.2} | {:.2}x |",
            pass.read_ns as f64 / 1e9,
            rate(pass),
            rate(pass) / rate(&single)
        );
    }
    boot::println!("load throughput done");
    pass()
}
