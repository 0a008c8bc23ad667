//! The four cores as a [`kernel::hil::Cpus`]: parked in `wfi`, woken by a doorbell (a BCM2836
//! core mailbox on the BCM2837, an SGI through the GIC-400 on the BCM2711) to run one share of a
//! job, then parked again; and what happens when one is lost to a fault, a panic or a hang: it
//! is reported and retired, and the others carry on.
//!
//! Core 0 joins a run on events: a secondary that finishes its share, or that dies (its fault or
//! panic handler retires it), sends one at once. The generic timer is only the backstop for a
//! secondary that stops responding: past the [`HangWatch`] deadline, core 0 rings the core's stop
//! doorbell (secondaries run their share with interrupts open, so a busy core answers by
//! retiring itself), and gives up on it if it does not answer.

use crate::{
    exception::{FixedText, write_recent_events},
    interrupts::doorbells,
};
use bsp::arch::aarch64::{
    cpu::{self, CORE_COUNT, SharedLock},
    timer::GenericTimer,
};
use core::{
    fmt::Write,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};
use kernel::{
    hil::{Clock, Cpus, HangWatch, STOP_ANSWER_NS, SharesLost, WatchVerdict, WorkerMap},
    sync::{CoreRoster, CoreState, SpinBarrier},
    telemetry::{CoreLoss, Duration, EventKind},
};
use spin::Mutex;

/// Doorbell bit: a share of a run is waiting (the roster says which run).
const RING_JOB: u32 = 1 << 0;
/// Doorbell bit: stop now, the deadline for the share has passed.
const RING_STOP: u32 = 1 << 1;
/// Doorbell bit: the barrier this core sleeps at has opened.
const RING_BARRIER: u32 = 1 << 2;

/// `wfe` rounds a secondary waits at a barrier before it sleeps in `wfi` instead. On a board
/// `wfe` sleeps until the opening core's event (or the 33 µs event stream), so this bounds the
/// wait without doorbells; under QEMU `wfe` returns at once, and a vCPU that kept polling would
/// take host time from the cores still working.
const BARRIER_SPINS: u32 = 64;

/// Secondaries asleep in `wfi` at a barrier: the core that opens it rings their doorbells.
static BARRIER_SLEEPERS: AtomicU32 = AtomicU32::new(0);

type Job = &'static (dyn Fn(usize) + Sync);

/// One run of a job: what secondaries read when their doorbell rings.
#[derive(Clone, Copy)]
struct Run {
    job: Job,
    generation: u64,
    map: WorkerMap,
}

/// The run in progress, if any. The woken secondaries all read it at once; a core waiting for
/// it yields, or under QEMU's `-icount` it could hold up the holder for tens of ms.
static CURRENT: SharedLock<Option<Run>> = SharedLock::new(None);
/// What each core is doing: ready, running a share of run N, or lost.
static ROSTER: CoreRoster<CORE_COUNT> = CoreRoster::new();
/// The live cores as of the end of the last run: what `count()` reports. Written as cores
/// report in at boot, then only by core 0 at the end of a run.
static SETTLED: AtomicU32 = AtomicU32::new(1);
/// Each core's worker index in the current run.
static WORKER: [AtomicUsize; CORE_COUNT] = [const { AtomicUsize::new(0) }; CORE_COUNT];
/// One run at a time; holds the number of the last run.
static RUN_LOCK: Mutex<u64> = Mutex::new(0);
static BARRIER: SpinBarrier = SpinBarrier::new(CORE_COUNT);

/// Core 0's watch over the run in progress (only core 0 touches it).
struct Watch {
    generation: u64,
    map: WorkerMap,
    hang: HangWatch,
}

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

/// Bytes of one lost core's report.
const REPORT_BYTES: usize = 4096;
/// Each core's loss report, written by the core itself as it retires (or by core 0 when it gives
/// up on it), printed by core 0.
static REPORTS: [Mutex<FixedText<REPORT_BYTES>>; CORE_COUNT] =
    [const { Mutex::new(FixedText::new()) }; CORE_COUNT];
/// Cores whose loss report has been printed.
static REPORTED: AtomicU32 = AtomicU32::new(0);
/// Cores that have begun retiring (a fault during the retirement does not start it again).
static RETIRING: AtomicU32 = AtomicU32::new(0);

/// Up to `count` cores: core 0 (the caller) and the lowest-numbered live secondaries.
#[derive(Debug, Clone, Copy)]
pub struct PiCpus {
    limit: usize,
}

impl PiCpus {
    /// At most `count` cores, `count` clamped to 1..=4.
    pub fn new(count: usize) -> Self {
        report_in(0);
        Self { limit: count.clamp(1, CORE_COUNT) }
    }
}

