//! Interrupt masking and routing on core 0, a leaf that the console and the IRQ handler both
//! use: masked critical sections (and the longest one measured), sleeping until an interrupt
//! without missing one, and routing the UART's interrupt to core 0.

use bsp::{
    arch::aarch64::{cpu, timer::GenericTimer},
    board::rpi3::{
        interrupt_controller::{InterruptController, PeripheralIrq},
        local_interrupts::{LocalInterrupts, SOURCE_PERIPHERAL},
        memory_map,
    },
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::hil::Clock;

// SAFETY: the BCM2835 interrupt controller block, mapped as device memory; see
// `InterruptController::new` for concurrent use.
static CONTROLLER: InterruptController =
    unsafe { InterruptController::new(memory_map::INTERRUPT_CONTROLLER) };
// SAFETY: the BCM2836 local block; boot's `cpus` module uses only per-core mailbox registers.
static LOCAL: LocalInterrupts = unsafe { LocalInterrupts::new(memory_map::LOCAL_PERIPHERALS) };

/// Longest masked critical section on core 0, in timer ticks.
static LONGEST_MASKED_TICKS: AtomicU64 = AtomicU64::new(0);

/// Routes the peripheral interrupts to core 0, enables the UART's line at the interrupt
/// controller and unmasks IRQs on this core (which must be core 0).
pub fn route_uart_to_core0() {
    LOCAL.route_peripherals_to(0);
    CONTROLLER.enable(PeripheralIrq::UART);
    // SAFETY: unmasking IRQs is sound once the vector table and handler are in place (they are
    // from `_start` on).
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}

/// Whether the pending IRQ on core 0 is the UART's.
pub fn uart_pending() -> bool {
    LOCAL.irq_source(0) & SOURCE_PERIPHERAL != 0 && CONTROLLER.is_pending(PeripheralIrq::UART)
}

/// Runs `work` with IRQs masked on this core and records how long they stayed masked.
pub fn without_interrupts<T>(work: impl FnOnce() -> T) -> T {
    let saved: u64;
    // SAFETY: reading and setting the interrupt mask has no memory effects.
    unsafe { core::arch::asm!("mrs {}, daif", "msr daifset, #2", out(reg) saved, options(nostack)) };
    let start = GenericTimer.ticks();
    let result = work();
    LONGEST_MASKED_TICKS.fetch_max(GenericTimer.ticks() - start, Ordering::Relaxed);
    // SAFETY: restores the mask saved above.
    unsafe { core::arch::asm!("msr daif, {}", in(reg) saved, options(nostack)) };
    result
}

/// The longest masked critical section so far, in timer ticks.
pub fn longest_masked_ticks() -> u64 {
    LONGEST_MASKED_TICKS.load(Ordering::Relaxed)
}

/// Sleeps in `wfi` until an interrupt, unless `ready` already holds. The check runs with IRQs
/// masked, so an interrupt that arrives between the check and `wfi` still ends the sleep (a
/// pending interrupt wakes `wfi` even while masked) instead of being slept through.
pub fn idle_until(ready: impl Fn() -> bool) {
    // SAFETY: masking IRQs has no memory effects; they are unmasked again below.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack)) };
    if !ready() {
        cpu::wait_for_interrupt();
    }
    // SAFETY: the handler is installed; the pending interrupt (if any) is taken here.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}
