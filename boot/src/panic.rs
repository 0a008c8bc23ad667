//! The panic handler: a panic on a secondary core retires that core (reported, and the others
//! carry on); a panic on core 0 is reported and stops the kernel; a panic before the MMU is on
//! is reported without locks and stops the kernel.

use crate::{
    console, cpus,
    exception::{FixedText, write_recent_events},
    premmu, start,
};
use bsp::arch::aarch64::cpu;
use core::fmt::Write;
use kernel::telemetry::CoreLoss;

/// Before the MMU is on, the report goes through the pre-MMU stage's lock-free console; after,
/// through [`panic_after_mmu`].
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !premmu::mmu_is_on() {
        premmu::report_panic(info);
    }
    panic_after_mmu(info)
}

/// The report once the MMU is on (locks, the trace ring, retiring a secondary). Its name ends
/// the pre-MMU check's walk (`premmu-check`): the panic handler reaches it only after finding
/// the MMU on.
#[inline(never)]
fn panic_after_mmu(info: &core::panic::PanicInfo<'_>) -> ! {
    let core = cpu::core_id();
    let describe = |text: &mut dyn Write| {
        let _ = write!(text, "\r\n*** kernel panic on core {core}: {}\r\n", info.message());
        if let Some(location) = info.location() {
            let _ = write!(text, "    at {location}\r\n");
        }
    };
    if core != 0 {
        cpus::retire(CoreLoss::Panic, describe);
    }
    let mut text = FixedText::<2048>::new();
    describe(&mut text);
    write_recent_events(&mut text);
    console::write_unlocked(text.as_str().as_bytes());
    start::stop(1)
}
