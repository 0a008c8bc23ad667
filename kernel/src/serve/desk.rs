//! The control desk: where console input is read, on core 0 (its locks are never contended),
//! both between rounds of tokens and in the middle of a forward pass (at the matmul
//! checkpoints). Control commands (`/stats`, `/cancel`, machine-mode `stats` and `cancel`) are
//! answered on the spot, from a snapshot of the server's state or by noting the cancel for the
//! server to apply at the next token boundary; every other line is queued for the server, in
//! order. A line the reader refuses (noise: control characters; invalid UTF-8; too long) is
//! queued as refused, for a short error, and is never taken for a prompt or a command. Each
//! answer's wait, from the end of its line, goes into the serving counters.
//!
//! The queue is bounded ([`MAX_QUEUED_INPUTS`], [`MAX_QUEUED_LINE_BYTES`]), and the desk reads
//! on past a full queue, so a control command behind a burst is still answered within
//! [`CONTROL_BOUND_NS`]: it never waits for the server to handle the lines ahead of it. A line
//! that finds the queue full is answered on the spot instead: a refused line with its error,
//! any other line turned away as busy (a machine-mode request with an `error` record under its
//! id, so a client knows to send it again), and counted.
//!
//! Lines are read into a buffer of [`MAX_LINE`] bytes. A machine-mode line (one that starts
//! with `{`) that passes it continues in a buffer of [`MAX_MACHINE_LINE`] bytes taken from the
//! protocol pool within [`CONTROL_BOUND_NS`] and given back when the line ends, so a request
//! may carry a whole conversation; when the pool cannot give it in time, the line is refused
//! as too long, like a person's line past [`MAX_LINE`].

#![forbid(unsafe_code)]

use super::{
    MAX_LINE, MAX_MACHINE_LINE,
    protocol::{self, Event},
};
use crate::{
    console::line::{LineAssembler, LineError, LineEvent},
    hil::{Clock, Console, Cpus},
    mm::{
        buffer::{BackedMemory, TensorBuffer},
        scope,
        tensor::TensorKind,
    },
    telemetry::{Counters, ShortName},
};
use alloc::{collections::VecDeque, string::String, vec::Vec};
use core::{
    fmt::Write,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};
use spin::Mutex;

/// How long a control command may wait for its answer.
pub const CONTROL_BOUND_NS: u64 = 10_000_000;

/// Most lines (or refusals) queued for the server: eight times the requests that may wait for
/// a place in a batch ([`super::admission::MAX_WAITING`]), so a burst the server could still
/// take (a flood of noise lines among it) is not turned away. Lines past it are answered on the
/// spot (see the module documentation).
pub const MAX_QUEUED_INPUTS: usize = 8 * super::admission::MAX_WAITING;

/// Most bytes of lines queued for the server, bounded like their number (so the protocol pool
/// holds at most this much of queued lines, plus the one line that passed the bound).
pub const MAX_QUEUED_LINE_BYTES: usize = 4 * MAX_MACHINE_LINE;

/// How many characters of a line turned away as busy its error quotes.
const QUOTED_CHARS: usize = 40;

/// Bytes the desk takes from the console at a time: a whole receive ring's backlog must be read
/// well within [`CONTROL_BOUND_NS`], so the per-byte work is the line editor's alone.
const READ_CHUNK: usize = 128;

/// What the line editor echoes while a chunk is read, written in one go: before the answer
/// to a line that ends in the chunk, and at the chunk's end.
struct Echo {
    bytes: [u8; 4 * READ_CHUNK],
    length: usize,
}

impl Echo {
    fn new() -> Self {
        Self { bytes: [0; 4 * READ_CHUNK], length: 0 }
    }

    /// Gathers `bytes` (an echo is at most a few bytes per byte read, so a chunk's fit).
    fn gather(&mut self, bytes: &[u8]) {
        let end = (self.length + bytes.len()).min(self.bytes.len());
        self.bytes[self.length..end].copy_from_slice(&bytes[..end - self.length]);
        self.length = end;
    }

    fn flush(&mut self, console: &dyn Console) {
        if self.length > 0 {
            console.write_bytes(&self.bytes[..self.length]);
            self.length = 0;
        }
    }
}

/// A complete input line, or why a line was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A line to handle.
    Line(String),
    /// A refused line.
    Refused(LineError),
}

