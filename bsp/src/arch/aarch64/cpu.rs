//! CPU identity and control: core number, exception level, cache line size, sleep and wake.

/// Number of cores on every supported board.
pub const CORE_COUNT: usize = 4;

#[cfg(target_arch = "aarch64")]
mod imp {
    use aarch64_cpu::{
        asm,
        registers::{CurrentEL, MIDR_EL1, MPIDR_EL1},
    };
    use tock_registers::interfaces::Readable;

    /// This core's number (MPIDR affinity 0).
    pub fn core_id() -> usize {
        (MPIDR_EL1.get() & 0xFF) as usize
    }

    /// This core's MIDR_EL1 (implementer, part number, revision): which core type it is.
    pub fn main_id() -> u64 {
        MIDR_EL1.get()
    }

    /// The current exception level (0 to 3).
    pub fn exception_level() -> u8 {
        CurrentEL.read(CurrentEL::EL) as u8
    }

    /// The smallest data cache line in bytes, from CTR_EL0.DminLine.
    pub fn cache_line_bytes() -> usize {
        let cache_type: u64;
        // SAFETY: reading CTR_EL0 has no side effects (aarch64-cpu does not name it).
        unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) cache_type, options(nomem, nostack)) };
        // DminLine, bits 19:16: log2 of the line size in 4-byte words.
        4 << ((cache_type >> 16) & 0xF)
    }

    /// Sleeps until an interrupt is pending (even a masked one).
    pub fn wait_for_interrupt() {
        asm::wfi();
    }

    /// Sleeps until an event or interrupt.
    pub fn wait_for_event() {
        asm::wfe();
    }

    /// Wakes every core waiting in `wfe`, after earlier stores are visible.
    pub fn send_event() {
        asm::barrier::dsb(asm::barrier::ISH);
        asm::sev();
    }

    /// Tells the core it is spinning: a hint a Cortex-A53 ignores, on which QEMU's
    /// one-thread (`-icount`) mode runs the next core instead.
    pub fn spin_hint() {
        // SAFETY: `yield` is a hint; it changes no register, memory or state.
        unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
    }

    /// Makes the generic timer send this core an event every 2^11 counter ticks (33 µs at
    /// QEMU's 62.5 MHz, 38 µs at the Pi 4's 54 MHz, 107 µs at the Pi 3's 19.2 MHz), so no `wfe`
    /// can sleep for longer than that.
    pub fn enable_event_stream() {
        use aarch64_cpu::registers::CNTKCTL_EL1;
        use tock_registers::interfaces::ReadWriteable;
        CNTKCTL_EL1.modify(CNTKCTL_EL1::EVNTEN::SET + CNTKCTL_EL1::EVNTI.val(10));
    }
}

#[cfg(not(target_arch = "aarch64"))]
mod imp {
    /// Host stand-in: core 0.
    pub fn core_id() -> usize {
        0
    }
    /// Host stand-in: a Cortex-A53 r0p4 (the BCM2837's cores).
    pub fn main_id() -> u64 {
        0x410F_D034
    }
    /// Host stand-in: EL1.
    pub fn exception_level() -> u8 {
        1
    }
    /// Host stand-in: 64 bytes.
    pub fn cache_line_bytes() -> usize {
        64
    }
    /// Host stand-in: a spin hint.
    pub fn wait_for_interrupt() {
        core::hint::spin_loop();
    }
    /// Host stand-in: a spin hint.
    pub fn wait_for_event() {
        core::hint::spin_loop();
    }
    /// Host stand-in: a fence.
    pub fn send_event() {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
    /// Host stand-in: nothing.
    pub fn enable_event_stream() {}
    /// Host stand-in: a spin hint.
    pub fn spin_hint() {
        core::hint::spin_loop();
    }
}

pub use imp::*;

/// How a lock that several cores take waits for it: [`spin_hint`] (`yield`) between tries.
/// Under QEMU's `-icount` the cores run in turn on one thread, and a core spinning on a lock
/// whose holder is not running keeps the thread for its whole time slice (up to tens of ms of
/// virtual time); `yield` hands it on. The spin crate's default relax (`isb`) does not.
pub struct YieldRelax;

impl spin::RelaxStrategy for YieldRelax {
    fn relax() {
        spin_hint();
    }
}

/// A spin lock several cores take at once, waiting with [`YieldRelax`].
pub type SharedLock<T> = spin::mutex::SpinMutex<T, YieldRelax>;
