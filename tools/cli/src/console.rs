//! `tessera console`: a host client for Tessera's machine mode. It talks JSON lines to the
//! unikernel over QEMU's serial socket or a real serial device, turns each line you type into
//! a generate request, and prints the answer as its tokens stream in.

use serde_json::{Value, json};
use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    sync::mpsc,
    thread,
    time::Duration,
};

/// What the reader thread tells the main loop.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// A piece of text of request `id`.
    Token(u64, String),
    /// Request `id` finished: usage and timings as text.
    Done(u64, String),
    /// Request `id` (or an unidentifiable one) failed.
    Error(Option<u64>, String),
    /// A free-form answer (stats, models) to request `id`.
    Info(u64, String),
}

/// Reads one line of the unikernel's output as a machine-mode record, if it is one. Other
/// lines (the banner, prompts, echoes) are not records.
pub fn parse_record(line: &str) -> Option<Reply> {
    let start = line.find("{\"id\":")?;
    let value: Value = serde_json::from_str(line[start..].trim_end()).ok()?;
    let id = value.get("id")?.as_u64();
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    match value.get("event")?.as_str()? {
        "token" => Some(Reply::Token(id?, text("text"))),
        "info" => Some(Reply::Info(id?, text("text"))),
        "error" => Some(Reply::Error(id, text("message"))),
        "loaded" => Some(Reply::Info(id?, format!("loaded {}", text("model")))),
        "models" => {
            let active = value.get("active").and_then(Value::as_str);
            let listing = value.get("models").and_then(Value::as_array).into_iter().flatten().fold(
                String::new(),
                |mut listing, entry| {
                    let name = entry.get("name").and_then(Value::as_str).unwrap_or_default();
                    let mark = if Some(name) == active { '*' } else { ' ' };
                    listing.push_str(&format!("{mark} {name}\n"));
                    listing
                },
            );
            Some(Reply::Info(id?, listing.trim_end().to_string()))
        }
        "done" => {
            let usage = &value["usage"];
            let timings = &value["timings"];
            Some(Reply::Done(
                id?,
                format!(
                    "[{}: {} prompt + {} generated tokens, first token {:.0} ms, {:.2} tokens/s, {}]",
                    value["model"].as_str().unwrap_or("?"),
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                    timings["first_token_ms"].as_f64().unwrap_or(0.0),
                    timings["tokens_per_second"].as_f64().unwrap_or(0.0),
                    value["finish"].as_str().unwrap_or("?"),
                ),
            ))
        }
        _ => None,
    }
}

/// The request line for what the user typed: `/stats` and `/models` map to their machine-mode
/// operations, anything else is a message to generate an answer for.
pub fn request_for(id: u64, typed: &str, max_tokens: usize) -> String {
    let request = match typed.trim() {
        "/stats" => json!({"id": id, "op": "stats"}),
        "/models" => json!({"id": id, "op": "models"}),
        message => json!({"id": id, "op": "generate", "prompt": message, "max_tokens": max_tokens}),
    };
    format!("{request}\r")
}

/// Runs the client over `link` (read and write halves): each of `inputs` becomes a request;
/// replies are printed to `out` as they arrive; returns when every request has ended.
pub fn converse(
    reader: impl Read + Send + 'static,
    mut writer: impl Write,
    inputs: impl Iterator<Item = String>,
    max_tokens: usize,
    out: &mut impl Write,
    timeout: Duration,
) -> Result<(), String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            if let Some(reply) = parse_record(&String::from_utf8_lossy(&line))
                && sender.send(reply).is_err()
            {
                break;
            }
        }
    });
    for (index, typed) in inputs.enumerate() {
        if typed.trim().is_empty() {
            continue;
        }
        let id = index as u64 + 1;
        writer
            .write_all(request_for(id, &typed, max_tokens).as_bytes())
            .and_then(|()| writer.flush())
            .map_err(|error| format!("sending to the unikernel: {error}"))?;
        loop {
            let reply = receiver
                .recv_timeout(timeout)
                .map_err(|_| format!("no answer to request {id} within {} s", timeout.as_secs()))?;
            let (line, finished) = match reply {
                Reply::Token(reply_id, text) if reply_id == id => (text, false),
                Reply::Done(reply_id, summary) if reply_id == id => (format!("\n{summary}\n"), true),
                Reply::Info(reply_id, text) if reply_id == id => (format!("{text}\n"), true),
                Reply::Error(reply_id, message) if reply_id.is_none_or(|reply_id| reply_id == id) => {
                    (format!("error: {message}\n"), true)
                }
                _ => continue,
            };
            out.write_all(line.as_bytes()).and_then(|()| out.flush()).map_err(|error| error.to_string())?;
            if finished {
                break;
            }
        }
    }
    Ok(())
}