/// A cancel answered at the desk, for the server to apply at the next token boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelRequest {
    /// `/cancel`: the line-mode answer that is streaming.
    Human,
    /// Machine-mode `cancel`: request `target`.
    Machine {
        /// The request to stop.
        target: u64,
    },
}

/// The commands whose answer time the desk measures, as the counters name them.
const TIMED_COMMANDS: [&str; 3] = ["stats", "cancel", "status"];

impl Input {
    /// Bytes of the line it holds.
    fn bytes(&self) -> usize {
        match self {
            Input::Line(line) => line.len(),
            Input::Refused(_) => 0,
        }
    }
}

/// The inputs waiting for the server, with their line bytes.
struct Queue {
    inputs: VecDeque<Input>,
    bytes: usize,
}

impl Queue {
    fn has_room(&self) -> bool {
        self.inputs.len() < MAX_QUEUED_INPUTS && self.bytes < MAX_QUEUED_LINE_BYTES
    }
}

/// The line being read: the editor's state, its buffer, and the protocol-pool buffer a long
/// machine-mode line continues in.
struct LineState<'memory> {
    assembler: LineAssembler,
    short: [u8; MAX_LINE],
    long: Option<TensorBuffer<'memory>>,
}

/// What one byte came to, owned (the line's buffer is released before it is handled).
enum Read {
    Nothing,
    Line(String),
    Refused(LineError),
}

/// Input assembly and on-the-spot control answers. Used from core 0 only.
pub struct ControlDesk<'memory> {
    reader: Mutex<LineState<'memory>>,
    /// Where long machine-mode lines are read; without it every line stops at [`MAX_LINE`].
    memory: Option<&'memory BackedMemory>,
    queued: Mutex<Queue>,
    /// Refused lines answered on the spot (with the queue full).
    refused_here: AtomicU64,
    /// Lines turned away as busy (with the queue full).
    turned_away: AtomicU64,
    stats_snapshot: Mutex<String>,
    counters: Counters,
    generating: AtomicBool,
    cancels: Mutex<Vec<CancelRequest>>,
    misses: Mutex<Vec<(ShortName, u64)>>,
    gaps: Mutex<Gaps>,
}

/// Where core 0 served the desk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The server's poll: between rounds of tokens, between loading steps, while idle.
    Poll,
    /// A checkpoint inside a forward pass.
    Checkpoint,
}

impl Site {
    fn name(self) -> &'static str {
        match self {
            Site::Poll => "a server poll",
            Site::Checkpoint => "a pass checkpoint",
        }
    }
}

/// The longest time core 0 went between two services of the desk while it had work: a
/// control command's wait is at most that plus the reading of what arrived meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LongestGap {
    /// The gap, in ns.
    pub ns: u64,
    /// The service that opened it.
    pub from: Option<Site>,
    /// The service that closed it.
    pub to: Option<Site>,
}

impl core::fmt::Display for LongestGap {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.from, self.to) {
            (Some(from), Some(to)) => write!(
                formatter,
                "longest {:.3} ms between two readings while busy (from {} to {})",
                self.ns as f64 / 1e6,
                from.name(),
                to.name()
            ),
            _ => formatter.write_str("no gap measured yet"),
        }
    }
}

/// The end of the last service (none after an idle wait) and the longest gap so far.
#[derive(Default)]
struct Gaps {
    last: Option<(u64, Site)>,
    longest: LongestGap,
}

impl Default for ControlDesk<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'memory> ControlDesk<'memory> {
    /// A desk with nothing read yet, whose lines are at most [`MAX_LINE`] bytes.
    pub fn new() -> Self {
        Self::reading_into(None)
    }

    /// A desk with nothing read yet whose machine-mode lines may be up to
    /// [`MAX_MACHINE_LINE`] bytes, read into `memory`'s protocol pool.
    pub fn with_protocol_memory(memory: &'memory BackedMemory) -> Self {
        Self::reading_into(Some(memory))
    }

    fn reading_into(memory: Option<&'memory BackedMemory>) -> Self {
        Self {
            reader: Mutex::new(LineState {
                assembler: LineAssembler::new(),
                short: [0; MAX_LINE],
                long: None,
            }),
            memory,
            // Room for the whole bound now (at boot), so queueing a line never allocates.
            queued: Mutex::new(Queue { inputs: VecDeque::with_capacity(MAX_QUEUED_INPUTS), bytes: 0 }),
            refused_here: AtomicU64::new(0),
            turned_away: AtomicU64::new(0),
            stats_snapshot: Mutex::new(String::new()),
            counters: Counters::new(&TIMED_COMMANDS, CONTROL_BOUND_NS),
            generating: AtomicBool::new(false),
            cancels: Mutex::new(Vec::new()),
            misses: Mutex::new(Vec::new()),
            gaps: Mutex::new(Gaps::default()),
        }
    }

