//! QEMU test: the MMU and caches are on, and the live tables translate exactly as planned:
//! each mapping's first, middle and last page translate in hardware (`AT S1E1R`) and in the
//! software walk with the planned attributes, while page 0, stack guard pages, slack between
//! regions and VideoCore memory fault.

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
            let hardware = hardware_translate(address);
            ensure!(hardware == Some(address), "{} at {address:#x}: hardware gives {hardware:?}", entry.name);
            let software = tables.translate(root, address);
            ensure!(
                software.map(|t| (t.physical, t.memory, t.access)) == Some((address, memory, access)),
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

    let image = start::kernel_image();
    let mut holes = vec![0u64, 0xFF8, 0x7_F000, 0x3C00_0000, 0x3E00_0000, 0x8000_0000];
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
