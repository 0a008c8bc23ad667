//! The gateway's counters and histograms, and `/metrics` in Prometheus' text format: requests
//! by endpoint and status, tokens, time to first token and tokens/s histograms, the queue depth,
//! and every memory pool the board's `mem` record reports.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A cumulative histogram over fixed bucket bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// Bounds of the time-to-first-token histogram, in seconds (QEMU's SmolLM2 takes seconds).
const FIRST_TOKEN_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Bounds of the tokens-per-second histogram.
const RATE_BOUNDS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// What the gateway counted since it started.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: BTreeMap<(String, u16), u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cancelled: u64,
    first_token_seconds: Histogram,
    tokens_per_second: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Self {
            requests: BTreeMap::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cancelled: 0,
            first_token_seconds: Histogram::new(FIRST_TOKEN_BOUNDS),
            tokens_per_second: Histogram::new(RATE_BOUNDS),
        }
    }

    /// Counts a request to `endpoint` answered with `status`.
    pub fn count_request(&mut self, endpoint: &str, status: u16) {
        *self.requests.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// Counts a finished generation: its tokens, time to first token (board clock, ms) and
    /// decode rate.
    pub fn count_generation(
        &mut self,
        prompt_tokens: u64,
        completion_tokens: u64,
        first_token_ms: f64,
        rate: f64,
    ) {
        self.prompt_tokens += prompt_tokens;
        self.completion_tokens += completion_tokens;
        if completion_tokens > 0 {
            self.first_token_seconds.observe(first_token_ms / 1000.0);
            self.tokens_per_second.observe(rate);
        }
    }

    /// Counts a generation cancelled because its client went away.
    pub fn count_cancel(&mut self) {
        self.cancelled += 1;
    }

    /// The Prometheus text: these counts, the board's state and queue depth, and the pools of
    /// its `mem` record when the board answered one.
    pub fn render(&self, board: &BoardGauges, mem: Option<&Value>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tessera_requests_total HTTP requests by endpoint and status.\n# TYPE tessera_requests_total counter"
        );
        for ((endpoint, status), count) in &self.requests {
            let _ = writeln!(
                out,
                "tessera_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tessera_tokens_total Tokens of finished generations.\n# TYPE tessera_tokens_total counter\n\
             tessera_tokens_total{{kind=\"prompt\"}} {}\ntessera_tokens_total{{kind=\"completion\"}} {}",
            self.prompt_tokens, self.completion_tokens
        );
        let _ = writeln!(
            out,
            "# HELP tessera_client_cancels_total Generations cancelled on the board because their client went away.\n\
             # TYPE tessera_client_cancels_total counter\ntessera_client_cancels_total {}",
            self.cancelled
        );
        self.first_token_seconds.render(
            &mut out,
            "tessera_time_to_first_token_seconds",
            "From arrival on the board to the first token.",
        );
        self.tokens_per_second.render(
            &mut out,
            "tessera_tokens_per_second",
            "Generated tokens per second of each answer.",
        );
        let _ = writeln!(
            out,
            "# HELP tessera_queue_depth Generations sent to the board and not yet ended.\n# TYPE tessera_queue_depth gauge\n\
             tessera_queue_depth {}\n\
             # HELP tessera_board_up Whether the board serves.\n# TYPE tessera_board_up gauge\ntessera_board_up {}\n\
             # HELP tessera_board_connections_total Times the link to the board came up.\n\
             # TYPE tessera_board_connections_total counter\ntessera_board_connections_total {}\n\
             # HELP tessera_board_cancels_total Generations the board confirmed it cancelled.\n\
             # TYPE tessera_board_cancels_total counter\ntessera_board_cancels_total {}",
            board.queue_depth,
            u8::from(board.up),
            board.connections,
            board.confirmed_cancels
        );
        if let Some(mem) = mem {
            render_memory(&mut out, mem);
        }
        out
    }
}

/// The board's state as `/metrics` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoardGauges {
    /// Whether it serves.
    pub up: bool,
    /// Generations in flight.
    pub queue_depth: usize,
    /// Times the link came up.
    pub connections: u64,
    /// Generations the board confirmed it cancelled.
    pub confirmed_cancels: u64,
}

