//! Tests of the paged KV cache: paging against the contiguous store, reference counts, prefix
//! sharing, copy-on-write and LRU eviction, by example, by property and through the engine.

use super::*;
use crate::{
    hil::SingleCpu,
    infer::{
        ContiguousKv, State, forward,
        synthetic::{SyntheticFormat, SyntheticSpec},
    },
    mm::{buffer::tests::host_backed_memory, layout::MIB},
    model::{ModelFile, TensorType},
};
use proptest::prelude::*;
use std::collections::HashMap;

fn logits_with(kv: &mut dyn KvStore, model: &ModelFile<'_>, tokens: &[u32]) -> Vec<f32> {
    logits_from(kv, model, tokens, 0)
}

/// The logits of positions `start..` of `tokens`, positions before `start` already in `kv`.
fn logits_from(kv: &mut dyn KvStore, model: &ModelFile<'_>, tokens: &[u32], start: usize) -> Vec<f32> {
    let weights = &model.weights;
    let mut state = State::new(weights);
    let mut all = Vec::new();
    for (position, &token) in tokens.iter().enumerate().skip(start) {
        all.extend_from_slice(forward(weights, &mut state, kv, &SingleCpu, token, position).unwrap());
    }
    all
}

/// A three-layer F32 GGUF model of 300 tokens (exact arithmetic, for comparing KV stores).
fn three_layer_f32_model(context_length: usize, seed: u64) -> Vec<u8> {
    let spec = SyntheticSpec { layers: 3, vocab_size: 300, ..SyntheticSpec::tiny(context_length, seed) };
    spec.generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap().model
}

#[test]
fn paged_logits_equal_contiguous_for_every_block_size() {
    let bytes = three_layer_f32_model(80, 5);
    let model = ModelFile::parse(&bytes).unwrap();
    let config = model.weights.config;
    let tokens: Vec<u32> = (0..70).map(|index| (index * 37 % 300) as u32).collect();
    let mut contiguous = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
    let expected = logits_with(&mut contiguous, &model, &tokens);
    let memory = host_backed_memory(64 * MIB);
    for block_tokens in [8, 16, 32] {
        let pool = KvBlockPool::new(memory, floats_per_block(block_tokens, config.kv_dim()), 1000).unwrap();
        let mut paged = PagedKv::new(&pool, config.layers, config.kv_dim(), block_tokens, 80).unwrap();
        assert_eq!(logits_with(&mut paged, &model, &tokens), expected, "block size {block_tokens}");
        assert_eq!(paged.blocks_held(), 70usize.div_ceil(block_tokens) * config.layers);
        drop(paged);
        assert_eq!(pool.statistics().blocks_in_use, 0, "blocks return on drop");
    }
}

