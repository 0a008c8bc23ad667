//! `qemu-runner`: builds the QEMU system tests in `tests/`, boots each in QEMU under a time
//! limit, and prints one line per test and a closing `N passed, M failed` line.

#![forbid(unsafe_code)]

use runner::{Patience, Session, make_image, objcopy_binary};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

const HELP: &str = "\
qemu-runner: build and run Tessera's QEMU system tests

USAGE:
    qemu-runner [--filter TEXT] [--machine MACHINE] [--list] [--verbose]
    qemu-runner --boot ELF [--machine MACHINE] [--sd IMAGE] [QEMU ARGUMENTS...]

OPTIONS:
    --filter TEXT   run only tests whose name contains TEXT
    --machine NAME  run only on this QEMU machine (raspi3b, raspi4b, raspi3ap)
    --list          list the tests, each with the machines it runs on, then exit
    --bench         run the QEMU benchmarks instead of the tests, printing their tables, and
                    the heavy tests on the machines `make test` leaves them off
    --verbose       print every test's console output, not only failures'
    --boot ELF      boot one aarch64 ELF (kernel8 or a test kernel) in QEMU with its serial
                    console on this terminal and semihosting on, and exit with QEMU's exit
                    code (a test kernel's verdict); quit an interactive kernel with Ctrl-A X.
                    This is the aarch64-unknown-none runner of .cargo/config.toml, so
                    `cargo run --target aarch64-unknown-none -p boot --release` boots kernel8.
                    --machine picks the QEMU machine (default raspi3b), --sd attaches a card
                    image; any other argument goes to QEMU as it is.
    -h, --help      print this help

Tests are the [[test]] kernels of the `systests` package (tests/kernels/); their QEMU
settings are in tests/qemu-tests.toml. A test runs on every machine it lists (`machines`,
default raspi3b and raspi4b; `machine` names a single one); a `heavy` test runs on its first
machine only, and on the others with --bench. A benchmark runs on raspi3b unless it lists
machines. Set QEMU to use another qemu-system-aarch64.
";

/// One test's settings in `tests/qemu-tests.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSpec {
    name: String,
    /// The test kernel to boot, when several entries share one (defaults to `name`).
    kernel: Option<String>,
    /// Attach a raw SD image of this size ("64M", "4G") filled with the block test pattern.
    sd_pattern: Option<String>,
    /// Attach an SD image (FAT32, made like `make sdcard`) holding `kernel8.img` and these
    /// models (fixture names or paths, see `runner::fixtures`).
    sd_models: Option<Vec<String>>,
    /// Contents of `/tessera.cfg` on that SD image.
    sd_config: Option<String>,
    /// Pass a generated Raspberry Pi 3 device tree with this many bytes of ARM memory (`-dtb`).
    device_tree_memory: Option<u32>,
    /// Nest this many levels of nodes under `/chosen` in that device tree.
    device_tree_nesting: Option<usize>,
    /// The one QEMU machine this test is for (a board-specific test); or see `machines`.
    machine: Option<String>,
    /// The QEMU machines this test runs on (default [`DEFAULT_MACHINES`] for a test,
    /// raspi3b for a benchmark).
    machines: Option<Vec<String>>,
    /// A heavy test (the real model): `make test` runs it on its first machine only, and
    /// `--bench` on the others.
    #[serde(default)]
    heavy: bool,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default)]
    expect: Vec<String>,
    #[serde(default)]
    qemu_args: Vec<String>,
    /// A benchmark: run only with `--bench`, and its output is printed.
    #[serde(default)]
    bench: bool,
    /// A console script: each step sends text and/or waits for text in the output.
    #[serde(default)]
    step: Vec<Step>,
    /// Play the steps from number `from` (counting from 1) to the end `times` times in all.
    repeat: Option<Repeat>,
    /// A summary to print from the output: `swap_cost` (the kernel's `swap stall:` lines).
    report: Option<String>,
}

/// Repetition of the tail of a console script.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Repeat {
    from: usize,
    times: usize,
}

