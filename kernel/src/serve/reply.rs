//! Replies: one renderer for both audiences. A person in line mode gets text; a machine-mode
//! request gets JSON records that name it. Either way the reply is rendered into a buffer of
//! the protocol (RT) pool, taken with a deadline, then copied to the console's transmit ring
//! and freed.
//!
//! A reply that cannot get its buffer in time (the pool is full, or its worst case would miss
//! the deadline) is never waited for: it is counted, and its request is owed an error record,
//! sent by [`Replies::settle`] as soon as protocol memory is back. No request id disappears
//! without a `done` or `error` record.

#![forbid(unsafe_code)]

use super::protocol::{self, Event};
use crate::{
    hil::{Clock, Console},
    mm::{MemError, buffer::BackedMemory, tensor::PROTOCOL_DEADLINE_US},
};
use core::fmt::{self, Write};

/// Requests that can be owed an error record at once: every request that can exist at once,
/// in flight (waiting or running) or still a queued line the server has not taken, so none
/// is ever lost for want of room. `lost` counts any past that, which cannot happen while the
/// bounds of admission and of the desk's queue hold.
pub const OWED_LIMIT: usize = super::admission::MAX_IN_FLIGHT + super::desk::MAX_QUEUED_INPUTS;

/// Who asked, and so how a reply is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A person in line mode: text streams as it is.
    Human,
    /// A machine-mode request with this id: JSON records.
    Machine(u64),
}

impl Origin {
    /// The request id the trace ring records (0 for a person).
    pub fn trace_id(self) -> u64 {
        match self {
            Origin::Human => 0,
            Origin::Machine(id) => id,
        }
    }
}

/// Counts of replies that could not be rendered in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyStatistics {
    /// Replies that found no protocol memory in time.
    pub deferred: u64,
    /// Owed errors sent once memory was back.
    pub settled: u64,
    /// Owed errors that did not fit the owed list (their requests got no final record).
    pub lost: u64,
}

/// The renderer and the list of requests owed an error record.
#[derive(Debug)]
pub struct Replies {
    owed: [u64; OWED_LIMIT],
    owed_count: usize,
    owed_human: bool,
    statistics: ReplyStatistics,
}

impl Default for Replies {
    fn default() -> Self {
        Self::new()
    }
}

/// The text of a reply to a person.
fn write_human(out: &mut dyn Write, event: &Event<'_>) -> fmt::Result {
    match event {
        Event::Token { text } | Event::Info { text } => out.write_str(text),
        Event::Error { message } => write!(out, "error: {message}\r\n"),
        Event::Done { usage, timings, finish, model } => write!(
            out,
            "\r\n[{model}: {} prompt ({} cached) + {} generated tokens, {:.2} tokens/s{}]\r\n",
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
            timings.tokens_per_second,
            if *finish == "cancelled" { ", cancelled" } else { "" }
        ),
        Event::Loaded { model } => write!(out, "loaded {model}\r\n"),
        Event::Mem { .. } | Event::Trace { .. } | Event::Models { .. } => {
            out.write_str("(this answer is for machine mode; see /mem, /trace and /models)\r\n")
        }
    }
}

/// Writes the reply to `origin` about `event`.
fn write_reply(out: &mut dyn Write, origin: Origin, event: &Event<'_>) -> fmt::Result {
    match origin {
        Origin::Human => write_human(out, event),
        Origin::Machine(id) => protocol::write_record(out, Some(id), event),
    }
}

/// Counts the bytes written through it.
struct Measure(usize);

impl Write for Measure {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0 += text.len();
        Ok(())
    }
}

/// Writes into a fixed byte buffer; fails when it is full.
struct Fill<'b> {
    bytes: &'b mut [u8],
    length: usize,
}

impl Write for Fill<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end =
            self.length.checked_add(text.len()).filter(|&end| end <= self.bytes.len()).ok_or(fmt::Error)?;
        self.bytes[self.length..end].copy_from_slice(text.as_bytes());
        self.length = end;
        Ok(())
    }
}

/// Why a reply was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// No protocol buffer in time.
    Memory(MemError),
    /// Rendering failed (the text changed size between measuring and writing).
    Render,
}