    /// Replaces the text `/stats` answers with (the server refreshes it every round).
    pub fn set_stats_snapshot(&self, text: String) {
        *self.stats_snapshot.lock() = text;
    }

    /// The serving counters: tokens, request latency, control-command latency, pressure.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Tells the desk whether answers are being generated (what `/cancel` would stop).
    pub fn set_generating(&self, generating: bool) {
        self.generating.store(generating, Ordering::Relaxed);
    }

    /// The cancels answered since the last call, oldest first.
    pub fn take_cancels(&self) -> Vec<CancelRequest> {
        core::mem::take(&mut *self.cancels.lock())
    }

    /// Control commands answered later than [`CONTROL_BOUND_NS`] since the last call: the
    /// command and its wait in ns (the server records them in the trace ring).
    pub fn take_deadline_misses(&self) -> Vec<(ShortName, u64)> {
        core::mem::take(&mut *self.misses.lock())
    }

    /// Tells the desk that core 0 is about to wait for input: the time until the next service
    /// is not a gap in its serving (an interrupt ends the wait).
    pub fn note_idle(&self) {
        self.gaps.lock().last = None;
    }

    /// The longest gap between two services while core 0 had work, since boot.
    pub fn longest_gap(&self) -> LongestGap {
        self.gaps.lock().longest
    }

    /// Refused lines the desk answered itself (with the queue full) since boot.
    pub fn refused_here(&self) -> u64 {
        self.refused_here.load(Ordering::Relaxed)
    }

