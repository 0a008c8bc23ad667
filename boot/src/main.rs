//! `kernel8`: the Tessera image the firmware (or QEMU) boots.

#![no_std]
#![no_main]

use boot::BootConfig;
use bsp::arch::aarch64::cpu;
use kernel::serve::{Platform, run};

boot::entry!(main, BootConfig { fixed_seed: None, semihosting: false });

fn main(info: &'static boot::BootInfo) -> ! {
    let memory =
        boot::memory::tensor_memory(info).unwrap_or_else(|error| halt("building the memory pools", error));
    let console = boot::console::start_interrupt_console(memory)
        .unwrap_or_else(|error| halt("starting the console", error));
    let platform = Platform { console };
    // Core 0 sleeps between received bytes: the UART interrupt wakes it.
    run(&platform, info, || boot::irq::idle_until(|| !console.ring().is_empty()))
}

fn halt(stage: &str, error: impl core::fmt::Display) -> ! {
    boot::println!("Tessera cannot start: {stage} failed: {error}");
    loop {
        cpu::wait_for_interrupt();
    }
}
