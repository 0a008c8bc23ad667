//! `Cpus`: the cores that work together on one job (the matmuls of a forward pass), what a run
//! reports when it loses a core, and the two rules an implementation needs for that: which core
//! runs which worker index ([`WorkerMap`]), and when a late core counts as hung ([`HangWatch`]).

use core::fmt;

/// The set of cores available for parallel work.
///
/// A run is a fork-join: every *worker* runs `job(worker)`, `worker` in `0..count()`, the caller
/// as worker 0, and the run ends when all of them have finished. Inside a job, `barrier` waits
/// until every worker of the run has reached it. Implementations allocate nothing per call, so a
/// run is cheap enough for every matmul.
///
/// **Losing a core.** A core other than the caller's can be lost during a run: it takes a CPU
/// exception, it panics, or it stops responding (it has not finished long after the caller
/// finished the same piece of work: see [`HangWatch`]). The implementation then:
/// - reports it on the console: which core, the exception or panic, and the last trace events,
///   and records an [`EventKind::CoreLost`](crate::telemetry::EventKind::CoreLost) trace event;
/// - never waits for it again: the run ends once the other workers have finished, and the
///   barrier drops the lost worker, so nobody waits for it there either;
/// - never gives it work again: from the end of that run, `count()` is the number of live cores,
///   and worker indices stay dense (`0..count()`), mapped onto the live cores.
///
/// A lost core's share of the run is incomplete. [`Cpus::try_run_on_all`] says so (it returns
/// the workers whose share was cut short, and the caller redoes those shares); [`Cpus::run_on_all`]
/// runs the whole job again over the cores left until a run completes. The caller's own core
/// cannot be lost: a fault or panic there stops the kernel.
pub trait Cpus: Sync {
    /// How many workers a run has (1 to 4 on a Pi): the live cores. It changes only at the end
    /// of a run that lost a core, never during one, so inside a job it is the current run's
    /// worker count.
    fn count(&self) -> usize;

    /// Runs `job(worker)` on every worker, `worker` in `0..count()`, the caller as worker 0,
    /// and returns when a run has completed on every worker.
    ///
    /// If a core is lost during a run, the job runs again over the cores left, with a smaller
    /// `count()` and fresh dense worker indices, until a run completes (each lost run loses a
    /// core, so this ends). So a job given here must be one that can run again: every run
    /// overwrites everything it produces, it depends only on its inputs, its worker index and
    /// `count()`, and no share keeps a lock that another run needs (a lost core never releases
    /// what it holds). A job that hands out pieces of its output through locks uses
    /// [`Cpus::try_run_on_all`] instead.
    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync));

    /// Runs `job` once, like [`Cpus::run_on_all`], and says whether every share completed.
    ///
    /// `Err` names the workers whose share was cut short because their core was lost; the run
    /// still ended, every other share finished, and the caller redoes the lost shares (core 0
    /// has the time) or runs the job again (over fewer workers: `count()` has dropped).
    ///
    /// Wrappers must forward this. The default, for implementations that never lose a core,
    /// runs [`Cpus::run_on_all`] and reports success.
    fn try_run_on_all(&self, job: &(dyn Fn(usize) + Sync)) -> Result<(), SharesLost> {
        self.run_on_all(job);
        Ok(())
    }

    /// Inside a job: blocks until every worker of the current run has called it. Every worker
    /// calls it the same number of times. A worker whose core is lost stops counting.
    fn barrier(&self);

    /// Called by core 0 between pieces of its share of a long job (every few dozen matrix
    /// rows), so the board can serve the console mid-job. Must return quickly; the default
    /// does nothing.
    fn checkpoint(&self) {}
}

/// A single core: runs jobs in place. Used on the host and for 1-core runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleCpu;

impl Cpus for SingleCpu {
    fn count(&self) -> usize {
        1
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        job(0);
    }

    fn barrier(&self) {}
}

/// Most workers a run can have (worker sets are `u32` masks).
pub const MAX_WORKERS: usize = 32;

/// The workers of a run whose share was cut short because their core was lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharesLost {
    workers: u32,
}

impl SharesLost {
    /// The workers whose bits are set in `mask` (bit `w` is worker `w`).
    pub const fn from_mask(mask: u32) -> Self {
        Self { workers: mask }
    }

    /// The workers as a mask.
    pub const fn mask(self) -> u32 {
        self.workers
    }

