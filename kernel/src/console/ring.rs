//! A lock-free single-producer, single-consumer byte ring: the UART receive interrupt pushes,
//! the console loop pops. Bytes that do not fit are counted, never silently lost; and
//! [`ReceiveFlow`], the receive side's flow control, never lets them come to that: when the ring
//! is full the bytes stay in the UART until the consumer has made room.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

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
        let mut byte = [0];
        (self.pop_into(&mut byte) == 1).then_some(byte[0])
    }

    /// Consumer side: moves the oldest bytes, up to `out`'s length, into `out`; returns how
    /// many.
    pub fn pop_into(&self, out: &mut [u8]) -> usize {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let count = head.wrapping_sub(tail).min(out.len());
        let capacity = self.storage.len();
        let (mut index, mut position) = (0, tail % capacity.max(1));
        while index < count {
            let run = (count - index).min(capacity - position);
            for (slot, cell) in
                out[index..index + run].iter_mut().zip(&self.storage[position..position + run])
            {
                *slot = cell.load(Ordering::Relaxed);
            }
            index += run;
            position = 0;
        }
        self.tail.store(tail.wrapping_add(count), Ordering::Release);
        count
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.head.load(Ordering::Acquire).wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the ring holds as many bytes as it can.
    pub fn is_full(&self) -> bool {
        self.len() >= self.storage.len()
    }

    /// Bytes that can be pushed before the ring is full.
    pub fn room(&self) -> usize {
        self.storage.len().saturating_sub(self.len())
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

/// Whether the receive path is taking bytes from the UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Bytes are taken as they arrive: the UART's receive interrupts are enabled.
    Open,
    /// The ring is full: bytes stay in the UART's FIFO and its receive interrupts are masked
    /// until the consumer has made room. A FIFO that fills holds the sender back (QEMU stops
    /// reading its input; a board with RTS/CTS drops RTS).
    Paused,
}

/// The receive ring with flow control: the receive interrupt takes bytes from the UART only
/// while the ring has room, and stops (leaving the rest in the UART) when it is full; the
/// consumer starts it again once it has popped at least `resume_room` bytes' worth of room.
///
/// Invariants:
/// - no byte is dropped: a byte leaves the UART only when the ring has room for it;
/// - while [`ReceiveFlow::is_paused`], the producer takes nothing ([`ReceiveFlow::fill`]
///   returns at once) and its caller keeps the UART's receive interrupts masked; only
///   [`ReceiveFlow::resume`] clears the pause;
/// - a pause always ends: the consumer checks [`ReceiveFlow::resume_due`] after each pop, and
///   an empty ring has all its capacity as room (`resume_room` is at most the capacity).
///
/// Contexts: one producer (the receive interrupt handler) and one consumer (the console loop),
/// on the same core; [`ReceiveFlow::resume`] moves bytes like the producer, so its caller must
/// keep the producer out while it runs (on that core: with interrupts masked).
#[derive(Debug)]
pub struct ReceiveFlow<'storage> {
    ring: ByteRing<'storage>,
    paused: AtomicBool,
    resume_room: usize,
    pauses: AtomicU64,
}

impl<'storage> ReceiveFlow<'storage> {
    /// Flow control over `ring`: after a pause, taking resumes once the ring has `resume_room`
    /// bytes of room (clamped to 1..=capacity).
    pub fn new(ring: ByteRing<'storage>, resume_room: usize) -> Self {
        let resume_room = resume_room.clamp(1, ring.capacity().max(1));
        Self { ring, paused: AtomicBool::new(false), resume_room, pauses: AtomicU64::new(0) }
    }