/// Counts `core` in as live and ready for jobs: each core calls it once as it comes online.
pub fn report_in(core: usize) {
    ROSTER.report_in(core);
    SETTLED.fetch_or(1 << core, Ordering::AcqRel);
}

/// The cores lost so far, as a mask (bit `n` is core `n`).
pub fn lost_cores() -> u32 {
    ROSTER.lost()
}

impl Cpus for PiCpus {
    fn count(&self) -> usize {
        ((SETTLED.load(Ordering::Acquire) | 1).count_ones() as usize).min(self.limit)
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        // Each failed run loses a core, and core 0 cannot be lost: at most three retries.
        while self.try_run_on_all(job).is_err() {}
    }

    fn try_run_on_all(&self, job: &(dyn Fn(usize) + Sync)) -> Result<(), SharesLost> {
        let mut last_run = RUN_LOCK.lock();
        print_loss_reports();
        *last_run += 1;
        let generation = *last_run;
        let map = WorkerMap::new(self.count(), ROSTER.live());
        // SAFETY: secondaries use the reference only while running their share of this run. The
        // join below returns once every started core has finished (it never calls the job again)
        // or is lost: a core lost to a fault, a panic or a stop doorbell stays parked in its
        // handler and never returns into the job; a core given up on after ignoring the stop
        // doorbell (interrupts masked) is presumed stuck for good (docs/BOOT.md).
        let job: Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
        *CURRENT.lock() = Some(Run { job, generation, map });
        let started = start_shares(generation, &map);
        let clock = GenericTimer;
        *WATCH.lock() =
            Some(Watch { generation, map, hang: HangWatch::new(clock.ticks(), clock.frequency_hz()) });
        job(0);
        join(generation, started);
        *WATCH.lock() = None;
        *CURRENT.lock() = None;
        let lost = map.unmapped().mask()
            | (map.workers() & !map.workers_on(started | 1))
            | map.workers_on(started & ROSTER.lost());
        SETTLED.store(ROSTER.live() | 1, Ordering::Release);
        print_loss_reports();
        if lost == 0 { Ok(()) } else { Err(SharesLost::from_mask(lost)) }
    }

    fn barrier(&self) {
        let core = cpu::core_id();
        let leader = if core == 0 {
            with_watch(|watch| watch.hang.piece_done(GenericTimer.ticks()));
            let leader = BARRIER.wait(0, || {
                cpu::wait_for_event();
                watch_barrier();
            });
            with_watch(|watch| watch.hang.next_piece(GenericTimer.ticks()));
            leader
        } else {
            // Read before arriving: the barrier cannot open without this core.
            let generation = BARRIER.generation();
            let mut spins = 0;
            BARRIER.wait(WORKER[core].load(Ordering::Acquire), || {
                if spins < BARRIER_SPINS {
                    spins += 1;
                    cpu::wait_for_event();
                } else {
                    sleep_at_barrier(core, generation);
                }
            })
        };
        if leader {
            wake_barrier();
        }
    }
}

/// After the barrier opened (a last arrival, or a departure that completed the set): wakes the
/// cores waiting at it, those in `wfe` by an event and those asleep in `wfi` by their doorbells.
fn wake_barrier() {
    cpu::send_event();
    let sleepers = BARRIER_SLEEPERS.load(Ordering::SeqCst);
    for sleeper in (1..CORE_COUNT).filter(|sleeper| sleepers & 1 << sleeper != 0) {
        doorbells().ring(sleeper, RING_BARRIER);
    }
}

/// Sleeps in `wfi` until the barrier passes `generation` (its opener rings this core's
/// doorbell) or another interrupt comes. Interrupts are masked from before the sleeper's mark
/// to after the sleep: a doorbell rung after the check stays pending and ends the `wfi` (then
/// the unmask takes it), and the opener, which reads the sleepers after moving the generation,
/// sees the mark of every core whose check saw the old one.
fn sleep_at_barrier(core: usize, generation: usize) {
    close_interrupts();
    BARRIER_SLEEPERS.fetch_or(1 << core, Ordering::SeqCst);
    if BARRIER.generation() == generation {
        cpu::wait_for_interrupt();
    }
    BARRIER_SLEEPERS.fetch_and(!(1 << core), Ordering::SeqCst);
    open_interrupts();
}