    /// Whether no share was lost.
    pub const fn is_empty(self) -> bool {
        self.workers == 0
    }

    /// How many shares were lost.
    pub const fn count(self) -> usize {
        self.workers.count_ones() as usize
    }

    /// Whether `worker`'s share was lost.
    pub fn contains(self, worker: usize) -> bool {
        worker < MAX_WORKERS && self.workers & 1 << worker != 0
    }

    /// The lost workers, lowest first.
    pub fn workers(self) -> impl Iterator<Item = usize> {
        (0..MAX_WORKERS).filter(move |&worker| self.contains(worker))
    }
}

impl fmt::Display for SharesLost {
    /// `the share of worker 2 was lost` / `the shares of workers 1, 3 were lost`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count() == 1 {
            formatter.write_str("the share of worker ")?;
        } else {
            formatter.write_str("the shares of workers ")?;
        }
        for (position, worker) in self.workers().enumerate() {
            if position > 0 {
                formatter.write_str(", ")?;
            }
            write!(formatter, "{worker}")?;
        }
        formatter.write_str(if self.count() == 1 { " was lost" } else { " were lost" })
    }
}

/// Which physical core runs each worker of one run.
///
/// Workers are dense (`0..count()`). Worker 0 is core 0, the caller; the other workers go to
/// the lowest-numbered live cores after it, in order. When fewer cores are live than the run
/// has workers (a core was lost between runs), the workers left over have no core: they are
/// [`WorkerMap::unmapped`], and the run reports their shares lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerMap {
    cores: [u8; MAX_WORKERS],
    count: u8,
    mapped: u8,
}

impl WorkerMap {
    /// Maps `workers` workers (at most [`MAX_WORKERS`]) onto the live cores `live` (bit `n` is
    /// core `n`; core 0, the caller, counts as live).
    pub fn new(workers: usize, live: u32) -> Self {
        let workers = workers.clamp(1, MAX_WORKERS);
        let mut cores = [0; MAX_WORKERS];
        let mut mapped = 0;
        for core in (0..MAX_WORKERS).filter(|&core| (live | 1) & 1 << core != 0).take(workers) {
            cores[mapped] = core as u8;
            mapped += 1;
        }
        Self { cores, count: workers as u8, mapped: mapped as u8 }
    }

    /// Workers in the run.
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// The core that runs `worker`, if it has one.
    pub fn core_of(&self, worker: usize) -> Option<usize> {
        (worker < usize::from(self.mapped)).then(|| usize::from(self.cores[worker]))
    }

    /// The worker `core` runs, if it runs one.
    pub fn worker_of(&self, core: usize) -> Option<usize> {
        self.cores[..usize::from(self.mapped)].iter().position(|&mapped| usize::from(mapped) == core)
    }

    /// The cores that run a worker, as a mask.
    pub fn cores(&self) -> u32 {
        self.cores[..usize::from(self.mapped)].iter().fold(0, |mask, &core| mask | 1 << core)
    }

    /// The workers that run on a core, as a mask.
    pub fn workers(&self) -> u32 {
        mask_below(usize::from(self.mapped))
    }

    /// The workers left without a core.
    pub fn unmapped(&self) -> SharesLost {
        SharesLost::from_mask(mask_below(self.count()) & !self.workers())
    }

    /// The workers that `cores` (a mask of cores) run.
    pub fn workers_on(&self, cores: u32) -> u32 {
        (0..usize::from(self.mapped))
            .filter(|&worker| cores & 1 << self.cores[worker] != 0)
            .fold(0, |mask, worker| mask | 1 << worker)
    }
}

/// The mask of workers `0..count`.
fn mask_below(count: usize) -> u32 {
    if count >= MAX_WORKERS { u32::MAX } else { (1 << count) - 1 }
}

/// The shortest time a worker may run on after core 0 has finished the same piece of a job,
/// before it counts as hung. Generous: a loaded host that deschedules an emulated core for a
/// while must never trip it.
pub const HANG_GRACE_MIN_NS: u64 = 4_000_000_000;

/// Beyond the minimum, a worker may take this many times core 0's own time for the piece.
pub const HANG_GRACE_FACTOR: u64 = 16;

/// How long a worker asked to stop has to answer (by stopping) before it is given up on.
pub const STOP_ANSWER_NS: u64 = 1_000_000_000;

