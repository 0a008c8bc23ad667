//! The console server: reads lines, answers commands, chats with the active model, and loads
//! models from the card without ever losing the one being served.
//!
//! The server is split by what it does: this file holds its state, the main loop and the
//! routing of each line; [`super::batch`] runs generations (admission by memory and the batch
//! loop); [`super::commands`] answers the commands; [`super::swap`] loads models and measures
//! hot-swaps; [`super::reply`] renders every reply, for people and for programs.
//!
//! Memory by type: console lines, parsed requests and command answers are made in the protocol
//! (RT) pool's allocation scope, a request's own objects in the small-object (slab) scope, the
//! batch's scratch in the activations pool, and every reply in an RT buffer taken with a
//! deadline. Loading a model runs in the small-object scope (see [`super::swap`]).

#![forbid(unsafe_code)]

use super::{
    admission::{Details, Pending, RequestQueue},
    chat::{GenerationSettings, ServedModel},
    config::CardConfig,
    desk::{CancelRequest, ControlDesk, Input, Site},
    governor::{Governor, MemoryStatistics, SERVER_BANDWIDTH},
    library::StagedLoad,
    protocol::{self, ChatMessage, Event, Operation, Timings, Usage},
    reply::{Replies, ReplyStatistics},
    retire::Retired,
    stops::StopFilter,
    swap_cost::SwapGaps,
};
use crate::{
    boot_info::BootInfo,
    fs::Volume,
    hil::{BlockDevice, BoardTelemetry, Clock, Console, Cpus},
    mm::{
        buffer::{BackedMemory, TensorBuffer},
        kv::KvBlockPool,
        scope,
        tensor::{TensorHandle, TensorKind},
    },
    telemetry::{self, EventKind, PressureLevel},
};
use alloc::{boxed::Box, string::String, sync::Arc, vec::Vec};
use core::cell::RefCell;

pub use super::reply::Origin;

/// Positions per KV block.
pub const KV_BLOCK_TOKENS: usize = 16;
/// Most positions one conversation turn may use (its KV quota) unless `tessera.cfg` sets
/// `kv_quota_tokens`.
pub const KV_QUOTA_TOKENS: usize = 1024;

/// Most lines one console poll handles (see [`Server::poll_console`]); the rest wait in the
/// desk's queue for the next poll, so a flood cannot hold generation back.
const MAX_LINES_PER_POLL: usize = super::desk::MAX_QUEUED_INPUTS;

/// The model being served, shared with the batches that use it (a batch keeps the model it
/// started with; the weights are freed when the last holder lets go).
pub(super) type Shared<'a> = Arc<ServedModel<TensorBuffer<'a>>>;

/// What a generation answers: a line typed at the console, or a machine-mode request's prompt
/// or conversation with its stop strings.
pub(super) enum Prompt<'r> {
    /// A message typed at the console.
    Text(&'r str),
    /// A machine-mode request.
    Request {
        /// Its prompt, when it gave one.
        prompt: Option<&'r str>,
        /// Its conversation, when it gave one.
        messages: &'r [ChatMessage],
        /// Its stop strings.
        stop: &'r [String],
    },
}

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
    /// Requests refused because the waiting queue was full.
    pub refused_requests: u64,
}

