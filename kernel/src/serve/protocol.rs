//! Machine mode: newline-delimited JSON requests with ids, and the JSON records sent back.
//!
//! A request is one line that starts with `{`:
//!
//! ```text
//! {"id":1,"op":"generate","prompt":"What is the capital of France?","max_tokens":32}
//! {"id":2,"op":"stats"}      {"id":3,"op":"cancel","target":1}      {"id":4,"op":"models"}
//! {"id":5,"op":"trace","max":16}     {"id":6,"op":"mem"}
//! {"id":7,"op":"generate","messages":[{"role":"user","content":"Hi"}],"top_p":0.9,"seed":3,"stop":["\n"]}
//! {"id":8,"op":"load","model":"other.gguf"}
//! ```
//!
//! A generation takes either a `prompt` (one user message) or `messages`, a conversation of
//! system, user and assistant messages that the board puts in the model's own chat template.
//! `stop` lists up to [`MAX_STOP_STRINGS`] strings: the answer ends, with finish `"stop"`,
//! when its text contains one, and the stop string itself is not sent. A load answers
//! `{"id":8,"event":"loaded","model":"other.gguf"}` once the model is active, or an error
//! record when the load failed (the old model keeps serving). A models request gets
//! `{"id":4,"event":"models","active":"a.gguf","models":[{"name":"a.gguf","bytes":..},..]}`.
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

use crate::{
    infer::tokenizer::chat::{Message, Role},
    telemetry::TraceEvent,
};
use alloc::{string::String, vec::Vec};
use core::fmt::{self, Write};
use serde::Deserialize;

/// Longest prompt accepted in one request, in bytes (for a conversation: all its messages).
/// A machine-mode line of [`super::MAX_MACHINE_LINE`] holds it with its JSON around it.
pub const MAX_PROMPT_BYTES: usize = 12 * 1024;

/// Most messages one conversation may have.
pub const MAX_MESSAGES: usize = 64;

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 4;

/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;

/// Longest model file name a load may name, in bytes.
pub const MAX_MODEL_NAME_BYTES: usize = 255;

