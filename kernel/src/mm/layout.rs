//! Memory layout policy: from detected RAM and the board's budget to typed regions.
//!
//! The plan is made once at boot, before the MMU is on, and is plain data from then on. All
//! regions are 2 MiB-aligned so they map as 2 MiB blocks, except the kernel image region,
//! which boot maps in 4 KiB pages.
//!
//! The board's budget fixes what is reserved: the system share (kernel, DMA, heap, the
//! small-object pool and at most [`MAX_SLACK`] of layout slack) and the protocol reserve.
//! Everything else is one LLM arena: the weights chunk allocator owns it and lends it in
//! [`SEGMENT`]s to the KV cache and the activations as they need it (see `mm::tensor`). The
//! arena starts at a random 2 MiB step inside the slack, so its addresses differ from boot to
//! boot unless the seed is fixed.
//!
//! ```text
//! 0 ─ kernel image, stacks, page tables (4 KiB pages, page 0 unmapped)
//!   ─ DMA (non-cacheable) ─ heap ─ protocol (RT pool) ─ small objects (slab)
//!   ─ [slack] LLM arena: weights, KV cache, activations [slack] ─ end of ARM RAM
//! ```

#![forbid(unsafe_code)]

use crate::rand::SplitMix64;
use core::fmt;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// The large mapping granule: every region boundary is a multiple of this.
pub const BLOCK: u64 = 2 * MIB;
/// The unit the arena lends to the KV cache and the activations.
pub const SEGMENT: u64 = BLOCK;
/// Size of the DMA region (mailbox buffers, DMA control blocks, staging buffers).
pub const DMA_BYTES: u64 = 2 * MIB;
/// Size of the small-object region (the slab caches' slabs).
pub const SMALL_BYTES: u64 = 16 * MIB;
/// Most RAM left unmapped to randomize where the arena starts.
pub const MAX_SLACK: u64 = 32 * MIB;
/// The heap's size before the metadata of the allocators that span the arena.
pub const HEAP_BASE_BYTES: u64 = 12 * MIB;

/// The heap for an arena of `arena` bytes: [`HEAP_BASE_BYTES`] for the kernel's own
/// bookkeeping, plus the metadata of the two buddy allocators that span the arena (the KV
/// cache's and the activations': 9 bytes per 4 KiB page each), in 2 MiB blocks.
pub fn heap_bytes_for(arena: u64) -> u64 {
    (HEAP_BASE_BYTES + arena / 4096 * 18).div_ceil(BLOCK) * BLOCK
}

/// The least system share that plans cleanly on `ram` bytes with a kernel image of up to
/// [`KERNEL_ALLOWANCE`]: the kernel, DMA, heap and small-object regions and the most slack.
pub fn system_need(ram: u64) -> u64 {
    KERNEL_ALLOWANCE + DMA_BYTES + heap_bytes_for(ram) + SMALL_BYTES + MAX_SLACK
}

/// Room for the kernel image, stacks and tables that [`system_need`] assumes.
pub const KERNEL_ALLOWANCE: u64 = 4 * MIB;

/// What a region of RAM is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionKind {
    /// Kernel image, per-core stacks and page tables.
    Kernel,
    /// Device-visible, non-cacheable buffers.
    Dma,
    /// The kernel's own heap (boot-time bookkeeping).
    Heap,
    /// Console protocol buffers (real-time pool), isolated from tensor pressure.
    Protocol,
    /// Small objects (slab caches).
    Small,
    /// The LLM arena: weights, and the KV cache and activations it lends memory to.
    Arena,
}

impl RegionKind {
    /// Every kind, in address order.
    pub const ALL: [RegionKind; 6] = [
        RegionKind::Kernel,
        RegionKind::Dma,
        RegionKind::Heap,
        RegionKind::Protocol,
        RegionKind::Small,
        RegionKind::Arena,
    ];

