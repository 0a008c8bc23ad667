//! Doorbells: how one core wakes another parked in `wfi` and tells it why (a few bits). On the
//! BCM2837 a doorbell is the target core's BCM2836 mailbox 0, whose bits the hardware ORs and
//! clears; on the BCM2711 it is a software-generated interrupt (SGI) through the GIC-400, with
//! the bits kept in memory beside it. Either way a rung doorbell is a pending interrupt on the
//! target core, which ends its `wfi` even with IRQs masked.

use super::{rpi3::local_interrupts::LocalInterrupts, rpi4::gic::Gic400};
use crate::arch::aarch64::cpu::CORE_COUNT;
use core::sync::atomic::{AtomicU32, Ordering};

/// The SGI that carries every doorbell on the BCM2711.
pub const DOORBELL_SGI: u32 = 0;

/// The cores' doorbells on one chip.
pub enum Doorbells {
    /// BCM2836 core mailboxes (BCM2837).
    Mailboxes(LocalInterrupts),
    /// SGIs through the GIC-400, with each core's rung bits (BCM2711).
    Sgis {
        /// The interrupt controller.
        gic: Gic400,
        /// Bits rung and not yet taken, per core.
        rung: [AtomicU32; CORE_COUNT],
    },
}

impl Doorbells {
    /// Doorbells through the BCM2836 local block's core mailboxes.
    pub const fn mailboxes(local: LocalInterrupts) -> Self {
        Doorbells::Mailboxes(local)
    }

    /// Doorbells through SGIs of `gic`.
    pub const fn sgis(gic: Gic400) -> Self {
        Doorbells::Sgis { gic, rung: [const { AtomicU32::new(0) }; CORE_COUNT] }
    }

    /// Lets `core`'s doorbell reach it (called by that core, once the MMU is on).
    pub fn enable(&self, core: usize) {
        match self {
            Doorbells::Mailboxes(local) => local.enable_doorbell(core),
            Doorbells::Sgis { gic, .. } => {
                // Idempotent: whichever core comes first turns the distributor on.
                gic.enable_distributor();
                gic.enable_this_core();
            }
        }
    }

    /// Rings `core`'s doorbell with the bits `value`.
    pub fn ring(&self, core: usize, value: u32) {
        match self {
            Doorbells::Mailboxes(local) => local.ring(core, value),
            Doorbells::Sgis { gic, rung } => {
                rung[core].fetch_or(value, Ordering::AcqRel);
                // The bits are visible before the interrupt that announces them.
                device_barrier();
                gic.raise_sgi(core, DOORBELL_SGI);
            }
        }
    }

    /// Takes the bits rung on this core (`core`) and clears its doorbell: the pending interrupt
    /// is acknowledged first, so a ring that comes after this leaves a new one pending.
    pub fn take(&self, core: usize) -> u32 {
        match self {
            Doorbells::Mailboxes(local) => local.take(core),
            Doorbells::Sgis { gic, rung } => {
                // Only SGIs are routed to a secondary; anything else acknowledged is ended too,
                // so it cannot hold the line. Bounded: at most one of each SGI per source core.
                for _ in 0..CORE_COUNT * 2 {
                    let Some(interrupt) = gic.acknowledge() else { break };
                    gic.end(interrupt);
                }
                rung[core].swap(0, Ordering::AcqRel)
            }
        }
    }
}

fn device_barrier() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a data synchronisation barrier touches no memory.
    unsafe {
        core::arch::asm!("dsb sy", options(nostack, preserves_flags))
    };
}
