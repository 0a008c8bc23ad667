//! QEMU test: the boot banner names the version, board, EL, cores, cache line, seed and every
//! region of the memory map, for the board QEMU emulates (raspi3b or raspi4b, told apart by the
//! chip the cores belong to).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::ToString;
use bsp::board::soc::Soc;
use kernel::mm::layout::RegionKind;
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    let banner = info.banner().to_string();
    boot::print!("{banner}");
    let (board, row, windows, ram) = match Soc::current() {
        Soc::Bcm2837 => (
            "Raspberry Pi 3 Model B (revision 0xa02082)",
            "row Pi 3B+",
            "peripherals        0x3f000000",
            "960 MiB ARM RAM (",
        ),
        Soc::Bcm2711 => (
            "Raspberry Pi 4 Model B (revision 0xb03115)",
            "row Pi 4B",
            "local peripherals  0xff800000",
            "+ 1024 MiB at 0x40000000, above the VideoCore's (board revision): 1984 MiB",
        ),
    };
    for expected in [
        "Tessera 0.1.0",
        board,
        row,
        windows,
        "EL1 (entered at EL2)",
        "4 online",
        "cache line   64 bytes",
        "0x000000007e55e7a0 (fixed)",
        ram,
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
