//! The SD card as a mounted FAT32 volume: mailbox clock query, pin routing (the SD pins to the
//! EMMC controller, and on boards with WiFi the WiFi pins away from it), SDHCI bring-up.
//!
//! On the BCM2837 the card is on the Arasan EMMC. On the BCM2711 it is on EMMC2 on a real
//! Pi 4: the firmware's 1.8 V SD regulator is switched off first (Circle's mailbox call), then
//! EMMC2 is brought up with its bus power at 3.3 V. When EMMC2 finds no card, the Arasan EMMC is
//! tried, routed like the Pi 3's: that is where QEMU raspi4b attaches its card.

use crate::console;
use bsp::{
    arch::aarch64::timer::GenericTimer,
    board::{
        budget::BoardModel,
        rpi3::mailbox::{BUFFER_WORDS, EXPANDER_SD_IO_1V8, Mailbox},
        sdhci::{InitError, Sdhci, Variant},
        soc::Soc,
    },
};
use kernel::{
    fs::Volume,
    hil::Clock,
    mm::{buffer::BackedMemory, tensor::TensorKind},
};

/// The clock the SD driver times out on.
pub static CLOCK: GenericTimer = GenericTimer;

/// The card, as the server reads it.
pub type Card = Sdhci<'static>;

/// How long the card's I/O supply gets to settle after the 1.8 V regulator is switched off
/// (Circle waits 5 ms).
const REGULATOR_SETTLE_US: u64 = 5_000;

/// Brings the card up and mounts its FAT32 partition, or says why not.
pub fn mount_card(memory: &'static BackedMemory) -> Result<Volume<Card>, alloc::string::String> {
    let card = open_card(memory)?;
    Volume::mount(card).map_err(|error| alloc::format!("SD card: {error}"))
}

/// Brings the card up (base clock from the mailbox, pins routed, SDHCI initialisation, on the
/// controller the chip has it on) and prints what it found (size, bus and controller, then the
/// card's identity from its CID), or says why it failed.
pub fn open_card(memory: &'static BackedMemory) -> Result<Card, alloc::string::String> {
    use alloc::format;
    let mut buffer = memory
        .alloc((BUFFER_WORDS * 4) as u64, TensorKind::Device)
        .map_err(|error| format!("no DMA memory for the mailbox: {error}"))?;
    let soc = Soc::current();
    // SAFETY: the mailbox block; the buffer is non-cacheable DMA memory owned by this call.
    let mut mailbox = unsafe { Mailbox::new(soc.map().mailbox, buffer.as_mut_ptr().cast::<u32>()) };
    let card = match soc {
        Soc::Bcm2837 => open_on(Variant::Bcm2837Emmc, &mut mailbox),
        Soc::Bcm2711 => {
            if let Err(error) = mailbox.set_firmware_gpio(&CLOCK, EXPANDER_SD_IO_1V8, 0) {
                crate::println!("sd card: the firmware did not switch the 1.8 V SD supply off ({error:?})");
            }
            CLOCK.delay_us(REGULATOR_SETTLE_US);
            match open_on(Variant::Bcm2711Emmc2, &mut mailbox) {
                Err(InitError::NoCard) => open_on(Variant::Bcm2711Emmc, &mut mailbox),
                other => other,
            }
        }
    };
    drop(buffer);
    let card = card.map_err(|error| format!("SD card: {error}"))?;
    let info = card.card();
    crate::println!(
        "sd card: {} MiB {}, {}-bit bus at {} MHz on {}",
        info.blocks / 2048,
        if info.high_capacity { "SDHC" } else { "SDSC" },
        if info.four_bit_bus { 4 } else { 1 },
        info.clock_hz / 1_000_000,
        card.variant().name()
    );
    crate::println!("sd card: {}", info.identity);
    if !info.card_detected {
        crate::println!("sd card: the card-detect bit never set; the card answered anyway");
    }
    Ok(card)
}

/// Routes the pins `variant` needs and brings the card up on it.
fn open_on(variant: Variant, mailbox: &mut Mailbox) -> Result<Card, InitError> {
    let base_clock = mailbox.clock_rate(&CLOCK, variant.clock_id()).ok();
    let gpio = console::gpio();
    if variant != Variant::Bcm2711Emmc2 {
        let model = crate::start::BOOT_INFO.get().map(|info| BoardModel::from_revision(info.board_revision));
        if model.is_some_and(BoardModel::wifi_on_emmc_pins) {
            gpio.release_wifi_sdio_pins();
        }
        gpio.route_emmc(&CLOCK);
    }
    // SAFETY: the controller's block is mapped as device memory (the chip's peripheral window)
    // and this is its only driver.
    unsafe { Sdhci::new(variant, &CLOCK, base_clock) }
}
