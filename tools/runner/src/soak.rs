//! The soak test's pure parts (its QEMU driver is `src/soak_main.rs`): the seeded mix of
//! console traffic, the bookkeeping of every machine-mode request until its final record, and
//! readers for the `mem` record and the `/stats` report the end checks rest on.

use std::collections::BTreeMap;

use kernel::rand::SplitMix64;

/// Most generation requests the driver keeps in flight before it waits for one to end.
pub const MAX_IN_FLIGHT: usize = 8;

/// One step of the mix.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Machine-mode generations sent back to back, faster than they are answered:
    /// (prompt, max_tokens) each.
    Burst(Vec<(String, u32)>),
    /// Machine-mode `cancel` of one of the requests in flight (the n-th, modulo their count).
    Cancel(usize),
    /// A line of human chat.
    Chat(String),
    /// `/load` of the other model.
    Swap,
    /// A control or report: `/stats`, `/mem`, `/trace`, or their machine-mode forms.
    Report(Report),
    /// `/reset`: the human conversation starts again.
    Reset,
    /// Seeded binary noise of this many bytes, then a line end.
    Noise(usize),
    /// A line longer than the console takes, of this many bytes.
    Overlong(usize),
    /// A line that is not UTF-8.
    InvalidUtf8,
}

/// The reports the mix asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// `/stats`.
    Stats,
    /// `/mem`.
    Mem,
    /// `/trace`.
    Trace,
    /// `{"op":"stats"}`.
    MachineStats,
    /// `{"op":"mem"}`.
    MachineMem,
    /// `{"op":"trace"}`.
    MachineTrace,
}

const PROMPTS: [&str; 8] = [
    "hello",
    "What is the capital of France?",
    "Tell me a story about a robot.",
    "caf\u{e9} \u{1F642} na\u{ef}ve",
    "Count to ten.",
    "Why is the sky blue?",
    "x",
    "Translate 'good morning' into French, please, and explain each word.",
];

/// The seeded mix: the same seed gives the same actions.
pub struct Mix {
    random: SplitMix64,
}

impl Mix {
    /// A mix drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { random: SplitMix64::new(seed) }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.random.below(items.len() as u64) as usize]
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.random.below(high - low + 1)
    }

    /// The next action. Weights per 100: bursts 30, cancels 8, chat 12, swaps 5, reports 15,
    /// reset 3, noise 10, overlong lines 8, invalid UTF-8 9.
    pub fn next_action(&mut self) -> Action {
        let roll = self.random.below(100);
        match roll {
            0..30 => {
                let count = self.between(1, 4) as usize;
                Action::Burst(
                    (0..count)
                        .map(|_| (self.pick(&PROMPTS).to_string(), self.between(1, 24) as u32))
                        .collect(),
                )
            }
            30..38 => Action::Cancel(self.random.below(MAX_IN_FLIGHT as u64) as usize),
            38..50 => Action::Chat(self.pick(&PROMPTS).to_string()),
            50..55 => Action::Swap,
            55..70 => Action::Report(
                [
                    Report::Stats,
                    Report::Mem,
                    Report::Trace,
                    Report::MachineStats,
                    Report::MachineMem,
                    Report::MachineTrace,
                ][self.random.below(6) as usize],
            ),
            70..73 => Action::Reset,
            73..83 => Action::Noise(self.between(64, 4096) as usize),
            83..91 => Action::Overlong(self.between(kernel::serve::MAX_LINE as u64 + 1, 6000) as usize),
            _ => Action::InvalidUtf8,
        }
    }

    /// A line that is not valid UTF-8 (a lone continuation byte, a cut sequence, or an
    /// over-long encoding), with its line end.
    pub fn invalid_utf8_line(&mut self) -> Vec<u8> {
        let bad: [&[u8]; 4] = [b"\x80", b"\xE2\x82", b"\xC0\xAF", b"\xFF\xFE"];
        let mut line = b"bad ".to_vec();
        line.extend_from_slice(bad[self.random.below(4) as usize]);
        line.extend_from_slice(b" bytes\r");
        line
    }
}

/// The record that ends a request of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `done` or `error` (generations).
    Done,
    /// `info` or `error` (stats, cancel).
    Info,
    /// `mem` or `error`.
    Mem,
    /// `trace` or `error`.
    Trace,
}

