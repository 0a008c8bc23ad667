//! QEMU expected-fault test: a read from address 0 faults (page 0 is unmapped) and is
//! diagnosed as a null pointer dereference; the report ends with the trace ring's last events,
//! the fault itself included.

#![no_std]
#![no_main]

use bsp::arch::aarch64::fault::Diagnosis;
use kernel::telemetry::{EventKind, ShortName};
use systests::{TEST_CONFIG, expect_fault, fail};

boot::entry!(main, TEST_CONFIG);

fn main(_info: &'static boot::BootInfo) -> ! {
    kernel::telemetry::record(EventKind::LoadStarted { model: ShortName::new("before.gguf") });
    expect_fault(
        Diagnosis::NullDereference,
        &[
            "null pointer dereference",
            "data abort",
            "translation fault, level 3",
            "read of 0x0",
            "ESR 0x96000007",
            "last events (trace ring):",
            "core 0  load        before.gguf",
            "core 0  exception   class 0x25",
        ],
    );
    let value: u64;
    // SAFETY: deliberately faults; the fault hook ends the test.
    unsafe {
        core::arch::asm!("mov {address}, #0", "ldr {value}, [{address}]", address = out(reg) _, value = out(reg) value)
    };
    fail(format_args!("reading address 0 returned {value:#x} instead of faulting"))
}