    /// Lines turned away as busy (with the queue full) since boot.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Relaxed)
    }

    /// The next queued input, oldest first.
    pub fn next_input(&self) -> Option<Input> {
        let mut queued = self.queued.lock();
        let input = queued.inputs.pop_front()?;
        queued.bytes -= input.bytes();
        Some(input)
    }

    /// Reads all waiting input: echoes typing, answers the control commands at once, queues
    /// everything else for the server, and answers on the spot a line that finds the queue full
    /// ([`MAX_QUEUED_INPUTS`] inputs or [`MAX_QUEUED_LINE_BYTES`] bytes). Returns whether any
    /// line was completed. `site` says where core 0 serves it, for the gap statistics.
    pub fn service(&self, site: Site, console: &dyn Console, clock: &dyn Clock) -> bool {
        self.note_gap(site, clock.now_ns());
        let completed = self.read_all(console, clock);
        self.gaps.lock().last = Some((clock.now_ns(), site));
        completed
    }

    /// Counts the time since the last service's end as a gap closed at `site`.
    fn note_gap(&self, site: Site, now_ns: u64) {
        let mut gaps = self.gaps.lock();
        if let Some((then, from)) = gaps.last {
            let ns = now_ns.saturating_sub(then);
            if ns > gaps.longest.ns {
                gaps.longest = LongestGap { ns, from: Some(from), to: Some(site) };
            }
        }
    }

    /// The reading part of [`ControlDesk::service`].
    fn read_all(&self, console: &dyn Console, clock: &dyn Clock) -> bool {
        let mut completed = false;
        let mut chunk = [0u8; READ_CHUNK];
        let mut echo = Echo::new();
        let mut reader = self.reader.lock();
        loop {
            let count = console.read_bytes(&mut chunk);
            if count == 0 {
                break;
            }
            for &byte in &chunk[..count] {
                let input = match self.read(&mut reader, byte, &mut echo, clock) {
                    Read::Nothing => continue,
                    Read::Line(line) => {
                        echo.flush(console);
                        if self.answer_control(&line, console, clock) {
                            completed = true;
                            continue;
                        }
                        Input::Line(line)
                    }
                    Read::Refused(error) => {
                        echo.flush(console);
                        Input::Refused(error)
                    }
                };
                completed = true;
                let mut queued = self.queued.lock();
                if queued.has_room() {
                    queued.bytes += input.bytes();
                    queued.inputs.push_back(input);
                } else {
                    drop(queued);
                    self.answer_full(input, console);
                }
            }
            echo.flush(console);
        }
        completed
    }

    /// Answers a line that found the queue full: a refused line with its error, any other line
    /// as busy.
    fn answer_full(&self, input: Input, console: &dyn Console) {
        let answer = match input {
            Input::Refused(error) => {
                self.refused_here.fetch_add(1, Ordering::Relaxed);
                alloc::format!("\r\nerror: {error}\r\n")
            }
            Input::Line(line) => {
                self.turned_away.fetch_add(1, Ordering::Relaxed);
                let waiting = self.queued.lock().inputs.len();
                let line = line.trim();
                if line.starts_with('{') {
                    let id = protocol::request_id(line);
                    let message =
                        alloc::format!("busy: {waiting} lines wait for the server; send the request again");
                    protocol::record(id, &Event::Error { message: &message })
                } else {
                    let quoted: String = line.chars().take(QUOTED_CHARS).collect();
                    alloc::format!(
                        "\r\nerror: busy: {waiting} lines wait for the server; not taken: \"{quoted}\"\r\n"
                    )
                }
            }
        };
        console.write_bytes(answer.as_bytes());
    }

    /// Feeds one byte to the line editor (gathering what it echoes in `echo`), moving a
    /// machine-mode line that outgrows the short buffer into a long one first; a finished line
    /// releases the long buffer.
    fn read(&self, state: &mut LineState<'memory>, byte: u8, echo: &mut Echo, clock: &dyn Clock) -> Read {
        if state.long.is_none() && state.short[0] == b'{' && state.assembler.would_overflow(MAX_LINE, byte) {
            state.long = self.long_line_buffer(&state.short, clock);
        }
        let buffer: &mut [u8] = match &mut state.long {
            Some(long) => &mut long[..MAX_MACHINE_LINE],
            None => &mut state.short,
        };
        let read = match state.assembler.push(buffer, byte) {
            LineEvent::Pending => Read::Nothing,
            LineEvent::Echo(bytes) => {
                echo.gather(bytes);
                Read::Nothing
            }
            LineEvent::Line(text) => Read::Line(String::from(text)),
            LineEvent::Error(error) => Read::Refused(error),
        };
        if !matches!(read, Read::Nothing) {
            state.long = None;
        }
        read
    }

    /// A protocol-pool buffer for a long machine-mode line, holding the line's first
    /// [`MAX_LINE`] bytes (`start`); `None` when there is no pool or it cannot give the
    /// buffer within [`CONTROL_BOUND_NS`].
    fn long_line_buffer(&self, start: &[u8; MAX_LINE], clock: &dyn Clock) -> Option<TensorBuffer<'memory>> {
        let memory = self.memory?;
        let deadline = clock.deadline_after_us(CONTROL_BOUND_NS / 1000);
        let mut buffer = memory.protocol_within(MAX_MACHINE_LINE as u64, deadline, clock).ok()?;
        buffer[..MAX_LINE].copy_from_slice(start);
        Some(buffer)
    }

    /// Answers `line` if it is a control command.
    fn answer_control(&self, line: &str, console: &dyn Console, clock: &dyn Clock) -> bool {
        let trimmed = line.trim();
        let stats = || with_traffic(self.stats_snapshot.lock().clone(), console);
        let (command, answer) = if trimmed == "/stats" {
            ("stats", alloc::format!("\r\n{}", stats()))
        } else if trimmed == "/cancel" {
            let answer = if self.generating.load(Ordering::Relaxed) {
                self.cancels.lock().push(CancelRequest::Human);
                "\r\n(cancel requested)\r\n"
            } else {
                "\r\nnothing to cancel\r\n"
            };
            ("cancel", String::from(answer))
        } else if trimmed.starts_with('{') && may_be_control(trimmed) {
            match protocol::parse_request(trimmed) {
                Ok(request) if request.operation == protocol::Operation::Stats => {
                    let text = stats().replace("\r\n", "\n");
                    ("status", protocol::record(Some(request.id), &Event::Info { text: &text }))
                }
                Ok(protocol::Request { id, operation: protocol::Operation::Cancel { target } }) => {
                    self.cancels.lock().push(CancelRequest::Machine { target });
                    ("cancel", protocol::record(Some(id), &Event::Info { text: "cancel requested" }))
                }
                _ => return false,
            }
        } else {
            return false;
        };
        console.write_bytes(answer.as_bytes());
        if let Some(line_end) = console.line_end_ns() {
            let waited = clock.now_ns().saturating_sub(line_end);
            if self.counters.record_command(command, waited) {
                self.misses.lock().push((ShortName::new(command), waited));
            }
        }
        true
    }
}

