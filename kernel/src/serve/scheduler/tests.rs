use super::*;
use crate::serve::pressure::WeightsEvictor;
use crate::{
    hil::SingleCpu,
    infer::synthetic::{SyntheticFormat, SyntheticSpec},
    mm::{
        buffer::tests::host_backed_memory,
        kv::{KvBlockPool, floats_per_block},
        layout::MIB,
    },
    model::TensorType,
    serve::chat::{GenerationSettings, ModelView, ServedModel},
};
use alloc::{string::String, vec::Vec};

const MODEL: u64 = 0x5eed;
const BLOCK_TOKENS: usize = 16;

fn served() -> ServedModel<Vec<u8>> {
    let spec = SyntheticSpec::tiny(256, 11);
    let bytes = spec.generate(SyntheticFormat::Gguf(TensorType::Q8_0)).unwrap().model;
    ServedModel::new("tiny.gguf", bytes.clone(), bytes.len(), None).unwrap()
}

struct Entry<'w, 'f, 'p, 'm> {
    order: u64,
    generation: Generation<'w, 'f, PagedKv<'p, 'm>>,
    text: String,
    peak_blocks: usize,
}

impl<'w, 'f, 'p, 'm> Scheduled<'w, 'f, 'p, 'm> for Entry<'w, 'f, 'p, 'm> {
    fn generation(&self) -> &Generation<'w, 'f, PagedKv<'p, 'm>> {
        &self.generation
    }

    fn generation_mut(&mut self) -> &mut Generation<'w, 'f, PagedKv<'p, 'm>> {
        &mut self.generation
    }

    fn priority(&self) -> u64 {
        self.order
    }
}

/// The outcome of one request: its text and generated tokens, or its error.
type Outcome = Result<(String, usize), ChatError>;

/// Runs `prompts` as one batch over `pool` (all admitted at once, each advancing one step per
/// round, as the server does) and returns each request's outcome, the preemption counts and the
/// most blocks each request held at once.
fn run_batch(
    view: &ModelView<'_>,
    pool: &KvBlockPool<'_>,
    prompts: &[&str],
    settings: &GenerationSettings,
    capacity: usize,
) -> (Vec<Outcome>, PreemptionStatistics, Vec<usize>) {
    run_batch_with(view, pool, prompts, settings, capacity, None)
}

/// Like [`run_batch`]; with `chunk`, every round is one pass for all the sequences
/// ([`Preemptor::round`], prompts fed `chunk` tokens a pass) instead of a pass per sequence.
fn run_batch_with(
    view: &ModelView<'_>,
    pool: &KvBlockPool<'_>,
    prompts: &[&str],
    settings: &GenerationSettings,
    capacity: usize,
    chunk: Option<usize>,
) -> (Vec<Outcome>, PreemptionStatistics, Vec<usize>) {
    let config = *view.file.config();
    let mut preemptor = Preemptor::new(pool, MODEL);
    let mut active = Vec::new();
    for (order, prompt) in prompts.iter().enumerate() {
        let kv = PagedKv::new(pool, config.layers, config.kv_dim(), BLOCK_TOKENS, capacity).unwrap();
        let tokens = view.prompt_tokens(prompt);
        let generation = Generation::with_cached_prefix(view, kv, &tokens, settings, |kv, tokens| {
            kv.with_prefix(MODEL, tokens)
        })
        .unwrap();
        active.push(Entry { order: order as u64, generation, text: String::new(), peak_blocks: 0 });
    }
    let mut state = view.scratch(capacity);
    let mut outcomes: Vec<Option<Outcome>> = prompts.iter().map(|_| None).collect();
    let mut peaks = alloc::vec![0; prompts.len()];
    let mut rounds = 0;
    while !active.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "the batch makes progress");
        let mut finished = Vec::new();
        let mut steps = match chunk {
            Some(chunk) => preemptor.round(&mut active, &SingleCpu, &mut state, chunk),
            None => Vec::new(),
        };
        for slot in 0..active.len() {
            let step = match chunk {
                Some(_) => core::mem::replace(&mut steps[slot], Ok(SlotStep::Waiting)),
                None => preemptor.step(&mut active, slot, &SingleCpu, &mut state),
            };
            let entry = &mut active[slot];
            entry.peak_blocks = entry.peak_blocks.max(entry.generation.kv().blocks_held());
            peaks[entry.order as usize] = entry.peak_blocks;
            match step {
                Ok(SlotStep::Ran(Step::Running(text))) => active[slot].text.push_str(&text),
                Ok(SlotStep::Ran(Step::Finished(_, text))) => {
                    let entry = &mut active[slot];
                    entry.text.push_str(&text);
                    let generated = entry.generation.statistics().generated_tokens;
                    outcomes[entry.order as usize] = Some(Ok((core::mem::take(&mut entry.text), generated)));
                    finished.push(slot);
                }
                Ok(SlotStep::Waiting) => {}
                Err(error) => {
                    outcomes[active[slot].order as usize] = Some(Err(error));
                    finished.push(slot);
                }
            }
        }
        for slot in finished.into_iter().rev() {
            active.swap_remove(slot);
        }
    }
    let outcomes = outcomes.into_iter().map(|outcome| outcome.expect("every request ends")).collect();
    (outcomes, preemptor.statistics(), peaks)
}

