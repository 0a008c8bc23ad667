//! The trace ring: a fixed-capacity, lock-free ring of [`TraceEvent`]s that any core and any
//! interrupt handler may record into, the unikernel's stand-in for tracepoints.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use super::event::{EVENT_WORDS, TraceEvent};

/// Events the console's trace ring holds.
pub const TRACE_CAPACITY: usize = 256;

/// One slot: a sequence word guarding the encoded event (a per-slot sequence lock).
///
/// The sequence word is `stamp << 1 | busy`, where `stamp` is the recording's ticket plus one
/// (0: the slot never held an event) and `busy` is set while a writer fills the slot.
struct Slot {
    sequence: AtomicU64,
    words: [AtomicU64; EVENT_WORDS],
}

impl Slot {
    const fn new() -> Self {
        Self { sequence: AtomicU64::new(0), words: [const { AtomicU64::new(0) }; EVENT_WORDS] }
    }
}

/// A ring of the `CAPACITY` most recent events.
///
/// Invariants and bounds:
/// - [`TraceRing::record`] allocates nothing, never waits for another core or for an
///   interrupted context, and finishes in a bounded number of steps unless other cores keep
///   claiming the same slot: it is safe in an interrupt handler.
/// - When full, a new event overwrites the oldest. Every event that leaves the ring unread, and
///   every event given up because its slot was busy (a writer a full lap behind), counts once in
///   [`TraceRing::dropped`]: at rest, events held plus events dropped equals events recorded.
/// - A reader never sees a torn event: each slot is a sequence lock, and a reader keeps a slot's
///   words only when its sequence word was the same, and not busy, before and after the read.
/// - [`TraceRing::snapshot`] orders events by recording order (the ticket each recording
///   takes), which on one core is program order.
pub struct TraceRing<const CAPACITY: usize = TRACE_CAPACITY> {
    slots: [Slot; CAPACITY],
    next_ticket: AtomicU64,
    dropped: AtomicU64,
}

