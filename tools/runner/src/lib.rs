//! Host-side helpers for running Tessera images in QEMU: finding the tools, turning an ELF
//! into a raw `kernel8.img`, and running QEMU with a time limit while capturing its output.

pub mod device_tree;
pub mod fixtures;
pub mod report;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// The QEMU binary: `$QEMU` if set, else `qemu-system-aarch64`.
pub fn qemu_binary() -> String {
    std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-aarch64".to_string())
}

/// The `rust-objcopy` of the active toolchain (from the llvm-tools component).
pub fn objcopy_binary() -> Result<PathBuf, String> {
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
    let path = Path::new(&sysroot).join("lib/rustlib").join(host).join("bin/rust-objcopy");
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

/// A running QEMU whose serial console is this process's pipe: input can be sent while the
/// output is collected in the background (QEMU stalls the guest when nobody reads).
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
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
        Ok(Session { stdin: child.stdin.take(), child, output, readers, start: Instant::now() })
    }

    /// Everything received so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock")).into_owned()
    }

    /// Bytes received so far.
    pub fn output_length(&self) -> usize {
        self.output.lock().expect("output lock").len()
    }

    /// Sends bytes to the serial console.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("QEMU's input is closed")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|error| format!("writing to QEMU: {error}"))
    }

    /// Waits until `text` appears in the output at or after byte `from`; returns the offset
    /// just past it.
    pub fn wait_for(&mut self, text: &str, from: usize, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let output = self.output.lock().expect("output lock");
                if let Some(position) = output
                    .get(from..)
                    .and_then(|tail| tail.windows(text.len()).position(|window| window == text.as_bytes()))
                {
                    return Ok(from + position + text.len());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("QEMU exited ({status}) before {text:?} appeared"));
            }
            if Instant::now() > deadline {
                return Err(format!("{text:?} did not appear within {} s", timeout.as_secs()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `timeout` for QEMU to exit, killing it then.
    pub fn finish(mut self, timeout: Duration) -> Result<RunResult, String> {
        drop(self.stdin.take());
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
        self.readers.drain(..).for_each(|reader| {
            let _ = reader.join();
        });
        RunResult { exit_code, output: self.output(), elapsed }
    }
}