#[test]
fn quota_and_budget_are_errors() {
    let memory = host_backed_memory(32 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(4, 8), 2).unwrap();
    let mut paged = PagedKv::new(&pool, 1, 8, 4, 100).unwrap();
    let row = [1.0f32; 8];
    for position in 0..8 {
        paged.write(0, position, &row, &row).unwrap();
    }
    assert_eq!(paged.write(0, 8, &row, &row), Err(KvError::OutOfMemory), "pool limit of 2 blocks");
    assert_eq!(
        paged.write(0, 100, &row, &row),
        Err(KvError::PositionOutOfRange { position: 100, capacity: 100 })
    );
    assert_eq!(paged.write(1, 0, &row, &row), Err(KvError::LayerOutOfRange { layer: 1 }));
    assert_eq!(paged.write(0, 0, &row[..3], &row), Err(KvError::WrongRowLength { length: 3, expected: 8 }));
    paged.truncate(3);
    assert_eq!(pool.statistics().blocks_in_use, 1);
    assert!(PagedKv::new(&pool, 1, 9, 4, 10).is_none(), "block shape must match the pool");
    assert!(KvBlockPool::new(memory, 0, 1).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Rows read back are the rows written, for random layers, positions and block sizes.
    #[test]
    fn rows_round_trip(block_tokens in 1usize..9, writes in proptest::collection::vec((0usize..3, 0usize..40, any::<i16>()), 1..60)) {
        let memory = host_backed_memory(16 * MIB);
        let pool = KvBlockPool::new(memory, floats_per_block(block_tokens, 4), 10_000).unwrap();
        let mut paged = PagedKv::new(&pool, 3, 4, block_tokens, 40).unwrap();
        let mut model = HashMap::new();
        for (layer, position, value) in writes {
            let key = [f32::from(value); 4];
            let val = [f32::from(value) + 0.5; 4];
            paged.write(layer, position, &key, &val).unwrap();
            model.insert((layer, position), value);
        }
        for (&(layer, position), &value) in &model {
            prop_assert_eq!(paged.key(layer, position), &[f32::from(value); 4]);
            prop_assert_eq!(paged.value(layer, position), &[f32::from(value) + 0.5; 4]);
            // The runs hold the rows of the following positions of the block, in order.
            let (keys, values) = (paged.keys_from(layer, position), paged.values_from(layer, position));
            prop_assert_eq!(keys.len(), (block_tokens - position % block_tokens) * 4);
            prop_assert_eq!(values.len(), keys.len());
            for (index, (key, value)) in keys.chunks_exact(4).zip(values.chunks_exact(4)).enumerate() {
                if let Some(&later) = model.get(&(layer, position + index)) {
                    prop_assert_eq!(key, &[f32::from(later); 4]);
                    prop_assert_eq!(value, &[f32::from(later) + 0.5; 4]);
                }
            }
        }
    }
}

fn synthetic_model(seed: u64) -> crate::infer::synthetic::SyntheticModel {
    let spec = SyntheticSpec {
        dim: 32,
        hidden_dim: 48,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab_size: 300,
        context_length: 96,
        tied: true,
        seed,
    };
    spec.generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap()
}

#[test]
fn prefix_sharing_gives_the_logits_of_no_sharing() {
    const MODEL: u64 = 11;
    let generated = synthetic_model(3);
    let model = ModelFile::parse(&generated.model).unwrap();
    let config = model.weights.config;
    let (layers, kv_dim, block_tokens) = (config.layers, config.kv_dim(), 8);
    let system: Vec<u32> = (0..37).map(|index| (index * 13 % 200) as u32).collect();
    let prompt = |tail: &[u32]| -> Vec<u32> { system.iter().chain(tail).copied().collect() };
    let first = prompt(&[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]);
    let second = prompt(&[90, 91, 92, 93, 94]);
    assert_eq!(first.len(), 56, "the first prompt fills seven blocks exactly");
    let unshared = |tokens: &[u32]| {
        let mut contiguous = ContiguousKv::new(layers, kv_dim, config.context_length).unwrap();
        logits_with(&mut contiguous, &model, tokens)
    };
    let vocab = config.vocab_size;

    let memory = host_backed_memory(16 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(block_tokens, kv_dim), 1000).unwrap();
    let mut first_kv = PagedKv::new(&pool, layers, kv_dim, block_tokens, 96).unwrap();
    assert_eq!(first_kv.with_prefix(MODEL, &first), 0, "nothing cached yet");
    assert_eq!(logits_with(&mut first_kv, &model, &first), unshared(&first));
    assert_eq!(first_kv.publish(MODEL, &first), 7 * layers);

    // A second prompt shares the four full blocks of the system prompt while the first runs.
    let mut second_kv = PagedKv::new(&pool, layers, kv_dim, block_tokens, 96).unwrap();
    assert_eq!(second_kv.with_prefix(MODEL, &second), 32);
    assert!(second_kv.blocks[..4 * layers].iter().all(|block| block.references() == 2));
    assert_eq!(logits_from(&mut second_kv, &model, &second, 32), unshared(&second)[32 * vocab..]);
    assert_eq!(pool.prefix_statistics().copied_blocks, 0, "the shared blocks were only read");
    assert_eq!(second_kv.with_prefix(MODEL + 1, &second), 0, "another model shares nothing");
    drop(second_kv);

    // The same prompt again, after the first sequence finished: every block comes from the
    // LRU list, and the last prompt token is computed again, copying the last block.
    drop(first_kv);
    assert_eq!(pool.statistics().blocks_cached, 7 * layers);
    let mut again = PagedKv::new(&pool, layers, kv_dim, block_tokens, 96).unwrap();
    assert_eq!(again.with_prefix(MODEL, &first), 55);
    assert_eq!(logits_from(&mut again, &model, &first, 55), unshared(&first)[55 * vocab..]);
    assert_eq!(pool.prefix_statistics().copied_blocks, 0, "a block held alone leaves the cache instead");
    // A fork rewrites the last two positions of a shared block: it copies the block, and the
    // sequence it came from still reads its own rows.
    let mut forked = again.fork();
    forked.truncate(54);
    let rewritten: Vec<u32> = first[..54].iter().chain(&[7, 8]).copied().collect();
    assert_eq!(logits_from(&mut forked, &model, &rewritten, 54), unshared(&rewritten)[54 * vocab..]);
    assert_eq!(pool.prefix_statistics().copied_blocks, layers as u64, "the fork copied the block it wrote");
    let longer: Vec<u32> = first.iter().chain(&[9]).copied().collect();
    assert_eq!(logits_from(&mut again, &model, &longer, 56), unshared(&longer)[56 * vocab..]);
    let statistics = pool.prefix_statistics();
    assert_eq!(statistics.queried_tokens, (56 + 42 + 42 + 56) as u64);
    assert_eq!(statistics.hit_tokens, (32 + 55) as u64);
}

#[test]
fn copy_on_write_keeps_the_other_holder_intact() {
    let memory = host_backed_memory(16 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(2, 1), 3).unwrap();
    let mut first = pool.alloc().unwrap();
    first.make_mut().unwrap().copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
    let mut second = first.share();
    assert_eq!((first.references(), pool.statistics().blocks_in_use), (2, 1));
    second.make_mut().unwrap()[0] = 9.0;
    assert_eq!(&first[..], &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(&second[..], &[9.0, 2.0, 3.0, 4.0]);
    assert_eq!((first.references(), second.references(), pool.statistics().blocks_in_use), (1, 1, 2));
    let _third = pool.alloc().unwrap();
    let shared = first.share();
    assert_eq!(first.make_mut(), Err(KvError::OutOfMemory), "a copy needs a block of the budget");
    assert_eq!(&shared[..], &[1.0, 2.0, 3.0, 4.0], "a failed copy changes nothing");
}

#[test]
fn lru_evicts_the_ends_of_finished_sequences_first() {
    let memory = host_backed_memory(16 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(1, 1), 4).unwrap();
    let row = [1.0f32];
    let mut sequence = PagedKv::new(&pool, 1, 1, 1, 10).unwrap();
    for position in 0..4 {
        sequence.write(0, position, &row, &row).unwrap();
    }
    assert_eq!(sequence.publish(1, &[10, 11, 12, 13]), 4);
    let ids: Vec<u32> = sequence.blocks.iter().map(|block| block.id).collect();
    drop(sequence);
    assert_eq!(pool.statistics().blocks_cached, 4);
    // Two new blocks evict the two last blocks of the finished sequence, not its prefix.
    let fresh = [pool.alloc().unwrap(), pool.alloc().unwrap()];
    assert_eq!(fresh.iter().map(|block| block.id).collect::<Vec<_>>(), [ids[3], ids[2]]);
    let mut again = PagedKv::new(&pool, 1, 1, 1, 10).unwrap();
    assert_eq!(again.with_prefix(1, &[10, 11, 12, 13, 14]), 2, "the prefix survived");
    assert_eq!(pool.prefix_statistics().evicted_blocks, 2);
    assert_eq!(pool.alloc().err(), Some(KvError::OutOfMemory), "held blocks are never evicted");
    drop(again);
    assert_eq!(pool.drop_cached(), 2);
    assert_eq!(pool.statistics().blocks_cached, 0);
}

#[test]
fn a_pool_that_grew_to_a_second_segment_and_shrank_back_keeps_no_bookkeeping_of_its_peak() {
    // The soak's tiny models: 16 positions of a 32-wide K and V per block, 128 blocks a chunk.
    let memory = host_backed_memory(32 * MIB);
    let floats = floats_per_block(16, 32);
    let pool = KvBlockPool::new(memory, floats, 10_000).unwrap();
    let per_chunk = CHUNK_BYTES as usize / (floats * 4);
    let take = |count: usize| -> Vec<KvBlock<'_, '_>> {
        (0..count).map(|_| pool.alloc_for_overwrite().unwrap()).collect()
    };
    assert_eq!(pool.bookkeeping_bytes(), 0, "a new pool has no bookkeeping yet");
    // The baseline: one chunk in use, then given back, as at an idle point after a swap.
    let blocks = take(per_chunk);
    let one_chunk = pool.bookkeeping_bytes();
    assert!(one_chunk >= per_chunk * 4, "every block has its entry");
    drop(blocks);
    assert_eq!(pool.release_free_chunks(), 1);
    assert_eq!(pool.bookkeeping_bytes(), 0, "with its chunks, the pool gives back their bookkeeping");
    // Grown to four chunks: two arena segments.
    let mut blocks = take(3 * per_chunk + 1);
    assert_eq!(pool.statistics().chunks, 4);
    assert!(pool.bookkeeping_bytes() > 2 * one_chunk);
    // The last chunk still holds a block: nothing after it can go, the others can.
    let last = blocks.pop().unwrap();
    drop(blocks);
    assert_eq!(pool.release_free_chunks(), 3);
    assert_eq!(pool.statistics().chunks, 1);
    assert!(pool.bookkeeping_bytes() > one_chunk, "block numbers up to the last chunk's stay");
    // The last chunk's free blocks are still taken first, and the block still reads back.
    let mut again = pool.alloc_for_overwrite().unwrap();
    again.make_mut().unwrap().fill(2.0);
    assert!(
        again.id as usize / per_chunk == last.id as usize / per_chunk
            && again.iter().all(|&value| value == 2.0)
    );
    drop((again, last));
    assert_eq!(pool.release_free_chunks(), 1);
    assert_eq!(pool.bookkeeping_bytes(), 0);
    // Back to one chunk in use: the bookkeeping is the baseline's, not the peak's.
    let blocks = take(per_chunk);
    assert_eq!(pool.bookkeeping_bytes(), one_chunk);
    assert_eq!(
        pool.statistics(),
        KvPoolStatistics {
            blocks_in_use: per_chunk,
            blocks_free: 0,
            blocks_cached: 0,
            block_bytes: floats * 4,
            chunks: 1,
        }
    );
    drop(blocks);
}

/// What the engine would store at `position` of `layer` after `tokens[..=position]`: a value
/// that depends on the whole prefix, so a wrongly shared block shows.
fn row_for(tokens: &[u32], position: usize, layer: usize) -> f32 {
    let hash = chain_hash(layer as u64, &tokens[..=position]);
    (hash % 10_000) as f32
}

/// One step of the random workload over several sequences.
#[derive(Clone, Debug)]
enum Step {
    /// Starts a sequence on prompt `prompt` (of a small set, so prompts share prefixes),
    /// with or without prefix sharing.
    Start { prompt: usize, share: bool },
    /// Appends tokens to a sequence.
    Decode { sequence: usize, tokens: Vec<u32> },
    /// Publishes a sequence's full blocks.
    Publish { sequence: usize },
    /// Forks a sequence.
    Fork { sequence: usize },
    /// Cuts a sequence back.
    Truncate { sequence: usize, length: usize },
    /// Ends a sequence.
    Finish { sequence: usize },
    /// Drops the cached blocks.
    DropCached,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..4, any::<bool>()).prop_map(|(prompt, share)| Step::Start { prompt, share }),
        4 => (any::<usize>(), proptest::collection::vec(0u32..3, 1..6))
            .prop_map(|(sequence, tokens)| Step::Decode { sequence, tokens }),
        2 => any::<usize>().prop_map(|sequence| Step::Publish { sequence }),
        1 => any::<usize>().prop_map(|sequence| Step::Fork { sequence }),
        1 => (any::<usize>(), 0usize..12).prop_map(|(sequence, length)| Step::Truncate { sequence, length }),
        2 => any::<usize>().prop_map(|sequence| Step::Finish { sequence }),
        1 => Just(Step::DropCached),
    ]
}