impl TestSpec {
    /// The machines this entry lists, or the default for its kind.
    fn machines(&self) -> Result<Vec<String>, String> {
        match (&self.machine, &self.machines) {
            (Some(_), Some(_)) => Err(format!("{}: give `machine` or `machines`, not both", self.name)),
            (Some(machine), None) => Ok(vec![machine.clone()]),
            (None, Some(machines)) if machines.is_empty() => {
                Err(format!("{}: `machines` is empty", self.name))
            }
            (None, Some(machines)) => Ok(machines.clone()),
            (None, None) if self.bench => Ok(vec![default_machine()]),
            (None, None) => Ok(DEFAULT_MACHINES.iter().map(|machine| machine.to_string()).collect()),
        }
    }

    /// The machines this entry runs on in a `make test` run (`bench` false) or a `make bench`
    /// run (`bench` true): a test on all of its machines in the first, except a heavy one, which
    /// runs on its first machine there and on the rest in the second; a benchmark on all of its
    /// machines in the second.
    fn machines_in(&self, bench: bool) -> Result<Vec<String>, String> {
        let machines = self.machines()?;
        Ok(match (self.bench, self.heavy, bench) {
            (true, _, true) | (false, false, false) => machines,
            (false, true, false) => machines.into_iter().take(1).collect(),
            (false, true, true) => machines.into_iter().skip(1).collect(),
            (true, _, false) | (false, false, true) => Vec::new(),
        })
    }

    /// The console script with its repeated tail played out.
    fn script(&self) -> Vec<&Step> {
        let Some(Repeat { from, times }) = &self.repeat else { return self.step.iter().collect() };
        let split = from.saturating_sub(1).min(self.step.len());
        let (head, tail) = self.step.split_at(split);
        head.iter().chain((0..*times).flat_map(|_| tail.iter())).collect()
    }
}

/// One step of a console script.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Bytes to type (TOML escapes such as `\r` work).
    send: Option<String>,
    /// Send this many seeded pseudo-random bytes (binary noise, invalid UTF-8 included, never
    /// Ctrl-A: see `runner::noise`), then a line end. Sent after `send`.
    send_noise: Option<usize>,
    /// Text that must appear in the output after the previous step's match.
    wait_for: Option<String>,
    /// Seconds `wait_for` may go without any console output (default 30); the step may take
    /// ten times that in all while output keeps coming.
    timeout: Option<u64>,
    /// Wait for `wait_for` this many times, one after another (default once).
    times: Option<usize>,
    /// Look for `wait_for` anywhere in the output, not only after the previous match (for
    /// records of interleaved requests, whose order is not fixed).
    #[serde(default)]
    anywhere: bool,
    /// Send `text` once for each number from `from` to `to`, with `{n}` replaced by it (many
    /// requests at once).
    send_each: Option<SendEach>,
    /// Wait until every request id from `from` to `to` has a final record (`done` or
    /// `error`).
    final_records: Option<IdRange>,
    /// Read a number from the output after this step's match and require it to be the same as
    /// every earlier reading of the same name.
    unchanged: Option<Unchanged>,
    /// Read a decimal number from the output after this step's match and require it to lie
    /// within bounds.
    bound: Option<Bound>,
}

/// A decimal number that must lie within `at_least..=at_most`: found after each of the
/// `after` markers in turn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bound {
    name: String,
    after: Vec<String>,
    at_least: Option<f64>,
    at_most: Option<f64>,
}

/// Numbered copies of one line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendEach {
    from: u64,
    to: u64,
    text: String,
}

/// Request ids `from..=to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdRange {
    from: u64,
    to: u64,
}

/// A number that must not move: found after each of the `after` markers in turn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unchanged {
    name: String,
    after: Vec<String>,
}

