//! Interrupt-driven transmit: writers put bytes into a ring, and a pump moves them into the
//! UART's transmit FIFO, from the transmit interrupt or right after a write. The cores never
//! wait for the line while the ring has room.
//!
//! The ring is single-producer, single-consumer; two locks make it safe from every core:
//! - the *writer* lock is held for a whole [`TransmitQueue::write`], so messages from
//!   different cores never interleave;
//! - the *pump* lock is held while bytes move into the FIFO (at most one FIFO's worth, so it is
//!   held briefly). The interrupt handler only *tries* it ([`TransmitQueue::interrupt`]): when
//!   a pump is already running, possibly on the very code the interrupt stopped, the handler
//!   masks the transmit interrupt and leaves a note, and that pump goes round once more.
//!   Nothing masks interrupts around a pump.
//!
//! Why nothing is stranded: every write is followed by a pump that runs after the bytes are in
//! the ring, and the pump decides whether the transmit interrupt stays enabled under its lock,
//! from the ring's state at that moment: enabled while bytes wait, masked when none do. A
//! handler that could not take the lock sets the note before the holder releases it, and the
//! holder reads the note after releasing, so the holder's extra round sees the handler's mask.

#![forbid(unsafe_code)]

use super::ring::ByteRing;
use crate::hil::TransmitFifo;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// What the transmit path has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransmitStatistics {
    /// Bytes handed to the UART.
    pub sent: u64,
    /// Pumps that moved at least one byte.
    pub pumps: u64,
    /// Writes that found the ring full and had to wait for the line.
    pub waits: u64,
    /// The most bytes ever waiting in the ring.
    pub high_water: usize,
}

/// Bytes on their way out of a UART.
pub struct TransmitQueue<'storage> {
    ring: ByteRing<'storage>,
    writer: Mutex<()>,
    pump: Mutex<()>,
    /// Set by an interrupt that found the pump lock taken: the holder pumps once more.
    missed: AtomicBool,
    sent: AtomicU64,
    pumps: AtomicU64,
    waits: AtomicU64,
}

impl<'storage> TransmitQueue<'storage> {
    /// A queue over `ring` (protocol-pool memory in the kernel).
    pub const fn new(ring: ByteRing<'storage>) -> Self {
        Self {
            ring,
            writer: Mutex::new(()),
            pump: Mutex::new(()),
            missed: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            pumps: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        }
    }

    /// Queues all of `bytes`, pumping after each batch put into the ring; when the ring is full
    /// it calls `wait` (which should pump or sleep until the transmit interrupt has drained
    /// some) until there is room again.
    pub fn write(&self, bytes: &[u8], fifo: &dyn TransmitFifo, wait: impl Fn(&Self)) {
        let _writer = self.writer.lock();
        let mut rest = bytes;
        while !rest.is_empty() {
            let taken = rest.iter().take_while(|&&byte| self.ring.push(byte)).count();
            rest = &rest[taken..];
            self.pump(fifo);
            if !rest.is_empty() && !self.has_room() {
                self.waits.fetch_add(1, Ordering::Relaxed);
                wait(self);
            }
        }
    }