impl Replies {
    /// No reply owed yet.
    pub const fn new() -> Self {
        Self {
            owed: [0; OWED_LIMIT],
            owed_count: 0,
            owed_human: false,
            statistics: ReplyStatistics { deferred: 0, settled: 0, lost: 0 },
        }
    }

    /// The counts so far.
    pub fn statistics(&self) -> ReplyStatistics {
        self.statistics
    }

    /// Requests owed an error record now.
    pub fn owed(&self) -> usize {
        self.owed_count + usize::from(self.owed_human)
    }

    /// Renders the reply to `origin` about `event` into a protocol buffer and writes it to
    /// `console`. When no buffer comes in time the reply is dropped and `origin` is owed an
    /// error record (see [`Replies::settle`]).
    pub fn send(
        &mut self,
        memory: &BackedMemory,
        console: &dyn Console,
        clock: &dyn Clock,
        origin: Origin,
        event: &Event<'_>,
    ) -> Result<(), ReplyError> {
        let result = render_and_write(memory, console, clock, origin, event);
        if result.is_err() {
            self.statistics.deferred += 1;
            self.owe(origin);
        }
        result
    }

    fn owe(&mut self, origin: Origin) {
        match origin {
            Origin::Human => self.owed_human = true,
            Origin::Machine(id) if self.owed[..self.owed_count].contains(&id) => {}
            Origin::Machine(id) if self.owed_count < OWED_LIMIT => {
                self.owed[self.owed_count] = id;
                self.owed_count += 1;
            }
            Origin::Machine(_) => self.statistics.lost += 1,
        }
    }

    /// Sends the owed error records while protocol memory lets it; returns how many went out.
    pub fn settle(&mut self, memory: &BackedMemory, console: &dyn Console, clock: &dyn Clock) -> usize {
        const MESSAGE: &str = "a reply to this request was dropped: no protocol memory within its deadline";
        let mut sent = 0;
        if self.owed_human {
            let event = Event::Error { message: MESSAGE };
            if render_and_write(memory, console, clock, Origin::Human, &event).is_err() {
                return sent;
            }
            self.owed_human = false;
            sent += 1;
        }
        while self.owed_count > 0 {
            let id = self.owed[0];
            let event = Event::Error { message: MESSAGE };
            if render_and_write(memory, console, clock, Origin::Machine(id), &event).is_err() {
                break;
            }
            self.owed.copy_within(1..self.owed_count, 0);
            self.owed_count -= 1;
            sent += 1;
        }
        self.statistics.settled += sent as u64;
        sent
    }
}

