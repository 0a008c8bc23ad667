//! Synchronisation primitives shared by the board and the kernel: a reusable spin barrier that
//! participants can leave, and the roster of cores a fork-join runs on (which are live, which run
//! the current job, which were lost).

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Most participants a [`SpinBarrier`] or a [`CoreRoster`] tracks (one bit each in a `u32`).
pub const MAX_PARTICIPANTS: usize = 32;

/// The bit of `index` in a participant mask; 0 for an index beyond [`MAX_PARTICIPANTS`].
fn bit(index: usize) -> u32 {
    if index < MAX_PARTICIPANTS { 1 << index } else { 0 }
}

/// The mask of participants `0..count`.
fn first(count: usize) -> u32 {
    if count >= MAX_PARTICIPANTS { u32::MAX } else { (1 << count) - 1 }
}

/// A reusable barrier over a set of participants (worker `w` is bit `w`), built on a generation
/// counter, from which a participant can be removed while the others wait.
///
/// The participant set and the set that has arrived share one atomic word, so an arrival and a
/// departure always see each other: the barrier opens exactly when every remaining participant
/// has arrived, whichever of the two events completes the set. The last to arrive (or the one
/// whose departure completes the set) clears the arrivals and bumps the generation; the others
/// wait for the bump, calling `relax` (a `wfe`, or a spin hint on the host).
#[derive(Debug)]
pub struct SpinBarrier {
    /// Participants in the low 32 bits, arrivals of the current round in the high 32 bits.
    sets: AtomicU64,
    generation: AtomicUsize,
}

/// Packs a participant set and an arrival set into one word.
fn pack(participants: u32, arrived: u32) -> u64 {
    u64::from(participants) | u64::from(arrived) << 32
}

/// The participant set and the arrival set of a packed word.
fn unpack(sets: u64) -> (u32, u32) {
    (sets as u32, (sets >> 32) as u32)
}

impl SpinBarrier {
    /// A barrier for participants `0..participants`.
    pub const fn new(participants: usize) -> Self {
        let mask = if participants >= MAX_PARTICIPANTS { u32::MAX } else { (1 << participants) - 1 };
        Self { sets: AtomicU64::new(mask as u64), generation: AtomicUsize::new(0) }
    }

    /// Makes the participants `0..participants`, with nobody arrived. Only call while nobody is
    /// waiting (between jobs).
    pub fn set_participants(&self, participants: usize) {
        self.set_participant_mask(first(participants));
    }

    /// Makes the participants the set bits of `mask`, with nobody arrived. Only call while
    /// nobody is waiting.
    pub fn set_participant_mask(&self, mask: u32) {
        self.sets.store(pack(mask, 0), Ordering::Release);
    }

    /// The current participants, as a mask.
    pub fn participants(&self) -> u32 {
        unpack(self.sets.load(Ordering::Acquire)).0
    }

    /// The participants that have arrived in the current round, as a mask.
    pub fn arrived(&self) -> u32 {
        unpack(self.sets.load(Ordering::Acquire)).1
    }

    /// The number of rounds completed so far: a participant that has not arrived yet reads
    /// the number its coming wait will wait on.
    pub fn generation(&self) -> usize {
        self.generation.load(Ordering::SeqCst)
    }

    /// The participants and the arrivals, read together (one consistent view).
    pub fn snapshot(&self) -> (u32, u32) {
        unpack(self.sets.load(Ordering::Acquire))
    }

