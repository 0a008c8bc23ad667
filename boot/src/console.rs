//! The boot console: PL011 UART0 on GPIO 14/15, shared by every core, and `print!`; and the
//! GPIO controller that routes its pins. Each chip has its own driver instances (their blocks
//! are at other addresses); [`uart`] and [`gpio`] pick this chip's. Once interrupt-driven, receive has flow control: when
//! the receive ring is full the bytes stay in the UART, whose receive interrupts are masked
//! until the console loop has made room (`kernel::console::ring::ReceiveFlow`).

use crate::interrupts;
use bsp::{
    arch::aarch64::{cpu, timer::GenericTimer},
    board::{
        rpi3::{
            gpio::Gpio,
            pl011_uart::{Pl011Transmitter, Pl011Uart},
        },
        soc::Soc,
    },
};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use kernel::{
    console::{
        ring::{ByteRing, Flow, ReceiveFlow},
        transmit::TransmitQueue,
    },
    hil::{Clock, Console, ConsoleTraffic, FlowControl},
    mm::{MemError, buffer::BackedMemory, tensor::TensorKind},
};

// SAFETY: the addresses are the BCM2837's GPIO and UART0 blocks, mapped as device memory from
// before the MMU is on (identity) until the end on that chip; these are their only drivers, and
// on the other chip they are never used.
static UART_BCM2837: Pl011Uart = unsafe { Pl011Uart::new(Soc::Bcm2837.map().uart) };
// SAFETY: as above.
static GPIO_BCM2837: Gpio = unsafe { Gpio::new(Soc::Bcm2837.map().gpio, Soc::Bcm2837) };
// SAFETY: as above, for the BCM2711's blocks.
static UART_BCM2711: Pl011Uart = unsafe { Pl011Uart::new(Soc::Bcm2711.map().uart) };
// SAFETY: as above, for the BCM2711's blocks.
static GPIO_BCM2711: Gpio = unsafe { Gpio::new(Soc::Bcm2711.map().gpio, Soc::Bcm2711) };

/// The GPIO controller (pin routing for the UART and the SD card).
pub fn gpio() -> &'static Gpio {
    match Soc::current() {
        Soc::Bcm2837 => &GPIO_BCM2837,
        Soc::Bcm2711 => &GPIO_BCM2711,
    }
}

/// The console: polled until [`start_interrupt_console`] has run, interrupt-driven after, so
/// everything printed leaves in the order it was written. The pre-MMU stage has routed and
/// programmed the UART already (`premmu`, through a lock-free handle); this locked driver is
/// only used once the MMU is on.
pub fn console() -> &'static dyn Console {
    match INTERRUPT_CONSOLE.get() {
        Some(console) => console,
        None => uart(),
    }
}

/// The UART driver itself.
pub fn uart() -> &'static Pl011Uart {
    match Soc::current() {
        Soc::Bcm2837 => &UART_BCM2837,
        Soc::Bcm2711 => &UART_BCM2711,
    }
}

/// Bytes of protocol-pool memory for the receive ring (the protocol reserve counts it).
const RECEIVE_RING_BYTES: u64 = kernel::console::CONSOLE_RING_BYTES;
/// Room the console loop makes in a full receive ring before the UART's receive interrupts are
/// unmasked again (a quarter of the ring: a held-back sender resumes in bursts, not a byte at
/// a time).
const RECEIVE_RESUME_ROOM: usize = RECEIVE_RING_BYTES as usize / 4;
/// Bytes of protocol-pool memory for the transmit ring (the protocol reserve counts it).
const TRANSMIT_RING_BYTES: u64 = kernel::console::CONSOLE_RING_BYTES;