/// The unsigned number that follows the `markers`, in order, in `text`.
fn number_after(text: &str, markers: &[String]) -> Option<u64> {
    let mut rest = text;
    for marker in markers {
        rest = &rest[rest.find(marker.as_str())? + marker.len()..];
    }
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The decimal number (digits and a point) that follows the `markers`, in order, in `text`.
fn decimal_after(text: &str, markers: &[String]) -> Option<f64> {
    let mut rest = text;
    for marker in markers {
        rest = &rest[rest.find(marker.as_str())? + marker.len()..];
    }
    let number: String =
        rest.chars().take_while(|character| character.is_ascii_digit() || *character == '.').collect();
    number.parse().ok()
}

/// Whether request `id` has a final record in `output`.
fn has_final_record(output: &str, id: u64) -> bool {
    ["done", "error"].iter().any(|event| output.contains(&format!("{{\"id\":{id},\"event\":\"{event}\"")))
}

/// The name under which the `kernel8` image is known to the manifest.
const KERNEL8: &str = "kernel8";

/// The machines a test runs on unless it says otherwise: the Pi 3 and the Pi 4.
const DEFAULT_MACHINES: [&str; 2] = ["raspi3b", "raspi4b"];

fn default_machine() -> String {
    "raspi3b".to_string()
}

fn default_timeout() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
struct Manifest {
    test: Vec<TestSpec>,
}

struct Options {
    filter: Option<String>,
    machine: Option<String>,
    bench: bool,
    list: bool,
    verbose: bool,
}

fn parse_options() -> Result<Option<Options>, String> {
    let mut options = Options { filter: None, machine: None, bench: false, list: false, verbose: false };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            "--filter" => options.filter = Some(arguments.next().ok_or("--filter needs a value")?),
            "--machine" => options.machine = Some(arguments.next().ok_or("--machine needs a value")?),
            "--list" => options.list = true,
            "--bench" => options.bench = true,
            "--verbose" => options.verbose = true,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(options))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root exists")
}

/// Runs cargo with `arguments` and returns each built executable of a target of `kind`
/// ("test" or "bin") by target name.
fn cargo_executables(
    root: &Path,
    arguments: &[&str],
    kind: &str,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .current_dir(root)
        .args(arguments)
        .args(["--target", "aarch64-unknown-none", "--release", "--message-format=json-render-diagnostics"])
        .output()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the test kernels failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut kernels = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let matches =
            message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|each| each == kind));
        if let (true, Some(name), Some(executable)) =
            (matches, message["target"]["name"].as_str(), message["executable"].as_str())
        {
            kernels.insert(name.to_string(), PathBuf::from(executable));
        }
    }
    Ok(kernels)
}

/// Builds the test kernels and `kernel8`, and returns each ELF path by name.
fn build_kernels(root: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut kernels = cargo_executables(root, &["test", "-p", "systests", "--no-run"], "test")?;
    kernels.extend(cargo_executables(root, &["build", "-p", "boot", "--bin", KERNEL8], "bin")?);
    Ok(kernels)
}

/// Boots one test and plays its console script; a kernel that does not exit by itself
/// (`kernel8`) is stopped once the script is done.
fn run_test(
    spec: &TestSpec,
    machine: &str,
    image: &Path,
    qemu_args: &[String],
) -> Result<(runner::RunResult, Result<(), String>), String> {
    let mut session = Session::start(machine, image, qemu_args)?;
    let mut cursor = 0;
    let mut script = Ok(());
    let mut readings: BTreeMap<String, u64> = BTreeMap::new();
    for (index, step) in spec.script().into_iter().enumerate() {
        let previous = cursor;
        if let Some(each) = &step.send_each {
            let lines: String =
                (each.from..=each.to).map(|n| each.text.replace("{n}", &n.to_string())).collect();
            if let Err(error) = session.send(lines.as_bytes()) {
                script = Err(format!("step {}: {error}", index + 1));
                break;
            }
        }
        if let Some(text) = &step.send
            && let Err(error) = session.send(text.as_bytes())
        {
            script = Err(format!("step {}: {error}", index + 1));
            break;
        }
        if let Some(count) = step.send_noise {
            let mut noise = runner::noise(count, count as u64);
            noise.extend_from_slice(b"\r");
            if let Err(error) = session.send(&noise) {
                script = Err(format!("step {}: {error}", index + 1));
                break;
            }
        }
        if let Some(text) = &step.wait_for {
            let patience = Patience::quiet_for(Duration::from_secs(step.timeout.unwrap_or(30)));
            let mut from = if step.anywhere { 0 } else { cursor };
            for _ in 0..step.times.unwrap_or(1) {
                match session.wait_for(text, from, patience) {
                    Ok(end) => {
                        cursor = cursor.max(end);
                        from = end;
                    }
                    Err(error) => {
                        script = Err(format!("step {}: {error}", index + 1));
                        break;
                    }
                }
            }
            if script.is_err() {
                break;
            }
        }
        if let Err(error) = check_step_output(&mut session, step, previous, &mut readings) {
            script = Err(format!("step {}: {error}", index + 1));
            break;
        }
    }
    let exits = spec.kernel.as_deref() != Some(KERNEL8);
    if !exits
        && script.is_ok()
        && let Some(report) = runner::fault_report(&session.output())
    {
        script = Err(format!("kernel8 reported a fault: {report:?}"));
    }
    let result = if exits && script.is_ok() {
        session.finish(Duration::from_secs(spec.timeout))?
    } else {
        session.kill()
    };
    Ok((result, script))
}

