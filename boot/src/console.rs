//! The boot console: PL011 UART0 on GPIO 14/15, shared by every core, and `print!`; and the
//! GPIO controller that routes its pins.

use bsp::board::rpi3::{gpio::Gpio, memory_map, pl011_uart::Pl011Uart};
use kernel::hil::{Clock, Console};

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

/// The console.
pub fn console() -> &'static dyn Console {
    &UART
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
