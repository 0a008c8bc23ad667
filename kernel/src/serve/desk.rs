//! The control desk: where console input is read, on core 0 (its locks are never contended),
//! both between rounds of tokens and in the middle of a forward pass (at the matmul
//! checkpoints). Control commands (`/stats`, `/cancel`, machine-mode `stats` and `cancel`) are
//! answered on the spot, from a snapshot of the server's state or by noting the cancel for the
//! server to apply at the next token boundary; every other line is queued for the server, in
//! order. A line the reader refuses (noise: control characters; invalid UTF-8; too long) is
//! queued as refused, for a short error, and is never taken for a prompt or a command. Each
//! answer's wait, from the end of its line, goes into the serving counters.
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
    sync::atomic::{AtomicBool, Ordering},
};
use spin::Mutex;

/// How long a control command may wait for its answer.
pub const CONTROL_BOUND_NS: u64 = 10_000_000;

/// Most lines (or refusals) queued for the server. While this many wait, the desk reads no
/// further: the input stays in the receive ring and, once that is full, in the UART, whose
/// sender is held back (receive flow control), instead of piling up in memory. Control
/// commands behind them wait for the server to take the queue (at the next token boundary).
pub const MAX_QUEUED_INPUTS: usize = 64;

/// Most bytes of lines queued for the server: once this many wait, the desk reads no further
/// either (so the protocol pool holds at most this much of queued lines, plus the one line
/// that passed the bound).
pub const MAX_QUEUED_LINE_BYTES: usize = 4 * MAX_MACHINE_LINE;

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
    queued: Mutex<VecDeque<Input>>,
    stats_snapshot: Mutex<String>,
    counters: Counters,
    generating: AtomicBool,
    cancels: Mutex<Vec<CancelRequest>>,
    misses: Mutex<Vec<(ShortName, u64)>>,
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
            queued: Mutex::new(VecDeque::new()),
            stats_snapshot: Mutex::new(String::new()),
            counters: Counters::new(&TIMED_COMMANDS, CONTROL_BOUND_NS),
            generating: AtomicBool::new(false),
            cancels: Mutex::new(Vec::new()),
            misses: Mutex::new(Vec::new()),
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

    /// The next queued input, oldest first.
    pub fn next_input(&self) -> Option<Input> {
        self.queued.lock().pop_front()
    }

    /// Reads waiting input until none is left or the queue for the server is full
    /// ([`MAX_QUEUED_INPUTS`] inputs or [`MAX_QUEUED_LINE_BYTES`] bytes): echoes typing,
    /// answers `/stats` and machine-mode `stats` at once, and queues everything else. Returns
    /// whether any line was completed.
    pub fn service(&self, console: &dyn Console, clock: &dyn Clock) -> bool {
        let mut completed = false;
        while self.queue_has_room()
            && let Some(byte) = console.read_byte()
        {
            match self.read(byte, console, clock) {
                Read::Nothing => {}
                Read::Line(line) => {
                    completed = true;
                    if !self.answer_control(&line, console, clock) {
                        self.queued.lock().push_back(Input::Line(line));
                    }
                }
                Read::Refused(error) => {
                    completed = true;
                    self.queued.lock().push_back(Input::Refused(error));
                }
            }
        }
        completed
    }

    fn queue_has_room(&self) -> bool {
        let queued = self.queued.lock();
        queued.len() < MAX_QUEUED_INPUTS
            && queued.iter().map(Input::bytes).sum::<usize>() < MAX_QUEUED_LINE_BYTES
    }

    /// Feeds one byte to the line editor (echoing what it echoes), moving a machine-mode
    /// line that outgrows the short buffer into a long one first; a finished line releases the
    /// long buffer.
    fn read(&self, byte: u8, console: &dyn Console, clock: &dyn Clock) -> Read {
        let mut guard = self.reader.lock();
        let state = &mut *guard;
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
                console.write_bytes(bytes);
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
        } else if trimmed.starts_with('{') {
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
        scope::with(TensorKind::Protocol, || self.desk.service(self.console, self.clock));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

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
        assert!(desk.service(&console, &clock));
        let output = console.output.lock().unwrap().clone();
        // The byte counts are read when the answer is written: they include the asking line.
        assert!(output.contains("\r\nturns 3\r\nconsole rx   13 bytes, 0 dropped"), "{output:?}");
        assert!(
            output.contains("{\"id\":4,\"event\":\"info\",\"text\":\"turns 3\\nconsole rx   35 bytes"),
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
        assert!(desk.service(&console, &clock));
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
    fn a_full_queue_leaves_the_input_unread_until_the_server_takes_it() {
        let lines = MAX_QUEUED_INPUTS + 10;
        let input: Vec<u8> = (0..lines).flat_map(|index| format!("line {index}\r").into_bytes()).collect();
        let console = ScriptedConsole {
            input: std::sync::Mutex::new(input.iter().copied().collect()),
            output: std::sync::Mutex::new(String::new()),
            read: AtomicU64::new(0),
        };
        let clock = StepClock(AtomicU64::new(0));
        let desk = ControlDesk::new();
        assert!(desk.service(&console, &clock));
        let unread = console.input.lock().unwrap().len();
        assert_eq!(
            unread,
            (MAX_QUEUED_INPUTS..lines).map(|index| format!("line {index}\r").len()).sum::<usize>()
        );
        // Full: a second service reads nothing.
        assert!(!desk.service(&console, &clock));
        assert_eq!(console.input.lock().unwrap().len(), unread);
        let mut taken = Vec::new();
        while let Some(input) = desk.next_input() {
            taken.push(input);
        }
        assert!(desk.service(&console, &clock));
        while let Some(input) = desk.next_input() {
            taken.push(input);
        }
        let expected: Vec<Input> = (0..lines).map(|index| Input::Line(format!("line {index}"))).collect();
        assert_eq!(taken, expected, "every line, in order");
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
        assert!(!desk.service(&console, &StepClock(AtomicU64::new(0))));
        let reading = protocol();
        assert_eq!(reading.allocations, before.allocations + 1);
        assert!(reading.live_bytes >= before.live_bytes + MAX_MACHINE_LINE as u64);
        console.input.lock().unwrap().extend(rest);
        assert!(desk.service(&console, &StepClock(AtomicU64::new(0))));
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
        assert!(desk.service(&console, &StepClock(AtomicU64::new(0))));
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
        let clock = StepClock(AtomicU64::new(0));
        assert!(desk.service(&console, &clock));
        let mut taken = Vec::new();
        while let Some(input) = desk.next_input() {
            taken.push(input);
        }
        let queued: usize = taken.iter().map(Input::bytes).sum();
        assert!(taken.len() < lines.len(), "the desk stopped reading");
        assert!(queued < MAX_QUEUED_LINE_BYTES + MAX_MACHINE_LINE, "{queued} bytes queued");
        while desk.service(&console, &clock) {
            while let Some(input) = desk.next_input() {
                taken.push(input);
            }
        }
        let expected: Vec<Input> = lines.into_iter().map(Input::Line).collect();
        assert_eq!(taken, expected, "every line, in order");
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
        desk.service(&console, &clock);
        desk.set_generating(true);
        console.input.lock().unwrap().extend(b"/cancel\r");
        desk.service(&console, &clock);
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
        desk.service(&console, &clock);
        assert_eq!(desk.counters().report().deadline_misses(), 1);
        let misses = desk.take_deadline_misses();
        assert_eq!(misses.len(), 1);
        assert_eq!(misses[0].0.as_str(), "stats");
        assert!(misses[0].1 > CONTROL_BOUND_NS);
    }
}