/// The checks of a step on the output as a whole, after its send and wait: `final_records`,
/// `unchanged` and `bound` (on the output from `cursor`, the match before this step's; each
/// waits for the end of the line its number is on).
fn check_step_output(
    session: &mut Session,
    step: &Step,
    cursor: usize,
    readings: &mut BTreeMap<String, u64>,
) -> Result<(), String> {
    let patience = Patience::quiet_for(Duration::from_secs(step.timeout.unwrap_or(30)));
    if let Some(range) = &step.final_records {
        let deadline = std::time::Instant::now() + patience.limit;
        loop {
            let output = session.output();
            let missing: Vec<u64> =
                (range.from..=range.to).filter(|&id| !has_final_record(&output, id)).collect();
            if missing.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{} requests have no final record, the first {:?}",
                    missing.len(),
                    &missing[..missing.len().min(8)]
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let from = if step.anywhere { 0 } else { cursor };
    if let (Some(unchanged), Some(text)) = (&step.unchanged, &step.wait_for) {
        let matched = matched_line(session, text, from, patience)?;
        let value = number_after(&matched, &unchanged.after)
            .ok_or_else(|| format!("no number after {:?} in the output", unchanged.after))?;
        match readings.insert(unchanged.name.clone(), value) {
            Some(earlier) if earlier != value => {
                return Err(format!("{} moved from {earlier} to {value}", unchanged.name));
            }
            _ => println!("    {} = {value}", unchanged.name),
        }
    }
    if let (Some(bound), Some(text)) = (&step.bound, &step.wait_for) {
        let matched = matched_line(session, text, from, patience)?;
        let value = decimal_after(&matched, &bound.after)
            .ok_or_else(|| format!("no number after {:?} in the output", bound.after))?;
        let low = bound.at_least.unwrap_or(f64::NEG_INFINITY);
        let high = bound.at_most.unwrap_or(f64::INFINITY);
        if !(low..=high).contains(&value) {
            return Err(format!("{} is {value}, outside {low}..={high}", bound.name));
        }
        println!("    {} = {value} (within {low}..={high})", bound.name);
    }
    Ok(())
}

/// The output from the first match of `text` at or after `from` to the end of the line it is
/// on (waiting for that line to end).
fn matched_line(
    session: &mut Session,
    text: &str,
    from: usize,
    patience: Patience,
) -> Result<String, String> {
    let start = session.wait_for(text, from, patience)? - text.len();
    let end = session.wait_for("\n", start, patience)?;
    Ok(session.output()[start..end].to_string())
}

/// Writes a FAT32 SD image with `kernel` and `models`, as `make sdcard` does.
fn write_sd_image(
    output: &Path,
    kernel: &Path,
    models: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
) -> Result<(), String> {
    let options = sdimage::options::Options {
        output: output.to_path_buf(),
        kernel: kernel.to_path_buf(),
        config: None,
        models,
        firmware: None,
        files,
        size: None,
    };
    let plan = sdimage::plan::plan(&options).map_err(|error| error.to_string())?;
    sdimage::image::write_image(&plan, false).map_err(|error| error.to_string())
}

/// Parses "64M", "4G" or a byte count.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((index, 'K')) => (&text[..index], 1 << 10),
        Some((index, 'M')) => (&text[..index], 1 << 20),
        Some((index, 'G')) => (&text[..index], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().map(|count| count * unit).map_err(|_| format!("bad size {text:?}"))
}

/// Blocks at each end of a pattern image that hold the test pattern; the rest stays sparse.
const PATTERN_BLOCKS: u64 = 32 * 1024;

/// Writes a sparse raw SD image of `size` bytes (a power of two, as QEMU requires) whose first
/// and last `PATTERN_BLOCKS` blocks hold `kernel::hil::pattern_block` content.
fn write_pattern_image(path: &Path, size: u64) -> Result<(), String> {
    use std::io::{Seek, SeekFrom, Write};
    if !size.is_power_of_two() {
        return Err(format!("SD image size {size} is not a power of two"));
    }
    let describe = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut file = std::fs::File::create(path).map_err(describe)?;
    file.set_len(size).map_err(describe)?;
    let blocks = size / 512;
    let mut block = [0u8; 512];
    let mut buffer = Vec::with_capacity(PATTERN_BLOCKS as usize * 512);
    for range in [0..PATTERN_BLOCKS.min(blocks), blocks.saturating_sub(PATTERN_BLOCKS)..blocks] {
        buffer.clear();
        for index in range.clone() {
            kernel::hil::pattern_block(index, &mut block);
            buffer.extend_from_slice(&block);
        }
        file.seek(SeekFrom::Start(range.start * 512)).map_err(describe)?;
        file.write_all(&buffer).map_err(describe)?;
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads and parses `tests/qemu-tests.toml` under `root`; returns it with its path.
fn read_manifest(root: &Path) -> Result<(Manifest, PathBuf), String> {
    let manifest_path = root.join("tests/qemu-tests.toml");
    let manifest_text = std::fs::read_to_string(&manifest_path)
        .map_err(|error| format!("cannot read {}: {error}", manifest_path.display()))?;
    let manifest: Manifest =
        toml::from_str(&manifest_text).map_err(|error| format!("{}: {error}", manifest_path.display()))?;
    Ok((manifest, manifest_path))
}

/// One test on one machine.
struct Run<'manifest> {
    spec: &'manifest TestSpec,
    machine: String,
}

impl Run<'_> {
    /// The stem of this run's files in the image directory: the test's name, with the machine
    /// appended unless it is raspi3b (so the raspi3b files keep their names).
    fn stem(&self) -> String {
        if self.machine == default_machine() {
            self.spec.name.clone()
        } else {
            format!("{}-{}", self.spec.name, self.machine)
        }
    }
}

/// The runs of `manifest` that `options` selects (by name filter and machine, and `make test`
/// or `make bench`), test by test; a selected test with an unknown report, or with a bad
/// machine list, is an error.
fn select_runs<'manifest>(
    manifest: &'manifest Manifest,
    options: &Options,
) -> Result<Vec<Run<'manifest>>, String> {
    let mut runs = Vec::new();
    for spec in &manifest.test {
        if options.filter.as_ref().is_some_and(|filter| !spec.name.contains(filter.as_str())) {
            continue;
        }
        let machines = spec.machines_in(options.bench)?;
        if !machines.is_empty() && spec.report.as_deref().is_some_and(|report| report != "swap_cost") {
            return Err(format!("{}: unknown report {:?} (known: swap_cost)", spec.name, spec.report));
        }
        runs.extend(
            machines
                .into_iter()
                .filter(|machine| options.machine.as_ref().is_none_or(|wanted| wanted == machine))
                .map(|machine| Run { spec, machine }),
        );
    }
    Ok(runs)
}

