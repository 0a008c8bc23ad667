//! A lock-free single-producer, single-consumer byte ring: the UART receive interrupt pushes,
//! the console loop pops. Bytes that do not fit are counted, never silently lost.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// A byte ring over caller-provided storage (protocol-pool memory in the kernel).
///
/// Invariants: `head` (next write) and `tail` (next read) only grow; `head - tail` is the
/// number of bytes held and never exceeds the capacity. Only one context may push and only one
/// may pop at a time; both operations are O(1) and never block.
#[derive(Debug)]
pub struct ByteRing<'storage> {
    storage: &'storage [AtomicU8],
    head: AtomicUsize,
    tail: AtomicUsize,
    overflowed: AtomicUsize,
    high_water: AtomicUsize,
    line_end_ns: AtomicU64,
}

impl<'storage> ByteRing<'storage> {
    /// A ring over `storage` (its length is the capacity).
    pub const fn new(storage: &'storage [AtomicU8]) -> Self {
        Self {
            storage,
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            overflowed: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            line_end_ns: AtomicU64::new(0),
        }
    }

    /// Producer side: stores `byte`, or counts it as overflow when the ring is full.
    pub fn push(&self, byte: u8) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let held = head.wrapping_sub(tail);
        if held >= self.storage.len() {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.storage[head % self.storage.len()].store(byte, Ordering::Relaxed);
        self.head.store(head.wrapping_add(1), Ordering::Release);
        self.high_water.fetch_max(held + 1, Ordering::Relaxed);
        true
    }

    /// Producer side: like [`ByteRing::push`], and a CR or LF also records `now_ns` as the
    /// time of the latest line end.
    pub fn push_stamped(&self, byte: u8, now_ns: u64) -> bool {
        if byte == b'\r' || byte == b'\n' {
            self.line_end_ns.store(now_ns, Ordering::Release);
        }
        self.push(byte)
    }

    /// When the latest line end was pushed (0 before any).
    pub fn line_end_ns(&self) -> u64 {
        self.line_end_ns.load(Ordering::Acquire)
    }

    /// Consumer side: the oldest byte, if any.
    pub fn pop(&self) -> Option<u8> {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let byte = self.storage[tail % self.storage.len()].load(Ordering::Relaxed);
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Some(byte)
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.head.load(Ordering::Acquire).wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }

    /// Bytes received in total (including those dropped for lack of room).
    pub fn received(&self) -> usize {
        self.head.load(Ordering::Relaxed) + self.overflowed.load(Ordering::Relaxed)
    }

    /// Bytes dropped because the ring was full.
    pub fn overflowed(&self) -> usize {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The most bytes ever held at once.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn storage(length: usize) -> &'static [AtomicU8] {
        Box::leak((0..length).map(|_| AtomicU8::new(0)).collect::<Vec<_>>().into_boxed_slice())
    }

    #[test]
    fn fills_drains_and_counts_overflow() {
        let ring = ByteRing::new(storage(4));
        assert!(ring.is_empty());
        for byte in 1..=4 {
            assert!(ring.push(byte));
        }
        assert!(!ring.push(5), "full ring refuses");
        assert_eq!((ring.len(), ring.overflowed(), ring.received(), ring.high_water()), (4, 1, 5, 4));
        assert_eq!((1..=4).map(|_| ring.pop().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(ring.pop(), None);
        assert_eq!(ring.line_end_ns(), 0);
        ring.push_stamped(b'x', 5);
        ring.push_stamped(b'\r', 7);
        ring.push_stamped(b'y', 9);
        assert_eq!(ring.line_end_ns(), 7, "only line ends are stamped");
    }

    #[test]
    fn producer_and_consumer_threads_lose_nothing() {
        let ring: Arc<ByteRing<'static>> = Arc::new(ByteRing::new(storage(64)));
        let producer = {
            let ring = Arc::clone(&ring);
            std::thread::spawn(move || {
                for value in 0..100_000u32 {
                    while !ring.push(value as u8) {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut expected = 0u32;
        while expected < 100_000 {
            if let Some(byte) = ring.pop() {
                assert_eq!(byte, expected as u8);
                expected += 1;
            }
        }
        producer.join().unwrap();
        assert!(ring.is_empty());
    }

    proptest! {
        #[test]
        fn behaves_like_a_bounded_queue(operations in proptest::collection::vec(proptest::option::of(any::<u8>()), 0..300)) {
            let ring = ByteRing::new(storage(16));
            let mut model = std::collections::VecDeque::new();
            for operation in operations {
                match operation {
                    Some(byte) => {
                        let accepted = ring.push(byte);
                        prop_assert_eq!(accepted, model.len() < 16);
                        if accepted { model.push_back(byte); }
                    }
                    None => prop_assert_eq!(ring.pop(), model.pop_front()),
                }
                prop_assert_eq!(ring.len(), model.len());
            }
        }
    }
}
