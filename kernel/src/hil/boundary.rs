//! The plain data the board and the kernel share besides the traits: the memory plan boot
//! builds from the board's budget row and hands over ([`crate::mm::layout`]), the page sizes
//! the translation tables map it with, the protocol reserve and console ring size the budget
//! table is checked against, and the seeded generator the SD driver's fault hook draws from.
//! `bsp` reaches the kernel through [`crate::hil`] only, and this is the part of it that is
//! data rather than a trait.

#![forbid(unsafe_code)]

pub use crate::console::CONSOLE_RING_BYTES;
pub use crate::mm::layout::{BLOCK, Budget, MIB, MemoryPlan, RamMap, RegionKind, SEGMENT, system_need};
pub use crate::mm::tensor::PageSize;
pub use crate::rand::SplitMix64;
pub use crate::serve::PROTOCOL_RESERVE_BYTES;
