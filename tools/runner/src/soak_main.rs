//! `tessera-soak`: boots kernel8 in QEMU with two small synthetic models on its card and drives
//! its console for a number of minutes with a seeded mix (machine-mode generations in bursts,
//! several in flight, cancels, human chat, `/load` swaps back and forth, `/stats`, `/mem`,
//! `/trace` and their machine-mode forms, binary noise, overlong lines, invalid UTF-8), then
//! checks that every request ended with `done` or `error`, that every pool's live bytes are back
//! at the idle baseline, that the heap served nothing after it (serving and loading allocate
//! from the pools), that the console dropped no byte, that no control command missed its
//! deadline, that the kernel never went longer than that deadline without reading the console
//! while busy, and that it still answers.
//!
//! Usage: `tessera-soak [--minutes N] [--seed S] [--image build/kernel8.img] [--machine raspi3b]`
//! (`make soak MINUTES=N`). Every wait is for an event on the console; a wait ends in failure
//! only when the guest prints nothing for a whole minute.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use runner::soak::{Action, Expect, HeapUse, MAX_IN_FLIGHT, Mix, PoolUse, Report, StatsFigures, Tracker};
use runner::{Patience, Session};

/// The two models the soak swaps between.
const MODELS: [&str; 2] = ["tiny-q8.gguf", "tiny-q4.gguf"];

/// Actions between two sync points: a one-token generation the driver waits for, so that the
/// traffic, sent faster than answered between two of them, keeps pace with the board.
const ACTIONS_PER_SYNC: u64 = 12;

/// The control commands' deadline, in ms: also the longest the kernel may go without reading
/// the console while busy.
const CONTROL_BOUND_MS: f64 = kernel::serve::desk::CONTROL_BOUND_NS as f64 / 1e6;

/// Longest silence of the guest before a wait fails.
const QUIET: Duration = Duration::from_secs(60);

struct Options {
    minutes: f64,
    seed: u64,
    image: PathBuf,
    machine: String,
}

/// What `tessera-soak --help` prints.
const USAGE: &str = "\
tessera-soak: boots kernel8 in QEMU with two small synthetic models and drives its console
with a seeded mix of traffic, then checks that every request ended, that every pool and the
heap came back to their idle use, that no console byte was dropped and no control deadline
missed, and that the kernel still answers

usage: tessera-soak [--minutes N] [--seed S] [--image KERNEL8.IMG] [--machine MACHINE]

  --minutes N       how long to drive it (default 3; fractions allowed)
  --seed S          the traffic's seed (default 16)
  --image PATH      the kernel image (default build/kernel8.img)
  --machine NAME    the QEMU machine (default raspi3b)
  -h, --help        print this help

`make soak MINUTES=N` builds the image and runs it.
";

