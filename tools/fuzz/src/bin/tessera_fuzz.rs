//! The AFL++ driver: `tessera-fuzz NAME` runs target NAME in AFL's persistent mode (built by
//! `make fuzz` with `cargo afl build --features afl`); `tessera-fuzz --list` names the targets.

use std::process::ExitCode;

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "-h" || name == "--help" {
        println!("tessera-fuzz: one fuzz target under AFL++ (`make fuzz`, tools/fuzz/campaign.sh)\n");
        println!("usage: tessera-fuzz NAME     run target NAME on AFL's inputs");
        println!("       tessera-fuzz --list   the targets and what each reads\n");
        println!("targets: {}", names());
        return ExitCode::SUCCESS;
    }
    if name == "--list" {
        for target in fuzz::TARGETS {
            println!("{:<14} {}", target.name, target.input);
        }
        return ExitCode::SUCCESS;
    }
    let Some(target) = fuzz::target(&name) else {
        eprintln!("usage: tessera-fuzz NAME (one of: {})", names());
        return ExitCode::FAILURE;
    };
    let run = target.run;
    afl::fuzz!(|data: &[u8]| run(data));
    ExitCode::SUCCESS
}

fn names() -> String {
    fuzz::TARGETS.iter().map(|target| target.name).collect::<Vec<_>>().join(", ")
}
