//! The SD card as a mounted FAT32 volume: mailbox clock query, pin routing (the SD pins to the
//! EMMC controller, and on boards with WiFi the WiFi pins away from it), SDHCI bring-up.

use crate::console;
use bsp::{
    arch::aarch64::timer::GenericTimer,
    board::{
        budget::BoardModel,
        rpi3::{
            mailbox::{BUFFER_WORDS, Mailbox},
            memory_map,
        },
        sdhci::{Sdhci, Variant},
    },
};
use kernel::{
    fs::Volume,
    mm::{buffer::BackedMemory, tensor::TensorKind},
};

/// The clock the SD driver times out on.
pub static CLOCK: GenericTimer = GenericTimer;

/// The card, as the server reads it.
pub type Card = Sdhci<'static>;

/// Brings the card up and mounts its FAT32 partition, or says why not.
pub fn mount_card(memory: &'static BackedMemory) -> Result<Volume<Card>, alloc::string::String> {
    let card = open_card(memory)?;
    Volume::mount(card).map_err(|error| alloc::format!("SD card: {error}"))
}

/// Brings the card up (base clock from the mailbox, pins routed to the EMMC block, SDHCI
/// initialisation) and prints what it found, or says why it failed.
pub fn open_card(memory: &'static BackedMemory) -> Result<Card, alloc::string::String> {
    use alloc::format;
    let buffer = memory
        .alloc((BUFFER_WORDS * 4) as u64, TensorKind::Device)
        .map_err(|error| format!("no DMA memory for the mailbox: {error}"))?;
    // SAFETY: the mailbox block; the buffer is non-cacheable DMA memory owned by this call.
    let mut mailbox = unsafe { Mailbox::new(memory_map::MAILBOX, buffer.as_ptr() as *mut u32) };
    let base_clock = mailbox.clock_rate(&CLOCK, Variant::Bcm2837Emmc.clock_id()).ok();
    drop(buffer);
    let gpio = console::gpio();
    let model = crate::start::BOOT_INFO.get().map(|info| BoardModel::from_revision(info.board_revision));
    if model.is_some_and(BoardModel::wifi_on_emmc_pins) {
        gpio.release_wifi_sdio_pins();
    }
    gpio.route_emmc(&CLOCK);
    // SAFETY: the EMMC block is mapped as device memory and this is its only driver.
    let card = unsafe { Sdhci::new(Variant::Bcm2837Emmc, &CLOCK, base_clock) }
        .map_err(|error| format!("SD card: {error}"))?;
    let info = card.card();
    crate::println!(
        "sd card: {} MiB {}, {}-bit bus at {} MHz",
        info.blocks / 2048,
        if info.high_capacity { "SDHC" } else { "SDSC" },
        if info.four_bit_bus { 4 } else { 1 },
        info.clock_hz / 1_000_000
    );
    if !info.card_detected {
        crate::println!("sd card: the card-detect bit never set; the card answered anyway");
    }
    Ok(card)
}
