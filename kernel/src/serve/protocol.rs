//! Machine mode: newline-delimited JSON requests with ids, and the JSON records sent back.
//!
//! A request is one line that starts with `{`:
//!
//! ```text
//! {"id":1,"op":"generate","prompt":"What is the capital of France?","max_tokens":32}
//! {"id":2,"op":"stats"}      {"id":3,"op":"cancel","target":1}      {"id":4,"op":"models"}
//! {"id":5,"op":"trace","max":16}     {"id":6,"op":"mem"}
//! ```
//!
//! Answers are records on their own lines, each naming the request:
//! `{"id":1,"event":"token","text":"Paris"}`, then `{"id":1,"event":"done",...}` with usage
//! and timings, or `{"id":N,"event":"error","message":"..."}` for anything refused. A trace
//! request gets one `{"id":5,"event":"trace","recorded":..,"dropped":..,"events":[..]}` record
//! with the trace ring's most recent events, each `{"t_ms":..,"core":..,"kind":..,"detail":..}`.
//! A mem request gets `{"id":6,"event":"mem","ram_bytes":..,"pools":[..],"heap":{..},
//! "arena":{..}}`: each pool's kind, capacity, live and peak bytes, allocations and failures;
//! the global heap's; and the LLM arena's free space, how far the KV cache may grow next to
//! the loaded models, and the largest model it can hold.

#![forbid(unsafe_code)]

use crate::telemetry::TraceEvent;
use alloc::string::String;
use core::fmt::{self, Write};
use serde::Deserialize;

/// Longest prompt accepted in one request, in bytes.
pub const MAX_PROMPT_BYTES: usize = 4096;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Generate an answer to `prompt`.
    Generate {
        /// The message.
        prompt: String,
        /// Most tokens to generate (default: the console setting).
        #[serde(default)]
        max_tokens: Option<usize>,
        /// Sampling temperature (default: the console setting).
        #[serde(default)]
        temperature: Option<f32>,
    },
    /// Stop request `target`.
    Cancel {
        /// The id of the request to stop.
        target: u64,
    },
    /// Server statistics.
    Stats,
    /// The models on the card.
    Models,
    /// The memory pools and the heap.
    Mem,
    /// The most recent events of the trace ring.
    Trace {
        /// Most events to return (default and limit: [`MAX_TRACE_EVENTS`]).
        #[serde(default)]
        max: Option<usize>,
    },
}

/// Most trace events one request returns.
pub const MAX_TRACE_EVENTS: usize = 64;

/// One machine-mode request.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Request {
    /// The caller's id for the request; every record about it carries it.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub operation: Operation,
}

/// Why a request line was refused.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtocolError {
    /// The request's id, when it could be read.
    pub id: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// Parses one request line. Never panics, on any input.
pub fn parse_request(line: &str) -> Result<Request, ProtocolError> {
    let id = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|value| value.get("id")?.as_u64());
    let request: Request = serde_json::from_str(line)
        .map_err(|error| ProtocolError { id, message: alloc::format!("malformed request: {error}") })?;
    if let Operation::Trace { max: Some(max) } = request.operation
        && !(1..=MAX_TRACE_EVENTS).contains(&max)
    {
        return Err(ProtocolError {
            id: Some(request.id),
            message: alloc::format!("max must be 1-{MAX_TRACE_EVENTS}"),
        });
    }
    if let Operation::Generate { prompt, max_tokens, temperature } = &request.operation {
        let problem = if prompt.len() > MAX_PROMPT_BYTES {
            Some(alloc::format!("prompt longer than {MAX_PROMPT_BYTES} bytes"))
        } else if max_tokens.is_some_and(|tokens| tokens == 0 || tokens > 4096) {
            Some("max_tokens must be 1-4096".into())
        } else if temperature.is_some_and(|value| !(0.0..=5.0).contains(&value)) {
            Some("temperature must be 0-5".into())
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(ProtocolError { id: Some(request.id), message });
        }
    }
    Ok(request)
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// Times of a finished request, in milliseconds of the board's clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timings {
    /// From the request's arrival to its first generated token.
    pub first_token_ms: f64,
    /// From arrival to the end.
    pub total_ms: f64,
    /// Generated tokens per second.
    pub tokens_per_second: f64,
}