/// Who said a message of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// Instructions for the assistant.
    System,
    /// The person chatting.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl From<MessageRole> for Role {
    fn from(role: MessageRole) -> Self {
        match role {
            MessageRole::System => Role::System,
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Who said it.
    pub role: MessageRole,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// The message as the chat template takes it.
    pub fn as_message(&self) -> Message<'_> {
        Message { role: self.role.into(), content: &self.content }
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Generate an answer to `prompt`, or to the conversation `messages` (exactly one of them).
    Generate {
        /// The message.
        #[serde(default)]
        prompt: Option<String>,
        /// The conversation, instead of `prompt`.
        #[serde(default)]
        messages: Option<Vec<ChatMessage>>,
        /// Most tokens to generate (default: the console setting).
        #[serde(default)]
        max_tokens: Option<usize>,
        /// Sampling temperature (default: the console setting).
        #[serde(default)]
        temperature: Option<f32>,
        /// Nucleus sampling threshold, in (0, 1] (default: the console setting).
        #[serde(default)]
        top_p: Option<f32>,
        /// The sampler's seed (default: the console setting).
        #[serde(default)]
        seed: Option<u64>,
        /// Strings that end the answer when its text contains one (not sent).
        #[serde(default)]
        stop: Option<Vec<String>>,
    },
    /// Load `/models/MODEL` and make it the active model (a hot-swap when answers stream).
    Load {
        /// The model's file name.
        model: String,
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

/// The id of a request line, read without the rest of the request (to answer a line that is
/// not handled, such as one turned away as busy); `None` when the line is not a JSON object
/// with a numeric `id`. Never panics, on any input.
pub fn request_id(line: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    serde_json::from_str::<Id>(line).ok().map(|request| request.id)
}

/// Parses one request line. Never panics, on any input.
pub fn parse_request(line: &str) -> Result<Request, ProtocolError> {
    let id = request_id(line);
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
    let problem = match &request.operation {
        Operation::Generate { prompt, messages, max_tokens, temperature, top_p, stop, .. } => {
            generation_problem(prompt.as_deref(), messages.as_deref(), *max_tokens, *temperature, *top_p)
                .or_else(|| stop.as_deref().and_then(stop_problem))
        }
        Operation::Load { model } => model_name_problem(model),
        _ => None,
    };
    if let Some(message) = problem {
        return Err(ProtocolError { id: Some(request.id), message });
    }
    Ok(request)
}

/// What is wrong with a generation's text and settings, if anything.
fn generation_problem(
    prompt: Option<&str>,
    messages: Option<&[ChatMessage]>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
) -> Option<String> {
    let text_bytes = match (prompt, messages) {
        (Some(_), Some(_)) => return Some("give prompt or messages, not both".into()),
        (None, None) => return Some("prompt or messages is required".into()),
        (Some(prompt), None) => prompt.len(),
        (None, Some([])) => return Some("messages must not be empty".into()),
        (None, Some(messages)) if messages.len() > MAX_MESSAGES => {
            return Some(alloc::format!("at most {MAX_MESSAGES} messages"));
        }
        (None, Some(messages)) => messages.iter().map(|message| message.content.len()).sum(),
    };
    if text_bytes > MAX_PROMPT_BYTES {
        Some(alloc::format!("prompt longer than {MAX_PROMPT_BYTES} bytes"))
    } else if max_tokens.is_some_and(|tokens| tokens == 0 || tokens > 4096) {
        Some("max_tokens must be 1-4096".into())
    } else if temperature.is_some_and(|value| !(0.0..=5.0).contains(&value)) {
        Some("temperature must be 0-5".into())
    } else if top_p.is_some_and(|value| !(value > 0.0 && value <= 1.0)) {
        Some("top_p must be more than 0 and at most 1".into())
    } else {
        None
    }
}

/// What is wrong with a list of stop strings, if anything.
fn stop_problem(stop: &[String]) -> Option<String> {
    if stop.len() > MAX_STOP_STRINGS {
        Some(alloc::format!("at most {MAX_STOP_STRINGS} stop strings"))
    } else if stop.iter().any(|text| text.is_empty() || text.len() > MAX_STOP_BYTES) {
        Some(alloc::format!("each stop string must be 1-{MAX_STOP_BYTES} bytes"))
    } else {
        None
    }
}

/// What is wrong with a model file name to load, if anything.
fn model_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_MODEL_NAME_BYTES {
        Some(alloc::format!("model must be a file name of 1-{MAX_MODEL_NAME_BYTES} bytes"))
    } else if name.chars().any(|character| character.is_control() || matches!(character, '/' | '\\')) {
        Some("model must be a file name in /models, without a path or control characters".into())
    } else {
        None
    }
}

/// One model on the card, as the `models` record lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    /// The file name in `/models`.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
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
    /// A load finished: `model` is the active model now.
    Loaded {
        /// The model's file name.
        model: &'a str,
    },
    /// The models on the card and the active one.
    Models {
        /// The active model's file name, if one is loaded.
        active: Option<&'a str>,
        /// The model files in `/models`.
        models: &'a [ModelEntry],
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
    /// KV), and no more than `tessera.cfg`'s weights budget.
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
        Event::Loaded { model } => {
            object.string("event", "loaded")?.string("model", model)?;
        }
        Event::Models { active, models } => write_models(&mut object, *active, models)?,
        Event::Mem { ram_bytes, pools, heap, arena } => {
            write_mem(&mut object, *ram_bytes, pools, heap, arena)?
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

/// The members of a `models` record after its event.
fn write_models(object: &mut Object<'_, '_>, active: Option<&str>, models: &[ModelEntry]) -> fmt::Result {
    object.string("event", "models")?;
    match active {
        Some(name) => object.string("active", name)?,
        None => object.key("active").and_then(|object| object.out.write_str("null").map(|()| object))?,
    };
    object.key("models")?;
    object.out.write_char('[')?;
    for (index, entry) in models.iter().enumerate() {
        if index > 0 {
            object.out.write_char(',')?;
        }
        Object::open(object.out)?.string("name", &entry.name)?.number("bytes", entry.bytes)?.close()?;
    }
    object.out.write_char(']')?;
    Ok(())
}

/// The members of a `mem` record after its event.
fn write_mem(
    object: &mut Object<'_, '_>,
    ram_bytes: u64,
    pools: &[PoolEntry],
    heap: &HeapEntry,
    arena: &ArenaEntry,
) -> fmt::Result {
    object.string("event", "mem")?.number("ram_bytes", ram_bytes)?.key("pools")?;
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
    Ok(())
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
                    prompt: Some("hi".into()),
                    messages: None,
                    max_tokens: Some(5),
                    temperature: None,
                    top_p: None,
                    seed: None,
                    stop: None,
                }
            }
        );
        assert_eq!(parse_request(r#"{"id":2,"op":"stats"}"#).unwrap().operation, Operation::Stats);
        assert_eq!(request_id(r#"{"op":"nonsense","id":7,"x":[1,{"id":2}]}"#), Some(7));
        assert_eq!(request_id(r#"{"op":"stats"}"#), None);
        assert_eq!(request_id(r#"{"id":"7"}"#), None);
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
    fn conversations_sampling_and_stops_are_parsed() {
        let line = r#"{"id":3,"op":"generate","messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":"Bye"}],"top_p":0.5,"seed":42,"stop":["\n","END"]}"#;
        let Operation::Generate { prompt, messages, top_p, seed, stop, .. } =
            parse_request(line).unwrap().operation
        else {
            panic!("not a generation");
        };
        assert_eq!(prompt, None);
        let messages = messages.unwrap();
        let roles: Vec<MessageRole> = messages.iter().map(|message| message.role).collect();
        assert_eq!(
            roles,
            [MessageRole::System, MessageRole::User, MessageRole::Assistant, MessageRole::User]
        );
        assert_eq!(messages[1].as_message(), Message { role: Role::User, content: "Hi" });
        assert_eq!((top_p, seed), (Some(0.5), Some(42)));
        assert_eq!(stop, Some(alloc::vec!["\n".into(), "END".into()]));
        assert_eq!(
            parse_request(r#"{"id":4,"op":"load","model":"b.gguf"}"#).unwrap().operation,
            Operation::Load { model: "b.gguf".into() }
        );
    }

    #[test]
    fn every_new_field_is_checked() {
        let refusal = |line: &str| {
            let error = parse_request(line).unwrap_err();
            assert_eq!(error.id, Some(1), "{line}");
            error.message
        };
        let cases = [
            (r#"{"id":1,"op":"generate"}"#, "prompt or messages is required"),
            (
                r#"{"id":1,"op":"generate","prompt":"a","messages":[{"role":"user","content":"b"}]}"#,
                "give prompt or messages, not both",
            ),
            (r#"{"id":1,"op":"generate","messages":[]}"#, "messages must not be empty"),
            (r#"{"id":1,"op":"generate","prompt":"a","top_p":0}"#, "top_p must be more than 0 and at most 1"),
            (
                r#"{"id":1,"op":"generate","prompt":"a","top_p":1.5}"#,
                "top_p must be more than 0 and at most 1",
            ),
            (
                r#"{"id":1,"op":"generate","prompt":"a","stop":["a","b","c","d","e"]}"#,
                "at most 4 stop strings",
            ),
            (r#"{"id":1,"op":"generate","prompt":"a","stop":[""]}"#, "each stop string must be 1-64 bytes"),
            (r#"{"id":1,"op":"load","model":""}"#, "model must be a file name of 1-255 bytes"),
            (
                r#"{"id":1,"op":"load","model":"../x.gguf"}"#,
                "model must be a file name in /models, without a path or control characters",
            ),
        ];
        for (line, message) in cases {
            assert_eq!(refusal(line), message, "{line}");
        }
        for line in [
            r#"{"id":1,"op":"generate","messages":[{"role":"robot","content":"b"}]}"#,
            r#"{"id":1,"op":"generate","messages":[{"role":"user","content":7}]}"#,
            r#"{"id":1,"op":"generate","messages":[{"role":"user","content":"b","extra":1}]}"#,
            r#"{"id":1,"op":"generate","prompt":"a","seed":-1}"#,
            r#"{"id":1,"op":"generate","prompt":"a","stop":"x"}"#,
            r#"{"id":1,"op":"load"}"#,
        ] {
            assert!(refusal(line).starts_with("malformed request"), "{line}");
        }
        let many: String = (0..MAX_MESSAGES + 1).map(|_| r#"{"role":"user","content":"a"},"#).collect();
        let line =
            alloc::format!(r#"{{"id":1,"op":"generate","messages":[{}]}}"#, many.trim_end_matches(','));
        assert_eq!(refusal(&line), "at most 64 messages");
        let long = "a".repeat(MAX_PROMPT_BYTES / 2 + 1);
        let line = alloc::format!(
            r#"{{"id":1,"op":"generate","messages":[{{"role":"user","content":"{long}"}},{{"role":"user","content":"{long}"}}]}}"#
        );
        assert!(refusal(&line).contains("longer than"), "the whole conversation counts");
    }

    #[test]
    fn loaded_and_models_records() {
        assert_eq!(
            record(Some(2), &Event::Loaded { model: "b.gguf" }),
            "{\"id\":2,\"event\":\"loaded\",\"model\":\"b.gguf\"}\r\n"
        );
        let models = [
            ModelEntry { name: "a.gguf".into(), bytes: 10 },
            ModelEntry { name: "b \"q\".gguf".into(), bytes: 20 },
        ];
        let line = record(Some(3), &Event::Models { active: Some("a.gguf"), models: &models });
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!((value["event"].as_str(), value["active"].as_str()), (Some("models"), Some("a.gguf")));
        assert_eq!(value["models"][1]["name"], "b \"q\".gguf");
        assert_eq!(value["models"][1]["bytes"], 20);
        let none = record(Some(4), &Event::Models { active: None, models: &[] });
        let value: serde_json::Value = serde_json::from_str(none.trim_end()).unwrap();
        assert!(value["active"].is_null());
        assert_eq!(value["models"].as_array().map(Vec::len), Some(0));
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
        let long =
            alloc::format!(r#"{{"id":7,"op":"generate","prompt":"{}"}}"#, "a".repeat(MAX_PROMPT_BYTES + 1));
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
        fn mutated_requests_never_panic(
            cut in 0usize..160,
            byte in any::<u8>(),
            at in 0usize..160,
            template in 0usize..3,
        ) {
            let templates: [&[u8]; 3] = [
                br#"{"id":12,"op":"generate","prompt":"hello","max_tokens":3}"#,
                br#"{"id":12,"op":"generate","messages":[{"role":"user","content":"hi"}],"top_p":0.5,"seed":1,"stop":["a"]}"#,
                br#"{"id":12,"op":"load","model":"tiny.gguf"}"#,
            ];
            let mut bytes = templates[template].to_vec();
            let at = at.min(bytes.len() - 1);
            bytes[at] = byte;
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            if let Ok(line) = core::str::from_utf8(&bytes) {
                let _ = parse_request(line);
            }
        }

        /// Any conversation, sampling settings and stop strings are parsed or refused with the
        /// request's id, never a panic; an accepted one keeps what was sent.
        #[test]
        fn generated_requests_are_parsed_or_refused(
            contents in proptest::collection::vec(".{0,40}", 0..6),
            top_p in any::<f32>(),
            seed in any::<u64>(),
            stops in proptest::collection::vec(".{0,8}", 0..6),
        ) {
            let messages: Vec<serde_json::Value> = contents
                .iter()
                .enumerate()
                .map(|(index, content)| {
                    let role = ["system", "user", "assistant"][index % 3];
                    serde_json::json!({"role": role, "content": content})
                })
                .collect();
            let mut request = serde_json::json!({"id": 5, "op": "generate", "messages": messages, "seed": seed, "stop": stops});
            if top_p.is_finite() {
                request["top_p"] = serde_json::json!(top_p);
            }
            match parse_request(&request.to_string()) {
                Ok(parsed) => {
                    prop_assert_eq!(parsed.id, 5);
                    let Operation::Generate { messages: Some(parsed_messages), stop, .. } = parsed.operation else {
                        return Err(TestCaseError::fail("not a conversation"));
                    };
                    prop_assert_eq!(parsed_messages.len(), contents.len());
                    prop_assert_eq!(stop, Some(stops));
                }
                Err(error) => prop_assert_eq!(error.id, Some(5)),
            }
        }
    }
}
