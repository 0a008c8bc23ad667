//! The pre-MMU stage: everything core 0 does between `_start` and turning its MMU on (probing
//! the board through the mailbox, the early console, copying the device tree, planning memory,
//! building the translation tables, releasing the secondaries), the MMU switch every core makes,
//! and the failure, panic and exception reports that may happen before it.
//!
//! With the MMU and caches off every access is to Device memory, where a Cortex-A53's
//! load/store-exclusive pairs fault or never succeed (QEMU's always succeed, so no emulated run
//! shows it). So nothing here takes a lock or touches an atomic: registers are reached raw,
//! through [`EarlyUart`] and plain volatile cells. Every function of this module is placed in the
//! `.text.premmu` section (the linker script gathers it between `__premmu_start` and
//! `__premmu_end`), and `make test` disassembles that section, and every function it reaches by
//! direct branches, and fails on any exclusive or atomic instruction (`tools/runner`,
//! `premmu-check`).

use crate::{
    BootConfig,
    handoff::{self, DEVICE_TREE, DEVICE_TREE_MAX, EARLY, EarlyFacts, RELEASE, TABLES},
};
use bsp::{
    arch::aarch64::{
        cpu::{self, CORE_COUNT},
        kernel_map::{KernelImage, kernel_mappings},
        mmu,
        timer::GenericTimer,
    },
    board::{
        budget::{BoardModel, ram_map, scaled_budget},
        rpi3::{
            gpio::Gpio,
            mailbox::{CLOCK_UART, Mailbox},
            memory_map::SPIN_TABLE,
            pl011_uart::EarlyUart,
            rng::HardwareRng,
        },
        rpi4::rng200::Rng200,
        soc::Soc,
    },
};
use core::fmt::{self, Write};
use kernel::{
    boot_info::SeedSource,
    hil::{Clock, Rng},
    mm::layout::{BLOCK, MemoryPlan},
};

unsafe extern "Rust" {
    /// The configuration the binary chose with [`crate::entry!`].
    static __TESSERA_CONFIG: BootConfig;
}

unsafe extern "C" {
    fn _start();
}

/// The BCM2837's UART as the pre-MMU stage drives it.
// SAFETY: the BCM2837's UART0 block; before the MMU is on only core 0 runs Rust, and once it is
// on the locked driver (`console`) takes over.
static EARLY_UART_BCM2837: EarlyUart = unsafe { EarlyUart::new(Soc::Bcm2837.map().uart) };
/// The BCM2711's UART as the pre-MMU stage drives it.
// SAFETY: as above, for the BCM2711's UART0 block.
static EARLY_UART_BCM2711: EarlyUart = unsafe { EarlyUart::new(Soc::Bcm2711.map().uart) };

/// The early console of the chip this runs on (told apart by the core type, no memory access).
#[unsafe(link_section = ".text.premmu")]
fn early_uart() -> &'static EarlyUart {
    match Soc::current() {
        Soc::Bcm2837 => &EARLY_UART_BCM2837,
        Soc::Bcm2711 => &EARLY_UART_BCM2711,
    }
}

/// The binary's boot configuration.
#[unsafe(link_section = ".text.premmu")]
pub(crate) fn config() -> &'static BootConfig {
    // SAFETY: the binary defines the symbol with `entry!`, as an immutable static.
    unsafe { &__TESSERA_CONFIG }
}

/// Whether this core's MMU is on (SCTLR_EL1.M).
#[unsafe(link_section = ".text.premmu")]
pub(crate) fn mmu_is_on() -> bool {
    let control: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, sctlr_el1", out(reg) control, options(nomem, nostack)) };
    control & 1 != 0
}

/// Text into the UART without a lock, for the pre-MMU stage.
struct EarlyWriter;

impl Write for EarlyWriter {
    #[unsafe(link_section = ".text.premmu")]
    fn write_str(&mut self, text: &str) -> fmt::Result {
        early_uart().write_bytes(text.as_bytes());
        Ok(())
    }
}

/// Prints `arguments` through the early console.
#[unsafe(link_section = ".text.premmu")]
fn early_print(arguments: fmt::Arguments<'_>) {
    let _ = EarlyWriter.write_fmt(arguments);
}

/// Ends this core's work: exits QEMU with `code` under semihosting, else sleeps forever. Takes
/// no lock, so it serves before and after the MMU is on.
#[unsafe(link_section = ".text.premmu")]
pub fn stop(code: u32) -> ! {
    if config().semihosting {
        use qemu_exit::QEMUExit;
        qemu_exit::AArch64::new().exit(code);
    }
    loop {
        cpu::wait_for_event();
    }
}