const PROMPTS: [&str; 4] =
    ["hello there", "tell me a story about a cat", "what is two plus two", "the quick brown fox jumps"];

#[test]
fn preemption_by_recompute_changes_no_token() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let settings = GenerationSettings { max_tokens: 40, ..GenerationSettings::default() };

    let roomy = KvBlockPool::new(memory, floats, 4096).unwrap();
    let (expected, calm, _) = run_batch(&view, &roomy, &PROMPTS, &settings, 128);
    assert_eq!(calm.preemptions, 0);
    let needed: usize = expected
        .iter()
        .zip(PROMPTS)
        .map(|(outcome, prompt)| {
            let (_, generated) = outcome.as_ref().unwrap();
            (view.prompt_tokens(prompt).len() + generated).div_ceil(BLOCK_TOKENS) * config.layers
        })
        .sum();
    drop(roomy);

    // Room for one sequence at its largest (128 positions), far less than all four at once.
    let tight_blocks = 128 / BLOCK_TOKENS * config.layers;
    assert!(needed > tight_blocks + 4, "the batch needs {needed} blocks, the pool holds {tight_blocks}");
    let tight = KvBlockPool::new(memory, floats, tight_blocks).unwrap();
    let (outcomes, pressure, _) = run_batch(&view, &tight, &PROMPTS, &settings, 128);
    assert!(pressure.preemptions > 0, "the tight pool preempts ({pressure:?})");
    assert_eq!(pressure.resumptions, pressure.preemptions, "every preempted sequence resumed");
    assert_eq!(pressure.refused, 0);
    for (index, (outcome, reference)) in outcomes.iter().zip(&expected).enumerate() {
        assert_eq!(outcome, reference, "request {index} has the same tokens under pressure");
    }
    let statistics = tight.statistics();
    assert_eq!(statistics.blocks_in_use, 0, "every block came back");
    assert!(statistics.blocks_cached <= tight_blocks);
    assert_eq!(tight.available_blocks(), tight_blocks);
}

/// One pass per round for all the sequences (prompt chunks beside decoding rows) gives every
/// request the same tokens as a pass per sequence, with room to spare and under preemption.
#[test]
fn one_pass_per_round_changes_no_token() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let settings = GenerationSettings { max_tokens: 40, ..GenerationSettings::default() };
    let roomy = KvBlockPool::new(memory, floats, 4096).unwrap();
    let (expected, ..) = run_batch(&view, &roomy, &PROMPTS, &settings, 128);
    roomy.drop_cached();
    for chunk in [1, 5, 16] {
        let (outcomes, statistics, _) = run_batch_with(&view, &roomy, &PROMPTS, &settings, 128, Some(chunk));
        assert_eq!(outcomes, expected, "chunks of {chunk}");
        assert_eq!(statistics.preemptions, 0);
        roomy.drop_cached();
    }
    let tight = KvBlockPool::new(memory, floats, 2 * config.layers * 128 / BLOCK_TOKENS).unwrap();
    let (outcomes, statistics, _) = run_batch_with(&view, &tight, &PROMPTS, &settings, 128, Some(8));
    assert_eq!(outcomes, expected, "under preemption");
    assert!(statistics.preemptions > 0, "{statistics:?}");
}

/// A prompt of 60 words, more than eight KV blocks per layer hold, with the settings and the
/// block size of the tests that run it against such a small pool.
fn long_prompt(config: &crate::model::Config) -> (String, GenerationSettings, usize) {
    let settings = GenerationSettings { max_tokens: 8, ..GenerationSettings::default() };
    ("word ".repeat(60), settings, floats_per_block(BLOCK_TOKENS, config.kv_dim()))
}