    /// The ring (for its counters).
    pub fn ring(&self) -> &ByteRing<'storage> {
        &self.ring
    }

    /// Producer side (the receive interrupt): moves bytes from `source` (the UART's receive
    /// FIFO; `None` when it is empty) into the ring while it has room, stamping line ends with
    /// `now_ns`. Returns [`Flow::Paused`] when it stopped because the ring is full (the caller
    /// masks the receive interrupts), [`Flow::Open`] when the source ran dry. Takes nothing
    /// while paused.
    pub fn fill(&self, source: impl FnMut() -> Option<u8>, now_ns: u64) -> Flow {
        if self.is_paused() {
            return Flow::Paused;
        }
        self.take_while_room(source, now_ns)
    }

    fn take_while_room(&self, mut source: impl FnMut() -> Option<u8>, now_ns: u64) -> Flow {
        loop {
            if self.ring.is_full() {
                self.paused.store(true, Ordering::Release);
                self.pauses.fetch_add(1, Ordering::Relaxed);
                return Flow::Paused;
            }
            let Some(byte) = source() else { return Flow::Open };
            self.ring.push_stamped(byte, now_ns);
        }
    }

    /// Consumer side: the oldest byte, if any. Follow it with a check of
    /// [`ReceiveFlow::resume_due`].
    pub fn pop(&self) -> Option<u8> {
        self.ring.pop()
    }

    /// Consumer side: moves the oldest bytes into `out` (see [`ByteRing::pop_into`]). Follow
    /// it with a check of [`ReceiveFlow::resume_due`].
    pub fn pop_into(&self, out: &mut [u8]) -> usize {
        self.ring.pop_into(out)
    }

    /// Whether the pause can end: paused, and the consumer has made enough room.
    pub fn resume_due(&self) -> bool {
        self.is_paused() && self.ring.room() >= self.resume_room
    }

    /// Consumer side, with the producer kept out: when a resume is due, clears the pause and
    /// takes what waits in `source` as [`ReceiveFlow::fill`] would (the UART may not raise its
    /// receive interrupt again for bytes that were already there). Returns `None` when no
    /// resume was due, else the flow after taking: [`Flow::Open`] means the caller unmasks the
    /// receive interrupts, [`Flow::Paused`] that the ring filled again and they stay masked.
    pub fn resume(&self, source: impl FnMut() -> Option<u8>, now_ns: u64) -> Option<Flow> {
        if !self.resume_due() {
            return None;
        }
        self.paused.store(false, Ordering::Release);
        Some(self.take_while_room(source, now_ns))
    }

    /// Whether the producer is paused (the UART holds the incoming bytes).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// How many times the ring filled and the sender was held back.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// The room a resume waits for.
    pub fn resume_room(&self) -> usize {
        self.resume_room
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
        fn behaves_like_a_bounded_queue(operations in proptest::collection::vec((0..3u8, any::<u8>()), 0..300)) {
            let ring = ByteRing::new(storage(16));
            let mut model = std::collections::VecDeque::new();
            for (kind, byte) in operations {
                match kind {
                    0 => {
                        let accepted = ring.push(byte);
                        prop_assert_eq!(accepted, model.len() < 16);
                        if accepted { model.push_back(byte); }
                    }
                    1 => prop_assert_eq!(ring.pop(), model.pop_front()),
                    _ => {
                        // A bulk pop into a buffer of 0-20 bytes, across the wrap.
                        let mut out = [0u8; 20];
                        let wanted = usize::from(byte) % (out.len() + 1);
                        let count = ring.pop_into(&mut out[..wanted]);
                        prop_assert_eq!(count, wanted.min(model.len()));
                        let expected: Vec<u8> = model.drain(..count).collect();
                        prop_assert_eq!(&out[..count], &expected[..]);
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
            }
        }
    }

    /// A UART receiving from a sender that it can hold back: a FIFO of 16 bytes, the receive
    /// interrupt's mask bit, and its status bit, raised as QEMU's PL011 raises it (when a
    /// byte lands in an empty FIFO, so bytes left behind after an acknowledge raise nothing);
    /// driven by the interrupt handler and the console loop as the kernel drives them.
    struct HeldBackUart {
        sender: Vec<u8>,
        sent: usize,
        fifo: std::collections::VecDeque<u8>,
        raised: bool,
        masked: bool,
        delivered: Vec<u8>,
    }

    impl HeldBackUart {
        const DEPTH: usize = 16;

        fn new(sender: Vec<u8>) -> Self {
            Self {
                sender,
                sent: 0,
                fifo: Default::default(),
                raised: false,
                masked: false,
                delivered: Vec::new(),
            }
        }

        /// The line carries up to `count` bytes; a full FIFO holds the sender back.
        fn arrive(&mut self, count: usize) {
            for _ in 0..count {
                if self.fifo.len() == Self::DEPTH || self.sent == self.sender.len() {
                    return;
                }
                self.raised |= self.fifo.is_empty();
                self.fifo.push_back(self.sender[self.sent]);
                self.sent += 1;
            }
        }

        /// The interrupt handler, as the receive or transmit interrupt runs it (`spurious`: not
        /// raised by a received byte, so it runs even while receive is masked).
        fn interrupt(&mut self, flow: &ReceiveFlow<'_>, spurious: bool) {
            if !(self.raised && !self.masked || spurious) {
                return;
            }
            // Acknowledge first, then take (as the driver does).
            self.raised = false;
            let fifo = &mut self.fifo;
            if flow.fill(|| fifo.pop_front(), 0) == Flow::Paused {
                self.masked = true;
            }
        }

        /// The console loop pops up to `count` bytes, checking for a resume after each.
        fn consume(&mut self, flow: &ReceiveFlow<'_>, count: usize) {
            for _ in 0..count {
                let byte = flow.pop();
                if flow.resume_due() {
                    self.raised = false;
                    let fifo = &mut self.fifo;
                    if flow.resume(|| fifo.pop_front(), 0) == Some(Flow::Open) {
                        self.masked = false;
                    }
                }
                match byte {
                    Some(byte) => self.delivered.push(byte),
                    None => return,
                }
            }
        }

        fn check(&self, flow: &ReceiveFlow<'_>) -> Result<(), TestCaseError> {
            prop_assert_eq!(self.masked, flow.is_paused(), "masked exactly while paused");
            prop_assert_eq!(flow.ring().overflowed(), 0);
            prop_assert!(self.fifo.len() <= Self::DEPTH);
            prop_assert_eq!(&self.delivered[..], &self.sender[..self.delivered.len()], "in order");
            Ok(())
        }
    }

    #[derive(Clone, Debug)]
    enum Event {
        Arrive(usize),
        Interrupt { spurious: bool },
        Consume(usize),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..40usize).prop_map(Event::Arrive),
            any::<bool>().prop_map(|spurious| Event::Interrupt { spurious }),
            (0..40usize).prop_map(Event::Consume),
        ]
    }

    #[test]
    fn a_full_ring_pauses_and_the_consumer_resumes_it() {
        let flow = ReceiveFlow::new(ByteRing::new(storage(8)), 4);
        let mut fifo: std::collections::VecDeque<u8> = (0..20).collect();
        assert_eq!(flow.fill(|| fifo.pop_front(), 0), Flow::Paused);
        assert_eq!((flow.ring().len(), fifo.len(), flow.pauses()), (8, 12, 1), "the rest stays in the UART");
        assert_eq!(flow.fill(|| fifo.pop_front(), 0), Flow::Paused, "nothing taken while paused");
        assert_eq!(fifo.len(), 12);
        for expected in 0..3 {
            assert_eq!(flow.pop(), Some(expected));
            assert!(!flow.resume_due(), "3 bytes of room is less than 4");
            assert_eq!(flow.resume(|| fifo.pop_front(), 0), None);
        }
        assert_eq!(flow.pop(), Some(3));
        assert!(flow.resume_due());
        assert_eq!(flow.resume(|| fifo.pop_front(), 0), Some(Flow::Paused), "refilled at once");
        assert_eq!((fifo.len(), flow.pauses()), (8, 2));
        while flow.pop().is_some() {}
        assert_eq!(flow.resume(|| fifo.pop_front(), 0), Some(Flow::Paused));
        while flow.pop().is_some() {}
        assert_eq!(flow.resume(|| fifo.pop_front(), 0), Some(Flow::Open), "the UART ran dry");
        assert!(!flow.is_paused());
        assert_eq!((flow.ring().received(), flow.ring().overflowed()), (20, 0));
        assert_eq!(ReceiveFlow::new(ByteRing::new(storage(8)), 100).resume_room(), 8);
        assert_eq!(ReceiveFlow::new(ByteRing::new(storage(8)), 0).resume_room(), 1);
    }

    #[test]
    fn line_ends_taken_by_a_resume_are_stamped() {
        let flow = ReceiveFlow::new(ByteRing::new(storage(2)), 2);
        let mut fifo: std::collections::VecDeque<u8> = b"ab\r".iter().copied().collect();
        assert_eq!(flow.fill(|| fifo.pop_front(), 5), Flow::Paused);
        flow.pop();
        flow.pop();
        assert_eq!(flow.resume(|| fifo.pop_front(), 9), Some(Flow::Open));
        assert_eq!(flow.ring().line_end_ns(), 9);
    }

    proptest! {
        /// Any interleaving of arrivals, interrupts (raised or spurious) and reads loses
        /// nothing, keeps order, keeps the interrupt masked exactly while paused, and once the
        /// sender is done and the console keeps reading, every byte is delivered.
        #[test]
        fn flow_control_loses_nothing_and_always_resumes(
            sender in proptest::collection::vec(any::<u8>(), 0..400),
            capacity in 1..48usize,
            resume_room in 0..64usize,
            events in proptest::collection::vec(event(), 0..200),
        ) {
            let flow = ReceiveFlow::new(ByteRing::new(storage(capacity)), resume_room);
            let mut uart = HeldBackUart::new(sender);
            for event in events {
                match event {
                    Event::Arrive(count) => uart.arrive(count),
                    Event::Interrupt { spurious } => uart.interrupt(&flow, spurious),
                    Event::Consume(count) => uart.consume(&flow, count),
                }
                uart.check(&flow)?;
            }
            // Every round moves at least one byte until all are delivered.
            for _ in 0..=uart.sender.len() + 1 {
                uart.arrive(HeldBackUart::DEPTH);
                uart.interrupt(&flow, false);
                uart.consume(&flow, usize::MAX);
                uart.check(&flow)?;
            }
            prop_assert_eq!(&uart.delivered, &uart.sender);
            prop_assert!(!flow.is_paused());
        }
    }
}
