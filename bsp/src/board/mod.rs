//! Boards: memory maps, budgets and drivers for each supported board.

pub mod budget;
pub mod rpi3;
