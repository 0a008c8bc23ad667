//! Host-side helpers for running Tessera images in QEMU: finding the tools, turning an ELF
//! into a raw `kernel8.img`, and running QEMU with a time limit while capturing its output.

pub mod device_tree;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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
    /// QEMU's exit code, or `None` if it was killed at the time limit.
    pub exit_code: Option<i32>,
    /// Everything QEMU wrote to stdout (the serial console) and stderr.
    pub output: String,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// Boots `image` on `machine` with semihosting on and the serial console on stdout, and
/// waits at most `timeout` for QEMU to exit. `extra` arguments are appended.
pub fn run_image(
    machine: &str,
    image: &Path,
    timeout: Duration,
    extra: &[String],
) -> Result<RunResult, String> {
    let qemu = qemu_binary();
    let mut child = Command::new(&qemu)
        .args(["-M", machine, "-display", "none", "-monitor", "none", "-serial", "stdio", "-semihosting"])
        .arg("-kernel")
        .arg(image)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            format!("cannot start {qemu}: {error} (is qemu-system-arm installed? `make deps`)")
        })?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
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
    let start = Instant::now();
    let exit_code = loop {
        if let Some(status) = child.try_wait().map_err(|error| format!("waiting for QEMU: {error}"))? {
            break status.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    readers.into_iter().for_each(|reader| {
        let _ = reader.join();
    });
    let output = String::from_utf8_lossy(&output.lock().expect("output lock")).into_owned();
    Ok(RunResult { exit_code, output, elapsed })
}
