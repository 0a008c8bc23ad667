//! QEMU benchmark: how fast a model file streams off a FAT32 card through the SDHCI driver,
//! with one block per command (CMD17) against Tessera's runs of contiguous blocks (CMD18), both
//! through Tessera's FAT32 reader, and through embedded-sdmmc 0.10 (the baseline: its volume
//! manager reads one block per call through a one-block cache). Every pass reads the same first
//! 32 MiB of the file into the same 1 MiB buffer. Times are the generic timer's, which under
//! `-icount` is virtual time.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use boot::storage::CLOCK;
use core::{cell::RefCell, fmt, ops::ControlFlow};
use embedded_sdmmc::{
    Block, BlockCount, BlockIdx, LfnBuffer, Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager,
};
use kernel::{
    fs::Volume,
    hil::{BLOCK_SIZE, BlockDevice, BlockError, Clock},
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// The model the runner puts on the card.
const MODEL: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its long name, as embedded-sdmmc's directory walk reports it.
const MODEL_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Bytes read per call of the file reader.
const CHUNK: usize = 1 << 20;

/// Bytes each pass reads: the model's first 32 MiB (the rates are steady long before; three
/// passes over the whole 93.8 MiB took three minutes of `make bench`).
const PASS_BYTES: u64 = 32 << 20;

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

/// A Tessera block device as embedded-sdmmc's `BlockDevice` (which reads through `&self`).
struct SdmmcCard<D>(RefCell<D>);

/// A card error, as embedded-sdmmc wants it (an error type of its own).
#[derive(Debug)]
struct CardError(BlockError);

impl fmt::Display for CardError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl core::error::Error for CardError {}

impl<D: BlockDevice> embedded_sdmmc::BlockDevice for SdmmcCard<D> {
    type Error = CardError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), CardError> {
        let mut device = self.0.borrow_mut();
        for (index, block) in blocks.iter_mut().enumerate() {
            device.read_blocks(u64::from(start.0) + index as u64, &mut block.contents).map_err(CardError)?;
        }
        Ok(())
    }

    /// The benchmark opens the file read-only, so the crate never writes; refuse if it tried.
    fn write(&self, _blocks: &[Block], _start: BlockIdx) -> Result<(), CardError> {
        Err(CardError(BlockError::Refused(0)))
    }

    fn num_blocks(&self) -> Result<BlockCount, CardError> {
        Ok(BlockCount(self.0.borrow().block_count().min(u64::from(u32::MAX)) as u32))
    }
}

/// Files get no timestamps: the benchmark only reads.
struct NoClock;

impl TimeSource for NoClock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 0,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
        }
    }
}

/// What one pass over the file measured.
struct Pass {
    bytes: u64,
    read_ns: u64,
    checksum: u64,
}

/// Reads the model's first [`PASS_BYTES`] through `volume`, timing only the reads.
fn read_model<D: BlockDevice>(volume: &mut Volume<D>, clock: &dyn Clock, buffer: &mut [u8]) -> Pass {
    let mut file =
        volume.open(MODEL).unwrap_or_else(|error| systests::fail(format_args!("{MODEL}: {error}")));
    let size = file.size().min(PASS_BYTES);
    let (mut offset, mut read_ns, mut checksum) = (0u64, 0u64, 0xcbf2_9ce4_8422_2325u64);
    while offset < size {
        let started = clock.now_ns();
        let read = file
            .read_at(offset, buffer)
            .unwrap_or_else(|error| systests::fail(format_args!("read at {offset}: {error}")));
        read_ns += clock.now_ns() - started;
        ensure!(read > 0, "the file ended early at {offset}");
        checksum = chunk_checksum(checksum, &buffer[..read]);
        offset += read as u64;
    }
    Pass { bytes: offset, read_ns, checksum }
}