/// Whether a machine-mode line may be a `stats` or `cancel` request: it names one, or holds an
/// escape that could spell one. Every other line skips the desk's JSON parse, so a burst of
/// requests costs the desk little more than its bytes (the server parses them in turn).
fn may_be_control(line: &str) -> bool {
    line.contains("stats") || line.contains("cancel") || line.contains('\\')
}

/// The `/stats` text `report` followed by the console's byte counts as of now (when it counts
/// them): the counts are read at answer time, so they include the line that asked.
fn with_traffic(mut report: String, console: &dyn Console) -> String {
    if let Some(traffic) = console.traffic() {
        let _ = write!(report, "{traffic}");
    }
    report
}

/// The cores, with the console served at every checkpoint of a forward pass.
pub struct ServingCpus<'a, 'desk> {
    /// The cores doing the work.
    pub inner: &'a dyn Cpus,
    /// The desk to serve.
    pub desk: &'a ControlDesk<'desk>,
    /// The console.
    pub console: &'a dyn Console,
    /// The clock.
    pub clock: &'a dyn Clock,
}

impl Cpus for ServingCpus<'_, '_> {
    fn count(&self) -> usize {
        self.inner.count()
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        self.inner.run_on_all(job);
    }

    fn try_run_on_all(&self, job: &(dyn Fn(usize) + Sync)) -> Result<(), crate::hil::SharesLost> {
        self.inner.try_run_on_all(job)
    }

    fn barrier(&self) {
        self.inner.barrier();
    }