impl Expect {
    fn is_final(self, event: &str) -> bool {
        event == "error"
            || matches!(
                (self, event),
                (Expect::Done, "done")
                    | (Expect::Info, "info")
                    | (Expect::Mem, "mem")
                    | (Expect::Trace, "trace")
            )
    }
}

/// Every machine-mode request sent, until its final record is read.
#[derive(Debug, Default)]
pub struct Tracker {
    open: BTreeMap<u64, Expect>,
    /// Requests sent, by what ends them.
    pub sent: u64,
    /// Generations that ended `done`, with finish "cancelled" among them counted apart.
    pub done: u64,
    /// Of those, the cancelled ones.
    pub cancelled: u64,
    /// Requests that ended with an `error` record.
    pub errors: u64,
    /// Records for an id the driver never sent, or a second final record for one id.
    pub unexpected: Vec<String>,
    next_id: u64,
}

impl Tracker {
    /// A new id for a request ending as `expect` says.
    pub fn open(&mut self, expect: Expect) -> u64 {
        self.next_id += 1;
        self.open.insert(self.next_id, expect);
        self.sent += 1;
        self.next_id
    }

    /// Generations still in flight, oldest first.
    pub fn generations(&self) -> Vec<u64> {
        self.open.iter().filter(|(_, expect)| **expect == Expect::Done).map(|(id, _)| *id).collect()
    }

    /// Whether request `id` still waits for its final record.
    pub fn is_open(&self, id: u64) -> bool {
        self.open.contains_key(&id)
    }

    /// Requests of any kind still waiting for their final record.
    pub fn waiting(&self) -> usize {
        self.open.len()
    }

    /// Reads one record (see [`records`]); returns whether it was the final record of a
    /// tracked request.
    pub fn read_record(&mut self, record: &str) -> bool {
        let Some((id, event)) = record_id_and_event(record) else { return false };
        let Some(id) = id else {
            // A refused line that was not a request (noise starting with `{`) has no id.
            return false;
        };
        match self.open.get(&id).copied() {
            Some(expect) if expect.is_final(event) => {
                self.open.remove(&id);
                match event {
                    "error" => self.errors += 1,
                    "done" => {
                        self.done += 1;
                        self.cancelled += u64::from(record.contains("\"finish\":\"cancelled\""));
                    }
                    _ => {}
                }
                true
            }
            Some(_) => false,
            None if id > self.next_id || event != "token" => {
                self.unexpected.push(record.chars().take(200).collect());
                false
            }
            None => false,
        }
    }
}

/// The machine-mode records in an output line: each from a `{"id":` that starts a record to
/// the end of the line. A record may follow the echo of typed text on the same line.
pub fn records(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("{\"id\":")
        .map(|(start, _)| &line[start..])
        .filter(|record| record_id_and_event(record).is_some())
}

/// The id (`None` for `null`) and event of a machine-mode record line.
pub fn record_id_and_event(line: &str) -> Option<(Option<u64>, &str)> {
    let rest = line.strip_prefix("{\"id\":")?;
    let (id, rest) = rest.split_once(",\"event\":\"")?;
    let event = rest.split('"').next()?;
    let id = if id == "null" { None } else { Some(id.parse().ok()?) };
    Some((id, event))
}

/// One pool of a `mem` record: kind, live bytes, peak bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUse {
    /// The pool's kind.
    pub kind: String,
    /// Bytes held by live allocations.
    pub live_bytes: u64,
    /// The most held at once.
    pub peak_bytes: u64,
}

/// The heap of a `mem` record: live bytes, and allocations since power-on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapUse {
    /// Bytes held by live allocations.
    pub live_bytes: u64,
    /// Allocations since power-on.
    pub allocations: u64,
}

