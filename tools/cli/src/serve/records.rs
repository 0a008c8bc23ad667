//! The board's side of machine mode as the gateway reads it: each serial line becomes a record
//! about one request (token, done, error, loaded, models, mem, info), a sign that the board
//! booted or became ready, or nothing (echoed typing, prompts, progress lines).

use serde_json::Value;

/// The line the board prints when it starts serving (after loading its default model).
pub const READY_MARK: &str = "Type /help for commands";

/// The first line of the board's boot banner.
pub const BOOT_MARK: &str = "- LLM inference unikernel";

/// The counts and times the board reports when a generation ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Prompt tokens whose K/V came from the board's prefix cache.
    pub cached_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// From arrival to the first token, in ms of the board's clock.
    pub first_token_ms: f64,
    /// From arrival to the end, in ms.
    pub total_ms: f64,
    /// Generated tokens per second.
    pub tokens_per_second: f64,
    /// Why it stopped: "stop", "length" or "cancelled".
    pub finish: String,
    /// The model that answered.
    pub model: String,
}

/// One machine-mode record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A piece of generated text.
    Token(String),
    /// The generation ended.
    Done(Finished),
    /// The request was refused or failed.
    Error(String),
    /// A load ended with this model active.
    Loaded(String),
    /// The card's models: the active one, then each name with its size in bytes.
    Models {
        /// The active model.
        active: Option<String>,
        /// Every model file on the card.
        models: Vec<(String, u64)>,
    },
    /// The memory pools (the whole record, as the board sent it).
    Mem(Value),
    /// A free-form answer (stats, cancel requested).
    Info(String),
}

/// What one line of the board's output means to the gateway.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A record about request `id` (`None`: a request whose id the board could not read).
    Record(Option<u64>, Record),
    /// The board prints its boot banner: it (re)started.
    Booting,
    /// The board serves now.
    Ready,
    /// Anything else.
    Other,
}

/// Reads one line of the board's output. Echoed typing may precede a record on the same line,
/// so every `{"id":` in the line is tried as the start of a record that runs to its end.
pub fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\r', '\n']);
    for (start, _) in line.match_indices("{\"id\":") {
        if let Some((id, record)) = parse_record(&line[start..]) {
            return Line::Record(id, record);
        }
    }
    if line.contains(READY_MARK) {
        Line::Ready
    } else if line.contains(BOOT_MARK) {
        Line::Booting
    } else {
        Line::Other
    }
}

/// A record in `text` (a whole JSON object with an `event`), if it is one.
fn parse_record(text: &str) -> Option<(Option<u64>, Record)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_u64();
    let text_of = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let record = match value.get("event")?.as_str()? {
        "token" => Record::Token(text_of("text")),
        "error" => Record::Error(text_of("message")),
        "info" => Record::Info(text_of("text")),
        "loaded" => Record::Loaded(text_of("model")),
        "mem" => Record::Mem(value.clone()),
        "models" => Record::Models {
            active: value.get("active").and_then(Value::as_str).map(str::to_string),
            models: value
                .get("models")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|entry| {
                    Some((entry.get("name")?.as_str()?.to_string(), entry.get("bytes")?.as_u64()?))
                })
                .collect(),
        },
        "done" => {
            let usage = |key: &str| value["usage"][key].as_u64().unwrap_or(0);
            let timing = |key: &str| value["timings"][key].as_f64().unwrap_or(0.0);
            Record::Done(Finished {
                prompt_tokens: usage("prompt_tokens"),
                cached_tokens: usage("cached_tokens"),
                completion_tokens: usage("completion_tokens"),
                first_token_ms: timing("first_token_ms"),
                total_ms: timing("total_ms"),
                tokens_per_second: timing("tokens_per_second"),
                finish: text_of("finish"),
                model: text_of("model"),
            })
        }
        _ => return None,
    };
    Some((id, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_behind_echoed_typing() {
        assert_eq!(
            parse_line("{\"id\":3,\"event\":\"token\",\"text\":\"Pa\"}\r\n"),
            Line::Record(Some(3), Record::Token("Pa".into()))
        );
        assert_eq!(
            parse_line("> {\"id\":9,\"op\":\"gen{\"id\":4,\"event\":\"error\",\"message\":\"too many\"}\r"),
            Line::Record(Some(4), Record::Error("too many".into())),
            "a half-echoed request before the record"
        );
        assert_eq!(
            parse_line("{\"id\":null,\"event\":\"error\",\"message\":\"malformed request\"}"),
            Line::Record(None, Record::Error("malformed request".into()))
        );
        assert_eq!(
            parse_line("{\"id\":1,\"op\":\"generate\",\"prompt\":\"x\"}"),
            Line::Other,
            "an echo is no record"
        );
        assert_eq!(parse_line("Type /help for commands, or a JSON request for machine mode."), Line::Ready);
        assert_eq!(parse_line("Tessera 0.1.0 - LLM inference unikernel"), Line::Booting);
        assert_eq!(parse_line("loading tiny.gguf  40%"), Line::Other);
    }

    #[test]
    fn every_event_is_read() {
        let done = r#"{"id":2,"event":"done","usage":{"prompt_tokens":5,"cached_tokens":1,"completion_tokens":7},"timings":{"first_token_ms":12.5,"total_ms":100.0,"tokens_per_second":70.0},"finish":"stop","model":"a.gguf"}"#;
        let Line::Record(Some(2), Record::Done(finished)) = parse_line(done) else { panic!("not done") };
        assert_eq!((finished.prompt_tokens, finished.cached_tokens, finished.completion_tokens), (5, 1, 7));
        assert_eq!(
            (finished.first_token_ms, finished.finish.as_str(), finished.model.as_str()),
            (12.5, "stop", "a.gguf")
        );
        let models = r#"{"id":3,"event":"models","active":"b.gguf","models":[{"name":"a.gguf","bytes":10},{"name":"b.gguf","bytes":20}]}"#;
        assert_eq!(
            parse_line(models),
            Line::Record(
                Some(3),
                Record::Models {
                    active: Some("b.gguf".into()),
                    models: vec![("a.gguf".into(), 10), ("b.gguf".into(), 20)]
                }
            )
        );
        assert_eq!(
            parse_line(r#"{"id":4,"event":"loaded","model":"b.gguf"}"#),
            Line::Record(Some(4), Record::Loaded("b.gguf".into()))
        );
        let Line::Record(Some(5), Record::Mem(value)) = parse_line(r#"{"id":5,"event":"mem","pools":[]}"#)
        else {
            panic!("not mem")
        };
        assert!(value["pools"].is_array());
        assert_eq!(parse_line(r#"{"id":6,"event":"dance"}"#), Line::Other);
    }
}
