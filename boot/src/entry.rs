//! `_start`: the first instructions. Parks secondaries until released, drops EL3/EL2 to EL1,
//! enables FP/SIMD, sets each core's two stacks and the vector table, zeroes BSS (core 0), and
//! runs the boot stages in order: on core 0 the pre-MMU stage (`premmu::prepare_primary`), the
//! MMU switch (`premmu::enable_mmu`) and `start::boot_primary_after_mmu`; on a secondary the MMU switch
//! and `start::boot_secondary_after_mmu`. The cells it shares with Rust are in `handoff`.

use crate::handoff::{ENTRY_LEVEL, RELEASE};
use bsp::arch::aarch64::{
    cpu::CORE_COUNT,
    kernel_map::{CORE_STACKS_BYTES, CoreStacks, EXCEPTION_STACK_BYTES, GUARD_BYTES, THREAD_STACK_BYTES},
};
use core::mem::MaybeUninit;

/// Every core's stacks and guard pages. The `.stacks` section is never loaded or zeroed; only
/// `_start` touches this, by address.
#[used]
#[unsafe(link_section = ".stacks")]
static mut STACKS: MaybeUninit<[CoreStacks; CORE_COUNT]> = MaybeUninit::uninit();

/// Offset of the thread stack's top from the start of a core's stack area.
const THREAD_TOP: usize = GUARD_BYTES + THREAD_STACK_BYTES;
const _: () = assert!(CORE_STACKS_BYTES == THREAD_TOP + GUARD_BYTES + EXCEPTION_STACK_BYTES);

core::arch::global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mrs     x19, mpidr_el1
    and     x19, x19, #0xff             // x19 = core number
    mov     x20, x0                     // x20 = device tree pointer from firmware (core 0)
    mrs     x21, CurrentEL
    lsr     x21, x21, #2                // x21 = entry exception level
    cbz     x19, 2f

    // Secondary core: wait until core 0 has built the translation tables.
1:  adrp    x1, {release}
    add     x1, x1, :lo12:{release}
    ldr     w2, [x1]
    cbnz    w2, 3f
    wfe
    b       1b

2:  adrp    x1, {entry_level}
    add     x1, x1, :lo12:{entry_level}
    str     w21, [x1]

3:  cmp     x21, #3
    b.ne    4f
    // EL3 -> EL2: non-secure, AArch64 below, HVC enabled, SMC disabled.
    mov     x1, #0x5b1
    msr     scr_el3, x1
    mov     x1, #0x3c9                  // EL2h, interrupts masked
    msr     spsr_el3, x1
    adr     x1, 4f
    msr     elr_el3, x1
    eret

4:  mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.ne    5f
    // EL2 -> EL1: AArch64 EL1, counters readable from EL1, no FP/SIMD traps.
    mov     x1, #(1 << 31)
    msr     hcr_el2, x1
    mov     x1, #3
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    msr     hstr_el2, xzr
    mov     x1, #0x0800                 // SCTLR_EL1: RES1 bits, MMU and caches off
    movk    x1, #0x30d0, lsl #16
    msr     sctlr_el1, x1
    mov     x1, #0x3c5                  // EL1h, interrupts masked
    msr     spsr_el2, x1
    adr     x1, 5f
    msr     elr_el2, x1
    eret

5:  // EL1. FP/SIMD on before any Rust runs: rustc emits SIMD in ordinary code.
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    // This core's stack area: __stacks_start + core * CORE_STACKS_BYTES.
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    mov     x2, #({core_stacks} & 0xffff)
    movk    x2, #(({core_stacks} >> 16) & 0xffff), lsl #16
    madd    x1, x19, x2, x1
    add     x3, x1, x2                  // exception stack top = end of the area
    mov     sp, x3                      // SPSel = 1 here, so this sets SP_EL1
    mov     x2, #({thread_top} & 0xffff)
    movk    x2, #(({thread_top} >> 16) & 0xffff), lsl #16
    add     x2, x1, x2
    msr     sp_el0, x2
    msr     spsel, #0                   // threads run on SP_EL0; exceptions switch to SP_EL1
    adrp    x1, __exception_vectors
    add     x1, x1, :lo12:__exception_vectors
    msr     vbar_el1, x1
    isb
    cbnz    x19, 7f

    // Core 0: zero BSS, then enter Rust with the device tree pointer.
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
6:  cmp     x1, x2
    b.hs    8f
    stp     xzr, xzr, [x1], #16
    b       6b
8:  mov     x0, x20
    bl      {prepare}                   // pre-MMU stage: no locks, no atomics
    bl      {enable_mmu}
    bl      {primary}
    b       9f

7:  bl      {enable_mmu}
    mov     x0, x19
    bl      {secondary}
9:  wfe
    b       9b
"#,
    release = sym RELEASE,
    entry_level = sym ENTRY_LEVEL,
    core_stacks = const CORE_STACKS_BYTES,
    thread_top = const THREAD_TOP,
    prepare = sym crate::premmu::prepare_primary,
    enable_mmu = sym crate::premmu::enable_mmu,
    primary = sym crate::start::boot_primary_after_mmu,
    secondary = sym crate::start::boot_secondary_after_mmu,
);