/// Everything the server runs on.
pub struct Server<'a, D: BlockDevice> {
    pub(super) console: &'a dyn Console,
    pub(super) clock: &'a dyn Clock,
    pub(super) cpus: &'a dyn Cpus,
    pub(super) memory: &'a BackedMemory,
    pub(super) telemetry: &'a dyn BoardTelemetry,
    pub(super) info: &'a BootInfo,
    pub(super) volume: Result<Volume<D>, String>,
    pub(super) model: Option<Shared<'a>>,
    pub(super) settings: GenerationSettings,
    pub(super) statistics: ServeStatistics,
    /// Requests waiting for a place in the batch.
    pub(super) pending: RequestQueue,
    /// Cancels of running requests, applied at the next token boundary.
    pub(super) cancels: Vec<Origin>,
    pub(super) desk: ControlDesk<'a>,
    pub(super) in_batch: bool,
    pub(super) staging: Option<StagedLoad<'a>>,
    /// A model to stage once the KV cache has given back room for it.
    pub(super) room_wanted: Option<String>,
    /// The active model's shared prompt prefix is not yet in the prefix cache (see
    /// `warm_prefix_cache`; done when nothing is generating).
    pub(super) prefix_cold: bool,
    /// The part of the arena `tessera.cfg`'s `arena_limit_mib` sets aside, held for good.
    pub(super) set_aside: Option<TensorHandle>,
    pub(super) card_config: CardConfig,
    /// The KV block pool, kept across batches so cached prompt prefixes outlive requests, with
    /// the block size (in floats) it was made for.
    pub(super) kv_pool: Option<(usize, Arc<KvBlockPool<'a>>)>,
    /// Gaps between rounds of tokens: those of the swap under way with the work each round
    /// did, and the recent ones (what a swap costs, see [`super::swap_cost`]).
    pub(super) swap_gaps: SwapGaps,
    /// The longest unit of the swap under way (see [`super::library::LongestUnit`]).
    pub(super) swap_longest_unit: super::library::LongestUnit,
    /// The board clock when the first token since power-on was generated (boot to first
    /// token: the generic timer starts at zero with the board).
    pub(super) first_token_since_boot_ns: Option<u64>,
    /// Bandwidth, its cap and memory pressure (see [`Governor`]).
    pub(super) governor: Governor<'a>,
    /// Models replaced by a swap, freed a piece at a time between tokens.
    pub(super) retired: Retired<TensorBuffer<'a>>,
    /// The machine-mode `load` request waiting for its load to end, if one is.
    pub(super) load_waiter: Option<u64>,
    /// The renderer, with the requests owed an error record.
    replies: RefCell<Replies>,
}

