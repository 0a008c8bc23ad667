//! QEMU test: the mailbox reports 960 MiB of ARM memory on raspi3b and a Pi 3B revision, both
//! at boot (MMU off) and again now through the non-cacheable DMA region with the MMU on.

#![no_std]
#![no_main]

use bsp::{
    arch::aarch64::timer::GenericTimer,
    board::rpi3::{mailbox::Mailbox, memory_map},
};
use kernel::mm::layout::{MIB, RegionKind};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(info.plan.ram == 960 * MIB, "boot saw {} MiB", info.plan.ram / MIB);
    ensure!(info.board_revision == 0xa02082, "revision {:#x}", info.board_revision);
    let dma = info.plan.region(RegionKind::Dma);
    // SAFETY: the mailbox block at its fixed address; the first page of the DMA region is the
    // mailbox buffer, non-cacheable, and boot no longer uses it.
    let mut mailbox = unsafe { Mailbox::new(memory_map::MAILBOX, dma.base as *mut u32) };
    let clock = GenericTimer;
    let memory = mailbox.arm_memory(&clock);
    ensure!(memory == Ok((0, 960 * MIB as u32)), "mailbox with MMU on: {memory:?}");
    let revision = mailbox.board_revision(&clock);
    ensure!(revision == Ok(0xa02082), "revision with MMU on: {revision:?}");
    boot::println!("mailbox: ARM memory 0x0-0x3c000000 (960 MiB), revision 0xa02082");
    pass()
}
