//! `KvStore`: how attention reads and appends keys and values, per layer and position.
//!
//! The inference engine ships a contiguous store; the paged KV cache (`mm::kv`) implements the
//! same trait, so the forward pass never knows which one it is using.

use core::fmt;

/// Why a K/V row could not be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The position is at or past the store's capacity (context length or quota).
    PositionOutOfRange {
        /// The position asked for.
        position: usize,
        /// The store's capacity in positions.
        capacity: usize,
    },
    /// The layer index is not below the number of layers.
    LayerOutOfRange {
        /// The layer asked for.
        layer: usize,
    },
    /// The row length does not equal `kv_dim`.
    WrongRowLength {
        /// The length given.
        length: usize,
        /// The length expected.
        expected: usize,
    },
    /// No memory is left for another block.
    OutOfMemory,
}

impl fmt::Display for KvError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::PositionOutOfRange { position, capacity } => {
                write!(formatter, "position {position} is past the KV capacity of {capacity}")
            }
            KvError::LayerOutOfRange { layer } => write!(formatter, "layer {layer} does not exist"),
            KvError::WrongRowLength { length, expected } => {
                write!(formatter, "K/V row has {length} values, expected {expected}")
            }
            KvError::OutOfMemory => write!(formatter, "no memory left for KV blocks"),
        }
    }
}

/// Checks a [`KvStore::write`] request against a store's shape: the layer exists, the
/// position is inside the capacity, and both rows are `kv_dim` long. Every store calls it
/// before writing.
pub fn check_write(
    store: &(impl KvStore + ?Sized),
    layer: usize,
    position: usize,
    key: &[f32],
    value: &[f32],
) -> Result<(), KvError> {
    if layer >= store.layers() {
        return Err(KvError::LayerOutOfRange { layer });
    }
    if position >= store.capacity() {
        return Err(KvError::PositionOutOfRange { position, capacity: store.capacity() });
    }
    for row in [key, value] {
        if row.len() != store.kv_dim() {
            return Err(KvError::WrongRowLength { length: row.len(), expected: store.kv_dim() });
        }
    }
    Ok(())
}

/// Per-sequence storage of attention keys and values.
///
/// A row is `kv_dim()` values: all KV heads of one layer at one position. Positions are written
/// in order, each layer once per position, before they are read. A store is `Sync`: the cores
/// of a forward pass read it at once (attention, a head per core).
pub trait KvStore: Sync {
    /// Values per row: number of KV heads × head size.
    fn kv_dim(&self) -> usize;

    /// Number of layers.
    fn layers(&self) -> usize;

    /// Largest number of positions this store can hold.
    fn capacity(&self) -> usize;

    /// Stores the key and value rows of `layer` at `position`.
    fn write(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) -> Result<(), KvError>;

    /// The key rows of `layer` from `position` on, as many consecutive positions as lie
    /// together in memory (at least `position`'s): the row of `position + i` at `i ×
    /// kv_dim()`, so that a reader of many positions asks once per run. Only the rows of
    /// written positions may be read.
    fn keys_from(&self, layer: usize, position: usize) -> &[f32];

    /// The value rows of `layer` from `position` on, as [`KvStore::keys_from`] gives keys.
    fn values_from(&self, layer: usize, position: usize) -> &[f32];

    /// The key row of `layer` at `position`. `position` must have been written.
    fn key(&self, layer: usize, position: usize) -> &[f32] {
        &self.keys_from(layer, position)[..self.kv_dim()]
    }

    /// The value row of `layer` at `position`. `position` must have been written.
    fn value(&self, layer: usize, position: usize) -> &[f32] {
        &self.values_from(layer, position)[..self.kv_dim()]
    }

    /// Forgets every position at or past `length`.
    fn truncate(&mut self, length: usize);
}

/// A borrowed store is a store, so a session can work on a cache it does not own.
impl<Store: KvStore + ?Sized> KvStore for &mut Store {
    fn kv_dim(&self) -> usize {
        (**self).kv_dim()
    }

    fn layers(&self) -> usize {
        (**self).layers()
    }

    fn capacity(&self) -> usize {
        (**self).capacity()
    }

    fn write(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) -> Result<(), KvError> {
        (**self).write(layer, position, key, value)
    }

    fn keys_from(&self, layer: usize, position: usize) -> &[f32] {
        (**self).keys_from(layer, position)
    }

    fn values_from(&self, layer: usize, position: usize) -> &[f32] {
        (**self).values_from(layer, position)
    }

    fn truncate(&mut self, length: usize) {
        (**self).truncate(length)
    }
}
