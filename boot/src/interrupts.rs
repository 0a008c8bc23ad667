//! Interrupt masking and routing on core 0, a leaf that the console and the IRQ handler both
//! use: masked critical sections (and the longest one measured), sleeping until an interrupt
//! without missing one, routing the UART's interrupt to core 0 and finding it pending. On the
//! BCM2837 the UART's line goes through the BCM2835 interrupt controller and the BCM2836 local
//! routing; on the BCM2711 through the GIC-400, whose acknowledge/end pair brackets the handler.

use bsp::{
    arch::aarch64::{cpu, timer::GenericTimer},
    board::{
        doorbell::Doorbells,
        rpi3::{
            interrupt_controller::{InterruptController, PeripheralIrq},
            local_interrupts::{LocalInterrupts, SOURCE_PERIPHERAL},
        },
        rpi4::gic::{Gic400, UART_INTERRUPT},
        soc::{GicAddresses, Soc},
    },
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::hil::Clock;

// SAFETY: the BCM2835 interrupt controller block, mapped as device memory on the BCM2837; see
// `InterruptController::new` for concurrent use.
static CONTROLLER: InterruptController =
    unsafe { InterruptController::new(Soc::Bcm2837.map().interrupt_controller) };
// SAFETY: the BCM2836 local block on the BCM2837; the doorbells use only per-core mailbox
// registers, core 0 only the routing and its own source register.
static LOCAL: LocalInterrupts = unsafe { LocalInterrupts::new(Soc::Bcm2837.map().local_peripherals) };

/// The BCM2711's GIC-400.
const GIC: GicAddresses = match Soc::Bcm2711.map().gic {
    Some(gic) => gic,
    None => panic!("the BCM2711 has a GIC"),
};
// SAFETY: the GIC-400's blocks on the BCM2711; see `Gic400::new` for concurrent use.
static GIC_BCM2711: Gic400 = unsafe { Gic400::new(GIC.distributor, GIC.cpu_interface) };

// SAFETY: the same blocks as above, used only for the cores' doorbells (per-core registers and
// the write-only SGI register).
static DOORBELLS_BCM2837: Doorbells =
    Doorbells::mailboxes(unsafe { LocalInterrupts::new(Soc::Bcm2837.map().local_peripherals) });
// SAFETY: as above.
static DOORBELLS_BCM2711: Doorbells =
    Doorbells::sgis(unsafe { Gic400::new(GIC.distributor, GIC.cpu_interface) });

/// The cores' doorbells on this chip (`cpus` wakes and stops secondaries with them).
pub fn doorbells() -> &'static Doorbells {
    match Soc::current() {
        Soc::Bcm2837 => &DOORBELLS_BCM2837,
        Soc::Bcm2711 => &DOORBELLS_BCM2711,
    }
}

/// Longest masked critical section on core 0, in timer ticks.
static LONGEST_MASKED_TICKS: AtomicU64 = AtomicU64::new(0);

/// Routes the UART's interrupt to core 0 and enables it, and unmasks IRQs on this core (which
/// must be core 0).
pub fn route_uart_to_core0() {
    match Soc::current() {
        Soc::Bcm2837 => {
            LOCAL.route_peripherals_to(0);
            CONTROLLER.enable(PeripheralIrq::UART);
        }
        Soc::Bcm2711 => {
            GIC_BCM2711.enable_distributor();
            GIC_BCM2711.enable_this_core();
            GIC_BCM2711.route_to_core0(UART_INTERRUPT);
        }
    }
    // SAFETY: unmasking IRQs is sound once the vector table and handler are in place (they are
    // from `_start` on).
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}

/// Core 0's IRQ: runs `on_uart` if it is the UART's (on the BCM2711, between acknowledging the
/// interrupt and ending it; anything else acknowledged there is ended unhandled).
pub fn dispatch(on_uart: impl FnOnce()) {
    match Soc::current() {
        Soc::Bcm2837 => {
            if LOCAL.irq_source(0) & SOURCE_PERIPHERAL != 0 && CONTROLLER.is_pending(PeripheralIrq::UART) {
                on_uart();
            }
        }
        Soc::Bcm2711 => {
            if let Some(interrupt) = GIC_BCM2711.acknowledge() {
                if interrupt.id() == UART_INTERRUPT {
                    on_uart();
                }
                GIC_BCM2711.end(interrupt);
            }
        }
    }
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
