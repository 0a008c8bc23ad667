//! Command-line options of `tessera-sdimage`: parsing, sizes such as `256M`, and the help text.

use std::path::PathBuf;

use crate::Error;

/// The help text.
pub const USAGE: &str = "\
tessera-sdimage: build a Tessera SD card image (MBR + one FAT32 partition)

usage: tessera-sdimage OUT.img --kernel KERNEL8.IMG [options]

options:
  --kernel PATH       the kernel image, written as /kernel8.img (required)
  --config PATH       written as /config.txt; without it a default is written:
                        arm_64bit=1, kernel=kernel8.img, kernel_address=0x80000,
                        enable_uart=1, init_uart_clock=48000000 (each with a comment)
  --model PATH        a model, written as /models/<its file name>; repeatable
  --firmware DIR      every file of DIR (and its subfolders) at the root, e.g.
                        bootcode.bin, start.elf and fixup.dat for a real Pi
                        (make sdcard fetches them: tools/sdimage/fetch-firmware.sh)
  --file SRC:DEST     any file, written at DEST in the image; repeatable
  --size SIZE         image size, a power of two of at least 64M, e.g. 256M or 4G
                        (suffixes K, M, G, T); images are sparse, so a 4G image
                        costs only what it holds. Default: the smallest power of
                        two from 64M up that fits the content with a margin
  -h, --help          show this help

The partition starts at sector 2048 and has type 0x0C (FAT32, LBA). The image is
read back through the kernel's own FAT32 reader before the tool reports success.";

/// What the command line asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The image to write.
    pub output: PathBuf,
    /// The kernel image.
    pub kernel: PathBuf,
    /// A config.txt to use instead of the default.
    pub config: Option<PathBuf>,
    /// Models to put under /models/.
    pub models: Vec<PathBuf>,
    /// A folder of firmware files to put at the root.
    pub firmware: Option<PathBuf>,
    /// Extra files: source on the host, destination in the image.
    pub files: Vec<(PathBuf, String)>,
    /// The image size in bytes, when given.
    pub size: Option<u64>,
}

/// What to do after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print the help text.
    Help,
    /// Build an image.
    Build(Options),
}

/// Parses a size such as `4G`, `256M`, `64MiB` or `1048576` into bytes.
pub fn parse_size(text: &str) -> Result<u64, Error> {
    let invalid =
        || Error::Usage(format!("invalid size {text:?}: use a number with K, M, G or T, e.g. 256M"));
    let trimmed = text.trim();
    let without_bytes = trimmed.strip_suffix("iB").or_else(|| trimmed.strip_suffix('B')).unwrap_or(trimmed);
    let (digits, shift) = match without_bytes.chars().last() {
        Some('K' | 'k') => (&without_bytes[..without_bytes.len() - 1], 10),
        Some('M' | 'm') => (&without_bytes[..without_bytes.len() - 1], 20),
        Some('G' | 'g') => (&without_bytes[..without_bytes.len() - 1], 30),
        Some('T' | 't') => (&without_bytes[..without_bytes.len() - 1], 40),
        _ => (without_bytes, 0),
    };
    let value: u64 = digits.parse().map_err(|_| invalid())?;
    value.checked_mul(1u64 << shift).ok_or_else(invalid)
}

/// Parses the arguments that follow the program name.
pub fn parse_arguments<I, S>(arguments: I) -> Result<Command, Error>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut arguments = arguments.into_iter().map(Into::into);
    let mut options = Options::default();
    let mut output = None;
    let mut kernel = None;
    while let Some(argument) = arguments.next() {
        let (name, inline_value) = match argument.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value.to_string())),
            _ => (argument.clone(), None),
        };
        let mut value = |name: &str| match inline_value.clone().or_else(|| arguments.next()) {
            Some(value) => Ok(value),
            None => Err(Error::Usage(format!("{name} needs a value"))),
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--kernel" => kernel = Some(PathBuf::from(value("--kernel")?)),
            "--config" => options.config = Some(PathBuf::from(value("--config")?)),
            "--model" => options.models.push(PathBuf::from(value("--model")?)),
            "--firmware" => options.firmware = Some(PathBuf::from(value("--firmware")?)),
            "--size" => options.size = Some(parse_size(&value("--size")?)?),
            "--file" => {
                let pair = value("--file")?;
                let (source, destination) = pair.rsplit_once(':').ok_or_else(|| {
                    Error::Usage(format!("--file {pair:?}: expected SRC:DEST, e.g. tessera.cfg:/tessera.cfg"))
                })?;
                if source.is_empty() || destination.is_empty() {
                    return Err(Error::Usage(format!("--file {pair:?}: SRC and DEST must not be empty")));
                }
                options.files.push((PathBuf::from(source), destination.to_string()));
            }
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(Error::Usage(format!("unknown option {flag}")));
            }
            _ => {
                if output.is_some() {
                    return Err(Error::Usage(format!("more than one output image given ({argument})")));
                }
                output = Some(PathBuf::from(argument));
            }
        }
    }
    options.output = output.ok_or_else(|| Error::Usage("no output image given".to_string()))?;
    options.kernel = kernel.ok_or_else(|| Error::Usage("--kernel is required".to_string()))?;
    Ok(Command::Build(options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn arguments_parse_in_any_order() {
        let command = parse_arguments([
            "--model",
            "a.gguf",
            "out.img",
            "--kernel=k.img",
            "--file",
            "x.cfg:/tessera.cfg",
            "--model",
            "b.bin",
            "--size",
            "4G",
        ])
        .unwrap();
        let Command::Build(options) = command else { panic!("expected a build") };
        assert_eq!(options.output, PathBuf::from("out.img"));
        assert_eq!(options.kernel, PathBuf::from("k.img"));
        assert_eq!(options.models, [PathBuf::from("a.gguf"), PathBuf::from("b.bin")]);
        assert_eq!(options.files, [(PathBuf::from("x.cfg"), "/tessera.cfg".to_string())]);
        assert_eq!(options.size, Some(4 << 30));
        assert_eq!(parse_arguments(["--help"]).unwrap(), Command::Help);
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let message =
            |arguments: &[&str]| parse_arguments(arguments.iter().copied()).unwrap_err().to_string();
        assert_eq!(message(&["out.img"]), "--kernel is required");
        assert_eq!(message(&["--kernel", "k"]), "no output image given");
        assert_eq!(message(&["out.img", "--kernel"]), "--kernel needs a value");
        assert_eq!(message(&["out.img", "--kernel", "k", "--bogus"]), "unknown option --bogus");
        assert!(message(&["out.img", "--kernel", "k", "--file", "nocolon"]).contains("expected SRC:DEST"));
        assert!(message(&["a.img", "b.img", "--kernel", "k"]).contains("more than one output image"));
    }
}
