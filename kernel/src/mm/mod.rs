//! Tensor memory manager: the typed regions boot maps, and the pools built over them.
//!
//! [`layout`] turns the board's budget and the detected RAM into typed regions (weights, KV,
//! activations, protocol, DMA, heap). The pools that manage each region live beside it.

pub mod buddy;
pub mod chunk;
pub mod copy;
pub mod dma;
pub mod error;
pub mod layout;
pub mod rt;
pub mod slab;
pub mod stats;
pub mod tensor;

pub use error::MemError;
