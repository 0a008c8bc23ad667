//! The boot sequence in Rust: probe the board, plan memory, build the tables, wake the
//! secondaries, turn the MMU on, and hand a [`BootInfo`] to the kernel (or test) entry.

use crate::{BootConfig, console, cpus, entry};
use bsp::{
    arch::aarch64::{
        cpu::{self, CORE_COUNT},
        kernel_map::{KernelImage, kernel_mappings},
        mmu,
        timer::GenericTimer,
        translation::{Access, Mapping, MemoryType, TranslationTables},
    },
    board::{
        budget::{BoardModel, scaled_budget},
        rpi3::{
            DEVICE_MAPPINGS,
            mailbox::{CLOCK_UART, Mailbox},
            memory_map,
            rng::HardwareRng,
        },
    },
};
use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicUsize, Ordering},
};
use kernel::{
    boot_info::{BootInfo, MAX_MAP_ENTRIES, MapEntry, MemorySource, SeedSource},
    devicetree::{self, DeviceTreeFacts},
    hil::{Clock, Rng},
    mm::layout::{BLOCK, MemoryPlan, RegionKind},
    topology::{Topology, TopologyError},
};

unsafe extern "Rust" {
    /// The configuration the binary chose with [`crate::entry!`].
    static __TESSERA_CONFIG: BootConfig;
    /// The binary's main function, given by [`crate::entry!`].
    fn __tessera_main(info: &'static BootInfo) -> !;
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __stacks_start: u8;
    fn _start();
}

/// Level-3 tables reserved: enough for an 8 MiB kernel image.
const LEVEL3_TABLES: usize = 4;

/// A static written only by core 0 during boot, before anything else can read it, and
/// read-only afterwards.
#[repr(transparent)]
struct BootWritten<T>(UnsafeCell<T>);

// SAFETY: see the type's rule: one writer, before any reader exists.
unsafe impl<T> Sync for BootWritten<T> {}

impl<T> BootWritten<T> {
    /// # Safety
    /// Only core 0, during boot, while no other reference exists.
    #[expect(clippy::mut_from_ref, reason = "a static written at boot; the caller promises exclusive access")]
    unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: the caller guarantees exclusive access.
        unsafe { &mut *self.0.get() }
    }

    /// # Safety
    /// Only after boot has finished writing.
    unsafe fn get(&self) -> &T {
        // SAFETY: the caller guarantees no writer remains.
        unsafe { &*self.0.get() }
    }
}

/// The translation tables every core uses. Written by core 0 before any MMU is on.
static TABLES: BootWritten<TranslationTables<LEVEL3_TABLES>> =
    BootWritten(UnsafeCell::new(TranslationTables::new()));

/// Cores that have reached Rust with their MMU on.
static CORES_ONLINE: AtomicUsize = AtomicUsize::new(0);

/// What boot found, for the kernel and for diagnostics.
pub static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// Bytes reserved for a copy of the device tree.
const DEVICE_TREE_MAX: usize = 64 * 1024;
/// The device tree, copied out of wherever the firmware put it before the MMU is on.
static DEVICE_TREE: BootWritten<[u8; DEVICE_TREE_MAX]> = BootWritten(UnsafeCell::new([0; DEVICE_TREE_MAX]));

fn config() -> &'static BootConfig {
    // SAFETY: the binary defines the symbol with `entry!`, as an immutable static.
    unsafe { &__TESSERA_CONFIG }
}

/// The kernel image's sections, from the linker script.
pub fn kernel_image() -> KernelImage {
    let address = |symbol: *const u8| symbol as u64;
    KernelImage {
        text: address(&raw const __text_start)..address(&raw const __text_end),
        rodata: address(&raw const __rodata_start)..address(&raw const __rodata_end),
        data: address(&raw const __data_start)..address(&raw const __data_end),
        stacks: address(&raw const __stacks_start),
    }
}

fn tables_address() -> u64 {
    TABLES.0.get() as u64
}

/// The live translation tables, for read-back checks. Only valid once boot has finished.
pub fn tables() -> &'static TranslationTables<LEVEL3_TABLES> {
    // SAFETY: after boot, the tables are never written again.
    unsafe { TABLES.get() }
}

/// Physical address of the live translation tables.
pub fn tables_physical() -> u64 {
    tables_address()
}

/// Ends this core's work: exits QEMU with `code` under semihosting, else sleeps forever.
pub fn stop(code: u32) -> ! {
    if config().semihosting {
        use qemu_exit::QEMUExit;
        qemu_exit::AArch64::new().exit(code);
    }
    loop {
        cpu::wait_for_event();
    }
}

