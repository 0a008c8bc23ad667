//! A lock-free log2 latency histogram that any core or interrupt handler records into, and the
//! plain snapshot the console reads quantiles from.

use core::sync::atomic::{AtomicU64, Ordering};

/// Buckets in a [`Histogram`]: bucket 0 holds 0 ns, bucket `i` (1 to 62) holds
/// `[2^(i-1), 2^i)` ns, and bucket 63 everything from `2^62` ns up.
pub const HISTOGRAM_BUCKETS: usize = 64;

/// The bucket that holds `duration_ns`.
pub const fn bucket_of(duration_ns: u64) -> usize {
    let bits = (u64::BITS - duration_ns.leading_zeros()) as usize;
    if bits < HISTOGRAM_BUCKETS { bits } else { HISTOGRAM_BUCKETS - 1 }
}

/// The largest duration bucket `index` holds.
pub const fn bucket_ceiling(index: usize) -> u64 {
    if index == 0 {
        0
    } else if index >= HISTOGRAM_BUCKETS - 1 {
        u64::MAX
    } else {
        (1 << index) - 1
    }
}

/// Durations in nanoseconds, counted in log2 buckets with their maximum and sum.
///
/// [`Histogram::record`] is three relaxed atomic updates: no lock, no allocation, O(1). A
/// snapshot taken while others record may miss their latest updates but never counts one twice.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
    max_ns: AtomicU64,
    total_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram; usable in a `static`.
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; HISTOGRAM_BUCKETS],
            max_ns: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn record(&self, duration_ns: u64) {
        self.buckets[bucket_of(duration_ns)].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(duration_ns, Ordering::Relaxed);
        self.total_ns.fetch_add(duration_ns, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: core::array::from_fn(|index| self.buckets[index].load(Ordering::Relaxed)),
            max_ns: self.max_ns.load(Ordering::Relaxed),
            total_ns: self.total_ns.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Histogram`] at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Durations per bucket (see [`HISTOGRAM_BUCKETS`]).
    pub buckets: [u64; HISTOGRAM_BUCKETS],
    /// The longest duration.
    pub max_ns: u64,
    /// The sum of all durations (wrapping).
    pub total_ns: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self { buckets: [0; HISTOGRAM_BUCKETS], max_ns: 0, total_ns: 0 }
    }
}

impl HistogramSnapshot {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `per_mille`-th quantile (500: median, 990: p99, 1000: max), rounded up to the top of
    /// its bucket and clipped to the maximum; 0 when empty.
    ///
    /// With `v` the exact quantile (the value at rank `ceil(count × per_mille / 1000)` of the
    /// sorted durations), the result lies in `v`'s bucket and in `[v, max]`, so it is less than
    /// `2v` for any `v > 0`.
    pub fn quantile_ns(&self, per_mille: u64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = (u128::from(count) * u128::from(per_mille.min(1000))).div_ceil(1000).max(1);
        let mut seen = 0u128;
        for (index, &bucket) in self.buckets.iter().enumerate() {
            seen += u128::from(bucket);
            if seen >= rank {
                return bucket_ceiling(index).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// The median, see [`HistogramSnapshot::quantile_ns`].
    pub fn p50_ns(&self) -> u64 {
        self.quantile_ns(500)
    }

    /// The 99th percentile, see [`HistogramSnapshot::quantile_ns`].
    pub fn p99_ns(&self) -> u64 {
        self.quantile_ns(990)
    }

    /// The mean duration, 0 when empty.
    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!((bucket_of(0), bucket_of(1), bucket_of(2), bucket_of(3), bucket_of(4)), (0, 1, 2, 2, 3));
        assert_eq!(bucket_of(1 << 61), 62);
        assert_eq!(bucket_of(1 << 62), 63);
        assert_eq!(bucket_of(u64::MAX), 63);
        for index in 1..HISTOGRAM_BUCKETS - 1 {
            assert_eq!(bucket_of(bucket_ceiling(index)), index);
            assert_eq!(bucket_of(bucket_ceiling(index) + 1), index + 1);
        }
        assert_eq!(bucket_ceiling(63), u64::MAX);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let snapshot = Histogram::new().snapshot();
        assert_eq!(snapshot, HistogramSnapshot::default());
        assert_eq!(
            (snapshot.count(), snapshot.p50_ns(), snapshot.p99_ns(), snapshot.mean_ns()),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn quantiles_of_one_to_a_hundred() {
        let histogram = Histogram::default();
        for duration in 1..=100 {
            histogram.record(duration);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(
            (snapshot.count(), snapshot.max_ns, snapshot.total_ns, snapshot.mean_ns()),
            (100, 100, 5050, 50)
        );
        assert_eq!(snapshot.p50_ns(), 63, "median 50 lies in [32, 63]");
        assert_eq!(snapshot.p99_ns(), 100, "p99 99 lies in [64, 127], clipped to the max");
        assert_eq!(snapshot.quantile_ns(0), 1);
        assert_eq!(snapshot.quantile_ns(1000), 100);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn quantiles_match_a_sorted_reference(
            mut durations in prop::collection::vec(prop_oneof![0u64..5000, any::<u64>()], 1..200),
            per_mille in 0u64..=1000,
        ) {
            let histogram = Histogram::new();
            for &duration in &durations {
                histogram.record(duration);
            }
            durations.sort_unstable();
            let snapshot = histogram.snapshot();
            let count = durations.len() as u64;
            prop_assert_eq!(snapshot.count(), count);
            prop_assert_eq!(snapshot.max_ns, *durations.last().unwrap());
            let rank = (count * per_mille).div_ceil(1000).max(1);
            let reference = durations[rank as usize - 1];
            let estimate = snapshot.quantile_ns(per_mille);
            prop_assert_eq!(bucket_of(estimate), bucket_of(reference));
            prop_assert!(reference <= estimate && estimate <= snapshot.max_ns);
            if reference > 0 && reference < 1 << 62 {
                prop_assert!(estimate < 2 * reference);
            }
        }
    }
}
