//! AArch64 architecture support: translation tables, the generic timer, CPU control, cache
//! maintenance, faults.

pub mod cache;
pub mod cpu;
pub mod exception_class;
pub mod fault;
pub mod kernel_map;
pub mod mmu;
pub mod timer;
pub mod translation;
