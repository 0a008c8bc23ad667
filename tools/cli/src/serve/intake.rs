//! The gateway's intake of one HTTP request, as pure functions over its bytes: the request
//! head checked against the gateway's limits (size, header count, a `Content-Length` the body
//! limit allows), the refusals written as raw HTTP answers, and, for the fuzz target and the
//! tests, a whole request followed through to the machine-mode line the board would get.
//!
//! The gateway reads each connection's head itself (with the header-read timeout) and checks
//! it with [`read_head`] before hyper serves the request; the body goes through
//! [`super::openai`]'s `parse_chat` or `parse_completion` and `Generation::line`, as
//! [`examine`] does here without a runtime or a board.

use super::openai::{self, ApiError};

/// What the gateway accepts of a request before it reads the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Largest body, in bytes.
    pub max_body: usize,
}

/// The limits `tessera serve` uses unless told otherwise.
pub const DEFAULT_LIMITS: Limits = Limits { max_head: 16 * 1024, max_headers: 64, max_body: 256 * 1024 };

/// Headers the parser has room for: every request with more is refused before its count is
/// compared with [`Limits::max_headers`].
const HEADER_SLOTS: usize = 128;

/// A complete request head that passed the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, such as `POST`.
    pub method: String,
    /// The request target, such as `/v1/chat/completions`.
    pub path: String,
    /// Bytes of the head, its blank line included (the body starts there).
    pub length: usize,
    /// The body's length when `Content-Length` gives it.
    pub content_length: Option<usize>,
    /// Whether the body is sent in chunks (`Transfer-Encoding: chunked`).
    pub chunked: bool,
}

/// A refusal about the request itself: `status` with `code`, in OpenAI's error shape.
fn refusal(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, "invalid_request_error", code, message)
}

/// 408: the head or the body did not arrive within `seconds`.
pub fn timed_out(part: &str, seconds: u64) -> ApiError {
    refusal(408, "request_timeout", format!("the request's {part} did not arrive within {seconds} s"))
}

/// Reads the request head at the start of `bytes`: `Ok(None)` while it is incomplete (and
/// within `limits.max_head`), the head when it is complete and acceptable, or the refusal
/// (400 malformed, 431 too large or too many headers, 413 a declared body over the limit).
pub fn read_head(bytes: &[u8], limits: &Limits) -> Result<Option<RequestHead>, ApiError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut request = httparse::Request::new(&mut slots);
    let parsed = request.parse(bytes);
    let too_large =
        || refusal(431, "headers_too_large", format!("the request head passes {} bytes", limits.max_head));
    let length = match parsed {
        Ok(httparse::Status::Partial) if bytes.len() > limits.max_head => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(length)) if length > limits.max_head => return Err(too_large()),
        Ok(httparse::Status::Complete(length)) => length,
        Err(httparse::Error::TooManyHeaders) => return Err(too_many_headers(limits)),
        Err(error) => return Err(refusal(400, "invalid_http", format!("malformed HTTP request: {error}"))),
    };
    if request.headers.len() > limits.max_headers {
        return Err(too_many_headers(limits));
    }
    let (content_length, chunked) = body_framing(request.headers)?;
    if content_length.is_some_and(|declared| declared > limits.max_body) {
        return Err(body_too_large(limits));
    }
    Ok(Some(RequestHead {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        length,
        content_length,
        chunked,
    }))
}

fn too_many_headers(limits: &Limits) -> ApiError {
    refusal(431, "headers_too_large", format!("more than {} headers", limits.max_headers))
}

/// 413: a body over the limit.
pub fn body_too_large(limits: &Limits) -> ApiError {
    refusal(413, "request_too_large", format!("the body passes {} bytes", limits.max_body))
}

/// The body's framing: its `Content-Length` and whether it is chunked. Several lengths that
/// disagree, a length that is not a number, or a length beside chunking (a request smuggler's
/// tools) are refused.
fn body_framing(headers: &[httparse::Header<'_>]) -> Result<(Option<usize>, bool), ApiError> {
    let mut content_length = None;
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = core::str::from_utf8(header.value)
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|text| text.parse::<usize>().ok())
                .ok_or_else(|| refusal(400, "invalid_http", "Content-Length is not a number"))?;
            if content_length.is_some_and(|earlier| earlier != value) {
                return Err(refusal(400, "invalid_http", "two different Content-Length headers"));
            }
            content_length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    if chunked && content_length.is_some() {
        return Err(refusal(400, "invalid_http", "Content-Length and Transfer-Encoding together"));
    }
    Ok((content_length, chunked))
}