/// What every test run needs once the kernels are built.
struct Setup {
    /// The workspace root.
    root: PathBuf,
    /// Each built kernel's ELF, by name.
    kernels: BTreeMap<String, PathBuf>,
    /// The objcopy that turns an ELF into a raw image.
    objcopy: PathBuf,
    /// Where images, SD cards, device trees and logs are written (`target/qemu-tests`).
    image_directory: PathBuf,
}

impl Setup {
    /// Builds the kernels, checks that every test kernel has an entry in `manifest` (at
    /// `manifest_path`), finds objcopy and makes the image directory.
    fn prepare(root: PathBuf, manifest: &Manifest, manifest_path: &Path) -> Result<Self, String> {
        eprintln!("building the QEMU test kernels...");
        let kernels = build_kernels(&root)?;
        let booted = |name: &String| {
            manifest.test.iter().any(|spec| spec.kernel.as_ref().unwrap_or(&spec.name) == name)
        };
        if let Some(orphan) = kernels.keys().find(|name| *name != KERNEL8 && !booted(name)) {
            return Err(format!("test kernel {orphan} has no entry in {}", manifest_path.display()));
        }
        let objcopy = objcopy_binary()?;
        let image_directory = root.join("target/qemu-tests");
        std::fs::create_dir_all(&image_directory)
            .map_err(|error| format!("{}: {error}", image_directory.display()))?;
        Ok(Self { root, kernels, objcopy, image_directory })
    }

