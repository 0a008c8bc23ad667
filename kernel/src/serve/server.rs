//! The console server: reads lines, answers commands, chats with the active model, and loads
//! models from the card without ever losing the one being served.

#![forbid(unsafe_code)]

use super::{
    chat::{Generation, GenerationSettings, ServedModel, Step},
    config::{self, CardConfig},
    desk::{CancelRequest, ControlDesk, Input, ServingCpus},
    governor::{Governor, MemoryStatistics, SERVER_BANDWIDTH, step_traffic},
    library::{StagedLoad, list_models, load_model},
    loader::progress_line,
    pressure::WeightsEvictor,
    protocol::{self, Event, Operation, Timings, Usage},
    retire::Retired,
    scheduler::{BatchRelief, Preemptor, Scheduled, SlotStep},
};
use crate::{
    boot_info::BootInfo,
    fs::Volume,
    hil::{BlockDevice, Clock, Console, Cpus, SingleCpu},
    mm::{
        buffer::{BackedMemory, TensorBuffer},
        kv::{KvBlockPool, PagedKv, blocks_in_region, floats_per_block},
        layout::RegionKind,
    },
    telemetry::{self, ByteRate, EventKind, PressureLevel, ShortName, TRACE},
};
use alloc::{
    collections::VecDeque,
    string::{String, ToString},
    sync::Arc,
    vec::Vec,
};
use core::fmt::Write;

/// Positions per KV block.
pub const KV_BLOCK_TOKENS: usize = 16;
/// Most positions one conversation turn may use (its KV quota) unless `tessera.cfg` sets
/// `kv_quota_tokens`.
pub const KV_QUOTA_TOKENS: usize = 1024;

/// Facts the board measures that the console reports.
pub trait BoardTelemetry {
    /// Interrupts handled, and the longest time the UART interrupt stayed unserviced (ns).
    fn interrupts(&self) -> (u64, u64);
}

/// Who asked for a generation, and so how its answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A person in line mode: text streams as it is.
    Human,
    /// A machine-mode request with this id: JSON records.
    Machine(u64),
}

/// A generation waiting for a place in the batch.
struct Pending {
    origin: Origin,
    prompt: String,
    settings: GenerationSettings,
    arrived_ns: u64,
}

/// A running sequence of the batch: ranked by arrival, the earliest preempted last.
impl<'w, 'f, 'p, 'm> Scheduled<'w, 'f, 'p, 'm>
    for (Pending, Generation<'w, 'f, PagedKv<'p, 'm>>, Option<u64>)
{
    fn generation(&self) -> &Generation<'w, 'f, PagedKv<'p, 'm>> {
        &self.1
    }

    fn generation_mut(&mut self) -> &mut Generation<'w, 'f, PagedKv<'p, 'm>> {
        &mut self.1
    }

    fn priority(&self) -> u64 {
        self.0.arrived_ns
    }
}

/// The model being served, shared with the batches that use it (a batch keeps the model it
/// started with; the weights are freed when the last holder lets go).
type Shared<'a> = Arc<ServedModel<TensorBuffer<'a>>>;

/// Counters of what the server did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeStatistics {
    /// Chat turns answered.
    pub turns: u64,
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
    model: Option<Shared<'a>>,
    settings: GenerationSettings,
    statistics: ServeStatistics,
    pending: VecDeque<Pending>,
    cancels: Vec<Origin>,
    desk: ControlDesk,
    in_batch: bool,
    staging: Option<StagedLoad<'a>>,
    card_config: CardConfig,
    /// The KV block pool, kept across batches so cached prompt prefixes outlive requests, with
    /// the block size (in floats) it was made for.
    kv_pool: Option<(usize, Arc<KvBlockPool<'a>>)>,
    /// Gaps between rounds of tokens while a background load ran, in ns.
    swap_gaps: Vec<u64>,
    /// The most recent [`RECENT_GAPS`] gaps between rounds, less any load or swap work done in
    /// them, in ns.
    recent_gaps: VecDeque<u64>,
    /// The last swap's pause: longest gap minus median gap during the load, in ns.
    last_swap_pause_ns: Option<(u64, u64)>,
    /// The board clock when the first token since power-on was generated (boot to first
    /// token: the generic timer starts at zero with the board).
    first_token_since_boot_ns: Option<u64>,
    /// Bandwidth, throttle and memory pressure (see [`Governor`]).
    governor: Governor<'a>,
    /// The hook that frees unused model weights under memory pressure, if one is set.
    weights_evictor: Option<alloc::boxed::Box<dyn WeightsEvictor + 'a>>,
    /// Models replaced by a swap, freed a piece at a time between tokens.
    retired: Retired<TensorBuffer<'a>>,
}

