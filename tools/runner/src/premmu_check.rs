//! `premmu-check ELF`: disassembles kernel8's pre-MMU code with the toolchain's llvm-objdump
//! and fails on any exclusive or atomic instruction (see `runner::premmu`).

#![forbid(unsafe_code)]

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

/// Runs llvm-objdump with `arguments` on `elf` and returns what it printed.
fn objdump(tool: &std::path::Path, arguments: &[&str], elf: &std::path::Path) -> Result<String, String> {
    let output = Command::new(tool)
        .args(arguments)
        .arg(elf)
        .output()
        .map_err(|error| format!("cannot run {}: {error}", tool.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed: {}", tool.display(), String::from_utf8_lossy(&output.stderr)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What `premmu-check --help` prints.
const USAGE: &str = "usage: premmu-check KERNEL8_ELF (checks its pre-MMU code for exclusive and atomic instructions; `make test-premmu` runs it)";

fn run() -> Result<bool, String> {
    let mut arguments = std::env::args().skip(1);
    let elf = match (arguments.next(), arguments.next()) {
        (Some(elf), None) if !elf.starts_with('-') => PathBuf::from(elf),
        _ => {
            return Err(USAGE.into());
        }
    };
    if !elf.is_file() {
        return Err(format!("{} is not a file: build kernel8 first (make build)", elf.display()));
    }
    let tool = runner::llvm_tool("llvm-objdump")?;
    let symbols = runner::premmu::parse_symbols(&objdump(&tool, &["-t", "-C"], &elf)?);
    let instructions =
        runner::premmu::parse_instructions(&objdump(&tool, &["-d", "-C", "--no-show-raw-insn"], &elf)?);
    let report = runner::premmu::check(&symbols, &instructions)?;
    print!("{report}");
    if report.violations.is_empty() {
        println!("premmu-check: no exclusive or atomic instruction before the MMU is on");
        Ok(true)
    } else {
        println!(
            "premmu-check: {} exclusive or atomic instructions before the MMU is on",
            report.violations.len()
        );
        Ok(false)
    }
}

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|argument| argument == "-h" || argument == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("premmu-check: {error}");
            ExitCode::FAILURE
        }
    }
}
