//! OpenAI's HTTP API in the gateway's terms: request bodies of `/v1/chat/completions` and
//! `/v1/completions` checked and translated into machine-mode `generate` lines, the answers
//! (whole, or as stream chunks) built from the board's records, and errors in OpenAI's shape
//! with their HTTP status.

use serde_json::{Map, Value, json};

/// Longest machine-mode line the board accepts, in bytes (its console's limit for lines that
/// start with `{`).
pub const BOARD_LINE_LIMIT: usize = kernel::serve::MAX_MACHINE_LINE;

/// Most messages in a conversation (as the board allows).
pub const MAX_MESSAGES: usize = kernel::serve::protocol::MAX_MESSAGES;

/// Most stop strings a request may give (as the board and OpenAI allow).
pub const MAX_STOP_STRINGS: usize = 4;

/// Longest stop string the board accepts, in bytes.
pub const MAX_STOP_BYTES: usize = 64;

/// An error as the API reports it: the HTTP status and OpenAI's `error` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI's error type, such as `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A short code, such as `model_not_found`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// An error with `status`, `kind` and `code` and no field at fault.
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: Some(code) }
    }

    /// 503: the board cannot be reached (booting, rebooting, its line dropped).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", "board_unavailable", message)
    }

    /// 504: the board fell silent past the deadline.
    pub fn silent(seconds: u64) -> Self {
        Self::new(504, "server_error", "board_timeout", format!("the board sent nothing for {seconds} s"))
    }

    /// 404: no model of that name on the board's card.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            status: 404,
            message: format!("the model '{model}' is not on the board's card (see GET /v1/models)"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// The error's JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// The error a board's refusal of a generation maps to: a full queue (the batch's, or the
/// console's while a pass runs) is 429, a prompt the board cannot hold is 400, anything else is
/// the board's failure (500).
pub fn board_refusal(message: &str) -> ApiError {
    if message.starts_with("too many requests")
        || message.starts_with("busy: ")
        || message.contains("try again when")
    {
        ApiError::new(429, "rate_limit_error", "board_queue_full", message)
    } else if message.contains("tokens but only")
        || message.contains("longer than")
        || message.contains("no tokens")
    {
        ApiError::new(400, "invalid_request_error", "context_length_exceeded", message)
    } else if message.starts_with("malformed request") || message.contains(" must be ") {
        ApiError::new(400, "invalid_request_error", "invalid_value", message)
    } else {
        ApiError::new(500, "server_error", "board_error", message)
    }
}

/// Which endpoint a generation came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl Endpoint {
    /// The endpoint's path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        }
    }
}

/// A generation request, checked: the model asked for, how to answer, and the `generate`
/// operation's fields for the board (without `id` and `op`).
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Where it came from.
    pub endpoint: Endpoint,
    /// The model named, if any (the active one otherwise).
    pub model: Option<String>,
    /// Server-sent events instead of one answer.
    pub stream: bool,
    /// A last stream chunk with the usage (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The `generate` fields for the board.
    pub board_fields: Map<String, Value>,
}

impl Generation {
    /// The machine-mode line for this generation as request `id`, CR-terminated: ASCII DEL is
    /// escaped (the board's line editor reads it as backspace). Refused (400) when it would pass
    /// the board's line limit.
    pub fn line(&self, id: u64) -> Result<String, ApiError> {
        let mut request = Map::new();
        request.insert("id".into(), json!(id));
        request.insert("op".into(), json!("generate"));
        request.extend(self.board_fields.clone());
        machine_line(&Value::Object(request), "messages")
    }
}

/// `request` as one machine-mode line (CR-terminated, DEL escaped), or a 400 naming `param`
/// when it is longer than the board accepts.
pub fn machine_line(request: &Value, param: &str) -> Result<String, ApiError> {
    let text = request.to_string().replace('\u{7f}', "\\u007f");
    if text.len() > BOARD_LINE_LIMIT {
        return Err(ApiError {
            status: 400,
            message: format!(
                "the request is {} bytes as a machine-mode line and the board accepts at most {BOARD_LINE_LIMIT}: shorten the conversation",
                text.len()
            ),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("context_length_exceeded"),
        });
    }
    Ok(format!("{text}\r"))
}