    /// Participant `worker` arrives and waits until every participant has. Returns `true` on
    /// exactly one participant per round (the one that completed it). A `worker` that is not a
    /// participant (it left, or never was one) passes straight through and gets `false`.
    pub fn wait(&self, worker: usize, mut relax: impl FnMut()) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        let mut sets = self.sets.load(Ordering::Acquire);
        loop {
            let (participants, arrived) = unpack(sets);
            if participants & bit(worker) == 0 {
                return false;
            }
            let arrived = arrived | bit(worker);
            let complete = arrived & participants == participants;
            let next = pack(participants, if complete { 0 } else { arrived });
            match self.sets.compare_exchange_weak(sets, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if complete => {
                    self.generation.fetch_add(1, Ordering::Release);
                    return true;
                }
                Ok(_) => break,
                Err(found) => sets = found,
            }
        }
        while self.generation.load(Ordering::Acquire) == generation {
            relax();
        }
        false
    }

    /// Removes participant `worker` (its core was lost). When every remaining participant has
    /// already arrived, this opens the barrier for them; returns `true` then. A `worker` that
    /// is not a participant changes nothing.
    pub fn leave(&self, worker: usize) -> bool {
        let mut sets = self.sets.load(Ordering::Acquire);
        loop {
            let (participants, arrived) = unpack(sets);
            if participants & bit(worker) == 0 {
                return false;
            }
            let participants = participants & !bit(worker);
            let arrived = arrived & !bit(worker);
            let complete = arrived != 0 && arrived & participants == participants;
            let next = pack(participants, if complete { 0 } else { arrived });
            match self.sets.compare_exchange_weak(sets, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if complete {
                        self.generation.fetch_add(1, Ordering::Release);
                    }
                    return complete;
                }
                Err(found) => sets = found,
            }
        }
    }
}

/// What one core of a [`CoreRoster`] is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreState {
    /// It never reported in.
    Offline,
    /// Idle and ready for a job.
    Ready,
    /// Running its share of the run numbered `generation`.
    Running {
        /// The run.
        generation: u64,
    },
    /// Lost (it faulted, panicked or stopped responding): it never runs a job again.
    Lost,
}

const OFFLINE: u64 = 0;
const READY: u64 = 1;
const RUNNING: u64 = 2;
const LOST: u64 = 3;

impl CoreState {
    fn encode(self) -> u64 {
        match self {
            CoreState::Offline => OFFLINE,
            CoreState::Ready => READY,
            CoreState::Running { generation } => RUNNING | generation << 2,
            CoreState::Lost => LOST,
        }
    }

    fn decode(word: u64) -> CoreState {
        match word & 3 {
            OFFLINE => CoreState::Offline,
            READY => CoreState::Ready,
            RUNNING => CoreState::Running { generation: word >> 2 },
            _ => CoreState::Lost,
        }
    }
}

/// The cores of a fork-join and the state of each, one atomic word per core.
///
/// Transitions, each a single compare-and-swap so that two cores racing for one core's fate
/// (a core finishing its share just as the caller gives up on it) have exactly one winner:
/// - `Offline → Ready` when the core reports in ([`CoreRoster::report_in`]);
/// - `Ready → Running { generation }` when the caller hands it a share ([`CoreRoster::start`]);
/// - `Running { generation } → Ready` when it finishes that share ([`CoreRoster::finish`]);
/// - anything `→ Lost` when it dies ([`CoreRoster::lose`]), or `Running { generation } → Lost`
///   when the caller gives up on it ([`CoreRoster::lose_if_running`]). `Lost` is final.
///
/// Generations are 62-bit run numbers chosen by the caller.
#[derive(Debug)]
pub struct CoreRoster<const CORES: usize> {
    states: [AtomicU64; CORES],
}

impl<const CORES: usize> Default for CoreRoster<CORES> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CORES: usize> CoreRoster<CORES> {
    /// Every core offline. `CORES` must be at most [`MAX_PARTICIPANTS`].
    pub const fn new() -> Self {
        assert!(CORES <= MAX_PARTICIPANTS, "a roster tracks at most 32 cores");
        Self { states: [const { AtomicU64::new(OFFLINE) }; CORES] }
    }

    fn word(&self, core: usize) -> Option<&AtomicU64> {
        self.states.get(core)
    }

    /// Moves `core` from `from` to `to`; `false` if it was in another state.
    fn transition(&self, core: usize, from: CoreState, to: CoreState) -> bool {
        self.word(core).is_some_and(|word| {
            word.compare_exchange(from.encode(), to.encode(), Ordering::AcqRel, Ordering::Acquire).is_ok()
        })
    }