/// Measures the reply, takes a protocol buffer of that size within [`PROTOCOL_DEADLINE_US`],
/// renders into it and writes it out.
fn render_and_write(
    memory: &BackedMemory,
    console: &dyn Console,
    clock: &dyn Clock,
    origin: Origin,
    event: &Event<'_>,
) -> Result<(), ReplyError> {
    let mut measure = Measure(0);
    write_reply(&mut measure, origin, event).map_err(|_| ReplyError::Render)?;
    if measure.0 == 0 {
        return Ok(());
    }
    let deadline = clock.deadline_after_us(PROTOCOL_DEADLINE_US);
    let mut buffer = memory.protocol_within(measure.0 as u64, deadline, clock).map_err(ReplyError::Memory)?;
    let mut fill = Fill { bytes: &mut buffer, length: 0 };
    write_reply(&mut fill, origin, event).map_err(|_| ReplyError::Render)?;
    let length = fill.length;
    console.write_bytes(&buffer[..length]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mm::{buffer::tests::host_backed_memory, layout::MIB, tensor::Pool},
        serve::protocol::{Timings, Usage},
    };
    use alloc::{string::String, vec::Vec};
    use core::sync::atomic::{AtomicU64, Ordering};

    struct Recorder(std::sync::Mutex<String>);

    impl Console for Recorder {
        fn write_bytes(&self, bytes: &[u8]) {
            self.0.lock().unwrap().push_str(core::str::from_utf8(bytes).unwrap());
        }
        fn read_byte(&self) -> Option<u8> {
            None
        }
        fn flush(&self) {}
    }

    struct Ticks(AtomicU64);

    impl Clock for Ticks {
        fn ticks(&self) -> u64 {
            self.0.fetch_add(1, Ordering::Relaxed)
        }
        fn frequency_hz(&self) -> u64 {
            1_000_000_000
        }
    }

    fn done<'a>() -> Event<'a> {
        Event::Done {
            usage: Usage { prompt_tokens: 3, cached_tokens: 1, completion_tokens: 2 },
            timings: Timings { first_token_ms: 1.0, total_ms: 2.0, tokens_per_second: 1000.0 },
            finish: "cancelled",
            model: "m.gguf",
        }
    }

    #[test]
    fn one_renderer_for_people_and_programs() {
        let memory = host_backed_memory(32 * MIB);
        let console = Recorder(std::sync::Mutex::new(String::new()));
        let clock = Ticks(AtomicU64::new(0));
        let mut replies = Replies::new();
        let before = memory.memory().statistics(Pool::Protocol).counters;
        for origin in [Origin::Human, Origin::Machine(7)] {
            replies.send(memory, &console, &clock, origin, &Event::Token { text: "Paris" }).unwrap();
            replies.send(memory, &console, &clock, origin, &done()).unwrap();
            replies.send(memory, &console, &clock, origin, &Event::Error { message: "no" }).unwrap();
        }
        let text = console.0.lock().unwrap().clone();
        assert!(
            text.starts_with(
                "Paris\r\n[m.gguf: 3 prompt (1 cached) + 2 generated tokens, 1000.00 tokens/s, cancelled]\r\nerror: no\r\n"
            ),
            "{text}"
        );
        let records: Vec<serde_json::Value> = text
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1]["usage"]["cached_tokens"], 1);
        assert_eq!(records[2]["message"], "no");
        let after = memory.memory().statistics(Pool::Protocol).counters;
        assert_eq!(after.allocations - before.allocations, 6, "every reply took a protocol buffer");
        assert_eq!(after.live_bytes, before.live_bytes, "and gave it back");
    }

    #[test]
    fn a_reply_without_memory_is_owed_an_error_until_memory_returns() {
        let memory = host_backed_memory(32 * MIB);
        let console = Recorder(std::sync::Mutex::new(String::new()));
        let clock = Ticks(AtomicU64::new(0));
        let mut replies = Replies::new();
        // Fill the protocol pool.
        let mut hoard = Vec::new();
        while let Ok(buffer) = memory.alloc(64 * 1024, crate::mm::tensor::TensorKind::Protocol) {
            hoard.push(buffer);
        }
        while let Ok(buffer) = memory.alloc(64, crate::mm::tensor::TensorKind::Protocol) {
            hoard.push(buffer);
        }
        for id in [4, 5, 4] {
            let refused = replies.send(memory, &console, &clock, Origin::Machine(id), &done());
            assert!(matches!(refused, Err(ReplyError::Memory(_))), "{refused:?}");
        }
        assert_eq!(replies.owed(), 2, "each request is owed one error");
        assert_eq!(replies.settle(memory, &console, &clock), 0, "still no memory");
        assert!(console.0.lock().unwrap().is_empty());
        drop(hoard);
        assert_eq!(replies.settle(memory, &console, &clock), 2);
        let text = console.0.lock().unwrap().clone();
        assert!(
            text.starts_with(
                "{\"id\":4,\"event\":\"error\",\"message\":\"a reply to this request was dropped"
            )
        );
        assert!(text.contains("{\"id\":5,\"event\":\"error\""));
        assert_eq!(replies.owed(), 0);
        assert_eq!(replies.statistics(), ReplyStatistics { deferred: 3, settled: 2, lost: 0 });

        // As many requests as can exist at once (every one in flight and every queued line)
        // all find room to be owed their error.
        let mut hoard = Vec::new();
        while let Ok(buffer) = memory.alloc(64, crate::mm::tensor::TensorKind::Protocol) {
            hoard.push(buffer);
        }
        let requests = crate::serve::admission::MAX_IN_FLIGHT + crate::serve::desk::MAX_QUEUED_INPUTS;
        for id in 0..requests as u64 {
            let refused = replies.send(memory, &console, &clock, Origin::Machine(id), &done());
            assert!(refused.is_err());
        }
        assert_eq!(replies.owed(), requests);
        assert_eq!(replies.statistics().lost, 0, "no request is lost");
    }
}
