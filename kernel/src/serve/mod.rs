//! Serving: the console loop, and the pieces of the console protocol.

pub mod line;
pub mod ring;

use crate::{
    boot_info::BootInfo,
    hil::{Console, ConsoleWriter},
};
use core::fmt::Write;
use line::{LineEvent, LineReader};

/// Longest console line accepted, in bytes.
pub const MAX_LINE: usize = 1024;

/// The devices the serving loop uses.
pub struct Platform<'a> {
    /// The serial console.
    pub console: &'a dyn Console,
}

/// Runs the console: prints the banner, then a `> ` prompt, and answers each line.
///
/// For now a line is echoed back; the command table and chat plug in here.
pub fn run(platform: &Platform<'_>, info: &BootInfo, relax: impl Fn()) -> ! {
    let console = platform.console;
    let mut out = ConsoleWriter(console);
    let _ = write!(out, "{}", info.banner());
    let _ = write!(out, "Console ready: lines are echoed (end a line with Enter).\r\n> ");
    let mut reader = LineReader::<MAX_LINE>::new();
    loop {
        let Some(byte) = console.read_byte() else {
            relax();
            continue;
        };
        match reader.push(byte) {
            LineEvent::Pending => {}
            LineEvent::Echo(bytes) => console.write_bytes(bytes),
            LineEvent::Line(text) => {
                let _ = write!(out, "\r\necho: {text}\r\n> ");
            }
            LineEvent::Error(error) => {
                let _ = write!(out, "\r\nerror: {error}\r\n> ");
            }
        }
    }
}
