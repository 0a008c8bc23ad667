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
        for slot in 0..active.len() {
            let step = preemptor.step(&mut active, slot, &SingleCpu, &mut state);
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

#[test]
fn a_request_too_large_for_the_whole_cache_ends_with_an_error_and_others_finish() {
    let model = served();
    let view = model.view().unwrap();
    let config = *view.file.config();
    let memory = host_backed_memory(64 * MIB);
    let floats = floats_per_block(BLOCK_TOKENS, config.kv_dim());
    let long = "word ".repeat(60);
    let settings = GenerationSettings { max_tokens: 8, ..GenerationSettings::default() };
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
    {
        let kv = PagedKv::new(&pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
        let tokens = view.prompt_tokens("a cached conversation");
        let mut generation = Generation::with_cached_prefix(&view, kv, &tokens, &settings, |_, _| 0).unwrap();
        let mut state = view.scratch(128);
        while let Ok(Step::Running(_)) = generation.step(&SingleCpu, &mut state) {}
        let history = generation.history().to_vec();
        assert!(generation.kv_mut().publish(MODEL, &history) > 0);
    }
    let cached = pool.statistics().blocks_cached;
    assert!(cached > 0);

    // Three sequences through their prompts, none attaching the cache.
    let mut state = view.scratch(128);
    let mut preemptor = Preemptor::new(&pool, MODEL);
    let mut active: Vec<Entry<'_, '_, '_, '_>> = prompts
        .iter()
        .enumerate()
        .map(|(order, prompt)| {
            let kv = PagedKv::new(&pool, config.layers, config.kv_dim(), BLOCK_TOKENS, 128).unwrap();
            let tokens = view.prompt_tokens(prompt);
            let generation = Generation::with_cached_prefix(&view, kv, &tokens, &settings, |_, _| 0).unwrap();
            Entry { order: order as u64, generation, text: String::new(), peak_blocks: 0 }
        })
        .collect();
    while active.iter().any(|entry| entry.generation.in_prompt()) {
        for slot in 0..active.len() {
            if active[slot].generation.in_prompt() {
                assert_eq!(
                    preemptor.step(&mut active, slot, &SingleCpu, &mut state),
                    Ok(SlotStep::Ran(Step::Running(String::new())))
                );
            }
        }
    }
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

    // Harder: with the third sequence inactive, it is compressed, then preempted.
    preemptor.set_batch_limit(2);
    let tight = PressureThresholds {
        budget_blocks: budget,
        relieve_blocks: 4,
        preempt_blocks: 4,
        reject_blocks: budget,
    };
    let mut manager = PressureManager::new(tight);
    events.clear();
    relieve_batch(&mut manager, &mut preemptor, &mut active, &mut weights, &mut events);
    assert_eq!(events, [PressureLevel::CompressInactive, PressureLevel::Preempt]);
    assert!(active[2].generation.is_preempted(), "the lowest-ranked sequence is preempted");
    assert!(!active[0].generation.is_preempted() && !active[1].generation.is_preempted());

    // Worst: weights go, and new requests are refused with a readable error.
    let mut manager =
        PressureManager::new(PressureThresholds { reject_blocks: 1, preempt_blocks: 1, ..tight });
    events.clear();
    relieve_batch(&mut manager, &mut preemptor, &mut active, &mut weights, &mut events);
    assert_eq!(events, [PressureLevel::Preempt, PressureLevel::EvictUnusedWeights]);
    let refused =
        manager.admit(pool.statistics().blocks_in_use, &mut |level| events.push(level)).unwrap_err();
    assert_eq!(events.last(), Some(&PressureLevel::RejectRequests));
    assert!(alloc::format!("{refused}").starts_with("memory is full"), "{refused}");
    assert_eq!(manager.counts().total(), 3);

    // Every request still ends with its tokens; the two never compressed as before.
    preemptor.set_batch_limit(usize::MAX);
    let mut outcomes: Vec<Option<(String, usize)>> = alloc::vec![None; 3];
    let mut rounds = 0;
    while !active.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000);
        let mut finished = Vec::new();
        for slot in 0..active.len() {
            match preemptor.step(&mut active, slot, &SingleCpu, &mut state).unwrap() {
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
    for (index, reference) in expected.iter().enumerate() {
        assert_eq!(Some(reference.as_ref().unwrap()), outcomes[index].as_ref(), "request {index}");
    }
    assert!(outcomes[2].as_ref().is_some_and(|(_, generated)| *generated > 0));
    let statistics = preemptor.statistics();
    assert!(statistics.reattached_positions > 0, "a resumed sequence found its own blocks ({statistics:?})");
    assert_eq!(pool.statistics().blocks_in_use, 0);
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
