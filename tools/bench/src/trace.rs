//! Seeded allocation traces: a random small-object trace and an LLM-serving trace.

#![forbid(unsafe_code)]

use kernel::rand::SplitMix64;

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// What an allocation is for; Tessera routes by it, the baselines ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Model weights of the `generation`-th model loaded (0 for the first). A hot-swap stages
    /// generation `g + 1` while `g` is live, then frees `g`; Tessera places consecutive
    /// generations at opposite ends of the weights region.
    Weights {
        /// Which model the tensor belongs to.
        generation: u32,
    },
    /// A KV-cache block.
    KvCache,
    /// An activation tensor.
    Activation,
    /// A small object.
    Small,
    /// A console protocol buffer.
    Protocol,
}

/// One step of a trace. Ids index a table of live allocations.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    /// Allocate `size` bytes aligned to `alignment` as allocation `id`.
    Alloc {
        /// Slot of the allocation.
        id: u32,
        /// Bytes.
        size: usize,
        /// Alignment in bytes.
        alignment: usize,
        /// Purpose.
        kind: Kind,
    },
    /// Free allocation `id`.
    Free {
        /// Slot of the allocation.
        id: u32,
    },
}

/// A replayable trace.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Short name for tables.
    pub name: String,
    /// The operations in order; every allocation is freed by the end.
    pub operations: Vec<Operation>,
    /// Number of ids used.
    pub ids: usize,
    /// Largest sum of live requested bytes.
    pub peak_live: usize,
}

/// Hands out ids and tracks live bytes while a trace is generated.
struct Builder {
    operations: Vec<Operation>,
    free_ids: Vec<u32>,
    sizes: Vec<usize>,
    live: usize,
    peak_live: usize,
}

impl Builder {
    fn new() -> Self {
        Self { operations: Vec::new(), free_ids: Vec::new(), sizes: Vec::new(), live: 0, peak_live: 0 }
    }

    fn alloc(&mut self, size: usize, alignment: usize, kind: Kind) -> u32 {
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.sizes.push(0);
            (self.sizes.len() - 1) as u32
        });
        self.sizes[id as usize] = size;
        self.live += size;
        self.peak_live = self.peak_live.max(self.live);
        self.operations.push(Operation::Alloc { id, size, alignment, kind });
        id
    }

    fn free(&mut self, id: u32) {
        self.live -= self.sizes[id as usize];
        self.free_ids.push(id);
        self.operations.push(Operation::Free { id });
    }

    fn finish(self, name: String) -> Trace {
        Trace { name, operations: self.operations, ids: self.sizes.len(), peak_live: self.peak_live }
    }
}

/// Random small objects, 16 B – 4 KiB (log-uniform), with a live set that hovers around
/// `live_target` objects, freed in random order.
pub fn small_objects(seed: u64, operations: usize, live_target: usize) -> Trace {
    let mut random = SplitMix64::new(seed);
    let mut builder = Builder::new();
    let mut live: Vec<u32> = Vec::new();
    while builder.operations.len() < operations {
        let grow = live.len() < live_target / 2 || (live.len() < live_target * 2 && random.below(2) == 0);
        if grow || live.is_empty() {
            let shift = random.below(9) as usize;
            let size = ((16 << shift) + random.below(16 << shift) as usize).min(4096);
            live.push(builder.alloc(size, 16, Kind::Small));
        } else {
            let id = live.swap_remove(random.below(live.len() as u64) as usize);
            builder.free(id);
        }
    }
    for id in live {
        builder.free(id);
    }
    builder.finish(format!("small objects (seed {seed})"))
}

/// Shape of the served model, for the sizes of KV blocks and activations.
const LAYERS: usize = 6;
const DIMENSION: usize = 288;
const HIDDEN: usize = 768;
const HEADS: usize = 6;
const CONTEXT: usize = 512;
const VOCABULARY: usize = 32000;
/// Tokens per KV block.
const BLOCK_TOKENS: usize = 16;

/// Weights of one model: tensors of 1–100 MiB (log-uniform) until about `total` bytes.
fn model_weights(random: &mut SplitMix64, total: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut sum = 0;
    loop {
        let exponent = random.next_f32() * (100f32).ln();
        let size = ((exponent.exp() * MIB as f32) as usize).clamp(MIB, 100 * MIB);
        let size = size / 4096 * 4096 + random.below(4096) as usize;
        if sum + size > total && !sizes.is_empty() {
            return sizes;
        }
        sum += size;
        sizes.push(size);
    }
}

fn weight_alignment(size: usize) -> usize {
    if size >= 2 * MIB { 2 * MIB } else { 4096 }
}