    /// `core` has come online and is ready for jobs (no effect on a core already online or lost).
    pub fn report_in(&self, core: usize) {
        self.transition(core, CoreState::Offline, CoreState::Ready);
    }

    /// What `core` is doing (`Offline` for a core beyond the roster).
    pub fn state(&self, core: usize) -> CoreState {
        self.word(core).map_or(CoreState::Offline, |word| CoreState::decode(word.load(Ordering::Acquire)))
    }

    /// The cores that satisfy `keep`, as a mask.
    fn mask(&self, keep: impl Fn(CoreState) -> bool) -> u32 {
        (0..CORES).filter(|&core| keep(self.state(core))).fold(0, |mask, core| mask | bit(core))
    }

    /// The live cores (ready or running), as a mask.
    pub fn live(&self) -> u32 {
        self.mask(|state| matches!(state, CoreState::Ready | CoreState::Running { .. }))
    }

    /// The lost cores, as a mask.
    pub fn lost(&self) -> u32 {
        self.mask(|state| state == CoreState::Lost)
    }

    /// Of the cores in `cores`, those still running their share of `generation`.
    pub fn running(&self, generation: u64, cores: u32) -> u32 {
        self.mask(|state| state == CoreState::Running { generation }) & cores
    }

    /// Hands `core` a share of run `generation`; `false` if it is not ready (lost, offline, or
    /// still running an earlier share).
    pub fn start(&self, core: usize, generation: u64) -> bool {
        self.transition(core, CoreState::Ready, CoreState::Running { generation })
    }

    /// `core` finished its share of `generation`; `false` if it was given up on meanwhile (it
    /// is lost and must stop).
    pub fn finish(&self, core: usize, generation: u64) -> bool {
        self.transition(core, CoreState::Running { generation }, CoreState::Ready)
    }

    /// Marks `core` lost. Returns its state before, when this call is the one that lost it;
    /// `None` when it was lost already.
    pub fn lose(&self, core: usize) -> Option<CoreState> {
        let word = self.word(core)?;
        let before = CoreState::decode(word.swap(LOST, Ordering::AcqRel));
        (before != CoreState::Lost).then_some(before)
    }

    /// Gives up on `core` if it is still running its share of `generation`; `true` when this
    /// call lost it.
    pub fn lose_if_running(&self, core: usize, generation: u64) -> bool {
        self.transition(core, CoreState::Running { generation }, CoreState::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn barrier_separates_phases() {
        let barrier = Arc::new(SpinBarrier::new(4));
        let counter = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|worker| {
                let (barrier, counter) = (barrier.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut leaders = 0;
                    for round in 0..200 {
                        counter.fetch_add(1, Ordering::SeqCst);
                        leaders += usize::from(barrier.wait(worker, std::hint::spin_loop));
                        assert_eq!(counter.load(Ordering::SeqCst), 4 * (round + 1));
                        leaders += usize::from(barrier.wait(worker, std::hint::spin_loop));
                    }
                    leaders
                })
            })
            .collect();
        let leaders: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(leaders, 400, "exactly one leader per barrier round");
    }

    #[test]
    fn a_departure_opens_the_barrier_for_those_waiting() {
        let barrier = Arc::new(SpinBarrier::new(3));
        let waiters: Vec<_> = [0, 2]
            .into_iter()
            .map(|worker| {
                let barrier = barrier.clone();
                std::thread::spawn(move || barrier.wait(worker, std::hint::spin_loop))
            })
            .collect();
        // Wait (on the barrier's own state, not the clock) until both have arrived.
        while barrier.arrived() != 0b101 {
            std::hint::spin_loop();
        }
        assert!(barrier.leave(1), "the departure completes the round");
        let leaders: Vec<bool> = waiters.into_iter().map(|waiter| waiter.join().unwrap()).collect();
        assert_eq!(leaders, [false, false], "the departure led the round, not a waiter");
        assert_eq!(barrier.snapshot(), (0b101, 0));
        // The next round has two participants; the one that left passes straight through.
        assert!(!barrier.wait(1, || panic!("a worker that left never waits")));
        assert!(!barrier.leave(1), "leaving twice changes nothing");
    }

