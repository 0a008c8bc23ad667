//! The panic handler: report the panic and the core, then stop.

use crate::{console, exception::FixedText, start};
use bsp::arch::aarch64::cpu;
use core::fmt::Write;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut text = FixedText::<1024>::new();
    let _ = write!(text, "\r\n*** kernel panic on core {}: {info}\r\n", cpu::core_id());
    console::write_unlocked(text.as_str().as_bytes());
    start::stop(1)
}
