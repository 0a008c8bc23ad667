//! Loading models and hot-swapping them: `/tessera.cfg`, the foreground load at boot or on
//! `/load` when nothing is generating, the background load (a piece between rounds of tokens)
//! when something is, the swap at a token boundary, and the measure of its pause.
//!
//! A model itself lives in two weights-pool buffers (its file, and its tables: tensor index
//! and tokenizer). Everything else a load allocates (the staged load, the file name, the
//! served model's handle and its messages) comes from the small-object scope its callers set
//! (`scope::with(TensorKind::Small, ..)`), so a swap leaves the counted heap alone.

#![forbid(unsafe_code)]

use super::{
    chat::ServedModel,
    config,
    library::{LibraryError, StagedLoad, WEIGHTS_BUDGET_POOL, list_models, load_model},
    loader::progress_line,
    server::Server,
    swap_cost::RoundWork,
};
use crate::{
    hil::BlockDevice,
    mm::{
        MemError, buffer::TensorBuffer, chunk::Placement, error::Bytes, layout::SEGMENT, scope,
        tensor::TensorKind,
    },
    telemetry::{self, EventKind, ShortName},
};
use alloc::{string::String, sync::Arc};

/// Least time a background load may work between two rounds of tokens, in ns.
pub const STAGE_SLICE_NS: u64 = 250_000;

/// A background load may also take up to this fraction (1/N) of the median gap between rounds,
/// so a slow model (seconds per token) still loads in a reasonable number of tokens.
pub const STAGE_SLICE_FRACTION: u64 = 8;

/// Time a background load works per call while nothing is generating, in ns. The console is
/// polled between calls, so a control command that arrives meanwhile is still answered well
/// within [`super::desk::CONTROL_BOUND_NS`] (at 20 ms a slice alone passed it).
pub const STAGE_IDLE_SLICE_NS: u64 = super::desk::CONTROL_BOUND_NS / 4;