/// The reason phrase of a status the intake answers with.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `error` as a whole HTTP/1.1 answer that closes the connection.
pub fn error_answer(error: &ApiError) -> Vec<u8> {
    let body = error.body().to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        error.status,
        reason(error.status),
        body.len()
    )
    .into_bytes()
}

/// What [`examine`] made of a request's bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Examined {
    /// The head or the body has not all arrived.
    Incomplete,
    /// A request that is not a generation (another route, or a chunked body, which hyper
    /// decodes in the gateway), with its head.
    Other(RequestHead),
    /// A generation: the machine-mode line the board would get (as request 1).
    Generation(String),
}

/// Follows a request's bytes the way the gateway does: the head checked, the body (framed by
/// `Content-Length`) checked and translated for the two generation routes, and the
/// machine-mode line made. An error is the answer the client would get.
pub fn examine(bytes: &[u8], limits: &Limits) -> Result<Examined, ApiError> {
    let Some(head) = read_head(bytes, limits)? else { return Ok(Examined::Incomplete) };
    let endpoint = match (head.method.as_str(), head.path.as_str()) {
        ("POST", "/v1/chat/completions") => openai::Endpoint::Chat,
        ("POST", "/v1/completions") => openai::Endpoint::Completion,
        _ => return Ok(Examined::Other(head)),
    };
    if head.chunked {
        return Ok(Examined::Other(head));
    }
    let rest = &bytes[head.length..];
    let declared = head.content_length.unwrap_or(0);
    let Some(body) = rest.get(..declared) else { return Ok(Examined::Incomplete) };
    let generation = match endpoint {
        openai::Endpoint::Chat => openai::parse_chat(body)?,
        openai::Endpoint::Completion => openai::parse_completion(body)?,
    };
    Ok(Examined::Generation(generation.line(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str, body: &str) -> Vec<u8> {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_bytes()
    }

    #[test]
    fn a_chat_request_becomes_its_machine_line() {
        let bytes =
            post("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#);
        let Ok(Examined::Generation(line)) = examine(&bytes, &DEFAULT_LIMITS) else {
            panic!("not a generation")
        };
        assert!(line.ends_with('\r'));
        let request: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(request["op"], "generate");
        assert_eq!(request["max_tokens"], 3);
        assert_eq!(request["messages"][0]["content"], "hi");
        // The same bytes cut short anywhere are incomplete, never an error.
        for end in 0..bytes.len() {
            assert_eq!(examine(&bytes[..end], &DEFAULT_LIMITS), Ok(Examined::Incomplete), "cut at {end}");
        }
    }

    #[test]
    fn heads_past_the_limits_are_refused_with_their_status() {
        let limits = Limits { max_head: 256, max_headers: 4, max_body: 100 };
        let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(300));
        assert_eq!(read_head(huge.as_bytes(), &limits).unwrap_err().status, 431);
        let many = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
        assert_eq!(read_head(many.as_bytes(), &limits).unwrap_err().status, 431);
        let hundreds = format!("GET / HTTP/1.1\r\n{}\r\n", "A: 1\r\n".repeat(200));
        assert_eq!(read_head(hundreds.as_bytes(), &DEFAULT_LIMITS).unwrap_err().status, 431);
        let big_body = "POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        let error = read_head(big_body.as_bytes(), &limits).unwrap_err();
        assert_eq!((error.status, error.code), (413, Some("request_too_large")));
        let exact = "POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(read_head(exact.as_bytes(), &limits).unwrap().unwrap().content_length, Some(100));
    }

    #[test]
    fn malformed_heads_and_ambiguous_framing_are_400() {
        for head in [
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "\x01\x02 / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let error = read_head(head.as_bytes(), &DEFAULT_LIMITS).unwrap_err();
            assert_eq!((error.status, error.code), (400, Some("invalid_http")), "{head:?}");
        }
    }

    #[test]
    fn a_refusal_is_a_whole_answer_that_closes() {
        let answer = String::from_utf8(error_answer(&timed_out("head", 10))).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{head}");
        assert!(
            head.contains("connection: close") && head.contains(&format!("content-length: {}", body.len()))
        );
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["error"]["code"], "request_timeout");
    }

    #[test]
    fn other_routes_and_invalid_bodies() {
        let get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(examine(get, &DEFAULT_LIMITS), Ok(Examined::Other(head)) if head.method == "GET"));
        let invalid = post("/v1/chat/completions", "{not json");
        assert_eq!(examine(&invalid, &DEFAULT_LIMITS).unwrap_err().code, Some("invalid_json"));
        let prompt = post("/v1/completions", r#"{"prompt":"Once","stop":"x"}"#);
        assert!(
            matches!(examine(&prompt, &DEFAULT_LIMITS), Ok(Examined::Generation(line)) if line.contains("\"stop\":[\"x\"]"))
        );
    }
}
