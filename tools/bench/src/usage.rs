//! The command line of the benchmark binaries: `-h`/`--help` prints the binary's usage, and
//! an argument it does not take is an error that names it, never a silent run.

/// The process's arguments (after its name), once `check` has accepted them. `-h` or
/// `--help` anywhere prints `usage` and ends the process with status 0; a rejection prints
/// `check`'s message and `usage` on standard error and ends it with status 2.
pub fn arguments(usage: &str, check: impl Fn(&[String]) -> Result<(), String>) -> Vec<String> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.iter().any(|argument| argument == "-h" || argument == "--help") {
        print!("{usage}");
        std::process::exit(0);
    }
    if let Err(error) = check(&arguments) {
        eprint!("error: {error}\n\n{usage}");
        std::process::exit(2);
    }
    arguments
}
