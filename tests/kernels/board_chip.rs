//! QEMU test: the chip the cores say they belong to (MIDR) is the one the firmware's board
//! revision names; the generic timer has a frequency (CNTFRQ, or the chip's crystal rate when
//! the firmware left it at 0: 54 MHz on the BCM2711); and every core, woken by its doorbell (a
//! BCM2836 mailbox, or an SGI through the GIC-400), names the same chip.

#![no_std]
#![no_main]

use bsp::{
    arch::aarch64::{cpu, timer::GenericTimer},
    board::{budget::BoardModel, soc::Soc},
};
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::hil::{Clock, Cpus};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    let soc = Soc::current();
    let model = BoardModel::from_revision(info.board_revision);
    ensure!(
        model.soc() == Some(soc),
        "revision {:#x} names {model:?}, the cores a {soc:?}",
        info.board_revision
    );
    let frequency = GenericTimer.frequency_hz();
    boot::println!(
        "chip {} (MIDR {:#x}), board {}, generic timer {frequency} Hz",
        soc.name(),
        cpu::main_id(),
        model.name()
    );
    ensure!(frequency > 0, "the generic timer has no frequency");
    let cpus = boot::cpus::PiCpus::new(4);
    let agreeing = AtomicU32::new(0);
    cpus.run_on_all(&|_| {
        if Soc::current() == soc {
            agreeing.fetch_or(1 << cpu::core_id(), Ordering::Relaxed);
        }
    });
    let agreeing = agreeing.load(Ordering::Relaxed);
    ensure!(agreeing == 0b1111, "cores agreeing on the chip: {agreeing:#06b}");
    boot::println!("all 4 cores woke by doorbell and name the {}", soc.name());
    pass()
}