    /// QEMU's arguments for `spec`, booting `image`: its own, then the SD card (a pattern
    /// image, or a FAT32 image with its models and config) and the device tree it asks for,
    /// each written here first.
    fn qemu_arguments(&self, run: &Run<'_>, image: &Path) -> Result<Vec<String>, String> {
        let (spec, stem) = (run.spec, run.stem());
        let image_directory = &self.image_directory;
        let mut qemu_args = spec.qemu_args.clone();
        if let Some(size) = &spec.sd_pattern {
            let sd_image = image_directory.join(format!("{stem}-sd.img"));
            write_pattern_image(&sd_image, parse_size(size)?)?;
            qemu_args.extend(["-drive".to_string(), format!("file={},if=sd,format=raw", sd_image.display())]);
        }
        if let Some(models) = &spec.sd_models {
            let sd_image = image_directory.join(format!("{stem}-sd.img"));
            let model_paths =
                runner::fixtures::write_models(&self.root, &image_directory.join(&stem), models)?;
            let mut files = Vec::new();
            if let Some(text) = &spec.sd_config {
                let path = image_directory.join(&stem).join("tessera.cfg");
                std::fs::write(&path, text).map_err(|error| format!("{}: {error}", path.display()))?;
                files.push((path, "/tessera.cfg".to_string()));
            }
            write_sd_image(&sd_image, image, model_paths, files)?;
            qemu_args.extend(["-drive".to_string(), format!("file={},if=sd,format=raw", sd_image.display())]);
        }
        if let Some(memory) = spec.device_tree_memory {
            let blob = image_directory.join(format!("{stem}.dtb"));
            let tree = match spec.device_tree_nesting {
                Some(levels) => runner::device_tree::raspberry_pi_3_nested(memory, levels),
                None => runner::device_tree::raspberry_pi_3(memory),
            };
            std::fs::write(&blob, tree).map_err(|error| format!("{}: {error}", blob.display()))?;
            qemu_args.extend(["-dtb".to_string(), blob.display().to_string()]);
        }
        Ok(qemu_args)
    }

    /// Makes `spec`'s image and SD card, boots it, keeps its log, judges it and prints its
    /// line; returns whether it passed.
    fn run_one(&self, run: &Run<'_>, verbose: bool) -> Result<bool, String> {
        let (spec, machine, stem) = (run.spec, &run.machine, run.stem());
        let kernel = spec.kernel.as_ref().unwrap_or(&spec.name);
        let elf =
            self.kernels.get(kernel).ok_or_else(|| format!("no test kernel named {kernel} was built"))?;
        let image = self.image_directory.join(format!("{stem}.img"));
        make_image(&self.objcopy, elf, &image)?;
        let qemu_args = self.qemu_arguments(run, &image)?;
        let (result, script) = run_test(spec, machine, &image, &qemu_args)?;
        let log = self.image_directory.join(format!("{stem}.log"));
        std::fs::write(&log, &result.output).map_err(|error| format!("{}: {error}", log.display()))?;
        let seconds = result.elapsed.as_secs_f64();
        match verdict(spec, kernel != KERNEL8, &result, script) {
            Ok(()) => {
                println!("test {:<24} ... ok ({seconds:.1} s, {machine})", spec.name);
                print_passed_output(spec, &result.output, verbose);
                Ok(true)
            }
            Err(reason) => {
                println!("test {:<24} ... FAILED: {reason} ({seconds:.1} s, {machine})", spec.name);
                println!(
                    "---- console output (last 40 lines; all of it in {}) ----\n{}\n----",
                    log.display(),
                    tail(&result.output, 40)
                );
                Ok(false)
            }
        }
    }
}