impl<'a, D: BlockDevice> Server<'a, D> {
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
        if let Some(limit) = card_config.arena_limit {
            self.limit_arena(limit);
        }
        if let Some(cap) = card_config.bandwidth_cap_mbps {
            self.governor.set_cap_megabytes(Some(cap));
            self.say_line(&alloc::format!("{}: bandwidth cap {cap} MB/s", config::CONFIG_PATH));
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
            Some(name) => scope::with(TensorKind::Small, || self.load(&name)),
            None => self.say_line("no model files in /models on the card"),
        }
        self.arm_read_faults();
    }

    /// Arms the SD driver's test hook when `tessera.cfg` asks for read faults (after the boot
    /// model is in, so that later loads meet them).
    fn arm_read_faults(&mut self) {
        let (Some(one_in), Ok(volume)) = (self.card_config.sd_read_faults, &mut self.volume) else { return };
        let message = match volume.device_mut().arm_read_faults(one_in) {
            Ok(()) => alloc::format!(
                "{}: SD read faults armed, one read in {one_in} fails (a test setting)",
                config::CONFIG_PATH
            ),
            Err(reason) => alloc::format!("{}: sd_read_faults ignored: {reason}", config::CONFIG_PATH),
        };
        self.say_line(&message);
    }

    /// Loads `/models/NAME` next to the active model and makes it active once it is valid.
    /// On any failure the active model stays.
    pub fn load(&mut self, name: &str) {
        let (console, clock) = (self.console, self.clock);
        if self.volume.is_err() {
            let message = alloc::format!("cannot load {name}: no card");
            self.say_line(&message);
            return;
        }
        telemetry::record(EventKind::LoadStarted { model: ShortName::new(name) });
        // Nothing is generating: the KV cache gives the arena back all it can (its cached
        // prefixes belong to the model being replaced, or to one the new model may not be).
        self.free_kv_for_weights();
        let Ok(volume) = &mut self.volume else { return };
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
                self.end_machine_load(Ok(name));
            }
            Err(error) => self.load_failed(name, &error),
        }
        // Nothing is generating: the replaced model can go at once.
        self.retired.release_unheld();
    }

    /// Makes a loaded, validated model the active one and returns the name of the one it
    /// replaces. Batches already running keep the old model until they end; its weights are
    /// freed when the last of them lets go.
    pub(super) fn activate(&mut self, model: ServedModel<TensorBuffer<'a>>) -> Option<String> {
        let old = self.active_model().map(String::from);
        telemetry::record(EventKind::LoadFinished {
            model: ShortName::new(&model.name),
            bytes: model.size() as u64,
        });
        telemetry::record(EventKind::ModelSwap {
            from: ShortName::new(old.as_deref().unwrap_or("")),
            to: ShortName::new(&model.name),
        });
        self.prefix_cold = true;
        if let Some(replaced) = self.model.replace(Arc::new(model)) {
            self.retired.retire(replaced);
        }
        self.statistics.loads += 1;
        old
    }

    /// Reports a failed load; the active model is untouched and keeps serving.
    pub(super) fn load_failed(&mut self, name: &str, error: &dyn core::fmt::Display) {
        self.statistics.failed_loads += 1;
        telemetry::record(EventKind::LoadFailed { model: ShortName::new(name) });
        let keeping =
            self.active_model().map(|name| alloc::format!("; still serving {name}")).unwrap_or_default();
        let message = alloc::format!("cannot load {name}: {error}{keeping}");
        self.say_line(&alloc::format!("error: {message}"));
        self.end_machine_load(Err(&message));
    }

    /// Starts loading `/models/NAME` in the background, a piece between rounds of tokens; the
    /// active model swaps at a token boundary once the new one is complete and valid. When the
    /// arena has no room for it while a batch runs, the KV cache is asked to make room
    /// ([`Server::room_wanted`]) and `Err` says the load waits for it; otherwise the load has
    /// started or failed (and said why).
    pub(super) fn stage(&mut self, name: &str) -> Result<(), ()> {
        if let Some(staging) = &self.staging {
            let message =
                alloc::format!("error: already loading {}; try again when it is done", staging.name());
            self.say_line(&message);
            return Ok(());
        }
        if !self.in_batch {
            // Nothing is generating: no sequence holds KV memory the load could need.
            self.free_kv_for_weights();
        }
        let Ok(volume) = &mut self.volume else {
            let message = alloc::format!("error: cannot load {name}: no card");
            self.say_line(&message);
            return Ok(());
        };
        let started = self.clock.now_ns();
        let begun = StagedLoad::begin(volume, self.memory, self.card_config.weights_budget, name);
        let begin_ns = self.clock.now_ns().saturating_sub(started);
        match begun {
            Ok(staged) => {
                telemetry::record(EventKind::LoadStarted { model: ShortName::new(name) });
                let message =
                    alloc::format!("loading {name} in the background; the current model keeps serving");
                self.staging = Some(staged);
                self.room_wanted = None;
                self.swap_gaps.clear();
                if self.in_batch {
                    self.swap_gaps.add_outside_work(begin_ns);
                }
                self.swap_longest_unit = super::library::LongestUnit::default();
                self.swap_longest_unit.note(begin_ns, "look up the file");
                self.say_line(&message);
                Ok(())
            }
            Err(LibraryError::NoMemory { needed, error: MemError::OutOfMemory { pool, .. } })
                if pool != WEIGHTS_BUDGET_POOL && self.in_batch =>
            {
                if self.room_wanted.is_none() {
                    let message = alloc::format!(
                        "making room for {name} ({}): the KV cache gives memory back while the current model keeps serving",
                        Bytes(needed)
                    );
                    self.room_wanted = Some(String::from(name));
                    self.say_line(&message);
                }
                Err(())
            }
            Err(error) => {
                self.room_wanted = None;
                self.load_failed(name, &error);
                Ok(())
            }
        }
    }

    /// Sets aside all of the arena but `limit` bytes (from its high end, before anything is
    /// loaded), as if the board had that much less RAM.
    fn limit_arena(&mut self, limit: u64) {
        let capacity = self.memory.memory().arena().capacity;
        let aside = capacity.saturating_sub(limit) / SEGMENT * SEGMENT;
        if aside == 0 || self.set_aside.is_some() {
            return;
        }
        let message = match self.memory.memory().alloc_placed(0, aside, TensorKind::Weights, Placement::High)
        {
            Ok(handle) => {
                self.set_aside = Some(handle);
                alloc::format!(
                    "{}: LLM arena limited to {} ({} of {} set aside)",
                    config::CONFIG_PATH,
                    Bytes(capacity - aside),
                    Bytes(aside),
                    Bytes(capacity)
                )
            }
            Err(error) => alloc::format!("{}: arena_limit_mib not applied: {error}", config::CONFIG_PATH),
        };
        self.say_line(&message);
    }

    /// Gives the arena back every bit of KV memory no sequence holds: the prefix cache, the
    /// chunks left empty, and the segments left free. Returns the bytes the arena got back.
    pub(super) fn free_kv_for_weights(&mut self) -> u64 {
        if let Some((_, pool)) = &self.kv_pool {
            pool.drop_cached();
            pool.release_free_chunks();
        }
        self.memory.memory().reclaim_segments()
    }

    /// How long a background load may work between two rounds of tokens: at least
    /// [`STAGE_SLICE_NS`], at most 1/[`STAGE_SLICE_FRACTION`] of the recent median gap (less
    /// the swap work done in those rounds), the same for every round of a swap once the
    /// recent gaps are known (see [`super::swap_cost::SwapGaps::slice_ns`]).
    pub(super) fn stage_budget_ns(&mut self) -> u64 {
        let under_way = self.swap_in_progress();
        self.swap_gaps.slice_ns(STAGE_SLICE_NS, STAGE_SLICE_FRACTION, under_way)
    }

    /// Whether a hot-swap is under way: a model is being staged, or a replaced one can be
    /// freed.
    pub(super) fn swap_in_progress(&self) -> bool {
        self.staging.is_some() || self.retired.has_work()
    }

    /// Background work between two rounds of tokens, for about `budget_ns`. A staged model that
    /// is ready is swapped in, and nothing else is done in that round: the swap is a pointer
    /// exchange. Otherwise the replaced models are freed a buffer at a time, then the staged
    /// load advances (reading, validating, building the tensor index and the tokenizer, in
    /// small units).
    pub(super) fn background_work(&mut self, budget_ns: u64) {
        if self.staging.as_ref().is_some_and(StagedLoad::is_ready) {
            self.swap_gaps.note_work(RoundWork::Swap);
            self.advance_staging(0);
            return;
        }
        let deadline = self.clock.now_ns().saturating_add(budget_ns);
        if self.retired.has_work() && self.retired.work(self.clock, deadline) {
            self.swap_gaps.note_work(RoundWork::Free);
            return;
        }
        if self.staging.is_some() {
            self.swap_gaps.note_work(RoundWork::Load);
        }
        self.advance_staging(deadline.saturating_sub(self.clock.now_ns()));
    }

    /// Works on a background load for `budget_ns`, or swaps it in when it is ready.
    pub(super) fn advance_staging(&mut self, budget_ns: u64) {
        let (Some(staging), Ok(volume)) = (&mut self.staging, &mut self.volume) else { return };
        if !staging.is_ready() {
            let result = staging.advance(volume, self.clock, budget_ns);
            self.swap_longest_unit.merge(staging.longest_unit());
            if let Err(error) = result {
                let name = String::from(staging.name());
                self.staging = None;
                self.load_failed(&name, &error);
            }
            return;
        }
        let Some(staged) = self.staging.take() else { return };
        let started = self.clock.now_ns();
        let name = String::from(staged.name());
        match staged.finish() {
            Ok(model) => {
                let old = self.activate(model).unwrap_or_default();
                self.swap_longest_unit.note(self.clock.now_ns().saturating_sub(started), "swap");
                let message = alloc::format!("loaded {name} (validated); replaces {old} at a token boundary");
                self.say_line(&message);
                self.end_machine_load(Ok(&name));
            }
            Err(error) => self.load_failed(&name, &error),
        }
    }

    /// Records the gap since the previous round, `background_ns` of which went to a load,
    /// swap or freeing. Gaps while a swap is under way are the swap's; when it is over, its
    /// cost is reported.
    pub(super) fn record_round_gap(&mut self, gap_ns: u64, background_ns: u64, staging_before: bool) {
        if !staging_before {
            // A swap whose last freeing happened outside a batch ends here.
            self.report_swap_cost();
        }
        self.swap_gaps.record(gap_ns, background_ns, staging_before);
        if staging_before && !self.swap_in_progress() {
            self.report_swap_cost();
        }
    }

    /// Reports the cost of the swap whose rounds were recorded (if any, see
    /// [`super::swap_cost`]): its stall against a loading round (from the rounds' swap work,
    /// and from their gaps), the load's throughput tax and duration in rounds, the swap
    /// round's work, the longest single unit of its work (loading, swapping, freeing) and the
    /// rounds of tokens it spanned.
    pub(super) fn report_swap_cost(&mut self) {
        let Some(cost) = self.swap_gaps.finish() else { return };
        let mut unit = core::mem::take(&mut self.swap_longest_unit);
        unit.merge(self.retired.take_longest_unit());
        let milliseconds = |ns: u64| ns as f64 / 1e6;
        let message = alloc::format!(
            "swap stall: {:.3} ms (most swap work in a round {:.3} ms, loading rounds' median {:.3} ms); by gaps {:.3} ms (longest {:.3} ms, loading rounds' median {:.3} ms); load {} rounds, {:.3} ms of work, tax {:.3}x (idle median {:.3} ms); swap round {:.3} ms; longest unit {:.3} ms ({}); {} rounds",
            milliseconds(cost.stall_ns()),
            milliseconds(cost.longest_work_ns),
            milliseconds(cost.loading_work_ns),
            milliseconds(cost.gap_stall_ns()),
            milliseconds(cost.longest_gap_ns),
            milliseconds(cost.loading_gap_ns),
            cost.load_rounds,
            milliseconds(cost.load_work_ns),
            cost.tax(),
            milliseconds(cost.idle_gap_ns),
            milliseconds(cost.swap_work_ns),
            milliseconds(unit.ns),
            unit.what,
            cost.rounds,
        );
        self.say_line(&message);
    }
}
