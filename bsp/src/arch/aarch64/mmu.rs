//! Turning the MMU and caches on with a set of [`TranslationTables`](super::translation::TranslationTables).

/// TCR_EL1 for a 32-bit address space through TTBR0 with 4 KiB granules, write-back
/// inner-shareable table walks, and TTBR1 walks disabled.
pub const TCR_VALUE: u64 = 32 // T0SZ: 2^32 bytes
    | (0b01 << 8) // IRGN0: write-back, write-allocate
    | (0b01 << 10) // ORGN0: write-back, write-allocate
    | (0b11 << 12) // SH0: inner shareable
    | (1 << 23); // EPD1: no TTBR1 walks. TG0 = 0 (4 KiB) and IPS = 0 (32-bit PA).

/// Enables the MMU, data cache and instruction cache on this core, with the tables whose
/// level-1 table is at `root`.
///
/// # Safety
/// `root` must hold complete translation tables that identity-map the code being executed,
/// its stack, and everything it touches afterwards, with the attributes of [`MAIR_VALUE`](super::translation::MAIR_VALUE).
#[cfg(target_arch = "aarch64")]
pub unsafe fn enable(root: u64) {
    use super::translation::MAIR_VALUE;
    use aarch64_cpu::{asm::barrier, registers::*};
    use tock_registers::interfaces::{ReadWriteable, Writeable};

    MAIR_EL1.set(MAIR_VALUE);
    TCR_EL1.set(TCR_VALUE);
    TTBR0_EL1.set_baddr(root);
    barrier::dsb(barrier::ISHST);
    // SAFETY: invalidating every stage-1 EL1 TLB entry has no memory-safety effect.
    unsafe { core::arch::asm!("tlbi vmalle1", options(nostack)) };
    barrier::dsb(barrier::ISH);
    barrier::isb(barrier::SY);
    SCTLR_EL1.modify(SCTLR_EL1::M::Enable + SCTLR_EL1::C::Cacheable + SCTLR_EL1::I::Cacheable);
    barrier::isb(barrier::SY);
}

/// Translates `address` with the MMU itself (`AT S1E1R`), returning PAR_EL1's output address
/// or `None` on a fault. Used by tests to check the live tables.
#[cfg(target_arch = "aarch64")]
pub fn hardware_translate(address: u64) -> Option<u64> {
    use aarch64_cpu::{asm::barrier, registers::PAR_EL1};
    use tock_registers::interfaces::Readable;
    // SAFETY: an address translation instruction only writes PAR_EL1.
    unsafe { core::arch::asm!("at s1e1r, {}", in(reg) address, options(nostack)) };
    barrier::isb(barrier::SY);
    let par = PAR_EL1.get();
    (par & 1 == 0).then_some((par & 0x0000_FFFF_FFFF_F000) | (address & 0xFFF))
}