/// Least time a background load may work between two rounds of tokens, in ns.
pub const STAGE_SLICE_NS: u64 = 250_000;

/// Gaps between rounds (less their load or swap work) that the swap pause's median is taken
/// over: the most recent ones, since a gap grows with the sequence's length.
pub const RECENT_GAPS: usize = 16;

/// A background load may also take up to this fraction (1/N) of the median gap between rounds,
/// so a slow model (seconds per token) still loads in a reasonable number of tokens.
pub const STAGE_SLICE_FRACTION: u64 = 8;

/// Time a background load works per call while nothing is generating, in ns (the console is
/// polled between calls).
pub const STAGE_IDLE_SLICE_NS: u64 = 20_000_000;

/// Most requests waiting or running at once; more are refused with an error.
pub const MAX_REQUESTS: usize = 16;

const HELP: &str = "\
Type a message and press Enter to chat with the active model. Commands:
  /help                 this list
  /models               models on the card (* marks the active one)
  /load FILE            load /models/FILE; the current model serves until it is ready
  /stats                tokens/s, turns, interrupts, errors
  /mem                  memory map with pool usage
  /trace                recent events: loads, swaps, requests, slow commands
  /set NAME VALUE       temperature, top_p, seed or max_tokens
  /reset                generation settings back to their defaults
  /bench                decode speed of the active model on one core and on all cores
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
            pending: VecDeque::new(),
            cancels: Vec::new(),
            desk: ControlDesk::new(),
            in_batch: false,
            staging: None,
            card_config: CardConfig::default(),
            kv_pool: None,
            swap_gaps: Vec::new(),
            recent_gaps: VecDeque::new(),
            last_swap_pause_ns: None,
            first_token_since_boot_ns: None,
            governor: Governor::new(clock, SERVER_BANDWIDTH),
            weights_evictor: None,
            retired: Retired::default(),
        }
    }

    /// Sets the hook the memory-pressure manager calls to evict model weights nothing uses.
    pub fn set_weights_evictor(&mut self, evictor: alloc::boxed::Box<dyn WeightsEvictor + 'a>) {
        self.weights_evictor = Some(evictor);
    }

    /// Counts an action of the memory-pressure manager (`/stats`) and traces it (`/trace`).
    fn pressure_action(&self, level: PressureLevel) {
        self.desk.counters().record_pressure(level);
        telemetry::record(EventKind::PressureAction { level });
    }

    /// Bandwidth and memory-pressure facts, read-only (for `/stats`).
    pub fn memory_statistics(&self) -> MemoryStatistics {
        self.governor.statistics()
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

    /// Reads `/tessera.cfg` from the card, if there is one, and reports what it set and any
    /// line it could not use.
    pub fn read_card_config(&mut self) {
        let Ok(volume) = &mut self.volume else { return };
        let text = match volume.open(config::CONFIG_PATH) {
            Ok(mut file) => {
                let mut bytes = alloc::vec![0u8; file.size().min(64 * 1024) as usize];
                match file.read_at(0, &mut bytes) {
                    Ok(read) => String::from_utf8_lossy(&bytes[..read]).into_owned(),
                    Err(error) => {
                        let message = alloc::format!("{}: {error}; ignored", config::CONFIG_PATH);
                        self.say_line(&message);
                        return;
                    }
                }
            }
            Err(_) => return,
        };
        let (card_config, problems) = config::parse(&text);
        for problem in problems {
            let message = alloc::format!("{problem}; ignored");
            self.say_line(&message);
        }
        if let Some(budget) = card_config.weights_budget {
            let message = alloc::format!("{}: weights budget {} MiB", config::CONFIG_PATH, budget >> 20);
            self.say_line(&message);
        }
        if let Some(message) = config::apply_console_settings(&card_config, self.console) {
            self.say_line(&message);
        }
        self.card_config = card_config;
    }

    /// Reads `/tessera.cfg`, then loads the first model in `/models` (or reports why there is
    /// none).
    pub fn load_default(&mut self) {
        self.read_card_config();
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
        telemetry::record(EventKind::LoadStarted { model: ShortName::new(name) });
        let started = clock.now_ns();
        let mut last_drawn = 0;
        let result = load_model(volume, self.memory, self.card_config.weights_budget, name, |done, total| {
            let now = clock.now_ns();
            if done == total || now - last_drawn > 200_000_000 {
                last_drawn = now;
                console.write_bytes(progress_line(name, done, total, now - started).as_bytes());
            }
        });
        self.say("\r\n");
        match result {
            Ok(model) => {
                let size = model.size();
                let old = self.activate(model);
                let replaces = old.map(|old| alloc::format!("; replaces {old}")).unwrap_or_default();
                let message = alloc::format!("loaded {name} ({} MiB, validated){replaces}", size >> 20);
                self.say_line(&message);
            }
            Err(error) => self.load_failed(name, &error),
        }
        // Nothing is generating: the replaced model can go at once.
        self.retired.release_unheld();
    }

    /// Makes a loaded, validated model the active one and returns the name of the one it
    /// replaces. Batches already running keep the old model until they end; its weights are
    /// freed when the last of them lets go.
    fn activate(&mut self, model: ServedModel<TensorBuffer<'a>>) -> Option<String> {
        let old = self.active_model().map(String::from);
        telemetry::record(EventKind::LoadFinished {
            model: ShortName::new(&model.name),
            bytes: model.size() as u64,
        });
        telemetry::record(EventKind::ModelSwap {
            from: ShortName::new(old.as_deref().unwrap_or("")),
            to: ShortName::new(&model.name),
        });
        if let Some(replaced) = self.model.replace(Arc::new(model)) {
            self.retired.retire(replaced);
        }
        self.statistics.loads += 1;
        old
    }

    /// Reports a failed load; the active model is untouched and keeps serving.
    fn load_failed(&mut self, name: &str, error: &dyn core::fmt::Display) {
        self.statistics.failed_loads += 1;
        telemetry::record(EventKind::LoadFailed { model: ShortName::new(name) });
        let keeping =
            self.active_model().map(|name| alloc::format!("; still serving {name}")).unwrap_or_default();
        let message = alloc::format!("error: cannot load {name}: {error}{keeping}");
        self.say_line(&message);
    }

    /// Starts loading `/models/NAME` in the background, a piece between rounds of tokens; the
    /// active model swaps at a token boundary once the new one is complete and valid.
    fn stage(&mut self, name: &str) {
        if let Some(staging) = &self.staging {
            let message =
                alloc::format!("error: already loading {}; try again when it is done", staging.name());
            self.say_line(&message);
            return;
        }
        let Ok(volume) = &mut self.volume else {
            let message = alloc::format!("error: cannot load {name}: no card");
            self.say_line(&message);
            return;
        };
        match StagedLoad::begin(volume, self.memory, self.card_config.weights_budget, name) {
            Ok(staged) => {
                telemetry::record(EventKind::LoadStarted { model: ShortName::new(name) });
                let message =
                    alloc::format!("loading {name} in the background; the current model keeps serving");
                self.staging = Some(staged);
                self.swap_gaps.clear();
                self.say_line(&message);
            }
            Err(error) => self.load_failed(name, &error),
        }
    }

    /// How long a background load may work between two rounds of tokens: at least
    /// [`STAGE_SLICE_NS`], at most 1/[`STAGE_SLICE_FRACTION`] of the recent median gap.
    fn stage_budget_ns(&self) -> u64 {
        let mut recent: Vec<u64> = self.recent_gaps.iter().copied().collect();
        recent.sort_unstable();
        let median = recent.get(recent.len() / 2).copied().unwrap_or(0);
        (median / STAGE_SLICE_FRACTION).max(STAGE_SLICE_NS)
    }

    /// Whether a hot-swap is under way: a model is being staged, or a replaced one can be
    /// freed.
    fn swap_in_progress(&self) -> bool {
        self.staging.is_some() || self.retired.has_work()
    }

    /// Background work between two rounds of tokens, for about `budget_ns`. A staged model that
    /// is ready is swapped in, and nothing else is done in that round: the swap is a pointer
    /// exchange. Otherwise the replaced models are freed a piece at a time, then the staged
    /// load advances (reading, validating, building the tokenizer, in small units).
    fn background_work(&mut self, budget_ns: u64) {
        if self.staging.as_ref().is_some_and(StagedLoad::is_ready) {
            self.advance_staging(0);
            return;
        }
        let deadline = self.clock.now_ns().saturating_add(budget_ns);
        if self.retired.has_work() && self.retired.work(self.clock, deadline) {
            return;
        }
        self.advance_staging(deadline.saturating_sub(self.clock.now_ns()));
    }

    /// Works on a background load for `budget_ns`, or swaps it in when it is ready.
    fn advance_staging(&mut self, budget_ns: u64) {
        let (Some(staging), Ok(volume)) = (&mut self.staging, &mut self.volume) else { return };
        let ready = staging.is_ready();
        let name = String::from(staging.name());
        if !ready {
            if let Err(error) = staging.advance(volume, self.clock, budget_ns) {
                self.staging = None;
                self.load_failed(&name, &error);
            }
            return;
        }
        let Some(staged) = self.staging.take() else { return };
        match staged.finish() {
            Ok(model) => {
                let old = self.activate(model).unwrap_or_default();
                let message = alloc::format!("loaded {name} (validated); replaces {old} at a token boundary");
                self.say_line(&message);
            }
            Err(error) => self.load_failed(&name, &error),
        }
    }

    /// Records the gap since the previous round, `background_ns` of which went to a load or
    /// swap. Gaps while a swap is under way are kept apart; the round without its background
    /// work also counts as a plain gap (gaps grow with the sequence, so the median stays
    /// current). When the swap is over, its pause is the longest of its gaps minus the median
    /// of the recent plain gaps.
    fn record_round_gap(&mut self, gap_ns: u64, background_ns: u64, staging_before: bool) {
        if !staging_before {
            // A swap whose last freeing happened outside a batch ends here.
            self.report_swap_pause();
        } else {
            self.swap_gaps.push(gap_ns);
        }
        if self.recent_gaps.len() == RECENT_GAPS {
            self.recent_gaps.pop_front();
        }
        self.recent_gaps.push_back(gap_ns.saturating_sub(background_ns));
        if staging_before && !self.swap_in_progress() {
            self.report_swap_pause();
        }
    }

    /// Reports the pause of the swap whose round gaps were recorded (if any): the longest of
    /// them minus the median of the gaps just before it (or of its own, when none came before).
    fn report_swap_pause(&mut self) {
        if self.swap_gaps.is_empty() {
            return;
        }
        let mut baseline: Vec<u64> = if self.recent_gaps.is_empty() {
            self.swap_gaps.clone()
        } else {
            self.recent_gaps.iter().copied().collect()
        };
        baseline.sort_unstable();
        let median = baseline[baseline.len() / 2];
        let longest = self.swap_gaps.iter().copied().max().unwrap_or(median).max(median);
        self.swap_gaps.clear();
        self.last_swap_pause_ns = Some((longest, median));
        let message = alloc::format!(
            "swap pause: longest gap between tokens {:.3} ms, median {:.3} ms, pause {:.3} ms",
            longest as f64 / 1e6,
            median as f64 / 1e6,
            (longest - median) as f64 / 1e6
        );
        self.say_line(&message);
    }

    /// Handles one complete line.
    pub fn handle_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if line.starts_with('{') {
            self.machine_request(line);
            return;
        }
        let Some(command) = line.strip_prefix('/') else {
            self.enqueue(Origin::Human, line, self.settings);
            return;
        };
        let (name, argument) =
            command.split_once(' ').map_or((command, ""), |(name, rest)| (name, rest.trim()));
        match name {
            "help" => self.say(&HELP.replace('\n', "\r\n")),
            "models" => self.list(),
            // With answers streaming or waiting, the model loads between tokens.
            "load" if !argument.is_empty() && (self.in_batch || !self.pending.is_empty()) => {
                self.stage(argument)
            }
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
            "trace" => {
                let events = TRACE.snapshot(32);
                let mut text = alloc::format!(
                    "{} events recorded, {} dropped; the last {}:\r\n",
                    TRACE.recorded(),
                    TRACE.dropped(),
                    events.len()
                );
                for event in events {
                    let _ = write!(text, "{event}\r\n");
                }
                self.say(&text);
            }
            "set" => self.set(argument),
            "reset" => {
                self.settings = GenerationSettings::default();
                self.say_line("settings reset");
            }
            "bench" => self.bench(),
            _ => {
                self.statistics.rejected_lines += 1;
                let message = alloc::format!("error: unknown command /{name} (try /help)");
                self.say_line(&message);
            }
        }
    }

    /// Times greedy decoding of the active model on one core and on every core, with the same
    /// prompt and token count, and prints both rates (prompt tokens are not counted).
    fn bench(&mut self) {
        const TOKENS: usize = 8;
        let Some(model) = self.model.clone() else {
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
        let floats = floats_per_block(KV_BLOCK_TOKENS, config.kv_dim());
        let pool = match KvBlockPool::new(
            self.memory,
            floats,
            4 * config.layers * KV_QUOTA_TOKENS / KV_BLOCK_TOKENS,
        ) {
            Ok(pool) => pool,
            Err(error) => {
                let message = alloc::format!("error: KV cache: {error}");
                self.say_line(&message);
                return;
            }
        };
        let settings = GenerationSettings { max_tokens: TOKENS, temperature: 0.0, ..self.settings };
        let mut rates = Vec::new();
        for cpus in [&SingleCpu as &dyn Cpus, self.cpus] {
            let Some(kv) =
                PagedKv::new(&pool, config.layers, config.kv_dim(), KV_BLOCK_TOKENS, KV_QUOTA_TOKENS)
            else {
                return;
            };
            let serving =
                ServingCpus { inner: cpus, desk: &self.desk, console: self.console, clock: self.clock };
            let Ok(mut generation) = Generation::new(&view, kv, "Hello", &settings) else { return };
            // Each decoding step after the first runs one forward pass; time those.
            let (mut first, mut last, mut passes) = (None, 0, 0u32);
            loop {
                let prompt = generation.in_prompt();
                match generation.step(&serving) {
                    Ok(Step::Running(_)) if !prompt => {
                        last = self.clock.now_ns();
                        if first.is_none() {
                            first = Some(last);
                        } else {
                            passes += 1;
                        }
                    }
                    Ok(Step::Running(_)) => {}
                    Ok(Step::Finished(..)) => break,
                    Err(error) => {
                        let message = alloc::format!("error: {error}");
                        self.say_line(&message);
                        return;
                    }
                }
            }
            let elapsed = last.saturating_sub(first.unwrap_or(last)).max(1);
            rates.push((cpus.count(), f64::from(passes) / (elapsed as f64 / 1e9)));
        }
        let text = rates
            .iter()
            .map(|(cores, rate)| {
                alloc::format!("{cores} core{}: {rate:.2} tokens/s", if *cores == 1 { "" } else { "s" })
            })
            .collect::<Vec<_>>()
            .join(", ");
        let message = alloc::format!("bench {}: greedy decode of {TOKENS} tokens; {text}", model.name);
        self.say_line(&message);
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
        let counters = self.desk.counters().report();
        let answered: u64 = counters.commands.iter().map(|command| command.latency.count()).sum();
        let (interrupts, unserviced_ns) = self.telemetry.interrupts();
        let mut text = String::new();
        let _ = write!(
            text,
            "model        {}\r\nturns        {} on {} cores\r\n\
             loads        {} ok, {} failed (old model kept)\r\nrejected     {} lines\r\n\
             interrupts   {interrupts} handled; longest unserviced {:.3} ms (a 16-byte FIFO fills in 1.39 ms)\r\n\
             swap pause   {}\r\n\
             first token  {}\r\n\
             control      {answered} answered mid-generation or idle, {} over the {} ms bound\r\n{}",
            self.active_model().unwrap_or("(none)"),
            statistics.turns,
            self.cpus.count(),
            statistics.loads,
            statistics.failed_loads,
            statistics.rejected_lines,
            unserviced_ns as f64 / 1e6,
            match self.last_swap_pause_ns {
                Some((longest, median)) => alloc::format!(
                    "{:.3} ms (longest gap between tokens {:.3} ms minus median {:.3} ms, last swap)",
                    (longest - median) as f64 / 1e6,
                    longest as f64 / 1e6,
                    median as f64 / 1e6
                ),
                None => "no swap during generation yet".to_string(),
            },
            match self.first_token_since_boot_ns {
                Some(ns) => alloc::format!(
                    "{:.3} s after power-on (boot, card, model load, first prompt)",
                    ns as f64 / 1e9
                ),
                None => "none generated yet".to_string(),
            },
            counters.deadline_misses(),
            counters.deadline_ns / 1_000_000,
            alloc::format!("{counters}").replace('\n', "\r\n"),
        );
        let memory = self.governor.statistics();
        let _ = write!(
            text,
            "bandwidth    {} now, {} peak (estimated per forward pass); batch halved {}x\r\n",
            ByteRate(memory.current_bandwidth),
            ByteRate(memory.peak_bandwidth),
            memory.throttle_level,
        );
        text
    }

    fn enqueue(&mut self, origin: Origin, prompt: &str, settings: GenerationSettings) {
        if self.pending.len() >= MAX_REQUESTS {
            self.statistics.rejected_lines += 1;
            self.reply_error(origin, "too many requests in flight; try again when one finishes");
            return;
        }
        let arrived_ns = self.clock.now_ns();
        self.pending.push_back(Pending { origin, prompt: prompt.to_string(), settings, arrived_ns });
    }

    fn reply_error(&self, origin: Origin, message: &str) {
        match origin {
            Origin::Human => {
                let text = alloc::format!("error: {message}");
                self.say_line(&text);
            }
            Origin::Machine(id) => self.say(&protocol::record(Some(id), &Event::Error { message })),
        }
    }

    fn machine_request(&mut self, line: &str) {
        let request = match protocol::parse_request(line) {
            Ok(request) => request,
            Err(error) => {
                self.statistics.rejected_lines += 1;
                self.say(&protocol::record(error.id, &Event::Error { message: &error.message }));
                return;
            }
        };
        let origin = Origin::Machine(request.id);
        match request.operation {
            Operation::Generate { prompt, max_tokens, temperature } => {
                let mut settings = self.settings;
                settings.max_tokens = max_tokens.unwrap_or(settings.max_tokens);
                settings.temperature = temperature.unwrap_or(settings.temperature);
                self.enqueue(origin, &prompt, settings);
            }
            // The desk answers these the moment their line is complete (see `ControlDesk`).
            Operation::Cancel { .. } | Operation::Stats => {}
            Operation::Trace { max } => {
                let events = TRACE.snapshot(max.unwrap_or(protocol::MAX_TRACE_EVENTS));
                let entries: Vec<protocol::TraceEntry> = events.iter().map(Into::into).collect();
                let event =
                    Event::Trace { recorded: TRACE.recorded(), dropped: TRACE.dropped(), events: &entries };
                self.say(&protocol::record(Some(request.id), &event));
            }
            Operation::Models => {
                let text = match &mut self.volume {
                    Ok(volume) => match list_models(volume) {
                        Ok(models) => models.iter().map(|entry| alloc::format!("{}\n", entry.name)).collect(),
                        Err(error) => error.to_string(),
                    },
                    Err(reason) => reason.clone(),
                };
                self.say(&protocol::record(Some(request.id), &Event::Info { text: &text }));
            }
        }
    }

    /// Applies the cancels the desk answered (at a checkpoint or just now) and traces its
    /// deadline misses.
    fn apply_desk_notes(&mut self) {
        for (command, latency_ns) in self.desk.take_deadline_misses() {
            telemetry::record(EventKind::DeadlineMiss { command, latency_ns });
        }
        for cancel in self.desk.take_cancels() {
            let origin = match cancel {
                CancelRequest::Human => Origin::Human,
                CancelRequest::Machine { target } => Origin::Machine(target),
            };
            let waiting = self.pending.iter().position(|pending| pending.origin == origin);
            match waiting.and_then(|index| self.pending.remove(index)) {
                // It never started: it ends here, with a final record like any other.
                Some(pending) => self.end_unstarted(pending),
                None if self.in_batch => self.cancels.push(origin),
                None => {}
            }
        }
    }

    /// The final record of a request cancelled before it joined a batch.
    fn end_unstarted(&mut self, pending: Pending) {
        let total = self.clock.now_ns().saturating_sub(pending.arrived_ns) as f64 / 1e6;
        match pending.origin {
            Origin::Human => self.say_line("[cancelled before it started]"),
            Origin::Machine(id) => {
                let event = Event::Done {
                    usage: Usage { prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0 },
                    timings: Timings { first_token_ms: total, total_ms: total, tokens_per_second: 0.0 },
                    finish: super::chat::Finish::Cancelled.name(),
                    model: self.active_model().unwrap_or(""),
                };
                self.say(&protocol::record(Some(id), &event));
            }
        }
    }

    /// Reads whatever input waits and handles each complete line. Returns whether a line was
    /// handled.
    fn poll_console(&mut self) -> bool {
        let snapshot = self.stats_report();
        self.desk.set_stats_snapshot(snapshot);
        let mut handled = self.desk.service(self.console, self.clock);
        self.apply_desk_notes();
        while let Some(input) = self.desk.next_input() {
            handled = true;
            match input {
                Input::Line(line) => {
                    self.say("\r\n");
                    self.handle_line(&line);
                }
                Input::Refused(error) => {
                    self.statistics.rejected_lines += 1;
                    let message = alloc::format!("\r\nerror: {error}");
                    self.say_line(&message);
                }
            }
        }
        handled
    }

    /// Runs generations until none is waiting or running: requests join the batch at token
    /// boundaries (continuous batching) while the model they use is the active one, every
    /// running sequence advances one token per round, and the console is answered between
    /// rounds (so `/stats` and `/cancel` do not wait for an answer to end).
    fn serve_batch(&mut self) {
        let Some(model) = self.model.clone() else {
            while let Some(pending) = self.pending.pop_front() {
                self.reply_error(pending.origin, "no model is loaded (see /models and /load)");
            }
            return;
        };
        let view = match model.view() {
            Ok(view) => view,
            Err(error) => {
                let message = alloc::format!("{error}");
                while let Some(pending) = self.pending.pop_front() {
                    self.reply_error(pending.origin, &message);
                }
                return;
            }
        };
        let config = *view.file.config();
        let block_floats = floats_per_block(KV_BLOCK_TOKENS, config.kv_dim());
        let pool = match self.kv_pool.as_ref().filter(|(floats, _)| *floats == block_floats) {
            Some((_, pool)) => Arc::clone(pool),
            None => {
                let kv_region = self.info.plan.region(RegionKind::KvCache).size;
                // The old pool (and its cached blocks) goes once no batch uses it.
                self.kv_pool = None;
                match KvBlockPool::new(self.memory, block_floats, blocks_in_region(kv_region, block_floats)) {
                    Ok(pool) => {
                        let pool = Arc::new(pool);
                        self.kv_pool = Some((block_floats, Arc::clone(&pool)));
                        pool
                    }
                    Err(error) => {
                        let message = alloc::format!("KV cache: {error}");
                        while let Some(pending) = self.pending.pop_front() {
                            self.reply_error(pending.origin, &message);
                        }
                        return;
                    }
                }
            }
        };
        // Cached prefixes are keyed by the model as well as the tokens.
        let model_identity = model
            .name
            .bytes()
            .chain((model.size() as u64).to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        // The per-request quota; never more than the whole pool, so a request fits alone.
        let pool_positions = pool.limit_blocks() / config.layers.max(1) * KV_BLOCK_TOKENS;
        let quota = self.card_config.kv_quota_tokens.unwrap_or(KV_QUOTA_TOKENS);
        let capacity = config.context_length.min(quota).min(pool_positions);
        let mut active: Vec<(Pending, Generation<'_, '_, PagedKv<'_, '_>>, Option<u64>)> = Vec::new();
        let mut preemptor = Preemptor::new(&pool, model_identity);
        let thresholds = self.governor.track_pool(pool.limit_blocks());
        preemptor.set_resume_limit(thresholds.preempt_blocks);
        let mut round_start = self.clock.now_ns();
        loop {
            // Admit waiting requests while the batch's model is still the active one and no
            // preempted sequence waits for memory. Only one human answer streams at a time, so
            // line-mode text never interleaves.
            let same_model = self.model.as_ref().is_some_and(|current| Arc::ptr_eq(current, &model))
                && !preemptor.any_waiting(&active);
            let mut index = 0;
            while same_model && index < self.pending.len() {
                let human_busy = active.iter().any(|(pending, ..)| pending.origin == Origin::Human);
                if self.pending[index].origin == Origin::Human && human_busy {
                    index += 1;
                    continue;
                }
                let Some(request) = self.pending.remove(index) else { break };
                if let Err(error) = self.governor.admit(pool.statistics().blocks_in_use) {
                    self.pressure_action(PressureLevel::RejectRequests);
                    self.reply_error(request.origin, &alloc::format!("{error}"));
                    continue;
                }
                let Some(kv) = PagedKv::new(&pool, config.layers, config.kv_dim(), KV_BLOCK_TOKENS, capacity)
                else {
                    self.reply_error(request.origin, "KV cache shape");
                    continue;
                };
                let tokens = view.prompt_tokens(&request.prompt);
                let attach =
                    |kv: &mut PagedKv<'_, '_>, tokens: &[u32]| kv.with_prefix(model_identity, tokens);
                match Generation::with_cached_prefix(&view, kv, &tokens, &request.settings, attach) {
                    Ok(generation) => {
                        let id = match request.origin {
                            Origin::Human => 0,
                            Origin::Machine(id) => id,
                        };
                        let tokens = generation.statistics().prompt_tokens as u32;
                        telemetry::record(EventKind::RequestAdmitted { id, tokens });
                        active.push((request, generation, None));
                    }
                    Err(error) => {
                        let message = alloc::format!("{error}");
                        self.reply_error(request.origin, &message);
                    }
                }
            }
            if active.is_empty() {
                return;
            }
            for origin in core::mem::take(&mut self.cancels) {
                active
                    .iter_mut()
                    .filter(|(pending, ..)| pending.origin == origin)
                    .for_each(|(_, generation, _)| generation.cancel());
            }
            // Fewer sequences per round while bandwidth stays high; then memory pressure.
            preemptor.set_batch_limit(self.governor.batch_limit(active.len()));
            let weights =
                self.weights_evictor.as_deref_mut().map(|evictor| evictor as &mut dyn WeightsEvictor);
            let mut relief = BatchRelief { preemptor: &mut preemptor, sequences: &mut active, weights };
            for level in self.governor.relieve(&mut relief) {
                self.pressure_action(level);
            }
            let mut finished = Vec::new();
            for slot in 0..active.len() {
                let was_prompt = active[slot].1.in_prompt();
                // The console is served at every matmul checkpoint of this forward pass.
                let cpus = ServingCpus {
                    inner: self.cpus,
                    desk: &self.desk,
                    console: self.console,
                    clock: self.clock,
                };
                let preempted = preemptor.statistics().preemptions;
                let step = match preemptor.step(&mut active, slot, &cpus) {
                    Ok(SlotStep::Waiting) => None,
                    Ok(SlotStep::Ran(step)) => Some(Ok(step)),
                    Err(error) => Some(Err(error)),
                };
                for _ in preempted..preemptor.statistics().preemptions {
                    self.governor.count_exhaustion_preemption();
                    self.pressure_action(PressureLevel::Preempt);
                }
                let Some(step) = step else { continue };
                let (request, generation, first_token_ns) = &mut active[slot];
                let position = generation.history().len();
                self.governor.count_step(step_traffic(
                    model.size() as u64,
                    config.layers,
                    config.kv_dim(),
                    position,
                ));
                let now = self.clock.now_ns();
                if !was_prompt && first_token_ns.is_none() {
                    *first_token_ns = Some(now);
                    self.first_token_since_boot_ns.get_or_insert(now);
                }
                match step {
                    Ok(Step::Running(text)) => self.emit_text(request.origin, &text),
                    Ok(Step::Finished(finish, text)) => {
                        self.emit_text(request.origin, &text);
                        // Its full blocks become a cached prefix for later requests.
                        let history = generation.history().to_vec();
                        generation.kv_mut().publish(model_identity, &history);
                        let statistics = generation.statistics();
                        let id = match request.origin {
                            Origin::Human => 0,
                            Origin::Machine(id) => id,
                        };
                        telemetry::record(EventKind::RequestFinished {
                            id,
                            tokens: statistics.generated_tokens as u32,
                        });
                        self.statistics.turns += 1;
                        let total = now.saturating_sub(request.arrived_ns);
                        self.desk.counters().record_generation(statistics.generated_tokens as u64, total);
                        self.desk.counters().record_request(total);
                        let rate = statistics.generated_tokens as f64 / (total as f64 / 1e9).max(1e-9);
                        match request.origin {
                            Origin::Human => {
                                let message = alloc::format!(
                                    "\r\n[{}: {} prompt ({} cached) + {} generated tokens, {rate:.2} tokens/s{}]",
                                    model.name,
                                    statistics.prompt_tokens,
                                    statistics.cached_tokens,
                                    statistics.generated_tokens,
                                    if finish == super::chat::Finish::Cancelled { ", cancelled" } else { "" }
                                );
                                self.say_line(&message);
                            }
                            Origin::Machine(id) => {
                                let first = first_token_ns.unwrap_or(now).saturating_sub(request.arrived_ns);
                                let event = Event::Done {
                                    usage: Usage {
                                        prompt_tokens: statistics.prompt_tokens,
                                        cached_tokens: statistics.cached_tokens,
                                        completion_tokens: statistics.generated_tokens,
                                    },
                                    timings: Timings {
                                        first_token_ms: first as f64 / 1e6,
                                        total_ms: total as f64 / 1e6,
                                        tokens_per_second: rate,
                                    },
                                    finish: finish.name(),
                                    model: &model.name,
                                };
                                self.say(&protocol::record(Some(id), &event));
                            }
                        }
                        finished.push(slot);
                    }
                    Err(error) => {
                        let message = alloc::format!("{error}");
                        self.reply_error(request.origin, &message);
                        finished.push(slot);
                    }
                }
            }
            for slot in finished.into_iter().rev() {
                active.swap_remove(slot);
            }
            self.poll_console();
            let staging_before = self.swap_in_progress();
            let background_started = self.clock.now_ns();
            self.background_work(self.stage_budget_ns());
            let now = self.clock.now_ns();
            let background_ns = now.saturating_sub(background_started);
            self.record_round_gap(now.saturating_sub(round_start), background_ns, staging_before);
            round_start = now;
        }
    }

    fn emit_text(&self, origin: Origin, text: &str) {
        if text.is_empty() {
            return;
        }
        match origin {
            Origin::Human => self.say(text),
            Origin::Machine(id) => self.say(&protocol::record(Some(id), &Event::Token { text })),
        }
    }

    /// Serves forever: a `> ` prompt, then each line; generations run in batches between
    /// console polls. `relax` is called when nothing is waiting.
    pub fn run(mut self, relax: impl Fn()) -> ! {
        self.say("Type /help for commands, or a JSON request for machine mode.\r\n> ");
        loop {
            let handled = self.poll_console();
            if !self.pending.is_empty() {
                self.in_batch = true;
                self.desk.set_generating(true);
                self.serve_batch();
                self.desk.set_generating(false);
                self.in_batch = false;
                self.cancels.clear();
                // No batch holds a replaced model any more.
                self.retired.release_unheld();
            }
            // With nothing generating, a background load finishes at full speed.
            while self.staging.is_some() && self.pending.is_empty() {
                self.advance_staging(STAGE_IDLE_SLICE_NS);
                if self.poll_console() {
                    self.say("> ");
                }
            }
            if self.staging.is_none() {
                // A swap that finished as its batch ended is reported with the gaps it had.
                self.report_swap_pause();
                self.retired.release_unheld();
            }
            if handled {
                self.say("> ");
            } else if self.pending.is_empty() && self.staging.is_none() {
                // Requests a batch could not take (they wait for the model swapped in while it
                // ran) are served next, without waiting for an interrupt.
                relax();
            }
        }
    }
}
