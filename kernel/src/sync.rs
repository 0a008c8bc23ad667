//! Synchronisation primitives shared by the board and the kernel: a reusable spin barrier.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicUsize, Ordering};

/// A reusable barrier for a fixed number of participants, built on a generation counter.
///
/// The last arrival resets the count and bumps the generation; the others wait for the bump.
/// `relax` is called while waiting (a `wfe`, or a spin hint on the host).
#[derive(Debug)]
pub struct SpinBarrier {
    participants: AtomicUsize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    /// A barrier for `participants` parties.
    pub const fn new(participants: usize) -> Self {
        Self {
            participants: AtomicUsize::new(participants),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Changes the number of parties. Only call while nobody is waiting.
    pub fn set_participants(&self, participants: usize) {
        self.participants.store(participants, Ordering::Release);
    }

    /// Waits until every participant has called `wait`. Returns `true` on exactly one
    /// participant (the last to arrive).
    pub fn wait(&self, relax: impl Fn()) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        let participants = self.participants.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == participants {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return true;
        }
        while self.generation.load(Ordering::Acquire) == generation {
            relax();
        }
        false
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
            .map(|_| {
                let (barrier, counter) = (barrier.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut leaders = 0;
                    for round in 0..200 {
                        counter.fetch_add(1, Ordering::SeqCst);
                        leaders += usize::from(barrier.wait(std::hint::spin_loop));
                        assert_eq!(counter.load(Ordering::SeqCst), 4 * (round + 1));
                        leaders += usize::from(barrier.wait(std::hint::spin_loop));
                    }
                    leaders
                })
            })
            .collect();
        let leaders: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(leaders, 400, "exactly one leader per barrier round");
    }
}