/// Every pool of a `mem` record (capacity, live and peak bytes, allocations, failures), the
/// heap and the arena, as gauges labelled by pool.
fn render_memory(out: &mut String, mem: &Value) {
    let pools = mem.get("pools").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut rows: Vec<(String, &Value)> =
        pools.iter().map(|pool| (pool["kind"].as_str().unwrap_or("unknown").to_string(), pool)).collect();
    if let Some(heap) = mem.get("heap") {
        rows.push(("heap".into(), heap));
    }
    for (field, help) in [
        ("capacity_bytes", "Bytes the pool manages."),
        ("live_bytes", "Bytes held by live allocations."),
        ("peak_bytes", "The most bytes held at once."),
        ("allocations", "Allocations since boot."),
        ("failures", "Allocations refused since boot."),
    ] {
        let name = format!("tessera_pool_{field}");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (kind, pool) in &rows {
            if let Some(value) = pool.get(field).and_then(Value::as_u64) {
                let _ = writeln!(out, "{name}{{pool=\"{kind}\"}} {value}");
            }
        }
    }
    if let Some(arena) = mem.get("arena").and_then(Value::as_object) {
        let _ = writeln!(
            out,
            "# HELP tessera_arena_bytes The LLM arena's figures.\n# TYPE tessera_arena_bytes gauge"
        );
        for (field, value) in arena {
            if let Some(value) = value.as_u64() {
                let _ = writeln!(
                    out,
                    "tessera_arena_bytes{{figure=\"{}\"}} {value}",
                    field.trim_end_matches("_bytes")
                );
            }
        }
    }
    if let Some(ram) = mem.get("ram_bytes").and_then(Value::as_u64) {
        let _ = writeln!(
            out,
            "# HELP tessera_ram_bytes The board's RAM.\n# TYPE tessera_ram_bytes gauge\ntessera_ram_bytes {ram}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn histograms_are_cumulative() {
        let mut histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.5, 9.0, f64::NAN] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert!(
            out.contains(
                "h_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 11\nh_count 3"
            ),
            "{out}"
        );
    }

    #[test]
    fn the_text_has_every_family_and_every_pool() {
        let mut metrics = Metrics::new();
        metrics.count_request("/v1/chat/completions", 200);
        metrics.count_request("/v1/chat/completions", 200);
        metrics.count_request("/v1/completions", 400);
        metrics.count_generation(5, 7, 250.0, 12.0);
        metrics.count_cancel();
        let mem = json!({
            "ram_bytes": 1000,
            "pools": [
                {"kind": "weights", "capacity_bytes": 10, "live_bytes": 4, "peak_bytes": 6, "allocations": 2, "failures": 0},
                {"kind": "kv", "capacity_bytes": 20, "live_bytes": 0, "peak_bytes": 8, "allocations": 9, "failures": 1}
            ],
            "heap": {"capacity_bytes": 30, "live_bytes": 3, "peak_bytes": 5, "allocations": 4},
            "arena": {"capacity_bytes": 900, "free_bytes": 500}
        });
        let text = metrics.render(
            &BoardGauges { up: true, queue_depth: 3, connections: 1, confirmed_cancels: 2 },
            Some(&mem),
        );
        for line in [
            "tessera_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
            "tessera_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1",
            "tessera_tokens_total{kind=\"completion\"} 7",
            "tessera_time_to_first_token_seconds_bucket{le=\"0.25\"} 1",
            "tessera_tokens_per_second_bucket{le=\"10\"} 0",
            "tessera_tokens_per_second_count 1",
            "tessera_queue_depth 3",
            "tessera_board_up 1",
            "tessera_client_cancels_total 1",
            "tessera_board_cancels_total 2",
            "tessera_pool_capacity_bytes{pool=\"weights\"} 10",
            "tessera_pool_peak_bytes{pool=\"kv\"} 8",
            "tessera_pool_failures{pool=\"kv\"} 1",
            "tessera_pool_live_bytes{pool=\"heap\"} 3",
            "tessera_arena_bytes{figure=\"free\"} 500",
            "tessera_ram_bytes 1000",
        ] {
            assert!(text.lines().any(|candidate| candidate == line), "missing {line} in\n{text}");
        }
        assert!(!metrics.render(&BoardGauges::default(), None).contains("tessera_pool_"));
    }
}
