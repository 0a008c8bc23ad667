//! Helpers for the lost-core tests: a job that sums rows split by worker (with or without
//! barriers) into which a test injects a fault, a panic or a hang on one physical core, and a
//! look-up of the trace event a lost core leaves.

use alloc::vec::Vec;
use bsp::arch::aarch64::cpu;
use core::{
    hint::black_box,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};
use kernel::{
    hil::Cpus,
    telemetry::{CoreLoss, EventKind, TRACE},
};

/// Rows each sum covers.
pub const ROWS: usize = 12_000;

/// What goes wrong, on one core, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mishap {
    /// A read of an unmapped address (page 0): a data abort.
    DataAbort,
    /// An allocation far larger than the heap: a panic ("memory allocation of ... failed").
    Panic,
    /// Spins for ever with interrupts masked: only the deadline can catch it.
    HangMasked,
    /// Spins for ever with interrupts open: the stop doorbell ends it.
    HangOpen,
}

/// Where in the job the mishap strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// Before the core's partial sum, so the others wait for it at the first barrier.
    BeforeFirstBarrier,
    /// Between the two barriers, so the others wait for it at the second.
    BetweenBarriers,
}

/// A mishap on physical core `core` at `moment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// The physical core.
    pub core: usize,
    /// What happens.
    pub mishap: Mishap,
    /// When.
    pub moment: Moment,
}

/// What a summing job gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sum {
    /// The total the job computed.
    pub total: u64,
    /// The total computed on core 0 alone.
    pub expected: u64,
    /// The physical cores the completed run used, as a mask.
    pub cores: u32,
    /// Runs it took (more than one when a core was lost).
    pub runs: u32,
}

fn row_value(row: usize, seed: u64) -> u64 {
    (row as u64).wrapping_mul(2_654_435_761) ^ seed
}

/// Sums `row_value` over [`ROWS`] rows with `cpus.run_on_all`, split into one band per worker:
/// each worker stores its partial sum, then (with `barriers`) waits at a barrier, worker 0 adds
/// the partials, and all wait at a second barrier. Without barriers, core 0 adds the partials
/// after the run. `injection` strikes during the first run only, once every other worker has
/// reached the barrier (or the end of its share) that follows the moment: they are waiting for
/// the stricken core when it goes.
pub fn sum_rows(cpus: &dyn Cpus, seed: u64, barriers: bool, injection: Option<Injection>) -> Sum {
    let partial: [AtomicU64; 4] = Default::default();
    let ran_on: [AtomicUsize; 4] = Default::default();
    let total = AtomicU64::new(0);
    let runs = AtomicU32::new(0);
    // Workers that reached the first and the second barrier (or the end of their share).
    let reached: [AtomicUsize; 2] = Default::default();
    let armed = AtomicBool::new(injection.is_some());
    let strike = |moment: Moment, workers: usize| {
        if let Some(injection) = injection
            && injection.moment == moment
            && injection.core == cpu::core_id()
            && armed.swap(false, Ordering::SeqCst)
        {
            let point = &reached[usize::from(moment == Moment::BetweenBarriers)];
            while point.load(Ordering::SeqCst) < workers - 1 {
                core::hint::spin_loop();
            }
            suffer(injection.mishap);
        }
    };
    cpus.run_on_all(&|worker| {
        let workers = cpus.count();
        if worker == 0 {
            runs.fetch_add(1, Ordering::SeqCst);
        }
        ran_on[worker].store(cpu::core_id(), Ordering::SeqCst);
        strike(Moment::BeforeFirstBarrier, workers);
        let band = ROWS.div_ceil(workers);
        let rows = (worker * band).min(ROWS)..((worker + 1) * band).min(ROWS);
        let sum = rows.map(|row| row_value(row, seed)).fold(0u64, u64::wrapping_add);
        partial[worker].store(sum, Ordering::SeqCst);
        reached[0].fetch_add(1, Ordering::SeqCst);
        if barriers {
            cpus.barrier();
            strike(Moment::BetweenBarriers, workers);
            if worker == 0 {
                let sum = partial[..workers].iter().map(|partial| partial.load(Ordering::SeqCst));
                total.store(sum.fold(0, u64::wrapping_add), Ordering::SeqCst);
            }
            reached[1].fetch_add(1, Ordering::SeqCst);
            cpus.barrier();
        }
    });
    let workers = cpus.count();
    if !barriers {
        let sum = partial[..workers].iter().map(|partial| partial.load(Ordering::SeqCst));
        total.store(sum.fold(0, u64::wrapping_add), Ordering::SeqCst);
    }
    Sum {
        total: total.load(Ordering::SeqCst),
        expected: (0..ROWS).map(|row| row_value(row, seed)).fold(0, u64::wrapping_add),
        cores: ran_on[..workers].iter().fold(0, |mask, core| mask | 1 << core.load(Ordering::SeqCst)),
        runs: runs.load(Ordering::SeqCst),
    }
}

/// Makes `mishap` happen on this core.
pub fn suffer(mishap: Mishap) -> ! {
    match mishap {
        Mishap::DataAbort => {
            let value: u64;
            // SAFETY: deliberately reads page 0, which is unmapped: the load faults and the
            // fault handler retires this core, so execution never continues past it.
            unsafe {
                core::arch::asm!("mov {address}, #0x10", "ldr {value}, [{address}]", address = out(reg) _, value = out(reg) value)
            };
            panic!("reading address 0x10 returned {value:#x} instead of faulting")
        }
        Mishap::Panic => {
            let hoard: Vec<u8> = Vec::with_capacity(black_box(768 << 20));
            black_box(&hoard);
            panic!("an allocation of 768 MiB succeeded on a 16 MiB heap")
        }
        Mishap::HangMasked => {
            // SAFETY: masking interrupts touches no memory.
            unsafe { core::arch::asm!("msr daifset, #0xf", options(nostack)) };
            loop {
                core::hint::spin_loop();
            }
        }
        Mishap::HangOpen => {
            let never = AtomicBool::new(false);
            while !black_box(&never).load(Ordering::SeqCst) {
                core::hint::spin_loop();
            }
            panic!("a flag nobody sets was set")
        }
    }
}

/// Why the trace ring says `core` was lost, if it says so.
pub fn loss_recorded(core: usize) -> Option<CoreLoss> {
    TRACE.snapshot(TRACE.capacity()).iter().rev().find_map(|event| match event.kind {
        EventKind::CoreLost { core: lost, cause } if lost as usize == core => Some(cause),
        _ => None,
    })
}
