//! Helpers shared by the QEMU test kernels: verdicts through semihosting, and the standard
//! test boot configuration.

#![no_std]

extern crate alloc;

pub mod cores;
pub mod pmu;

use boot::BootConfig;
use bsp::arch::aarch64::fault::{Diagnosis, FaultReport};
use qemu_exit::QEMUExit;

/// The configuration every test kernel boots with: a fixed layout seed, so runs repeat, and
/// semihosting exits.
pub const TEST_CONFIG: BootConfig = BootConfig { fixed_seed: Some(0x7E55_E7A0), semihosting: true };

/// Reports success and exits QEMU with status 0.
pub fn pass() -> ! {
    boot::println!("TEST PASSED");
    qemu_exit::AArch64::new().exit_success()
}

/// Reports `reason` and exits QEMU with status 1.
pub fn fail(reason: core::fmt::Arguments<'_>) -> ! {
    boot::println!("TEST FAILED: {reason}");
    qemu_exit::AArch64::new().exit_failure()
}

/// Fails the test with a formatted reason unless `condition` holds.
#[macro_export]
macro_rules! ensure {
    ($condition:expr, $($reason:tt)*) => {
        if !$condition {
            $crate::fail(format_args!($($reason)*));
        }
    };
}

/// The fault a test expects, and words its printed diagnostic must contain.
static EXPECTED_FAULT: spin::Once<(Diagnosis, &'static [&'static str])> = spin::Once::new();

/// Arms the fault hook: the test passes only if the next fault is diagnosed as `diagnosis`
/// and its report contains every one of `words`.
pub fn expect_fault(diagnosis: Diagnosis, words: &'static [&'static str]) {
    EXPECTED_FAULT.call_once(|| (diagnosis, words));
    boot::exception::set_fault_hook(check_fault);
}

fn check_fault(report: &FaultReport<'_>, text: &str) -> ! {
    let Some((expected, words)) = EXPECTED_FAULT.get() else { fail(format_args!("no fault was expected")) };
    ensure!(report.diagnosis() == *expected, "diagnosed {:?}, expected {expected:?}", report.diagnosis());
    for word in words.iter() {
        ensure!(text.contains(word), "the diagnostic lacks {word:?}");
    }
    boot::println!("expected fault happened and was diagnosed: {}", report.diagnosis());
    pass()
}