#[test]
fn a_request_too_large_for_the_whole_cache_ends_with_an_error_and_others_finish() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let (long, settings, floats) = long_prompt(&config);
    let cache_positions = 8 * BLOCK_TOKENS;
    let long_tokens = view.prompt_tokens(&long).len();
    assert!(long_tokens > cache_positions && long_tokens < 256, "{long_tokens}");
    assert!(view.prompt_tokens("hi").len() + 8 < cache_positions);

    let roomy = KvBlockPool::new(memory, floats, 4096).unwrap();
    let (expected, ..) = run_batch(&view, &roomy, &["hi"], &settings, 256);
    drop(roomy);

    // Eight blocks per layer: 128 positions, fewer than the long prompt needs.
    let pool = KvBlockPool::new(memory, floats, 8 * config.layers).unwrap();
    let (outcomes, pressure, _) = run_batch(&view, &pool, &[&long, "hi"], &settings, 256);
    let cache_positions_expected = cache_positions;
    match &outcomes[0] {
        Err(error @ ChatError::DoesNotFit { positions, cache_positions }) => {
            assert_eq!(*cache_positions, cache_positions_expected);
            assert!(*positions >= cache_positions_expected);
            let message = alloc::format!("{error}");
            assert!(message.contains("whole KV cache holds 128"), "{message}");
        }
        other => panic!("the long request cannot fit: {other:?}"),
    }
    assert_eq!(outcomes[1], expected[0], "the short request still gets its tokens");
    assert_eq!(pressure.refused, 1);
    assert_eq!(pool.statistics().blocks_in_use, 0);
}

#[test]
fn the_quota_bounds_one_request_and_leaves_room_for_the_others() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let long = GenerationSettings { max_tokens: 200, ..GenerationSettings::default() };
    let quota = 112;
    let pool = KvBlockPool::new(memory, floats, 4096).unwrap();
    let (alone, ..) = run_batch(&view, &pool, &["hello there"], &long, 256);
    let (quota_outcomes, _, peaks) = run_batch(&view, &pool, &["hello there", "hi"], &long, quota);
    let quota_blocks = quota.div_ceil(BLOCK_TOKENS) * config.layers;
    for (index, peak) in peaks.iter().enumerate() {
        assert!(
            *peak <= quota_blocks,
            "request {index} held {peak} blocks, over its quota of {quota_blocks}"
        );
    }
    let (text, generated) = quota_outcomes[0].as_ref().unwrap();
    let prompt = view.prompt_tokens("hello there").len();
    assert_eq!(prompt + generated, quota, "the long answer stops at its quota");
    let (alone_text, alone_generated) = alone[0].as_ref().unwrap();
    assert!(alone_generated > generated, "without the quota it goes on");
    assert!(alone_text.starts_with(text.as_str()), "the quota cuts the answer, it does not change it");
    assert_eq!(pool.statistics().blocks_in_use, 0);
}

/// Model weights the pressure manager may evict: a real buffer of the weights pool.
struct StagedWeights<'m>(Option<crate::mm::buffer::TensorBuffer<'m>>, u64);

impl WeightsEvictor for StagedWeights<'_> {
    fn evict_unused(&mut self) -> u64 {
        self.0.take().map_or(0, |_| self.1)
    }
}

/// One pass of `manager` over the batch, its actions appended to `events`.
fn relieve_batch<'w, 'f: 'w, 'p, 'm>(
    manager: &mut crate::serve::pressure::PressureManager,
    preemptor: &mut Preemptor<'p, 'm>,
    active: &mut [Entry<'w, 'f, 'p, 'm>],
    weights: &mut dyn WeightsEvictor,
    events: &mut Vec<crate::telemetry::PressureLevel>,
) -> usize {
    let mut relief = BatchRelief { preemptor, sequences: active, weights: Some(weights) };
    manager.relieve(&mut relief, &mut |level| events.push(level))
}

