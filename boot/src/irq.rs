//! Interrupts on core 0: the IRQ handler hands the UART's interrupt to the console
//! (`console::on_uart_interrupt`: the receive interrupt fills its receive ring, the transmit
//! interrupt empties its transmit ring), and the time interrupts stay unserviced is measured.
//!
//! Core 0 runs with IRQs unmasked once the interrupt console has started; the secondaries keep
//! them masked and only use the mailbox interrupt to leave `wfi`. Masking and routing are in the
//! leaf module `interrupts`, which the console uses too.

use crate::interrupts;
use bsp::arch::aarch64::timer::GenericTimer;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::hil::Clock;

pub use crate::interrupts::idle_until;

/// IRQs handled.
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Longest time spent inside the IRQ handler (interrupts masked), in timer ticks.
static LONGEST_HANDLER_TICKS: AtomicU64 = AtomicU64::new(0);

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

/// The IRQ handler, called from the exception vector with IRQs masked.
pub fn handle() {
    let start = GenericTimer.ticks();
    interrupts::dispatch(crate::console::on_uart_interrupt);
    HANDLED.fetch_add(1, Ordering::Relaxed);
    LONGEST_HANDLER_TICKS.fetch_max(GenericTimer.ticks() - start, Ordering::Relaxed);
}

/// What has been measured so far.
pub fn statistics() -> IrqStatistics {
    let ticks = LONGEST_HANDLER_TICKS.load(Ordering::Relaxed).max(interrupts::longest_masked_ticks());
    IrqStatistics {
        handled: HANDLED.load(Ordering::Relaxed),
        transmit: crate::console::transmit_interrupts(),
        longest_unserviced_ns: kernel::hil::ticks_to_ns(ticks, GenericTimer.frequency_hz()),
    }
}
