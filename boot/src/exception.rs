//! Exception vectors and the Rust handler: every register is saved on the exception stack
//! (SP_EL1), so a fault, even a thread stack overflow, is diagnosed rather than hanging.

use crate::{console, cpus, start};
use bsp::arch::aarch64::{
    cpu,
    exception_class::Syndrome,
    fault::{FaultReport, VectorKind},
};
use core::fmt::Write;
use kernel::telemetry::{CoreLoss, EventKind, TRACE};

/// The registers saved on entry, in the layout the assembly below writes.
#[repr(C)]
pub struct ExceptionFrame {
    /// x0 to x30.
    pub registers: [u64; 31],
    /// ELR_EL1: where the exception returns to.
    pub return_address: u64,
    /// SPSR_EL1.
    pub saved_state: u64,
    /// ESR_EL1.
    pub syndrome: u64,
    /// FAR_EL1.
    pub fault_address: u64,
    padding: u64,
    /// q0 to q31.
    pub vector_registers: [u128; 32],
}

const FRAME_BYTES: usize = size_of::<ExceptionFrame>();
const _: () = assert!(FRAME_BYTES == 800);

core::arch::global_asm!(
    r#"
.macro TESSERA_VECTOR index
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x0, #\index
    b       __exception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global __exception_vectors
__exception_vectors:
    TESSERA_VECTOR 0
    TESSERA_VECTOR 1
    TESSERA_VECTOR 2
    TESSERA_VECTOR 3
    TESSERA_VECTOR 4
    TESSERA_VECTOR 5
    TESSERA_VECTOR 6
    TESSERA_VECTOR 7
    TESSERA_VECTOR 8
    TESSERA_VECTOR 9
    TESSERA_VECTOR 10
    TESSERA_VECTOR 11
    TESSERA_VECTOR 12
    TESSERA_VECTOR 13
    TESSERA_VECTOR 14
    TESSERA_VECTOR 15

__exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el1
    stp     x30, x1, [sp, #240]
    mrs     x2, spsr_el1
    mrs     x3, esr_el1
    stp     x2, x3, [sp, #256]
    mrs     x4, far_el1
    str     x4, [sp, #272]
    stp     q0, q1, [sp, #288]
    stp     q2, q3, [sp, #320]
    stp     q4, q5, [sp, #352]
    stp     q6, q7, [sp, #384]
    stp     q8, q9, [sp, #416]
    stp     q10, q11, [sp, #448]
    stp     q12, q13, [sp, #480]
    stp     q14, q15, [sp, #512]
    stp     q16, q17, [sp, #544]
    stp     q18, q19, [sp, #576]
    stp     q20, q21, [sp, #608]
    stp     q22, q23, [sp, #640]
    stp     q24, q25, [sp, #672]
    stp     q26, q27, [sp, #704]
    stp     q28, q29, [sp, #736]
    stp     q30, q31, [sp, #768]
    mov     x1, x0
    mov     x0, sp
    bl      {handler}
    ldp     q0, q1, [sp, #288]
    ldp     q2, q3, [sp, #320]
    ldp     q4, q5, [sp, #352]
    ldp     q6, q7, [sp, #384]
    ldp     q8, q9, [sp, #416]
    ldp     q10, q11, [sp, #448]
    ldp     q12, q13, [sp, #480]
    ldp     q14, q15, [sp, #512]
    ldp     q16, q17, [sp, #544]
    ldp     q18, q19, [sp, #576]
    ldp     q20, q21, [sp, #608]
    ldp     q22, q23, [sp, #640]
    ldp     q24, q25, [sp, #672]
    ldp     q26, q27, [sp, #704]
    ldp     q28, q29, [sp, #736]
    ldp     q30, q31, [sp, #768]
    ldp     x30, x1, [sp, #240]
    msr     elr_el1, x1
    ldr     x2, [sp, #256]
    msr     spsr_el1, x2
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const FRAME_BYTES,
    handler = sym handle_exception,
);

/// Called with a fault's report and its rendered text; never returns. Tests install one to
/// check that an expected fault happened and was diagnosed.
pub type FaultHook = fn(&FaultReport<'_>, &str) -> !;

static FAULT_HOOK: spin::Once<FaultHook> = spin::Once::new();

/// Installs the fault hook (first call wins).
pub fn set_fault_hook(hook: FaultHook) {
    FAULT_HOOK.call_once(|| hook);
}

/// A fixed buffer that collects formatted text, truncating when full.
pub struct FixedText<const N: usize> {
    bytes: [u8; N],
    length: usize,
}

impl<const N: usize> FixedText<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self { bytes: [0; N], length: 0 }
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.length = 0;
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in, cut at a character boundary.
        core::str::from_utf8(&self.bytes[..self.length]).unwrap_or("")
    }
}

impl<const N: usize> Default for FixedText<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for FixedText<N> {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let mut take = text.len().min(N - self.length);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.length..self.length + take].copy_from_slice(&text.as_bytes()[..take]);
        self.length += take;
        Ok(())
    }
}

/// Trace events a fault report ends with.
const RECENT_EVENTS: usize = 8;

/// Ends a fault, panic or lost-core report with the trace ring's last events (without
/// allocating: the heap may be what broke).
pub fn write_recent_events(text: &mut dyn Write) {
    let _ = write!(text, "    last events (trace ring):\r\n");
    TRACE.for_each_recent(RECENT_EVENTS, |event| {
        let _ = write!(text, "    {event}\r\n");
    });
}

extern "C" fn handle_exception(frame: &mut ExceptionFrame, index: u64) {
    if !crate::premmu::mmu_is_on() {
        crate::premmu::report_exception(frame.syndrome, frame.return_address, frame.fault_address);
    }
    let core = cpu::core_id();
    if VectorKind::from_index(index) == VectorKind::Irq {
        if core == 0 {
            crate::irq::handle();
        } else {
            cpus::secondary_interrupt(frame.return_address, &mut frame.saved_state);
        }
        return;
    }
    let image = start::kernel_image();
    let report = FaultReport {
        core,
        vector: VectorKind::from_index(index),
        syndrome: Syndrome(frame.syndrome),
        fault_address: frame.fault_address,
        return_address: frame.return_address,
        saved_state: frame.saved_state,
        registers: &frame.registers,
        image: &image,
    };
    let class = report.syndrome.class();
    kernel::telemetry::record(EventKind::Exception { class });
    let describe = |text: &mut dyn Write| {
        let _ = write!(text, "{report}");
        if (4..8).contains(&index) {
            let _ = write!(text, "    (taken while already on the exception stack)\r\n");
        }
    };
    // A secondary core is retired and the others carry on; core 0's fault stops the kernel.
    if core != 0 {
        cpus::retire(CoreLoss::Exception { class }, describe);
    }
    let mut text = FixedText::<4096>::new();
    describe(&mut text);
    write_recent_events(&mut text);
    console::write_unlocked(text.as_str().as_bytes());
    if let Some(hook) = FAULT_HOOK.get() {
        hook(&report, text.as_str());
    }
    start::stop(1)
}