/// Runs one conversation over `pool` to its end, alone, and publishes its K/V as a cached
/// prefix (so the pool holds cached blocks that no running sequence uses).
fn publish_a_finished_conversation(
    view: &ModelView<'_>,
    pool: &KvBlockPool<'_>,
    settings: &GenerationSettings,
) {
    let config = *view.file.config();
    let kv = PagedKv::new(pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
    let tokens = view.prompt_tokens("a cached conversation");
    let mut generation = Generation::with_cached_prefix(view, kv, &tokens, settings, |_, _| 0).unwrap();
    let mut state = view.scratch(128);
    while let Ok(Step::Running(_)) = generation.step(&SingleCpu, &mut state) {}
    let history = generation.history().to_vec();
    assert!(generation.kv_mut().publish(MODEL, &history) > 0);
}

/// Starts `prompts` over `pool` (none attaching a cached prefix) and steps them, slot by
/// slot, until every one is through its prompt; each step must run and emit no text.
fn start_through_prompts<'w, 'f: 'w, 'p, 'm>(
    view: &'w ModelView<'f>,
    pool: &'p KvBlockPool<'m>,
    preemptor: &mut Preemptor<'p, 'm>,
    state: &mut crate::infer::State,
    prompts: &[&str],
    settings: &GenerationSettings,
) -> Vec<Entry<'w, 'f, 'p, 'm>> {
    let config = *view.file.config();
    let mut active: Vec<Entry<'_, '_, '_, '_>> = prompts
        .iter()
        .enumerate()
        .map(|(order, prompt)| {
            let kv = PagedKv::new(pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
            let tokens = view.prompt_tokens(prompt);
            let generation = Generation::with_cached_prefix(view, kv, &tokens, settings, |_, _| 0).unwrap();
            Entry { order: order as u64, generation, text: String::new(), peak_blocks: 0 }
        })
        .collect();
    while active.iter().any(|entry| entry.generation.in_prompt()) {
        for slot in 0..active.len() {
            if active[slot].generation.in_prompt() {
                // Prompt chunks give no text, but the pass that ends the prompt samples the
                // first token and gives its text at once.
                let Ok(SlotStep::Ran(Step::Running(text))) =
                    preemptor.step(&mut active, slot, &SingleCpu, state)
                else {
                    panic!("a prompt step runs");
                };
                active[slot].text.push_str(&text);
            }
        }
    }
    active
}

/// Steps every sequence of `active`, round by round, until all have finished (every step must
/// succeed), and returns each one's text and generated tokens in order of arrival, for
/// `requests` requests.
fn finish_all<'w, 'f: 'w, 'p, 'm>(
    preemptor: &mut Preemptor<'p, 'm>,
    active: &mut Vec<Entry<'w, 'f, 'p, 'm>>,
    state: &mut crate::infer::State,
    requests: usize,
) -> Vec<Option<(String, usize)>> {
    let mut outcomes: Vec<Option<(String, usize)>> = alloc::vec![None; requests];
    let mut rounds = 0;
    while !active.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000);
        let mut finished = Vec::new();
        for slot in 0..active.len() {
            match preemptor.step(active, slot, &SingleCpu, state).unwrap() {
                SlotStep::Ran(Step::Running(text)) => active[slot].text.push_str(&text),
                SlotStep::Ran(Step::Finished(_, text)) => {
                    let entry = &mut active[slot];
                    entry.text.push_str(&text);
                    let generated = entry.generation.statistics().generated_tokens;
                    outcomes[entry.order as usize] = Some((core::mem::take(&mut entry.text), generated));
                    finished.push(slot);
                }
                SlotStep::Waiting => {}
            }
        }
        for slot in finished.into_iter().rev() {
            active.swap_remove(slot);
        }
    }
    outcomes
}

