//! QEMU test (booted with `-dtb`): boot finds the device tree at x0, checks its magic, parses
//! it with `fdt`, and its memory node agrees with the mailbox.

#![no_std]
#![no_main]

use kernel::{boot_info::MemorySource, mm::layout::MIB};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(info.device_tree, "no device tree was found at entry");
    ensure!(info.memory_source == MemorySource::DeviceTree, "memory came from {:?}", info.memory_source);
    ensure!(info.plan.ram == 960 * MIB, "{} MiB", info.plan.ram / MIB);
    ensure!(info.memory_nodes == 1, "{} memory nodes", info.memory_nodes);
    boot::print!("{}", info.banner());
    pass()
}
