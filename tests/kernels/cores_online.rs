//! QEMU test: all four cores report in, run a job when their doorbell rings, and meet at the
//! barrier; then they park again and can be woken for a second job.

#![no_std]
#![no_main]

use boot::cpus::PiCpus;
use bsp::arch::aarch64::cpu;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::hil::Cpus;
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(info.cores_online == 4, "{} cores online", info.cores_online);
    let cpus = PiCpus::new(4);
    let seen = AtomicUsize::new(0);
    let phase_errors = AtomicUsize::new(0);
    let arrivals = AtomicUsize::new(0);
    for round in 0..3 {
        arrivals.store(0, Ordering::SeqCst);
        cpus.run_on_all(&|index| {
            if cpu::core_id() != index {
                phase_errors.fetch_add(1, Ordering::SeqCst);
            }
            seen.fetch_or(1 << index, Ordering::SeqCst);
            arrivals.fetch_add(1, Ordering::SeqCst);
            cpus.barrier();
            // After the barrier every core must have arrived.
            if arrivals.load(Ordering::SeqCst) != 4 {
                phase_errors.fetch_add(1, Ordering::SeqCst);
            }
            cpus.barrier();
        });
        ensure!(
            seen.load(Ordering::SeqCst) == 0b1111,
            "round {round}: cores seen {:#b}",
            seen.load(Ordering::SeqCst)
        );
        ensure!(phase_errors.load(Ordering::SeqCst) == 0, "round {round}: barrier or core id errors");
        seen.store(0, Ordering::SeqCst);
    }
    let two = PiCpus::new(2);
    two.run_on_all(&|index| {
        seen.fetch_or(1 << index, Ordering::SeqCst);
    });
    ensure!(seen.load(Ordering::SeqCst) == 0b11, "a 2-core job ran on {:#b}", seen.load(Ordering::SeqCst));
    boot::println!("4 cores online; jobs and barriers ran on every core");
    pass()
}
