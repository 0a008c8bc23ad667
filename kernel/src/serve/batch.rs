//! The batch: generations run here, token by token, until none is waiting or running.
//!
//! A batch keeps the model it started with. Each round it admits waiting requests whose KV
//! need fits beside what its sequences reserved ([`super::admission`]), applies cancels, lets
//! the memory-pressure manager act, advances every running sequence by one forward pass
//! through the scratch the sequences share (made in the activations pool when the batch opens
//! and returned when it closes), streams their text, and then serves the console and a slice
//! of background loading before the next round.

#![forbid(unsafe_code)]

use super::{
    admission::{KvReservations, MAX_RUNNING, Pending, kv_blocks_needed},
    chat::{ChatError, Finish, ModelView, Step},
    desk::ServingCpus,
    generation::Generation,
    governor::PassTraffic,
    library::StagedLoad,
    pressure::Relief,
    pressure::WeightsEvictor,
    protocol::{Event, Timings, Usage},
    reply::Origin,
    retire::Retired,
    scheduler::{BatchRelief, Preemptor, Scheduled, SlotStep},
    server::{KV_BLOCK_TOKENS, KV_QUOTA_TOKENS, Server, Shared},
};
use crate::{
    hil::BlockDevice,
    infer::{
        Precision, State,
        forward::{PassSequence, forward_batch},
    },
    mm::{
        buffer::{BackedMemory, TensorBuffer},
        error::Bytes,
        kv::{KvBlockPool, PagedKv, blocks_in_region, floats_per_block},
        layout::SEGMENT,
        scope,
        tensor::{Pool, TensorKind},
    },
    model::Config,
    telemetry::{self, EventKind, PressureLevel, ShortName},
};
use alloc::{string::String, sync::Arc, vec::Vec};

/// Most prompt tokens (or recomputed positions) one sequence feeds in one pass: chunks of a
/// long prompt interleave with the other sequences' decoding rows.
pub const PREFILL_CHUNK: usize = 16;

/// Rows of a batch's scratch for a model of `config`: the most sequences that run at once,
/// each a decoding row, plus one prompt chunk; fewer when a buffer of that many rows would
/// pass the largest block of the activations pool (one segment).
fn scratch_rows(config: &Config) -> usize {
    let widest = config.dim.max(config.hidden_dim).max(1) * 4;
    (MAX_RUNNING + PREFILL_CHUNK).min(SEGMENT as usize / widest).max(1)
}

/// Tokens the batch's sequences have sampled so far.
fn sampled_tokens(batch: &Batch<'_, '_>) -> u64 {
    batch.sequences.iter().map(|sequence| sequence.generation.statistics().generated_tokens as u64).sum()
}

/// The weights rung of the pressure ladder: a staged model is dropped (the active one keeps
/// serving), or replaced models no batch holds are freed at once.
struct ModelEvictor<'s, 'a> {
    memory: &'a BackedMemory,
    staging: &'s mut Option<StagedLoad<'a>>,
    retired: &'s mut Retired<TensorBuffer<'a>>,
    /// The staged model dropped, if one was.
    dropped: Option<String>,
}

impl WeightsEvictor for ModelEvictor<'_, '_> {
    fn evict_unused(&mut self) -> u64 {
        let held = || self.memory.memory().statistics(Pool::Weights).counters.reserved_bytes;
        let before = held();
        if let Some(staged) = self.staging.take() {
            self.dropped = Some(String::from(staged.name()));
        } else {
            self.retired.release_unheld();
        }
        before.saturating_sub(held())
    }
}

/// A running sequence of the batch: the request, its generation and its KV reservation.
pub(super) struct Sequence<'w, 'f, 'p, 'm> {
    request: Pending,
    generation: Generation<'w, 'f, PagedKv<'p, 'm>>,
    first_token_ns: Option<u64>,
    reserved_blocks: usize,
}