/// One record sent back.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    /// A piece of generated text.
    Token {
        /// The text (whole UTF-8 characters).
        text: &'a str,
    },
    /// The request finished.
    Done {
        /// Token counts.
        usage: Usage,
        /// Times.
        timings: Timings,
        /// Why it stopped: "stop", "length" or "cancelled".
        finish: &'a str,
        /// The model that answered.
        model: &'a str,
    },
    /// The request was refused or failed.
    Error {
        /// What went wrong.
        message: &'a str,
    },
    /// A free-form answer (stats, models), as text lines.
    Info {
        /// The answer.
        text: &'a str,
    },
    /// The memory pools and the global heap.
    Mem {
        /// Bytes of RAM the board has.
        ram_bytes: u64,
        /// Each pool, by kind.
        pools: &'a [PoolEntry],
        /// The global heap.
        heap: HeapEntry,
        /// The LLM arena the weights, the KV cache and the activations share.
        arena: ArenaEntry,
    },
    /// Recent events of the trace ring, oldest first.
    Trace {
        /// Events recorded since boot.
        recorded: u64,
        /// Events lost (overwritten before anyone read them).
        dropped: u64,
        /// The events.
        events: &'a [TraceEntry],
    },
}

/// One memory pool as the `mem` record reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolEntry {
    /// What the pool holds: "weights", "kv", "activations", "small", "protocol" or "dma".
    pub kind: &'static str,
    /// Bytes the pool manages.
    pub capacity_bytes: u64,
    /// Bytes held by live allocations.
    pub live_bytes: u64,
    /// The most held at once.
    pub peak_bytes: u64,
    /// Allocations served since boot.
    pub allocations: u64,
    /// Allocations refused since boot.
    pub failures: u64,
}

/// The LLM arena as the `mem` record reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaEntry {
    /// Bytes of the arena (less any `arena_limit_mib` sets aside).
    pub capacity_bytes: u64,
    /// Bytes free: neither weights nor lent to the KV cache or the activations.
    pub free_bytes: u64,
    /// The largest free block.
    pub largest_free_bytes: u64,
    /// Bytes the KV cache may grow to now, next to the loaded models.
    pub kv_capacity_bytes: u64,
    /// The largest model the arena can hold alone (with room for one batch's scratch and
    /// KV).
    pub largest_model_bytes: u64,
}

/// The global heap as the `mem` record reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapEntry {
    /// Bytes the heap manages.
    pub capacity_bytes: u64,
    /// Bytes held by live allocations.
    pub live_bytes: u64,
    /// The most held at once.
    pub peak_bytes: u64,
    /// Allocations made since boot.
    pub allocations: u64,
    /// Bytes in use in the pools' metadata pool (their own bookkeeping while serving).
    pub pool_metadata_bytes: u64,
}

/// One trace event as machine mode reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEntry {
    /// When, in milliseconds since boot.
    pub t_ms: f64,
    /// The core that recorded it.
    pub core: u32,
    /// The event's kind (the `/trace` label: "swap", "load", "admit", ...).
    pub kind: &'static str,
    /// What happened, as `/trace` prints it.
    pub detail: String,
}

impl From<&TraceEvent> for TraceEntry {
    fn from(event: &TraceEvent) -> Self {
        Self {
            t_ms: event.timestamp_ns as f64 / 1e6,
            core: event.core,
            kind: event.kind.label(),
            detail: alloc::format!("{}", event.kind),
        }
    }
}

/// The JSON line (with CR LF) for `event` about request `id`.
pub fn record(id: Option<u64>, event: &Event<'_>) -> String {
    let mut line = String::new();
    // Writing into a `String` cannot fail.
    let _ = write_record(&mut line, id, event);
    line
}

