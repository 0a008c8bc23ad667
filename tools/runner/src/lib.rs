//! Host-side helpers for running Tessera images in QEMU: finding the tools, turning an ELF
//! into a raw `kernel8.img`, and running QEMU with a time limit while capturing its output.

#![forbid(unsafe_code)]

pub mod device_tree;
pub mod fixtures;
pub mod premmu;
pub mod report;
pub mod soak;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

/// The QEMU binary: `$QEMU` if set, else `qemu-system-aarch64`.
pub fn qemu_binary() -> String {
    std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-aarch64".to_string())
}

/// The `rust-objcopy` of the active toolchain (from the llvm-tools component).
pub fn objcopy_binary() -> Result<PathBuf, String> {
    llvm_tool("rust-objcopy")
}

/// The path of `name` (`rust-objcopy`, `llvm-objdump`, ...) among the llvm-tools component's
/// programs in the active toolchain's sysroot (`lib/rustlib/<host>/bin`), found through rustc
/// itself so it works on a fresh machine without anything on the PATH.
pub fn llvm_tool(name: &str) -> Result<PathBuf, String> {
    let output = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|error| format!("cannot run rustc: {error}"))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let verbose =
        Command::new("rustc").arg("-vV").output().map_err(|error| format!("cannot run rustc: {error}"))?;
    let host = String::from_utf8_lossy(&verbose.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV printed no host triple")?;
    let path = Path::new(&sysroot).join("lib/rustlib").join(host).join("bin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: install the llvm-tools component (rust-toolchain.toml lists it)",
            path.display()
        ))
    }
}

/// Writes the raw binary image of `elf` to `image` (what the firmware loads at 0x80000).
pub fn make_image(objcopy: &Path, elf: &Path, image: &Path) -> Result<(), String> {
    let status = Command::new(objcopy)
        .args(["-O", "binary"])
        .arg(elf)
        .arg(image)
        .status()
        .map_err(|error| format!("cannot run {}: {error}", objcopy.display()))?;
    if status.success() { Ok(()) } else { Err(format!("objcopy failed on {}", elf.display())) }
}

/// How a QEMU run ended.
#[derive(Debug)]
pub struct RunResult {
    /// QEMU's exit code, or `None` if it was killed (time limit, or the script ended).
    pub exit_code: Option<i32>,
    /// Everything QEMU wrote to stdout (the serial console) and stderr.
    pub output: String,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// The byte `noise` never sends: Ctrl-A, QEMU's escape key where the serial line shares stdio
/// with its monitor (`-serial mon:stdio`, `-nographic`). On a session's plain `-serial stdio`
/// pipe no byte is special (every one of the 256 values arrives and is counted by `/stats`),
/// but a flood meant for any console should not contain it.
pub const NOISE_EXCLUDED: u8 = 0x01;

/// `count` seeded pseudo-random bytes (binary noise: control bytes, line ends and invalid
/// UTF-8 included), never [`NOISE_EXCLUDED`].
pub fn noise(count: usize, seed: u64) -> Vec<u8> {
    let mut random = kernel::rand::SplitMix64::new(seed);
    core::iter::repeat_with(|| random.next_u64() as u8)
        .filter(|&byte| byte != NOISE_EXCLUDED)
        .take(count)
        .collect()
}

/// How long [`Session::wait_for`] waits: for the text, as long as the guest keeps producing
/// output, but no longer than `quiet` without any, nor `limit` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// Longest time without a single byte of output.
    pub quiet: Duration,
    /// Longest time in all.
    pub limit: Duration,
}

impl Patience {
    /// `quiet` without output, and ten times that in all: a loaded host slows the guest down
    /// but does not silence it, so only a stall or a runaway fails.
    pub fn quiet_for(quiet: Duration) -> Self {
        Self { quiet, limit: quiet * 10 }
    }
}

/// A running QEMU whose serial console is this process's pipe: input can be sent while the
/// output is collected in the background (QEMU stalls the guest when nobody reads). Input goes
/// through a writer thread, so a guest that stops reading (flow control holds the sender back)
/// never blocks the runner: only its waits are bounded.
pub struct Session {
    child: Child,
    input: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<thread::JoinHandle<()>>,
    input_error: Arc<Mutex<Option<String>>>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    start: Instant,
}