/// Ranked by arrival: the earliest is preempted last.
impl<'w, 'f, 'p, 'm> Scheduled<'w, 'f, 'p, 'm> for Sequence<'w, 'f, 'p, 'm> {
    fn generation(&self) -> &Generation<'w, 'f, PagedKv<'p, 'm>> {
        &self.generation
    }

    fn generation_mut(&mut self) -> &mut Generation<'w, 'f, PagedKv<'p, 'm>> {
        &mut self.generation
    }

    fn priority(&self) -> u64 {
        self.request.arrived_ns
    }
}

/// What a batch runs on, and its sequences.
pub(super) struct Batch<'b, 'm> {
    model: &'b Shared<'m>,
    view: &'b ModelView<'b>,
    pool: &'b KvBlockPool<'m>,
    config: Config,
    /// The model's identity in the prefix cache.
    identity: u64,
    /// Positions one sequence may reach: the context, the quota and the whole cache.
    capacity: usize,
    /// The forward pass's scratch, shared by the sequences.
    scratch: State,
    reservations: KvReservations,
    sequences: Vec<Sequence<'b, 'b, 'b, 'm>>,
    preemptor: Preemptor<'b, 'm>,
    /// Slots that finished this round.
    finished: Vec<usize>,
    round_start_ns: u64,
}

/// What became of a request the batch tried to admit.
enum Admission {
    /// It joined the batch.
    Admitted,
    /// It was refused with an error record.
    Refused,
    /// Its memory is not free yet: it waits, and so do the requests behind it.
    Waits,
}

