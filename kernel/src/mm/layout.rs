//! Memory layout policy: from detected RAM and the board's budget to typed regions.
//!
//! The plan is made once at boot, before the MMU is on, and is plain data from then on. All
//! regions are 2 MiB-aligned so they map as 2 MiB blocks, except the kernel image region,
//! which boot maps in 4 KiB pages. Tensor regions (weights, KV, activations) each start at a
//! random 2 MiB step inside their share of the slack, so no address is the same on two boots
//! unless the seed is.
//!
//! ```text
//! 0 ─ kernel image, stacks, page tables (4 KiB pages, page 0 unmapped)
//!   ─ DMA (non-cacheable) ─ heap ─ protocol (RT pool)
//!   ─ [slack] weights [slack] KV cache [slack] activations [slack] ─ end of ARM RAM
//! ```

#![forbid(unsafe_code)]

use crate::rand::SplitMix64;
use core::fmt;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// The large mapping granule: every region boundary is a multiple of this.
pub const BLOCK: u64 = 2 * MIB;
/// Size of the DMA region (mailbox buffers, DMA control blocks, staging buffers).
pub const DMA_BYTES: u64 = 2 * MIB;
/// Size of the kernel heap (`alloc` for the kernel's own small needs).
pub const HEAP_BYTES: u64 = 16 * MIB;

/// What a region of RAM is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionKind {
    /// Kernel image, per-core stacks and page tables.
    Kernel,
    /// Device-visible, non-cacheable buffers.
    Dma,
    /// The kernel's own heap.
    Heap,
    /// Console protocol buffers (real-time pool), isolated from tensor pressure.
    Protocol,
    /// Model weights (chunk allocator).
    Weights,
    /// KV cache blocks (buddy allocator).
    KvCache,
    /// Activations and scratch tensors (buddy allocator).
    Activations,
}

impl RegionKind {
    /// Every kind, in address order.
    pub const ALL: [RegionKind; 7] = [
        RegionKind::Kernel,
        RegionKind::Dma,
        RegionKind::Heap,
        RegionKind::Protocol,
        RegionKind::Weights,
        RegionKind::KvCache,
        RegionKind::Activations,
    ];

    /// A short lowercase name for tables.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Kernel => "kernel",
            RegionKind::Dma => "dma",
            RegionKind::Heap => "heap",
            RegionKind::Protocol => "protocol",
            RegionKind::Weights => "weights",
            RegionKind::KvCache => "kv-cache",
            RegionKind::Activations => "activations",
        }
    }

    /// Whether CPU caches may hold this region. Only DMA memory is uncached, so devices see
    /// what the CPU wrote without cache maintenance.
    pub fn cacheable(self) -> bool {
        self != RegionKind::Dma
    }

    /// Whether the region holds tensors and so gets a randomized start.
    pub fn is_tensor(self) -> bool {
        matches!(self, RegionKind::Weights | RegionKind::KvCache | RegionKind::Activations)
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

/// How a board's RAM is divided: LLM tensors, protocol reserve, and everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes for weights, KV cache and activations together.
    pub llm: u64,
    /// Bytes reserved for the console protocol (RT pool).
    pub protocol: u64,
    /// Bytes for the kernel, heap, DMA and slack.
    pub system: u64,
}

impl Budget {
    /// Total bytes the budget covers.
    pub fn total(&self) -> u64 {
        self.llm + self.protocol + self.system
    }