#[test]
fn the_pressure_manager_acts_mildest_first_and_no_request_is_lost() {
    use crate::{
        mm::tensor::TensorKind,
        serve::pressure::{PressureManager, PressureThresholds},
        telemetry::PressureLevel,
    };
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let settings = GenerationSettings { max_tokens: 12, ..GenerationSettings::default() };
    let prompts = ["hello there", "what is two plus two", "the quick brown fox"];
    let budget = 56;
    let pool = KvBlockPool::new(memory, floats, budget).unwrap();
    let (expected, ..) = run_batch(&view, &pool, &prompts[..2], &settings, 128);

    // Cached blocks: a finished sequence's, published.
    publish_a_finished_conversation(&view, &pool, &settings);
    assert!(pool.statistics().blocks_cached > 0);

    // Three sequences through their prompts, none attaching the cache.
    let mut state = view.scratch(128);
    let mut preemptor = Preemptor::new(&pool, MODEL);
    let mut active = start_through_prompts(&view, &pool, &mut preemptor, &mut state, &prompts, &settings);
    let held = pool.statistics().blocks_in_use;
    let cached = pool.statistics().blocks_cached;
    assert!(held + cached >= budget * 85 / 100, "{held} + {cached} of {budget}");

    // Mild pressure: dropping the cached prefixes is enough.
    let mut manager = PressureManager::new(PressureThresholds::for_budget(budget));
    let mut events = Vec::new();
    let mut weights = StagedWeights(Some(memory.alloc(1 << 20, TensorKind::Weights).unwrap()), 1 << 20);
    assert_eq!(relieve_batch(&mut manager, &mut preemptor, &mut active, &mut weights, &mut events), 1);
    assert_eq!(events, [PressureLevel::DropCachedPrefixes]);
    assert_eq!(pool.statistics().blocks_cached, 0);
    assert_eq!(pool.statistics().blocks_in_use, held, "held blocks are untouched");

    // Harder: with the third sequence inactive, it is compressed, then preempted. Relief aims
    // just under what compressing it leaves (so no running sequence is compressed too), and
    // preemption starts far below that.
    preemptor.set_batch_limit(2);
    let third = active[2].generation.kv().blocks_held();
    let left = pool.statistics().blocks_in_use - (third - third.div_ceil(4));
    let tight = PressureThresholds {
        budget_blocks: budget,
        relieve_blocks: left + 1,
        preempt_blocks: 4,
        reject_blocks: budget,
    };
    let mut manager = PressureManager::new(tight);
    events.clear();
    relieve_batch(&mut manager, &mut preemptor, &mut active, &mut weights, &mut events);
    assert_eq!(events, [PressureLevel::CompressInactive, PressureLevel::Preempt]);
    assert!(active[2].generation.is_preempted(), "the lowest-ranked sequence is preempted");
    assert!(!active[0].generation.is_preempted() && !active[1].generation.is_preempted());
    assert!(!active[1].generation.kv().is_compressed(), "relief stopped once under its target");

    // Worst: the second sequence is compressed and preempted too (never the first), weights
    // go, and new requests are refused with a readable error.
    let mut manager = PressureManager::new(PressureThresholds {
        relieve_blocks: 4,
        reject_blocks: 1,
        preempt_blocks: 1,
        ..tight
    });
    events.clear();
    relieve_batch(&mut manager, &mut preemptor, &mut active, &mut weights, &mut events);
    assert_eq!(
        events,
        [PressureLevel::CompressInactive, PressureLevel::Preempt, PressureLevel::EvictUnusedWeights]
    );
    assert!(active[1].generation.is_preempted() && !active[0].generation.kv().is_compressed());
    let refused =
        manager.admit(pool.statistics().blocks_in_use, &mut |level| events.push(level)).unwrap_err();
    assert_eq!(events.last(), Some(&PressureLevel::RejectRequests));
    assert!(alloc::format!("{refused}").starts_with("memory is full"), "{refused}");
    assert_eq!(manager.counts().total(), 4);

    // Every request still ends with its tokens, as before: the compressed ones were preempted,
    // and recompute their K/V exactly.
    preemptor.set_batch_limit(usize::MAX);
    let outcomes = finish_all(&mut preemptor, &mut active, &mut state, prompts.len());
    for (index, reference) in expected.iter().enumerate() {
        assert_eq!(Some(reference.as_ref().unwrap()), outcomes[index].as_ref(), "request {index}");
    }
    assert!(outcomes[2].as_ref().is_some_and(|(_, generated)| *generated > 0));
    assert_eq!(preemptor.statistics().resumptions, 2);
    assert_eq!(pool.statistics().blocks_in_use, 0);
}