/// The identity of a model in the prefix cache: its name and size.
fn model_identity(model: &Shared<'_>) -> u64 {
    model
        .name
        .bytes()
        .chain((model.size() as u64).to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Bytes of small objects one sequence of `capacity` positions holds beside its KV: its
/// prompt and history token lists and its block tables.
fn sequence_bytes(capacity: usize, layers: usize) -> u64 {
    (2 * 4 * capacity + 8 * layers * capacity.div_ceil(KV_BLOCK_TOKENS) + 1024) as u64
}

impl<'a, D: BlockDevice> Server<'a, D> {
    /// Runs generations until none is waiting or running: requests join the batch at token
    /// boundaries (continuous batching) while the model they use is the active one, every
    /// running sequence advances one token per round, and the console is answered between
    /// rounds (so `/stats` and `/cancel` do not wait for an answer to end).
    pub(super) fn serve_batch(&mut self) {
        let Some(model) = self.model.clone() else {
            return self.refuse_waiting("no model is loaded (see /models and /load)");
        };
        let view = match model.view() {
            Ok(view) => view,
            Err(error) => return self.refuse_waiting(&alloc::format!("{error}")),
        };
        let Some(pool) = self.kv_pool_for(&view) else { return };
        let Some(mut batch) = self.open_batch(&model, &view, &pool) else { return };
        while self.admit(&mut batch) {
            self.apply_cancels(&mut batch);
            self.relieve_pressure(&mut batch);
            self.run_round(&mut batch);
            self.between_rounds(&mut batch);
        }
    }

    /// Computes the K/V of the prompt prefix every request of the active model shares (its
    /// chat template and system prompt, up to the user's words) and publishes its full blocks
    /// in the prefix cache, so the first request already finds it there. Called when a model
    /// becomes active with nothing generating. Returns whether a line was handled meanwhile.
    ///
    /// The console is served at every matmul checkpoint, as in a batch's rounds, and the lines
    /// read there are handled between the passes, as between rounds. A checkpoint can answer a
    /// control command only while the desk's queue has room: with the queue full (input sent
    /// faster than it is handled), a command waits until the server takes the queue, so the
    /// warm-up (several passes, over 10 ms under QEMU) must take it between its passes, or
    /// a command sent as a swapped-in model warms up misses its bound. A line that makes
    /// another model active (a load) ends the warm-up; the new model warms up next.
    pub(super) fn warm_prefix_cache(&mut self) -> bool {
        let mut handled = false;
        let Some(model) = self.model.clone() else { return handled };
        let Ok(view) = model.view() else { return handled };
        let (first, second) = (view.prompt_tokens("a"), view.prompt_tokens("b"));
        let shared = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
        let prefix = &first[..shared];
        if prefix.len() < KV_BLOCK_TOKENS {
            return handled;
        }
        // Only full blocks are published: the rest would be computed for nothing.
        let prefix = &prefix[..prefix.len() / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS];
        let Some(pool) = self.kv_pool_for(&view) else { return handled };
        let config = *view.file.config();
        let Some(mut kv) = PagedKv::new(&pool, config.layers, config.kv_dim(), KV_BLOCK_TOKENS, prefix.len())
        else {
            return handled;
        };
        let Ok(mut state) = self.batch_scratch(&view, prefix.len()) else { return handled };
        let rows = state.rows();
        for (index, tokens) in prefix.chunks(rows).enumerate() {
            if index > 0 {
                handled |= self.poll_console();
                if !self.model.as_ref().is_some_and(|active| Arc::ptr_eq(active, &model)) {
                    return handled;
                }
            }
            let cpus =
                ServingCpus { inner: self.cpus, desk: &self.desk, console: self.console, clock: self.clock };
            let mut sequences = [PassSequence { kv: &mut kv, tokens, start: index * rows, logits: false }];
            if forward_batch(&view.file.weights, &mut state, &mut sequences, &cpus, |_, _, _| {}).is_err() {
                return handled;
            }
        }
        kv.publish(model_identity(&model), prefix);
        handled
    }

    /// Ends every waiting request with `message`.
    fn refuse_waiting(&mut self, message: &str) {
        while let Some(pending) = self.pending.pop_front() {
            self.reply_error(pending.origin, message);
        }
    }

    /// The KV block pool for `view`'s model: the one kept from earlier batches when its blocks
    /// have the right shape (its budget brought up to date), else a new one.
    fn kv_pool_for(&mut self, view: &ModelView<'_>) -> Option<Arc<KvBlockPool<'a>>> {
        let block_floats = floats_per_block(KV_BLOCK_TOKENS, view.file.config().kv_dim());
        let budget = blocks_in_region(self.kv_budget_bytes(view.file.config()), block_floats);
        if let Some((_, pool)) = self.kv_pool.as_ref().filter(|(floats, _)| *floats == block_floats) {
            pool.set_limit(budget);
            return Some(Arc::clone(pool));
        }
        // The old pool (and its cached blocks) goes once no batch uses it.
        self.kv_pool = None;
        match KvBlockPool::new(self.memory, block_floats, budget) {
            Ok(pool) => {
                let pool = Arc::new(pool);
                self.kv_pool = Some((block_floats, Arc::clone(&pool)));
                Some(pool)
            }
            Err(error) => {
                self.refuse_waiting(&alloc::format!("KV cache: {error}"));
                None
            }
        }
    }

    /// The memory the KV cache may use now with a model of `config`: what it holds, and the
    /// arena's free space less room for the batch's scratch (twice its size, in whole
    /// segments). It grows into whatever the loaded models leave free.
    pub(super) fn kv_budget_bytes(&self, config: &Config) -> u64 {
        let quota = self.card_config.kv_quota_tokens.unwrap_or(KV_QUOTA_TOKENS);
        let scratch = State::bytes_for(config, config.context_length.min(quota), scratch_rows(config));
        let headroom = (2 * scratch).div_ceil(SEGMENT).max(1) * SEGMENT;
        let arena = self.memory.memory().arena();
        (arena.kv_cache + arena.free).saturating_sub(headroom)
    }

    /// A batch over `model`, with its scratch from the activations pool; `None` (the waiting
    /// requests refused with the reason) when the scratch does not fit.
    fn open_batch<'b>(
        &mut self,
        model: &'b Shared<'a>,
        view: &'b ModelView<'b>,
        pool: &'b KvBlockPool<'a>,
    ) -> Option<Batch<'b, 'a>> {
        let config = *view.file.config();
        // The per-request quota; never more than the whole pool, so a request fits alone.
        let pool_positions = pool.limit_blocks() / config.layers.max(1) * KV_BLOCK_TOKENS;
        let quota = self.card_config.kv_quota_tokens.unwrap_or(KV_QUOTA_TOKENS);
        let capacity = config.context_length.min(quota).min(pool_positions);
        let mut scratch = self.batch_scratch(view, capacity);
        if scratch.is_err() && self.evict_before_refusing() {
            scratch = self.batch_scratch(view, capacity);
        }
        let scratch = match scratch {
            Ok(scratch) => scratch,
            Err(message) => {
                self.refuse_waiting(&message);
                return None;
            }
        };
        let identity = model_identity(model);
        let mut preemptor = Preemptor::new(pool, identity);
        let thresholds = self.governor.track_pool(pool.limit_blocks());
        preemptor.set_resume_limit(thresholds.preempt_blocks);
        Some(Batch {
            model,
            view,
            pool,
            config,
            identity,
            capacity,
            scratch,
            reservations: KvReservations::new(pool.limit_blocks()),
            sequences: Vec::with_capacity(super::admission::MAX_WAITING),
            preemptor,
            finished: Vec::with_capacity(super::admission::MAX_WAITING),
            round_start_ns: self.clock.now_ns(),
        })
    }

    /// The forward pass's scratch for sequences of up to `positions` positions of `view`'s
    /// model, built in the activations pool; or why it does not fit there.
    pub(super) fn batch_scratch(&self, view: &ModelView<'_>, positions: usize) -> Result<State, String> {
        let config = view.file.config();
        let rows = scratch_rows(config);
        let needed = State::bytes_for(config, positions, rows);
        let free = self.activations_available();
        // Each buffer rounds up to a power of two in the buddy allocator: at most twice.
        if free < 2 * needed {
            return Err(alloc::format!(
                "activations memory is full: a batch of this model needs {} of scratch and {} is free",
                Bytes(2 * needed),
                Bytes(free)
            ));
        }
        Ok(scope::with(TensorKind::Activation, || {
            State::for_batch(config, Precision::default(), positions, rows)
        }))
    }

    /// Bytes the activations can have now: their own free blocks, and the arena's free space
    /// they can borrow.
    fn activations_available(&self) -> u64 {
        let memory = self.memory.memory();
        memory.statistics(Pool::Activations).free_bytes + memory.arena().free
    }

    /// Admits waiting requests, oldest first, while the batch's model is still the active one
    /// and no preempted sequence waits for memory. Only one human answer streams at a time,
    /// so line-mode text never interleaves. Returns whether the batch has sequences to run.
    fn admit(&mut self, batch: &mut Batch<'_, 'a>) -> bool {
        let same_model = self.model.as_ref().is_some_and(|current| Arc::ptr_eq(current, batch.model));
        // While a staged model waits for room, the KV cache shrinks: nobody new joins.
        let open = same_model && self.room_wanted.is_none() && batch.sequences.len() < MAX_RUNNING;
        if open && !batch.preemptor.any_waiting(&batch.sequences) {
            let mut index = 0;
            while let Some(request) = self.pending.get(index) {
                let human_busy =
                    batch.sequences.iter().any(|sequence| sequence.request.origin == Origin::Human);
                if request.origin == Origin::Human && human_busy {
                    index += 1;
                    continue;
                }
                match self.admit_one(batch, index) {
                    Admission::Admitted if batch.sequences.len() >= MAX_RUNNING => break,
                    Admission::Admitted | Admission::Refused => {}
                    Admission::Waits => break,
                }
            }
        }
        !batch.sequences.is_empty()
    }

    /// Tries to admit the waiting request at `index`: only when its KV need (prompt plus
    /// `max_tokens`, capped by the quota) fits beside the batch's reservations, and its small
    /// objects fit in the activations pool.
    fn admit_one(&mut self, batch: &mut Batch<'_, 'a>, index: usize) -> Admission {
        let view = batch.view;
        // No KV room at all beside the model (a staged model may hold it): free what the
        // weights rung can before the request is refused for it.
        if batch.capacity == 0 && self.evict_before_refusing() {
            return Admission::Waits;
        }
        let Some(request) = self.pending.get_mut(index) else { return Admission::Waits };
        if request.tokens.is_none() {
            request.tokens = Some(view.request_tokens(&request.prompt, request.messages()));
        }
        let prompt_tokens = request.tokens.as_ref().map_or(0, Vec::len);
        let needed = kv_blocks_needed(
            prompt_tokens,
            request.settings.max_tokens,
            batch.capacity,
            KV_BLOCK_TOKENS,
            batch.config.layers,
        );
        let small = sequence_bytes(batch.capacity, batch.config.layers);
        let small_free = self.activations_available();
        if small > small_free && batch.sequences.is_empty() {
            if self.evict_before_refusing() {
                return Admission::Waits;
            }
            return self.refuse(index, "activations memory is full: no room for a request's token lists");
        }
        if small > small_free || !batch.reservations.reserve(needed) {
            return Admission::Waits;
        }
        if let Err(error) = self.governor.admit(batch.pool.statistics().blocks_in_use) {
            batch.reservations.release(needed);
            if self.evict_before_refusing() {
                return Admission::Waits;
            }
            self.pressure_action(PressureLevel::RejectRequests);
            return self.refuse(index, &alloc::format!("{error}"));
        }
        let Some(request) = self.pending.remove(index) else { return Admission::Waits };
        match self.start_generation(batch, &request) {
            Ok(generation) => {
                telemetry::record(EventKind::RequestAdmitted {
                    id: request.origin.trace_id(),
                    tokens: prompt_tokens as u32,
                });
                batch.sequences.push(Sequence {
                    request,
                    generation,
                    first_token_ns: None,
                    reserved_blocks: needed,
                });
                Admission::Admitted
            }
            Err(error) => {
                batch.reservations.release(needed);
                self.reply_error(request.origin, &alloc::format!("{error}"));
                Admission::Refused
            }
        }
    }

    /// Ends the waiting request at `index` with `message`.
    fn refuse(&mut self, index: usize, message: &str) -> Admission {
        if let Some(request) = self.pending.remove(index) {
            self.reply_error(request.origin, message);
        }
        Admission::Refused
    }

    /// The generation of an admitted request, attaching the cached prefix of its prompt.
    fn start_generation<'b>(
        &self,
        batch: &Batch<'b, 'a>,
        request: &Pending,
    ) -> Result<Generation<'b, 'b, PagedKv<'b, 'a>>, ChatError> {
        let config = &batch.config;
        let Some(kv) =
            PagedKv::new(batch.pool, config.layers, config.kv_dim(), KV_BLOCK_TOKENS, batch.capacity)
        else {
            return Err(ChatError::PromptTooLong { tokens: 0, capacity: 0 });
        };
        let tokens = request.tokens.as_deref().unwrap_or_default();
        let identity = batch.identity;
        let attach = |kv: &mut PagedKv<'_, '_>, tokens: &[u32]| kv.with_prefix(identity, tokens);
        Generation::with_cached_prefix(batch.view, kv, tokens, &request.settings, attach)
    }

    /// Applies the cancels noted since the last round.
    fn apply_cancels(&mut self, batch: &mut Batch<'_, 'a>) {
        while let Some(origin) = self.cancels.pop() {
            batch
                .sequences
                .iter_mut()
                .filter(|sequence| sequence.request.origin == origin)
                .for_each(|sequence| sequence.generation.cancel());
        }
    }

    /// The KV budget brought up to date with the arena; room made for a staged model that
    /// waits for it; fewer sequences per round while bandwidth stays high; then the
    /// memory-pressure manager, whose weights rung drops a staged model or frees a replaced
    /// one before any request is refused.
    fn relieve_pressure(&mut self, batch: &mut Batch<'_, 'a>) {
        if self.room_wanted.is_some() {
            self.make_room(batch);
        }
        self.update_kv_budget(batch);
        // Models are dropped only for requests that would otherwise be refused.
        let requests_wait = !self.pending.is_empty();
        let mut evictor = ModelEvictor {
            memory: self.memory,
            staging: &mut self.staging,
            retired: &mut self.retired,
            dropped: None,
        };
        let mut relief = BatchRelief {
            preemptor: &mut batch.preemptor,
            sequences: &mut batch.sequences,
            weights: requests_wait.then_some(&mut evictor as &mut dyn WeightsEvictor),
        };
        let levels = self.governor.relieve(&mut relief);
        let dropped = evictor.dropped.take();
        for level in levels {
            self.pressure_action(level);
        }
        self.report_dropped_load(dropped);
    }

    /// The weights rung taken before a request is refused for memory: the staged model is
    /// dropped, or replaced models no batch holds are freed at once. Returns whether weights
    /// memory was freed; the KV cache's budget and the arena's free space grow with it at the
    /// next round, and the request waits for that instead of being refused.
    fn evict_before_refusing(&mut self) -> bool {
        let mut evictor = ModelEvictor {
            memory: self.memory,
            staging: &mut self.staging,
            retired: &mut self.retired,
            dropped: None,
        };
        let freed = evictor.evict_unused();
        let dropped = evictor.dropped.take();
        if freed > 0 {
            self.pressure_action(PressureLevel::EvictUnusedWeights);
        }
        self.report_dropped_load(dropped);
        freed > 0
    }

    /// Says that the background load of `dropped` (when one was dropped) gave its memory to
    /// the requests.
    fn report_dropped_load(&mut self, dropped: Option<String>) {
        let Some(name) = dropped else { return };
        self.statistics.failed_loads += 1;
        self.swap_gaps.clear();
        telemetry::record(EventKind::LoadFailed { model: ShortName::new(&name) });
        let message = alloc::format!(
            "the background load of {name} was dropped: its memory is needed by the requests (try again when they finish)"
        );
        self.say_line(&alloc::format!("error: {message}"));
        self.end_machine_load(Err(&message));
    }

    /// Sets the KV cache's budget to what the arena gives it now, with the admission limit and
    /// pressure thresholds to match.
    fn update_kv_budget(&mut self, batch: &mut Batch<'_, 'a>) {
        let blocks = blocks_in_region(self.kv_budget_bytes(&batch.config), batch.pool.floats_per_block());
        if blocks != batch.pool.limit_blocks() {
            batch.pool.set_limit(blocks);
            batch.reservations.set_limit(blocks);
            let thresholds = self.governor.track_pool(blocks);
            batch.preemptor.set_resume_limit(thresholds.preempt_blocks);
        }
    }

    /// Makes room for the staged model that waits for it, mildest first: the prefix cache,
    /// then the KV chunks and arena segments left free, and when that is not enough, one
    /// running sequence preempted per round (it recomputes its K/V later; no request joins
    /// meanwhile). The load starts as soon as it fits; if the last sequence holding KV memory
    /// is all that stands in its way, it starts when the batch ends.
    fn make_room(&mut self, batch: &mut Batch<'_, 'a>) {
        let Some(name) = self.room_wanted.clone() else { return };
        batch.pool.drop_cached();
        batch.pool.release_free_chunks();
        self.memory.memory().reclaim_segments();
        if scope::with(TensorKind::Small, || self.stage(&name)).is_ok() {
            return;
        }
        let mut relief =
            BatchRelief { preemptor: &mut batch.preemptor, sequences: &mut batch.sequences, weights: None };
        if relief.preempt_one() {
            self.pressure_action(PressureLevel::Preempt);
        }
    }

    /// One round: one forward pass over the weights for every sequence that runs (decoding
    /// rows and prompt chunks together), each token's text sent as soon as it is sampled; the
    /// sequences that finished leave the batch and give back their reservations.
    fn run_round(&mut self, batch: &mut Batch<'_, 'a>) {
        self.wait_for_bandwidth(batch);
        let positions_before: Vec<usize> =
            batch.sequences.iter().map(|sequence| sequence.generation.position()).collect();
        // The console is served at every matmul checkpoint of this forward pass.
        let cpus =
            ServingCpus { inner: self.cpus, desk: &self.desk, console: self.console, clock: self.clock };
        let preempted = batch.preemptor.statistics().preemptions;
        let sampled_before = sampled_tokens(batch);
        let started = self.clock.ticks();
        batch.preemptor.set_spare_weights(self.staging.is_some());
        let outcomes = batch.preemptor.round(&mut batch.sequences, &cpus, &mut batch.scratch, PREFILL_CHUNK);
        let ended = self.clock.ticks();
        // A sequence that ran out of KV memory alone waits for the staged model's memory.
        if batch.preemptor.take_weights_wanted() {
            self.evict_before_refusing();
        }
        for _ in preempted..batch.preemptor.statistics().preemptions {
            self.governor.count_exhaustion_preemption();
            self.pressure_action(PressureLevel::Preempt);
        }
        self.count_round_traffic(batch, &positions_before, started, ended);
        let rows: usize = batch
            .sequences
            .iter()
            .zip(&positions_before)
            .map(|(sequence, before)| sequence.generation.position().saturating_sub(*before))
            .sum();
        if rows > 0 {
            self.desk.counters().record_pass(rows as u64, sampled_tokens(batch) - sampled_before);
        }
        for (slot, outcome) in outcomes.into_iter().enumerate() {
            let step = match outcome {
                Ok(SlotStep::Waiting) => continue,
                Ok(SlotStep::Ran(step)) => Ok(step),
                Err(error) => Err(error),
            };
            let sequence = &mut batch.sequences[slot];
            if sequence.first_token_ns.is_none() && sequence.generation.statistics().generated_tokens > 0 {
                let now = self.clock.now_ns();
                sequence.first_token_ns = Some(now);
                self.first_token_since_boot_ns.get_or_insert(now);
            }
            if self.deliver(batch, slot, step) {
                batch.finished.push(slot);
            }
        }
        while let Some(slot) = batch.finished.pop() {
            let sequence = batch.sequences.swap_remove(slot);
            batch.reservations.release(sequence.reserved_blocks);
        }
    }

    /// Under a bandwidth cap, the round waits, the console served meanwhile, until the cap
    /// allows the pass it is about to run (its rows counted at the tokens each sequence may
    /// feed); a cancel noted meanwhile is applied, and ends that answer without a pass.
    fn wait_for_bandwidth(&mut self, batch: &mut Batch<'_, 'a>) {
        let traffic = PassTraffic::of(&batch.view.file.weights);
        loop {
            for sequence in batch.sequences.iter_mut() {
                if self.cancels.contains(&sequence.request.origin) {
                    sequence.generation.cancel();
                }
            }
            let rows = batch.sequences.iter().flat_map(|sequence| {
                let generation = &sequence.generation;
                let position = generation.position();
                position..position + generation.rows_wanted(PREFILL_CHUNK)
            });
            if !self.governor.must_wait(traffic.rows(rows)) {
                return;
            }
            self.poll_console();
        }
    }

    /// Counts the bytes the round's pass moved (the rows each sequence fed) over the time it
    /// took.
    fn count_round_traffic(&self, batch: &Batch<'_, 'a>, before: &[usize], started: u64, ended: u64) {
        let traffic = PassTraffic::of(&batch.view.file.weights);
        let fed = |(sequence, &before): (&Sequence<'_, '_, '_, 'a>, &usize)| {
            let after = sequence.generation.position();
            if after > before { before..after } else { 0..0 }
        };
        if batch.sequences.iter().zip(before).map(fed).any(|rows| !rows.is_empty()) {
            let rows = batch.sequences.iter().zip(before).flat_map(fed);
            self.governor.count_pass(traffic.rows(rows), started, ended);
        }
    }

    /// Sends what a step produced to its requester, through its stop strings; returns whether
    /// the sequence finished (a stop string in its text ends it with finish "stop").
    fn deliver(&mut self, batch: &mut Batch<'_, 'a>, slot: usize, step: Result<Step, ChatError>) -> bool {
        let sequence = &mut batch.sequences[slot];
        let origin = sequence.request.origin;
        let mut text = String::new();
        match step {
            Ok(Step::Running(piece)) => {
                let stopped = sequence.request.filter_text(&piece, &mut text);
                self.emit_text(origin, &text);
                if stopped {
                    self.finish(batch, slot, Finish::Stop);
                }
                stopped
            }
            Ok(Step::Finished(finish, piece)) => {
                let stopped = sequence.request.filter_text(&piece, &mut text);
                if !stopped {
                    sequence.request.flush_text(&mut text);
                }
                self.emit_text(origin, &text);
                self.finish(batch, slot, if stopped { Finish::Stop } else { finish });
                true
            }
            Err(error) => {
                self.reply_error(origin, &alloc::format!("{error}"));
                true
            }
        }
    }

    /// A finished sequence: its full blocks become a cached prefix for later requests, its
    /// figures are counted, and its requester gets the final record.
    fn finish(&mut self, batch: &mut Batch<'_, 'a>, slot: usize, finish: Finish) {
        let sequence = &mut batch.sequences[slot];
        let history = sequence.generation.history().to_vec();
        sequence.generation.kv_mut().publish(batch.identity, &history);
        let statistics = sequence.generation.statistics();
        let origin = sequence.request.origin;
        telemetry::record(EventKind::RequestFinished {
            id: origin.trace_id(),
            tokens: statistics.generated_tokens as u32,
        });
        self.statistics.turns += 1;
        let now = self.clock.now_ns();
        let total = now.saturating_sub(sequence.request.arrived_ns);
        let first = sequence.first_token_ns.unwrap_or(now).saturating_sub(sequence.request.arrived_ns);
        self.desk.counters().record_generation(statistics.generated_tokens as u64, total);
        self.desk.counters().record_request(total);
        let event = Event::Done {
            usage: Usage {
                prompt_tokens: statistics.prompt_tokens,
                cached_tokens: statistics.cached_tokens,
                completion_tokens: statistics.generated_tokens,
            },
            timings: Timings {
                first_token_ms: first as f64 / 1e6,
                total_ms: total as f64 / 1e6,
                tokens_per_second: statistics.generated_tokens as f64 / (total as f64 / 1e9).max(1e-9),
            },
            finish: finish.name(),
            model: &batch.model.name,
        };
        self.reply(origin, &event);
    }

    fn emit_text(&self, origin: Origin, text: &str) {
        if !text.is_empty() {
            self.reply(origin, &Event::Token { text });
        }
    }

    /// Between two rounds: the console, then a slice of background loading or freeing (its
    /// allocations in the small-object scope), and the gap since the last round.
    fn between_rounds(&mut self, batch: &mut Batch<'_, 'a>) {
        self.poll_console();
        let staging_before = self.swap_in_progress();
        let background_started = self.clock.now_ns();
        let budget = self.stage_budget_ns();
        scope::with(TensorKind::Small, || self.background_work(budget));
        let now = self.clock.now_ns();
        let background_ns = now.saturating_sub(background_started);
        self.record_round_gap(now.saturating_sub(batch.round_start_ns), background_ns, staging_before);
        batch.round_start_ns = now;
    }
}