/// Reads a JSON object body, or says why it is not one.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| ApiError {
        status: 400,
        message: format!("the body is not valid JSON: {error}"),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_json"),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("body", "the body must be a JSON object")),
    }
}

/// Checks and translates a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<Generation, ApiError> {
    let map = object(body)?;
    let messages = match map.get("messages") {
        Some(Value::Array(messages)) if messages.len() > MAX_MESSAGES => {
            return Err(ApiError::invalid("messages", format!("at most {MAX_MESSAGES} messages")));
        }
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "messages must not be empty")),
        Some(_) => return Err(ApiError::invalid("messages", "messages must be an array")),
        None => return Err(ApiError::invalid("messages", "messages is required")),
    };
    let messages = messages
        .iter()
        .enumerate()
        .map(|(index, message)| board_message(index, message))
        .collect::<Result<Vec<Value>, ApiError>>()?;
    let mut fields = Map::new();
    fields.insert("messages".into(), Value::Array(messages));
    common(&map, Endpoint::Chat, fields)
}

/// Checks and translates a `/v1/completions` body.
pub fn parse_completion(body: &[u8]) -> Result<Generation, ApiError> {
    let map = object(body)?;
    let prompt = match map.get("prompt") {
        Some(Value::String(prompt)) => prompt.clone(),
        Some(Value::Array(parts)) if parts.len() == 1 && parts[0].is_string() => {
            parts[0].as_str().unwrap_or_default().to_string()
        }
        Some(_) => {
            return Err(ApiError::invalid("prompt", "prompt must be a string (one prompt per request)"));
        }
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    let mut fields = Map::new();
    fields.insert("prompt".into(), json!(prompt));
    common(&map, Endpoint::Completion, fields)
}

/// One chat message for the board: its role (`developer` is a system message) and its text
/// (a string, or text parts joined).
fn board_message(index: usize, message: &Value) -> Result<Value, ApiError> {
    let param = format!("messages[{index}]");
    let role = match message.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some(other) => {
            return Err(ApiError::invalid(
                &format!("{param}.role"),
                format!("role must be system, user or assistant, not '{other}'"),
            ));
        }
        None => return Err(ApiError::invalid(&format!("{param}.role"), "each message needs a role string")),
    };
    let content = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => Ok(text),
                    _ => Err(ApiError::invalid(
                        &format!("{param}.content"),
                        "only text content parts are supported",
                    )),
                }
            })
            .collect::<Result<Vec<&str>, ApiError>>()?
            .concat(),
        Some(Value::Null) | None if role == "assistant" => String::new(),
        _ => {
            return Err(ApiError::invalid(
                &format!("{param}.content"),
                "content must be a string or text parts",
            ));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// The fields both endpoints share: model, stream, max_tokens, temperature, top_p, seed, stop, n.
fn common(
    map: &Map<String, Value>,
    endpoint: Endpoint,
    mut fields: Map<String, Value>,
) -> Result<Generation, ApiError> {
    let model = match map.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(model)) if !model.is_empty() => Some(model.clone()),
        Some(_) => return Err(ApiError::invalid("model", "model must be a non-empty string")),
    };
    let stream = optional_bool(map, "stream")?.unwrap_or(false);
    let include_usage = match map.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => optional_bool(options, "include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::invalid("stream_options", "stream_options must be an object")),
    };
    if let Some(n) = map.get("n").filter(|n| !n.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(ApiError::invalid("n", "n must be 1: the board answers one choice per request"));
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|key| map.get(key).filter(|value| !value.is_null()).map(|value| (key, value)));
    if let Some((key, value)) = max_tokens {
        match value.as_u64() {
            Some(tokens @ 1..=4096) => fields.insert("max_tokens".into(), json!(tokens)),
            _ => return Err(ApiError::invalid(key, format!("{key} must be an integer from 1 to 4096"))),
        };
    }
    if let Some(temperature) = optional_number(map, "temperature")? {
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid("temperature", "temperature must be from 0 to 2"));
        }
        fields.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = optional_number(map, "top_p")? {
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be more than 0 and at most 1"));
        }
        fields.insert("top_p".into(), json!(top_p));
    }
    match map.get("seed") {
        None | Some(Value::Null) => {}
        Some(seed) => match seed.as_u64() {
            Some(seed) => drop(fields.insert("seed".into(), json!(seed))),
            None => return Err(ApiError::invalid("seed", "seed must be a non-negative integer")),
        },
    }
    let stops = stop_strings(map.get("stop"))?;
    if !stops.is_empty() {
        fields.insert("stop".into(), json!(stops));
    }
    Ok(Generation { endpoint, model, stream, include_usage, board_fields: fields })
}

