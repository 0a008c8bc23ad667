//! Tensor memory manager: the typed regions boot maps, and the pools built over them.
//!
//! [`layout`] turns the board's budget and the detected RAM into typed regions (weights, KV,
//! activations, protocol, DMA, heap). The pools that manage each region live beside it:
//!
//! - [`chunk`]: address-ordered, coalescing blocks of 1 MiB and more (weights), 2 MiB-aligned
//!   on request;
//! - [`buddy`]: 4 KiB – 1 MiB power-of-two blocks (KV blocks, activations, slabs);
//! - [`slab`]: 16 B – 4 KiB size classes with per-core magazines, fed by a buddy allocator;
//! - [`rt`]: the isolated TLSF pool for protocol buffers, O(1) and deadline-aware;
//! - [`dma`]: cache-line-granular buffers in the non-cacheable DMA region;
//! - [`kv`]: the paged KV cache: fixed-size blocks carved from KV chunks, and per-sequence
//!   block tables implementing `hil::KvStore`;
//! - [`tensor`]: `TensorMemory`, which builds them all from a plan and routes by tensor kind;
//!   the weights, KV and activation pools are per memory node of the topology;
//! - [`scope`]: typed allocation scopes, which route the serving path's `alloc` allocations
//!   (`Vec`, `String`) to the slab, activations or RT pool instead of the global heap;
//! - [`stats`] and [`error`]: counters, histograms, the memory-map report, and `MemError`;
//! - [`copy`]: `tensor_copy`, and `stage_copy`, which offloads large copies to a
//!   `hil::CopyEngine` (the DMA engine) while the core computes; and [`buffer`]: owning buffers
//!   over pools whose regions are real RAM. These two are the only code here that touches the memory itself;
//! - [`handout`]: a buffer the cores of a parallel run fill in disjoint pieces and then read
//!   whole (the forward pass's outputs), another module with `unsafe`; and [`kv`]'s block
//!   handles, which read and write their blocks' values in place.
//!
//! Every allocator manages address ranges with metadata on the kernel heap, so all of it but
//! [`copy`], [`buffer`], [`handout`] and [`kv`] is safe Rust and runs on the host without the
//! memory it describes (the crate denies `unsafe` elsewhere).

pub mod buddy;
pub mod buffer;
pub mod chunk;
pub mod copy;
pub mod dma;
pub mod error;
pub mod handout;
pub mod kv;
pub mod layout;
pub mod rt;
pub mod scope;
pub mod slab;
pub mod stats;
pub mod tensor;

pub use error::MemError;