    #[test]
    fn a_departure_before_anyone_arrives_opens_nothing() {
        let barrier = SpinBarrier::new(2);
        assert!(!barrier.leave(1));
        assert_eq!(barrier.participants(), 0b1);
        assert!(barrier.wait(0, || panic!("the last participant does not wait")));
        barrier.set_participant_mask(0b1011);
        assert_eq!(barrier.participants(), 0b1011);
        barrier.set_participants(MAX_PARTICIPANTS + 1);
        assert_eq!(barrier.participants(), u32::MAX);
    }

    #[test]
    fn a_departure_and_an_arrival_racing_open_each_round_once() {
        // Worker 3 of 4 leaves in the middle of round `round`; every round still opens exactly
        // once, with or without it. Waiters yield: the host may have fewer cores than threads.
        for round in 0..20 {
            let barrier = Arc::new(SpinBarrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|worker| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let mut leaders = 0;
                        for current in 0..40 {
                            if worker == 3 && current == round {
                                leaders += usize::from(barrier.leave(3));
                                return leaders;
                            }
                            leaders += usize::from(barrier.wait(worker, std::thread::yield_now));
                        }
                        leaders
                    })
                })
                .collect();
            let leaders: usize = threads.into_iter().map(|thread| thread.join().unwrap()).sum();
            assert_eq!(leaders, 40, "round {round}: one opening per round");
        }
    }

    #[test]
    fn roster_moves_through_its_states() {
        let roster = CoreRoster::<4>::new();
        assert_eq!((roster.live(), roster.lost()), (0, 0));
        for core in [0, 1, 2] {
            roster.report_in(core);
        }
        assert_eq!(roster.live(), 0b0111);
        assert_eq!(roster.state(3), CoreState::Offline);
        assert!(!roster.start(3, 1), "an offline core takes no share");
        assert!(roster.start(1, 7) && roster.start(2, 7));
        assert!(!roster.start(1, 8), "a running core takes no second share");
        assert_eq!(roster.state(2), CoreState::Running { generation: 7 });
        assert_eq!(roster.running(7, 0b1110), 0b0110);
        assert_eq!(roster.running(6, 0b1110), 0);
        assert!(roster.finish(1, 7));
        assert!(!roster.finish(1, 7), "finished once");
        assert!(!roster.lose_if_running(2, 6), "another run's generation");
        assert!(roster.lose_if_running(2, 7));
        assert!(!roster.finish(2, 7), "given up on: it must stop");
        assert_eq!(roster.lose(2), None, "already lost");
        assert_eq!(roster.lose(1), Some(CoreState::Ready));
        assert_eq!((roster.live(), roster.lost()), (0b0001, 0b0110));
        roster.report_in(1);
        assert_eq!(roster.state(1), CoreState::Lost, "lost is final");
        assert_eq!(roster.state(40), CoreState::Offline);
        assert_eq!(roster.lose(40), None);
    }

    #[test]
    fn finishing_and_giving_up_race_with_one_winner() {
        for _ in 0..200 {
            let roster = Arc::new(CoreRoster::<2>::new());
            roster.report_in(1);
            assert!(roster.start(1, 3));
            let worker = {
                let roster = roster.clone();
                std::thread::spawn(move || roster.finish(1, 3))
            };
            let gave_up = roster.lose_if_running(1, 3);
            let finished = worker.join().unwrap();
            assert!(finished != gave_up, "exactly one of them decides");
            let expected = if finished { CoreState::Ready } else { CoreState::Lost };
            assert_eq!(roster.state(1), expected);
        }
    }
}
