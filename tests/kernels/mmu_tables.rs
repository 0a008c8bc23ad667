//! QEMU test: the MMU and caches are on, and the live tables translate exactly as planned:
//! each mapping's first, middle and last page translate in hardware (`AT S1E1R`) and in the
//! software walk with the planned attributes, while page 0, stack guard pages, slack between
//! regions and the addresses past RAM fault, and no mapping reaches VideoCore memory. On
//! raspi4b the arena runs on past the mailbox's 960 MiB into the RAM at 1 GiB: words written
//! on both sides of that seam read back as written, so the RAM there is real and distinct.

#![no_std]
#![no_main]

extern crate alloc;

use aarch64_cpu::registers::{SCTLR_EL1, TTBR0_EL1};
use alloc::vec;
use boot::start;
use bsp::arch::aarch64::{
    kernel_map::{EXCEPTION_STACK_BYTES, THREAD_STACK_BYTES},
    mmu::hardware_translate,
    translation::{Access, MemoryType, attribute_bits},
};
use kernel::mm::layout::{MIB, RegionKind};
use systests::{TEST_CONFIG, ensure, pass};
use tock_registers::interfaces::Readable;

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(SCTLR_EL1.is_set(SCTLR_EL1::M), "MMU off");
    ensure!(SCTLR_EL1.is_set(SCTLR_EL1::C), "data cache off");
    ensure!(SCTLR_EL1.is_set(SCTLR_EL1::I), "instruction cache off");
    let root = start::tables_physical();
    ensure!(
        TTBR0_EL1.get_baddr() == root,
        "TTBR0 {:#x} is not the boot tables {root:#x}",
        TTBR0_EL1.get_baddr()
    );
    let tables = start::tables();

    let mut checked = 0;
    for entry in info.map_entries() {
        let memory = match entry.memory {
            "device" => MemoryType::Device,
            "normal NC" => MemoryType::NonCacheable,
            _ => MemoryType::WriteBack,
        };
        let access = match entry.access {
            "RX" => Access::ReadExecute,
            "RO" => Access::ReadOnly,
            _ => Access::ReadWrite,
        };
        let last = entry.base + entry.size - 8;
        for address in [entry.base, entry.base + ((entry.size / 2) & !7), last] {
            let physical = address - entry.base + entry.physical;
            let hardware = hardware_translate(address);
            ensure!(
                hardware == Some(physical),
                "{} at {address:#x}: hardware gives {hardware:?}",
                entry.name
            );
            let software = tables.translate(root, address);
            ensure!(
                software.map(|t| (t.physical, t.memory, t.access)) == Some((physical, memory, access)),
                "{} at {address:#x}: tables give {software:?}",
                entry.name
            );
            let descriptor = tables.leaf_descriptor(root, address).unwrap_or(0);
            let expected = attribute_bits(memory, access);
            ensure!(
                descriptor & expected == expected,
                "{} at {address:#x}: descriptor {descriptor:#x} lacks {expected:#x}",
                entry.name
            );
            checked += 1;
        }
    }

    let ram_map = info.plan.ram_map;
    let videocore = ram_map.low..ram_map.high_base.max(ram_map.low + 32 * MIB);
    for entry in info.map_entries() {
        let reached = entry.physical..entry.physical + entry.size;
        ensure!(
            reached.end <= videocore.start || reached.start >= videocore.end,
            "{} reaches VideoCore memory ({reached:#x?})",
            entry.name
        );
    }
    if ram_map.high > 0 {
        check_the_seam(info);
    }

    let image = start::kernel_image();
    let ram_end = info.plan.ram();
    let mut holes = vec![0u64, 0xFF8, 0x7_F000, ram_end, ram_end + 32 * MIB, 0x8000_0000];
    for core in 0..4 {
        holes.push(image.thread_stack_top(core) - THREAD_STACK_BYTES as u64 - 8);
        holes.push(image.exception_stack_top(core) - EXCEPTION_STACK_BYTES as u64 - 8);
    }
    let slack =
        info.plan.regions.windows(2).find(|pair| pair[1].base > pair[0].end()).map(|pair| pair[0].end());
    if let Some(gap) = slack {
        holes.push(gap);
    }
    for &address in &holes {
        ensure!(hardware_translate(address).is_none(), "{address:#x} should be unmapped");
        ensure!(tables.translate(root, address).is_none(), "{address:#x} mapped in the tables");
    }
    boot::println!("{checked} mapped addresses and {} holes match the plan", holes.len());
    pass()
}

/// Writes a distinct word on each side of the seam between the arena's low and high parts and
/// at the high part's end, then reads them all back: the high part is real RAM, and not the
/// low part again under another address. The arena holds nothing yet (no pool is built), and
/// the words are put back as they were.
fn check_the_seam(info: &boot::BootInfo) {
    let seam = info.plan.ram_map.low;
    let arena = info.plan.region(RegionKind::Arena);
    ensure!(
        arena.base < seam && arena.end() > seam,
        "the arena {arena:x?} does not cross the seam at {seam:#x}"
    );
    let addresses = [seam - 8, seam, seam + 8, arena.end() - 8];
    let words = addresses.map(|address| address as *mut u64);
    // SAFETY: every address is 8-byte aligned inside the arena, which boot mapped read-write
    // and nothing uses before the pools are built; each word is restored below.
    let saved = words.map(|word| unsafe { word.read_volatile() });
    for (index, word) in words.iter().enumerate() {
        // SAFETY: as above.
        unsafe { word.write_volatile(0x5EA0_0000_0000_0000 | index as u64) };
    }
    for (index, word) in words.iter().enumerate() {
        // SAFETY: as above.
        let read = unsafe { word.read_volatile() };
        ensure!(read == 0x5EA0_0000_0000_0000 | index as u64, "{:#x} reads {read:#x}", addresses[index]);
        // SAFETY: as above.
        unsafe { word.write_volatile(saved[index]) };
    }
    boot::println!(
        "the arena runs on from {seam:#x} into the RAM at {:#x} ({} MiB above the seam): 4 words read back",
        info.plan.ram_map.high_base,
        (arena.end() - seam) / MIB
    );
}