/// Whether a run of `spec` passed: its script succeeded, the output holds every expected
/// text, and the kernel exited with 0 (or, for one that never `exits` by itself, was
/// stopped after its script); otherwise why not.
fn verdict(
    spec: &TestSpec,
    exits: bool,
    result: &runner::RunResult,
    script: Result<(), String>,
) -> Result<(), String> {
    let missing: Vec<&String> =
        spec.expect.iter().filter(|text| !result.output.contains(text.as_str())).collect();
    match (script, result.exit_code, missing.is_empty()) {
        (Err(reason), _, _) => Err(reason),
        (Ok(()), Some(0), true) => Ok(()),
        (Ok(()), None, true) if !exits => Ok(()),
        (Ok(()), Some(0) | None, false) => Err(format!("output lacks {missing:?}")),
        (Ok(()), Some(code), _) => Err(format!("exit status {code}")),
        (Ok(()), None, _) => Err(format!("timed out after {} s", spec.timeout)),
    }
}

/// What a passed test prints after its line: its report, then all of its `output` when
/// `verbose`, or for a benchmark its table rows and the console lines its script waited for.
fn print_passed_output(spec: &TestSpec, output: &str, verbose: bool) {
    if spec.report.as_deref() == Some("swap_cost") {
        runner::report::swap_cost_tables(output).iter().for_each(|line| println!("{line}"));
    }
    if verbose {
        println!("{output}");
    } else if spec.bench {
        // Table rows, and the console lines a script waited for (kernel8's answers),
        // unless a report already sums the run up.
        let awaited = |line: &str| {
            spec.report.is_none()
                && spec
                    .step
                    .iter()
                    .filter_map(|step| step.wait_for.as_deref())
                    .any(|text| line.contains(text))
        };
        output
            .lines()
            .filter(|line| line.starts_with('|') || awaited(line))
            .for_each(|line| println!("{line}"));
    }
}

