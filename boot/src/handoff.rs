//! What the boot stages hand each other: the cells `_start` shares with Rust (the release flag
//! secondaries wait on, the entry exception level), the translation tables, the device tree copy
//! and the facts the pre-MMU stage found, and the kernel image's section bounds from the linker
//! script. `entry` (assembly), `premmu` (before the MMU) and `start` (after it) all read and
//! write these, and none of them reaches into another for its state.
//!
//! Every cell here is plain memory, read and written without atomics: the pre-MMU stage must not
//! use load/store-exclusive instructions (see `premmu`), and each value has one writer that
//! finishes before any reader starts.

use bsp::{
    arch::aarch64::{kernel_map::KernelImage, kernel_map::MappingList, translation::TranslationTables},
    board::{budget::BoardModel, soc::Soc},
};
use core::cell::UnsafeCell;
use kernel::{boot_info::SeedSource, mm::layout::MemoryPlan};

/// A 32-bit cell that assembly reads and writes by address before BSS is zeroed (so it lives
/// in `.data`), and Rust reads and writes with volatile accesses: no atomics, so the pre-MMU
/// stage may use it.
#[repr(transparent)]
pub(crate) struct EntryCell(UnsafeCell<u32>);

// SAFETY: every access is a single aligned 32-bit volatile load or store; writers and readers
// are ordered by barriers and events (`dsb sy; sev`), as documented with each cell.
unsafe impl Sync for EntryCell {}

impl EntryCell {
    const fn new(value: u32) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// The value, read from memory.
    pub(crate) fn read(&self) -> u32 {
        // SAFETY: an aligned 32-bit cell that lives as long as the program.
        unsafe { self.0.get().read_volatile() }
    }

    /// Writes `value` to memory.
    pub(crate) fn write(&self, value: u32) {
        // SAFETY: an aligned 32-bit cell that lives as long as the program.
        unsafe { self.0.get().write_volatile(value) }
    }
}

/// Set (to 1) by core 0 once the translation tables are built; secondaries entered at `_start`
/// together with core 0 (an ELF booted at EL3) wait for it there. In `.data`, not `.bss`,
/// because secondaries may read it before core 0 zeroes BSS.
#[unsafe(link_section = ".data.boot")]
pub(crate) static RELEASE: EntryCell = EntryCell::new(0);

/// The exception level core 0 was entered at, written by `_start`. In `.data` for the same
/// reason as [`RELEASE`].
#[unsafe(link_section = ".data.boot")]
pub(crate) static ENTRY_LEVEL: EntryCell = EntryCell::new(0);

/// A static written only by core 0 during boot, before anything else can read it, and
/// read-only afterwards.
#[repr(transparent)]
pub(crate) struct BootWritten<T>(UnsafeCell<T>);

// SAFETY: see the type's rule: one writer, before any reader exists; afterwards every core
// may hold `&T` at once, which `T: Sync` allows.
unsafe impl<T: Sync> Sync for BootWritten<T> {}

impl<T> BootWritten<T> {
    /// A cell holding `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// # Safety
    /// Only core 0, during boot, while no other reference exists.
    #[expect(clippy::mut_from_ref, reason = "a static written at boot; the caller promises exclusive access")]
    pub(crate) unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: the caller guarantees exclusive access.
        unsafe { &mut *self.0.get() }
    }

    /// # Safety
    /// Only after boot has finished writing.
    pub(crate) unsafe fn get(&self) -> &T {
        // SAFETY: the caller guarantees no writer remains.
        unsafe { &*self.0.get() }
    }

    /// The cell's address.
    pub(crate) fn address(&self) -> u64 {
        self.0.get() as u64
    }
}

/// Level-3 tables reserved: enough for an 8 MiB kernel image.
pub(crate) const LEVEL3_TABLES: usize = 4;

/// The translation tables every core uses. Written by core 0 before any MMU is on.
pub(crate) static TABLES: BootWritten<TranslationTables<LEVEL3_TABLES>> =
    BootWritten::new(TranslationTables::new());

/// Bytes reserved for a copy of the device tree.
pub(crate) const DEVICE_TREE_MAX: usize = 64 * 1024;

/// The device tree, copied out of wherever the firmware put it before the MMU is on.
pub(crate) static DEVICE_TREE: BootWritten<[u8; DEVICE_TREE_MAX]> = BootWritten::new([0; DEVICE_TREE_MAX]);

/// What the pre-MMU stage found and decided, for the stage after it.
pub(crate) struct EarlyFacts {
    /// The chip, from the core type.
    pub(crate) soc: Soc,
    /// The firmware's board revision code.
    pub(crate) revision: u32,
    /// The board it decodes to.
    pub(crate) model: BoardModel,
    /// ARM memory in bytes from the mailbox (the RAM from address 0; the plan may have more,
    /// above the BCM2711's hole).
    pub(crate) ram: u64,
    /// Bytes of the device tree copy in [`DEVICE_TREE`] (0: none).
    pub(crate) device_tree_length: usize,
    /// The layout seed and where it came from.
    pub(crate) seed: (u64, SeedSource),
    /// The budget row the board uses.
    pub(crate) budget_row: &'static str,
    /// The memory plan.
    pub(crate) plan: MemoryPlan,
    /// Every mapping in [`TABLES`].
    pub(crate) mappings: MappingList,
}

/// Written once by the pre-MMU stage, read by `start` after the MMU is on.
pub(crate) static EARLY: BootWritten<Option<EarlyFacts>> = BootWritten::new(None);

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __stacks_start: u8;
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