/// Reports a boot step that failed before the MMU is on, and stops.
#[unsafe(link_section = ".text.premmu")]
fn fail(stage: &str, error: impl fmt::Debug) -> ! {
    early_print(format_args!("\r\nboot failed while {stage}: {error:?}\r\n"));
    stop(2)
}

/// A panic before the MMU is on: reported through the early console, then the kernel stops.
#[unsafe(link_section = ".text.premmu")]
pub(crate) fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    early_print(format_args!(
        "\r\n*** kernel panic on core {} before the MMU was on: {}\r\n",
        cpu::core_id(),
        info.message()
    ));
    if let Some(location) = info.location() {
        early_print(format_args!("    at {location}\r\n"));
    }
    stop(1)
}

/// A CPU exception before the MMU is on: its syndrome and addresses through the early console,
/// then the kernel stops.
#[unsafe(link_section = ".text.premmu")]
pub(crate) fn report_exception(syndrome: u64, return_address: u64, fault_address: u64) -> ! {
    early_print(format_args!(
        "\r\n*** CPU exception on core {} before the MMU was on: ESR {syndrome:#x}, ELR {return_address:#x}, FAR {fault_address:#x}\r\n",
        cpu::core_id()
    ));
    stop(1)
}

/// Core 0's pre-MMU stage, called by `_start` with the firmware's device tree pointer: probes
/// the board, plans memory, builds the translation tables, releases the secondaries and leaves
/// what it found in [`EARLY`]. `_start` then calls [`enable_mmu`] and `start::boot_primary_after_mmu`.
#[unsafe(link_section = ".text.premmu")]
pub(crate) extern "C" fn prepare_primary(device_tree: usize) {
    let clock = &GenericTimer;
    let image = handoff::kernel_image();
    // The chip decides every address below; it is known from the core type before any
    // peripheral is touched.
    let soc = Soc::current();
    let (revision, ram) = probe_board(soc, clock, &image);
    let device_tree_length = copy_device_tree(device_tree, ram);
    let seed = boot_seed(soc, clock, device_tree_length);
    let model = BoardModel::from_revision(revision);
    let ram_map = ram_map(soc, revision, ram);
    let (row, budget) = scaled_budget(model, ram_map.total());
    let plan = MemoryPlan::across(ram_map, budget, image.end(), seed.0)
        .unwrap_or_else(|error| fail("planning memory", error));
    let mappings = kernel_mappings(&image, &plan, &soc.device_mappings());
    // SAFETY: only core 0 runs, and no MMU walks the tables yet.
    let tables = unsafe { TABLES.get_mut() };
    tables
        .build(TABLES.address(), mappings.as_slice())
        .unwrap_or_else(|error| fail("building page tables", error));
    let facts = EarlyFacts {
        soc,
        revision,
        model,
        ram,
        device_tree_length,
        seed,
        budget_row: row.name,
        plan,
        mappings,
    };
    // SAFETY: only core 0 runs; `start` reads this after the MMU is on.
    unsafe { *EARLY.get_mut() = Some(facts) };
    release_secondaries();
}

/// Turns this core's MMU and caches on with the boot tables. Called by `_start` on every core:
/// on core 0 after [`prepare_primary`], on a secondary as soon as it is released.
#[unsafe(link_section = ".text.premmu")]
pub(crate) extern "C" fn enable_mmu() {
    // SAFETY: core 0 built the tables before any core gets here, and never changes them; they
    // identity-map this code, the stacks, the console and everything boot touches afterwards.
    unsafe { mmu::enable(TABLES.address()) };
}

/// Asks the firmware, through the mailbox, for the UART clock (and starts the early console
/// with it), the board revision and the ARM memory; returns the revision and the RAM size. Boot
/// fails when the revision or the memory cannot be read, or memory does not start at 0.
#[unsafe(link_section = ".text.premmu")]
fn probe_board(soc: Soc, clock: &GenericTimer, image: &KernelImage) -> (u32, u64) {
    // The DMA region starts at the first 2 MiB boundary after the image (see MemoryPlan) and
    // is the mailbox buffer's home both now and after the MMU is on.
    let dma_base = image.end().div_ceil(BLOCK) * BLOCK;
    // SAFETY: the mailbox block is at its fixed address; the buffer is the first page of the
    // DMA region, used by nothing else, and coherent because the MMU (and so the cache) is off
    // now and the region is mapped non-cacheable later.
    let mut mailbox = unsafe { Mailbox::new(soc.map().mailbox, dma_base as *mut u32) };
    let uart_clock = mailbox.clock_rate(clock, CLOCK_UART).unwrap_or(48_000_000);
    start_early_console(soc, clock, uart_clock);
    let revision =
        mailbox.board_revision(clock).unwrap_or_else(|error| fail("reading the board revision", error));
    let (ram_base, ram_size) =
        mailbox.arm_memory(clock).unwrap_or_else(|error| fail("reading ARM memory", error));
    if ram_base != 0 {
        fail("reading ARM memory", "ARM memory does not start at 0");
    }
    (revision, u64::from(ram_size))
}

