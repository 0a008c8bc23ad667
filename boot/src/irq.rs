//! Interrupts on core 0: the PL011 receive interrupt fills the console's receive ring (and
//! masks itself when the ring is full, leaving bytes in the UART), the transmit interrupt
//! empties its transmit ring into the UART, and the time interrupts stay unserviced is
//! measured.
//!
//! Core 0 runs with IRQs unmasked once [`enable_console_interrupts`] has run; the secondaries
//! keep them masked and only use the mailbox interrupt to leave `wfi`.

use bsp::{
    arch::aarch64::timer::GenericTimer,
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

/// IRQs handled.
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// IRQs that found the UART transmit interrupt pending.
static TRANSMIT_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// Longest time spent inside the IRQ handler (interrupts masked), in timer ticks.
static LONGEST_HANDLER_TICKS: AtomicU64 = AtomicU64::new(0);
/// Longest masked critical section on core 0, in timer ticks.
static LONGEST_MASKED_TICKS: AtomicU64 = AtomicU64::new(0);

/// What the interrupt path has measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqStatistics {
    /// IRQs handled on core 0.
    pub handled: u64,
    /// Of those, the ones the UART transmit interrupt raised.
    pub transmit: u64,
    /// Longest time interrupts stayed masked on core 0 (handler or critical section), in ns.
    pub longest_unserviced_ns: u64,
}

/// Routes the UART interrupt to core 0, unmasks the UART's receive interrupts (received bytes
/// go to the interrupt console's ring, which must be in place) and IRQs on this core (which
/// must be core 0).
pub fn enable_console_interrupts() {
    LOCAL.route_peripherals_to(0);
    crate::console::uart().enable_receive_interrupts();
    CONTROLLER.enable(PeripheralIrq::UART);
    // SAFETY: unmasking IRQs is sound once the vector table and handler are in place (they are
    // from `_start` on).
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
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

/// The IRQ handler, called from the exception vector with IRQs masked.
pub fn handle() {
    let start = GenericTimer.ticks();
    if LOCAL.irq_source(0) & SOURCE_PERIPHERAL != 0
        && CONTROLLER.is_pending(PeripheralIrq::UART)
        && let Some(console) = crate::console::interrupt_console()
    {
        // Takes nothing while receive is paused (its interrupts are masked then; this runs for
        // the transmit interrupt).
        console.receive_interrupt();
        if crate::console::uart().transmit_pending() {
            TRANSMIT_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
            console.transmit_interrupt();
        }
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    LONGEST_HANDLER_TICKS.fetch_max(GenericTimer.ticks() - start, Ordering::Relaxed);
}

/// What has been measured so far.
pub fn statistics() -> IrqStatistics {
    let ticks =
        LONGEST_HANDLER_TICKS.load(Ordering::Relaxed).max(LONGEST_MASKED_TICKS.load(Ordering::Relaxed));
    IrqStatistics {
        handled: HANDLED.load(Ordering::Relaxed),
        transmit: TRANSMIT_INTERRUPTS.load(Ordering::Relaxed),
        longest_unserviced_ns: kernel::hil::ticks_to_ns(ticks, GenericTimer.frequency_hz()),
    }
}

/// Sleeps in `wfi` until an interrupt, unless `ready` already holds. The check runs with IRQs
/// masked, so an interrupt that arrives between the check and `wfi` still ends the sleep (a
/// pending interrupt wakes `wfi` even while masked) instead of being slept through.
pub fn idle_until(ready: impl Fn() -> bool) {
    // SAFETY: masking IRQs has no memory effects; they are unmasked again below.
    unsafe { core::arch::asm!("msr daifset, #2", options(nostack)) };
    if !ready() {
        bsp::arch::aarch64::cpu::wait_for_interrupt();
    }
    // SAFETY: the handler is installed; the pending interrupt (if any) is taken here.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}