fn fail(stage: &str, error: impl core::fmt::Debug) -> ! {
    crate::println!("\r\nboot failed while {stage}: {error:?}");
    stop(2)
}

/// Core 0's Rust entry, with the MMU off, on its thread stack.
pub extern "C" fn boot_primary(device_tree: usize) -> ! {
    let clock = &GenericTimer;
    let image = kernel_image();
    let (revision, ram) = probe_board(clock, &image);
    let device_tree_length = copy_device_tree(device_tree, ram);
    let (seed, seed_source) = boot_seed(clock);
    let model = BoardModel::from_revision(revision);
    let (row, budget) = scaled_budget(model, ram);
    let plan = MemoryPlan::new(ram, budget, image.end(), seed)
        .unwrap_or_else(|error| fail("planning memory", error));
    let mappings = kernel_mappings(&image, &plan, &DEVICE_MAPPINGS);
    // SAFETY: only core 0 runs, and no MMU walks the tables yet.
    let tables = unsafe { TABLES.get_mut() };
    tables
        .build(tables_address(), mappings.as_slice())
        .unwrap_or_else(|error| fail("building page tables", error));

    release_secondaries();
    // SAFETY: the tables identity-map this code, its stack, the console and everything boot
    // touches from here on.
    unsafe { mmu::enable(tables_address()) };
    CORES_ONLINE.fetch_add(1, Ordering::AcqRel);

    let heap = plan.region(RegionKind::Heap);
    // SAFETY: the heap region is mapped read-write, cacheable, and used by nothing else.
    unsafe { crate::heap::init(heap.base, heap.size) };

    wait_for_secondaries(clock);
    let facts = parse_device_tree(device_tree_length);
    let cores_online = CORES_ONLINE.load(Ordering::Acquire);
    let topology = choose_topology(facts.topology, cores_online);
    // Trace events and pool latency histograms read the generic timer and the core number.
    kernel::hil::install_board_time(&GenericTimer, || cpu::core_id() as u32);
    let info = BOOT_INFO.call_once(|| BootInfo {
        board: model.name(),
        board_revision: revision,
        entry_level: entry::ENTRY_LEVEL.load(Ordering::Relaxed) as u8,
        exception_level: cpu::exception_level(),
        cores_online,
        topology,
        cache_line: cpu::cache_line_bytes(),
        seed,
        seed_source,
        memory_source: if facts.memory == Some(ram) {
            MemorySource::DeviceTree
        } else {
            MemorySource::Mailbox
        },
        device_tree: device_tree_length > 0,
        budget_row: row.name,
        plan,
        mappings: map_entries(mappings.as_slice()),
    });
    if let Some(memory) = facts.memory.filter(|&memory| memory != ram) {
        crate::println!(
            "warning: device tree reports {memory:#x} bytes of RAM, mailbox {ram:#x}; using the mailbox"
        );
    }
    // SAFETY: the binary defines `__tessera_main` with `entry!`.
    unsafe { __tessera_main(info) }
}

/// Asks the firmware, through the mailbox, for the UART clock (and starts the console with
/// it), the board revision and the ARM memory; returns the revision and the RAM size. Boot
/// fails when the revision or the memory cannot be read, or memory does not start at 0.
fn probe_board(clock: &GenericTimer, image: &KernelImage) -> (u32, u64) {
    // The DMA region starts at the first 2 MiB boundary after the image (see MemoryPlan) and
    // is the mailbox buffer's home both now and after the MMU is on.
    let dma_base = image.end().div_ceil(BLOCK) * BLOCK;
    // SAFETY: the mailbox block is at its fixed address; the buffer is the first page of the
    // DMA region, used by nothing else, and coherent because the MMU (and so the cache) is off
    // now and the region is mapped non-cacheable later.
    let mut mailbox = unsafe { Mailbox::new(memory_map::MAILBOX, dma_base as *mut u32) };
    let uart_clock = mailbox.clock_rate(clock, CLOCK_UART).unwrap_or(48_000_000);
    console::init(clock, uart_clock);
    let revision =
        mailbox.board_revision(clock).unwrap_or_else(|error| fail("reading the board revision", error));
    let (ram_base, ram_size) =
        mailbox.arm_memory(clock).unwrap_or_else(|error| fail("reading ARM memory", error));
    if ram_base != 0 {
        fail("reading ARM memory", "ARM memory does not start at 0");
    }
    (revision, u64::from(ram_size))
}

