//! QEMU test: the mailbox reports 960 MiB of ARM memory and the board's revision (a Pi 3B on
//! raspi3b, a 2 GiB Pi 4B on raspi4b, whose mailbox reports the same ARM memory below the
//! VideoCore's, and whose plan adds the 1 GiB above it), both at boot (MMU off) and again now
//! through the non-cacheable DMA region with the MMU on.

#![no_std]
#![no_main]

use bsp::{
    arch::aarch64::timer::GenericTimer,
    board::{rpi3::mailbox::Mailbox, soc::Soc},
};
use kernel::mm::layout::{MIB, RegionKind};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    let soc = Soc::current();
    let expected_revision = match soc {
        Soc::Bcm2837 => 0xa02082,
        Soc::Bcm2711 => 0xb03115,
    };
    ensure!(info.plan.ram_map.low == 960 * MIB, "boot saw {} MiB from 0", info.plan.ram_map.low / MIB);
    // On raspi4b the revision's 2 GiB put 1 GiB more at 1 GiB, above the VideoCore's share.
    let high = match soc {
        Soc::Bcm2837 => 0,
        Soc::Bcm2711 => 1024 * MIB,
    };
    ensure!(info.plan.ram() == 960 * MIB + high, "boot planned {} MiB", info.plan.ram() / MIB);
    ensure!(info.board_revision == expected_revision, "revision {:#x}", info.board_revision);
    let dma = info.plan.region(RegionKind::Dma);
    // SAFETY: the chip's mailbox block; the first page of the DMA region is the mailbox buffer,
    // non-cacheable, and boot no longer uses it.
    let mut mailbox = unsafe { Mailbox::new(soc.map().mailbox, dma.base as *mut u32) };
    let clock = GenericTimer;
    let memory = mailbox.arm_memory(&clock);
    ensure!(memory == Ok((0, 960 * MIB as u32)), "mailbox with MMU on: {memory:?}");
    let revision = mailbox.board_revision(&clock);
    ensure!(revision == Ok(expected_revision), "revision with MMU on: {revision:?}");
    boot::println!("mailbox: ARM memory 0x0-0x3c000000 (960 MiB), revision {expected_revision:#x}");
    pass()
}
