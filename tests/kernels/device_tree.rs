//! QEMU test (booted with `-dtb`): boot finds the device tree at x0, checks its magic, parses
//! it with `fdt`, its memory node agrees with the mailbox, and its four cpus on one memory node
//! make the topology the banner states.

#![no_std]
#![no_main]

use kernel::{boot_info::MemorySource, mm::layout::MIB, topology::TopologySource};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(info.device_tree, "no device tree was found at entry");
    ensure!(info.memory_source == MemorySource::DeviceTree, "memory came from {:?}", info.memory_source);
    ensure!(info.plan.ram_map.low == 960 * MIB, "{} MiB", info.plan.ram_map.low / MIB);
    let topology = &info.topology;
    ensure!(topology.source() == TopologySource::DeviceTree, "topology from {:?}", topology.source());
    ensure!(topology.cores() == 4 && topology.nodes() == 1, "{topology}");
    ensure!((0..4).all(|core| topology.core_id(core) == Some(core as u64)), "cpu reg values {topology:?}");
    boot::print!("{}", info.banner());
    pass()
}