/// The options, or `None` when the arguments ask for help.
fn parse_options() -> Result<Option<Options>, String> {
    let mut options = Options {
        minutes: 3.0,
        seed: 16,
        image: PathBuf::from("build/kernel8.img"),
        machine: "raspi3b".into(),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        if argument == "-h" || argument == "--help" {
            return Ok(None);
        }
        let mut value = || arguments.next().ok_or_else(|| format!("{argument} needs a value"));
        match argument.as_str() {
            "--minutes" => {
                options.minutes = value()?.parse().map_err(|error| format!("--minutes: {error}"))?
            }
            "--seed" => options.seed = value()?.parse().map_err(|error| format!("--seed: {error}"))?,
            "--image" => options.image = PathBuf::from(value()?),
            "--machine" => options.machine = value()?,
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(Some(options))
}

/// What the soak did, for its report.
#[derive(Default)]
struct Figures {
    actions: u64,
    chats: u64,
    swaps: u64,
    load_failures: u64,
    loads_turned_away: u64,
    noise_bytes: u64,
    overlong_lines: u64,
    invalid_lines: u64,
    reports: u64,
}

/// The console, read line by line, with the bookkeeping the checks need.
struct Driver {
    session: Session,
    read_to: usize,
    partial: Vec<u8>,
    sent_bytes: u64,
    /// Every byte sent, kept for the log.
    sent: Vec<u8>,
    tracker: Tracker,
    figures: Figures,
    active: String,
    loading: Option<String>,
    /// The last complete line that was a `mem` record.
    last_mem: Option<String>,
    /// The text of the last `/stats` report read so far (from its `model` line on).
    stats_text: String,
    /// The answer to the last `/cancel`: whether there was something to cancel.
    cancel_answer: Option<bool>,
}

impl Driver {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.sent_bytes += bytes.len() as u64;
        self.sent.extend_from_slice(bytes);
        self.session.send(bytes)
    }

    /// Reads every complete line that arrived since the last call.
    fn read_new(&mut self) {
        let fresh = self.session.output_from(self.read_to);
        self.read_to += fresh.len();
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&byte| byte == b'\n') else { return };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            self.read_line(line);
        }
    }

    fn read_line(&mut self, line: &str) {
        let line = line.trim_start_matches("> ");
        for record in runner::soak::records(line) {
            if self.tracker.read_record(record) && record.contains("\"event\":\"mem\"") {
                self.last_mem = Some(record.to_string());
            }
        }
        if let Some(start) = line.find("loaded ")
            && line[start..].contains("; replaces ")
        {
            self.active = line[start + "loaded ".len()..].split(' ').next().unwrap_or_default().to_string();
            self.figures.swaps += 1;
            self.loading = None;
        } else if line.contains("error: cannot load ") {
            self.figures.load_failures += 1;
            self.loading = None;
        } else if line.contains("; not taken: \"/load ") {
            // Turned away as busy (the console queue was full): no load started.
            self.figures.loads_turned_away += 1;
            self.loading = None;
        }
        if line.contains("nothing to cancel") {
            self.cancel_answer = Some(false);
        } else if line.contains("(cancel requested)") {
            self.cancel_answer = Some(true);
        }
        if line.starts_with("model  ") {
            self.stats_text.clear();
        }
        self.stats_text.push('\n');
        self.stats_text.push_str(line);
    }

    /// Reads the console until `done` holds, or fails when the guest stays silent for
    /// [`QUIET`] or exits.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) -> Result<(), String> {
        let mut last_output = Instant::now();
        loop {
            let before = self.read_to;
            self.read_new();
            if done(self) {
                return Ok(());
            }
            if self.read_to != before {
                last_output = Instant::now();
            } else if last_output.elapsed() > QUIET {
                return Err(format!(
                    "waiting for {what}: no output for {} s; {}",
                    QUIET.as_secs(),
                    self.nudge()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// After a stall: whether one more line end makes the kernel answer (input stuck in the
    /// UART or the receive ring) or not (the kernel stopped reading or hung).
    fn nudge(&mut self) -> String {
        let before = self.read_to;
        if self.send(b"\r").is_err() {
            return "QEMU's input is closed".into();
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            self.read_new();
            if self.read_to != before {
                let fresh = self.session.output_from(before);
                return format!(
                    "one more line end was answered with {:?}",
                    String::from_utf8_lossy(&fresh[..fresh.len().min(300)])
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        "one more line end got no answer either".into()
    }

    /// Sends a machine-mode request and returns its id.
    fn request(&mut self, expect: Expect, body: &str) -> Result<u64, String> {
        let id = self.tracker.open(expect);
        self.send(format!("{{\"id\":{id},{body}}}\r").as_bytes())?;
        Ok(id)
    }

    /// Sends a machine-mode request and waits for its final record.
    fn request_and_wait(&mut self, expect: Expect, body: &str) -> Result<u64, String> {
        let id = self.request(expect, body)?;
        self.wait_until(&format!("the final record of request {id}"), |driver| !driver.tracker.is_open(id))?;
        Ok(id)
    }
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("tessera-soak: {error}");
            return ExitCode::FAILURE;
        }
    };
    match soak(&options) {
        Ok(()) => {
            println!("1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("soak FAILED: {error}");
            println!("0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

/// Writes the card (the two models), boots the kernel and waits for its prompt.
fn boot(options: &Options) -> Result<Driver, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let directory = run_directory(options);
    let models: Vec<String> = MODELS.iter().map(|name| name.to_string()).collect();
    let paths = runner::fixtures::write_models(&root, &directory.join("models"), &models)?;
    let card = directory.join("soak-sd.img");
    let plan = sdimage::plan::plan(&sdimage::options::Options {
        output: card.clone(),
        kernel: options.image.clone(),
        config: None,
        models: paths,
        firmware: None,
        files: Vec::new(),
        size: None,
    })
    .map_err(|error| error.to_string())?;
    sdimage::image::write_image(&plan, false).map_err(|error| error.to_string())?;
    let drive = format!("file={},if=sd,format=raw", card.display());
    // Virtual time counts instructions, so the control commands' measured waits do not grow
    // with the host's load (as in the console_control_latency test).
    let arguments = ["-drive".into(), drive, "-icount".into(), "shift=0,sleep=off".into()];
    let session = Session::start(&options.machine, &options.image, &arguments)?;
    let mut driver = Driver {
        session,
        read_to: 0,
        partial: Vec::new(),
        sent_bytes: 0,
        sent: Vec::new(),
        tracker: Tracker::default(),
        figures: Figures::default(),
        active: MODELS[0].to_string(),
        loading: None,
        last_mem: None,
        stats_text: String::new(),
        cancel_answer: None,
    };
    driver.session.wait_for("Type /help", 0, Patience::quiet_for(QUIET))?;
    driver.send(b"/set max_tokens 16\r")?;
    Ok(driver)
}

/// Where a run keeps its card, console log and input: `target/soak/<minutes>m-seed<seed>/`.
fn run_directory(options: &Options) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/soak")
        .join(format!("{}m-seed{}", options.minutes, options.seed))
}

fn soak(options: &Options) -> Result<(), String> {
    let mut driver = boot(options)?;
    let result = drive(&mut driver, options);
    let directory = run_directory(options);
    let sent = std::mem::take(&mut driver.sent);
    let output = driver.session.kill().output;
    let _ = std::fs::write(directory.join("soak.log"), output);
    let _ = std::fs::write(directory.join("sent.bin"), sent);
    println!("console log: {}, what was sent: sent.bin beside it", directory.join("soak.log").display());
    result
}

fn drive(driver: &mut Driver, options: &Options) -> Result<(), String> {
    // Warm up (a chat, a generation, a swap there and back), then take the idle baseline.
    driver.send(b"hello\r")?;
    driver.request_and_wait(Expect::Done, "\"op\":\"generate\",\"prompt\":\"warm up\",\"max_tokens\":4")?;
    let baseline = idle_memory(driver)?;
    println!("baseline (idle, {} just swapped in): {}", driver.active, describe(&baseline.pools));
    let mut mix = Mix::new(options.seed);
    let start = Instant::now();
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    while start.elapsed() < duration {
        let action = mix.next_action();
        perform(driver, &mut mix, action)?;
        driver.figures.actions += 1;
        driver.read_new();
        if driver.tracker.generations().len() >= MAX_IN_FLIGHT {
            driver.wait_until("a generation to end", |driver| {
                driver.tracker.generations().len() < MAX_IN_FLIGHT
            })?;
        }
        if driver.figures.actions.is_multiple_of(ACTIONS_PER_SYNC) {
            driver
                .request_and_wait(Expect::Done, "\"op\":\"generate\",\"prompt\":\"sync\",\"max_tokens\":1")?;
        }
    }
    finish(driver, &baseline)
}

fn perform(driver: &mut Driver, mix: &mut Mix, action: Action) -> Result<(), String> {
    match action {
        Action::Burst(requests) => {
            for (prompt, max_tokens) in requests {
                let prompt = prompt.replace('"', "'");
                driver.request(
                    Expect::Done,
                    &format!("\"op\":\"generate\",\"prompt\":\"{prompt}\",\"max_tokens\":{max_tokens}"),
                )?;
            }
        }
        Action::Cancel(index) => {
            let open = driver.tracker.generations();
            if let Some(target) = open.get(index % open.len().max(1)) {
                driver.request(Expect::Info, &format!("\"op\":\"cancel\",\"target\":{target}"))?;
            }
        }
        Action::Chat(text) => {
            driver.figures.chats += 1;
            driver.send(format!("{text}\r").as_bytes())?;
        }
        Action::Swap => {
            if driver.loading.is_none() {
                let other = other_model(&driver.active);
                driver.loading = Some(other.to_string());
                driver.send(format!("/load {other}\r").as_bytes())?;
            }
        }
        Action::Report(report) => {
            driver.figures.reports += 1;
            match report {
                Report::Stats => driver.send(b"/stats\r")?,
                Report::Mem => driver.send(b"/mem\r")?,
                Report::Trace => driver.send(b"/trace\r")?,
                Report::MachineStats => drop(driver.request(Expect::Info, "\"op\":\"stats\"")?),
                Report::MachineMem => drop(driver.request(Expect::Mem, "\"op\":\"mem\"")?),
                Report::MachineTrace => drop(driver.request(Expect::Trace, "\"op\":\"trace\",\"max\":8")?),
            }
        }
        Action::Reset => driver.send(b"/reset\r/set max_tokens 16\r")?,
        Action::Noise(count) => {
            let mut noise = runner::noise(count, mix.between(0, u64::MAX - 1));
            noise.push(b'\r');
            driver.figures.noise_bytes += noise.len() as u64;
            driver.send(&noise)?;
        }
        Action::Overlong(length) => {
            driver.figures.overlong_lines += 1;
            let mut line = b"overlong ".repeat(length / 9 + 1);
            line.truncate(length);
            line.push(b'\r');
            driver.send(&line)?;
        }
        Action::InvalidUtf8 => {
            driver.figures.invalid_lines += 1;
            let line = mix.invalid_utf8_line();
            driver.send(&line)?;
        }
    }
    Ok(())
}

fn other_model(model: &str) -> &'static str {
    if model == MODELS[0] { MODELS[1] } else { MODELS[0] }
}

/// Brings the kernel to its idle state and reads its memory: no answer generating and every
/// line taken (see [`settle`]), then a swap to the other model and back (which leaves the
/// pools as a fresh swap does), settled again (the swapped-in model's warm-up is over once a
/// generation has run after it), then a `mem` record and a `/stats` report.
fn idle_memory(driver: &mut Driver) -> Result<Idle, String> {
    driver.wait_until("every request's final record", |driver| driver.tracker.waiting() == 0)?;
    driver.wait_until("the pending load", |driver| driver.loading.is_none())?;
    settle(driver)?;
    // The state measured is always "the first model just swapped in, its warm-up and one
    // one-token generation run since".
    let home = MODELS[0];
    let swaps: &[&str] = if driver.active == home { &[MODELS[1], home] } else { &[home] };
    for &model in swaps {
        driver.loading = Some(model.to_string());
        driver.send(format!("/load {model}\r").as_bytes())?;
        driver.wait_until(&format!("the load of {model}"), |driver| driver.loading.is_none())?;
        if driver.active != model {
            return Err(format!("the swap to {model} did not happen"));
        }
    }
    settle(driver)?;
    driver.request_and_wait(Expect::Mem, "\"op\":\"mem\"")?;
    let line = driver.last_mem.clone().ok_or("no mem record was read")?;
    let (pools, heap) =
        runner::soak::mem_pools(&line).ok_or_else(|| format!("unreadable mem record: {line}"))?;
    // The /stats report: its figures, and the size of the snapshot the protocol pool holds for
    // it (the report less its console lines, which are added when it is answered).
    driver.stats_text.clear();
    driver.send(b"/stats\r")?;
    driver.wait_until("the end of the /stats report", |driver| driver.stats_text.contains("console rx "))?;
    let stats = runner::soak::stats_figures(&driver.stats_text).ok_or("unreadable /stats report")?;
    let sent_bytes = driver.sent_bytes;
    Ok(Idle {
        pools,
        heap,
        snapshot_bytes: runner::soak::snapshot_bytes(&driver.stats_text),
        stats,
        sent_bytes,
    })
}

/// Waits until nothing generates and every line is taken: a one-token generation sent last
/// ends, then `/cancel` finds nothing to cancel (else again: a chat line may still wait).
fn settle(driver: &mut Driver) -> Result<(), String> {
    for attempt in 0.. {
        driver.request_and_wait(Expect::Done, "\"op\":\"generate\",\"prompt\":\"idle?\",\"max_tokens\":1")?;
        driver.cancel_answer = None;
        driver.send(b"/cancel\r")?;
        driver.wait_until("the answer to /cancel", |driver| driver.cancel_answer.is_some())?;
        if driver.cancel_answer == Some(false) {
            return Ok(());
        }
        if attempt > 1000 {
            break;
        }
    }
    Err("the kernel never became idle".into())
}

/// The kernel's memory and counters when idle (see [`idle_memory`]).
struct Idle {
    pools: Vec<PoolUse>,
    heap: HeapUse,
    snapshot_bytes: u64,
    stats: StatsFigures,
    /// Bytes sent up to and with the `/stats` line.
    sent_bytes: u64,
}

fn describe(pools: &[PoolUse]) -> String {
    pools.iter().map(|pool| format!("{} {}", pool.kind, pool.live_bytes)).collect::<Vec<_>>().join(", ")
}

/// The end checks (see the module documentation); prints the figures.
fn finish(driver: &mut Driver, baseline: &Idle) -> Result<(), String> {
    // Memory a replaced model's last batch still held goes back after the next batch; an idle
    // point is taken again (a one-token generation, the swaps) up to SETTLE_ATTEMPTS times
    // before a difference counts as a leak.
    let mut idle = idle_memory(driver)?;
    let mut problems = pool_differences(&idle, baseline);
    for attempt in 1..SETTLE_ATTEMPTS {
        if problems.is_empty() {
            break;
        }
        println!("idle point {attempt}: {}; taking another", problems.join("; "));
        idle = idle_memory(driver)?;
        problems = pool_differences(&idle, baseline);
    }
    if !driver.tracker.unexpected.is_empty() {
        problems.push(format!("unexpected records: {:?}", driver.tracker.unexpected));
    }
    check_stats(&idle.stats, idle.sent_bytes, &mut problems);
    if let Some(report) = runner::fault_report(&driver.session.output()) {
        problems.push(format!("kernel8 reported a fault: {report:?}"));
    }
    let from = driver.read_to;
    driver.send(b"are you still there?\r")?;
    driver.session.wait_for("generated tokens", from, Patience::quiet_for(QUIET))?;
    print_figures(driver, &idle, baseline);
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Idle points the end check takes before a pool's difference from the baseline is a leak.
const SETTLE_ATTEMPTS: usize = 3;

/// Each pool whose idle live bytes differ from the baseline's (the protocol pool by more than
/// its stats snapshot explains), and the heap if it served anything since the baseline.
fn pool_differences(idle: &Idle, baseline: &Idle) -> Vec<String> {
    let mut problems = Vec::new();
    if idle.heap != baseline.heap {
        problems.push(format!(
            "the heap holds {} live bytes after {} allocations, {} after {} at the baseline",
            idle.heap.live_bytes, idle.heap.allocations, baseline.heap.live_bytes, baseline.heap.allocations
        ));
    }
    for (now, before) in idle.pools.iter().zip(&baseline.pools) {
        let allowed = if now.kind == "protocol" {
            runner::soak::snapshot_allowance(baseline.snapshot_bytes, idle.snapshot_bytes)
        } else {
            0
        };
        if now.live_bytes.abs_diff(before.live_bytes) > allowed {
            problems.push(format!(
                "pool {} holds {} live bytes, {} at the baseline (allowed difference {allowed})",
                now.kind, now.live_bytes, before.live_bytes
            ));
        }
    }
    problems
}

fn check_stats(stats: &StatsFigures, sent_bytes: u64, problems: &mut Vec<String>) {
    if stats.dropped != 0 || stats.received != sent_bytes {
        problems.push(format!(
            "the console received {} of the {sent_bytes} bytes sent and dropped {}",
            stats.received, stats.dropped
        ));
    }
    // Checked on its own, as a command that happened to arrive in the gap would have missed.
    if stats.longest_gap_ms > CONTROL_BOUND_MS {
        problems.push(format!("the kernel went too long without reading the console: {}", stats.desk));
    }
    for (command, misses) in &stats.misses {
        if *misses != 0 {
            problems.push(format!("{command} missed its deadline {misses} times"));
        }
    }
}

fn print_figures(driver: &Driver, idle: &Idle, baseline: &Idle) {
    let figures = &driver.figures;
    let tracker = &driver.tracker;
    println!(
        "actions {}: machine-mode requests {} ({} generations done, {} of them cancelled; {} errors), human lines {}",
        figures.actions, tracker.sent, tracker.done, tracker.cancelled, tracker.errors, figures.chats
    );
    println!(
        "swaps {} ({} loads failed, {} turned away as busy), reports {}, noise {} bytes, overlong lines {}, invalid UTF-8 lines {}, refused lines {}, lines turned away as busy {}",
        figures.swaps,
        figures.load_failures,
        figures.loads_turned_away,
        figures.reports,
        figures.noise_bytes,
        figures.overlong_lines,
        figures.invalid_lines,
        idle.stats.rejected,
        idle.stats.busy
    );
    println!(
        "console: {} bytes sent, {} received, {} dropped; deadline misses {:?}; desk: {}",
        idle.sent_bytes, idle.stats.received, idle.stats.dropped, idle.stats.misses, idle.stats.desk
    );
    println!("idle pools at the end: {}", describe(&idle.pools));
    println!(
        "peak pool use: {}",
        idle.pools
            .iter()
            .map(|pool| format!("{} {}", pool.kind, pool.peak_bytes))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "stats snapshot {} bytes at the end, {} at the baseline; heap live bytes {} at the end, {} at the baseline; heap allocations {} at the end, {} at the baseline",
        idle.snapshot_bytes,
        baseline.snapshot_bytes,
        idle.heap.live_bytes,
        baseline.heap.live_bytes,
        idle.heap.allocations,
        baseline.heap.allocations
    );
}
