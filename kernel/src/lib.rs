//! Tessera's unikernel core: hardware-independent, `no_std` + `alloc`, and tested on the host.
//!
//! The board reaches this crate only through the traits in [`hil`]; boot hands over the typed
//! memory regions as plain data ([`mm::layout::MemoryPlan`]). Nothing here names a register,
//! a physical address or a board.
//!
//! Unsafe code is denied crate-wide; the few modules that need it say so at their top with
//! `#![allow(unsafe_code)]`: the raw-memory core of [`mm`] (`buffer`, `copy`, `handout`,
//! `kv`), the SIMD kernels of [`infer`] (`infer::simd` and its NEON and x86 halves) and the
//! copy engine's contract in [`hil`] (`hil::copy`).

#![deny(unsafe_code)]
#![cfg_attr(not(any(test, feature = "std")), no_std)]

extern crate alloc;

pub mod boot_info;
pub mod console;
pub mod devicetree;
pub mod fs;
pub mod hil;
pub mod infer;
pub mod mm;
pub mod model;
pub mod rand;
pub mod serve;
pub mod sync;
pub mod telemetry;
pub mod topology;