    fn checkpoint(&self) {
        // Lines read mid-pass are console objects, whatever the pass's own scope.
        scope::with(TensorKind::Protocol, || self.desk.service(Site::Checkpoint, self.console, self.clock));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console fed from a script, recording what is written.
    struct ScriptedConsole {
        input: std::sync::Mutex<VecDeque<u8>>,
        output: std::sync::Mutex<String>,
        read: AtomicU64,
    }

    impl Console for ScriptedConsole {
        fn write_bytes(&self, bytes: &[u8]) {
            self.output.lock().unwrap().push_str(&String::from_utf8_lossy(bytes));
        }
        fn read_byte(&self) -> Option<u8> {
            let byte = self.input.lock().unwrap().pop_front();
            self.read.fetch_add(u64::from(byte.is_some()), Ordering::Relaxed);
            byte
        }
        fn traffic(&self) -> Option<crate::hil::ConsoleTraffic> {
            Some(crate::hil::ConsoleTraffic {
                received: self.read.load(Ordering::Relaxed),
                ..Default::default()
            })
        }
        fn flush(&self) {}
        fn line_end_ns(&self) -> Option<u64> {
            Some(1_000)
        }
    }

    struct StepClock(AtomicU64);
    impl Clock for StepClock {
        fn ticks(&self) -> u64 {
            self.0.fetch_add(1_000_000, Ordering::Relaxed)
        }
        fn frequency_hz(&self) -> u64 {
            1_000_000_000
        }
    }

    #[test]
    fn control_lines_are_answered_and_the_rest_queued_in_order() {
        let console = ScriptedConsole {
            input: std::sync::Mutex::new(
                b"hello\r/stats\r{\"id\":4,\"op\":\"stats\"}\r/models\r\xff\r".iter().copied().collect(),
            ),
            output: std::sync::Mutex::new(String::new()),
            read: AtomicU64::new(0),
        };
        let clock = StepClock(AtomicU64::new(5_000_000));
        let desk = ControlDesk::new();
        desk.set_stats_snapshot("turns 3\r\n".into());
        assert!(desk.service(Site::Poll, &console, &clock));
        let output = console.output.lock().unwrap().clone();
        // The byte counts are read when the answer is written (this console counts the bytes
        // taken, and the desk takes all 45 waiting at once): they include the asking line.
        assert!(output.contains("hello/stats\r\nturns 3\r\nconsole rx   45 bytes, 0 dropped"), "{output:?}");
        assert!(
            output.contains("{\"id\":4,\"event\":\"info\",\"text\":\"turns 3\\nconsole rx   45 bytes"),
            "{output:?}"
        );
        assert_eq!(desk.next_input(), Some(Input::Line("hello".into())));
        assert_eq!(desk.next_input(), Some(Input::Line("/models".into())));
        assert!(matches!(desk.next_input(), Some(Input::Refused(LineError::InvalidUtf8 { .. }))));
        assert_eq!(desk.next_input(), None);
        let report = desk.counters().report();
        let timed: Vec<(String, u64)> =
            report.commands.iter().map(|row| (row.name.as_str().into(), row.latency.count())).collect();
        assert_eq!(timed, [("stats".into(), 1), ("cancel".into(), 0), ("status".into(), 1)]);
        assert!(report.commands[0].latency.max_ns > 0);
        assert!(desk.take_deadline_misses().is_empty());
    }

    #[test]
    fn the_longest_gap_between_services_is_kept_and_idle_waits_are_not_gaps() {
        let console = console_with(b"");
        // Each reading of this clock moves it on by 1 ms.
        let clock = StepClock(AtomicU64::new(0));
        let desk = ControlDesk::new();
        assert_eq!(desk.longest_gap().to_string(), "no gap measured yet");
        desk.service(Site::Poll, &console, &clock); // from 0 ms to 1 ms
        for _ in 0..5 {
            clock.ticks(); // work until 7 ms
        }
        desk.service(Site::Checkpoint, &console, &clock);
        assert_eq!(
            desk.longest_gap(),
            LongestGap { ns: 6_000_000, from: Some(Site::Poll), to: Some(Site::Checkpoint) }
        );
        // A shorter gap leaves it; an idle wait, however long, is not a gap.
        clock.ticks();
        desk.service(Site::Poll, &console, &clock);
        desk.note_idle();
        for _ in 0..50 {
            clock.ticks();
        }
        desk.service(Site::Poll, &console, &clock);
        assert_eq!(
            desk.longest_gap().to_string(),
            "longest 6.000 ms between two readings while busy (from a server poll to a pass checkpoint)"
        );
    }

    #[test]
    fn only_lines_that_may_be_controls_are_parsed_at_the_desk() {
        assert!(may_be_control(r#"{"id":1,"op":"stats"}"#));
        assert!(may_be_control(r#"{"id":1,"op":"cancel","target":2}"#));
        assert!(may_be_control(r#"{"id":1,"op":"st\u0061ts"}"#), "an escape could spell one");
        assert!(!may_be_control(r#"{"id":1,"op":"generate","prompt":"x","max_tokens":4}"#));
        // An escaped control is still answered on the spot.
        let console = console_with(b"{\"id\":3,\"op\":\"st\\u0061ts\"}\r");
        let desk = ControlDesk::new();
        desk.set_stats_snapshot("turns 1\r\n".into());
        assert!(desk.service(Site::Poll, &console, &StepClock(AtomicU64::new(0))));
        assert!(console.output.lock().unwrap().contains(r#"{"id":3,"event":"info","text":"turns 1"#));
        assert_eq!(desk.next_input(), None);
    }

    #[test]
    fn noise_is_refused_never_queued_as_a_line_and_not_echoed() {
        let console = ScriptedConsole {
            input: std::sync::Mutex::new(
                b"hi\x1b[A there\r/sta\x00ts\r{\"id\":1,\"op\":\"stats\"\x07}\rok\r"
                    .iter()
                    .copied()
                    .collect(),
            ),
            output: std::sync::Mutex::new(String::new()),
            read: AtomicU64::new(0),
        };
        let clock = StepClock(AtomicU64::new(0));
        let desk = ControlDesk::new();
        desk.set_stats_snapshot("turns 0\r\n".into());
        assert!(desk.service(Site::Poll, &console, &clock));
        let noise = |control, offset| Some(Input::Refused(LineError::Noise { control, offset }));
        assert_eq!(desk.next_input(), noise('\x1b', 2));
        assert_eq!(desk.next_input(), noise('\0', 4), "a command with a control byte in it is noise");
        assert_eq!(desk.next_input(), noise('\x07', 20), "so is a machine request");
        assert_eq!(desk.next_input(), Some(Input::Line("ok".into())));
        assert_eq!(desk.next_input(), None);
        // Echoed: each line up to its first control byte, and nothing was answered.
        assert_eq!(*console.output.lock().unwrap(), "hi/sta{\"id\":1,\"op\":\"stats\"ok");
        assert_eq!(desk.counters().report().commands[0].latency.count(), 0);
    }

    #[test]
    fn a_full_queue_still_lets_control_commands_through_and_answers_the_rest_on_the_spot() {
        let mut input: Vec<u8> =
            (0..MAX_QUEUED_INPUTS).flat_map(|index| format!("line {index}\r").into_bytes()).collect();
        input.extend_from_slice(b"/stats\r{\"id\":5,\"op\":\"generate\",\"prompt\":\"hi\"}\r");
        input.extend_from_slice(b"/load other.gguf\rno\x01ise\r{\"id\":6,\"op\":\"cancel\",\"target\":5}\r");
        let console = console_with(&input);
        let clock = StepClock(AtomicU64::new(0));
        let desk = ControlDesk::new();
        desk.set_stats_snapshot("turns 3\r\n".into());
        assert!(desk.service(Site::Poll, &console, &clock));
        assert!(console.input.lock().unwrap().is_empty(), "every byte was read");
        let output = console.output.lock().unwrap().clone();
        let busy = format!("busy: {MAX_QUEUED_INPUTS} lines wait for the server");
        assert!(output.contains("\r\nturns 3\r\n"), "{output:?}");
        assert!(
            output.contains(&format!(
                r#"{{"id":5,"event":"error","message":"{busy}; send the request again"}}"#
            )),
            "{output:?}"
        );
        assert!(
            output.contains(&format!("\r\nerror: {busy}; not taken: \"/load other.gguf\"\r\n")),
            "{output:?}"
        );
        assert!(output.contains("\r\nerror: noise (control U+0001 at offset 2), dropped\r\n"), "{output:?}");
        assert!(output.contains(r#"{"id":6,"event":"info","text":"cancel requested"}"#), "{output:?}");
        assert_eq!(desk.take_cancels(), [CancelRequest::Machine { target: 5 }]);
        assert_eq!((desk.turned_away(), desk.refused_here()), (2, 1));
        assert_eq!(desk.counters().report().deadline_misses(), 0);
        // The queue holds the lines that came first, in order, and nothing else.
        let mut taken = Vec::new();
        while let Some(input) = desk.next_input() {
            taken.push(input);
        }
        let expected: Vec<Input> =
            (0..MAX_QUEUED_INPUTS).map(|index| Input::Line(format!("line {index}"))).collect();
        assert_eq!(taken, expected);
    }

    fn console_with(input: &[u8]) -> ScriptedConsole {
        ScriptedConsole {
            input: std::sync::Mutex::new(input.iter().copied().collect()),
            output: std::sync::Mutex::new(String::new()),
            read: AtomicU64::new(0),
        }
    }

    fn machine_line(id: u64, prompt_bytes: usize) -> String {
        format!(r#"{{"id":{id},"op":"generate","prompt":"{}"}}"#, "p".repeat(prompt_bytes))
    }

    #[test]
    fn machine_lines_grow_into_the_protocol_pool_and_give_it_back() {
        use crate::mm::{buffer::tests::host_backed_memory, layout::MIB, tensor::Pool};
        let memory = host_backed_memory(32 * MIB);
        let protocol = || memory.memory().statistics(Pool::Protocol).counters;
        let before = protocol();
        let desk = ControlDesk::with_protocol_memory(memory);
        let long = machine_line(1, 9000);
        let too_long = machine_line(2, MAX_MACHINE_LINE);
        let person = "w".repeat(MAX_LINE + 1);
        let input = format!("{long}\r{too_long}\r{person}\rok\r");
        let console = console_with(input.as_bytes());
        // Half the input: the long line's buffer is taken and held while the line is read.
        let half = input.len() / 4;
        let rest: Vec<u8> = console.input.lock().unwrap().drain(half..).collect();
        assert!(!desk.service(Site::Poll, &console, &StepClock(AtomicU64::new(0))));
        let reading = protocol();
        assert_eq!(reading.allocations, before.allocations + 1);
        assert!(reading.live_bytes >= before.live_bytes + MAX_MACHINE_LINE as u64);
        console.input.lock().unwrap().extend(rest);
        assert!(desk.service(Site::Poll, &console, &StepClock(AtomicU64::new(0))));
        assert_eq!(desk.next_input(), Some(Input::Line(long)), "the whole line, no byte lost");
        let limit = |limit| Some(Input::Refused(LineError::TooLong { limit }));
        assert_eq!(desk.next_input(), limit(MAX_MACHINE_LINE), "past the machine-mode limit");
        assert_eq!(desk.next_input(), limit(MAX_LINE), "a person's line keeps the editor's limit");
        assert_eq!(desk.next_input(), Some(Input::Line("ok".into())));
        assert_eq!(desk.next_input(), None);
        let after = protocol();
        assert_eq!(after.live_bytes, before.live_bytes, "every long buffer went back");
        assert_eq!(after.allocations, before.allocations + 2, "one buffer per long machine-mode line");
    }

    #[test]
    fn without_protocol_memory_a_machine_line_keeps_the_short_limit() {
        let desk = ControlDesk::new();
        let console =
            console_with(format!("{}\r{{\"id\":1,\"op\":\"models\"}}\r", machine_line(1, 2000)).as_bytes());
        assert!(desk.service(Site::Poll, &console, &StepClock(AtomicU64::new(0))));
        assert_eq!(desk.next_input(), Some(Input::Refused(LineError::TooLong { limit: MAX_LINE })));
        assert_eq!(desk.next_input(), Some(Input::Line(r#"{"id":1,"op":"models"}"#.into())));
    }

    #[test]
    fn queued_line_bytes_are_bounded_too() {
        use crate::mm::buffer::tests::host_backed_memory;
        let desk = ControlDesk::with_protocol_memory(host_backed_memory(32 * crate::mm::layout::MIB));
        let lines: Vec<String> = (0..12).map(|id| machine_line(id, 10_000)).collect();
        let input: String = lines.iter().map(|line| format!("{line}\r")).collect();
        let console = console_with(input.as_bytes());
        assert!(desk.service(Site::Poll, &console, &StepClock(AtomicU64::new(0))));
        let mut taken = Vec::new();
        while let Some(input) = desk.next_input() {
            taken.push(input);
        }
        let queued: usize = taken.iter().map(Input::bytes).sum();
        assert!(queued < MAX_QUEUED_LINE_BYTES + MAX_MACHINE_LINE, "{queued} bytes queued");
        let expected: Vec<Input> = lines[..taken.len()].iter().cloned().map(Input::Line).collect();
        assert_eq!(taken, expected, "the first lines, in order");
        // The rest were turned away, each with an error record under its id.
        let output = console.output.lock().unwrap().clone();
        assert_eq!(desk.turned_away() as usize, lines.len() - taken.len());
        assert!(desk.turned_away() > 0);
        for id in taken.len()..lines.len() {
            assert!(
                output.contains(&format!(r#"{{"id":{id},"event":"error","message":"busy: "#)),
                "{output:?}"
            );
        }
    }

    #[test]
    fn cancels_are_answered_at_once_and_handed_to_the_server() {
        let console = ScriptedConsole {
            input: std::sync::Mutex::new(
                b"/cancel\r{\"id\":7,\"op\":\"cancel\",\"target\":3}\r/cancel\r".iter().copied().collect(),
            ),
            output: std::sync::Mutex::new(String::new()),
            read: AtomicU64::new(0),
        };
        let clock = StepClock(AtomicU64::new(0));
        let desk = ControlDesk::new();
        // Idle, `/cancel` has nothing to stop; a machine cancel is still noted (its target may
        // be waiting for a place in the batch).
        desk.service(Site::Poll, &console, &clock);
        desk.set_generating(true);
        console.input.lock().unwrap().extend(b"/cancel\r");
        desk.service(Site::Poll, &console, &clock);
        let output = console.output.lock().unwrap().clone();
        assert!(output.starts_with("/cancel\r\nnothing to cancel\r\n"), "{output:?}");
        assert!(output.contains("{\"id\":7,\"event\":\"info\",\"text\":\"cancel requested\"}"), "{output:?}");
        assert!(output.ends_with("(cancel requested)\r\n"), "{output:?}");
        assert_eq!(desk.take_cancels(), [CancelRequest::Machine { target: 3 }, CancelRequest::Human]);
        assert!(desk.take_cancels().is_empty());
        assert_eq!(desk.next_input(), None, "cancels are not queued as lines");
        assert_eq!(desk.counters().report().commands[1].latency.count(), 4);
    }

    #[test]
    fn slow_answers_count_against_the_bound() {
        let console = ScriptedConsole {
            input: std::sync::Mutex::new(b"/stats\r".iter().copied().collect()),
            output: std::sync::Mutex::new(String::new()),
            read: AtomicU64::new(0),
        };
        // Each clock read advances 1 ms; start it 20 ms after the line end.
        let clock = StepClock(AtomicU64::new(20_000_000));
        let desk = ControlDesk::new();
        desk.service(Site::Poll, &console, &clock);
        assert_eq!(desk.counters().report().deadline_misses(), 1);
        let misses = desk.take_deadline_misses();
        assert_eq!(misses.len(), 1);
        assert_eq!(misses[0].0.as_str(), "stats");
        assert!(misses[0].1 > CONTROL_BOUND_NS);
    }
}
