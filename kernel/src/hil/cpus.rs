//! `Cpus`: the cores that work together on one job (the matmuls of a forward pass).

/// The set of cores available for parallel work.
///
/// `run_on_all` is a fork-join: every core runs `job(core_index)` and the call returns when all
/// of them have finished. Inside a job, `barrier` waits until every core has reached it.
/// Implementations allocate nothing per call, so it is usable once per matmul.
pub trait Cpus: Sync {
    /// How many cores take part in `run_on_all` (1 to 4 on a Pi).
    fn count(&self) -> usize;

    /// Runs `job(index)` on every core, `index` in `0..count()`, the caller as index 0, and
    /// returns when every core has finished.
    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync));

    /// Inside a job: blocks until every core of the current `run_on_all` has called it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn single_cpu_runs_job_once_as_core_zero() {
        let calls = AtomicUsize::new(0);
        SingleCpu.run_on_all(&|core| {
            assert_eq!(core, 0);
            SingleCpu.barrier();
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