/// `stop`: absent, a string, or an array of up to four strings, each 1-64 bytes.
fn stop_strings(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops: Vec<String> = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| ApiError::invalid("stop", "stop must be a string or an array of strings"))?,
        Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings")));
    }
    if stops.iter().any(|stop| stop.is_empty() || stop.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid("stop", format!("each stop string must be 1-{MAX_STOP_BYTES} bytes")));
    }
    Ok(stops)
}

fn optional_bool(map: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be true or false"))),
    }
}

fn optional_number(map: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => Ok(number.as_f64()),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a number"))),
    }
}

/// OpenAI's finish reason for the board's: "stop" and "length" as they are; a cancelled
/// answer ended early, as a stop.
pub fn finish_reason(board_finish: &str) -> &'static str {
    match board_finish {
        "length" => "length",
        _ => "stop",
    }
}

/// The usage object.
pub fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// What identifies one answer in every object about it.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerIdentity {
    /// `chatcmpl-N` or `cmpl-N`.
    pub id: String,
    /// Unix time of the request, in seconds.
    pub created: u64,
    /// The model answering.
    pub model: String,
}

impl AnswerIdentity {
    /// The identity of answer number `serial` of `endpoint`.
    pub fn new(endpoint: Endpoint, serial: u64, created: u64, model: &str) -> Self {
        let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
        Self { id: format!("{prefix}-tessera-{serial}"), created, model: model.to_string() }
    }
}

/// The whole answer: a `chat.completion` or a `text_completion`.
pub fn answer(
    endpoint: Endpoint,
    identity: &AnswerIdentity,
    text: &str,
    finish: &str,
    usage: Value,
) -> Value {
    let choice = match endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish,
        }),
        Endpoint::Completion => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
    };
    json!({
        "id": identity.id,
        "object": if endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" },
        "created": identity.created,
        "model": identity.model,
        "choices": [choice],
        "usage": usage,
    })
}

/// One stream chunk: the first one of a chat carries the role, each token its text, the last
/// one the finish reason (`text` None and `finish` given).
pub fn chunk(
    endpoint: Endpoint,
    identity: &AnswerIdentity,
    text: Option<&str>,
    first: bool,
    finish: Option<&str>,
) -> Value {
    let choice = match endpoint {
        Endpoint::Chat => {
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(text) = text {
                delta.insert("content".into(), json!(text));
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Endpoint::Completion => {
            json!({"index": 0, "text": text.unwrap_or_default(), "logprobs": null, "finish_reason": finish})
        }
    };
    json!({
        "id": identity.id,
        "object": if endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": identity.created,
        "model": identity.model,
        "choices": [choice],
    })
}

/// The usage chunk a stream ends with when `stream_options.include_usage` asks for it.
pub fn usage_chunk(endpoint: Endpoint, identity: &AnswerIdentity, usage: Value) -> Value {
    json!({
        "id": identity.id,
        "object": if endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": identity.created,
        "model": identity.model,
        "choices": [],
        "usage": usage,
    })
}

/// One server-sent event carrying `value`.
pub fn event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// The event that ends a stream.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// `GET /v1/models`: the card's models, the active one first.
pub fn model_list(active: Option<&str>, models: &[(String, u64)], created: u64) -> Value {
    let mut ordered: Vec<&(String, u64)> = models.iter().collect();
    ordered.sort_by_key(|(name, _)| Some(name.as_str()) != active);
    let data: Vec<Value> = ordered
        .iter()
        .map(|(name, bytes)| {
            json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "tessera",
                "active": Some(name.as_str()) == active,
                "bytes": bytes,
            })
        })
        .collect();
    json!({"object": "list", "data": data})
}