    /// From thread context, on any core: moves up to one FIFO's worth of waiting bytes into
    /// `fifo`, then enables the transmit interrupt if bytes still wait, or masks it if none do.
    pub fn pump(&self, fifo: &dyn TransmitFifo) {
        loop {
            {
                let _pump = self.pump.lock();
                self.missed.store(false, Ordering::SeqCst);
                self.move_bytes(fifo);
            }
            if !self.missed.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// From the transmit interrupt handler: like [`TransmitQueue::pump`], but never waits for
    /// the pump lock (its holder may be the code this interrupt stopped). When the lock is
    /// taken it masks the transmit interrupt and notes it, and the holder pumps once more.
    pub fn interrupt(&self, fifo: &dyn TransmitFifo) {
        match self.pump.try_lock() {
            Some(_pump) => self.move_bytes(fifo),
            None => {
                fifo.interrupt_on_room(false);
                self.missed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The pump's work, under the pump lock.
    fn move_bytes(&self, fifo: &dyn TransmitFifo) {
        if self.ring.is_empty() {
            // Leave the interrupt pending (not acknowledged): unmasking it later fires at once.
            fifo.interrupt_on_room(false);
            return;
        }
        fifo.acknowledge();
        let mut moved = 0;
        while moved < fifo.depth() && fifo.has_room() {
            let Some(byte) = self.ring.pop() else { break };
            fifo.put(byte);
            moved += 1;
        }
        if moved > 0 {
            self.sent.fetch_add(moved as u64, Ordering::Relaxed);
            self.pumps.fetch_add(1, Ordering::Relaxed);
        }
        fifo.interrupt_on_room(!self.ring.is_empty());
    }

    /// Whether bytes wait for the line.
    pub fn is_pending(&self) -> bool {
        !self.ring.is_empty()
    }

    /// Whether the ring can take another byte.
    pub fn has_room(&self) -> bool {
        self.ring.len() < self.ring.capacity()
    }

    /// What has been sent so far.
    pub fn statistics(&self) -> TransmitStatistics {
        TransmitStatistics {
            sent: self.sent.load(Ordering::Relaxed),
            pumps: self.pumps.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            high_water: self.ring.high_water(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicBool, AtomicU8};
    use std::sync::{Arc, Mutex as StdMutex};

    /// A UART transmitter on the host: a FIFO of `depth` bytes that a "line" thread empties,
    /// and the transmit interrupt's enable bit.
    struct Line {
        fifo: StdMutex<std::collections::VecDeque<u8>>,
        wire: StdMutex<Vec<u8>>,
        enabled: AtomicBool,
        depth: usize,
    }

    impl Line {
        fn new(depth: usize) -> Self {
            Self {
                fifo: StdMutex::default(),
                wire: StdMutex::default(),
                enabled: AtomicBool::new(false),
                depth,
            }
        }

        /// Sends one byte from the FIFO to the wire; true if the FIFO is now at or below half
        /// (where a PL011 set to a 1/2 trigger raises its transmit interrupt).
        fn shift_out(&self) -> bool {
            let mut fifo = self.fifo.lock().unwrap();
            if let Some(byte) = fifo.pop_front() {
                self.wire.lock().unwrap().push(byte);
            }
            fifo.len() <= self.depth / 2
        }
    }

    impl TransmitFifo for Line {
        fn has_room(&self) -> bool {
            self.fifo.lock().unwrap().len() < self.depth
        }
        fn put(&self, byte: u8) {
            let mut fifo = self.fifo.lock().unwrap();
            assert!(fifo.len() < self.depth, "the pump overfilled the FIFO");
            fifo.push_back(byte);
        }
        fn acknowledge(&self) {}
        fn interrupt_on_room(&self, enabled: bool) {
            self.enabled.store(enabled, Ordering::SeqCst);
        }
        fn depth(&self) -> usize {
            self.depth
        }
    }

    fn queue(capacity: usize) -> TransmitQueue<'static> {
        let storage: &'static [AtomicU8] =
            Box::leak((0..capacity).map(|_| AtomicU8::new(0)).collect::<Vec<_>>().into_boxed_slice());
        TransmitQueue::new(ByteRing::new(storage))
    }

    #[test]
    fn pump_moves_at_most_a_fifo_and_masks_when_empty() {
        let line = Line::new(16);
        let queue = queue(64);
        queue.write(&[7; 40], &line, |_| panic!("40 bytes fit in a 64-byte ring"));
        assert_eq!(line.fifo.lock().unwrap().len(), 16);
        assert!(line.enabled.load(Ordering::SeqCst), "bytes wait: the interrupt stays on");
        line.fifo.lock().unwrap().clear();
        queue.interrupt(&line);
        line.fifo.lock().unwrap().clear();
        queue.pump(&line);
        assert_eq!(queue.statistics().sent, 40);
        assert!(!line.enabled.load(Ordering::SeqCst), "nothing waits: the interrupt is masked");
        assert!(!queue.is_pending());
    }

    /// An interrupt that arrives while a pump holds the lock masks the interrupt and leaves a
    /// note; the pump's next round restores the interrupt and moves the bytes.
    #[test]
    fn an_interrupt_during_a_pump_is_not_lost() {
        let line = Line::new(4);
        let queue = queue(64);
        for byte in 0..10 {
            assert!(queue.ring.push(byte));
        }
        {
            let _held = queue.pump.lock();
            queue.interrupt(&line);
            assert!(!line.enabled.load(Ordering::SeqCst));
            assert!(line.fifo.lock().unwrap().is_empty(), "the handler did not wait for the lock");
        }
        // The holder's round runs, then, seeing the note, one more; the FIFO takes four bytes.
        queue.missed.store(true, Ordering::SeqCst);
        queue.pump(&line);
        assert_eq!(line.fifo.lock().unwrap().len(), 4);
        assert!(line.enabled.load(Ordering::SeqCst), "bytes wait: the interrupt is back on");
        assert!(!queue.missed.load(Ordering::SeqCst));
    }

    /// Writers on several threads, a line thread that shifts bytes out and interrupts whenever
    /// the FIFO is at half and the interrupt is enabled: every byte arrives once, in order
    /// within each message, and messages never interleave.
    #[test]
    fn concurrent_writers_lose_nothing_and_never_interleave() {
        let line = Arc::new(Line::new(16));
        let queue = Arc::new(queue(256));
        let done = Arc::new(AtomicBool::new(false));
        let interrupts = {
            let (line, queue, done) = (Arc::clone(&line), Arc::clone(&queue), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst)
                    || queue.is_pending()
                    || !line.fifo.lock().unwrap().is_empty()
                {
                    if line.shift_out() && line.enabled.load(Ordering::SeqCst) {
                        queue.interrupt(&*line);
                    }
                    std::thread::yield_now();
                }
            })
        };
        let writers: Vec<_> = (0..4u8)
            .map(|writer| {
                let (line, queue) = (Arc::clone(&line), Arc::clone(&queue));
                std::thread::spawn(move || {
                    for message in 0..30u8 {
                        let text: Vec<u8> = (0..(message as usize % 37 + 1)).map(|_| b'a' + writer).collect();
                        let framed = [&[b'<'][..], &text, b">"].concat();
                        queue.write(&framed, &*line, |_| std::thread::yield_now());
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|writer| writer.join().unwrap());
        done.store(true, Ordering::SeqCst);
        interrupts.join().unwrap();
        let wire = line.wire.lock().unwrap();
        let expected_bytes: usize = (0..30).map(|message| message % 37 + 3).sum::<usize>() * 4;
        assert_eq!(wire.len(), expected_bytes);
        assert_eq!(queue.statistics().sent as usize, expected_bytes);
        // Every message is `<` + one writer's letter repeated + `>`.
        let text = String::from_utf8(wire.clone()).unwrap();
        for message in text.split('<').skip(1) {
            let body = message.strip_suffix('>').expect("a message ends before the next starts");
            let first = body.as_bytes()[0];
            assert!(body.bytes().all(|byte| byte == first), "interleaved message: {body}");
        }
    }
}
