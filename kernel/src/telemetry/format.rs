//! Human-readable durations, byte sizes and byte rates for telemetry lines and tables, formatted
//! on the stack (no allocation) and padded to the column width the caller asks for.

use core::fmt::{self, Write};

/// A duration in nanoseconds: `850 ns`, `12.3 us`, `4.1 ms`, `2.5 s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub u64);

/// A byte count in binary units: `512 B`, `4.0 KiB`, `1.5 MiB`, `2.0 GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A bandwidth in bytes per second, in the units of [`ByteSize`] followed by `/s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRate(pub u64);

/// Writes `whole.tenths unit` for `value` counted in `unit_size` steps.
fn write_tenths(text: &mut StackText, value: u64, unit_size: u64, unit: &str) -> fmt::Result {
    let tenths = u128::from(value) * 10 / u128::from(unit_size);
    write!(text, "{}.{} {unit}", tenths / 10, tenths % 10)
}

impl fmt::Display for Duration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = StackText::new();
        match self.0 {
            ns if ns < 1000 => write!(text, "{ns} ns")?,
            ns if ns < 1_000_000 => write_tenths(&mut text, ns, 1000, "us")?,
            ns if ns < 1_000_000_000 => write_tenths(&mut text, ns, 1_000_000, "ms")?,
            ns => write_tenths(&mut text, ns, 1_000_000_000, "s")?,
        }
        formatter.pad(text.as_str())
    }
}

/// Writes `bytes` in the largest binary unit it reaches, then `suffix`.
fn write_bytes(text: &mut StackText, bytes: u64, suffix: &str) -> fmt::Result {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        bytes if bytes < KIB => write!(text, "{bytes} B")?,
        bytes if bytes < MIB => write_tenths(text, bytes, KIB, "KiB")?,
        bytes if bytes < GIB => write_tenths(text, bytes, MIB, "MiB")?,
        bytes => write_tenths(text, bytes, GIB, "GiB")?,
    }
    text.write_str(suffix)
}

impl fmt::Display for ByteSize {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = StackText::new();
        write_bytes(&mut text, self.0, "")?;
        formatter.pad(text.as_str())
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = StackText::new();
        write_bytes(&mut text, self.0, "/s")?;
        formatter.pad(text.as_str())
    }
}

/// Bytes of text a [`StackText`] holds; longer than any value above.
const STACK_TEXT_BYTES: usize = 32;

/// A short text built on the stack, so that padding works without an allocation.
struct StackText {
    bytes: [u8; STACK_TEXT_BYTES],
    length: usize,
}

impl StackText {
    fn new() -> Self {
        Self { bytes: [0; STACK_TEXT_BYTES], length: 0 }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are appended.
        core::str::from_utf8(&self.bytes[..self.length]).unwrap_or("")
    }
}

impl Write for StackText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.length + text.len();
        if end > STACK_TEXT_BYTES {
            return Err(fmt::Error);
        }
        self.bytes[self.length..end].copy_from_slice(text.as_bytes());
        self.length = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn durations_pick_their_unit() {
        let cases = [
            (0, "0 ns"),
            (999, "999 ns"),
            (1000, "1.0 us"),
            (12_345, "12.3 us"),
            (999_999, "999.9 us"),
            (4_100_000, "4.1 ms"),
            (2_500_000_000, "2.5 s"),
            (u64::MAX, "18446744073.7 s"),
        ];
        for (ns, text) in cases {
            assert_eq!(Duration(ns).to_string(), text);
        }
        assert_eq!(format!("[{:>8}]", Duration(4_100_000)), "[  4.1 ms]");
        assert_eq!(format!("[{:<8}]", Duration(5)), "[5 ns    ]");
    }

    #[test]
    fn byte_sizes_and_rates_pick_their_unit() {
        let cases =
            [(0, "0 B"), (1023, "1023 B"), (4096, "4.0 KiB"), (3 << 19, "1.5 MiB"), (5 << 30, "5.0 GiB")];
        for (bytes, text) in cases {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(ByteRate(bytes).to_string(), format!("{text}/s"));
        }
        assert_eq!(ByteRate(u64::MAX).to_string(), "17179869183.9 GiB/s");
        assert_eq!(format!("[{:>12}]", ByteRate(1 << 20)), "[   1.0 MiB/s]");
    }
}