/// Reads the model's first [`PASS_BYTES`] through embedded-sdmmc: the long name is found by
/// walking `/models` (the crate opens files by 8.3 name only), then the file is read as
/// Tessera's reader reads it.
fn read_model_sdmmc<D: BlockDevice>(card: D, clock: &dyn Clock, buffer: &mut [u8]) -> (Pass, D) {
    let fail = |what: &str, error: &dyn fmt::Debug| -> ! {
        systests::fail(format_args!("embedded-sdmmc {what}: {error:?}"))
    };
    let manager: VolumeManager<SdmmcCard<D>, NoClock> =
        VolumeManager::new(SdmmcCard(RefCell::new(card)), NoClock);
    let volume = manager.open_raw_volume(VolumeIdx(0)).unwrap_or_else(|error| fail("volume", &error));
    let root = manager.open_root_dir(volume).unwrap_or_else(|error| fail("root", &error));
    let models = manager.open_dir(root, "MODELS").unwrap_or_else(|error| fail("/models", &error));
    let mut names = [0u8; 256];
    let mut long_name = LfnBuffer::new(&mut names);
    let mut short = None;
    manager
        .iterate_dir_lfn(models, &mut long_name, |entry, name| {
            if name == Some(MODEL_NAME) {
                short = Some(entry.name);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|error| fail("directory walk", &error));
    let Some(short) = short else { fail("directory walk", &MODEL_NAME) };
    let file =
        manager.open_file_in_dir(models, short, Mode::ReadOnly).unwrap_or_else(|error| fail("open", &error));
    let (mut bytes, mut read_ns, mut checksum) = (0u64, 0u64, 0xcbf2_9ce4_8422_2325u64);
    while bytes < PASS_BYTES {
        let want = (PASS_BYTES - bytes).min(buffer.len() as u64) as usize;
        let started = clock.now_ns();
        let read = manager.read(file, &mut buffer[..want]).unwrap_or_else(|error| fail("read", &error));
        read_ns += clock.now_ns() - started;
        if read == 0 {
            break;
        }
        checksum = chunk_checksum(checksum, &buffer[..read]);
        bytes += read as u64;
    }
    manager.close_file(file).unwrap_or_else(|error| fail("close", &error));
    manager.close_dir(models).unwrap_or_else(|error| fail("close", &error));
    manager.close_dir(root).unwrap_or_else(|error| fail("close", &error));
    // Not `close_volume`: it rewrites the FSInfo sector, and this card stays read-only.
    let (device, _) = manager.free();
    (Pass { bytes, read_ns, checksum }, device.0.into_inner())
}

/// Folds a sample of `chunk`'s words into `checksum`, so passes are seen to read the same.
fn chunk_checksum(mut checksum: u64, chunk: &[u8]) -> u64 {
    for word in chunk.chunks(8).step_by(61) {
        checksum = (checksum ^ word[0] as u64).wrapping_mul(0x0100_0000_01b3);
    }
    checksum
}

fn main(info: &'static boot::BootInfo) -> ! {
    let memory = boot::memory::backed_memory(info)
        .unwrap_or_else(|error| systests::fail(format_args!("tensor memory: {error}")));
    let card = boot::storage::open_card(memory)
        .unwrap_or_else(|error| systests::fail(format_args!("card init failed: {error}")));
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

    let card = volume.into_device().0;
    let before = card.counters();
    let (baseline, card) = read_model_sdmmc(card, &CLOCK, &mut buffer);
    let baseline_commands = card.counters().read_commands - before.read_commands;

    ensure!(
        multi.bytes == single.bytes && multi.checksum == single.checksum,
        "the two passes read different bytes"
    );
    ensure!(
        baseline.bytes == multi.bytes && baseline.checksum == multi.checksum,
        "embedded-sdmmc read different bytes"
    );
    let mib = multi.bytes as f64 / (1024.0 * 1024.0);
    let rate = |pass: &Pass| mib / (pass.read_ns as f64 / 1e9);
    boot::println!("| reader | read commands | MiB | read time (virtual) | MiB/s | vs embedded-sdmmc |");
    boot::println!("|---|---:|---:|---:|---:|---:|");
    for (name, pass, commands) in [
        ("embedded-sdmmc 0.10 (baseline)", &baseline, baseline_commands),
        ("Tessera, one block per command (CMD17)", &single, single_commands),
        ("Tessera, runs of blocks (CMD18)", &multi, multi_commands),
    ] {
        boot::println!(
            "| {name} | {commands} | {mib:.1} | {:.3} s | {:.2} | {:.2}x |",
            pass.read_ns as f64 / 1e9,
            rate(pass),
            rate(pass) / rate(&baseline)
        );
    }
    boot::println!("load throughput done");
    pass()
}
