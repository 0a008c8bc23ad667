//! QEMU test: the boot banner names the version, board, EL, cores, cache line, seed and every
//! region of the memory map.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::ToString;
use kernel::mm::layout::RegionKind;
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    let banner = info.banner().to_string();
    boot::print!("{banner}");
    for expected in [
        "Tessera 0.1.0",
        "Raspberry Pi 3 Model B (revision 0xa02082)",
        "EL1 (entered at EL2)",
        "4 online",
        "cache line   64 bytes",
        "0x000000007e55e7a0 (fixed)",
        "960 MiB ARM RAM",
        "row Pi 3B+",
        "kernel text",
        "normal NC RW  2M",
        "device    RW  2M",
    ] {
        ensure!(banner.contains(expected), "banner lacks {expected:?}");
    }
    for kind in RegionKind::ALL.iter().filter(|kind| **kind != RegionKind::Kernel) {
        ensure!(banner.contains(kind.name()), "banner lacks region {}", kind.name());
    }
    pass()
}
