//! Host threads as a [`Cpus`]: each `run_on_all` runs the job on the calling thread (index 0)
//! and on scoped helper threads, so the forward pass splits its matmuls across host cores.

use std::sync::Barrier;

use kernel::hil::Cpus;

/// `count` host threads taking part in every parallel job.
pub struct HostThreads {
    count: usize,
    barrier: Barrier,
}

impl HostThreads {
    /// A team of `count` threads (at least 1).
    pub fn new(count: usize) -> Self {
        let count = count.max(1);
        Self { count, barrier: Barrier::new(count) }
    }
}

impl Cpus for HostThreads {
    fn count(&self) -> usize {
        self.count
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|scope| {
            for index in 1..self.count {
                scope.spawn(move || job(index));
            }
            job(0);
        });
    }

    fn barrier(&self) {
        self.barrier.wait();
    }
}