    /// A short lowercase name for tables.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Kernel => "kernel",
            RegionKind::Dma => "dma",
            RegionKind::Heap => "heap",
            RegionKind::Protocol => "protocol",
            RegionKind::Small => "small",
            RegionKind::Arena => "llm arena",
        }
    }

    /// Whether CPU caches may hold this region. Only DMA memory is uncached, so devices see
    /// what the CPU wrote without cache maintenance.
    pub fn cacheable(self) -> bool {
        self != RegionKind::Dma
    }

    /// Whether the region holds tensors and so gets a randomized start.
    pub fn is_tensor(self) -> bool {
        self == RegionKind::Arena
    }
}

/// A half-open physical address range `[base, base + size)` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// What the range is for.
    pub kind: RegionKind,
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `address` lies inside the region.
    pub fn contains(&self, address: u64) -> bool {
        (self.base..self.end()).contains(&address)
    }
}

/// How a board's RAM is divided: the LLM arena, the protocol reserve, and the system share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes for weights, KV cache and activations together (the arena, at least).
    pub llm: u64,
    /// Bytes reserved for the console protocol (RT pool).
    pub protocol: u64,
    /// Bytes for the kernel, DMA, heap, small objects and layout slack.
    pub system: u64,
}

impl Budget {
    /// The budget of `ram` bytes that reserves `system` and `protocol` bytes (each rounded up
    /// to [`BLOCK`]) and gives the rest to the LLM arena.
    pub fn reserving(ram: u64, system: u64, protocol: u64) -> Budget {
        let round = |bytes: u64| bytes.div_ceil(BLOCK) * BLOCK;
        let protocol = round(protocol);
        let llm = ram.saturating_sub(round(system) + protocol) / BLOCK * BLOCK;
        Budget { llm, protocol, system: ram.saturating_sub(llm + protocol) }
    }

    /// Total bytes the budget covers.
    pub fn total(&self) -> u64 {
        self.llm + self.protocol + self.system
    }
}

/// Where the plan's addresses are in physical memory.
///
/// A plan lays its regions over one run of addresses, `[0, total)`. On most boards that run is
/// the ARM RAM itself, at the same physical addresses. The BCM2711 has more RAM above a hole
/// (the VideoCore's share, just below 1 GiB): boot maps the plan's addresses from `low` on to
/// the RAM from `high_base` on, so the arena runs on across the hole as if RAM were one piece.
/// Only the CPU sees those addresses; nothing hands them to a device (the SD card is read by
/// the CPU, and the DMA region is in the low part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamMap {
    /// Bytes of RAM from physical address 0, mapped at the same addresses.
    pub low: u64,
    /// Physical address of the RAM above the hole.
    pub high_base: u64,
    /// Bytes of RAM there (0: none).
    pub high: u64,
}

impl RamMap {
    /// `ram` bytes from address 0 and nothing above a hole.
    pub const fn contiguous(ram: u64) -> RamMap {
        RamMap { low: ram, high_base: ram, high: 0 }
    }

    /// `low` bytes from address 0 and `high` bytes from `high_base` (2 MiB-aligned, above
    /// `low`). With a high part the low part is cut to whole blocks, so that the two meet on a
    /// block boundary, and the high part too.
    pub fn with_high(low: u64, high_base: u64, high: u64) -> RamMap {
        let high = high / BLOCK * BLOCK;
        if high == 0 {
            return RamMap::contiguous(low);
        }
        RamMap { low: low / BLOCK * BLOCK, high_base, high }
    }

    /// Bytes of RAM in all: the plan's addresses run from 0 to this.
    pub fn total(&self) -> u64 {
        self.low + self.high
    }

    /// The physical address behind the plan's address `address`.
    pub fn physical(&self, address: u64) -> u64 {
        if address < self.low { address } else { address - self.low + self.high_base }
    }