/// The console once it is interrupt-driven: reads come from the ring the receive interrupt
/// fills (with flow control); writes go into a transmit ring that the transmit interrupt
/// empties into the UART.
///
/// Receive runs on core 0 only: the interrupt handler is the producer and core 0's console
/// loop the consumer. The handler masks the receive interrupts when the ring is full; the
/// loop, after a read that leaves enough room, takes what waits in the UART and unmasks them,
/// with IRQs masked meanwhile so that the handler cannot run in between.
pub struct InterruptConsole {
    receive: &'static ReceiveFlow<'static>,
    transmit: TransmitQueue<'static>,
    transmitter: Pl011Transmitter<'static>,
}

impl InterruptConsole {
    /// The receive ring (for telemetry: bytes received, dropped, high water).
    pub fn ring(&self) -> &'static ByteRing<'static> {
        self.receive.ring()
    }

    /// From the UART interrupt handler: takes received bytes into the ring while it has room,
    /// and masks the receive interrupts when it is full (the rest stays in the UART).
    fn receive_interrupt(&self) {
        if self.receive.is_paused() {
            return;
        }
        uart().acknowledge_receive();
        if self.receive.fill(|| uart().receive_byte(), GenericTimer.now_ns()) == Flow::Paused {
            uart().set_receive_interrupts(false);
        }
    }

    /// From the console loop on core 0: when the receive side is paused and the ring has room
    /// again, takes what waits in the UART (its interrupt may not be raised again for bytes
    /// already there) and unmasks the receive interrupts unless the ring filled again.
    fn resume_receive(&self) {
        if cpu::core_id() != 0 || !self.receive.resume_due() {
            return;
        }
        interrupts::without_interrupts(|| {
            if !self.receive.resume_due() {
                return;
            }
            uart().acknowledge_receive();
            if self.receive.resume(|| uart().receive_byte(), GenericTimer.now_ns()) == Some(Flow::Open) {
                uart().set_receive_interrupts(true);
            }
        });
    }

    /// From the UART interrupt handler: refills the transmit FIFO.
    fn transmit_interrupt(&self) {
        self.transmit.interrupt(&self.transmitter);
    }

    /// Whether the core may sleep until the next interrupt: nothing was received, and any
    /// bytes still waiting to be sent have a transmit interrupt coming (a pump sets it up; it
    /// is cheap when nothing waits). The idle loop's check, made with IRQs masked.
    pub fn may_sleep(&self) -> bool {
        if self.transmit.is_pending() {
            self.transmit.pump(&self.transmitter);
        }
        // A paused receive side with an empty ring resumes here, before the core sleeps.
        self.resume_receive();
        self.receive.ring().is_empty()
    }

    /// Runs until `done` holds: core 0 sleeps until the next interrupt (the transmit
    /// interrupt makes progress), other cores spin.
    fn wait_until(done: impl Fn() -> bool) {
        if cpu::core_id() == 0 {
            while !done() {
                interrupts::idle_until(&done);
            }
        } else {
            while !done() {
                core::hint::spin_loop();
            }
        }
    }
}

impl Console for InterruptConsole {
    fn write_bytes(&self, bytes: &[u8]) {
        self.transmit.write(bytes, &self.transmitter, |queue| {
            Self::wait_until(|| {
                queue.pump(&self.transmitter);
                queue.has_room()
            })
        });
    }

    fn read_byte(&self) -> Option<u8> {
        let byte = self.receive.pop();
        self.resume_receive();
        byte
    }

    fn read_bytes(&self, out: &mut [u8]) -> usize {
        let count = self.receive.pop_into(out);
        self.resume_receive();
        count
    }

    fn flush(&self) {
        Self::wait_until(|| {
            self.transmit.pump(&self.transmitter);
            !self.transmit.is_pending()
        });
        uart().flush();
    }

    fn line_end_ns(&self) -> Option<u64> {
        Some(self.ring().line_end_ns())
    }

    fn traffic(&self) -> Option<ConsoleTraffic> {
        let transmit = self.transmit.statistics();
        let ring = self.ring();
        Some(ConsoleTraffic {
            received: ring.received() as u64,
            dropped: ring.overflowed() as u64 + uart().overruns(),
            receive_high_water: ring.high_water() as u64,
            receive_pauses: self.receive.pauses(),
            sent: transmit.sent,
            transmit_interrupts: transmit_interrupts(),
            transmit_waits: transmit.waits,
        })
    }

