//! The command line of the benchmark binaries: `-h`/`--help` prints the binary's usage, and
//! an argument it does not take is an error that names it, never a silent run.

#![forbid(unsafe_code)]

/// The process's arguments (after its name) as `parse` reads them. `-h` or `--help`
/// anywhere prints `usage` and ends the process with status 0; a rejection prints `parse`'s
/// message and `usage` on standard error and ends it with status 2.
pub fn parse<T>(usage: &str, parse: impl FnOnce(&[String]) -> Result<T, String>) -> T {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.iter().any(|argument| argument == "-h" || argument == "--help") {
        print!("{usage}");
        std::process::exit(0);
    }
    parse(&arguments).unwrap_or_else(|error| {
        eprint!("error: {error}\n\n{usage}");
        std::process::exit(2)
    })
}
