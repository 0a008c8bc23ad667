//! QEMU expected-fault test: unbounded recursion runs core 0's thread stack into its guard
//! page; the fault is taken on the separate exception stack and diagnosed as a stack overflow.

#![no_std]
#![no_main]

use bsp::arch::aarch64::fault::Diagnosis;
use core::hint::black_box;
use systests::{TEST_CONFIG, expect_fault, fail};

boot::entry!(main, TEST_CONFIG);

/// Recurses forever, keeping a 1 KiB frame alive at every level.
#[expect(unconditional_recursion, reason = "the test runs the stack into its guard page on purpose")]
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 128]);
    descend(depth + 1).wrapping_add(black_box(frame)[depth as usize % 128])
}

fn main(_info: &'static boot::BootInfo) -> ! {
    expect_fault(
        Diagnosis::StackOverflow { core: 0, exception_stack: false },
        &["stack overflow", "core 0's thread stack", "translation fault, level 3", "write to"],
    );
    let result = descend(black_box(0));
    fail(format_args!("recursion returned {result}"))
}