/// Hands each mapped secondary its share of run `generation` and rings its doorbell. Returns
/// the cores started; the barrier counts them and core 0.
fn start_shares(generation: u64, map: &WorkerMap) -> u32 {
    let mut started = 0;
    for worker in 1..map.count() {
        let Some(core) = map.core_of(worker) else { continue };
        WORKER[core].store(worker, Ordering::Release);
        if ROSTER.start(core, generation) {
            started |= 1 << core;
        }
    }
    BARRIER.set_participant_mask(map.workers_on(started | 1));
    // The run, the roster and the barrier are visible before any doorbell rings.
    cpu::send_event();
    for core in (1..CORE_COUNT).filter(|core| started & 1 << core != 0) {
        doorbells().ring(core, RING_JOB);
    }
    started
}

/// Waits until every core in `cores` has finished its share of `generation` or is lost. Each
/// sends an event as it does; the hang watch covers a core that does neither.
fn join(generation: u64, cores: u32) {
    with_watch(|watch| watch.hang.piece_done(GenericTimer.ticks()));
    loop {
        let late = ROSTER.running(generation, cores);
        if late == 0 {
            return;
        }
        act_on_late(late);
        cpu::wait_for_event();
    }
}

/// Core 0 waits at a barrier: the late cores are the participants that have not arrived.
fn watch_barrier() {
    let (participants, arrived) = BARRIER.snapshot();
    // Core 0 (worker 0) is among the arrivals until the round opens and clears them.
    if arrived & 1 == 0 {
        return;
    }
    let late_workers = participants & !arrived;
    let late = with_watch(|watch| {
        let cores = (0..CORE_COUNT)
            .filter(|&core| watch.map.worker_of(core).is_some_and(|worker| late_workers & 1 << worker != 0))
            .fold(0, |mask, core| mask | 1 << core);
        ROSTER.running(watch.generation, cores)
    });
    if let Some(late) = late.filter(|&late| late != 0) {
        act_on_late(late);
    }
}

/// Applies the hang watch to the cores in `late`: asks them to stop once the deadline has
/// passed, and gives up on those that have not answered in time.
fn act_on_late(late: u32) {
    let Some((verdict, generation, map, grace_ns)) = with_watch(|watch| {
        let verdict = watch.hang.poll(GenericTimer.ticks());
        (verdict, watch.generation, watch.map, watch.hang.grace_ns().unwrap_or(0))
    }) else {
        return;
    };
    for core in (1..CORE_COUNT).filter(|core| late & 1 << core != 0) {
        match verdict {
            WatchVerdict::Wait => {}
            WatchVerdict::AskToStop => doorbells().ring(core, RING_STOP),
            WatchVerdict::GiveUp => give_up(core, generation, map.worker_of(core), grace_ns),
        }
    }
}

/// Runs `work` on core 0's watch of the current run, if there is one.
fn with_watch<T>(work: impl FnOnce(&mut Watch) -> T) -> Option<T> {
    WATCH.lock().as_mut().map(work)
}

/// Core 0 gives up on `core`, which neither finished its share of `generation` nor answered
/// the stop doorbell: it is lost, the barrier stops counting it, and its report says so.
fn give_up(core: usize, generation: u64, worker: Option<usize>, grace_ns: u64) {
    if !ROSTER.lose_if_running(core, generation) {
        return;
    }
    if let Some(worker) = worker
        && BARRIER.leave(worker)
    {
        wake_barrier();
    }
    kernel::telemetry::record(EventKind::CoreLost { core: core as u32, cause: CoreLoss::Hang });
    if let Some(mut text) = REPORTS[core].try_lock() {
        text.clear();
        let _ = write!(
            text,
            "\r\n*** core {core} stopped responding: its share was not done {} after core 0 finished \
             the same work, and it did not answer the stop doorbell within {} (interrupts masked?)\r\n",
            Duration(grace_ns),
            Duration(STOP_ANSWER_NS)
        );
        write_recent_events(&mut *text);
    }
    cpu::send_event();
}

/// Prints the report of every core lost since the last call (core 0, between runs).
fn print_loss_reports() {
    let fresh = ROSTER.lost() & !REPORTED.load(Ordering::Acquire);
    for core in (1..CORE_COUNT).filter(|core| fresh & 1 << core != 0) {
        REPORTED.fetch_or(1 << core, Ordering::AcqRel);
        match REPORTS[core].try_lock() {
            Some(text) => crate::print!("{}", text.as_str()),
            None => crate::println!("\r\n*** core {core} was lost (its report is still being written)"),
        }
        match ROSTER.live().count_ones() {
            1 => crate::println!("core {core} retired; core 0 carries on alone"),
            live => crate::println!("core {core} retired; {live} cores carry on"),
        }
    }
}

