//! `tessera-sdimage`: builds Tessera's SD card image from the command line (see `--help`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use sdimage::image::{verify_image, write_image};
use sdimage::options::{Command, USAGE, parse_arguments};
use sdimage::plan::plan;
use sdimage::{Error, mebibytes};

/// Plans, writes and checks the image.
fn run() -> Result<(), Error> {
    let options = match parse_arguments(std::env::args().skip(1))? {
        Command::Help => {
            println!("{USAGE}");
            return Ok(());
        }
        Command::Build(options) => options,
    };
    let plan = plan(&options)?;
    println!(
        "building {}: {} FAT32 image, {}-byte clusters, {} files, {} of content",
        plan.output.display(),
        mebibytes(plan.image_bytes),
        plan.cluster_bytes,
        plan.entries.len(),
        mebibytes(plan.content_bytes())
    );
    write_image(&plan, true)?;
    verify_image(&plan)?;
    for entry in &plan.entries {
        println!("  {:>12} bytes  {}", entry.size, entry.destination);
    }
    println!("wrote {} and read every file back", plan.output.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ Error::Usage(_)) => {
            eprintln!("tessera-sdimage: {error}\nrun tessera-sdimage --help for usage");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("tessera-sdimage: {error}");
            ExitCode::FAILURE
        }
    }
}