impl<const CAPACITY: usize> core::fmt::Debug for TraceRing<CAPACITY> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter
            .debug_struct("TraceRing")
            .field("capacity", &CAPACITY)
            .field("recorded", &self.recorded())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl<const CAPACITY: usize> Default for TraceRing<CAPACITY> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAPACITY: usize> TraceRing<CAPACITY> {
    /// An empty ring; usable in a `static`. `CAPACITY` must not be zero.
    pub const fn new() -> Self {
        assert!(CAPACITY > 0, "a trace ring needs at least one slot");
        Self {
            slots: [const { Slot::new() }; CAPACITY],
            next_ticket: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records `event`, overwriting the oldest event when the ring is full.
    ///
    /// Returns `false` when the event was given up because another writer held its slot (it is
    /// then counted as dropped).
    pub fn record(&self, event: TraceEvent) -> bool {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(ticket % CAPACITY as u64) as usize];
        let claimed = (ticket + 1) << 1 | 1;
        let mut current = slot.sequence.load(Ordering::Relaxed);
        loop {
            // Busy (a writer is inside), or already holding a newer event: give this one up
            // rather than wait, which could deadlock against the context this one interrupted.
            if current & 1 == 1 || current > claimed {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            match slot.sequence.compare_exchange_weak(current, claimed, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(found) => current = found,
            }
        }
        if current != 0 {
            // The event this one replaces leaves the ring unread by this ring's account.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // Orders the busy mark before the words: a reader that sees a new word sees busy.
        fence(Ordering::Release);
        for (word, value) in slot.words.iter().zip(event.encode()) {
            word.store(value, Ordering::Relaxed);
        }
        slot.sequence.store(claimed & !1, Ordering::Release);
        true
    }

    /// Up to `max` of the most recent events, oldest first.
    ///
    /// Allocates the returned vector; never call it from an interrupt handler. Slots being
    /// written during the read are left out.
    pub fn snapshot(&self, max: usize) -> Vec<TraceEvent> {
        let mut stamped: Vec<(u64, TraceEvent)> =
            self.slots.iter().filter_map(|slot| Self::read_slot(slot, || {})).collect();
        stamped.sort_unstable_by_key(|&(stamp, _)| stamp);
        let skip = stamped.len().saturating_sub(max);
        stamped.into_iter().skip(skip).map(|(_, event)| event).collect()
    }

    /// Calls `visit` with up to `max` of the most recent events, oldest first, without
    /// allocating (for fault reports, where the heap may be the thing that broke). Events being
    /// written or already overwritten are left out.
    pub fn for_each_recent(&self, max: usize, mut visit: impl FnMut(&TraceEvent)) {
        let end = self.next_ticket.load(Ordering::Acquire);
        let start = end.saturating_sub(max.min(CAPACITY) as u64);
        for ticket in start..end {
            let slot = &self.slots[(ticket % CAPACITY as u64) as usize];
            if let Some((stamp, event)) = Self::read_slot(slot, || {})
                && stamp == ticket + 1
            {
                visit(&event);
            }
        }
    }

    /// Reads one slot: the stamp and event it holds, or `None` when it is empty, busy, or was
    /// rewritten during the read. `between` runs after the words are read and before the
    /// sequence word is checked again (nothing outside tests).
    fn read_slot(slot: &Slot, between: impl FnOnce()) -> Option<(u64, TraceEvent)> {
        let before = slot.sequence.load(Ordering::Acquire);
        if before == 0 || before & 1 == 1 {
            return None;
        }
        let mut words = [0; EVENT_WORDS];
        for (value, word) in words.iter_mut().zip(&slot.words) {
            *value = word.load(Ordering::Relaxed);
        }
        between();
        // Orders the word reads before the second look at the sequence word.
        fence(Ordering::Acquire);
        if slot.sequence.load(Ordering::Relaxed) != before {
            return None;
        }
        Some((before >> 1, TraceEvent::decode(&words)?))
    }

    /// Events recorded since the ring was made.
    pub fn recorded(&self) -> u64 {
        self.next_ticket.load(Ordering::Relaxed)
    }

    /// Events lost: overwritten before anyone read them, or given up on a busy slot.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many events the ring holds when full.
    pub const fn capacity(&self) -> usize {
        CAPACITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::event::{EventKind, ShortName};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn finished(id: u64) -> TraceEvent {
        TraceEvent::new(id * 10, (id % 4) as u32, EventKind::RequestFinished { id, tokens: id as u32 })
    }

    #[test]
    fn empty_ring_has_nothing() {
        let ring = TraceRing::<4>::new();
        assert!(ring.snapshot(10).is_empty());
        assert_eq!((ring.recorded(), ring.dropped(), ring.capacity()), (0, 0, 4));
        assert_eq!(TraceRing::<8>::default().capacity(), 8);
    }

    #[test]
    fn overwrites_the_oldest_and_counts_each_drop() {
        let ring = TraceRing::<4>::new();
        for id in 0..3 {
            assert!(ring.record(finished(id)));
        }
        assert_eq!(ring.snapshot(10), [finished(0), finished(1), finished(2)]);
        assert_eq!(ring.dropped(), 0);
        for id in 3..7 {
            ring.record(finished(id));
        }
        assert_eq!(ring.snapshot(10), [finished(3), finished(4), finished(5), finished(6)]);
        assert_eq!(ring.snapshot(2), [finished(5), finished(6)], "the most recent two");
        assert_eq!(ring.snapshot(0), []);
        assert_eq!((ring.recorded(), ring.dropped()), (7, 3));
    }

    #[test]
    fn a_writer_a_lap_behind_gives_up_and_counts_it() {
        let ring = TraceRing::<2>::new();
        ring.record(finished(0));
        // Pretend ticket 3 (same slot as ticket 1) is mid-write while ticket 1 arrives late.
        ring.next_ticket.store(1, Ordering::Relaxed);
        ring.slots[1].sequence.store((3 + 1) << 1 | 1, Ordering::Relaxed);
        assert!(!ring.record(finished(1)), "slot busy");
        ring.slots[1].sequence.store(0, Ordering::Relaxed);
        assert_eq!(ring.snapshot(8), [finished(0)], "a busy or empty slot is not read");
        // A newer event already in the slot also wins over a late writer.
        ring.next_ticket.store(1, Ordering::Relaxed);
        ring.slots[1].sequence.store((5 + 1) << 1, Ordering::Relaxed);
        assert!(!ring.record(finished(1)), "slot newer");
        assert_eq!(ring.dropped(), 2);
    }

    #[test]
    fn a_slot_rewritten_during_the_read_is_left_out() {
        let ring = TraceRing::<1>::new();
        ring.record(finished(1));
        let read = TraceRing::<1>::read_slot(&ring.slots[0], || assert!(ring.record(finished(2))));
        assert_eq!(read, None, "the words read belonged to an event that was replaced");
        assert_eq!(TraceRing::<1>::read_slot(&ring.slots[0], || {}), Some((2, finished(2))));
    }

    #[test]
    fn four_threads_lose_nothing_beyond_the_counted_drops() {
        const AT_LEAST: u64 = 2000;
        const SNAPSHOTS: u64 = 2000;
        let ring = Arc::new(TraceRing::<16>::new());
        let snapshots = Arc::new(AtomicU64::new(0));
        let reader = {
            let (ring, snapshots) = (ring.clone(), snapshots.clone());
            std::thread::spawn(move || {
                while snapshots.load(Ordering::Relaxed) < SNAPSHOTS {
                    for event in ring.snapshot(16) {
                        check_consistent(&event);
                    }
                    snapshots.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Writers keep going until the reader has read the ring many times while they write.
        let writers: Vec<_> = (0..4u64)
            .map(|thread| {
                let (ring, snapshots) = (ring.clone(), snapshots.clone());
                std::thread::spawn(move || {
                    let mut sequence = 0;
                    while sequence < AT_LEAST || snapshots.load(Ordering::Relaxed) < SNAPSHOTS {
                        ring.record(thread_event(thread, sequence));
                        sequence += 1;
                    }
                    sequence
                })
            })
            .collect();
        let recorded: u64 = writers.into_iter().map(|writer| writer.join().unwrap()).sum();
        reader.join().unwrap();

        let events = ring.snapshot(usize::MAX);
        assert_eq!(ring.recorded(), recorded);
        assert_eq!(events.len() as u64 + ring.dropped(), recorded, "held + dropped = recorded");
        assert_eq!(events.len(), 16, "at rest every slot holds an event");
        let mut last_sequence = [None; 4];
        for event in &events {
            let (thread, sequence) = check_consistent(event);
            assert!(last_sequence[thread as usize] < Some(sequence), "one thread's events stay in order");
            last_sequence[thread as usize] = Some(sequence);
        }
    }

    /// An event whose every field derives from (thread, sequence), so a torn one shows.
    fn thread_event(thread: u64, sequence: u64) -> TraceEvent {
        let id = thread << 32 | sequence;
        let name = alloc::format!("t{thread}-{sequence}");
        let kind = if sequence.is_multiple_of(2) {
            EventKind::RequestAdmitted { id, tokens: !(id as u32) }
        } else {
            EventKind::ModelSwap { from: ShortName::new(&name), to: ShortName::new(&name) }
        };
        TraceEvent::new(id.wrapping_mul(0x9E37_79B9_7F4A_7C15), thread as u32, kind)
    }

    /// Checks an event against [`thread_event`] and returns its (thread, sequence).
    fn check_consistent(event: &TraceEvent) -> (u64, u64) {
        let thread = u64::from(event.core);
        let sequence = match event.kind {
            EventKind::RequestAdmitted { id, .. } => id & 0xFFFF_FFFF,
            EventKind::ModelSwap { from, .. } => {
                let (_, sequence) = from.as_str().split_once('-').unwrap_or_else(|| panic!("torn {event:?}"));
                sequence.parse().unwrap_or_else(|_| panic!("torn {event:?}"))
            }
            other => panic!("torn or foreign {other:?}"),
        };
        assert_eq!(thread_event(thread, sequence), *event, "torn event");
        (thread, sequence)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn snapshot_is_the_latest_events_in_order(count in 0u64..40, max in 0usize..12) {
            let ring = TraceRing::<8>::new();
            for id in 0..count {
                prop_assert!(ring.record(finished(id)));
            }
            let held = count.min(8);
            let expected: Vec<_> = (count - held.min(max as u64)..count).map(finished).collect();
            prop_assert_eq!(ring.snapshot(max), expected);
            prop_assert_eq!(ring.dropped(), count.saturating_sub(8));
            prop_assert_eq!(ring.recorded(), count);
        }
    }
}