#[test]
fn a_preempted_sequence_reattaches_its_own_cached_blocks() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let settings = GenerationSettings { max_tokens: 12, ..GenerationSettings::default() };
    let pool = KvBlockPool::new(memory, floats, 4096).unwrap();
    let (expected, ..) = run_batch(&view, &pool, &PROMPTS[..2], &settings, 128);
    pool.drop_cached();
    let mut preemptor = Preemptor::new(&pool, MODEL);
    let mut active: Vec<Entry<'_, '_, '_, '_>> = PROMPTS[..2]
        .iter()
        .enumerate()
        .map(|(order, prompt)| {
            let kv = PagedKv::new(&pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
            let tokens = view.prompt_tokens(prompt);
            let generation = Generation::with_cached_prefix(&view, kv, &tokens, &settings, |_, _| 0).unwrap();
            Entry { order: order as u64, generation, text: String::new(), peak_blocks: 0 }
        })
        .collect();
    let mut state = view.scratch(128);
    while active.iter().any(|entry| entry.generation.in_prompt()) {
        for slot in 0..active.len() {
            if active[slot].generation.in_prompt()
                && let SlotStep::Ran(Step::Running(text)) =
                    preemptor.step(&mut active, slot, &SingleCpu, &mut state).unwrap()
            {
                active[slot].text.push_str(&text);
            }
        }
    }
    // The manager's preemption: the later request's full blocks go to the prefix cache, where
    // nothing needs the memory, so it finds them when it resumes.
    assert!(preemptor.preempt_lowest(&mut active));
    assert!(active[1].generation.is_preempted() && pool.statistics().blocks_cached > 0);
    let mut outcomes = alloc::vec![None; 2];
    while outcomes.iter().any(Option::is_none) {
        for slot in 0..active.len() {
            if outcomes[slot].is_some() {
                continue;
            }
            match preemptor.step(&mut active, slot, &SingleCpu, &mut state).unwrap() {
                SlotStep::Ran(Step::Running(text)) => active[slot].text.push_str(&text),
                SlotStep::Ran(Step::Finished(_, text)) => {
                    let entry = &mut active[slot];
                    entry.text.push_str(&text);
                    let generated = entry.generation.statistics().generated_tokens;
                    outcomes[slot] = Some(Ok((core::mem::take(&mut entry.text), generated)));
                }
                SlotStep::Waiting => {}
            }
        }
    }
    let statistics = preemptor.statistics();
    assert_eq!(statistics.resumptions, 1);
    assert!(
        statistics.reattached_positions >= BLOCK_TOKENS as u64,
        "it found its own blocks ({statistics:?})"
    );
    for (index, outcome) in outcomes.into_iter().enumerate() {
        assert_eq!(outcome.unwrap(), expected[index], "request {index} has the same tokens");
    }
}

#[test]
fn equal_priorities_still_make_progress() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let settings = GenerationSettings { max_tokens: 30, ..GenerationSettings::default() };
    let roomy = KvBlockPool::new(memory, floats, 4096).unwrap();
    let (expected, ..) = run_batch(&view, &roomy, &PROMPTS, &settings, 128);
    drop(roomy);
    let tight = KvBlockPool::new(memory, floats, 128 / BLOCK_TOKENS * config.layers).unwrap();
    let mut preemptor = Preemptor::new(&tight, MODEL);
    let mut active: Vec<Entry<'_, '_, '_, '_>> = PROMPTS
        .iter()
        .map(|prompt| {
            let kv = PagedKv::new(&tight, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
            let tokens = view.prompt_tokens(prompt);
            let generation = Generation::with_cached_prefix(&view, kv, &tokens, &settings, |_, _| 0).unwrap();
            // Every request has the same rank: ties go by position in the batch.
            Entry { order: 0, generation, text: String::new(), peak_blocks: 0 }
        })
        .collect();
    let mut state = view.scratch(128);
    let mut done = alloc::vec![None; PROMPTS.len()];
    let mut rounds = 0;
    while done.iter().any(Option::is_none) {
        rounds += 1;
        assert!(rounds < 10_000, "equal ranks never deadlock");
        for slot in 0..active.len() {
            if done[slot].is_some() {
                continue;
            }
            match preemptor.step(&mut active, slot, &SingleCpu, &mut state).unwrap() {
                SlotStep::Ran(Step::Running(text)) => active[slot].text.push_str(&text),
                SlotStep::Ran(Step::Finished(_, text)) => {
                    let entry = &mut active[slot];
                    entry.text.push_str(&text);
                    entry.generation.kv_mut().truncate(0);
                    done[slot] = Some((
                        core::mem::take(&mut entry.text),
                        entry.generation.statistics().generated_tokens,
                    ));
                }
                SlotStep::Waiting => {}
            }
        }
    }
    assert!(preemptor.statistics().preemptions > 0);
    for (index, reference) in expected.iter().enumerate() {
        assert_eq!(Some(reference.as_ref().unwrap()), done[index].as_ref(), "request {index}");
    }
}

/// Logits of every forward pass of one sequence, by position.
type LogitsByPosition = Vec<Option<Vec<f32>>>;

/// Steps `slot` once and, when a forward pass ran, keeps its logits under its position.
fn step_keeping_logits<'w, 'f: 'w, 'p, 'm>(
    preemptor: &mut Preemptor<'p, 'm>,
    active: &mut [Entry<'w, 'f, 'p, 'm>],
    slot: usize,
    state: &mut crate::infer::State,
    logits: &mut LogitsByPosition,
) -> SlotStep {
    let before = active[slot].generation.position();
    let step = preemptor.step(active, slot, &SingleCpu, state).unwrap();
    let after = active[slot].generation.position();
    if after > before {
        if logits.len() < after {
            logits.resize(after, None);
        }
        logits[after - 1] = Some(state.logits().to_vec());
    }
    step
}

