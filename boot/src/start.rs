//! The boot sequence after the MMU is on: core 0 counts the cores in, sets up the heap, reads
//! the device tree copy and hands a [`BootInfo`] to the kernel (or test) entry; a secondary
//! reports in and parks. Everything before the MMU is in [`crate::premmu`]; what the two stages
//! share is in [`crate::handoff`].

use crate::{
    cpus,
    handoff::{self, DEVICE_TREE, EARLY, ENTRY_LEVEL, EarlyFacts, LEVEL3_TABLES, TABLES},
};
use bsp::arch::aarch64::{
    cpu::{self, CORE_COUNT},
    kernel_map::KernelImage,
    timer::GenericTimer,
    translation::{Access, Mapping, MemoryType, TranslationTables},
};
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::{
    boot_info::{BootInfo, MAX_MAP_ENTRIES, MapEntry, MemorySource},
    devicetree::{self, DeviceTreeFacts},
    hil::Clock,
    mm::layout::RegionKind,
    topology::{Topology, TopologyError},
};

pub use crate::premmu::stop;

unsafe extern "Rust" {
    /// The binary's main function, given by [`crate::entry!`].
    fn __tessera_main(info: &'static BootInfo) -> !;
}

/// Cores that have reached Rust with their MMU on.
static CORES_ONLINE: AtomicUsize = AtomicUsize::new(0);

/// What boot found, for the kernel and for diagnostics.
pub static BOOT_INFO: spin::Once<BootInfo> = spin::Once::new();

/// The kernel image's sections, from the linker script.
pub fn kernel_image() -> KernelImage {
    handoff::kernel_image()
}

/// The live translation tables, for read-back checks. Only valid once boot has finished.
pub fn tables() -> &'static TranslationTables<LEVEL3_TABLES> {
    // SAFETY: after boot, the tables are never written again.
    unsafe { TABLES.get() }
}

/// Physical address of the live translation tables.
pub fn tables_physical() -> u64 {
    TABLES.address()
}

/// Core 0's Rust entry once its MMU is on (after `premmu::prepare_primary` and
/// `premmu::enable_mmu`), on its thread stack.
pub extern "C" fn boot_primary_after_mmu() -> ! {
    let clock = &GenericTimer;
    CORES_ONLINE.fetch_add(1, Ordering::AcqRel);
    // SAFETY: written once before the MMU was on; read-only since.
    let Some(early) = (unsafe { EARLY.get() }) else {
        crate::println!("boot failed: the pre-MMU stage left no facts");
        stop(2)
    };
    let heap = early.plan.region(RegionKind::Heap);
    // SAFETY: the heap region is mapped read-write, cacheable, and used by nothing else.
    unsafe { crate::heap::init(heap.base, heap.size) };

    wait_for_secondaries(clock);
    let facts = parse_device_tree(early.device_tree_length);
    let cores_online = CORES_ONLINE.load(Ordering::Acquire);
    let topology = choose_topology(facts.topology, cores_online);
    // Trace events and pool latency histograms read the generic timer and the core number.
    kernel::hil::install_board_time(&GenericTimer, || cpu::core_id() as u32);
    let info = BOOT_INFO.call_once(|| boot_info(early, &facts, cores_online, topology));
    if let Some(chip) = early.model.soc().filter(|&chip| chip != early.soc) {
        crate::println!(
            "warning: the firmware reports a {} ({}), but the cores are a {}'s; using the {}'s addresses",
            early.model.name(),
            chip.name(),
            early.soc.name(),
            early.soc.name()
        );
    }
    if let Some(memory) = facts.memory.filter(|&memory| memory != early.ram) {
        crate::println!(
            "warning: device tree reports {memory:#x} bytes of RAM, mailbox {:#x}; using the mailbox",
            early.ram
        );
    }
    // SAFETY: the binary defines `__tessera_main` with `entry!`.
    unsafe { __tessera_main(info) }
}

/// The [`BootInfo`] made of what the pre-MMU stage found, the device tree's `facts` and the
/// cores that came online.
fn boot_info(
    early: &EarlyFacts,
    facts: &DeviceTreeFacts,
    cores_online: usize,
    topology: Topology,
) -> BootInfo {
    let (seed, seed_source) = early.seed;
    BootInfo {
        board: early.model.name(),
        board_revision: early.revision,
        entry_level: ENTRY_LEVEL.read() as u8,
        exception_level: cpu::exception_level(),
        cores_online,
        topology,
        cache_line: cpu::cache_line_bytes(),
        seed,
        seed_source,
        memory_source: if facts.memory == Some(early.ram) {
            MemorySource::DeviceTree
        } else {
            MemorySource::Mailbox
        },
        device_tree: early.device_tree_length > 0,
        budget_row: early.budget_row,
        plan: early.plan,
        mappings: map_entries(early.mappings.as_slice()),
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
            physical: mapping.physical,
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

/// A secondary core's Rust entry once its MMU is on, on its own thread stack.
pub extern "C" fn boot_secondary_after_mmu(core: usize) -> ! {
    cpus::report_in(core);
    CORES_ONLINE.fetch_add(1, Ordering::AcqRel);
    cpu::send_event();
    cpus::park(core)
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
