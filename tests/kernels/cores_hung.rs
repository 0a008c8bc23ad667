//! QEMU test: secondary cores that stop responding are caught by the hang deadline, reported
//! and retired, and the kernel carries on with the cores left, with correct results.
//!
//! 1. Core 2 spins with interrupts masked before the first barrier of a summing job. Core 0,
//!    waiting at the barrier, gives up on it once the deadline and the time to answer the stop
//!    doorbell have passed; the job runs again over cores 0, 1, 3 and its sum is right.
//! 2. Core 3 spins with interrupts open in a job without barriers. Core 0, waiting for the run to
//!    end, rings its stop doorbell once the deadline passes; core 3 retires itself, saying where
//!    it was stopped; the job runs again over cores 0 and 1.

#![no_std]
#![no_main]

use boot::cpus::{PiCpus, lost_cores};
use kernel::{
    hil::{Clock, Cpus, HANG_GRACE_MIN_NS},
    telemetry::CoreLoss,
};
use systests::{
    TEST_CONFIG,
    cores::{Injection, Mishap, Moment, loss_recorded, sum_rows},
    ensure, pass,
};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(info.cores_online == 4, "{} cores online", info.cores_online);
    let cpus = PiCpus::new(4);
    let clock = bsp::arch::aarch64::timer::GenericTimer;

    let masked = Injection { core: 2, mishap: Mishap::HangMasked, moment: Moment::BeforeFirstBarrier };
    let start = clock.now_ns();
    let sum = sum_rows(&cpus, 5, true, Some(masked));
    let waited = clock.now_ns() - start;
    ensure!(sum.total == sum.expected, "sum {} after core 2 hung, expected {}", sum.total, sum.expected);
    ensure!(sum.runs == 2 && sum.cores == 0b1011, "after core 2 hung: {sum:?}");
    ensure!(waited >= HANG_GRACE_MIN_NS, "core 2 was given up on after {waited} ns, before its deadline");
    ensure!(
        cpus.count() == 3 && lost_cores() == 0b0100,
        "count {}, lost {:#06b}",
        cpus.count(),
        lost_cores()
    );
    ensure!(loss_recorded(2) == Some(CoreLoss::Hang), "trace ring: core 2 lost to {:?}", loss_recorded(2));
    boot::println!(
        "core 2 hung with interrupts masked: given up on at a barrier; sum right on cores 0, 1, 3"
    );

    let open = Injection { core: 3, mishap: Mishap::HangOpen, moment: Moment::BeforeFirstBarrier };
    let sum = sum_rows(&cpus, 6, false, Some(open));
    ensure!(sum.total == sum.expected, "sum {} after core 3 hung, expected {}", sum.total, sum.expected);
    ensure!(sum.runs == 2 && sum.cores == 0b0011, "after core 3 hung: {sum:?}");
    ensure!(
        cpus.count() == 2 && lost_cores() == 0b1100,
        "count {}, lost {:#06b}",
        cpus.count(),
        lost_cores()
    );
    ensure!(loss_recorded(3) == Some(CoreLoss::Hang), "trace ring: core 3 lost to {:?}", loss_recorded(3));
    let next = sum_rows(&cpus, 7, true, None);
    ensure!(next.total == next.expected && next.runs == 1 && next.cores == 0b0011, "the next job: {next:?}");
    boot::println!("core 3 hung with interrupts open: stopped by its doorbell; the next job ran on 2 cores");
    pass()
}
