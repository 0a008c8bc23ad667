//! QEMU test: the kernel runs at EL1 (entered at EL2 from the raw image), on SP_EL0, with
//! FP/SIMD usable and the vector table installed.

#![no_std]
#![no_main]

use aarch64_cpu::registers::{CPACR_EL1, CurrentEL, SPSel, VBAR_EL1};
use systests::{TEST_CONFIG, ensure, pass};
use tock_registers::interfaces::Readable;

boot::entry!(main, TEST_CONFIG);

unsafe extern "C" {
    static __exception_vectors: u8;
}

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(CurrentEL.read(CurrentEL::EL) == 1, "running at EL{}", CurrentEL.read(CurrentEL::EL));
    ensure!(info.exception_level == 1, "boot info says EL{}", info.exception_level);
    ensure!(info.entry_level == 2, "raw image should enter at EL2, not EL{}", info.entry_level);
    ensure!(SPSel.read(SPSel::SP) == 0, "threads must run on SP_EL0");
    ensure!(CPACR_EL1.read(CPACR_EL1::FPEN) == 0b11, "FP/SIMD must not trap");
    let vectors = &raw const __exception_vectors as u64;
    ensure!(VBAR_EL1.get() == vectors, "VBAR_EL1 {:#x} is not the vector table {vectors:#x}", VBAR_EL1.get());
    // Floating point works (it would trap with FPEN clear).
    let value = core::hint::black_box(1.5f32) * core::hint::black_box(2.0f32);
    ensure!(value == 3.0, "1.5 * 2 = {value}");
    boot::println!("EL1 on SP_EL0, entered at EL{}", info.entry_level);
    pass()
}