/// Writes the JSON line (with CR LF) for `event` about request `id` to `out`; fails only when
/// `out` does (a full fixed-size buffer, say).
pub fn write_record(out: &mut dyn Write, id: Option<u64>, event: &Event<'_>) -> fmt::Result {
    out.write_str("{\"id\":")?;
    match id {
        Some(id) => write!(out, "{id}")?,
        None => out.write_str("null")?,
    }
    let mut object = Object { out, first: false };
    match event {
        Event::Token { text } => {
            object.string("event", "token")?.string("text", text)?;
        }
        Event::Done { usage, timings, finish, model } => {
            object.string("event", "done")?;
            object.key("usage")?;
            Object::open(object.out)?
                .number("prompt_tokens", usage.prompt_tokens)?
                .number("cached_tokens", usage.cached_tokens)?
                .number("completion_tokens", usage.completion_tokens)?
                .close()?;
            object.key("timings")?;
            Object::open(object.out)?
                .float("first_token_ms", timings.first_token_ms)?
                .float("total_ms", timings.total_ms)?
                .float("tokens_per_second", timings.tokens_per_second)?
                .close()?;
            object.string("finish", finish)?.string("model", model)?;
        }
        Event::Error { message } => {
            object.string("event", "error")?.string("message", message)?;
        }
        Event::Info { text } => {
            object.string("event", "info")?.string("text", text)?;
        }
        Event::Mem { ram_bytes, pools, heap, arena } => {
            object.string("event", "mem")?.number("ram_bytes", *ram_bytes)?.key("pools")?;
            object.out.write_char('[')?;
            for (index, pool) in pools.iter().enumerate() {
                if index > 0 {
                    object.out.write_char(',')?;
                }
                Object::open(object.out)?
                    .string("kind", pool.kind)?
                    .number("capacity_bytes", pool.capacity_bytes)?
                    .number("live_bytes", pool.live_bytes)?
                    .number("peak_bytes", pool.peak_bytes)?
                    .number("allocations", pool.allocations)?
                    .number("failures", pool.failures)?
                    .close()?;
            }
            object.out.write_char(']')?;
            object.key("heap")?;
            Object::open(object.out)?
                .number("capacity_bytes", heap.capacity_bytes)?
                .number("live_bytes", heap.live_bytes)?
                .number("peak_bytes", heap.peak_bytes)?
                .number("allocations", heap.allocations)?
                .number("pool_metadata_bytes", heap.pool_metadata_bytes)?
                .close()?;
            object.key("arena")?;
            Object::open(object.out)?
                .number("capacity_bytes", arena.capacity_bytes)?
                .number("free_bytes", arena.free_bytes)?
                .number("largest_free_bytes", arena.largest_free_bytes)?
                .number("kv_capacity_bytes", arena.kv_capacity_bytes)?
                .number("largest_model_bytes", arena.largest_model_bytes)?
                .close()?;
        }
        Event::Trace { recorded, dropped, events } => {
            object.string("event", "trace")?.number("recorded", *recorded)?.number("dropped", *dropped)?;
            object.key("events")?;
            object.out.write_char('[')?;
            for (index, entry) in events.iter().enumerate() {
                if index > 0 {
                    object.out.write_char(',')?;
                }
                Object::open(object.out)?
                    .float("t_ms", entry.t_ms)?
                    .number("core", entry.core)?
                    .string("kind", entry.kind)?
                    .string("detail", &entry.detail)?
                    .close()?;
            }
            object.out.write_char(']')?;
        }
    }
    out.write_str("}\r\n")
}

/// A JSON object being written: its members, comma-separated.
struct Object<'w, 'o> {
    out: &'w mut (dyn Write + 'o),
    first: bool,
}

impl<'w, 'o> Object<'w, 'o> {
    fn open(out: &'w mut (dyn Write + 'o)) -> Result<Self, fmt::Error> {
        out.write_char('{')?;
        Ok(Self { out, first: true })
    }

    fn key(&mut self, key: &str) -> Result<&mut Self, fmt::Error> {
        if !self.first {
            self.out.write_char(',')?;
        }
        self.first = false;
        write!(self.out, "\"{key}\":")?;
        Ok(self)
    }

    fn string(&mut self, key: &str, value: &str) -> Result<&mut Self, fmt::Error> {
        self.key(key)?;
        write_json_string(self.out, value)?;
        Ok(self)
    }

    fn number(&mut self, key: &str, value: impl fmt::Display) -> Result<&mut Self, fmt::Error> {
        self.key(key)?;
        write!(self.out, "{value}")?;
        Ok(self)
    }

    /// A float as JSON has it: the shortest text that reads back the same, `null` when it is
    /// not finite.
    fn float(&mut self, key: &str, value: f64) -> Result<&mut Self, fmt::Error> {
        self.key(key)?;
        let magnitude = value.abs();
        if !value.is_finite() {
            self.out.write_str("null")?;
        } else if magnitude != 0.0 && !(1e-5..1e15).contains(&magnitude) {
            write!(self.out, "{value:e}")?;
        } else if value == libm::trunc(value) {
            write!(self.out, "{value:.1}")?;
        } else {
            write!(self.out, "{value}")?;
        }
        Ok(self)
    }

    fn close(&mut self) -> fmt::Result {
        self.out.write_char('}')
    }
}

