//! QEMU test (raspi3ap, 512 MiB board with 448 MiB for the ARM): boot chooses the Zero 2W
//! budget row and scales it to 448 MiB.

#![no_std]
#![no_main]

use kernel::mm::layout::MIB;
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    let budget = info.plan.budget;
    ensure!(info.plan.ram() == 448 * MIB, "ARM memory {} MiB", info.plan.ram() / MIB);
    ensure!(info.budget_row == "Pi Zero 2W", "row {}", info.budget_row);
    ensure!(budget.total() == 448 * MIB, "budget covers {} MiB", budget.total() / MIB);
    ensure!(budget.llm == 372 * MIB && budget.protocol == 4 * MIB, "budget {budget:?}");
    ensure!(info.plan.regions.iter().all(|region| region.end() <= 448 * MIB), "a region lies past RAM");
    boot::println!("{} uses row {} on 448 MiB: {budget:?}", info.board, info.budget_row);
    pass()
}
