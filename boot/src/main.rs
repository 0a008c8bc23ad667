//! `kernel8`: the Tessera image the firmware (or QEMU) boots: banner, memory pools,
//! interrupt-driven console, SD card, the default model, then the console server.

#![no_std]
#![no_main]

use boot::{BootConfig, cpus::PiCpus, storage};
use bsp::arch::aarch64::cpu;
use kernel::{
    hil::{BoardTelemetry, HeapStatistics},
    serve::server::Server,
};

boot::entry!(main, BootConfig { fixed_seed: None, semihosting: false });

/// Interrupt figures from boot's IRQ path.
struct Telemetry;

impl BoardTelemetry for Telemetry {
    fn interrupts(&self) -> (u64, u64) {
        let statistics = boot::irq::statistics();
        (statistics.handled, statistics.longest_unserviced_ns)
    }

    fn heap(&self) -> HeapStatistics {
        boot::heap::statistics()
    }
}

fn main(info: &'static boot::BootInfo) -> ! {
    boot::print!("{}", info.banner());
    let memory =
        boot::memory::backed_memory(info).unwrap_or_else(|error| halt("building the memory pools", error));
    let console = boot::console::start_interrupt_console(memory)
        .unwrap_or_else(|error| halt("starting the console", error));
    let volume = storage::mount_card(memory);
    if let Err(reason) = &volume {
        boot::println!("{reason}; serving without a card (commands still work)");
    }
    let cpus = PiCpus::new(info.cores_online);
    let mut server = Server::new(console, &storage::CLOCK, &cpus, memory, &Telemetry, info, volume);
    server.load_default();
    // Core 0 sleeps between received bytes: the UART interrupt wakes it.
    server.run(|| boot::irq::idle_until(|| !console.may_sleep()))
}

fn halt(stage: &str, error: impl core::fmt::Display) -> ! {
    boot::println!("Tessera cannot start: {stage} failed: {error}");
    loop {
        cpu::wait_for_interrupt();
    }
}
