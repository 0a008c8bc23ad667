//! Facts only the board can measure, which the server reports: interrupt service and the
//! global heap's use.

/// What the global heap has served: boot-time bookkeeping, plus whatever ran outside an
/// allocation scope (`mm::scope`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStatistics {
    /// Bytes the heap manages.
    pub capacity_bytes: u64,
    /// Bytes held by live allocations.
    pub live_bytes: u64,
    /// The most ever held at once.
    pub peak_bytes: u64,
    /// Allocations made since boot (reallocations included).
    pub allocations: u64,
    /// Allocations released since boot.
    pub frees: u64,
    /// Bytes of the pools' metadata pool (the pools' own bookkeeping while serving).
    pub metadata_capacity_bytes: u64,
    /// Of those, bytes in use.
    pub metadata_live_bytes: u64,
}

/// The board's measurements, as the server reads them for `/stats`, `/mem` and the `mem`
/// record.
pub trait BoardTelemetry {
    /// Interrupts handled, and the longest time the UART interrupt stayed unserviced (ns).
    fn interrupts(&self) -> (u64, u64);

    /// The global heap's counters.
    fn heap(&self) -> HeapStatistics;
}
