//! The panic handler: a panic on a secondary core retires that core (reported, and the others
//! carry on); a panic on core 0 is reported and stops the kernel.

use crate::{
    console, cpus,
    exception::{FixedText, write_recent_events},
    start,
};
use bsp::arch::aarch64::cpu;
use core::fmt::Write;
use kernel::telemetry::CoreLoss;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
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
