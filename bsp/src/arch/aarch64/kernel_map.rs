//! What boot maps: the kernel image in 4 KiB pages with W^X, per-core stacks between guard
//! pages, the typed RAM regions in 2 MiB blocks, and the board's MMIO windows.

#![forbid(unsafe_code)]

use super::{
    cpu::CORE_COUNT,
    translation::{Access, Mapping, MemoryType, PageSize},
};
use core::ops::Range;
use kernel::hil::boundary::{MemoryPlan, RegionKind};

/// Bytes of one guard page.
pub const GUARD_BYTES: usize = 4096;
/// Bytes of each core's thread stack (SP_EL0).
pub const THREAD_STACK_BYTES: usize = 256 * 1024;
/// Bytes of each core's exception stack (SP_EL1).
pub const EXCEPTION_STACK_BYTES: usize = 16 * 1024;

/// One core's stacks, in address order. Stacks grow down, so each guard page sits just
/// below the stack it protects and is left unmapped.
#[repr(C, align(4096))]
pub struct CoreStacks {
    /// Unmapped: catches thread stack overflow.
    pub thread_guard: [u8; GUARD_BYTES],
    /// The thread stack.
    pub thread: [u8; THREAD_STACK_BYTES],
    /// Unmapped: catches exception stack overflow.
    pub exception_guard: [u8; GUARD_BYTES],
    /// The exception stack.
    pub exception: [u8; EXCEPTION_STACK_BYTES],
}

/// Bytes of one core's stacks.
pub const CORE_STACKS_BYTES: usize = size_of::<CoreStacks>();

/// Which part of a core's stack area an address is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackPart {
    /// The guard page below the thread stack.
    ThreadGuard,
    /// The thread stack.
    Thread,
    /// The guard page below the exception stack.
    ExceptionGuard,
    /// The exception stack.
    Exception,
}

/// The kernel image's sections, from the linker script's symbols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// `.text`: read and execute.
    pub text: Range<u64>,
    /// `.rodata`: read only.
    pub rodata: Range<u64>,
    /// `.data` and `.bss` (including the page tables): read and write.
    pub data: Range<u64>,
    /// Start of the per-core stacks ([`CORE_COUNT`] × [`CoreStacks`]).
    pub stacks: u64,
}

impl KernelImage {
    /// The first byte after the image and its stacks.
    pub fn end(&self) -> u64 {
        self.stacks + (CORE_COUNT * CORE_STACKS_BYTES) as u64
    }

    /// Top of `core`'s thread stack (the initial SP_EL0).
    pub fn thread_stack_top(&self, core: usize) -> u64 {
        self.core_stacks(core) + (GUARD_BYTES + THREAD_STACK_BYTES) as u64
    }

    /// Top of `core`'s exception stack (the initial SP_EL1).
    pub fn exception_stack_top(&self, core: usize) -> u64 {
        self.core_stacks(core) + CORE_STACKS_BYTES as u64
    }

    fn core_stacks(&self, core: usize) -> u64 {
        self.stacks + (core * CORE_STACKS_BYTES) as u64
    }

    /// Which core's stack area holds `address`, and which part of it.
    pub fn stack_part(&self, address: u64) -> Option<(usize, StackPart)> {
        let offset = address.checked_sub(self.stacks)? as usize;
        let core = offset / CORE_STACKS_BYTES;
        if core >= CORE_COUNT {
            return None;
        }
        let part = match offset % CORE_STACKS_BYTES {
            within if within < GUARD_BYTES => StackPart::ThreadGuard,
            within if within < GUARD_BYTES + THREAD_STACK_BYTES => StackPart::Thread,
            within if within < 2 * GUARD_BYTES + THREAD_STACK_BYTES => StackPart::ExceptionGuard,
            _ => StackPart::Exception,
        };
        Some((core, part))
    }
}

/// A fixed-capacity list of mappings (no heap exists when it is built).
#[derive(Clone, Debug)]
pub struct MappingList {
    entries: [Mapping; 32],
    length: usize,
}

impl MappingList {
    fn push(&mut self, mapping: Mapping) {
        self.entries[self.length] = mapping;
        self.length += 1;
    }

    /// The mappings, in the order they were added.
    pub fn as_slice(&self) -> &[Mapping] {
        &self.entries[..self.length]
    }
}

fn page_run(name: &'static str, range: Range<u64>, access: Access) -> Mapping {
    Mapping {
        name,
        base: range.start,
        physical: range.start,
        size: range.end - range.start,
        memory: MemoryType::WriteBack,
        access,
        granule: PageSize::Size4KiB,
    }
}