/// The pools of a `mem` record line, and the heap's use.
pub fn mem_pools(line: &str) -> Option<(Vec<PoolUse>, HeapUse)> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if value.get("event")?.as_str()? != "mem" {
        return None;
    }
    let pools = value
        .get("pools")?
        .as_array()?
        .iter()
        .map(|pool| {
            Some(PoolUse {
                kind: pool.get("kind")?.as_str()?.to_string(),
                live_bytes: pool.get("live_bytes")?.as_u64()?,
                peak_bytes: pool.get("peak_bytes")?.as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let heap = value.get("heap")?;
    let heap = HeapUse {
        live_bytes: heap.get("live_bytes")?.as_u64()?,
        allocations: heap.get("allocations")?.as_u64()?,
    };
    Some((pools, heap))
}

/// What the end checks read from a `/stats` report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsFigures {
    /// Bytes the console received.
    pub received: u64,
    /// Bytes it dropped.
    pub dropped: u64,
    /// Deadline misses of each control command (`/stats`, `/cancel`, `/status`).
    pub misses: Vec<(String, u64)>,
    /// Lines refused (noise, too long, not UTF-8).
    pub rejected: u64,
    /// Lines turned away as busy (the console queue was full).
    pub busy: u64,
    /// The `desk` line: the longest time the kernel went without reading the console while busy.
    pub desk: String,
    /// That time, in ms.
    pub longest_gap_ms: f64,
}

/// Reads the figures of the `/stats` report in `text` (the last one there).
pub fn stats_figures(text: &str) -> Option<StatsFigures> {
    let report = &text[text.rfind("\nmodel  ")?..];
    let mut figures = StatsFigures::default();
    let number = |word: Option<&str>| word.and_then(|word| word.parse::<u64>().ok());
    let mut found_traffic = false;
    for line in report.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["console", "rx", received, "bytes,", dropped, "dropped,", ..] => {
                figures.received = number(Some(received))?;
                figures.dropped = number(Some(dropped))?;
                found_traffic = true;
                break;
            }
            ["rejected", count, "lines"] => figures.rejected = number(Some(count))?,
            ["busy", count, "lines", ..] => figures.busy = number(Some(count))?,
            ["desk", rest @ ..] => {
                figures.desk = rest.join(" ");
                if let ["longest", ms, "ms", ..] = rest {
                    figures.longest_gap_ms = ms.parse().ok()?;
                }
            }
            [command, .., misses] if command.starts_with('/') => {
                figures.misses.push((command.to_string(), number(Some(misses))?));
            }
            _ => {}
        }
    }
    found_traffic.then_some(figures)
}

/// Bytes of the stats snapshot behind the last `/stats` report in `text` (as the driver keeps
/// it: one output line per text line): its lines from `model` up to the console lines, each
/// with its CR LF.
pub fn snapshot_bytes(text: &str) -> u64 {
    let Some(start) = text.rfind("\nmodel  ") else { return 0 };
    text[start + 1..]
        .lines()
        .take_while(|line| !line.starts_with("console rx"))
        .map(|line| line.trim_end_matches('\r').len() as u64 + 2)
        .sum()
}