/// Runs the selected tests (or lists them) and prints the `N passed, M failed` line; returns
/// whether every test passed.
fn run() -> Result<bool, String> {
    let Some(options) = parse_options()? else { return Ok(true) };
    let root = workspace_root();
    let (manifest, manifest_path) = read_manifest(&root)?;
    let selected = select_runs(&manifest, &options)?;
    if options.list {
        for run in &selected {
            println!("{:<24} machine={} timeout={}s", run.spec.name, run.machine, run.spec.timeout);
        }
        return Ok(true);
    }
    let setup = Setup::prepare(root, &manifest, &manifest_path)?;
    let (mut passed, mut failed) = (0, 0);
    for run in &selected {
        if setup.run_one(run, options.verbose)? {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// What `--boot` was asked to do.
#[derive(Debug, PartialEq, Eq)]
struct BootRequest {
    elf: PathBuf,
    machine: String,
    sd: Option<PathBuf>,
    qemu_args: Vec<String>,
}

/// Parses the arguments that follow `--boot`.
fn parse_boot(arguments: &[String]) -> Result<BootRequest, String> {
    let (elf, rest) = arguments.split_first().ok_or("--boot needs the ELF to boot")?;
    let mut request =
        BootRequest { elf: PathBuf::from(elf), machine: default_machine(), sd: None, qemu_args: Vec::new() };
    let mut rest = rest.iter();
    while let Some(argument) = rest.next() {
        match argument.as_str() {
            "--machine" => request.machine = rest.next().ok_or("--machine needs a value")?.clone(),
            "--sd" => request.sd = Some(PathBuf::from(rest.next().ok_or("--sd needs an image")?)),
            _ => request.qemu_args.push(argument.clone()),
        }
    }
    Ok(request)
}

/// Boots `request.elf` in QEMU with the serial console and semihosting on this terminal (one
/// multiplexed character device, so Ctrl-A X quits) and returns QEMU's exit code.
fn boot(request: &BootRequest) -> Result<u8, String> {
    if !request.elf.is_file() {
        return Err(format!("{} is not a file", request.elf.display()));
    }
    let directory = workspace_root().join("target/qemu-boot");
    std::fs::create_dir_all(&directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    let name = request.elf.file_name().and_then(|name| name.to_str()).unwrap_or("kernel");
    let image = directory.join(format!("{name}.img"));
    make_image(&objcopy_binary()?, &request.elf, &image)?;
    let mut qemu = Command::new(runner::qemu_binary());
    qemu.args(["-M", &request.machine, "-display", "none", "-kernel"]).arg(&image).args([
        "-chardev",
        "stdio,id=console,mux=on",
        "-serial",
        "chardev:console",
        "-semihosting-config",
        "enable=on,target=native,chardev=console",
        "-monitor",
        "none",
    ]);
    if let Some(sd) = &request.sd {
        qemu.args(["-drive", &format!("file={},if=sd,format=raw", sd.display())]);
    }
    qemu.args(&request.qemu_args);
    let status = qemu.status().map_err(|error| format!("cannot run {}: {error}", runner::qemu_binary()))?;
    Ok(status.code().map_or(1, |code| code.clamp(0, 255) as u8))
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.first().map(String::as_str) == Some("--boot") {
        return match parse_boot(&arguments[1..]).and_then(|request| boot(&request)) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("qemu-runner --boot: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("qemu-runner: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_arguments_parse() {
        let arguments: Vec<String> =
            ["k.elf", "--sd", "card.img", "-icount", "shift=0", "--machine", "raspi3ap"]
                .map(String::from)
                .to_vec();
        assert_eq!(
            parse_boot(&arguments).unwrap(),
            BootRequest {
                elf: PathBuf::from("k.elf"),
                machine: "raspi3ap".to_string(),
                sd: Some(PathBuf::from("card.img")),
                qemu_args: vec!["-icount".to_string(), "shift=0".to_string()],
            }
        );
        assert_eq!(parse_boot(&["k.elf".to_string()]).unwrap().machine, "raspi3b");
        assert!(parse_boot(&[]).is_err());
        assert!(parse_boot(&["k.elf".to_string(), "--sd".to_string()]).unwrap_err().contains("--sd"));
    }

    #[test]
    fn tests_run_on_both_boards_and_heavy_ones_on_one_in_make_test() {
        let parse = |text: &str| toml::from_str::<Manifest>(text).unwrap();
        let manifest = parse(
            r#"
            [[test]]
            name = "plain"
            [[test]]
            name = "pi3ap"
            machine = "raspi3ap"
            [[test]]
            name = "model"
            heavy = true
            [[test]]
            name = "counts"
            bench = true
            [[test]]
            name = "counts_both"
            bench = true
            machines = ["raspi3b", "raspi4b"]
            "#,
        );
        let runs = |bench: bool, machine: Option<&str>| {
            let options = Options {
                filter: None,
                machine: machine.map(str::to_string),
                bench,
                list: false,
                verbose: false,
            };
            select_runs(&manifest, &options)
                .unwrap()
                .iter()
                .map(|run| format!("{} {}", run.spec.name, run.machine))
                .collect::<Vec<_>>()
        };
        assert_eq!(runs(false, None), ["plain raspi3b", "plain raspi4b", "pi3ap raspi3ap", "model raspi3b"]);
        assert_eq!(
            runs(true, None),
            ["model raspi4b", "counts raspi3b", "counts_both raspi3b", "counts_both raspi4b"]
        );
        assert_eq!(runs(false, Some("raspi4b")), ["plain raspi4b"]);
        let stems: Vec<String> = select_runs(
            &manifest,
            &Options {
                filter: Some("plain".into()),
                machine: None,
                bench: false,
                list: false,
                verbose: false,
            },
        )
        .unwrap()
        .iter()
        .map(Run::stem)
        .collect();
        assert_eq!(stems, ["plain", "plain-raspi4b"]);
        let both = parse("[[test]]\nname = \"x\"\nmachine = \"raspi3b\"\nmachines = [\"raspi4b\"]\n");
        assert!(both.test[0].machines().unwrap_err().contains("not both"));
    }

    #[test]
    fn a_decimal_is_read_after_its_markers() {
        let line = "bandwidth    now 26.5 MB/s (23.9 MB/s read), sustained 19.3 MB/s over 320.0 ms";
        let after = |markers: &[&str]| {
            decimal_after(line, &markers.iter().map(|marker| marker.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(after(&["sustained "]), Some(19.3));
        assert_eq!(after(&["now "]), Some(26.5));
        assert_eq!(after(&["(", "), "]), None, "no number right after the last marker");
        assert_eq!(after(&["missing"]), None);
    }
}