    /// The plan's range `[base, base + size)` cut where it crosses from the low part to the
    /// high: `(base, size)` pieces, each one run of physical memory (the second is empty when
    /// the range does not cross).
    pub fn pieces(&self, base: u64, size: u64) -> [(u64, u64); 2] {
        let end = base + size;
        if base < self.low && end > self.low {
            [(base, self.low - base), (self.low, end - self.low)]
        } else {
            [(base, size), (end, 0)]
        }
    }
}

/// Why no plan could be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The budget does not cover the detected RAM exactly.
    BudgetMismatch {
        /// Bytes the budget covers.
        budget: u64,
        /// Bytes of RAM detected.
        ram: u64,
    },
    /// The kernel, DMA region, heap and small objects do not fit in the system share.
    SystemShareTooSmall {
        /// Bytes they need.
        needed: u64,
        /// Bytes the system share has.
        available: u64,
    },
    /// The fixed regions run past the RAM that starts at address 0.
    LowRamTooSmall {
        /// Where they end.
        needed: u64,
        /// Bytes of RAM from address 0.
        available: u64,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::BudgetMismatch { budget, ram } => {
                write!(formatter, "budget covers {} MiB but RAM is {} MiB", budget / MIB, ram / MIB)
            }
            PlanError::SystemShareTooSmall { needed, available } => write!(
                formatter,
                "kernel, DMA, heap and small objects need {} MiB but the system share is {} MiB",
                needed.div_ceil(MIB),
                available / MIB
            ),
            PlanError::LowRamTooSmall { needed, available } => write!(
                formatter,
                "kernel, DMA, heap and small objects end at {} MiB but the RAM from address 0 ends at {} MiB",
                needed.div_ceil(MIB),
                available / MIB
            ),
        }
    }
}

/// The typed regions of RAM, in address order, plus the facts they were made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The regions, one per [`RegionKind`], in the order of [`RegionKind::ALL`].
    pub regions: [Region; 6],
    /// The ARM RAM detected, and where the plan's addresses are in it.
    pub ram_map: RamMap,
    /// The budget the plan follows.
    pub budget: Budget,
    /// The seed that placed the arena.
    pub seed: u64,
}

impl MemoryPlan {
    /// Plans the regions of `ram` bytes of RAM starting at address 0, whose first
    /// `kernel_end` bytes hold the kernel image. `seed` places the arena.
    ///
    /// The fixed regions come first; the system share's remainder is slack, of which at most
    /// [`MAX_SLACK`] stays unmapped (the rest joins the arena), and the arena starts at a
    /// random 2 MiB step inside it.
    pub fn new(ram: u64, budget: Budget, kernel_end: u64, seed: u64) -> Result<MemoryPlan, PlanError> {
        if budget.total() != ram {
            return Err(PlanError::BudgetMismatch { budget: budget.total(), ram });
        }
        let kernel_size = kernel_end.div_ceil(BLOCK) * BLOCK;
        // The heap is sized for the largest arena the plan could make.
        let heap =
            heap_bytes_for(ram.saturating_sub(kernel_size + DMA_BYTES + SMALL_BYTES + budget.protocol));
        let fixed = kernel_size + DMA_BYTES + heap + SMALL_BYTES;
        if fixed > budget.system {
            return Err(PlanError::SystemShareTooSmall { needed: fixed, available: budget.system });
        }
        let slack = (budget.system - fixed).min(MAX_SLACK) / BLOCK * BLOCK;
        let arena = ram - fixed - budget.protocol - slack;

        let mut regions = [Region { kind: RegionKind::Kernel, base: 0, size: kernel_size }; 6];
        let mut cursor = kernel_size;
        for (slot, (kind, size)) in regions[1..5].iter_mut().zip([
            (RegionKind::Dma, DMA_BYTES),
            (RegionKind::Heap, heap),
            (RegionKind::Protocol, budget.protocol),
            (RegionKind::Small, SMALL_BYTES),
        ]) {
            *slot = Region { kind, base: cursor, size };
            cursor += size;
        }
        let offset = SplitMix64::new(seed).below(slack / BLOCK + 1) * BLOCK;
        regions[5] = Region { kind: RegionKind::Arena, base: cursor + offset, size: arena };
        Ok(MemoryPlan { regions, ram_map: RamMap::contiguous(ram), budget, seed })
    }