    /// Scales a budget written for `reference_ram` bytes to `detected_ram` bytes. LLM and
    /// protocol shares are rounded down to [`BLOCK`]; the system share takes the rest, so the
    /// result always sums to exactly `detected_ram`.
    pub fn scaled_to(&self, reference_ram: u64, detected_ram: u64) -> Budget {
        let scale = |bytes: u64| -> u64 {
            let exact = u128::from(bytes) * u128::from(detected_ram) / u128::from(reference_ram.max(1));
            (exact as u64) / BLOCK * BLOCK
        };
        let llm = scale(self.llm);
        let protocol = scale(self.protocol);
        Budget { llm, protocol, system: detected_ram.saturating_sub(llm + protocol) }
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
    /// The kernel, DMA region and heap do not fit in the system share.
    SystemShareTooSmall {
        /// Bytes they need.
        needed: u64,
        /// Bytes the system share has.
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
                "kernel, DMA and heap need {} MiB but the system share is {} MiB",
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
    pub regions: [Region; 7],
    /// Bytes of ARM RAM detected.
    pub ram: u64,
    /// The budget the plan follows.
    pub budget: Budget,
    /// The seed that placed the tensor regions.
    pub seed: u64,
}

impl MemoryPlan {
    /// Plans the regions of `ram` bytes of RAM starting at address 0, whose first
    /// `kernel_end` bytes hold the kernel image. `seed` places the tensor regions.
    pub fn new(ram: u64, budget: Budget, kernel_end: u64, seed: u64) -> Result<MemoryPlan, PlanError> {
        if budget.total() != ram {
            return Err(PlanError::BudgetMismatch { budget: budget.total(), ram });
        }
        let kernel_size = kernel_end.div_ceil(BLOCK) * BLOCK;
        let fixed = kernel_size + DMA_BYTES + HEAP_BYTES;
        if fixed > budget.system {
            return Err(PlanError::SystemShareTooSmall { needed: fixed, available: budget.system });
        }
        let weights = budget.llm / 2 / BLOCK * BLOCK;
        let kv_cache = budget.llm * 3 / 10 / BLOCK * BLOCK;
        let activations = budget.llm - weights - kv_cache;

        let mut regions = [Region { kind: RegionKind::Kernel, base: 0, size: kernel_size }; 7];
        let mut cursor = kernel_size;
        for (slot, (kind, size)) in regions[1..4].iter_mut().zip([
            (RegionKind::Dma, DMA_BYTES),
            (RegionKind::Heap, HEAP_BYTES),
            (RegionKind::Protocol, budget.protocol),
        ]) {
            *slot = Region { kind, base: cursor, size };
            cursor += size;
        }

        // What is left after the fixed regions and the tensors is slack, shared evenly among
        // the three tensor regions; each starts at a random block inside its share.
        let slack_blocks = (ram - cursor - budget.llm) / BLOCK;
        let share = slack_blocks / 3;
        let mut random = SplitMix64::new(seed);
        for (slot, (kind, size)) in regions[4..].iter_mut().zip([
            (RegionKind::Weights, weights),
            (RegionKind::KvCache, kv_cache),
            (RegionKind::Activations, activations),
        ]) {
            let offset = random.below(share + 1) * BLOCK;
            *slot = Region { kind, base: cursor + offset, size };
            cursor += size + share * BLOCK;
        }
        Ok(MemoryPlan { regions, ram, budget, seed })
    }

    /// The region of `kind`.
    pub fn region(&self, kind: RegionKind) -> Region {
        self.regions[kind as usize]
    }

    /// Bytes of RAM that belong to no region.
    pub fn slack(&self) -> u64 {
        self.ram - self.regions.iter().map(|region| region.size).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PI3_ROW: Budget = Budget { llm: 600 * MIB, protocol: 128 * MIB, system: 296 * MIB };

    fn check_plan(plan: &MemoryPlan, kernel_end: u64) {
        let mut previous_end = 0;
        for (region, kind) in plan.regions.iter().zip(RegionKind::ALL) {
            assert_eq!(region.kind, kind);
            assert_eq!(region.base % BLOCK, 0, "{kind:?} base aligned");
            assert_eq!(region.size % BLOCK, 0, "{kind:?} size aligned");
            assert!(region.base >= previous_end, "{kind:?} overlaps its predecessor");
            previous_end = region.end();
        }
        assert!(previous_end <= plan.ram, "plan runs past RAM");
        assert!(plan.region(RegionKind::Kernel).end() >= kernel_end);
        assert_eq!(plan.region(RegionKind::Protocol).size, plan.budget.protocol);
        let llm: u64 = plan.regions[4..].iter().map(|region| region.size).sum();
        assert_eq!(llm, plan.budget.llm, "tensor regions use the whole LLM budget");
    }

    #[test]
    fn qemu_raspi3b_plan() {
        let ram = 960 * MIB;
        let budget = PI3_ROW.scaled_to(1024 * MIB, ram);
        assert_eq!(budget.total(), ram);
        assert_eq!(budget.llm, 562 * MIB);
        assert_eq!(budget.protocol, 120 * MIB);
        let plan = MemoryPlan::new(ram, budget, 0x1A_0000, 42).unwrap();
        check_plan(&plan, 0x1A_0000);
        assert_eq!(plan.region(RegionKind::Dma).base, 2 * MIB);
        assert_eq!(plan.region(RegionKind::Weights).size, 280 * MIB);
    }

    #[test]
    fn seed_moves_tensor_regions_only() {
        let budget = PI3_ROW.scaled_to(1024 * MIB, 960 * MIB);
        let bases = |seed| {
            let plan = MemoryPlan::new(960 * MIB, budget, MIB, seed).unwrap();
            plan.regions.map(|region| region.base)
        };
        assert_eq!(bases(1), bases(1), "same seed, same layout");
        let distinct: std::collections::HashSet<_> = (0..16).map(bases).collect();
        assert!(distinct.len() > 8, "seeds give varied layouts");
        assert!(distinct.iter().all(|b| b[..4] == bases(0)[..4]), "fixed regions never move");
    }

    #[test]
    fn errors_are_reported() {
        let budget = PI3_ROW;
        assert_eq!(
            MemoryPlan::new(960 * MIB, budget, MIB, 0),
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
        fn any_scaled_budget_plans_cleanly(
            ram_blocks in 128u64..4096,
            kernel_end in 0x8_0000u64..8 * MIB,
            seed in any::<u64>(),
        ) {
            let ram = ram_blocks * BLOCK;
            let budget = PI3_ROW.scaled_to(1024 * MIB, ram);
            prop_assert_eq!(budget.total(), ram);
            match MemoryPlan::new(ram, budget, kernel_end, seed) {
                Ok(plan) => check_plan(&plan, kernel_end),
                Err(PlanError::SystemShareTooSmall { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