/// A secondary core's idle loop: sleep in `wfi` (interrupts stay masked; a pending doorbell
/// still ends the wait), run the share it was woken for, and sleep again.
pub fn park(core: usize) -> ! {
    doorbells().enable(core);
    loop {
        // Clear the doorbell before reading the roster: a ring that comes after the clear stays
        // pending and ends the next `wfi`, so no share is ever slept through.
        doorbells().take(core);
        device_barrier();
        match ROSTER.state(core) {
            CoreState::Running { generation } if run_share(core, generation) => {}
            CoreState::Lost => sleep_forever(core),
            _ => cpu::wait_for_interrupt(),
        }
    }
}

/// Runs this core's share of run `generation`, with interrupts open so the stop doorbell can
/// end it, then tells core 0. `false` if there was no such share to run.
fn run_share(core: usize, generation: u64) -> bool {
    let run = *CURRENT.lock();
    let Some(run) = run.filter(|run| run.generation == generation) else { return false };
    let Some(worker) = run.map.worker_of(core) else { return false };
    open_interrupts();
    (run.job)(worker);
    close_interrupts();
    if !ROSTER.finish(core, generation) {
        // Core 0 gave up on this core while it ran: it is out of every run from now on.
        sleep_forever(core);
    }
    cpu::send_event();
    true
}

/// The IRQ handler on a secondary core, which only its own doorbell reaches. The stop bit
/// retires the core where it was; anything else is dropped, with interrupts masked in the
/// interrupted code so it cannot fire again and again.
pub fn secondary_interrupt(return_address: u64, saved_state: &mut u64) {
    let core = cpu::core_id();
    let rung = doorbells().take(core);
    if rung & RING_STOP != 0 {
        retire(CoreLoss::Hang, |text| {
            let _ = write!(
                text,
                "\r\n*** core {core} stopped responding: core 0's deadline for its share passed; \
                 stopped by its doorbell at {return_address:#x}\r\n"
            );
        });
    }
    // A barrier bit is only a wake-up: the share goes on with interrupts open, so the stop
    // doorbell still reaches it.
    if rung & !RING_BARRIER == 0 {
        return;
    }
    // A job bit is only a wake-up (the idle loop reads the roster). SPSR_EL1.I: the
    // interrupted code resumes with IRQs masked.
    *saved_state |= 1 << 7;
}

/// Retires this (secondary) core after a fault, a panic or a stop: records a trace event,
/// writes its report (`describe`, then the last trace events) for core 0 to print, marks it
/// lost so no run waits for it or gives it work again, and parks it for good.
pub fn retire(cause: CoreLoss, describe: impl FnOnce(&mut dyn Write)) -> ! {
    close_interrupts();
    let core = cpu::core_id();
    let first = RETIRING.fetch_or(1 << core, Ordering::AcqRel) & 1 << core == 0;
    if first && ROSTER.state(core) != CoreState::Lost {
        kernel::telemetry::record(EventKind::CoreLost { core: core as u32, cause });
        if let Some(mut text) = REPORTS[core].try_lock() {
            text.clear();
            describe(&mut *text);
            write_recent_events(&mut *text);
        }
    }
    match ROSTER.lose(core) {
        Some(CoreState::Running { .. }) if BARRIER.leave(WORKER[core].load(Ordering::Acquire)) => {
            wake_barrier();
        }
        Some(CoreState::Running { .. }) => {}
        Some(_) => {
            // Lost between runs: no run will print this, so print it now.
            REPORTED.fetch_or(1 << core, Ordering::AcqRel);
            if let Some(text) = REPORTS[core].try_lock() {
                crate::console::write_unlocked(text.as_str().as_bytes());
            }
        }
        None => {}
    }
    cpu::send_event();
    sleep_forever(core)
}

/// A lost core's end: interrupts masked, doorbells cleared, asleep for good.
fn sleep_forever(core: usize) -> ! {
    close_interrupts();
    loop {
        doorbells().take(core);
        cpu::wait_for_interrupt();
    }
}

/// Unmasks IRQs on this secondary core.
fn open_interrupts() {
    // SAFETY: the vector table is in place from `_start`, and the only IRQ routed to a
    // secondary is its own doorbell, which `secondary_interrupt` handles. Changing the mask
    // touches no memory; without `nomem` the asm also keeps memory accesses on their side.
    unsafe { core::arch::asm!("msr daifclr, #2", options(nostack)) };
}

/// Masks IRQs and FIQs on this core.
fn close_interrupts() {
    // SAFETY: masking interrupts touches no memory and is always sound.
    unsafe { core::arch::asm!("msr daifset, #3", options(nostack)) };
}

/// Orders the doorbell's device access before the roster read that follows it.
fn device_barrier() {
    // SAFETY: a barrier instruction touches no memory.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
}