/// An LLM-serving trace: a model loads (1–100 MiB tensors), up to `concurrency` sequences of
/// 16–`CONTEXT` tokens decode round robin, each token allocating per-layer activations (freed
/// after the layer), logits, a protocol buffer, and a KV block per layer every 16 tokens
/// (freed when the sequence completes); every `swap_every` tokens a second model is staged
/// and the old one freed (hot-swap).
pub fn llm_serving(
    seed: u64,
    tokens: usize,
    concurrency: usize,
    swap_every: usize,
    model_bytes: usize,
) -> Trace {
    let mut random = SplitMix64::new(seed);
    let mut builder = Builder::new();
    let mut generation = 0;
    let mut model: Vec<u32> = model_weights(&mut random, model_bytes)
        .into_iter()
        .map(|size| builder.alloc(size, weight_alignment(size), Kind::Weights { generation }))
        .collect();
    struct Sequence {
        length: usize,
        position: usize,
        blocks: Vec<u32>,
    }
    let new_sequence = |random: &mut SplitMix64| Sequence {
        length: 16 + random.below((CONTEXT - 16) as u64) as usize,
        position: 0,
        blocks: Vec::new(),
    };
    let mut sequences: Vec<Sequence> = (0..concurrency).map(|_| new_sequence(&mut random)).collect();
    let kv_block = BLOCK_TOKENS * DIMENSION * 2 * 4;
    let mut previous_output: Option<u32> = None;
    for token in 0..tokens {
        let sequence = &mut sequences[token % concurrency];
        if sequence.position.is_multiple_of(BLOCK_TOKENS) {
            for _ in 0..LAYERS {
                sequence.blocks.push(builder.alloc(kv_block, 64, Kind::KvCache));
            }
        }
        let x = builder.alloc(DIMENSION * 4, 64, Kind::Activation);
        for _ in 0..LAYERS {
            let xb = builder.alloc(DIMENSION * 4, 64, Kind::Activation);
            let q = builder.alloc(DIMENSION * 4, 64, Kind::Activation);
            let attention = builder.alloc(HEADS * CONTEXT * 4, 64, Kind::Activation);
            let hidden = builder.alloc(HIDDEN * 4, 64, Kind::Activation);
            let hidden2 = builder.alloc(HIDDEN * 4, 64, Kind::Activation);
            for id in [attention, q, xb, hidden, hidden2] {
                builder.free(id);
            }
        }
        let logits = builder.alloc(VOCABULARY * 4, 64, Kind::Activation);
        builder.free(x);
        builder.free(logits);
        if let Some(id) = previous_output.take() {
            builder.free(id);
        }
        let line = 64 + random.below(448) as usize;
        previous_output = Some(builder.alloc(line, 64, Kind::Protocol));
        sequence.position += 1;
        if sequence.position == sequence.length {
            for id in sequence.blocks.drain(..) {
                builder.free(id);
            }
            *sequence = new_sequence(&mut random);
        }
        if swap_every > 0 && token % swap_every == swap_every - 1 {
            generation += 1;
            let staged: Vec<u32> = model_weights(&mut random, model_bytes)
                .into_iter()
                .map(|size| builder.alloc(size, weight_alignment(size), Kind::Weights { generation }))
                .collect();
            for id in std::mem::replace(&mut model, staged) {
                builder.free(id);
            }
        }
    }
    for sequence in sequences {
        for id in sequence.blocks {
            builder.free(id);
        }
    }
    for id in model.into_iter().chain(previous_output) {
        builder.free(id);
    }
    builder.finish(format!("LLM serving (seed {seed}, {tokens} tokens)"))
}

/// The operations whose allocations are `minimum..=maximum` bytes, with their frees.
pub fn sizes_between(trace: &Trace, minimum: usize, maximum: usize, name: &str) -> Trace {
    let mut kept = vec![false; trace.ids];
    let mut operations = Vec::new();
    let mut live = 0;
    let mut peak_live = 0;
    let mut sizes = vec![0; trace.ids];
    for &operation in &trace.operations {
        match operation {
            Operation::Alloc { id, size, .. } => {
                kept[id as usize] = (minimum..=maximum).contains(&size);
                if kept[id as usize] {
                    sizes[id as usize] = size;
                    live += size;
                    peak_live = peak_live.max(live);
                    operations.push(operation);
                }
            }
            Operation::Free { id } => {
                if kept[id as usize] {
                    live -= sizes[id as usize];
                    operations.push(operation);
                }
            }
        }
    }
    Trace { name: name.to_string(), operations, ids: trace.ids, peak_live }
}