const LAYERS: usize = 2;

/// Writes `tokens[start..]` into `kv`; on running out of blocks, cuts the sequence back to
/// what was written in every layer.
fn write_rows(kv: &mut PagedKv<'_, '_>, tokens: &mut Vec<u32>, start: usize) {
    for position in start..tokens.len() {
        for layer in 0..LAYERS {
            let row = [row_for(tokens, position, layer)];
            if kv.write(layer, position, &row, &[row[0] + 0.5]).is_err() {
                kv.truncate(position);
                tokens.truncate(position);
                return;
            }
        }
    }
}

/// Checks every invariant of the pool against the live sequences.
fn check_invariants(
    pool: &KvBlockPool<'_>,
    live: &[(PagedKv<'_, '_>, Vec<u32>)],
) -> Result<(), TestCaseError> {
    let mut holders: HashMap<u32, u32> = HashMap::new();
    for (kv, tokens) in live {
        prop_assert_eq!(kv.blocks.len(), tokens.len().div_ceil(kv.block_tokens) * LAYERS);
        for block in &kv.blocks {
            *holders.entry(block.id).or_default() += 1;
        }
        // Content: every row is the one its own prefix gives, whoever shares the block.
        for position in 0..tokens.len() {
            for layer in 0..LAYERS {
                let expected = row_for(tokens, position, layer);
                prop_assert_eq!(kv.key(layer, position), &[expected]);
                prop_assert_eq!(kv.value(layer, position), &[expected + 0.5]);
            }
        }
    }
    let inner = pool.inner.lock();
    let mut on_lru = 0;
    let mut cursor = inner.cache.head;
    while cursor != NO_BLOCK {
        let entry = &inner.blocks[cursor as usize];
        prop_assert_eq!(entry.references, 0, "an LRU block is held by nobody");
        prop_assert!(entry.published.is_some(), "an LRU block is published");
        on_lru += 1;
        cursor = entry.next;
    }
    prop_assert_eq!(on_lru, inner.cache.unreferenced);
    for &id in &inner.free {
        let entry = &inner.blocks[id as usize];
        prop_assert!(
            entry.references == 0 && entry.published.is_none(),
            "a free block is unheld and unpublished"
        );
    }
    for (id, entry) in inner.blocks.iter().enumerate() {
        // A block is in n tables exactly when its count is n.
        prop_assert_eq!(entry.references, holders.get(&(id as u32)).copied().unwrap_or(0), "block {}", id);
        if let Some(key) = entry.published {
            prop_assert_eq!(inner.cache.entries[&key].block, id as u32);
        }
    }
    prop_assert_eq!(
        inner.cache.entries.len(),
        inner.blocks.iter().filter(|entry| entry.published.is_some()).count()
    );
    prop_assert_eq!(inner.in_use, holders.len());
    prop_assert_eq!(inner.in_use + inner.cache.unreferenced + inner.free.len(), inner.blocks.len());
    prop_assert!(inner.in_use + inner.cache.unreferenced <= inner.limit_blocks);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random sequences that share prefixes, fork, write, publish, cut back and finish over a
    /// small budget (so blocks are evicted and copies fail): the accounting is exact, counts
    /// equal the number of tables holding each block, the LRU list holds only unheld blocks,
    /// and every sequence reads back exactly its own rows.
    #[test]
    fn sharing_keeps_counts_and_contents(
        block_tokens in 1usize..5,
        limit in 6usize..40,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        static MEMORY: std::sync::OnceLock<&'static BackedMemory> = std::sync::OnceLock::new();
        let memory = *MEMORY.get_or_init(|| host_backed_memory(16 * MIB));
        let prompts: [Vec<u32>; 4] = [vec![0, 1, 2, 0, 1, 2, 0, 1], vec![0, 1, 2, 0, 1, 2, 2], vec![0, 1, 2, 0, 1, 2, 0, 1], vec![2, 2]];
        let pool = KvBlockPool::new(memory, floats_per_block(block_tokens, 1), limit).unwrap();
        let mut live: Vec<(PagedKv<'_, '_>, Vec<u32>)> = Vec::new();
        for step in steps {
            let count = live.len().max(1);
            match step {
                Step::Start { prompt, share } => {
                    let mut kv = PagedKv::new(&pool, LAYERS, 1, block_tokens, 12).unwrap();
                    let mut tokens = prompts[prompt].clone();
                    let filled = if share { kv.with_prefix(5, &tokens) } else { 0 };
                    prop_assert!(filled < tokens.len());
                    write_rows(&mut kv, &mut tokens, filled);
                    live.push((kv, tokens));
                }
                Step::Decode { sequence, tokens: more } if !live.is_empty() => {
                    let (kv, tokens) = &mut live[sequence % count];
                    let start = tokens.len();
                    tokens.extend(more);
                    tokens.truncate(12);
                    write_rows(kv, tokens, start);
                }
                Step::Publish { sequence } if !live.is_empty() => {
                    let (kv, tokens) = &mut live[sequence % count];
                    kv.publish(5, tokens);
                }
                Step::Fork { sequence } if !live.is_empty() => {
                    let (kv, tokens) = &live[sequence % count];
                    let fork = (kv.fork(), tokens.clone());
                    live.push(fork);
                }
                Step::Truncate { sequence, length } if !live.is_empty() => {
                    let (kv, tokens) = &mut live[sequence % count];
                    kv.truncate(length);
                    tokens.truncate(length);
                }
                Step::Finish { sequence } if !live.is_empty() => {
                    live.swap_remove(sequence % count);
                }
                Step::DropCached => {
                    pool.drop_cached();
                }
                _ => {}
            }
            check_invariants(&pool, &live)?;
        }
        drop(live);
        let statistics = pool.statistics();
        prop_assert_eq!(statistics.blocks_in_use, 0);
        prop_assert_eq!(pool.drop_cached(), statistics.blocks_cached);
    }
}