/// Routes UART0 to GPIO 14/15 and programs 115200 8N1 from a UART clock of `clock_hz`.
#[unsafe(link_section = ".text.premmu")]
fn start_early_console(soc: Soc, clock: &GenericTimer, clock_hz: u32) {
    // SAFETY: the chip's GPIO block; before the MMU is on only core 0 runs Rust, and this handle
    // is dropped before `console`'s takes over.
    let gpio = unsafe { Gpio::new(soc.map().gpio, soc) };
    gpio.route_uart0(clock);
    early_uart().init(clock_hz);
}

/// The device tree compatible string of the BCM2711's RNG200.
const RNG200_COMPATIBLE: &[u8] = b"brcm,bcm2711-rng200";

/// The seed of every randomized layout and sampler: the binary's fixed seed if it has one,
/// else the chip's hardware RNG's, else (when the RNG fails, or may not exist) the timer's
/// count. The BCM2711's RNG200 is read only when the device tree (`device_tree_length` bytes
/// copied) names it: QEMU raspi4b has no device at its address, and a read there is an
/// external abort, which before the MMU is on stops the kernel.
#[unsafe(link_section = ".text.premmu")]
fn boot_seed(soc: Soc, clock: &GenericTimer, device_tree_length: usize) -> (u64, SeedSource) {
    if let Some(seed) = config().fixed_seed {
        return (seed, SeedSource::Fixed);
    }
    let address = soc.map().rng;
    let seed = match soc {
        // SAFETY: the chip's RNG block; only boot uses it.
        Soc::Bcm2837 => unsafe { HardwareRng::new(address, clock) }.next_u64(),
        Soc::Bcm2711 if device_tree_names(device_tree_length, RNG200_COMPATIBLE) => {
            // SAFETY: the chip's RNG block, which the device tree says is there; only boot uses it.
            unsafe { Rng200::new(address, clock) }.next_u64()
        }
        Soc::Bcm2711 => return (clock.ticks(), SeedSource::TimerFallback),
    };
    match seed {
        Ok(seed) => (seed, SeedSource::Hardware),
        Err(_) => (clock.ticks(), SeedSource::TimerFallback),
    }
}

/// Whether the device tree copy (its first `length` bytes) contains `text` anywhere.
#[unsafe(link_section = ".text.premmu")]
fn device_tree_names(length: usize, text: &[u8]) -> bool {
    // SAFETY: only core 0 runs; the copy was written by `copy_device_tree` and is read here.
    let tree = unsafe { &DEVICE_TREE.get()[..length] };
    tree.windows(text.len()).any(|window| window == text)
}

/// Writes `_start` into the firmware spin table for cores 1-3 (page 0, reachable only while
/// the MMU is off: cores 1, 2 and 3 poll 0xe0, 0xe8 and 0xf0) and releases cores already
/// waiting in `_start` (ELF boot at EL3).
#[unsafe(link_section = ".text.premmu")]
fn release_secondaries() {
    RELEASE.write(1);
    for core in 1..CORE_COUNT {
        let slot = (SPIN_TABLE + 8 * core) as *mut u64;
        // SAFETY: the spin table is firmware-reserved RAM the parked cores poll; with the MMU
        // off the write goes straight to memory.
        unsafe { slot.write_volatile(_start as *const () as u64) };
    }
    // `send_event` orders the writes above before the event (dsb, then sev).
    cpu::send_event();
}

/// Copies a valid device tree (magic 0xd00dfeed) out of RAM with byte reads, which are safe
/// with the MMU off. Returns its length, or 0 when there is none.
#[unsafe(link_section = ".text.premmu")]
fn copy_device_tree(address: usize, ram: u64) -> usize {
    let read = |offset: usize| -> u8 {
        // SAFETY: callers keep `address + offset` inside ARM RAM (checked below).
        unsafe { ((address + offset) as *const u8).read_volatile() }
    };
    if address == 0 || !address.is_multiple_of(8) || address as u64 + 8 > ram {
        return 0;
    }
    let word =
        |offset| u32::from_be_bytes([read(offset), read(offset + 1), read(offset + 2), read(offset + 3)]);
    if word(0) != 0xd00d_feed {
        return 0;
    }
    let length = word(4) as usize;
    if length > DEVICE_TREE_MAX || address as u64 + length as u64 > ram {
        return 0;
    }
    // SAFETY: only core 0 runs; the buffer is not shared yet.
    let buffer = unsafe { DEVICE_TREE.get_mut() };
    for (offset, byte) in buffer.iter_mut().take(length).enumerate() {
        *byte = read(offset);
    }
    length
}
