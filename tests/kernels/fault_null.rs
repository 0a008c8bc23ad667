//! QEMU expected-fault test: a read from address 0 faults (page 0 is unmapped) and is
//! diagnosed as a null pointer dereference.

#![no_std]
#![no_main]

use bsp::arch::aarch64::fault::Diagnosis;
use systests::{TEST_CONFIG, expect_fault, fail};

boot::entry!(main, TEST_CONFIG);

fn main(_info: &'static boot::BootInfo) -> ! {
    expect_fault(
        Diagnosis::NullDereference,
        &[
            "null pointer dereference",
            "data abort",
            "translation fault, level 3",
            "read of 0x0",
            "ESR 0x96000007",
        ],
    );
    let value: u64;
    // SAFETY: deliberately faults; the fault hook ends the test.
    unsafe {
        core::arch::asm!("mov {address}, #0", "ldr {value}, [{address}]", address = out(reg) _, value = out(reg) value)
    };
    fail(format_args!("reading address 0 returned {value:#x} instead of faulting"))
}