/// Every mapping boot makes: kernel sections, stacks (guards left out), the plan's regions
/// except the kernel region itself (the part of one above the BCM2711's RAM hole, if any, as a
/// mapping of its own, "llm arena (high)"), and `devices`.
pub fn kernel_mappings(image: &KernelImage, plan: &MemoryPlan, devices: &[Mapping]) -> MappingList {
    let empty = page_run("", 0..0, Access::ReadOnly);
    let mut list = MappingList { entries: [empty; 32], length: 0 };
    list.push(page_run("kernel text", image.text.clone(), Access::ReadExecute));
    list.push(page_run("kernel rodata", image.rodata.clone(), Access::ReadOnly));
    list.push(page_run("kernel data+bss", image.data.clone(), Access::ReadWrite));
    const _: () = assert!(CORE_COUNT == 4, "one stack name per core");
    for core in 0..CORE_COUNT {
        let thread_top = image.thread_stack_top(core);
        let exception_top = image.exception_stack_top(core);
        list.push(page_run(
            ["core 0 stack", "core 1 stack", "core 2 stack", "core 3 stack"][core],
            thread_top - THREAD_STACK_BYTES as u64..thread_top,
            Access::ReadWrite,
        ));
        list.push(page_run(
            ["core 0 exc. stack", "core 1 exc. stack", "core 2 exc. stack", "core 3 exc. stack"][core],
            exception_top - EXCEPTION_STACK_BYTES as u64..exception_top,
            Access::ReadWrite,
        ));
    }
    for region in plan.regions.iter().filter(|region| region.kind != RegionKind::Kernel) {
        // Only the arena can cross into the high part (`MemoryPlan::across` keeps the fixed
        // regions low), so a high piece is always the arena's.
        let [low, high] = plan.ram_map.pieces(region.base, region.size);
        for ((base, size), name) in [(low, region.kind.name()), (high, "llm arena (high)")] {
            if size == 0 {
                continue;
            }
            list.push(Mapping {
                name,
                base,
                physical: plan.ram_map.physical(base),
                size,
                memory: if region.kind.cacheable() {
                    MemoryType::WriteBack
                } else {
                    MemoryType::NonCacheable
                },
                access: Access::ReadWrite,
                granule: PageSize::Size2MiB,
            });
        }
    }
    devices.iter().for_each(|device| list.push(*device));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::translation::TranslationTables;
    use kernel::hil::boundary::{Budget, MIB, RamMap};

    fn image() -> KernelImage {
        KernelImage {
            text: 0x8_0000..0x9_0000,
            rodata: 0x9_0000..0x9_4000,
            data: 0x9_4000..0xA_0000,
            stacks: 0xA_0000,
        }
    }

    #[test]
    fn stacks_have_guards_and_everything_maps() {
        let image = image();
        let budget = Budget::reserving(960 * MIB, 72 * MIB, 4 * MIB);
        let plan = MemoryPlan::new(960 * MIB, budget, image.end(), 3).unwrap();
        let device = Mapping {
            name: "mmio",
            base: 0x3F00_0000,
            physical: 0x3F00_0000,
            size: 0x100_0000,
            memory: MemoryType::Device,
            access: Access::ReadWrite,
            granule: PageSize::Size2MiB,
        };
        let list = kernel_mappings(&image, &plan, &[device]);
        let mut tables = Box::new(TranslationTables::<4>::new());
        tables.build(0x200_0000, list.as_slice()).unwrap();
        for core in 0..CORE_COUNT {
            let thread_top = image.thread_stack_top(core);
            assert!(tables.translate(0x200_0000, thread_top - 8).is_some());
            let guard = thread_top - (THREAD_STACK_BYTES + 1) as u64;
            assert_eq!(tables.translate(0x200_0000, guard), None, "thread guard of core {core}");
            assert_eq!(image.stack_part(guard), Some((core, StackPart::ThreadGuard)));
            let exception_guard = image.exception_stack_top(core) - (EXCEPTION_STACK_BYTES + 1) as u64;
            assert_eq!(tables.translate(0x200_0000, exception_guard), None);
            assert_eq!(image.stack_part(exception_guard), Some((core, StackPart::ExceptionGuard)));
        }
        assert_eq!(image.stack_part(image.end()), None);
        let dma = plan.region(RegionKind::Dma);
        assert_eq!(tables.translate(0x200_0000, dma.base).unwrap().memory, MemoryType::NonCacheable);
        let arena = plan.region(RegionKind::Arena);
        assert_eq!(tables.translate(0x200_0000, arena.end() - 1).unwrap().memory, MemoryType::WriteBack);
    }

    /// QEMU raspi4b's RAM: 960 MiB at 0 and 1 GiB at 1 GiB. The arena's part past 960 MiB is a
    /// mapping of its own onto the RAM at 1 GiB; nothing maps the hole's physical addresses.
    #[test]
    fn the_arena_above_the_hole_maps_to_the_high_ram() {
        let image = image();
        let ram_map = RamMap::with_high(960 * MIB, 1 << 30, 1 << 30);
        let budget = Budget::reserving(ram_map.total(), 96 * MIB, 4 * MIB);
        let plan = MemoryPlan::across(ram_map, budget, image.end(), 3).unwrap();
        let list = kernel_mappings(&image, &plan, &[]);
        let high: Vec<_> =
            list.as_slice().iter().filter(|mapping| mapping.base != mapping.physical).collect();
        assert_eq!(high.len(), 1);
        assert_eq!((high[0].name, high[0].base, high[0].physical), ("llm arena (high)", 960 * MIB, 1 << 30));
        let arena = plan.region(RegionKind::Arena);
        assert_eq!(high[0].size, arena.end() - 960 * MIB);
        let mut tables = Box::new(TranslationTables::<4>::new());
        tables.build(0x200_0000, list.as_slice()).unwrap();
        assert_eq!(tables.translate(0x200_0000, 960 * MIB - 8).unwrap().physical, 960 * MIB - 8);
        assert_eq!(tables.translate(0x200_0000, 960 * MIB).unwrap().physical, 1 << 30);
        assert_eq!(
            tables.translate(0x200_0000, arena.end() - 8).unwrap().physical,
            arena.end() - 8 + 64 * MIB
        );
        assert_eq!(tables.translate(0x200_0000, arena.end()), None, "the trailing slack is unmapped");
    }
}