/// What a batch run under the pressure manager did, per request in order of arrival.
struct PressuredRun {
    histories: Vec<Vec<u32>>,
    logits: Vec<LogitsByPosition>,
    /// The position each request was at when it was compressed, if it was.
    compressed_at: Vec<Option<usize>>,
    /// Rounds each request waited while compressed.
    waited_compressed: Vec<usize>,
    events: Vec<crate::telemetry::PressureLevel>,
    /// The most blocks held as a round began (where the manager looks).
    most_held: usize,
}

/// Runs `prompts` as one batch over `pool`, every one in every round (no batch limit), with
/// the pressure manager acting at `thresholds` before each round.
fn run_pressured(
    view: &ModelView<'_>,
    pool: &KvBlockPool<'_>,
    prompts: &[&str],
    settings: &GenerationSettings,
    thresholds: crate::serve::pressure::PressureThresholds,
) -> PressuredRun {
    let config = *view.file.config();
    let mut preemptor = Preemptor::new(pool, MODEL);
    assert_eq!(preemptor.batch_limit(), usize::MAX, "no throttle");
    preemptor.set_resume_limit(thresholds.preempt_blocks);
    let mut manager = crate::serve::pressure::PressureManager::new(thresholds);
    let mut active: Vec<Entry<'_, '_, '_, '_>> = prompts
        .iter()
        .enumerate()
        .map(|(order, prompt)| {
            let kv = PagedKv::new(pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
            let tokens = view.prompt_tokens(prompt);
            let generation = Generation::with_cached_prefix(view, kv, &tokens, settings, |_, _| 0).unwrap();
            Entry { order: order as u64, generation, text: String::new(), peak_blocks: 0 }
        })
        .collect();
    let mut state = view.scratch(128);
    let mut run = PressuredRun {
        histories: alloc::vec![Vec::new(); prompts.len()],
        logits: alloc::vec![Vec::new(); prompts.len()],
        compressed_at: alloc::vec![None; prompts.len()],
        waited_compressed: alloc::vec![0; prompts.len()],
        events: Vec::new(),
        most_held: 0,
    };
    let mut rounds = 0;
    while !active.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "the batch makes progress");
        let mut relief = BatchRelief { preemptor: &mut preemptor, sequences: &mut active, weights: None };
        manager.relieve(&mut relief, &mut |level| run.events.push(level));
        run.most_held = run.most_held.max(pool.statistics().blocks_in_use);
        for entry in &active {
            let order = entry.order as usize;
            if entry.generation.kv().is_compressed() && run.compressed_at[order].is_none() {
                run.compressed_at[order] = Some(entry.generation.position());
                assert!(order > 0, "the first in line is never compressed");
            }
        }
        let mut finished = Vec::new();
        for slot in 0..active.len() {
            let order = active[slot].order as usize;
            let was_compressed = active[slot].generation.kv().is_compressed();
            match step_keeping_logits(&mut preemptor, &mut active, slot, &mut state, &mut run.logits[order]) {
                SlotStep::Ran(Step::Finished(..)) => {
                    run.histories[order] = active[slot].generation.history().to_vec();
                    finished.push(slot);
                }
                SlotStep::Waiting if was_compressed => run.waited_compressed[order] += 1,
                _ => {}
            }
        }
        for slot in finished.into_iter().rev() {
            active.swap_remove(slot);
        }
    }
    assert_eq!(pool.statistics().blocks_in_use, 0);
    run
}

