//! The console's commands, for people (`/help`, `/models`, `/stats`, `/mem`, `/trace`,
//! `/set`, `/reset`, `/bench`) and the machine-mode operations that are not generations
//! (`mem`, `trace`, `models`). Their answers are made in the protocol pool's allocation scope
//! (see [`super::server`]).

#![forbid(unsafe_code)]

use super::{
    chat::{GenerationSettings, Step},
    config::parse_bandwidth_cap,
    desk::ServingCpus,
    generation::Generation,
    library::list_models,
    protocol::{self, Event, Operation},
    server::{KV_BLOCK_TOKENS, KV_QUOTA_TOKENS, Server},
};
use crate::{
    hil::{BlockDevice, Cpus, SingleCpu},
    mm::{
        error::Bytes,
        kv::{KvBlockPool, PagedKv, floats_per_block},
        layout::SEGMENT,
        scope,
        tensor::{Pool, TensorKind},
    },
    telemetry::TRACE,
};
use alloc::{
    string::{String, ToString},
    vec::Vec,
};
use core::fmt::Write;

const HELP: &str = "\
Type a message and press Enter to chat with the active model. Commands:
  /help                 this list
  /models               models on the card (* marks the active one)
  /load FILE            load /models/FILE; the current model serves until it is ready
  /stats                tokens/s, turns, interrupts, errors
  /mem                  memory map with pool usage, and the global heap
  /trace                recent events: loads, swaps, requests, slow commands
  /set NAME VALUE       temperature, top_p, seed, max_tokens, or bandwidth_cap MB/s (0 or off: none)
  /reset                generation settings back to their defaults
  /bench                decode speed of the active model on one core and on all cores
  /cancel               (while an answer streams) stop it
";

impl<'a, D: BlockDevice> Server<'a, D> {
    /// Answers the command `/name argument` (every command but `/load`).
    pub(super) fn command(&mut self, name: &str, argument: &str) {
        match name {
            "help" => self.say(&HELP.replace('\n', "\r\n")),
            "models" => self.list(),
            "stats" => {
                let report = self.stats_report();
                self.say(&report);
            }
            "mem" => self.memory_map(),
            "trace" => self.trace(),
            "set" => self.set(argument),
            "reset" => {
                self.settings = GenerationSettings::default();
                self.say_line("settings reset");
            }
            // A generation of its own: its objects are small objects, like a request's.
            "bench" => scope::with(TensorKind::Small, || self.bench()),
            _ => {
                self.statistics.rejected_lines += 1;
                let message = alloc::format!("error: unknown command /{name} (try /help)");
                self.say_line(&message);
            }
        }
    }

    /// Answers a machine-mode operation other than `generate`, `cancel` and `stats`.
    pub(super) fn machine_command(&mut self, id: u64, operation: Operation) {
        match operation {
            Operation::Trace { max } => {
                let events = TRACE.snapshot(max.unwrap_or(protocol::MAX_TRACE_EVENTS));
                let entries: Vec<protocol::TraceEntry> = events.iter().map(Into::into).collect();
                let event =
                    Event::Trace { recorded: TRACE.recorded(), dropped: TRACE.dropped(), events: &entries };
                self.reply(super::reply::Origin::Machine(id), &event);
            }
            Operation::Mem => {
                let pools = self.pool_entries();
                let heap = self.telemetry.heap();
                let heap = protocol::HeapEntry {
                    capacity_bytes: heap.capacity_bytes,
                    live_bytes: heap.live_bytes,
                    peak_bytes: heap.peak_bytes,
                    allocations: heap.allocations,
                    pool_metadata_bytes: heap.metadata_live_bytes,
                };
                let event = Event::Mem {
                    ram_bytes: self.info.plan.ram(),
                    pools: &pools,
                    heap,
                    arena: self.arena_entry(),
                };
                self.reply(super::reply::Origin::Machine(id), &event);
            }
            Operation::Models => {
                let listing = match &mut self.volume {
                    Ok(volume) => list_models(volume).map_err(|error| error.to_string()),
                    Err(reason) => Err(alloc::format!("no card: {reason}")),
                };
                let origin = super::reply::Origin::Machine(id);
                match listing {
                    Ok(entries) => {
                        let models: Vec<protocol::ModelEntry> = entries
                            .into_iter()
                            .map(|entry| protocol::ModelEntry { name: entry.name, bytes: entry.size })
                            .collect();
                        self.reply(origin, &Event::Models { active: self.active_model(), models: &models });
                    }
                    Err(message) => self.reply_error(origin, &message),
                }
            }
            Operation::Generate { .. }
            | Operation::Load { .. }
            | Operation::Cancel { .. }
            | Operation::Stats => {}
        }
    }

    /// The arena's figures: its free space, how far the KV cache may grow next to the loaded
    /// models, and the largest model it can hold alone (within `tessera.cfg`'s weights budget).
    fn arena_entry(&self) -> protocol::ArenaEntry {
        let arena = self.memory.memory().arena();
        let set_aside = self.set_aside.as_ref().map_or(0, |handle| handle.size());
        let capacity = arena.capacity - set_aside;
        let kv_capacity = match self.model.as_ref().map(|model| model.view()) {
            Some(Ok(view)) => self.kv_budget_bytes(view.file.config()),
            _ => arena.kv_cache + arena.free,
        };
        protocol::ArenaEntry {
            capacity_bytes: capacity,
            free_bytes: arena.free,
            largest_free_bytes: arena.largest_free,
            kv_capacity_bytes: kv_capacity,
            largest_model_bytes: capacity
                .saturating_sub(2 * SEGMENT)
                .min(self.card_config.weights_budget.unwrap_or(u64::MAX)),
        }
    }