/// The seed of every randomized layout and sampler: the binary's fixed seed if it has one,
/// else the hardware RNG's, else (when the RNG fails) the timer's count.
fn boot_seed(clock: &GenericTimer) -> (u64, SeedSource) {
    match config().fixed_seed {
        Some(seed) => (seed, SeedSource::Fixed),
        None => {
            // SAFETY: the RNG block at its fixed address; only boot uses it.
            let rng = unsafe { HardwareRng::new(memory_map::RNG, clock) };
            match rng.next_u64() {
                Ok(seed) => (seed, SeedSource::Hardware),
                Err(_) => (clock.ticks(), SeedSource::TimerFallback),
            }
        }
    }
}

/// Waits until every core is online, or half a second has passed.
fn wait_for_secondaries(clock: &GenericTimer) {
    // Wait in `wfe`: a busy loop would starve the other cores when QEMU runs them in turn
    // (-icount). Each secondary sends an event as it reports in, and the timer's event stream
    // bounds every wait even if one never does.
    cpu::enable_event_stream();
    let deadline = clock.deadline_after_us(500_000);
    while CORES_ONLINE.load(Ordering::Acquire) < CORE_COUNT && !deadline.passed(clock) {
        cpu::wait_for_event();
    }
}

/// The device tree's topology when it has one that covers the `cores_online`; otherwise (with
/// a warning when the tree's was refused or too small) the topology MPIDR gives.
fn choose_topology(from_tree: Option<Result<Topology, TopologyError>>, cores_online: usize) -> Topology {
    match from_tree {
        Some(Ok(topology)) if topology.cores() >= cores_online => topology,
        Some(Ok(topology)) => {
            crate::println!(
                "warning: device tree lists {} cpus but {cores_online} came online; using MPIDR",
                topology.cores()
            );
            Topology::from_mpidr(cores_online)
        }
        Some(Err(error)) => {
            crate::println!("warning: device tree topology rejected ({error}); using MPIDR");
            Topology::from_mpidr(cores_online)
        }
        None => Topology::from_mpidr(cores_online),
    }
}

/// The boot banner's view of `mappings`: name, range, memory type, access and granule.
fn map_entries(mappings: &[Mapping]) -> [Option<MapEntry>; MAX_MAP_ENTRIES] {
    let mut map_entries = [None; MAX_MAP_ENTRIES];
    for (slot, mapping) in map_entries.iter_mut().zip(mappings) {
        *slot = Some(MapEntry {
            name: mapping.name,
            base: mapping.base,
            size: mapping.size,
            memory: match mapping.memory {
                MemoryType::Device => "device",
                MemoryType::WriteBack => "normal WB",
                MemoryType::NonCacheable => "normal NC",
            },
            access: match mapping.access {
                Access::ReadExecute => "RX",
                Access::ReadOnly => "RO",
                Access::ReadWrite => "RW",
            },
            granule: mapping.granule.label(),
        });
    }
    map_entries
}

/// Writes `_start` into the firmware spin table for cores 1-3 (page 0, reachable only while
/// the MMU is off) and releases cores already waiting in `_start` (ELF boot at EL3).
fn release_secondaries() {
    entry::RELEASE.store(1, Ordering::Release);
    for core in 1..CORE_COUNT {
        let slot = (memory_map::SPIN_TABLE + 8 * core) as *mut u64;
        // SAFETY: the spin table is firmware-reserved RAM the parked cores poll; with the MMU
        // off the write goes straight to memory.
        unsafe { slot.write_volatile(_start as *const () as u64) };
    }
    cpu::send_event();
}

/// A secondary core's Rust entry, MMU off, on its own thread stack.
pub extern "C" fn boot_secondary(core: usize) -> ! {
    // SAFETY: core 0 built the tables before releasing this core, and never changes them.
    unsafe { mmu::enable(tables_address()) };
    cpus::report_in(core);
    CORES_ONLINE.fetch_add(1, Ordering::AcqRel);
    cpu::send_event();
    cpus::park(core)
}

/// Copies a valid device tree (magic 0xd00dfeed) out of RAM with byte reads, which are safe
/// with the MMU off. Returns its length, or 0 when there is none.
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

/// What the device tree copy says (RAM size, cores and memory nodes); nothing when there is
/// none, or when it is malformed (with a warning saying why).
fn parse_device_tree(length: usize) -> DeviceTreeFacts {
    let fallback = DeviceTreeFacts { memory: None, topology: None };
    if length == 0 {
        return fallback;
    }
    // SAFETY: written once by `copy_device_tree` before the MMU was on; read-only since.
    let bytes = unsafe { &DEVICE_TREE.get()[..length] };
    devicetree::facts(bytes).unwrap_or_else(|error| {
        crate::println!("warning: device tree ignored ({error}); using the mailbox and MPIDR");
        fallback
    })
}
