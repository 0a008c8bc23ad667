//! The boot console: PL011 UART0 on GPIO 14/15, shared by every core, and `print!`; and the
//! GPIO controller that routes its pins.

use bsp::board::rpi3::{gpio::Gpio, memory_map, pl011_uart::Pl011Uart};
use core::sync::atomic::AtomicU8;
use kernel::{
    hil::{Clock, Console},
    mm::{MemError, buffer::BackedMemory, tensor::TensorKind},
    serve::ring::ByteRing,
};

// SAFETY: the addresses are the BCM2837's GPIO and UART0 blocks, mapped as device memory from
// before the MMU is on (identity) until the end; these are their only drivers.
static UART: Pl011Uart = unsafe { Pl011Uart::new(memory_map::PL011_UART) };
// SAFETY: as above.
static GPIO: Gpio = unsafe { Gpio::new(memory_map::GPIO) };

/// The GPIO controller (pin routing for the UART and the SD card).
pub fn gpio() -> &'static Gpio {
    &GPIO
}

/// Routes UART0 to its pins and programs 115200 8N1 from a UART clock of `clock_hz`.
pub fn init(clock: &dyn Clock, clock_hz: u32) {
    GPIO.route_uart0(clock);
    UART.init(clock_hz);
}

/// The console with polled receive (boot, tests, fault reports).
pub fn console() -> &'static dyn Console {
    &UART
}

/// The UART driver itself.
pub fn uart() -> &'static Pl011Uart {
    &UART
}

/// Bytes of protocol-pool memory for the receive ring.
const RECEIVE_RING_BYTES: u64 = 16 * 1024;

/// The console once receive is interrupt-driven: writes go to the UART, reads come from the
/// ring the IRQ handler fills.
pub struct InterruptConsole {
    ring: &'static ByteRing<'static>,
}

impl InterruptConsole {
    /// The receive ring (for telemetry: bytes received, dropped, high water).
    pub fn ring(&self) -> &'static ByteRing<'static> {
        self.ring
    }
}

impl Console for InterruptConsole {
    fn write_bytes(&self, bytes: &[u8]) {
        UART.write_bytes(bytes);
    }

    fn read_byte(&self) -> Option<u8> {
        self.ring.pop()
    }

    fn flush(&self) {
        UART.flush();
    }

    fn line_end_ns(&self) -> Option<u64> {
        Some(self.ring.line_end_ns())
    }
}

static INTERRUPT_CONSOLE: spin::Once<InterruptConsole> = spin::Once::new();

/// Switches receive to interrupts on core 0, with the ring in protocol (RT) memory, isolated
/// from tensor pressure. Returns the console to use from then on.
pub fn start_interrupt_console(memory: &'static BackedMemory) -> Result<&'static InterruptConsole, MemError> {
    if let Some(console) = INTERRUPT_CONSOLE.get() {
        return Ok(console);
    }
    let buffer = memory.alloc(RECEIVE_RING_BYTES, TensorKind::Protocol)?;
    let (address, length) = (buffer.as_ptr(), buffer.len());
    // The ring lives as long as the kernel: its buffer is never released.
    core::mem::forget(buffer);
    // An `AtomicU8` has the size and alignment of a `u8`, so the bytes reinterpret exactly.
    // SAFETY: the zeroed buffer is owned by nothing else from here on and never freed.
    let cells: &'static [AtomicU8] =
        unsafe { core::slice::from_raw_parts(address as *const AtomicU8, length) };
    static RING: spin::Once<ByteRing<'static>> = spin::Once::new();
    let ring = RING.call_once(|| ByteRing::new(cells));
    crate::irq::enable_console_interrupts(ring);
    Ok(INTERRUPT_CONSOLE.call_once(|| InterruptConsole { ring }))
}

/// Writes without taking the console lock, for fault and panic reports.
pub fn write_unlocked(bytes: &[u8]) {
    UART.write_bytes_unlocked(bytes);
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($argument:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!(kernel::hil::ConsoleWriter($crate::console::console()), $($argument)*);
    }};
}

/// Prints to the console, ending the line with CR LF.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\r\n") };
    ($($argument:tt)*) => {{
        $crate::print!($($argument)*);
        $crate::print!("\r\n");
    }};
}