impl<'a, D: BlockDevice> Server<'a, D> {
    /// A server with no model yet. `volume` is the mounted card, or why there is none.
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
            pending: RequestQueue::new(),
            cancels: Vec::with_capacity(super::admission::MAX_WAITING),
            desk: ControlDesk::with_protocol_memory(memory),
            in_batch: false,
            staging: None,
            room_wanted: None,
            prefix_cold: false,
            set_aside: None,
            card_config: CardConfig::default(),
            kv_pool: None,
            swap_gaps: SwapGaps::new(),
            swap_longest_unit: super::library::LongestUnit::default(),
            first_token_since_boot_ns: None,
            governor: Governor::new(clock, SERVER_BANDWIDTH),
            retired: Retired::default(),
            load_waiter: None,
            replies: RefCell::new(Replies::new()),
        }
    }

    /// Counts an action of the memory-pressure manager (`/stats`) and traces it (`/trace`).
    pub(super) fn pressure_action(&self, level: PressureLevel) {
        self.desk.counters().record_pressure(level);
        telemetry::record(EventKind::PressureAction { level });
    }

    /// Bandwidth and memory-pressure facts, read-only (for `/stats`).
    pub fn memory_statistics(&self) -> MemoryStatistics {
        self.governor.statistics()
    }

    /// Replies that found no protocol memory in time, and the errors owed for them.
    pub fn reply_statistics(&self) -> ReplyStatistics {
        self.replies.borrow().statistics()
    }

    /// Sends `event` to `origin` (see [`Replies::send`]; a reply without memory is owed).
    pub(super) fn reply(&self, origin: Origin, event: &Event<'_>) {
        let _ = self.replies.borrow_mut().send(self.memory, self.console, self.clock, origin, event);
    }

    /// Text for the person at the console.
    pub(super) fn say(&self, text: &str) {
        self.reply(Origin::Human, &Event::Info { text });
    }

    /// A line of text for the person at the console.
    pub(super) fn say_line(&self, text: &str) {
        self.say(&alloc::format!("{text}\r\n"));
    }

    /// An error reply to `origin`.
    pub(super) fn reply_error(&self, origin: Origin, message: &str) {
        self.reply(origin, &Event::Error { message });
    }

    /// The active model's name.
    pub fn active_model(&self) -> Option<&str> {
        self.model.as_ref().map(|model| model.name.as_str())
    }

    /// Counters so far.
    pub fn statistics(&self) -> ServeStatistics {
        self.statistics
    }

    /// Handles one complete line: a machine-mode request, a command, or a chat message. Runs in
    /// the caller's scope (the console's, from [`Server::poll_console`]); a load, and a
    /// request's own copy of its prompt, are small objects.
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
            self.enqueue(Origin::Human, Prompt::Text(line), self.settings);
            return;
        };
        let (name, argument) =
            command.split_once(' ').map_or((command, ""), |(name, rest)| (name, rest.trim()));
        match name {
            "load" if !argument.is_empty() => self.start_load(argument),
            "load" => self.say_line("usage: /load FILE (see /models)"),
            _ => self.command(name, argument),
        }
    }

    /// Loads `name`: at once when nothing is generating or waiting, else in the background
    /// with the model swapped in at a token boundary.
    fn start_load(&mut self, name: &str) {
        if self.in_batch || !self.pending.is_empty() {
            // A load that waits for room is retried between rounds (see `make_room`).
            let _ = scope::with(TensorKind::Small, || self.stage(name));
        } else {
            scope::with(TensorKind::Small, || self.load(name));
        }
    }

    /// The machine-mode `load`: the same load as `/load`, answered with a `loaded` record when
    /// the model is active or an error record when the load failed (see
    /// [`Server::end_machine_load`]). One such request waits at a time.
    fn machine_load(&mut self, id: u64, name: &str) {
        if let Some(staging) = &self.staging {
            let message = alloc::format!("already loading {}; try again when it is done", staging.name());
            return self.reply_error(Origin::Machine(id), &message);
        }
        if self.load_waiter.is_some() || self.room_wanted.is_some() {
            return self
                .reply_error(Origin::Machine(id), "a load is already under way; try again when it is done");
        }
        if self.volume.is_err() {
            let message = alloc::format!("cannot load {name}: no card");
            return self.reply_error(Origin::Machine(id), &message);
        }
        self.load_waiter = Some(id);
        self.start_load(name);
    }

    /// Answers the machine-mode `load` waiting, if any: `Ok(model)` when `model` is active,
    /// `Err(message)` when the load failed.
    pub(super) fn end_machine_load(&mut self, outcome: Result<&str, &str>) {
        let Some(id) = self.load_waiter.take() else { return };
        match outcome {
            Ok(model) => self.reply(Origin::Machine(id), &Event::Loaded { model }),
            Err(message) => self.reply_error(Origin::Machine(id), message),
        }
    }

    /// Queues a generation for the batch, or refuses it when the queue is full. The request's
    /// own copies of its prompt (or conversation) and stop strings are small objects.
    pub(super) fn enqueue(&mut self, origin: Origin, prompt: Prompt<'_>, settings: GenerationSettings) {
        let arrived_ns = self.clock.now_ns();
        let pending = scope::with(TensorKind::Small, || {
            let (prompt, details) = match prompt {
                Prompt::Text(text) => (String::from(text), None),
                Prompt::Request { prompt, messages, stop } => {
                    let details = (!messages.is_empty() || !stop.is_empty()).then(|| {
                        Box::new(Details {
                            messages: messages.to_vec(),
                            stop: StopFilter::new(stop.to_vec()),
                        })
                    });
                    (prompt.map(String::from).unwrap_or_default(), details)
                }
            };
            Pending { origin, prompt, details, settings, arrived_ns, tokens: None }
        });
        if let Err((refused, full)) = self.pending.push(pending) {
            self.statistics.refused_requests += 1;
            self.reply_error(refused.origin, &alloc::format!("{full}"));
            scope::with(TensorKind::Small, || drop(refused));
        }
    }

    fn machine_request(&mut self, line: &str) {
        let request = match protocol::parse_request(line) {
            Ok(request) => request,
            Err(error) => {
                self.statistics.rejected_lines += 1;
                match error.id {
                    Some(id) => self.reply_error(Origin::Machine(id), &error.message),
                    None => {
                        let record = protocol::record(None, &Event::Error { message: &error.message });
                        self.say(&record);
                    }
                }
                return;
            }
        };
        let origin = Origin::Machine(request.id);
        match request.operation {
            Operation::Generate { prompt, messages, max_tokens, temperature, top_p, seed, stop } => {
                let mut settings = self.settings;
                settings.max_tokens = max_tokens.unwrap_or(settings.max_tokens);
                settings.temperature = temperature.unwrap_or(settings.temperature);
                settings.top_p = top_p.unwrap_or(settings.top_p);
                settings.seed = seed.unwrap_or(settings.seed);
                let prompt = Prompt::Request {
                    prompt: prompt.as_deref(),
                    messages: messages.as_deref().unwrap_or_default(),
                    stop: stop.as_deref().unwrap_or_default(),
                };
                self.enqueue(origin, prompt, settings);
            }
            Operation::Load { model } => self.machine_load(request.id, &model),
            // The desk answers these the moment their line is complete (see `ControlDesk`).
            Operation::Cancel { .. } | Operation::Stats => {}
            operation => self.machine_command(request.id, operation),
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
            match self.pending.take(origin) {
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
            origin => {
                let event = Event::Done {
                    usage: Usage { prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0 },
                    timings: Timings { first_token_ms: total, total_ms: total, tokens_per_second: 0.0 },
                    finish: super::chat::Finish::Cancelled.name(),
                    model: self.active_model().unwrap_or(""),
                };
                self.reply(origin, &event);
            }
        }
        scope::with(TensorKind::Small, || drop(pending));
    }

    /// Reads whatever input waits and handles each complete line. Returns whether a line was
    /// handled. Console work is made in the protocol pool's scope; what a line starts (a load,
    /// a request) chooses its own (see [`Server::handle_line`]).
    pub(super) fn poll_console(&mut self) -> bool {
        scope::with(TensorKind::Protocol, || {
            self.replies.borrow_mut().settle(self.memory, self.console, self.clock);
            let snapshot = self.stats_report();
            self.desk.set_stats_snapshot(snapshot);
            let mut handled = false;
            // The desk reads again after each line handled, so a control command that arrives
            // meanwhile is answered at once.
            for _ in 0..MAX_LINES_PER_POLL {
                handled |= self.desk.service(Site::Poll, self.console, self.clock);
                self.apply_desk_notes();
                let Some(input) = self.desk.next_input() else { break };
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
        })
    }

    /// Warms the prefix cache of a model that has just become active. Returns `None` when it
    /// was warm already, else whether a line was handled during the warm-up (the console is
    /// served during the warm-up, and lines read in its last pass then wait in the desk).
    fn warm_if_cold(&mut self) -> Option<bool> {
        if !core::mem::take(&mut self.prefix_cold) {
            return None;
        }
        Some(self.warm_prefix_cache())
    }

    /// Serves forever: a `> ` prompt, then each line; generations run in batches between
    /// console polls. `relax` is called when nothing is waiting.
    ///
    /// Everything the loop allocates comes from a pool: the small-object scope is its default
    /// (loads, swaps and their reports, the batches' own objects), the console's parts switch
    /// to the protocol scope and a batch's scratch to the activations pool; the heap keeps
    /// what boot made.
    pub fn run(self, relax: impl Fn()) -> ! {
        scope::with(TensorKind::Small, || self.serve_forever(relax))
    }

    /// The loop of [`Server::run`], in its scope.
    fn serve_forever(mut self, relax: impl Fn()) -> ! {
        // The boot model's shared prompt prefix is computed before the prompt appears.
        self.warm_if_cold();
        self.say("Type /help for commands, or a JSON request for machine mode.\r\n> ");
        loop {
            let mut handled = self.poll_console();
            // Lines that arrived during a warm-up are handled now, not after the next byte.
            if let Some(handled_meanwhile) = self.warm_if_cold() {
                handled |= handled_meanwhile;
                handled |= self.poll_console();
            }
            if !self.pending.is_empty() {
                self.in_batch = true;
                self.desk.set_generating(true);
                self.serve_batch();
                self.desk.set_generating(false);
                self.in_batch = false;
                self.cancels.clear();
                // No batch holds a replaced model any more.
                self.retired.release_unheld();
                // A load that waited for room gets it now, or fails for good.
                if let Some(name) = self.room_wanted.take() {
                    let _ = self.stage(&name);
                }
            }
            // With nothing generating, a background load finishes at full speed.
            while self.staging.is_some() && self.pending.is_empty() {
                self.advance_staging(super::swap::STAGE_IDLE_SLICE_NS);
                if self.poll_console() {
                    self.say("> ");
                }
            }
            if self.staging.is_none() {
                // A swap that finished as its batch ended is reported with the gaps it had.
                self.report_swap_cost();
                self.retired.release_unheld();
            }
            if handled {
                self.say("> ");
            } else if self.pending.is_empty() && self.staging.is_none() {
                // Requests a batch could not take (they wait for the model swapped in while it
                // ran) are served next, without waiting for an interrupt.
                self.desk.note_idle();
                relax();
            }
        }
    }
}