/// What core 0 does about the workers still busy with the current piece of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchVerdict {
    /// Keep waiting.
    Wait,
    /// Their deadline has passed: ask them to stop (a doorbell a core with interrupts open
    /// answers at once, reporting where it was).
    AskToStop,
    /// They did not answer: give up on them and carry on without them.
    GiveUp,
}

/// The hang deadline of one run, as core 0 keeps it.
///
/// A run is a series of pieces separated by barriers. When core 0 finishes a piece (it reaches
/// a barrier, or the end of its share) at time `t`, having started it at `s`, the workers still
/// busy with that piece have until `t + max(HANG_GRACE_MIN_NS, HANG_GRACE_FACTOR * (t - s))`:
/// the deadline is relative to the work, never a fixed window. Past it, they are asked to stop;
/// [`STOP_ANSWER_NS`] later, they are given up on. Times are ticks of one clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HangWatch {
    frequency_hz: u64,
    piece_start: u64,
    /// When core 0 finished the piece, and the grace the others got from then.
    finished: Option<(u64, u64)>,
    asked_at: Option<u64>,
}

impl HangWatch {
    /// A watch for a run that starts at `now`, on a clock of `frequency_hz`.
    pub fn new(now: u64, frequency_hz: u64) -> Self {
        Self { frequency_hz, piece_start: now, finished: None, asked_at: None }
    }

