//! Pool statistics: byte counters, fragmentation, log2 latency histograms and the printable
//! memory-map report shown on the console.

#![forbid(unsafe_code)]

use super::error::Bytes;
use alloc::vec::Vec;
use core::fmt;

/// Running counters that every pool keeps. `live` counts bytes callers asked for; `reserved`
/// counts bytes the pool set aside for them (after rounding and alignment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Successful allocations.
    pub allocations: u64,
    /// Successful frees.
    pub frees: u64,
    /// Failed allocations (out of memory, too large, deadline missed).
    pub failures: u64,
    /// Frees refused as double or foreign.
    pub bad_frees: u64,
    /// Bytes requested by live allocations.
    pub live_bytes: u64,
    /// Bytes held by live allocations, rounding included.
    pub reserved_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Highest `reserved_bytes` seen.
    pub peak_reserved_bytes: u64,
    /// Bytes cleared through a zeroing hook.
    pub zeroed_bytes: u64,
}

impl PoolCounters {
    /// Records an allocation of `live` requested bytes that holds `reserved` bytes.
    pub fn record_allocation(&mut self, live: u64, reserved: u64) {
        self.allocations += 1;
        self.live_bytes += live;
        self.reserved_bytes += reserved;
        self.peak_live_bytes = self.peak_live_bytes.max(self.live_bytes);
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(self.reserved_bytes);
    }

    /// These counters plus `other`'s (peaks add up: an upper bound on the combined peak).
    pub fn combined(&self, other: &PoolCounters) -> PoolCounters {
        PoolCounters {
            allocations: self.allocations + other.allocations,
            frees: self.frees + other.frees,
            failures: self.failures + other.failures,
            bad_frees: self.bad_frees + other.bad_frees,
            live_bytes: self.live_bytes + other.live_bytes,
            reserved_bytes: self.reserved_bytes + other.reserved_bytes,
            peak_live_bytes: self.peak_live_bytes + other.peak_live_bytes,
            peak_reserved_bytes: self.peak_reserved_bytes + other.peak_reserved_bytes,
            zeroed_bytes: self.zeroed_bytes + other.zeroed_bytes,
        }
    }

    /// Records a free of an allocation made with [`PoolCounters::record_allocation`].
    pub fn record_free(&mut self, live: u64, reserved: u64) {
        self.frees += 1;
        self.live_bytes -= live;
        self.reserved_bytes -= reserved;
    }
}

/// A snapshot of one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatistics {
    /// The pool's name.
    pub name: &'static str,
    /// First byte the pool manages.
    pub base: u64,
    /// Bytes the pool manages.
    pub capacity: u64,
    /// Its counters.
    pub counters: PoolCounters,
    /// Bytes free.
    pub free_bytes: u64,
    /// The largest single free block.
    pub largest_free: u64,
}

impl PoolStatistics {
    /// A pool named `name` that manages nothing.
    pub fn empty(name: &'static str) -> Self {
        Self { name, base: 0, capacity: 0, counters: PoolCounters::default(), free_bytes: 0, largest_free: 0 }
    }

    /// Two pools of one kind (on different memory nodes) as one: sizes and counters add up,
    /// the largest free block is the larger, and the range starts at the lower base.
    pub fn combined(&self, other: &PoolStatistics) -> PoolStatistics {
        PoolStatistics {
            name: self.name,
            base: self.base.min(other.base),
            capacity: self.capacity + other.capacity,
            counters: self.counters.combined(&other.counters),
            free_bytes: self.free_bytes + other.free_bytes,
            largest_free: self.largest_free.max(other.largest_free),
        }
    }

    /// External fragmentation in thousandths: `1000 × (1 − largest free ÷ total free)`;
    /// 0 when nothing is free.
    pub fn fragmentation_permille(&self) -> u64 {
        if self.free_bytes == 0 {
            return 0;
        }
        1000 - (u128::from(self.largest_free) * 1000 / u128::from(self.free_bytes)) as u64
    }

    /// Reserved bytes in thousandths of the capacity.
    pub fn usage_permille(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        (u128::from(self.counters.reserved_bytes) * 1000 / u128::from(self.capacity)) as u64
    }
}

/// Number of buckets in a [`LatencyHistogram`]: bucket `i` holds durations in
/// `[2^(i-1), 2^i)` nanoseconds, bucket 0 holds 0 ns, the last bucket everything above.
pub const LATENCY_BUCKETS: usize = 40;

/// A log2 histogram of durations in nanoseconds. The caller measures; the histogram only
/// counts, so it works with any clock and never reads one itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Counts per bucket.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Largest duration recorded.
    pub max_ns: u64,
    /// Sum of all durations recorded (saturating).
    pub total_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: [0; LATENCY_BUCKETS], max_ns: 0, total_ns: 0 }
    }
}

impl LatencyHistogram {
    /// The bucket that holds `duration_ns`.
    pub fn bucket_of(duration_ns: u64) -> usize {
        ((u64::BITS - duration_ns.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The exclusive upper bound of bucket `index`, in nanoseconds.
    pub fn bucket_limit(index: usize) -> u64 {
        if index >= 63 { u64::MAX } else { 1 << index }
    }

    /// Counts one duration.
    pub fn record(&mut self, duration_ns: u64) {
        self.buckets[Self::bucket_of(duration_ns)] += 1;
        self.max_ns = self.max_ns.max(duration_ns);
        self.total_ns = self.total_ns.saturating_add(duration_ns);
    }

    /// Number of durations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// An upper bound on the `per_mille`-th quantile (500 for the median, 990 for p99): the
    /// limit of the bucket where that quantile falls, or 0 when empty.
    pub fn quantile_bound_ns(&self, per_mille: u64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = (u128::from(count) * u128::from(per_mille.min(1000))).div_ceil(1000).max(1) as u64;
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket;
            if seen >= rank {
                return Self::bucket_limit(index).min(self.max_ns.max(1));
            }
        }
        self.max_ns
    }
}

/// Alloc and free latencies of one pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolLatency {
    /// Allocation latencies.
    pub alloc: LatencyHistogram,
    /// Free latencies.
    pub free: LatencyHistogram,
}

/// Width of the usage bar in the memory-map report, in characters.
const BAR_WIDTH: u64 = 20;

/// One line of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRow {
    /// The pool (or one node's share of it).
    pub statistics: PoolStatistics,
    /// Its latency histograms.
    pub latency: PoolLatency,
    /// The memory node, when the row is one node's pool of several.
    pub node: Option<usize>,
}