/// Writes `text` as a JSON string: quoted, with quotes, backslashes and control characters
/// escaped.
fn write_json_string(out: &mut dyn Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        let escape = match character {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            character if (character as u32) < 0x20 => "",
            _ => continue,
        };
        out.write_str(&text[start..index])?;
        if escape.is_empty() {
            write!(out, "\\u{:04x}", character as u32)?;
        } else {
            out.write_str(escape)?;
        }
        start = index + character.len_utf8();
    }
    out.write_str(&text[start..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_operation() {
        assert_eq!(
            parse_request(r#"{"id":1,"op":"generate","prompt":"hi","max_tokens":5}"#).unwrap(),
            Request {
                id: 1,
                operation: Operation::Generate {
                    prompt: "hi".into(),
                    max_tokens: Some(5),
                    temperature: None
                }
            }
        );
        assert_eq!(parse_request(r#"{"id":2,"op":"stats"}"#).unwrap().operation, Operation::Stats);
        assert_eq!(
            parse_request(r#"{"op":"cancel","target":1,"id":3}"#).unwrap().operation,
            Operation::Cancel { target: 1 }
        );
        assert_eq!(parse_request(r#"{"id":4,"op":"models"}"#).unwrap().operation, Operation::Models);
        assert_eq!(parse_request(r#"{"id":4,"op":"mem"}"#).unwrap().operation, Operation::Mem);
        assert_eq!(
            parse_request(r#"{"id":5,"op":"trace"}"#).unwrap().operation,
            Operation::Trace { max: None }
        );
        assert_eq!(
            parse_request(r#"{"id":6,"op":"trace","max":3}"#).unwrap().operation,
            Operation::Trace { max: Some(3) }
        );
        let error = parse_request(r#"{"id":7,"op":"trace","max":0}"#).unwrap_err();
        assert_eq!((error.id, error.message.as_str()), (Some(7), "max must be 1-64"));
    }

    #[test]
    fn trace_records_carry_the_events() {
        use crate::telemetry::{EventKind, ShortName};
        let events = [
            TraceEntry::from(&TraceEvent::new(
                1_500_000,
                0,
                EventKind::LoadStarted { model: ShortName::new("a.gguf") },
            )),
            TraceEntry::from(&TraceEvent::new(
                2_000_000,
                0,
                EventKind::ModelSwap { from: ShortName::new("a.gguf"), to: ShortName::new("b.gguf") },
            )),
        ];
        let line = record(Some(4), &Event::Trace { recorded: 9, dropped: 1, events: &events });
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!((value["id"].as_u64(), value["event"].as_str()), (Some(4), Some("trace")));
        assert_eq!((value["recorded"].as_u64(), value["dropped"].as_u64()), (Some(9), Some(1)));
        assert_eq!(value["events"][0]["t_ms"].as_f64(), Some(1.5));
        assert_eq!(value["events"][1]["kind"], "swap");
        assert_eq!(value["events"][1]["detail"], "a.gguf -> b.gguf");
    }

    #[test]
    fn mem_records_list_pools_and_heap() {
        let pools = [PoolEntry {
            kind: "kv",
            capacity_bytes: 100,
            live_bytes: 40,
            peak_bytes: 60,
            allocations: 3,
            failures: 1,
        }];
        let heap = HeapEntry {
            capacity_bytes: 16,
            live_bytes: 8,
            peak_bytes: 9,
            allocations: 2,
            pool_metadata_bytes: 64,
        };
        let arena = ArenaEntry {
            capacity_bytes: 900,
            free_bytes: 500,
            largest_free_bytes: 400,
            kv_capacity_bytes: 450,
            largest_model_bytes: 800,
        };
        let line = record(Some(6), &Event::Mem { ram_bytes: 1000, pools: &pools, heap, arena });
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!((value["event"].as_str(), value["ram_bytes"].as_u64()), (Some("mem"), Some(1000)));
        assert_eq!(value["pools"][0]["kind"], "kv");
        assert_eq!(value["pools"][0]["peak_bytes"], 60);
        assert_eq!(value["pools"][0]["failures"], 1);
        assert_eq!(value["heap"]["allocations"], 2);
        assert_eq!(value["arena"]["kv_capacity_bytes"], 450);
    }

    #[test]
    fn refusals_name_the_request_when_they_can() {
        let error = parse_request(r#"{"id":9,"op":"dance"}"#).unwrap_err();
        assert_eq!(error.id, Some(9));
        assert!(error.message.starts_with("malformed request"), "{}", error.message);
        assert_eq!(parse_request("{not json").unwrap_err().id, None);
        let zero = parse_request(r#"{"id":5,"op":"generate","prompt":"x","max_tokens":0}"#).unwrap_err();
        assert_eq!((zero.id, zero.message.as_str()), (Some(5), "max_tokens must be 1-4096"));
        let hot = parse_request(r#"{"id":6,"op":"generate","prompt":"x","temperature":9}"#).unwrap_err();
        assert_eq!(hot.message, "temperature must be 0-5");
        let long = alloc::format!(r#"{{"id":7,"op":"generate","prompt":"{}"}}"#, "a".repeat(5000));
        assert!(parse_request(&long).unwrap_err().message.contains("longer than"));
    }

    #[test]
    fn records_are_single_json_lines() {
        let line = record(Some(1), &Event::Token { text: "a \"quoted\"\nline" });
        assert_eq!(line, "{\"id\":1,\"event\":\"token\",\"text\":\"a \\\"quoted\\\"\\nline\"}\r\n");
        let done = record(
            Some(2),
            &Event::Done {
                usage: Usage { prompt_tokens: 3, cached_tokens: 0, completion_tokens: 4 },
                timings: Timings { first_token_ms: 1.5, total_ms: 9.0, tokens_per_second: 2.0 },
                finish: "stop",
                model: "m.gguf",
            },
        );
        let value: serde_json::Value = serde_json::from_str(done.trim_end()).unwrap();
        assert_eq!(value["usage"]["completion_tokens"], 4);
        assert_eq!(value["finish"], "stop");
        assert_eq!(
            record(None, &Event::Error { message: "x" }),
            "{\"id\":null,\"event\":\"error\",\"message\":\"x\"}\r\n"
        );
    }

    proptest! {
        /// Every text comes back from a JSON parser exactly as it went in, and every float
        /// reads back the same.
        #[test]
        fn records_round_trip_through_a_json_parser(text in any::<String>(), value in any::<f64>()) {
            let line = record(Some(3), &Event::Token { text: &text });
            let parsed: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
            prop_assert_eq!(parsed["text"].as_str(), Some(text.as_str()));
            let timings = Timings { first_token_ms: value, total_ms: 1.0, tokens_per_second: 0.5 };
            let usage = Usage { prompt_tokens: 1, cached_tokens: 0, completion_tokens: 2 };
            let done = record(None, &Event::Done { usage, timings, finish: "stop", model: &text });
            let parsed: serde_json::Value = serde_json::from_str(done.trim_end()).unwrap();
            // Read the number with Rust's own parser, which is exact (serde_json's default one
            // may miss by an ulp at large exponents).
            let number = done.split("\"first_token_ms\":").nth(1).and_then(|rest| rest.split(',').next());
            if value.is_finite() {
                prop_assert_eq!(number.map(str::parse::<f64>), Some(Ok(value)));
            } else {
                prop_assert!(parsed["timings"]["first_token_ms"].is_null());
            }
            prop_assert_eq!(parsed["timings"]["total_ms"].as_f64(), Some(1.0));
        }

        #[test]
        fn arbitrary_lines_never_panic(line in ".{0,300}") {
            let _ = parse_request(&line);
        }

        #[test]
        fn mutated_requests_never_panic(cut in 0usize..60, byte in any::<u8>(), at in 0usize..60) {
            let mut bytes = br#"{"id":12,"op":"generate","prompt":"hello","max_tokens":3}"#.to_vec();
            let at = at.min(bytes.len() - 1);
            bytes[at] = byte;
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            if let Ok(line) = core::str::from_utf8(&bytes) {
                let _ = parse_request(line);
            }
        }
    }
}
