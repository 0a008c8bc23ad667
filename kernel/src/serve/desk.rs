//! The control desk: where console input is read, on core 0 (its locks are never contended), both between rounds of tokens and
//! in the middle of a forward pass (at the matmul checkpoints). Control commands are answered
//! on the spot from a snapshot of the server's state; every other line is queued for the
//! server, in order.

#![forbid(unsafe_code)]

use super::{
    MAX_LINE,
    line::{LineError, LineEvent, LineReader},
    protocol::{self, Event},
};
use crate::hil::{Clock, Console, Cpus};
use alloc::{collections::VecDeque, string::String};
use core::fmt::Write;
use spin::Mutex;

/// How long a control command may wait for its answer.
pub const CONTROL_BOUND_NS: u64 = 10_000_000;

/// A complete input line, or why a line was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A line to handle.
    Line(String),
    /// A refused line.
    Refused(LineError),
}

/// How quickly control commands were answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlLatency {
    /// Control commands answered.
    pub answered: u64,
    /// The longest wait from the end of a line to its answer, in ns.
    pub longest_ns: u64,
    /// Answers later than [`CONTROL_BOUND_NS`].
    pub over_bound: u64,
}

/// Input assembly and on-the-spot control answers. Used from core 0 only.
pub struct ControlDesk {
    reader: Mutex<LineReader<MAX_LINE>>,
    queued: Mutex<VecDeque<Input>>,
    stats_snapshot: Mutex<String>,
    latency: Mutex<ControlLatency>,
}

impl Default for ControlDesk {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlDesk {
    /// A desk with nothing read yet.
    pub fn new() -> Self {
        Self {
            reader: Mutex::new(LineReader::new()),
            queued: Mutex::new(VecDeque::new()),
            stats_snapshot: Mutex::new(String::new()),
            latency: Mutex::new(ControlLatency::default()),
        }
    }

    /// Replaces the text `/stats` answers with (the server refreshes it every round).
    pub fn set_stats_snapshot(&self, text: String) {
        *self.stats_snapshot.lock() = text;
    }

    /// How quickly control commands were answered so far.
    pub fn latency(&self) -> ControlLatency {
        *self.latency.lock()
    }

    /// The next queued input, oldest first.
    pub fn next_input(&self) -> Option<Input> {
        self.queued.lock().pop_front()
    }

    /// Reads all waiting input: echoes typing, answers `/stats` and machine-mode `stats` at
    /// once, and queues everything else. Returns whether any line was completed.
    pub fn service(&self, console: &dyn Console, clock: &dyn Clock) -> bool {
        let mut completed = false;
        while let Some(byte) = console.read_byte() {
            let mut reader = self.reader.lock();
            match reader.push(byte) {
                LineEvent::Pending => {}
                LineEvent::Echo(bytes) => console.write_bytes(bytes),
                LineEvent::Line(text) => {
                    completed = true;
                    let line = String::from(text);
                    drop(reader);
                    if !self.answer_control(&line, console, clock) {
                        self.queued.lock().push_back(Input::Line(line));
                    }
                }
                LineEvent::Error(error) => {
                    completed = true;
                    self.queued.lock().push_back(Input::Refused(error));
                }
            }
        }
        completed
    }

    /// Answers `line` if it is a control command that needs no more than the snapshot.
    fn answer_control(&self, line: &str, console: &dyn Console, clock: &dyn Clock) -> bool {
        let trimmed = line.trim();
        let stats = || with_traffic(self.stats_snapshot.lock().clone(), console);
        let answer = if trimmed == "/stats" {
            alloc::format!("\r\n{}", stats())
        } else if trimmed.starts_with('{') {
            match protocol::parse_request(trimmed) {
                Ok(request) if request.operation == protocol::Operation::Stats => {
                    let text = stats().replace("\r\n", "\n");
                    protocol::record(Some(request.id), &Event::Info { text: &text })
                }
                _ => return false,
            }
        } else {
            return false;
        };
        console.write_bytes(answer.as_bytes());
        if let Some(line_end) = console.line_end_ns() {
            let waited = clock.now_ns().saturating_sub(line_end);
            let mut latency = self.latency.lock();
            latency.answered += 1;
            latency.longest_ns = latency.longest_ns.max(waited);
            latency.over_bound += u64::from(waited > CONTROL_BOUND_NS);
        }
        true
    }
}

/// The `/stats` text `report` followed by the console's byte counts as of now (when it counts
/// them): the counts are read at answer time, so they include the line that asked.
pub fn with_traffic(mut report: String, console: &dyn Console) -> String {
    if let Some(traffic) = console.traffic() {
        let _ = write!(report, "{traffic}");
    }
    report
}

/// The cores, with the console served at every checkpoint of a forward pass.
pub struct ServingCpus<'a> {
    /// The cores doing the work.
    pub inner: &'a dyn Cpus,
    /// The desk to serve.
    pub desk: &'a ControlDesk,
    /// The console.
    pub console: &'a dyn Console,
    /// The clock.
    pub clock: &'a dyn Clock,
}

impl Cpus for ServingCpus<'_> {
    fn count(&self) -> usize {
        self.inner.count()
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        self.inner.run_on_all(job);
    }

    fn barrier(&self) {
        self.inner.barrier();
    }

    fn checkpoint(&self) {
        self.desk.service(self.console, self.clock);
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
        let clock = StepClock(AtomicU64::new(0));
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
        let latency = desk.latency();
        assert_eq!(latency.answered, 2);
        assert!(latency.longest_ns > 0);
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
        assert_eq!(desk.latency().over_bound, 1);
    }
}
