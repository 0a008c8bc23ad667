//! The four cores as a [`kernel::hil::Cpus`]: parked in `wfi`, woken by a BCM2836 mailbox
//! doorbell to run one job, then parked again.

use bsp::{
    arch::aarch64::cpu::{self, CORE_COUNT},
    board::rpi3::{local_interrupts::LocalInterrupts, memory_map},
};
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::{hil::Cpus, sync::SpinBarrier};
use spin::Mutex;

// SAFETY: the BCM2836 local block, mapped as device memory once the MMU is on (before any core
// parks or any job runs); see `LocalInterrupts::new` for why sharing it is sound.
static LOCAL: LocalInterrupts = unsafe { LocalInterrupts::new(memory_map::LOCAL_PERIPHERALS) };

type Job = &'static (dyn Fn(usize) + Sync);

/// The job being run, and the number of participants.
static CURRENT: Mutex<Option<(Job, usize)>> = Mutex::new(None);
/// Secondaries that have not finished the current job.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// One `run_on_all` at a time.
static RUN_LOCK: Mutex<()> = Mutex::new(());
static BARRIER: SpinBarrier = SpinBarrier::new(CORE_COUNT);

/// The first `count` cores (core 0, the caller, plus `count - 1` parked secondaries).
#[derive(Debug, Clone, Copy)]
pub struct PiCpus {
    count: usize,
}

impl PiCpus {
    /// Cores 0 to `count - 1`; `count` is clamped to 1..=4.
    pub fn new(count: usize) -> Self {
        Self { count: count.clamp(1, CORE_COUNT) }
    }
}

impl Cpus for PiCpus {
    fn count(&self) -> usize {
        self.count
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        let _exclusive = RUN_LOCK.lock();
        // SAFETY: the reference is only used by secondaries between here and the wait for
        // RUNNING to reach zero below, and `job` outlives this call.
        let job: Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        BARRIER.set_participants(self.count);
        RUNNING.store(self.count - 1, Ordering::Release);
        *CURRENT.lock() = Some((job, self.count));
        for core in 1..self.count {
            LOCAL.ring(core, 1);
        }
        job(0);
        while RUNNING.load(Ordering::Acquire) != 0 {
            cpu::wait_for_event();
        }
        *CURRENT.lock() = None;
    }

    fn barrier(&self) {
        if BARRIER.wait(cpu::wait_for_event) {
            cpu::send_event();
        }
    }
}

/// A secondary core's idle loop: sleep in `wfi` (interrupts stay masked; a pending doorbell
/// still ends the wait), run the job it was woken for, and sleep again.
pub fn park(core: usize) -> ! {
    LOCAL.enable_doorbell(core);
    loop {
        cpu::wait_for_interrupt();
        if LOCAL.take(core) == 0 {
            continue;
        }
        let current = *CURRENT.lock();
        if let Some((job, count)) = current
            && core < count
        {
            job(core);
            RUNNING.fetch_sub(1, Ordering::AcqRel);
            cpu::send_event();
        }
    }
}