    /// Plans the regions over the RAM of `ram_map` as [`MemoryPlan::new`] does over its total.
    /// The fixed regions must fit in the low part (where the kernel image is); the arena may
    /// run on into the high part.
    pub fn across(
        ram_map: RamMap,
        budget: Budget,
        kernel_end: u64,
        seed: u64,
    ) -> Result<MemoryPlan, PlanError> {
        let plan = MemoryPlan::new(ram_map.total(), budget, kernel_end, seed)?;
        let fixed_end = plan.region(RegionKind::Small).end();
        if fixed_end > ram_map.low {
            return Err(PlanError::LowRamTooSmall { needed: fixed_end, available: ram_map.low });
        }
        Ok(MemoryPlan { ram_map, ..plan })
    }

    /// The region of `kind`.
    pub fn region(&self, kind: RegionKind) -> Region {
        self.regions[kind as usize]
    }

    /// Bytes of ARM RAM detected: the plan's addresses run from 0 to this.
    pub fn ram(&self) -> u64 {
        self.ram_map.total()
    }

    /// Bytes of RAM that belong to no region.
    pub fn slack(&self) -> u64 {
        self.ram() - self.regions.iter().map(|region| region.size).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Pi 3 row: 72 MiB of system share and 6 MiB of protocol reserve.
    fn pi3(ram: u64) -> Budget {
        Budget::reserving(ram, 72 * MIB, 6 * MIB)
    }

    fn check_plan(plan: &MemoryPlan, kernel_end: u64) {
        let mut previous_end = 0;
        for (region, kind) in plan.regions.iter().zip(RegionKind::ALL) {
            assert_eq!(region.kind, kind);
            assert_eq!(region.base % BLOCK, 0, "{kind:?} base aligned");
            assert_eq!(region.size % BLOCK, 0, "{kind:?} size aligned");
            assert!(region.base >= previous_end, "{kind:?} overlaps its predecessor");
            previous_end = region.end();
        }
        assert!(previous_end <= plan.ram(), "plan runs past RAM");
        assert!(plan.region(RegionKind::Kernel).end() >= kernel_end);
        assert_eq!(plan.region(RegionKind::Protocol).size, plan.budget.protocol);
        assert!(plan.region(RegionKind::Arena).size >= plan.budget.llm, "the arena has the LLM budget");
        assert!(
            plan.slack() <= MAX_SLACK,
            "at most {} MiB unmapped, not {}",
            MAX_SLACK / MIB,
            plan.slack() / MIB
        );
        assert!(plan.region(RegionKind::Heap).size >= heap_bytes_for(plan.region(RegionKind::Arena).size));
    }

    #[test]
    fn qemu_raspi3b_plan() {
        let ram = 960 * MIB;
        let budget = pi3(ram);
        assert_eq!(budget.total(), ram);
        assert_eq!((budget.llm, budget.protocol, budget.system), (882 * MIB, 6 * MIB, 72 * MIB));
        let plan = MemoryPlan::new(ram, budget, 0x1A_0000, 42).unwrap();
        check_plan(&plan, 0x1A_0000);
        assert_eq!(plan.region(RegionKind::Dma).base, 2 * MIB);
        assert_eq!(plan.region(RegionKind::Heap).size, 18 * MIB);
        assert!(plan.region(RegionKind::Arena).size >= 882 * MIB);
        assert!(plan.region(RegionKind::Arena).size * 10 >= ram * 9, "over 90% of RAM is the arena");
    }

    #[test]
    fn seed_moves_the_arena_only() {
        let budget = pi3(960 * MIB);
        let bases = |seed| {
            let plan = MemoryPlan::new(960 * MIB, budget, MIB, seed).unwrap();
            plan.regions.map(|region| region.base)
        };
        let distinct: std::collections::HashSet<_> = (0..64).map(bases).collect();
        assert!(distinct.len() > 8, "seeds give varied layouts ({})", distinct.len());
        assert!(distinct.iter().all(|b| b[..5] == bases(0)[..5]), "fixed regions never move");
    }

    /// QEMU raspi4b: 960 MiB from 0 (the mailbox's), 1 GiB from 1 GiB on (the revision's
    /// 2 GiB less the first). The arena runs on across the hole; everything else is low.
    #[test]
    fn the_arena_runs_on_across_the_hole() {
        let ram_map = RamMap::with_high(960 * MIB, 1 << 30, 1 << 30);
        assert_eq!(ram_map.total(), 1984 * MIB);
        let budget = Budget::reserving(ram_map.total(), 96 * MIB, 4 * MIB);
        let plan = MemoryPlan::across(ram_map, budget, 0x30_0000, 5).unwrap();
        check_plan(&plan, 0x30_0000);
        assert_eq!(plan.ram_map, ram_map);
        let arena = plan.region(RegionKind::Arena);
        assert!(arena.base < ram_map.low && arena.end() > ram_map.low, "{arena:?}");
        assert_eq!(ram_map.physical(arena.base), arena.base);
        assert_eq!(ram_map.physical(960 * MIB), 1 << 30);
        assert_eq!(ram_map.physical(arena.end() - 1), arena.end() - 1 + 64 * MIB);
        let [low, high] = ram_map.pieces(arena.base, arena.size);
        assert_eq!(low, (arena.base, 960 * MIB - arena.base));
        assert_eq!(high, (960 * MIB, arena.end() - 960 * MIB));
        assert_eq!(ram_map.pieces(0x20_0000, 0x20_0000), [(0x20_0000, 0x20_0000), (0x40_0000, 0)]);
        // A low part that is not whole blocks is cut to them when a high part follows it.
        assert_eq!(
            RamMap::with_high(949 * MIB, 1 << 30, 3 * MIB),
            RamMap { low: 948 * MIB, high_base: 1 << 30, high: 2 * MIB }
        );
        assert_eq!(RamMap::with_high(949 * MIB, 1 << 30, MIB), RamMap::contiguous(949 * MIB));
        // Fixed regions that would reach past the low part are refused.
        let small_low = RamMap::with_high(20 * MIB, 1 << 30, 1 << 30);
        let budget = Budget::reserving(small_low.total(), 96 * MIB, 4 * MIB);
        assert!(matches!(
            MemoryPlan::across(small_low, budget, 0x30_0000, 5),
            Err(PlanError::LowRamTooSmall { available, .. }) if available == 20 * MIB
        ));
    }

    #[test]
    fn errors_are_reported() {
        assert_eq!(
            MemoryPlan::new(960 * MIB, pi3(1024 * MIB), MIB, 0),
            Err(PlanError::BudgetMismatch { budget: 1024 * MIB, ram: 960 * MIB })
        );
        let tight = Budget { llm: 8 * MIB, protocol: 2 * MIB, system: 10 * MIB };
        assert!(matches!(
            MemoryPlan::new(20 * MIB, tight, MIB, 0),
            Err(PlanError::SystemShareTooSmall { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_budget_plans_cleanly(
            ram_blocks in 128u64..4096,
            system_blocks in 20u64..80,
            kernel_end in 0x8_0000u64..8 * MIB,
            seed in any::<u64>(),
        ) {
            let ram = ram_blocks * BLOCK;
            let budget = Budget::reserving(ram, system_blocks * BLOCK, 6 * MIB);
            prop_assert_eq!(budget.total(), ram);
            match MemoryPlan::new(ram, budget, kernel_end, seed) {
                Ok(plan) => check_plan(&plan, kernel_end),
                Err(PlanError::SystemShareTooSmall { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