    /// `/mem`: the memory map, the LLM arena, and the global heap.
    fn memory_map(&self) {
        let arena = self.arena_entry();
        let shares = self.memory.memory().arena();
        let heap = self.telemetry.heap();
        let report = alloc::format!(
            "{}llm arena    {}: weights {}, KV cache {}, activations {}, free {} (largest block {}); \
             the KV cache may grow to {}, a model alone may be {}\n\
             heap         {} of {} live, peak {}; {} allocations since power-on\n\
             metadata     {} of {} live (the pools' own bookkeeping while serving)\n",
            self.memory.memory().report(),
            Bytes(arena.capacity_bytes),
            Bytes(shares.weights.saturating_sub(self.set_aside.as_ref().map_or(0, |handle| handle.size()))),
            Bytes(shares.kv_cache),
            Bytes(shares.activations),
            Bytes(arena.free_bytes),
            Bytes(arena.largest_free_bytes),
            Bytes(arena.kv_capacity_bytes),
            Bytes(arena.largest_model_bytes),
            Bytes(heap.live_bytes),
            Bytes(heap.capacity_bytes),
            Bytes(heap.peak_bytes),
            heap.allocations,
            Bytes(heap.metadata_live_bytes),
            Bytes(heap.metadata_capacity_bytes),
        );
        self.say(&report.replace('\n', "\r\n"));
    }

    /// `/trace`: the latest events of the trace ring.
    fn trace(&self) {
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
            let mut state = match self.batch_scratch(&view, generation.positions()) {
                Ok(state) => state,
                Err(message) => {
                    self.say_line(&alloc::format!("error: {message}"));
                    return;
                }
            };
            // Each decoding step after the first runs one forward pass; time those.
            let (mut first, mut last, mut passes) = (None, 0, 0u32);
            loop {
                let prompt = generation.in_prompt();
                match generation.step(&serving, &mut state) {
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
            "bandwidth_cap" => parse_bandwidth_cap(value).map(|cap| self.governor.set_cap_megabytes(cap)),
            _ => None,
        };
        let message = match outcome {
            Some(()) => alloc::format!("{name} = {value}"),
            None => {
                self.statistics.rejected_lines += 1;
                alloc::format!(
                    "error: /set takes temperature 0-5, top_p (0,1], seed N, max_tokens 1-4096 or bandwidth_cap MBPS (0 or off: none); got {argument:?}"
                )
            }
        };
        self.say_line(&message);
    }

    /// Each pool's figures for the `mem` record, by kind.
    fn pool_entries(&self) -> Vec<protocol::PoolEntry> {
        Pool::ALL
            .iter()
            .map(|&pool| {
                let statistics = self.memory.memory().statistics(pool);
                let counters = statistics.counters;
                protocol::PoolEntry {
                    kind: match pool {
                        Pool::Weights => "weights",
                        Pool::KvCache => "kv",
                        Pool::Activations => "activations",
                        Pool::Slab => "small",
                        Pool::Protocol => "protocol",
                        Pool::Dma => "dma",
                    },
                    capacity_bytes: statistics.capacity,
                    live_bytes: counters.live_bytes,
                    peak_bytes: counters.peak_live_bytes,
                    allocations: counters.allocations,
                    failures: counters.failures,
                }
            })
            .collect()
    }

    pub(super) fn stats_report(&self) -> String {
        let statistics = &self.statistics;
        let counters = self.desk.counters().report();
        let answered: u64 = counters.commands.iter().map(|command| command.latency.count()).sum();
        let (interrupts, unserviced_ns) = self.telemetry.interrupts();
        let mut text = String::new();
        let _ = write!(
            text,
            "model        {}\r\nturns        {} on {} cores\r\n\
             loads        {} ok, {} failed (old model kept)\r\nrejected     {} lines\r\n\
             busy         {} lines turned away (the console queue was full)\r\n\
             interrupts   {interrupts} handled; longest unserviced {:.3} ms (a 16-byte FIFO fills in 1.39 ms)\r\n\
             swap stall   {}\r\n\
             first token  {}\r\n\
             control      {answered} answered mid-generation or idle, {} over the {} ms bound\r\n\
             desk         {}\r\n{}",
            self.active_model().unwrap_or("(none)"),
            statistics.turns,
            self.cpus.count(),
            statistics.loads,
            statistics.failed_loads,
            statistics.rejected_lines + self.desk.refused_here(),
            self.desk.turned_away(),
            unserviced_ns as f64 / 1e6,
            match self.swap_gaps.last() {
                Some(cost) => alloc::format!(
                    "{:.3} ms (last swap: most swap work in a round {:.3} ms minus loading rounds' median {:.3} ms); load tax {:.3}x over {} rounds",
                    cost.stall_ns() as f64 / 1e6,
                    cost.longest_work_ns as f64 / 1e6,
                    cost.loading_work_ns as f64 / 1e6,
                    cost.tax(),
                    cost.load_rounds
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
            self.desk.longest_gap(),
            alloc::format!("{counters}").replace('\n', "\r\n"),
        );
        let bandwidth = alloc::format!("{}", self.governor.statistics().bandwidth);
        text.push_str(&bandwidth.replace('\n', "\r\n"));
        text
    }
}