    fn ticks(&self, ns: u64) -> u64 {
        u64::try_from(u128::from(ns) * u128::from(self.frequency_hz) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// Core 0 finished its part of the current piece at `now`: the deadline starts.
    pub fn piece_done(&mut self, now: u64) {
        let own = now.saturating_sub(self.piece_start);
        let grace = self.ticks(HANG_GRACE_MIN_NS).max(own.saturating_mul(HANG_GRACE_FACTOR));
        self.finished = Some((now, grace));
        self.asked_at = None;
    }

    /// Every worker passed the barrier at `now`: the next piece starts, with no deadline yet.
    pub fn next_piece(&mut self, now: u64) {
        *self = Self::new(now, self.frequency_hz);
    }

    /// The time the current piece's late workers got after core 0 finished it, in nanoseconds
    /// (once it has).
    pub fn grace_ns(&self) -> Option<u64> {
        let (_, grace) = self.finished?;
        Some(crate::hil::ticks_to_ns(grace, self.frequency_hz))
    }

    /// What to do about the late workers at `now`. `AskToStop` comes once per piece, then
    /// `Wait` until the answer time has passed, then `GiveUp` on every later call.
    pub fn poll(&mut self, now: u64) -> WatchVerdict {
        let Some((finished, grace)) = self.finished else { return WatchVerdict::Wait };
        if now < finished.saturating_add(grace) {
            return WatchVerdict::Wait;
        }
        match self.asked_at {
            None => {
                self.asked_at = Some(now);
                WatchVerdict::AskToStop
            }
            Some(asked) if now < asked.saturating_add(self.ticks(STOP_ANSWER_NS)) => WatchVerdict::Wait,
            Some(_) => WatchVerdict::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::{string::ToString, vec::Vec};
    use core::sync::atomic::{AtomicUsize, Ordering};
    use proptest::prelude::*;

    #[test]
    fn single_cpu_runs_job_once_as_core_zero() {
        let calls = AtomicUsize::new(0);
        let outcome = SingleCpu.try_run_on_all(&|core| {
            assert_eq!(core, 0);
            SingleCpu.barrier();
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(outcome, Ok(()));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn lost_shares_list_their_workers() {
        let lost = SharesLost::from_mask(0b1010);
        assert_eq!(lost.workers().collect::<Vec<_>>(), [1, 3]);
        assert!(lost.contains(3) && !lost.contains(2) && !lost.contains(40));
        assert_eq!((lost.count(), lost.mask(), lost.is_empty()), (2, 0b1010, false));
        assert_eq!(lost.to_string(), "the shares of workers 1, 3 were lost");
        assert_eq!(SharesLost::from_mask(0b100).to_string(), "the share of worker 2 was lost");
        assert!(SharesLost::default().is_empty());
    }

    #[test]
    fn workers_stay_dense_over_the_live_cores() {
        let all = WorkerMap::new(4, 0b1111);
        assert_eq!(
            (0..4).map(|worker| all.core_of(worker)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(2), Some(3)]
        );
        // Core 2 lost: workers 0, 1, 2 run on cores 0, 1, 3.
        let three = WorkerMap::new(3, 0b1011);
        assert_eq!(three.count(), 3);
        assert_eq!(
            (0..3).map(|worker| three.core_of(worker)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(3)]
        );
        assert_eq!((three.worker_of(3), three.worker_of(2), three.core_of(3)), (Some(2), None, None));
        assert_eq!(
            (three.cores(), three.workers(), three.unmapped()),
            (0b1011, 0b111, SharesLost::default())
        );
        assert_eq!(three.workers_on(0b1000), 0b100);
        // A run planned for four whose core 2 died before it began: worker 3 has no core.
        let short = WorkerMap::new(4, 0b1011);
        assert_eq!((short.count(), short.core_of(2), short.core_of(3)), (4, Some(3), None));
        assert_eq!(short.unmapped(), SharesLost::from_mask(0b1000));
        // Fewer workers than live cores take the lowest; core 0 is always worker 0.
        let two = WorkerMap::new(2, 0b1100);
        assert_eq!((two.core_of(0), two.core_of(1), two.cores()), (Some(0), Some(2), 0b101));
        assert_eq!(WorkerMap::new(0, 0).count(), 1, "a run has at least the caller");
    }

    proptest! {
        #[test]
        fn every_worker_maps_to_a_distinct_live_core(workers in 1usize..=8, live in any::<u8>()) {
            let live = u32::from(live) | 1;
            let map = WorkerMap::new(workers, live);
            let mapped = workers.min(live.count_ones() as usize);
            prop_assert_eq!(map.count(), workers);
            prop_assert_eq!(map.cores().count_ones() as usize, mapped);
            prop_assert_eq!(map.cores() & !live, 0, "only live cores");
            prop_assert_eq!(map.core_of(0), Some(0));
            let mut previous = None;
            for worker in 0..workers {
                match map.core_of(worker) {
                    Some(core) => {
                        prop_assert!(previous < Some(core), "in core order");
                        prop_assert_eq!(map.worker_of(core), Some(worker));
                        previous = Some(core);
                    }
                    None => prop_assert!(map.unmapped().contains(worker)),
                }
            }
            prop_assert_eq!(map.unmapped().count(), workers - mapped);
        }
    }

    const HZ: u64 = 62_500_000;

    #[test]
    fn the_deadline_waits_for_core_zero_then_asks_then_gives_up() {
        let mut watch = HangWatch::new(1_000, HZ);
        assert_eq!(watch.poll(u64::MAX), WatchVerdict::Wait, "no deadline before core 0 finishes");
        assert_eq!(watch.grace_ns(), None);
        // Core 0 took 1 ms: the minimum grace (4 s) applies.
        let done = 1_000 + HZ / 1000;
        watch.piece_done(done);
        let deadline = done + 4 * HZ;
        assert_eq!(watch.grace_ns(), Some(4_000_000_000));
        assert_eq!(watch.poll(deadline - 1), WatchVerdict::Wait);
        assert_eq!(watch.poll(deadline), WatchVerdict::AskToStop);
        assert_eq!(watch.poll(deadline + 1), WatchVerdict::Wait, "asked once");
        assert_eq!(watch.poll(deadline + HZ - 1), WatchVerdict::Wait, "time to answer");
        assert_eq!(watch.poll(deadline + HZ), WatchVerdict::GiveUp);
        assert_eq!(watch.poll(deadline + 2 * HZ), WatchVerdict::GiveUp);
        // After the barrier the next piece has no deadline until core 0 finishes it.
        watch.next_piece(deadline + 3 * HZ);
        assert_eq!(watch.poll(u64::MAX), WatchVerdict::Wait);
    }

    #[test]
    fn a_long_piece_gets_a_proportionally_long_grace() {
        let mut watch = HangWatch::new(0, HZ);
        // Core 0 took 1 s of work: others get 16 s, not 4.
        watch.piece_done(HZ);
        assert_eq!(watch.grace_ns(), Some(16_000_000_000));
        assert_eq!(watch.poll(HZ + 16 * HZ - 1), WatchVerdict::Wait);
        assert_eq!(watch.poll(HZ + 16 * HZ), WatchVerdict::AskToStop);
    }
}
