//! Boards: memory maps, budgets and drivers for each supported board.

pub mod budget;
pub mod doorbell;
pub mod rpi3;
pub mod rpi4;
pub mod sd_faults;
pub mod sd_protocol;
pub mod sdhci;
pub mod soc;
