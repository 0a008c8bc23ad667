//! QEMU test: the SDHCI driver brings up the card (SDSC on small images, SDHC on the 4 GiB
//! one), reads single and multiple blocks at both ends of the card matching the pattern the
//! runner wrote, writes and reads back, and refuses out-of-range requests.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use kernel::hil::{BLOCK_SIZE, BlockDevice, BlockError, pattern_block};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

/// Blocks the runner filled with the pattern at each end of the image.
const PATTERN_BLOCKS: u64 = 32 * 1024;

fn check_pattern(first: u64, data: &[u8]) {
    let mut expected = [0u8; BLOCK_SIZE];
    for (index, block) in data.chunks(BLOCK_SIZE).enumerate() {
        pattern_block(first + index as u64, &mut expected);
        ensure!(block == expected, "block {} does not hold its pattern", first + index as u64);
    }
}

fn main(info: &'static boot::BootInfo) -> ! {
    let memory = boot::memory::backed_memory(info)
        .unwrap_or_else(|error| systests::fail(format_args!("tensor memory: {error}")));
    let mut card = boot::storage::open_card(memory)
        .unwrap_or_else(|error| systests::fail(format_args!("card init failed: {error}")));
    let card_info = card.card();
    let blocks = card.block_count();
    boot::println!(
        "card: {} with {} blocks ({} MiB), {}-bit bus, clock {} Hz",
        if card_info.high_capacity { "SDHC" } else { "SDSC" },
        blocks,
        blocks / 2048,
        if card_info.four_bit_bus { 4 } else { 1 },
        card_info.clock_hz
    );

    let mut single = [0u8; BLOCK_SIZE];
    card.read_blocks(0, &mut single)
        .unwrap_or_else(|error| systests::fail(format_args!("read block 0: {error}")));
    check_pattern(0, &single);

    let before = card.counters();
    let mut many = vec![0u8; 256 * BLOCK_SIZE];
    card.read_blocks(1000, &mut many)
        .unwrap_or_else(|error| systests::fail(format_args!("multi-block read: {error}")));
    check_pattern(1000, &many);
    let after = card.counters();
    ensure!(
        after.read_commands - before.read_commands == 1,
        "256 blocks took {} commands",
        after.read_commands - before.read_commands
    );

    let tail_start = blocks - PATTERN_BLOCKS;
    card.read_blocks(blocks - 64, &mut many[..64 * BLOCK_SIZE])
        .unwrap_or_else(|error| systests::fail(format_args!("read at the end of the card: {error}")));
    check_pattern(blocks - 64, &many[..64 * BLOCK_SIZE]);
    ensure!(tail_start > PATTERN_BLOCKS, "image too small for the test");

    // Write 16 blocks (multi) and 1 block (single) with new content, then read them back.
    let target = PATTERN_BLOCKS / 2;
    let written: alloc::vec::Vec<u8> = (0..17 * BLOCK_SIZE).map(|index| (index % 253) as u8 ^ 0x5A).collect();
    card.write_blocks(target, &written[..16 * BLOCK_SIZE])
        .unwrap_or_else(|error| systests::fail(format_args!("write: {error}")));
    card.write_blocks(target + 16, &written[16 * BLOCK_SIZE..])
        .unwrap_or_else(|error| systests::fail(format_args!("single write: {error}")));
    let mut back = vec![0u8; 17 * BLOCK_SIZE];
    card.read_blocks(target, &mut back)
        .unwrap_or_else(|error| systests::fail(format_args!("read back: {error}")));
    ensure!(back == written, "written blocks read back differently");

    ensure!(
        card.read_blocks(blocks, &mut single) == Err(BlockError::OutOfRange),
        "read past the end accepted"
    );
    ensure!(card.read_blocks(0, &mut single[..100]) == Err(BlockError::BadLength), "partial block accepted");
    let counters = card.counters();
    boot::println!(
        "SD driver ok: {} read commands, {} blocks read, {} blocks written, {} retries",
        counters.read_commands,
        counters.blocks_read,
        counters.blocks_written,
        counters.retries
    );
    pass()
}
