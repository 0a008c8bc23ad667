//! The contiguous KV cache: one flat buffer per kind, indexed by layer, position and value.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

use crate::hil::{KvError, KvStore};

/// Keys and values for `capacity` positions of every layer, allocated once.
#[derive(Clone, Debug)]
pub struct ContiguousKv {
    kv_dim: usize,
    layers: usize,
    capacity: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl ContiguousKv {
    /// A store for `layers` layers, rows of `kv_dim` values and `capacity` positions.
    /// Returns `None` when the size overflows.
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> Option<Self> {
        let size = layers.checked_mul(kv_dim)?.checked_mul(capacity)?;
        Some(Self { kv_dim, layers, capacity, keys: vec![0.0; size], values: vec![0.0; size] })
    }

    fn start(&self, layer: usize, position: usize) -> usize {
        (layer * self.capacity + position) * self.kv_dim
    }
}

impl KvStore for ContiguousKv {
    fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    fn layers(&self) -> usize {
        self.layers
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn write(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) -> Result<(), KvError> {
        crate::hil::check_write(self, layer, position, key, value)?;
        let start = self.start(layer, position);
        self.keys[start..start + self.kv_dim].copy_from_slice(key);
        self.values[start..start + self.kv_dim].copy_from_slice(value);
        Ok(())
    }

    fn keys_from(&self, layer: usize, position: usize) -> &[f32] {
        &self.keys[self.start(layer, position)..self.start(layer + 1, 0)]
    }

    fn values_from(&self, layer: usize, position: usize) -> &[f32] {
        &self.values[self.start(layer, position)..self.start(layer + 1, 0)]
    }

    fn truncate(&mut self, _length: usize) {
        // Rows past `length` are simply rewritten before they are read again.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_rows_per_layer_and_position() {
        let mut store = ContiguousKv::new(2, 3, 4).unwrap();
        store.write(1, 2, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).unwrap();
        store.write(0, 2, &[7.0; 3], &[8.0; 3]).unwrap();
        assert_eq!(store.key(1, 2), &[1.0, 2.0, 3.0]);
        assert_eq!(store.value(1, 2), &[4.0, 5.0, 6.0]);
        assert_eq!(store.key(0, 2), &[7.0; 3]);
        store.write(1, 3, &[9.0; 3], &[10.0; 3]).unwrap();
        // A layer's rows lie together: the run from position 2 holds positions 2 and 3.
        assert_eq!(store.keys_from(1, 2), &[1.0, 2.0, 3.0, 9.0, 9.0, 9.0]);
        assert_eq!(store.values_from(1, 2), &[4.0, 5.0, 6.0, 10.0, 10.0, 10.0]);
        assert_eq!(store.keys_from(0, 2)[..3], [7.0; 3]);
        assert_eq!(
            store.write(0, 4, &[0.0; 3], &[0.0; 3]),
            Err(KvError::PositionOutOfRange { position: 4, capacity: 4 })
        );
        assert_eq!(store.write(2, 0, &[0.0; 3], &[0.0; 3]), Err(KvError::LayerOutOfRange { layer: 2 }));
        assert_eq!(
            store.write(0, 0, &[0.0; 2], &[0.0; 3]),
            Err(KvError::WrongRowLength { length: 2, expected: 3 })
        );
        assert!(ContiguousKv::new(usize::MAX, 2, 2).is_none());
    }
}
