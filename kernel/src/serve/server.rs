//! The console server: reads lines, answers commands, chats with the active model, and loads
//! models from the card without ever losing the one being served.

#![forbid(unsafe_code)]

use super::{
    MAX_LINE,
    chat::{GenerationSettings, ServedModel, answer},
    library::{list_models, load_model},
    line::{LineEvent, LineReader},
    loader::progress_line,
};
use crate::{
    boot_info::BootInfo,
    fs::Volume,
    hil::{BlockDevice, Clock, Console, ConsoleWriter, Cpus},
    mm::{
        buffer::{BackedMemory, TensorBuffer},
        kv::{KvBlockPool, PagedKv, floats_per_block},
        layout::RegionKind,
    },
};
use alloc::{
    string::{String, ToString},
    vec::Vec,
};
use core::{cell::RefCell, fmt::Write};

/// Positions per KV block.
pub const KV_BLOCK_TOKENS: usize = 16;
/// Most positions one conversation turn may use (its KV quota).
pub const KV_QUOTA_TOKENS: usize = 1024;

/// Facts the board measures that the console reports.
pub trait BoardTelemetry {
    /// Interrupts handled, and the longest time the UART interrupt stayed unserviced (ns).
    fn interrupts(&self) -> (u64, u64);
}

/// Counters of what the server did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStatistics {
    /// Chat turns answered.
    pub turns: u64,
    /// Tokens generated.
    pub tokens: u64,
    /// Nanoseconds spent generating.
    pub generation_ns: u64,
    /// Lines rejected (too long, invalid UTF-8, unknown command).
    pub rejected_lines: u64,
    /// Models loaded.
    pub loads: u64,
    /// Loads that failed (the old model kept serving).
    pub failed_loads: u64,
}

/// Everything the server runs on.
pub struct Server<'a, D: BlockDevice> {
    console: &'a dyn Console,
    clock: &'a dyn Clock,
    cpus: &'a dyn Cpus,
    memory: &'a BackedMemory,
    telemetry: &'a dyn BoardTelemetry,
    info: &'a BootInfo,
    volume: Result<Volume<D>, String>,
    model: Option<ServedModel<TensorBuffer<'a>>>,
    settings: GenerationSettings,
    statistics: ServeStatistics,
}

const HELP: &str = "\
Type a message and press Enter to chat with the active model. Commands:
  /help                 this list
  /models               models on the card (* marks the active one)
  /load FILE            load /models/FILE; the current model serves until it is ready
  /stats                tokens/s, turns, interrupts, errors
  /mem                  memory map with pool usage
  /set NAME VALUE       temperature, top_p, seed or max_tokens
  /reset                generation settings back to their defaults
  /cancel               (while an answer streams) stop it
";

