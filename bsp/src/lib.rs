//! Tessera board support: the AArch64 architecture layer and the Raspberry Pi boards.
//!
//! Drivers implement the `kernel::hil` traits; pure logic (translation tables, syndrome
//! decoding, budget rows) is tested on the host. `bsp` never makes a policy decision: the
//! kernel's layout planner decides how RAM is split, `bsp` says what the board has.

#![cfg_attr(not(test), no_std)]

pub mod arch;
pub mod board;
pub mod mmio;