    /// RTS/CTS on GPIO 16/17. The line is drained first: the UART is disabled for a moment
    /// while its control register changes.
    fn set_flow_control(&self, flow_control: FlowControl) -> Result<&'static str, &'static str> {
        self.flush();
        match flow_control {
            FlowControl::RtsCts => {
                gpio().route_uart0_flow_control();
                uart().set_hardware_flow_control(true);
                Ok("RTS/CTS flow control on (GPIO 16 CTS0, GPIO 17 RTS0)")
            }
            FlowControl::None => {
                uart().set_hardware_flow_control(false);
                gpio().release_uart0_flow_control();
                Ok("without hardware flow control")
            }
        }
    }
}

static INTERRUPT_CONSOLE: spin::Once<InterruptConsole> = spin::Once::new();

/// `bytes` bytes of protocol (RT) memory for a ring, kept for the life of the kernel.
fn protocol_cells(memory: &'static BackedMemory, bytes: u64) -> Result<&'static [AtomicU8], MemError> {
    let mut buffer = memory.alloc(bytes, TensorKind::Protocol)?;
    let (address, length) = (buffer.as_mut_ptr(), buffer.len());
    // The ring lives as long as the kernel: its buffer is never released.
    core::mem::forget(buffer);
    // An `AtomicU8` has the size and alignment of a `u8`, so the bytes reinterpret exactly.
    // SAFETY: the zeroed buffer is owned by nothing else from here on and never freed.
    Ok(unsafe { core::slice::from_raw_parts(address as *const AtomicU8, length) })
}

/// Switches the console to interrupts on core 0, with both rings in protocol (RT) memory,
/// isolated from tensor pressure. Returns the console to use from then on.
pub fn start_interrupt_console(memory: &'static BackedMemory) -> Result<&'static InterruptConsole, MemError> {
    if let Some(console) = INTERRUPT_CONSOLE.get() {
        return Ok(console);
    }
    let receive = protocol_cells(memory, RECEIVE_RING_BYTES)?;
    let transmit = protocol_cells(memory, TRANSMIT_RING_BYTES)?;
    static RECEIVE: spin::Once<ReceiveFlow<'static>> = spin::Once::new();
    let receive = RECEIVE.call_once(|| ReceiveFlow::new(ByteRing::new(receive), RECEIVE_RESUME_ROOM));
    // Everything printed so far has left before output goes through the transmit ring.
    uart().flush();
    let console = INTERRUPT_CONSOLE.call_once(|| InterruptConsole {
        receive,
        transmit: TransmitQueue::new(ByteRing::new(transmit)),
        transmitter: uart().transmitter(),
    });
    uart().enable_receive_interrupts();
    interrupts::route_uart_to_core0();
    Ok(console)
}

/// UART interrupts that found the transmit interrupt pending.
static TRANSMIT_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// The UART's interrupt, from the IRQ handler on core 0: takes received bytes into the receive
/// ring (nothing while receive is paused: its interrupts are masked then, and this runs for the
/// transmit interrupt) and refills the transmit FIFO when the transmit interrupt is pending.
pub fn on_uart_interrupt() {
    let Some(console) = INTERRUPT_CONSOLE.get() else { return };
    console.receive_interrupt();
    if uart().transmit_pending() {
        TRANSMIT_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
        console.transmit_interrupt();
    }
}

/// UART interrupts so far that refilled the transmit FIFO.
pub fn transmit_interrupts() -> u64 {
    TRANSMIT_INTERRUPTS.load(Ordering::Relaxed)
}

/// Writes without taking the console lock, for fault and panic reports.
pub fn write_unlocked(bytes: &[u8]) {
    uart().write_bytes_unlocked(bytes);
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
