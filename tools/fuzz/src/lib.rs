//! Tessera's fuzz targets: one function per untrusted input, each calling the code the kernel
//! runs on that input (the `kernel` and `bsp` crates, built for the host), or for the HTTP
//! gateway, the code `tessera serve` runs (the `cli` crate's library).
//!
//! The same functions are driven two ways: by AFL++ through the `tessera-fuzz` binary
//! (`make fuzz`, feature `afl`), and by the replay test (`cargo test -p fuzz`, part of
//! `make test`), which runs every file of `corpus/<target>/` and `regressions/<target>/`
//! through them. A target returns normally for any input; a panic is a defect it found.

#![forbid(unsafe_code)]

pub mod card;
pub mod targets;

/// A fuzz target: its name (the directory of its corpus and regressions) and its function.
#[derive(Clone, Copy)]
pub struct Target {
    /// The name, as `tessera-fuzz NAME` and the corpus directories spell it.
    pub name: &'static str,
    /// What the input is, in a few words.
    pub input: &'static str,
    /// Runs one input through the kernel's code.
    pub run: fn(&[u8]),
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target { name: "gguf", input: "a GGUF v3 model file", run: targets::gguf },
    Target {
        name: "llama2c",
        input: "a llama2.c checkpoint and its tokenizer.bin (see targets::llama2c)",
        run: targets::llama2c,
    },
    Target {
        name: "tokenizer",
        input: "a mode byte, then UTF-8 text to encode or token ids to decode",
        run: targets::tokenizer,
    },
    Target { name: "console", input: "bytes received on the serial console", run: targets::console },
    Target { name: "protocol", input: "a machine-mode request line", run: targets::protocol },
    Target { name: "fat32", input: "an SD card image in the sparse form of fuzz::card", run: targets::fat32 },
    Target { name: "devicetree", input: "a flattened device tree blob", run: targets::devicetree },
    Target {
        name: "sd_registers",
        input: "SD card registers and responses as the SDHCI returns them: CSD, SCR, CID, R1, R3, R6, R7",
        run: targets::sd_registers,
    },
    Target { name: "config", input: "the contents of tessera.cfg", run: targets::config },
    Target {
        name: "gateway",
        input: "an HTTP request as tessera serve receives it (head and body)",
        run: targets::gateway,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

/// The files of `directory` that are inputs (not hidden), sorted; none if it does not exist.
pub fn inputs(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(directory) else { return Vec::new() };
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file() && !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs each file of `files` through `run`; returns one line for each that panicked (its path
/// and the panic's message) or could not be read.
pub fn replay(run: fn(&[u8]), files: &[std::path::PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                failures.push(format!("{}: {error}", path.display()));
                continue;
            }
        };
        if let Err(panic) = std::panic::catch_unwind(|| run(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    failures
}