impl Session {
    /// Boots `image` on `machine` with semihosting on and the serial console on the pipes.
    /// `extra` arguments are appended.
    pub fn start(machine: &str, image: &Path, extra: &[String]) -> Result<Session, String> {
        let qemu = qemu_binary();
        let mut child = Command::new(&qemu)
            .args(["-M", machine, "-display", "none", "-monitor", "none", "-serial", "stdio", "-semihosting"])
            .arg("-kernel")
            .arg(image)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                format!("cannot start {qemu}: {error} (is qemu-system-arm installed? `make deps`)")
            })?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let input_error = Arc::new(Mutex::new(None));
        let (input, queued) = mpsc::channel::<Vec<u8>>();
        let writer = child.stdin.take().map(|mut stdin| {
            let input_error = Arc::clone(&input_error);
            thread::spawn(move || {
                for bytes in queued {
                    if let Err(error) = stdin.write_all(&bytes).and_then(|()| stdin.flush()) {
                        *input_error.lock().expect("input error lock") =
                            Some(format!("writing to QEMU: {error}"));
                        return;
                    }
                }
            })
        });
        let readers = [
            child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
            child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(count) = pipe.read(&mut buffer) {
                    if count == 0 {
                        break;
                    }
                    output.lock().expect("output lock").extend_from_slice(&buffer[..count]);
                }
            })
        })
        .collect();
        Ok(Session { child, input: Some(input), writer, input_error, output, readers, start: Instant::now() })
    }

    /// Everything received so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock")).into_owned()
    }

    /// The bytes received from offset `from` on.
    pub fn output_from(&self, from: usize) -> Vec<u8> {
        self.output.lock().expect("output lock").get(from..).unwrap_or_default().to_vec()
    }

    /// Bytes received so far.
    pub fn output_length(&self) -> usize {
        self.output.lock().expect("output lock").len()
    }

    /// Queues bytes for the serial console, after those sent before; they reach the guest as
    /// fast as it takes them.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Some(error) = self.input_error.lock().expect("input error lock").clone() {
            return Err(error);
        }
        let input = self.input.as_ref().ok_or("QEMU's input is closed")?;
        input.send(bytes.to_vec()).map_err(|_| "QEMU's input is closed".to_string())
    }

    /// Waits until `text` appears in the output at or after byte `from`, for as long as
    /// `patience` allows; returns the offset just past it.
    pub fn wait_for(&mut self, text: &str, from: usize, patience: Patience) -> Result<usize, String> {
        let start = Instant::now();
        let (mut seen, mut last_output) = (self.output_length(), start);
        // Where the next search starts: bytes before it hold no match that ends in them.
        let mut searched = from;
        loop {
            {
                let output = self.output.lock().expect("output lock");
                if let Some(position) = find(output.get(searched..).unwrap_or_default(), text.as_bytes()) {
                    return Ok(searched + position + text.len());
                }
                searched = searched.max(output.len().saturating_sub(text.len().saturating_sub(1)));
                if output.len() != seen {
                    (seen, last_output) = (output.len(), Instant::now());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("QEMU exited ({status}) before {text:?} appeared"));
            }
            if last_output.elapsed() > patience.quiet {
                return Err(format!(
                    "{text:?} did not appear: no output for {} s ({:.0} s in this step)",
                    patience.quiet.as_secs(),
                    start.elapsed().as_secs_f64()
                ));
            }
            if start.elapsed() > patience.limit {
                return Err(format!(
                    "{text:?} did not appear within {} s, though output kept coming",
                    patience.limit.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `timeout` for QEMU to exit, killing it then.
    pub fn finish(mut self, timeout: Duration) -> Result<RunResult, String> {
        drop(self.input.take());
        let exit_code = loop {
            if let Some(status) =
                self.child.try_wait().map_err(|error| format!("waiting for QEMU: {error}"))?
            {
                break status.code();
            }
            if self.start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        Ok(self.collect(exit_code))
    }

    /// Stops QEMU now.
    pub fn kill(mut self) -> RunResult {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.collect(None)
    }

    fn collect(mut self, exit_code: Option<i32>) -> RunResult {
        let elapsed = self.start.elapsed();
        // QEMU is gone: a write still pending fails, and the writer ends.
        drop(self.input.take());
        self.readers.drain(..).chain(self.writer.take()).for_each(|thread| {
            let _ = thread.join();
        });
        RunResult { exit_code, output: self.output(), elapsed }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// What kernel8 prints when a core panics, takes an exception or stops responding. It
/// survives a secondary core's (the core is retired), so a console script or a soak could go
/// on passing after one: both check kernel8's whole output for these at the end.
const FAULT_REPORTS: [&str; 3] = ["*** kernel panic", "*** CPU exception", "*** core "];

/// The first panic, exception or lost-core report line in kernel8's `output`, if any.
pub fn fault_report(output: &str) -> Option<&str> {
    let at = FAULT_REPORTS.iter().filter_map(|report| output.find(report)).min()?;
    output[at..].lines().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_reports_are_found() {
        assert_eq!(fault_report("> hi\r\n[tiny: 3 tokens]\r\n"), None);
        let output = "ok\r\n\r\n*** kernel panic on core 2: boom\r\ncore-lost\r\n";
        assert_eq!(fault_report(output), Some("*** kernel panic on core 2: boom"));
        assert!(fault_report("*** CPU exception on core 1: x").is_some());
        assert!(fault_report("a\n*** core 3 stopped responding: y").is_some());
    }

    #[test]
    fn noise_is_seeded_and_has_no_ctrl_a() {
        let bytes = noise(65_536, 65_536);
        assert_eq!(bytes.len(), 65_536);
        assert_eq!(bytes, noise(65_536, 65_536));
        assert!(!bytes.contains(&NOISE_EXCLUDED));
        // Still noise: line ends, other control bytes and bytes that are not UTF-8.
        for byte in [b'\r', b'\n', 0x00, 0x1B, 0x03, 0xFF] {
            assert!(bytes.contains(&byte), "{byte:#04x}");
        }
    }

    #[test]
    fn find_matches_anywhere() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b""), Some(0));
    }
}