impl<'a, D: BlockDevice> Server<'a, D> {
    /// A server with no model yet. `volume` is the mounted card, or why there is none.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        console: &'a dyn Console,
        clock: &'a dyn Clock,
        cpus: &'a dyn Cpus,
        memory: &'a BackedMemory,
        telemetry: &'a dyn BoardTelemetry,
        info: &'a BootInfo,
        volume: Result<Volume<D>, String>,
    ) -> Self {
        Self {
            console,
            clock,
            cpus,
            memory,
            telemetry,
            info,
            volume,
            model: None,
            settings: GenerationSettings::default(),
            statistics: ServeStatistics::default(),
        }
    }

    fn say(&self, text: &str) {
        self.console.write_bytes(text.as_bytes());
    }

    fn say_line(&self, text: &str) {
        self.say(text);
        self.say("\r\n");
    }

    /// The active model's name.
    pub fn active_model(&self) -> Option<&str> {
        self.model.as_ref().map(|model| model.name.as_str())
    }

    /// Counters so far.
    pub fn statistics(&self) -> ServeStatistics {
        self.statistics
    }

    /// Loads the first model in `/models` (or reports why there is none).
    pub fn load_default(&mut self) {
        let first = match &mut self.volume {
            Ok(volume) => match list_models(volume) {
                Ok(models) => models.into_iter().next().map(|entry| entry.name),
                Err(error) => {
                    let message = alloc::format!("cannot list /models: {error}");
                    self.say_line(&message);
                    return;
                }
            },
            Err(reason) => {
                let message = alloc::format!("no model: {reason}");
                self.say_line(&message);
                return;
            }
        };
        match first {
            Some(name) => self.load(&name),
            None => self.say_line("no model files in /models on the card"),
        }
    }

    /// Loads `/models/NAME` next to the active model and makes it active once it is valid.
    /// On any failure the active model stays.
    pub fn load(&mut self, name: &str) {
        let (console, clock) = (self.console, self.clock);
        let Ok(volume) = &mut self.volume else {
            let message = alloc::format!("cannot load {name}: no card");
            self.say_line(&message);
            return;
        };
        let started = clock.now_ns();
        let mut last_drawn = 0;
        let result = load_model(volume, self.memory, name, |done, total| {
            let now = clock.now_ns();
            if done == total || now - last_drawn > 200_000_000 {
                last_drawn = now;
                console.write_bytes(progress_line(name, done, total, now - started).as_bytes());
            }
        });
        self.say("\r\n");
        match result {
            Ok(model) => {
                let message = alloc::format!(
                    "loaded {} ({} MiB, validated){}",
                    model.name,
                    model.size() >> 20,
                    self.model
                        .as_ref()
                        .map(|old| alloc::format!("; replaces {}", old.name))
                        .unwrap_or_default()
                );
                // The old model's weights buffer is freed here, after the new one is ready.
                self.model = Some(model);
                self.statistics.loads += 1;
                self.say_line(&message);
            }
            Err(error) => {
                self.statistics.failed_loads += 1;
                let keeping = self
                    .active_model()
                    .map(|name| alloc::format!("; still serving {name}"))
                    .unwrap_or_default();
                let message = alloc::format!("error: cannot load {name}: {error}{keeping}");
                self.say_line(&message);
            }
        }
    }

    /// Handles one complete line.
    pub fn handle_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let Some(command) = line.strip_prefix('/') else {
            self.chat(line);
            return;
        };
        let (name, argument) =
            command.split_once(' ').map_or((command, ""), |(name, rest)| (name, rest.trim()));
        match name {
            "help" => self.say(&HELP.replace('\n', "\r\n")),
            "models" => self.list(),
            "load" if !argument.is_empty() => self.load(argument),
            "load" => self.say_line("usage: /load FILE (see /models)"),
            "stats" => {
                let report = self.stats_report();
                self.say(&report);
            }
            "mem" => {
                let report = alloc::format!("{}", self.memory.memory().report()).replace('\n', "\r\n");
                self.say(&report);
            }
            "set" => self.set(argument),
            "reset" => {
                self.settings = GenerationSettings::default();
                self.say_line("settings reset");
            }
            "cancel" => self.say_line("nothing to cancel"),
            _ => {
                self.statistics.rejected_lines += 1;
                let message = alloc::format!("error: unknown command /{name} (try /help)");
                self.say_line(&message);
            }
        }
    }

    fn list(&mut self) {
        let active = self.active_model().map(str::to_string);
        let listing = match &mut self.volume {
            Err(reason) => alloc::format!("no card: {reason}\r\n"),
            Ok(volume) => match list_models(volume) {
                Err(error) => alloc::format!("error: {error}\r\n"),
                Ok(models) if models.is_empty() => "no model files in /models\r\n".to_string(),
                Ok(models) => models.iter().fold(String::new(), |mut text, entry| {
                    let mark = if active.as_deref() == Some(entry.name.as_str()) { "*" } else { " " };
                    let _ = write!(
                        text,
                        "{mark} {:<40} {:>8.1} MiB\r\n",
                        entry.name,
                        entry.size as f64 / 1048576.0
                    );
                    text
                }),
            },
        };
        self.say(&listing);
    }

    fn set(&mut self, argument: &str) {
        let (name, value) =
            argument.split_once(' ').map_or((argument, ""), |(name, value)| (name, value.trim()));
        let settings = &mut self.settings;
        let outcome = match name {
            "temperature" => value
                .parse::<f32>()
                .ok()
                .filter(|v| (0.0..=5.0).contains(v))
                .map(|v| settings.temperature = v),
            "top_p" => {
                value.parse::<f32>().ok().filter(|v| *v > 0.0 && *v <= 1.0).map(|v| settings.top_p = v)
            }
            "seed" => value.parse::<u64>().ok().map(|v| settings.seed = v),
            "max_tokens" => value
                .parse::<usize>()
                .ok()
                .filter(|v| (1..=4096).contains(v))
                .map(|v| settings.max_tokens = v),
            _ => None,
        };
        let message = match outcome {
            Some(()) => alloc::format!("{name} = {value}"),
            None => {
                self.statistics.rejected_lines += 1;
                alloc::format!(
                    "error: /set takes temperature 0-5, top_p (0,1], seed N or max_tokens 1-4096; got {argument:?}"
                )
            }
        };
        self.say_line(&message);
    }

    fn stats_report(&self) -> String {
        let statistics = &self.statistics;
        let rate = if statistics.generation_ns == 0 {
            0.0
        } else {
            statistics.tokens as f64 / (statistics.generation_ns as f64 / 1e9)
        };
        let (interrupts, unserviced_ns) = self.telemetry.interrupts();
        let mut text = String::new();
        let _ = write!(
            text,
            "model        {}\r\nturns        {}\r\ntokens       {} ({rate:.2} tokens/s on {} cores)\r\n\
             loads        {} ok, {} failed (old model kept)\r\nrejected     {} lines\r\n\
             interrupts   {interrupts} handled; longest unserviced {:.3} ms (a 16-byte FIFO fills in 1.39 ms)\r\n",
            self.active_model().unwrap_or("(none)"),
            statistics.turns,
            statistics.tokens,
            self.cpus.count(),
            statistics.loads,
            statistics.failed_loads,
            statistics.rejected_lines,
            unserviced_ns as f64 / 1e6,
        );
        text
    }

    fn chat(&mut self, prompt: &str) {
        let Some(model) = &self.model else {
            self.say_line("error: no model is loaded (see /models and /load)");
            return;
        };
        let view = match model.view() {
            Ok(view) => view,
            Err(error) => {
                let message = alloc::format!("error: {error}");
                self.say_line(&message);
                return;
            }
        };
        let config = *view.file.config();
        let block_floats = floats_per_block(KV_BLOCK_TOKENS, config.kv_dim());
        let kv_region = self.info.plan.region(RegionKind::KvCache).size as usize;
        let pool = match KvBlockPool::new(self.memory, block_floats, kv_region / (block_floats * 4)) {
            Ok(pool) => pool,
            Err(error) => {
                let message = alloc::format!("error: KV cache: {error}");
                self.say_line(&message);
                return;
            }
        };
        let capacity = config.context_length.min(KV_QUOTA_TOKENS);
        let Some(mut kv) = PagedKv::new(&pool, config.layers, config.kv_dim(), KV_BLOCK_TOKENS, capacity)
        else {
            self.say_line("error: KV cache shape");
            return;
        };
        // Lines typed while the answer streams: /cancel stops it, /stats is answered at once,
        // anything else waits for the end of the answer.
        let typed = RefCell::new((LineReader::<MAX_LINE>::new(), false, Vec::<String>::new()));
        let console = self.console;
        let started = self.clock.now_ns();
        let result = answer(
            &view,
            &mut kv,
            self.cpus,
            prompt,
            &self.settings,
            |text| console.write_bytes(text.as_bytes()),
            || {
                let mut typed = typed.borrow_mut();
                while let Some(byte) = console.read_byte() {
                    let (reader, cancel, later) = &mut *typed;
                    if let LineEvent::Line(line) = reader.push(byte) {
                        match line.trim() {
                            "/cancel" => *cancel = true,
                            other => later.push(other.to_string()),
                        }
                    }
                }
                typed.1
            },
        );
        let elapsed = self.clock.now_ns() - started;
        match result {
            Ok(turn) => {
                self.statistics.turns += 1;
                self.statistics.tokens += turn.generated_tokens as u64;
                self.statistics.generation_ns += elapsed;
                let rate = turn.generated_tokens as f64 / (elapsed as f64 / 1e9).max(1e-9);
                let message = alloc::format!(
                    "\r\n[{} prompt + {} generated tokens, {rate:.2} tokens/s{}]",
                    turn.prompt_tokens,
                    turn.generated_tokens,
                    if turn.cancelled { ", cancelled" } else { "" }
                );
                self.say_line(&message);
            }
            Err(error) => {
                let message = alloc::format!("\r\nerror: {error}");
                self.say_line(&message);
            }
        }
        drop(kv);
        drop(pool);
        let (_, _, later) = typed.into_inner();
        for line in later {
            self.handle_line(&line);
        }
    }

    /// Serves forever: a `> ` prompt, then each line. `relax` is called when no input waits.
    pub fn run(mut self, relax: impl Fn()) -> ! {
        let mut out = ConsoleWriter(self.console);
        let _ = write!(out, "Type /help for commands.\r\n> ");
        let mut reader = LineReader::<MAX_LINE>::new();
        loop {
            let Some(byte) = self.console.read_byte() else {
                relax();
                continue;
            };
            match reader.push(byte) {
                LineEvent::Pending => {}
                LineEvent::Echo(bytes) => self.console.write_bytes(bytes),
                LineEvent::Line(text) => {
                    let line = text.to_string();
                    self.say("\r\n");
                    self.handle_line(&line);
                    self.say("> ");
                }
                LineEvent::Error(error) => {
                    self.statistics.rejected_lines += 1;
                    let message = alloc::format!("\r\nerror: {error}\r\n> ");
                    self.say(&message);
                }
            }
        }
    }
}
