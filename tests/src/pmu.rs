//! Counting instructions with the PMU's instructions-retired event (0x08), for the QEMU
//! benchmarks that run under `-icount shift=0` (the only mode where QEMU counts the event).

/// Reads event counter 0 (32 bits).
pub fn read_instructions() -> u32 {
    let count: u64;
    // SAFETY: reading the event counter has no side effects.
    unsafe { core::arch::asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) count, options(nostack)) };
    count as u32
}

/// Starts event counter 0 on instructions retired (event 0x08) at EL1. Returns false when the
/// event is not supported (QEMU without `-icount`).
pub fn start_counting() -> bool {
    let supported: u64;
    // SAFETY: PMU configuration registers; nothing else uses the PMU.
    unsafe {
        core::arch::asm!("mrs {}, pmceid0_el0", out(reg) supported, options(nostack));
        core::arch::asm!(
            "msr pmcntenclr_el0, {all}",
            "msr pmevtyper0_el0, {event}",
            "msr pmcr_el0, {control}",
            "msr pmcntenset_el0, {enable}",
            "isb",
            all = in(reg) u64::MAX,
            event = in(reg) 0x08u64,
            control = in(reg) 0x47u64,
            enable = in(reg) 1u64,
            options(nostack)
        );
    }
    supported & (1 << 8) != 0
}

/// Instructions `operation` takes, less the counter read's own one instruction. Good for
/// operations of fewer than 2^32 instructions.
pub fn count(operation: impl FnOnce()) -> u32 {
    let before = read_instructions();
    operation();
    read_instructions().wrapping_sub(before).saturating_sub(1)
}