/// How far the protocol pool's idle live bytes may move between two idle points whose stats
/// snapshots (the `/stats` text the pool keeps ready) are `before` and `after` bytes long: the
/// snapshot's own change, as its string grows by doubling, i.e. up to the larger power of two.
/// Anything beyond is a leak.
pub fn snapshot_allowance(before: u64, after: u64) -> u64 {
    if before == after { 0 } else { before.max(after).next_power_of_two() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_seeded_and_has_every_action() {
        let actions: Vec<Action> = {
            let mut mix = Mix::new(5);
            (0..2000).map(|_| mix.next_action()).collect()
        };
        let again: Vec<Action> = {
            let mut mix = Mix::new(5);
            (0..2000).map(|_| mix.next_action()).collect()
        };
        assert_eq!(actions, again);
        for wanted in [
            |action: &Action| matches!(action, Action::Burst(requests) if requests.len() > 1),
            |action: &Action| matches!(action, Action::Cancel(_)),
            |action: &Action| matches!(action, Action::Chat(_)),
            |action: &Action| matches!(action, Action::Swap),
            |action: &Action| matches!(action, Action::Report(Report::MachineMem)),
            |action: &Action| matches!(action, Action::Reset),
            |action: &Action| matches!(action, Action::Noise(_)),
            |action: &Action| matches!(action, Action::Overlong(length) if *length > kernel::serve::MAX_LINE),
            |action: &Action| matches!(action, Action::InvalidUtf8),
        ] {
            assert!(actions.iter().any(wanted));
        }
        let line = Mix::new(1).invalid_utf8_line();
        assert!(std::str::from_utf8(&line).is_err());
    }

    #[test]
    fn requests_are_tracked_to_their_final_record() {
        let mut tracker = Tracker::default();
        let generation = tracker.open(Expect::Done);
        let mem = tracker.open(Expect::Mem);
        assert!(!tracker.read_record(&format!("{{\"id\":{generation},\"event\":\"token\",\"text\":\"a\"}}")));
        assert!(!tracker.read_record(&format!("{{\"id\":{mem},\"event\":\"info\",\"text\":\"a\"}}")));
        assert!(tracker.read_record(&format!(
            "{{\"id\":{generation},\"event\":\"done\",\"usage\":{{}},\"finish\":\"cancelled\"}}"
        )));
        assert_eq!(tracker.generations(), Vec::<u64>::new());
        assert!(tracker.read_record(&format!("{{\"id\":{mem},\"event\":\"error\",\"message\":\"x\"}}")));
        assert_eq!((tracker.waiting(), tracker.done, tracker.cancelled, tracker.errors), (0, 1, 1, 1));
        assert!(!tracker.read_record("{\"id\":null,\"event\":\"error\",\"message\":\"malformed request\"}"));
        assert!(!tracker.read_record(&format!("{{\"id\":{mem},\"event\":\"mem\"}}")));
        assert_eq!(tracker.unexpected.len(), 1, "a second final record is unexpected");
        let echoed = r#"> {"id":14,"op":"stats"}{"id":14,"event":"info","text":"a"}"#;
        assert_eq!(records(echoed).collect::<Vec<_>>(), [r#"{"id":14,"event":"info","text":"a"}"#]);
    }

    #[test]
    fn mem_records_and_stats_reports_are_read() {
        let line = r#"{"id":4,"event":"mem","ram_bytes":1,"pools":[{"kind":"dma","capacity_bytes":2,"live_bytes":0,"peak_bytes":144,"allocations":1,"failures":0},{"kind":"kv","capacity_bytes":2,"live_bytes":1048576,"peak_bytes":1048576,"allocations":1,"failures":0}],"heap":{"capacity_bytes":16,"live_bytes":6038801,"peak_bytes":6039229,"allocations":140,"pool_metadata_bytes":560},"arena":{}}"#;
        let (pools, heap) = mem_pools(line).unwrap();
        assert_eq!(heap, HeapUse { live_bytes: 6_038_801, allocations: 140 });
        assert_eq!(pools[1], PoolUse { kind: "kv".into(), live_bytes: 1_048_576, peak_bytes: 1_048_576 });
        let report = "> /stats\r\nmodel        tiny-q8.gguf\r\nrejected     7 lines\r\n\
            busy         2 lines turned away (the console queue was full)\r\n\
            desk         longest 7.612 ms between two readings while busy (from a server poll to a pass checkpoint)\r\n\
            latency              count       p50       p99       max over 10.0 ms\r\n\
              request                3   47.1 ms   47.1 ms   47.1 ms            -\r\n\
              /stats                 4   1.0 ms   2.0 ms   2.0 ms            0\r\n\
              /cancel                1   1.0 ms   1.0 ms   11.0 ms            1\r\n\
            console rx   245 bytes, 0 dropped, at most 37 waiting, sender held back 0 times\r\n";
        let figures = stats_figures(report).unwrap();
        assert_eq!((figures.received, figures.dropped, figures.rejected, figures.busy), (245, 0, 7, 2));
        assert_eq!(figures.misses, [("/stats".to_string(), 0), ("/cancel".to_string(), 1)]);
        assert!(figures.desk.starts_with("longest 7.612 ms between"), "{}", figures.desk);
        assert_eq!(figures.longest_gap_ms, 7.612);
        assert_eq!(stats_figures("model  x\r\n"), None);
        let kept = "\n> /stats\nmodel        tiny\nturns        1\nconsole rx   5 bytes, 0 dropped\n";
        assert_eq!(snapshot_bytes(kept), 19 + 16);
        assert_eq!((snapshot_allowance(900, 900), snapshot_allowance(900, 1100)), (0, 2048));
    }
}