/// The two halves of a link to the unikernel.
pub type Link = (Box<dyn Read + Send>, Box<dyn Write + Send>);

/// Connects to `socket` (QEMU's `-serial unix:PATH,server`) or opens `device` (a serial port
/// already set to 115200 8N1, e.g. with `stty -F /dev/ttyUSB0 115200 raw -echo`).
pub fn connect(socket: Option<&Path>, device: Option<&Path>) -> Result<Link, String> {
    match (socket, device) {
        (Some(path), None) => {
            let stream = std::os::unix::net::UnixStream::connect(path)
                .map_err(|error| format!("cannot connect to {}: {error}", path.display()))?;
            let writer = stream.try_clone().map_err(|error| error.to_string())?;
            Ok((Box::new(stream), Box::new(writer)))
        }
        (None, Some(path)) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
            let writer = file.try_clone().map_err(|error| error.to_string())?;
            Ok((Box::new(file), Box::new(writer)))
        }
        _ => Err("give exactly one of --socket PATH or --device PATH".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn records_parse_and_other_lines_do_not() {
        assert_eq!(
            parse_record("{\"id\":3,\"event\":\"token\",\"text\":\"Paris\"}\r"),
            Some(Reply::Token(3, "Paris".into()))
        );
        assert_eq!(
            parse_record("> {\"id\":4,\"event\":\"info\",\"text\":\"x\"}"),
            Some(Reply::Info(4, "x".into()))
        );
        assert_eq!(
            parse_record("{\"id\":null,\"event\":\"error\",\"message\":\"m\"}"),
            Some(Reply::Error(None, "m".into()))
        );
        assert_eq!(
            parse_record(
                r#"{"id":5,"event":"models","active":"b.gguf","models":[{"name":"a.gguf","bytes":1},{"name":"b.gguf","bytes":2}]}"#
            ),
            Some(Reply::Info(5, "  a.gguf\n* b.gguf".into()))
        );
        assert_eq!(
            parse_record(r#"{"id":6,"event":"loaded","model":"b.gguf"}"#),
            Some(Reply::Info(6, "loaded b.gguf".into()))
        );
        assert_eq!(parse_record("Tessera 0.1.0 - LLM inference unikernel"), None);
        assert_eq!(parse_record("{\"id\":1,\"op\":\"generate\"}"), None, "an echoed request is not a record");
        assert!(request_for(7, "/stats", 5).contains("\"op\":\"stats\""));
        let generate: Value = serde_json::from_str(request_for(8, "say \"hi\"", 5).trim_end()).unwrap();
        assert_eq!(generate["prompt"], "say \"hi\"");
        assert_eq!(generate["max_tokens"], 5);
    }

    #[test]
    fn converses_with_a_peer_speaking_the_protocol() {
        let (client, server) = UnixStream::pair().unwrap();
        // The peer: answers each request line as the unikernel would.
        let peer = thread::spawn(move || {
            let mut writer = server.try_clone().unwrap();
            let mut lines = BufReader::new(server).split(b'\r');
            writeln!(writer, "Type /help for commands").unwrap();
            for expected_id in 1..=2 {
                let line = lines.next().unwrap().unwrap();
                let request: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(request["id"], expected_id);
                write!(writer, "{{\"id\":{expected_id},\"event\":\"token\",\"text\":\"Par\"}}\r\n").unwrap();
                write!(writer, "{{\"id\":{expected_id},\"event\":\"token\",\"text\":\"is\"}}\r\n").unwrap();
                write!(
                    writer,
                    "{{\"id\":{expected_id},\"event\":\"done\",\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":2}},\
                     \"timings\":{{\"first_token_ms\":5.0,\"total_ms\":9.0,\"tokens_per_second\":2.0}},\
                     \"finish\":\"stop\",\"model\":\"m.gguf\"}}\r\n"
                )
                .unwrap();
            }
        });
        let mut printed = Vec::new();
        let inputs = ["capital of France?".to_string(), "again".to_string()].into_iter();
        converse(client.try_clone().unwrap(), client, inputs, 16, &mut printed, Duration::from_secs(10))
            .unwrap();
        peer.join().unwrap();
        let text = String::from_utf8(printed).unwrap();
        assert_eq!(text.matches("Paris\n[m.gguf: 3 prompt + 2 generated tokens").count(), 2, "{text}");
    }
}
