//! `tessera.cfg`: a small `key = value` file at the root of the card that adjusts the kernel
//! (lowering the weights budget, so two models need not fit; limiting the LLM arena, as a
//! smaller board would have it; the KV quota of one request; the console UART's hardware flow
//! control; a memory-bandwidth cap).

#![forbid(unsafe_code)]

use crate::hil::{Console, FlowControl};
use alloc::{string::String, vec::Vec};
use core::fmt;

/// The file's path on the card.
pub const CONFIG_PATH: &str = "/tessera.cfg";

/// Settings read from `tessera.cfg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CardConfig {
    /// Most bytes of model weights held at once (the board's budget when absent).
    pub weights_budget: Option<u64>,
    /// Most positions (prompt plus answer) one request's KV may hold (the server's default
    /// when absent).
    pub kv_quota_tokens: Option<usize>,
    /// `uart_flow_control = rts_cts | none`: the console line's hardware flow control (none
    /// when absent).
    pub uart_flow_control: Option<FlowControl>,
    /// `arena_limit_mib = N`: the most of the LLM arena to use, in bytes (the rest is set
    /// aside at boot, as if the board had less RAM); the whole arena when absent.
    pub arena_limit: Option<u64>,
    /// The most MB/s (10^6 bytes per second) forward passes may move, sustained
    /// (`bandwidth_cap_mbps`; no cap when absent, 0 or `off`).
    pub bandwidth_cap_mbps: Option<u64>,
    /// `sd_read_faults = N`, a test setting: once the boot model is loaded, each read command
    /// of the SD card fails with probability 1/N, at a random block (the driver's test hook).
    pub sd_read_faults: Option<u32>,
}

/// Bounds of a bandwidth cap in MB/s.
pub const BANDWIDTH_CAP_RANGE: core::ops::RangeInclusive<u64> = 1..=1_000_000;

/// Reads a bandwidth cap in MB/s, as `tessera.cfg` and `/set bandwidth_cap` take it:
/// `Some(None)` for `0` or `off` (no cap), `Some(Some(n))` for a whole number in
/// [`BANDWIDTH_CAP_RANGE`], `None` for anything else.
pub fn parse_bandwidth_cap(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "off" | "0" => Some(None),
        number => number.parse::<u64>().ok().filter(|cap| BANDWIDTH_CAP_RANGE.contains(cap)).map(Some),
    }
}

/// Bounds of `kv_quota_tokens`.
pub const KV_QUOTA_RANGE: core::ops::RangeInclusive<usize> = 16..=1 << 20;

/// A line of the file that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{CONFIG_PATH} line {}: {}", self.line, self.message)
    }
}

/// Parses the file. Blank lines and `#` comments are skipped; unknown keys and bad values are
/// reported and ignored, never fatal.
pub fn parse(text: &str) -> (CardConfig, Vec<ConfigProblem>) {
    let mut config = CardConfig::default();
    let mut problems = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let problem = |message: String| ConfigProblem { line: index + 1, message };
        let Some((key, value)) = line.split_once('=') else {
            problems.push(problem(alloc::format!("expected key = value, got {line:?}")));
            continue;
        };
        match key.trim() {
            "weights_budget_mib" => match value.trim().parse::<u64>() {
                Ok(mib) if (1..=1 << 20).contains(&mib) => config.weights_budget = Some(mib << 20),
                _ => problems.push(problem(alloc::format!(
                    "weights_budget_mib must be a whole number of MiB from 1, got {:?}",
                    value.trim()
                ))),
            },
            "arena_limit_mib" => match value.trim().parse::<u64>() {
                Ok(mib) if (8..=1 << 20).contains(&mib) => config.arena_limit = Some(mib << 20),
                _ => problems.push(problem(alloc::format!(
                    "arena_limit_mib must be a whole number of MiB from 8, got {:?}",
                    value.trim()
                ))),
            },
            "kv_quota_tokens" => match value.trim().parse::<usize>() {
                Ok(tokens) if KV_QUOTA_RANGE.contains(&tokens) => config.kv_quota_tokens = Some(tokens),
                _ => problems.push(problem(alloc::format!(
                    "kv_quota_tokens must be a whole number of tokens from {} to {}, got {:?}",
                    KV_QUOTA_RANGE.start(),
                    KV_QUOTA_RANGE.end(),
                    value.trim()
                ))),
            },
            "uart_flow_control" => match value.trim() {
                "rts_cts" => config.uart_flow_control = Some(FlowControl::RtsCts),
                "none" => config.uart_flow_control = Some(FlowControl::None),
                other => problems.push(problem(alloc::format!(
                    "uart_flow_control must be rts_cts or none, got {other:?}"
                ))),
            },
            "bandwidth_cap_mbps" => match parse_bandwidth_cap(value) {
                Some(cap) => config.bandwidth_cap_mbps = cap,
                None => problems.push(problem(alloc::format!(
                    "bandwidth_cap_mbps must be a whole number of MB/s from 1 to {} (0 or off: no cap), got {:?}",
                    BANDWIDTH_CAP_RANGE.end(),
                    value.trim()
                ))),
            },
            "sd_read_faults" => match value.trim().parse::<u32>() {
                Ok(one_in) if one_in >= 1 => config.sd_read_faults = Some(one_in),
                _ => problems.push(problem(alloc::format!(
                    "sd_read_faults must be a whole number from 1 (one read in N fails), got {:?}",
                    value.trim()
                ))),
            },
            other => problems.push(problem(alloc::format!("unknown key {other:?}"))),
        }
    }
    (config, problems)
}

