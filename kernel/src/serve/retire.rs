//! Models that were replaced by a hot-swap, freed a piece at a time between tokens.
//!
//! A served model is two buffers of the weights pool: its file and its tables (tensor index
//! and tokenizer). A replaced model is retired here: as soon as no batch holds it, its buffers
//! go back to the pool one per unit of work (a buffer's release is one chunk-allocator
//! operation), within the time a round may spend on background work.

#![forbid(unsafe_code)]

use super::{chat::ServedModel, library::LongestUnit};
use crate::hil::Clock;
use alloc::{sync::Arc, vec::Vec};
use core::ops::Deref;

/// Replaced models waiting to be freed.
pub struct Retired<Bytes: Deref<Target = [u8]>> {
    /// Models some batch may still use (each is freed once this is the last reference).
    held: Vec<Arc<ServedModel<Bytes>>>,
    /// Tables buffers of models whose weights are already freed.
    shedding: Vec<Bytes>,
    /// The longest unit of freeing since [`Retired::take_longest_unit`].
    longest_unit: LongestUnit,
}

impl<Bytes: Deref<Target = [u8]>> Default for Retired<Bytes> {
    fn default() -> Self {
        Self { held: Vec::new(), shedding: Vec::new(), longest_unit: LongestUnit::default() }
    }
}

impl<Bytes: Deref<Target = [u8]>> Retired<Bytes> {
    /// Takes a replaced model; batches still using it keep it alive through their references.
    pub fn retire(&mut self, model: Arc<ServedModel<Bytes>>) {
        self.held.push(model);
    }

    /// Whether anything is waiting to be freed.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.shedding.is_empty()
    }

    /// Whether something can be freed now (a model no batch holds, or the tables of one whose
    /// weights went first).
    pub fn has_work(&self) -> bool {
        !self.shedding.is_empty() || self.held.iter().any(|model| Arc::strong_count(model) == 1)
    }

    /// Retired models (held by a batch or being taken apart).
    pub fn len(&self) -> usize {
        self.held.len() + self.shedding.len()
    }

    /// Frees in bounded units (a weights buffer, or a tables buffer), at least one, until
    /// `deadline_ns` of `clock` passes or nothing more can be freed now. Returns whether any
    /// work was done.
    pub fn work(&mut self, clock: &dyn Clock, deadline_ns: u64) -> bool {
        let mut worked = false;
        while !worked || clock.now_ns() < deadline_ns {
            let started = clock.now_ns();
            let what = if let Some(index) = self.held.iter().position(|model| Arc::strong_count(model) == 1) {
                let model = self.held.swap_remove(index);
                if let Ok(model) = Arc::try_unwrap(model) {
                    let (bytes, tables) = model.into_parts();
                    drop(bytes);
                    self.shedding.push(tables);
                }
                "free a model's weights"
            } else if let Some(tables) = self.shedding.pop() {
                drop(tables);
                "free a model's tables"
            } else {
                break;
            };
            self.longest_unit.note(clock.now_ns().saturating_sub(started), what);
            worked = true;
        }
        self.drop_empty_lists();
        worked
    }

    /// The longest unit of freeing since the last call, and starts counting again.
    pub fn take_longest_unit(&mut self) -> LongestUnit {
        core::mem::take(&mut self.longest_unit)
    }

    /// Frees everything no batch holds at once (when nothing is generating).
    pub fn release_unheld(&mut self) {
        self.held.retain(|model| Arc::strong_count(model) > 1);
        self.shedding.clear();
        self.drop_empty_lists();
    }

    /// Gives back the memory of a list that emptied, so that with nothing retired nothing is
    /// held (however many models were retired at once before): the idle pools are the same
    /// after any number of swaps.
    fn drop_empty_lists(&mut self) {
        if self.held.is_empty() {
            self.held = Vec::new();
        }
        if self.shedding.is_empty() {
            self.shedding = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        infer::synthetic::{SyntheticFormat, SyntheticSpec},
        model::TensorType,
    };
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Moves 1 µs per read.
    #[derive(Default)]
    struct TickingClock(AtomicU64);

    impl Clock for TickingClock {
        fn ticks(&self) -> u64 {
            self.0.fetch_add(1000, Ordering::Relaxed)
        }

        fn frequency_hz(&self) -> u64 {
            1_000_000_000
        }
    }

    fn model() -> ServedModel<Vec<u8>> {
        let spec = SyntheticSpec::tiny(64, 3);
        let bytes = spec.generate(SyntheticFormat::Gguf(TensorType::Q8_0)).unwrap().model;
        let length = bytes.len();
        ServedModel::new("m.gguf", bytes, length, None).unwrap()
    }

    #[test]
    fn a_held_model_waits_and_a_free_one_is_taken_apart_in_bounded_units() {
        let clock = TickingClock::default();
        let mut retired = Retired::default();
        let model = Arc::new(model());
        let batch = Arc::clone(&model);
        retired.retire(model);
        // A batch still uses it: nothing can be freed.
        assert!(!retired.has_work());
        assert!(!retired.work(&clock, clock.now_ns() + 1_000_000));
        assert_eq!(retired.len(), 1);
        drop(batch);
        assert!(retired.has_work());
        // Each call with an already passed deadline does one unit: the weights first, then
        // the tables.
        let mut units = 0;
        while !retired.is_empty() {
            assert!(retired.work(&clock, 0));
            units += 1;
            assert!(units <= 2);
        }
        assert_eq!(units, 2, "the weights and the tables, one unit each");
        assert!(!retired.work(&clock, u64::MAX));
        assert_eq!((retired.held.capacity(), retired.shedding.capacity()), (0, 0), "nothing held when empty");
    }
}