/// The card's model that `asked` names: its file name, or the name without its extension.
pub fn resolve_model<'m>(asked: &str, models: &'m [(String, u64)]) -> Option<&'m str> {
    models.iter().map(|(name, _)| name.as_str()).find(|name| *name == asked).or_else(|| {
        models
            .iter()
            .map(|(name, _)| name.as_str())
            .find(|name| name.rsplit_once('.').is_some_and(|(stem, _)| stem == asked))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Generation, ApiError> {
        parse_chat(body.as_bytes())
    }

    #[test]
    fn chat_requests_become_generate_lines() {
        let generation = chat(
            r#"{"model":"tiny","messages":[{"role":"developer","content":"Be brief"},{"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
               "max_tokens":9,"temperature":0.5,"top_p":0.9,"seed":7,"stop":"END","stream":true,"stream_options":{"include_usage":true},"user":"x","frequency_penalty":0}"#,
        )
        .unwrap();
        assert_eq!(
            (generation.model.as_deref(), generation.stream, generation.include_usage),
            (Some("tiny"), true, true)
        );
        let line = generation.line(42).unwrap();
        assert!(line.ends_with('\r'));
        let value: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["id"], 42);
        assert_eq!(value["op"], "generate");
        assert_eq!(value["messages"][0], json!({"role": "system", "content": "Be brief"}));
        assert_eq!(value["messages"][1]["content"], "Hi there");
        assert_eq!((value["max_tokens"].as_u64(), value["seed"].as_u64()), (Some(9), Some(7)));
        assert_eq!(value["stop"], json!(["END"]));
        assert_eq!(value["top_p"].as_f64(), Some(0.9));
        let plain = parse_completion(br#"{"prompt":"Once","max_completion_tokens":3}"#).unwrap();
        let value: Value = serde_json::from_str(plain.line(1).unwrap().trim_end()).unwrap();
        assert_eq!((value["prompt"].as_str(), value["max_tokens"].as_u64()), (Some("Once"), Some(3)));
        assert!(value.get("messages").is_none());
    }

    #[test]
    fn bad_fields_are_400_with_their_param() {
        let cases = [
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{}"#, "messages"),
            (r#"{"messages":[{"role":"robot","content":"x"}]}"#, "messages[0].role"),
            (r#"{"messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"9"}"#, "max_tokens"),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens"),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#, "top_p"),
            (r#"{"messages":[{"role":"user","content":"x"}],"seed":-1}"#, "seed"),
            (r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#, "stop"),
            (r#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#, "stop"),
            (r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "stream"),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (r#"{"messages":[{"role":"user","content":"x"}],"model":7}"#, "model"),
            (r#"[1,2]"#, "body"),
        ];
        for (body, param) in cases {
            let error = chat(body).unwrap_err();
            assert_eq!((error.status, error.param.as_deref()), (400, Some(param)), "{body}");
            assert_eq!(error.body()["error"]["type"], "invalid_request_error");
        }
        let error = chat("{not json").unwrap_err();
        assert_eq!((error.status, error.code), (400, Some("invalid_json")));
        let error = parse_completion(br#"{"prompt":["a","b"]}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("prompt"));
        let conversation =
            |bytes| format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(bytes));
        assert!(
            chat(&conversation(BOARD_LINE_LIMIT - 100)).unwrap().line(1).is_ok(),
            "a long line that fits"
        );
        let error = chat(&conversation(BOARD_LINE_LIMIT)).unwrap().line(1).unwrap_err();
        assert_eq!((error.status, error.code), (400, Some("context_length_exceeded")));
        let turns = vec![r#"{"role":"user","content":"x"}"#; MAX_MESSAGES + 1].join(",");
        let error = chat(&format!(r#"{{"messages":[{turns}]}}"#)).unwrap_err();
        assert_eq!(
            (error.status, error.param.as_deref()),
            (400, Some("messages")),
            "more messages than the board takes"
        );
    }

    #[test]
    fn del_is_escaped_for_the_line_editor() {
        let generation = chat("{\"messages\":[{\"role\":\"user\",\"content\":\"a\u{7f}b\"}]}").unwrap();
        let line = generation.line(1).unwrap();
        assert!(!line.contains('\u{7f}'));
        let value: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(value["messages"][0]["content"], "a\u{7f}b");
    }

    #[test]
    fn board_refusals_map_to_statuses() {
        assert_eq!(board_refusal("too many requests: 128 are already waiting").status, 429);
        assert_eq!(board_refusal("busy: 256 lines wait for the server; send the request again").status, 429);
        assert_eq!(board_refusal("the message is 900 tokens but only 512 fit").status, 400);
        assert_eq!(board_refusal("max_tokens must be 1-4096").status, 400);
        assert_eq!(board_refusal("activations memory is full").status, 500);
        // No prompt at all fits: the board's memory, not the request, is at fault.
        let full = "the message is 85 tokens, and the KV cache has no room for any beside this model \
                    (the LLM arena is full: see /mem)";
        assert_eq!(board_refusal(full).status, 500);
    }

    #[test]
    fn answers_and_chunks_have_openai_shapes() {
        let identity = AnswerIdentity::new(Endpoint::Chat, 3, 1000, "tiny.gguf");
        let whole = answer(Endpoint::Chat, &identity, "Paris", "stop", usage(5, 2));
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(whole["choices"][0]["message"]["content"], "Paris");
        assert_eq!(whole["usage"]["total_tokens"], 7);
        let first = chunk(Endpoint::Chat, &identity, Some("Pa"), true, None);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": "Pa"}));
        assert!(first["choices"][0]["finish_reason"].is_null());
        let last = chunk(Endpoint::Chat, &identity, None, false, Some("length"));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let text = chunk(
            Endpoint::Completion,
            &AnswerIdentity::new(Endpoint::Completion, 1, 0, "m"),
            Some("x"),
            true,
            None,
        );
        assert_eq!(
            (text["object"].as_str(), text["choices"][0]["text"].as_str()),
            (Some("text_completion"), Some("x"))
        );
        assert_eq!(event(&json!({"a": 1})), "data: {\"a\":1}\n\n");
        assert_eq!(finish_reason("cancelled"), "stop");
        assert_eq!(finish_reason("length"), "length");
    }

    #[test]
    fn models_list_the_active_one_first_and_resolve_by_stem() {
        let models = vec![("a.gguf".to_string(), 1), ("b.gguf".to_string(), 2)];
        let list = model_list(Some("b.gguf"), &models, 5);
        assert_eq!(list["data"][0]["id"], "b.gguf");
        assert_eq!(list["data"][0]["active"], true);
        assert_eq!(list["data"][1]["id"], "a.gguf");
        assert_eq!(resolve_model("a", &models), Some("a.gguf"));
        assert_eq!(resolve_model("b.gguf", &models), Some("b.gguf"));
        assert_eq!(resolve_model("c", &models), None);
        assert_eq!(ApiError::unknown_model("c").status, 404);
    }
}