#[test]
fn only_written_blocks_are_published_and_lookups_check_the_tokens() {
    let memory = host_backed_memory(16 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(2, 1), 100).unwrap();
    let row = [1.0f32];
    let mut sequence = PagedKv::new(&pool, 2, 1, 2, 10).unwrap();
    for position in 0..4 {
        sequence.write(0, position, &row, &row).unwrap();
    }
    assert_eq!(sequence.publish(3, &[1, 2, 3, 4]), 0, "layer 1 was never written");
    for position in 0..3 {
        sequence.write(1, position, &row, &row).unwrap();
    }
    assert_eq!(sequence.publish(3, &[1, 2, 3, 4]), 2, "only the first block is written in every layer");
    assert_eq!(sequence.publish(3, &[1, 2, 3, 4]), 0, "publishing twice adds nothing");

    // An entry under the right key whose tokens differ (as a hash collision would leave) is
    // never attached.
    let root = sequence.root_hash(3);
    let hash = chain_hash(root, &[1, 2]);
    {
        let mut inner = pool.inner.lock();
        for layer in 0..2 {
            inner.cache.entries.get_mut(&CacheKey { hash, layer }).unwrap().tokens = vec![1, 9];
        }
    }
    let mut other = PagedKv::new(&pool, 2, 1, 2, 10).unwrap();
    assert_eq!(other.with_prefix(3, &[1, 2, 3]), 0);
    assert_eq!(other.blocks_held(), 0);
}