#[test]
fn memory_pressure_compresses_waiting_sequences_without_a_throttle() {
    use crate::serve::pressure::PressureThresholds;
    use crate::telemetry::PressureLevel;
    let model = served();
    let view = model.view().unwrap();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, view.file.config().kv_dim());
    let settings = GenerationSettings { max_tokens: 24, temperature: 0.0, ..GenerationSettings::default() };
    let prompts = ["hello there", "what is two plus two", "the quick brown fox"];

    // Unpressured: the most blocks the batch holds as a round begins, and each answer with
    // every pass's logits.
    let roomy = KvBlockPool::new(memory, floats, 4096).unwrap();
    let expected = run_pressured(&view, &roomy, &prompts, &settings, PressureThresholds::for_budget(1 << 20));
    assert!(expected.events.is_empty() && expected.compressed_at.iter().all(Option::is_none));
    drop(roomy);

    // A budget the batch fills to 90% at its largest: past the relief threshold (85%), under
    // preemption (95%).
    let budget = expected.most_held * 100 / 90;
    let pool = KvBlockPool::new(memory, floats, budget).unwrap();
    let run = run_pressured(&view, &pool, &prompts, &settings, PressureThresholds::for_budget(budget));
    assert!(
        run.events.contains(&PressureLevel::CompressInactive),
        "compression ran under memory pressure ({:?})",
        run.events
    );
    let compressed: Vec<usize> =
        (0..prompts.len()).filter(|&order| run.compressed_at[order].is_some()).collect();
    assert!(!compressed.is_empty());
    assert!(
        compressed.iter().any(|&order| run.waited_compressed[order] > 0),
        "a compressed sequence waited for memory ({:?})",
        run.waited_compressed
    );

    // Every answer: the same tokens as unpressured, or the same until a near-tie; and every pass
    // within the tolerance of the int8 tests (5% of the largest logit).
    let mut compared_after_compression = 0;
    for order in 0..prompts.len() {
        let (history, reference_history) = (&run.histories[order], &expected.histories[order]);
        let agree = history.iter().zip(reference_history).take_while(|(a, b)| a == b).count();
        for position in 0..agree.min(run.logits[order].len()) {
            let (Some(got), Some(want)) = (&run.logits[order][position], &expected.logits[order][position])
            else {
                continue;
            };
            let scale = want.iter().fold(0.0f32, |largest, value| largest.max(value.abs()));
            let worst = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(
                worst <= 0.05 * scale,
                "request {order} position {position}: logits moved by {worst} of {scale}"
            );
            if run.compressed_at[order].is_some_and(|at| position >= at) {
                compared_after_compression += 1;
            }
        }
        if agree < history.len().min(reference_history.len()) {
            // The answers part at a token whose logits were nearly tied unpressured.
            let mut sorted = expected.logits[order][agree - 1].clone().unwrap();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let scale = sorted[0].abs().max(sorted[sorted.len() - 1].abs());
            assert!(
                sorted[0] - sorted[1] <= 0.1 * scale,
                "request {order} parted at {agree} without a near-tie"
            );
        } else {
            assert_eq!(history.len(), reference_history.len(), "request {order}");
        }
    }
    assert!(compared_after_compression > 0, "passes after a compression were compared");
}

#[test]
fn a_sequence_alone_waits_for_spare_weights_memory_instead_of_ending() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let (long, settings, floats) = long_prompt(&config);
    // Eight blocks per layer: 128 positions, fewer than the long prompt needs.
    let pool = KvBlockPool::new(memory, floats, 8 * config.layers).unwrap();
    let mut preemptor = Preemptor::new(&pool, MODEL);
    let kv = PagedKv::new(&pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 256).unwrap();
    let tokens = view.prompt_tokens(&long);
    let generation = Generation::with_cached_prefix(&view, kv, &tokens, &settings, |kv, tokens| {
        kv.with_prefix(MODEL, tokens)
    })
    .unwrap();
    let mut active = alloc::vec![Entry { order: 0, generation, text: String::new(), peak_blocks: 0 }];
    let mut state = view.scratch(256);

    // A model staged in the background could give memory back: out of blocks alone, the
    // sequence waits for it (preempted, its blocks returned) instead of ending.
    preemptor.set_spare_weights(true);
    let mut rounds = 0;
    while !preemptor.take_weights_wanted() {
        rounds += 1;
        assert!(rounds < 100, "the sequence runs out of blocks");
        let steps = preemptor.round(&mut active, &SingleCpu, &mut state, 16);
        assert!(steps[0].is_ok(), "it waits, it does not end: {:?}", steps[0]);
    }
    assert!(active[0].generation.is_preempted());
    assert_eq!(pool.statistics().blocks_in_use, 0);
    assert_eq!(preemptor.statistics().refused, 0);

    // The staged model dropped, the cache grows: the sequence resumes and runs past the
    // positions that did not fit before.
    preemptor.set_spare_weights(false);
    pool.set_limit(4096);
    preemptor.set_resume_limit(4096);
    for _ in 0..100 {
        let steps = preemptor.round(&mut active, &SingleCpu, &mut state, 16);
        assert!(steps[0].is_ok(), "{:?}", steps[0]);
        if active[0].generation.position() > 8 * BLOCK_TOKENS {
            break;
        }
    }
    assert!(!active[0].generation.is_preempted());
    assert!(active[0].generation.position() > 8 * BLOCK_TOKENS, "{}", active[0].generation.position());
    assert!(!preemptor.take_weights_wanted());
}