/// Applies the console settings of `config` to `console`; returns the line to report, if the
/// file set any.
pub fn apply_console_settings(config: &CardConfig, console: &dyn Console) -> Option<String> {
    let flow_control = config.uart_flow_control?;
    Some(match console.set_flow_control(flow_control) {
        Ok(description) => alloc::format!("{CONFIG_PATH}: console {description}"),
        Err(reason) => alloc::format!("{CONFIG_PATH}: uart_flow_control ignored: {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_and_applies_the_uart_flow_control() {
        assert_eq!(parse("uart_flow_control = rts_cts\n").0.uart_flow_control, Some(FlowControl::RtsCts));
        assert_eq!(parse("uart_flow_control=none").0.uart_flow_control, Some(FlowControl::None));
        let (config, problems) = parse("uart_flow_control = xon_xoff\n");
        assert_eq!(config.uart_flow_control, None);
        assert_eq!(
            problems[0].to_string(),
            "/tessera.cfg line 1: uart_flow_control must be rts_cts or none, got \"xon_xoff\""
        );

        /// A console that records the flow control asked for; it has RTS/CTS lines only.
        struct Line(spin::Mutex<Vec<FlowControl>>);
        impl Console for Line {
            fn write_bytes(&self, _: &[u8]) {}
            fn read_byte(&self) -> Option<u8> {
                None
            }
            fn flush(&self) {}
            fn set_flow_control(&self, flow_control: FlowControl) -> Result<&'static str, &'static str> {
                self.0.lock().push(flow_control);
                match flow_control {
                    FlowControl::RtsCts => Ok("RTS/CTS on"),
                    FlowControl::None => Err("wired for RTS/CTS"),
                }
            }
        }
        let line = Line(spin::Mutex::new(Vec::new()));
        assert_eq!(apply_console_settings(&CardConfig::default(), &line), None);
        let rts_cts = CardConfig { uart_flow_control: Some(FlowControl::RtsCts), ..CardConfig::default() };
        assert_eq!(
            apply_console_settings(&rts_cts, &line).as_deref(),
            Some("/tessera.cfg: console RTS/CTS on")
        );
        let none = CardConfig { uart_flow_control: Some(FlowControl::None), ..CardConfig::default() };
        assert_eq!(
            apply_console_settings(&none, &line).as_deref(),
            Some("/tessera.cfg: uart_flow_control ignored: wired for RTS/CTS")
        );
        assert_eq!(*line.0.lock(), [FlowControl::RtsCts, FlowControl::None]);
    }

    #[test]
    fn reads_the_budget_and_reports_the_rest() {
        let (config, problems) =
            parse("# lower budget\nweights_budget_mib = 3\n\nspeed = 11\nnonsense\nweights_budget_mib=0\n");
        assert_eq!(config.weights_budget, Some(3 << 20));
        let lines: Vec<usize> = problems.iter().map(|problem| problem.line).collect();
        assert_eq!(lines, [4, 5, 6]);
        assert_eq!(problems[0].to_string(), "/tessera.cfg line 4: unknown key \"speed\"");
        assert_eq!(parse("").0, CardConfig::default());
    }

    #[test]
    fn reads_the_kv_quota() {
        let (config, problems) = parse("kv_quota_tokens = 256\n");
        assert_eq!(config.kv_quota_tokens, Some(256));
        assert!(problems.is_empty());
        for bad in ["kv_quota_tokens = 8", "kv_quota_tokens = lots", "kv_quota_tokens = -1"] {
            let (config, problems) = parse(bad);
            assert_eq!(config.kv_quota_tokens, None, "{bad}");
            assert_eq!(problems.len(), 1, "{bad}");
            assert!(problems[0].message.starts_with("kv_quota_tokens must be"), "{}", problems[0]);
        }
    }

    #[test]
    fn reads_the_arena_limit() {
        assert_eq!(parse("arena_limit_mib = 24\n").0.arena_limit, Some(24 << 20));
        for bad in ["arena_limit_mib = 4", "arena_limit_mib = half"] {
            let (config, problems) = parse(bad);
            assert_eq!(config.arena_limit, None, "{bad}");
            assert!(problems[0].message.starts_with("arena_limit_mib must be"), "{}", problems[0]);
        }
    }

    #[test]
    fn reads_the_bandwidth_cap() {
        assert_eq!(parse("bandwidth_cap_mbps = 250\n").0.bandwidth_cap_mbps, Some(250));
        for off in ["bandwidth_cap_mbps = 0", "bandwidth_cap_mbps = off"] {
            let (config, problems) = parse(off);
            assert_eq!((config.bandwidth_cap_mbps, problems.len()), (None, 0), "{off}");
        }
        for bad in ["bandwidth_cap_mbps = fast", "bandwidth_cap_mbps = -5", "bandwidth_cap_mbps = 1000001"] {
            let (config, problems) = parse(bad);
            assert_eq!(config.bandwidth_cap_mbps, None, "{bad}");
            assert_eq!(problems.len(), 1, "{bad}");
            assert!(problems[0].message.starts_with("bandwidth_cap_mbps must be"), "{}", problems[0]);
        }
        assert_eq!(parse_bandwidth_cap(" 12 "), Some(Some(12)));
        assert_eq!(parse_bandwidth_cap(""), None);
    }

    #[test]
    fn reads_the_sd_read_faults_test_setting() {
        assert_eq!(parse("sd_read_faults = 4\n").0.sd_read_faults, Some(4));
        for bad in ["sd_read_faults = 0", "sd_read_faults = often"] {
            let (config, problems) = parse(bad);
            assert_eq!(config.sd_read_faults, None, "{bad}");
            assert!(problems[0].message.starts_with("sd_read_faults must be"), "{}", problems[0]);
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in ".{0,200}") {
            let _ = parse(&text);
        }
    }
}
