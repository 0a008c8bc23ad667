//! QEMU expected-fault test: a branch into writable data faults (data is never executable,
//! W^X) and is diagnosed as execution of non-executable memory.

#![no_std]
#![no_main]

use bsp::arch::aarch64::fault::Diagnosis;
use systests::{TEST_CONFIG, expect_fault, fail};

boot::entry!(main, TEST_CONFIG);

/// A `ret` instruction placed in writable data.
static mut RETURN_INSTRUCTION: [u32; 1] = [0xd65f_03c0];

fn main(_info: &'static boot::BootInfo) -> ! {
    expect_fault(
        Diagnosis::ExecuteNever,
        &["non-executable memory", "instruction abort", "permission fault"],
    );
    let target = &raw const RETURN_INSTRUCTION as u64;
    // SAFETY: deliberately faults; the fault hook ends the test.
    unsafe { core::arch::asm!("blr {target}", target = in(reg) target, out("x30") _) };
    fail(format_args!("executing data at {target:#x} did not fault"))
}