/// Single-head attention of `query` over the first `positions` rows of `layer`.
fn attend(kv: &dyn KvStore, layer: usize, positions: usize, query: &[f32]) -> Vec<f32> {
    let scale = 1.0 / (query.len() as f32).sqrt();
    let mut scores: Vec<f32> = (0..positions)
        .map(|position| kv.key(layer, position).iter().zip(query).map(|(k, q)| k * q).sum::<f32>() * scale)
        .collect();
    crate::infer::kernels::softmax(&mut scores);
    let mut out = vec![0.0; query.len()];
    for (position, weight) in scores.iter().enumerate() {
        for (slot, value) in out.iter_mut().zip(kv.value(layer, position)) {
            *slot += weight * value;
        }
    }
    out
}

#[test]
fn int8_compression_frees_blocks_and_stays_close() {
    let bytes = three_layer_f32_model(128, 8);
    let model = ModelFile::parse(&bytes).unwrap();
    let config = model.weights.config;
    let tokens: Vec<u32> = (0..100).map(|index| (index * 53 % 300) as u32).collect();
    let memory = host_backed_memory(64 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(16, config.kv_dim()), 1000).unwrap();
    let mut exact = PagedKv::new(&pool, config.layers, config.kv_dim(), 16, 128).unwrap();
    let mut squeezed = PagedKv::new(&pool, config.layers, config.kv_dim(), 16, 128).unwrap();
    let prefix = 90;
    logits_with(&mut exact, &model, &tokens[..prefix]);
    logits_with(&mut squeezed, &model, &tokens[..prefix]);
    let held = squeezed.blocks_held();
    assert_eq!(held, prefix.div_ceil(16) * config.layers);

    let in_use = pool.statistics().blocks_in_use;
    let freed = squeezed.compress().unwrap();
    assert!(squeezed.is_compressed());
    assert_eq!(freed, held - held.div_ceil(4), "four blocks pack into one");
    assert_eq!(pool.statistics().blocks_in_use, in_use - freed, "accounting is exact");
    assert_eq!(squeezed.compress().unwrap(), 0, "compressing twice does nothing");
    assert_eq!(squeezed.publish(3, &tokens[..prefix]), 0, "inexact blocks are never published");

    squeezed.decompress().unwrap();
    assert!(!squeezed.is_compressed());
    assert_eq!(squeezed.blocks_held(), held);
    assert_eq!(pool.statistics().blocks_in_use, in_use);
    let mut query_seed = 1u32;
    for layer in 0..config.layers {
        // The largest magnitude of a block's keys (or values), which sets its scale.
        let largest = |values: bool, block: usize| {
            (block * 16..(block * 16 + 16).min(prefix))
                .flat_map(|position| {
                    let row = if values { exact.value(layer, position) } else { exact.key(layer, position) };
                    row.iter().map(|value| value.abs())
                })
                .fold(0.0f32, f32::max)
        };
        for position in 0..prefix {
            let key_bound = largest(false, position / 16) / 127.0 * 0.5 + 1e-6;
            let value_bound = largest(true, position / 16) / 127.0 * 0.5 + 1e-6;
            for (a, b) in exact.key(layer, position).iter().zip(squeezed.key(layer, position)) {
                assert!((a - b).abs() <= key_bound, "key {a} became {b} (bound {key_bound})");
            }
            for (a, b) in exact.value(layer, position).iter().zip(squeezed.value(layer, position)) {
                assert!((a - b).abs() <= value_bound, "value {a} became {b} (bound {value_bound})");
            }
        }
        let query: Vec<f32> = (0..config.kv_dim())
            .map(|_| {
                query_seed = query_seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (query_seed >> 16) as f32 / 32_768.0 - 1.0
            })
            .collect();
        let reference = attend(&exact, layer, prefix, &query);
        let approximate = attend(&squeezed, layer, prefix, &query);
        let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (a, b) in reference.iter().zip(&approximate) {
            assert!((a - b).abs() <= 0.02 * scale, "attention output {a} became {b} in layer {layer}");
        }
    }
    // The engine goes on from the decompressed cache with logits close to the exact ones.
    let expected = logits_from(&mut exact, &model, &tokens, prefix);
    squeezed.compress().unwrap();
    let got = logits_from(&mut squeezed, &model, &tokens, prefix);
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = expected.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 0.05 * scale, "logits moved by {worst} of {scale}");
    drop((exact, squeezed));
    assert_eq!(pool.statistics().blocks_in_use, 0);
}

#[test]
fn a_shared_cache_is_not_compressed_and_truncation_applies_to_compressed_blocks() {
    let memory = host_backed_memory(64 * MIB);
    let pool = KvBlockPool::new(memory, floats_per_block(4, 2), 64).unwrap();
    let mut kv = PagedKv::new(&pool, 1, 2, 4, 64).unwrap();
    for position in 0..20 {
        let row = [position as f32, -(position as f32)];
        kv.write(0, position, &row, &row).unwrap();
    }
    let fork = kv.fork();
    assert_eq!(kv.compress().unwrap(), 0, "shared blocks stay");
    drop(fork);
    assert_eq!(kv.compress().unwrap(), 5 - 2);
    kv.truncate(8);
    kv.decompress().unwrap();
    assert_eq!(kv.blocks_held(), 2);
    assert!((kv.key(0, 7)[0] - 7.0).abs() <= 7.0 / 127.0 * 0.5 + 1e-6);
    kv.truncate(0);
    assert_eq!(pool.statistics().blocks_in_use, 0);
}