/// The memory map for the console: one line per pool (per node and pool on a board with
/// several memory nodes) with its range, usage bar, live, reserved and peak bytes,
/// fragmentation and latency quantiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// The lines, in address order of the pools.
    pub rows: Vec<MapRow>,
    /// Cache-line size the pools align to.
    pub cache_line: u64,
    /// Memory nodes.
    pub nodes: usize,
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = match self.nodes {
            0 | 1 => alloc::string::String::from("one memory node"),
            count => alloc::format!("{count} memory nodes, tensor pools per node"),
        };
        writeln!(formatter, "memory map (cache line {} B, {nodes})", self.cache_line)?;
        writeln!(
            formatter,
            "{:<12} {:<27} {:<22} {:>10} {:>10} {:>10} {:>6}  {:>9} {:>9}",
            "pool", "range", "usage", "live", "reserved", "peak", "frag", "alloc p99", "free p99"
        )?;
        for MapRow { statistics: pool, latency, node } in &self.rows {
            let usage = pool.usage_permille();
            let filled = (usage * BAR_WIDTH).div_ceil(1000).min(BAR_WIDTH) as usize;
            let mut bar = [b'.'; BAR_WIDTH as usize];
            bar[..filled].fill(b'#');
            let bar = core::str::from_utf8(&bar).unwrap_or("");
            let range = alloc::format!("{:#011x}-{:#011x}", pool.base, pool.base + pool.capacity);
            let name = match node {
                Some(node) => alloc::format!("{}@{node}", pool.name),
                None => alloc::string::String::from(pool.name),
            };
            let fragmentation = pool.fragmentation_permille();
            writeln!(
                formatter,
                "{:<12} {:<27} [{bar}] {:>10} {:>10} {:>10} {:>3}.{}%  {:>9} {:>9}",
                name,
                range,
                Bytes(pool.counters.live_bytes),
                Bytes(pool.counters.reserved_bytes),
                Bytes(pool.counters.peak_reserved_bytes),
                fragmentation / 10,
                fragmentation % 10,
                Nanoseconds(latency.alloc.quantile_bound_ns(990)),
                Nanoseconds(latency.free.quantile_bound_ns(990)),
            )?;
        }
        Ok(())
    }
}

/// A duration printed as `-` (none), `850 ns`, `12 us` or `3 ms`.
struct Nanoseconds(u64);

impl fmt::Display for Nanoseconds {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.0 {
            0 => alloc::string::String::from("-"),
            ns if ns < 10_000 => alloc::format!("{ns} ns"),
            ns if ns < 10_000_000 => alloc::format!("{} us", ns / 1000),
            ns => alloc::format!("{} ms", ns / 1_000_000),
        };
        formatter.pad(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn histogram_buckets_are_log2() {
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(1), 1);
        assert_eq!(LatencyHistogram::bucket_of(3), 2);
        assert_eq!(LatencyHistogram::bucket_of(4), 3);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        let mut histogram = LatencyHistogram::default();
        for duration in 1..=100 {
            histogram.record(duration);
        }
        assert_eq!(histogram.count(), 100);
        assert_eq!(histogram.max_ns, 100);
        assert_eq!(histogram.quantile_bound_ns(500), 64, "median 50 lies in [32, 64)");
        assert_eq!(histogram.quantile_bound_ns(990), 100, "p99 bound clipped to the max");
        assert_eq!(LatencyHistogram::default().quantile_bound_ns(500), 0);
    }

    #[test]
    fn fragmentation_and_usage() {
        let mut pool = PoolStatistics {
            name: "test",
            base: 0,
            capacity: 1000,
            counters: PoolCounters::default(),
            free_bytes: 400,
            largest_free: 100,
        };
        pool.counters.record_allocation(500, 600);
        assert_eq!(pool.fragmentation_permille(), 750);
        assert_eq!(pool.usage_permille(), 600);
        pool.free_bytes = 0;
        assert_eq!(pool.fragmentation_permille(), 0);
        pool.counters.record_free(500, 600);
        assert_eq!(pool.counters.live_bytes, 0);
        assert_eq!(pool.counters.peak_reserved_bytes, 600);
    }

    #[test]
    fn report_shows_a_bar_per_pool() {
        let mut counters = PoolCounters::default();
        counters.record_allocation(1 << 20, 1 << 20);
        let pool = PoolStatistics {
            name: "weights",
            base: 0x200000,
            capacity: 4 << 20,
            counters,
            free_bytes: 3 << 20,
            largest_free: 3 << 20,
        };
        let row = MapRow { statistics: pool, latency: PoolLatency::default(), node: None };
        let report = MemoryReport { rows: alloc::vec![row], cache_line: 64, nodes: 1 };
        let text = report.to_string();
        assert!(text.contains("[#####...............]"), "{text}");
        assert!(text.contains("weights"), "{text}");
        assert!(text.contains("1.0 MiB"), "{text}");
    }
}
