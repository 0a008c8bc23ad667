//! QEMU expected-fault test: a store into kernel text faults (text is read-only, W^X) and is
//! diagnosed as a write to kernel text.

#![no_std]
#![no_main]

use bsp::arch::aarch64::fault::Diagnosis;
use systests::{TEST_CONFIG, expect_fault, fail};

boot::entry!(main, TEST_CONFIG);

fn main(_info: &'static boot::BootInfo) -> ! {
    expect_fault(
        Diagnosis::WriteToText,
        &["write to kernel text", "permission fault, level 3", "write to 0x"],
    );
    let target = main as *const () as u64;
    // SAFETY: deliberately faults; the fault hook ends the test.
    unsafe { core::arch::asm!("str xzr, [{target}]", target = in(reg) target) };
    fail(format_args!("writing kernel text at {target:#x} did not fault"))
}
