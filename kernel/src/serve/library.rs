//! The models on the card: listing `/models`, and loading one into a weights buffer with full
//! validation before it can serve.

#![forbid(unsafe_code)]

use super::{
    chat::ServedModel,
    loader::{LoadError, read_whole},
    prepare::{ModelLayout, Preparation, prepare_llama2c},
};
use crate::{
    fs::{FileLayout, FsError, Opening, Volume},
    hil::{BlockDevice, Clock},
    mm::{
        MemError,
        buffer::{BackedMemory, TensorBuffer},
        chunk::Placement,
        tensor::{Pool, TensorKind},
    },
    model::{ModelError, ModelErrorKind, llama2c::Checkpoint},
};
use alloc::{boxed::Box, format, string::String, vec::Vec};
use core::fmt;

/// The folder models live in.
pub const MODEL_DIRECTORY: &str = "/models";

/// One model file on the card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    /// File name.
    pub name: String,
    /// Bytes.
    pub size: u64,
}

/// Why a model could not be loaded. The model being served is never affected.
#[derive(Clone, Debug)]
pub enum LibraryError {
    /// No card, no partition, no such file, or a read error.
    Fs(FsError),
    /// Reading the file failed.
    Load(LoadError),
    /// The weights pool has no room for the file (with the current model still loaded).
    NoMemory {
        /// File bytes.
        needed: u64,
        /// The pool's answer.
        error: MemError,
    },
    /// The file is not a valid model.
    Invalid(ModelError),
}

impl fmt::Display for LibraryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LibraryError::Fs(error) => write!(formatter, "{error}"),
            LibraryError::Load(error) => write!(formatter, "{error}"),
            LibraryError::NoMemory { needed, error } => write!(
                formatter,
                "not enough weights memory for {} next to the current model ({error})",
                crate::mm::error::Bytes(*needed)
            ),
            LibraryError::Invalid(error) => write!(formatter, "not a valid model: {error}"),
        }
    }
}

/// The model files in [`MODEL_DIRECTORY`] (GGUF and llama2.c checkpoints; tokenizer files
/// and names that are not [`listable`] are left out).
pub fn list_models<D: BlockDevice>(volume: &mut Volume<D>) -> Result<Vec<ModelEntry>, FsError> {
    Ok(volume
        .list(MODEL_DIRECTORY)?
        .into_iter()
        .filter(|entry| !entry.is_directory() && listable(entry.name()))
        .map(|entry| ModelEntry { name: entry.name().into(), size: entry.size() })
        .collect())
}

/// Whether a file name read off the card is listed as a model: not a tokenizer file, and
/// free of control characters. A hostile card's names may carry terminal escapes, which
/// `/models` would print raw to the user's terminal, and no `/load` could name such a file.
fn listable(name: &str) -> bool {
    !name.to_ascii_lowercase().contains("tokenizer") && !name.chars().any(char::is_control)
}

impl From<ModelError> for LibraryError {
    fn from(error: ModelError) -> Self {
        LibraryError::Invalid(error)
    }
}

/// The pool named in the error of a load refused by the weights budget of `tessera.cfg` (not
/// by the memory itself).
pub const WEIGHTS_BUDGET_POOL: &str = "weights budget (tessera.cfg)";

/// Refuses `size` more bytes of weights when `budget` bytes of weights in all (`tessera.cfg`)
/// would be exceeded.
fn check_budget(memory: &BackedMemory, budget: Option<u64>, size: u64) -> Result<(), LibraryError> {
    let Some(budget) = budget else { return Ok(()) };
    let held = memory.memory().statistics(Pool::Weights).counters.reserved_bytes;
    if held + size > budget {
        let error = MemError::OutOfMemory {
            pool: WEIGHTS_BUDGET_POOL,
            requested: size,
            free: budget.saturating_sub(held),
            largest_free: budget.saturating_sub(held),
        };
        return Err(LibraryError::NoMemory { needed: size, error });
    }
    Ok(())
}

/// A weights-pool buffer of `size` bytes at `placement`, not cleared (see
/// [`BackedMemory::alloc_uninit`]); when the arena has no room, the segments the KV cache and
/// the activations hold but do not use go back to it and the allocation is tried once more.
fn uninit_weights(
    memory: &BackedMemory,
    size: u64,
    placement: Placement,
) -> Result<TensorBuffer<'_>, LibraryError> {
    let allocate = || memory.alloc_uninit(0, size, TensorKind::Weights, placement);
    let retry = |error| match error {
        MemError::OutOfMemory { .. } if memory.memory().reclaim_segments() > 0 => allocate(),
        error => Err(error),
    };
    allocate().or_else(retry).map_err(|error| LibraryError::NoMemory { needed: size, error })
}

/// A weights buffer of `size` bytes, within the budget, not cleared (the file is read into
/// all of it that is used). It goes to the end of the weights region away from the model being
/// served ([`Placement::Apart`]), so after the swap the old model's memory and the rest of the
/// free space form one block, and the next model may be as large as all of it.
fn weights_buffer(
    memory: &BackedMemory,
    budget: Option<u64>,
    size: u64,
) -> Result<TensorBuffer<'_>, LibraryError> {
    check_budget(memory, budget, size)?;
    uninit_weights(memory, size, Placement::Apart)
}

/// The tables buffer (tensor index and tokenizer) of the model whose weights buffer starts at
/// `weights_base`: `size` bytes of the weights pool, within the budget, not cleared (the
/// preparation writes all it reads), at the same end of the region as the weights, so the two
/// stay together and a swap still leaves one free block.
fn tables_buffer(
    memory: &BackedMemory,
    budget: Option<u64>,
    weights_base: u64,
    size: usize,
) -> Result<TensorBuffer<'_>, LibraryError> {
    let size = size as u64;
    check_budget(memory, budget, size)?;
    let pool = memory.memory().statistics(Pool::Weights);
    let upper_half = weights_base.saturating_sub(pool.base) >= pool.capacity / 2;
    let placement = if upper_half { Placement::High } else { Placement::Low };
    uninit_weights(memory, size, placement)
}

/// Refuses a file that is not GGUF but is named `.gguf`, as such (not as a broken checkpoint).
fn check_magic(name: &str, bytes: &[u8]) -> Result<bool, LibraryError> {
    if bytes.starts_with(b"GGUF") {
        return Ok(true);
    }
    if name.to_ascii_lowercase().ends_with(".gguf") {
        let mut magic = [0u8; 4];
        let head = &bytes[..bytes.len().min(4)];
        magic[..head.len()].copy_from_slice(head);
        let found = u32::from_le_bytes(magic);
        return Err(LibraryError::Invalid(ModelError::new(0, ModelErrorKind::BadMagic { found })));
    }
    Ok(false)
}

/// Loads `/models/NAME` into a new weights buffer, reporting `progress(done, total)`, then
/// validates it and builds its tables, in one go. A llama2.c checkpoint takes its tokenizer
/// from `/models/tokenizer.bin`.
pub fn load_model<'memory, D: BlockDevice>(
    volume: &mut Volume<D>,
    memory: &'memory BackedMemory,
    budget: Option<u64>,
    name: &str,
    progress: impl FnMut(u64, u64),
) -> Result<ServedModel<TensorBuffer<'memory>>, LibraryError> {
    let path = format!("{MODEL_DIRECTORY}/{name}");
    let mut file = volume.open(&path).map_err(LibraryError::Fs)?;
    let size = file.size();
    if size == 0 {
        return Err(LibraryError::Load(LoadError::Empty));
    }
    let mut buffer = weights_buffer(memory, budget, size)?;
    let length = read_whole(&mut file, &mut buffer, progress).map_err(LibraryError::Load)?;
    drop(file);
    let is_gguf = check_magic(name, &buffer[..length])?;
    let weights_base = buffer.handle().base();
    let mut allocate = |size| tables_buffer(memory, budget, weights_base, size);
    let (tables, layout) = if is_gguf {
        Preparation::run(&buffer[..length], &mut allocate)?
    } else {
        // Check the checkpoint itself first, so a corrupt file is reported as such rather
        // than as a missing tokenizer.
        Checkpoint::parse(&buffer[..length])?;
        let mut tokenizer =
            volume.open(&format!("{MODEL_DIRECTORY}/tokenizer.bin")).map_err(LibraryError::Fs)?;
        let mut bytes = alloc::vec![0; tokenizer.size() as usize];
        read_whole(&mut tokenizer, &mut bytes, |_, _| {}).map_err(LibraryError::Load)?;
        prepare_llama2c(&buffer[..length], Some(&bytes), &mut allocate)?
    };
    Ok(ServedModel::from_prepared(name, buffer, length, tables, layout))
}

/// The longest single unit of background work seen (a read, a validation step, a tokenizer
/// step, a buffer freed, the swap itself), and what it was: what a swap's pause is made of
/// beyond the time a round grants background work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LongestUnit {
    /// Its duration, ns.
    pub ns: u64,
    /// What it was.
    pub what: &'static str,
}

impl LongestUnit {
    /// Counts a unit of `ns` doing `what`.
    pub fn note(&mut self, ns: u64, what: &'static str) {
        if ns > self.ns || self.what.is_empty() {
            *self = Self { ns, what };
        }
    }

    /// Counts the longest unit of `other` too.
    pub fn merge(&mut self, other: LongestUnit) {
        if !other.what.is_empty() {
            self.note(other.ns, other.what);
        }
    }
}

/// Bytes read from the card in one unit of a staged load: 8 blocks, one CMD18 when the
/// clusters are contiguous; about 0.2 ms at a real card's 20 MB/s, so a unit stays well inside
/// the time a round may spend on a load.
pub const STAGE_READ_BYTES: usize = 4 * 1024;

/// Links of the file's cluster chain followed in one unit of a staged load (a large model's
/// chain has tens of thousands).
pub const STAGE_CHAIN_LINKS: usize = 64;

/// Where a staged load is.
enum Stage<'memory> {
    /// Walking the file's cluster chain.
    Opening(Box<Opening>),
    /// Reading the file into the weights buffer.
    Reading(Box<FileLayout>),
    /// Validating the file and building its tables, a unit at a time.
    Preparing(Box<Preparation<TensorBuffer<'memory>>>),
    /// Validated, with its tables buffer and their layout: ready to swap in.
    Ready(Box<(TensorBuffer<'memory>, ModelLayout)>),
}

/// A model loaded in the background while the active one keeps serving: every piece of work
/// (reading the card, validating the file, building the tensor index and the tokenizer) is
/// cut into small units ([`STAGE_READ_BYTES`] read, [`super::prepare::STAGE_SCAN_BYTES`]
/// validated, [`super::prepare::STAGE_TOKENIZER_UNITS`] tokens or merges added, a layer's shapes checked), and
/// [`StagedLoad::advance`] does units until its time budget is spent, between generated
/// tokens. Nothing walks or clears the whole file at once: the weights buffer is not
/// zero-filled, since the file is read into it. When it is ready, [`StagedLoad::finish`] is
/// only an assembly of finished parts, so the swap itself is a pointer exchange.
pub struct StagedLoad<'memory> {
    name: String,
    /// The file's size.
    size: u64,
    memory: &'memory BackedMemory,
    budget: Option<u64>,
    buffer: TensorBuffer<'memory>,
    done: u64,
    stage: Stage<'memory>,
    longest_unit: LongestUnit,
}

impl<'memory> StagedLoad<'memory> {
    /// Looks up `/models/NAME` and reserves its weights buffer (GGUF only: a llama2.c model
    /// also needs its tokenizer, which [`load_model`] handles). Its cluster chain is walked by
    /// later units.
    pub fn begin<D: BlockDevice>(
        volume: &mut Volume<D>,
        memory: &'memory BackedMemory,
        budget: Option<u64>,
        name: &str,
    ) -> Result<Self, LibraryError> {
        let opening = volume.begin_open(&format!("{MODEL_DIRECTORY}/{name}")).map_err(LibraryError::Fs)?;
        let size = opening.size();
        if size == 0 {
            return Err(LibraryError::Load(LoadError::Empty));
        }
        let buffer = weights_buffer(memory, budget, size)?;
        Ok(Self {
            name: name.into(),
            size,
            memory,
            budget,
            buffer,
            done: 0,
            stage: Stage::Opening(Box::new(opening)),
            longest_unit: LongestUnit::default(),
        })
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes read so far, and the file size.
    pub fn progress(&self) -> (u64, u64) {
        (self.done, self.size)
    }

    /// The longest unit of work done so far.
    pub fn longest_unit(&self) -> LongestUnit {
        self.longest_unit
    }

    /// What the next unit of work is.
    fn next_work(&self) -> &'static str {
        match &self.stage {
            Stage::Opening(_) => "walk the file's clusters",
            Stage::Reading(_) => "read 4 KiB",
            Stage::Preparing(preparation) => preparation.next_work(),
            Stage::Ready(_) => "ready",
        }
    }

    /// Whether the model is read, validated and has its tables.
    pub fn is_ready(&self) -> bool {
        matches!(self.stage, Stage::Ready(_))
    }

    /// Does units of work until `budget_ns` of `clock` time has passed (at least one unit).
    /// Returns whether the model is ready to swap in.
    pub fn advance<D: BlockDevice>(
        &mut self,
        volume: &mut Volume<D>,
        clock: &dyn Clock,
        budget_ns: u64,
    ) -> Result<bool, LibraryError> {
        let deadline = clock.now_ns().saturating_add(budget_ns);
        loop {
            let (what, started) = (self.next_work(), clock.now_ns());
            let ready = self.unit(volume)?;
            let now = clock.now_ns();
            self.longest_unit.note(now.saturating_sub(started), what);
            if ready {
                return Ok(true);
            }
            if now >= deadline {
                return Ok(false);
            }
        }
    }

    /// One bounded unit of work. Returns whether the model is ready.
    fn unit<D: BlockDevice>(&mut self, volume: &mut Volume<D>) -> Result<bool, LibraryError> {
        let length = self.size as usize;
        match &mut self.stage {
            Stage::Opening(opening) => {
                if let Some(layout) =
                    volume.continue_open(opening, STAGE_CHAIN_LINKS).map_err(LibraryError::Fs)?
                {
                    self.stage = Stage::Reading(Box::new(layout));
                }
            }
            Stage::Reading(layout) => {
                let start = self.done as usize;
                let end = (start + STAGE_READ_BYTES).min(length);
                let read = layout
                    .read_at(volume, self.done, &mut self.buffer[start..end])
                    .map_err(LibraryError::Fs)?;
                if read == 0 {
                    return Err(LibraryError::Load(LoadError::ShortRead {
                        read: self.done,
                        expected: self.size,
                    }));
                }
                self.done += read as u64;
                if self.done as usize >= length {
                    if !check_magic(&self.name, &self.buffer[..length])? {
                        return Err(LibraryError::Invalid(ModelError::new(
                            0,
                            ModelErrorKind::InvalidTokenizer(
                                "only GGUF models (with their tokenizer) load in the background",
                            ),
                        )));
                    }
                    self.stage = Stage::Preparing(Box::default());
                }
            }
            Stage::Preparing(preparation) => {
                let (memory, budget, weights_base) = (self.memory, self.budget, self.buffer.handle().base());
                let mut allocate = |size| tables_buffer(memory, budget, weights_base, size);
                if preparation.unit(&self.buffer[..length], &mut allocate)? {
                    let prepared = core::mem::take(&mut **preparation).finish();
                    let short = LoadError::ShortRead { read: self.done, expected: self.size };
                    self.stage = Stage::Ready(Box::new(prepared.ok_or(LibraryError::Load(short))?));
                }
            }
            Stage::Ready(_) => return Ok(true),
        }
        Ok(self.is_ready())
    }

    /// The validated model, once [`StagedLoad::advance`] returned `true`: an assembly of the
    /// finished parts, with nothing left to parse or build.
    pub fn finish(self) -> Result<ServedModel<TensorBuffer<'memory>>, LibraryError> {
        match self.stage {
            Stage::Ready(prepared) => {
                let (tables, layout) = *prepared;
                Ok(ServedModel::from_prepared(&self.name, self.buffer, self.size as usize, tables, layout))
            }
            _ => Err(LibraryError::Load(LoadError::ShortRead { read: self.done, expected: self.size })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fs::tests::fat_volume_with,
        hil::{BlockError, SingleCpu},
        infer::{
            ContiguousKv,
            synthetic::{SyntheticFormat, SyntheticSpec},
        },
        mm::{buffer::tests::host_backed_memory, layout::MIB},
        model::TensorType,
        serve::chat::{GenerationSettings, answer},
        serve::prepare::STAGE_TOKENIZER_UNITS,
    };
    use alloc::string::ToString;

    /// A clock that moves 1 µs every time it is read.
    #[derive(Default)]
    struct TickingClock {
        ticks: core::sync::atomic::AtomicU64,
    }

    impl Clock for TickingClock {
        fn ticks(&self) -> u64 {
            self.ticks.fetch_add(1000, core::sync::atomic::Ordering::Relaxed)
        }

        fn frequency_hz(&self) -> u64 {
            1_000_000_000
        }
    }

    fn model_bytes(seed: u64) -> Vec<u8> {
        let spec = SyntheticSpec::tiny(256, seed);
        spec.generate(SyntheticFormat::Gguf(TensorType::Q8_0)).unwrap().model
    }

    #[test]
    fn names_with_control_characters_or_of_tokenizers_are_not_listed() {
        assert!(listable("SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert!(listable("modèle ünïcode.gguf"));
        assert!(!listable("tokenizer.bin"));
        assert!(!listable("My-Tokenizer.json"));
        assert!(!listable("\u{1b}[2Jcleared.gguf"));
        assert!(!listable("bell\u{7}.gguf"));
        assert!(!listable("line\nbreak.gguf"));
        assert!(!listable("c1-control\u{9b}31m.gguf"));
    }

    #[test]
    fn staged_and_direct_loads_agree_and_failures_leak_nothing() {
        let good = model_bytes(4);
        let mut bad = good.clone();
        bad[0] = b'X';
        let mut volume = fat_volume_with(&[("/models/good.gguf", &good), ("/models/bad.gguf", &bad)]);
        let memory = host_backed_memory(64 * MIB);
        let baseline = memory.memory().statistics(Pool::Weights).counters.live_bytes;

        let listed = list_models(&mut volume).unwrap();
        assert_eq!(
            listed.iter().map(|entry| entry.name.as_str()).collect::<Vec<_>>(),
            ["good.gguf", "bad.gguf"]
        );

        // With no time budget every advance does exactly one bounded unit: STAGE_CHAIN_LINKS
        // links of the cluster chain, a read of STAGE_READ_BYTES, or one unit of the preparation (STAGE_SCAN_BYTES validated,
        // STAGE_TOKENIZER_UNITS tokens or merges, a layer's shapes).
        let clock = TickingClock::default();
        let mut preparation = Preparation::<Vec<u8>>::new();
        let mut preparation_units = 1;
        while !preparation.unit(&good, &mut |size| Ok::<_, ModelError>(alloc::vec![0; size])).unwrap() {
            preparation_units += 1;
        }
        let gguf = crate::model::GgufFile::parse(&good).unwrap();
        let entries = |key: &str| gguf.array(key).unwrap().unwrap().count;
        let tokenizer_entries = entries("tokenizer.ggml.tokens") + entries("tokenizer.ggml.merges");
        assert!(preparation_units > tokenizer_entries / STAGE_TOKENIZER_UNITS, "{preparation_units} units");
        let clusters = (good.len() as u64).div_ceil(volume.layout().cluster_bytes()) as usize;
        let expected_units =
            clusters.div_ceil(STAGE_CHAIN_LINKS) + good.len().div_ceil(STAGE_READ_BYTES) + preparation_units;
        let mut staged = StagedLoad::begin(&mut volume, memory, None, "good.gguf").unwrap();
        let mut units = 1;
        while !staged.advance(&mut volume, &clock, 0).unwrap() {
            units += 1;
        }
        assert_eq!(units, expected_units, "one bounded unit per advance");
        assert!(staged.is_ready());
        let staged = staged.finish().unwrap();
        let direct = load_model(&mut volume, memory, None, "good.gguf", |_, _| {}).unwrap();
        assert_eq!(staged.size(), direct.size());
        assert_eq!(staged.view().unwrap().file.config(), direct.view().unwrap().file.config());
        let (staged_view, direct_view) = (staged.view().unwrap(), direct.view().unwrap());
        assert_eq!(staged_view.prompt_tokens("hello there"), direct_view.prompt_tokens("hello there"));
        assert_eq!(staged_view.tokenizer.vocab_size(), direct_view.tokenizer.vocab_size());
        drop((staged_view, direct_view));
        drop((staged, direct));

        assert!(matches!(
            load_model(&mut volume, memory, None, "bad.gguf", |_, _| {}),
            Err(LibraryError::Invalid(_))
        ));
        let mut bad_staged = StagedLoad::begin(&mut volume, memory, None, "bad.gguf").unwrap();
        assert!(matches!(
            bad_staged.advance(&mut volume, &clock, u64::MAX),
            Err(LibraryError::Invalid(ModelError { kind: ModelErrorKind::BadMagic { .. }, .. }))
        ));
        drop(bad_staged);
        assert!(matches!(
            StagedLoad::begin(&mut volume, memory, None, "none.gguf"),
            Err(LibraryError::Fs(_))
        ));
        assert_eq!(
            memory.memory().statistics(Pool::Weights).counters.live_bytes,
            baseline,
            "every failed or finished load returned its buffer"
        );
        // A budget that holds one copy but not two refuses the second, as tessera.cfg asks.
        let budget = Some(good.len() as u64 * 3 / 2);
        let one = load_model(&mut volume, memory, budget, "good.gguf", |_, _| {}).unwrap();
        assert!(matches!(
            load_model(&mut volume, memory, budget, "good.gguf", |_, _| {}),
            Err(LibraryError::NoMemory { .. })
        ));
        drop(one);
    }

    fn live_weights(memory: &BackedMemory) -> u64 {
        memory.memory().statistics(Pool::Weights).counters.live_bytes
    }

    /// The first words of a greedy answer: a model that still serves gives the same ones.
    fn greedy_answer(model: &ServedModel<TensorBuffer<'_>>) -> String {
        let view = model.view().unwrap();
        let config = view.file.config();
        let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
        let settings = GenerationSettings { max_tokens: 6, ..GenerationSettings::default() };
        let mut text = String::new();
        answer(&view, &mut kv, &SingleCpu, "hello", &settings, |piece| text.push_str(piece), || false)
            .unwrap();
        text
    }

    /// Runs a staged load to its end with one unit per call, as the server does between tokens.
    fn staged_to_end<'memory>(
        volume: &mut Volume<crate::fs::tests::MemoryDevice<'static>>,
        memory: &'memory BackedMemory,
        budget: Option<u64>,
        name: &str,
    ) -> Result<ServedModel<TensorBuffer<'memory>>, LibraryError> {
        let clock = TickingClock::default();
        let mut staged = StagedLoad::begin(volume, memory, budget, name)?;
        while !staged.advance(volume, &clock, 0)? {}
        staged.finish()
    }

    #[test]
    fn a_read_failure_at_any_block_of_a_load_is_a_typed_error_that_leaks_nothing() {
        let (active_bytes, next_bytes) = (model_bytes(5), model_bytes(6));
        let mut volume =
            fat_volume_with(&[("/models/active.gguf", &active_bytes), ("/models/next.gguf", &next_bytes)]);
        let memory = host_backed_memory(64 * MIB);
        let baseline = live_weights(memory);
        let active = load_model(&mut volume, memory, None, "active.gguf", |_, _| {}).unwrap();
        let with_active = live_weights(memory);
        let answer_before = greedy_answer(&active);
        let blocks: Vec<u64> = volume
            .open("/models/next.gguf")
            .unwrap()
            .extents()
            .iter()
            .flat_map(|extent| extent.first_block..extent.first_block + extent.block_count)
            .collect();
        assert_eq!(blocks.len(), next_bytes.len().div_ceil(crate::hil::BLOCK_SIZE));
        let errors = [BlockError::Timeout, BlockError::DataError, BlockError::Refused(0x0008_0000)];
        for (index, &block) in blocks.iter().enumerate() {
            let error = errors[index % errors.len()];
            volume.device_mut().fail(block, error);
            let is_read_error = |result: &Result<_, LibraryError>| {
                let read = match result {
                    Err(LibraryError::Fs(read) | LibraryError::Load(LoadError::Fs(read))) => read,
                    _ => return false,
                };
                matches!(read, FsError::Read { block: first, count, error: reported }
                    if (*first..*first + *count).contains(&block) && *reported == error)
            };
            let staged = staged_to_end(&mut volume, memory, None, "next.gguf");
            assert!(is_read_error(&staged), "block {block}: staged load gave {:?}", staged.err());
            let direct = load_model(&mut volume, memory, None, "next.gguf", |_, _| {});
            assert!(is_read_error(&direct), "block {block}: direct load gave {:?}", direct.err());
            let message = direct.err().map(|error| error.to_string()).unwrap_or_default();
            assert!(message.contains(&alloc::format!("{error}")), "{message}");
            assert_eq!(
                live_weights(memory),
                with_active,
                "block {block}: the failed load returned its buffer"
            );
            volume.device_mut().heal();
        }
        assert_eq!(greedy_answer(&active), answer_before, "the active model serves as before");
        // Healed, the same load succeeds, and serves its own answers.
        let next = staged_to_end(&mut volume, memory, None, "next.gguf").unwrap();
        assert_eq!(next.size(), next_bytes.len());
        drop((next, active));
        assert_eq!(live_weights(memory), baseline);
    }

    #[test]
    fn hot_swaps_alternate_ends_and_keep_the_free_weights_memory_in_one_block() {
        let models: Vec<Vec<u8>> = (7..10).map(model_bytes).collect();
        let names = ["a.gguf", "b.gguf", "c.gguf"];
        let files: Vec<(String, &[u8])> = names
            .iter()
            .zip(&models)
            .map(|(name, bytes)| (alloc::format!("/models/{name}"), bytes.as_slice()))
            .collect();
        let files: Vec<(&str, &[u8])> = files.iter().map(|(path, bytes)| (path.as_str(), *bytes)).collect();
        let mut volume = fat_volume_with(&files);
        let memory = host_backed_memory(64 * MIB);
        let one_block = |memory: &BackedMemory| {
            let statistics = memory.memory().statistics(Pool::Weights);
            statistics.largest_free == statistics.free_bytes
        };
        // The base address of a model's weights buffer, keeping the model.
        let base_of = |model: ServedModel<TensorBuffer<'static>>, name: &str| {
            let length = model.size();
            let layout = model.layout();
            let (bytes, tables) = model.into_parts();
            let base = bytes.handle().base();
            (ServedModel::from_prepared(name, bytes, length, tables, layout), base)
        };
        let first = load_model(&mut volume, memory, None, names[0], |_, _| {}).unwrap();
        let (mut active, mut active_base) = base_of(first, names[0]);
        let expected = greedy_answer(&active);
        let mut staged_high = true;
        for name in &names[1..] {
            let (staged, staged_base) =
                base_of(staged_to_end(&mut volume, memory, None, name).unwrap(), name);
            assert_eq!(staged_base > active_base, staged_high, "{name} is staged at the far end");
            drop(core::mem::replace(&mut active, staged));
            active_base = staged_base;
            assert!(one_block(memory), "after swapping in {name} the free weights memory is one block");
            staged_high = !staged_high;
        }
        assert_eq!(active.name, names[2]);
        assert_ne!(greedy_answer(&active), String::new());
        drop(active);
        assert!(one_block(memory));
        let again = load_model(&mut volume, memory, None, names[0], |_, _| {}).unwrap();
        assert_eq!(greedy_answer(&again), expected, "a model loaded after the swaps serves as before");
    }

    #[test]
    fn not_enough_memory_for_two_models_keeps_the_first() {
        let (first_bytes, second_bytes) = (model_bytes(5), model_bytes(6));
        let mut volume =
            fat_volume_with(&[("/models/first.gguf", &first_bytes), ("/models/second.gguf", &second_bytes)]);
        let memory = host_backed_memory(64 * MIB);
        let baseline = live_weights(memory);
        // Room for one model and a half, as tessera.cfg's weights budget would set.
        let budget = Some(first_bytes.len() as u64 * 3 / 2);
        let first = staged_to_end(&mut volume, memory, budget, "first.gguf").unwrap();
        let answer_before = greedy_answer(&first);
        let held = live_weights(memory);
        for result in [
            staged_to_end(&mut volume, memory, budget, "second.gguf"),
            load_model(&mut volume, memory, budget, "second.gguf", |_, _| {}),
        ] {
            let error = result.err().expect("two models do not fit");
            assert!(
                matches!(error, LibraryError::NoMemory { needed, .. } if needed == second_bytes.len() as u64)
            );
            assert!(error.to_string().starts_with("not enough weights memory for"), "{error}");
            assert_eq!(live_weights(memory), held);
        }
        assert_eq!(greedy_answer(&first), answer_before);
        drop(first);
        // With the first one gone the second fits.
        let second = staged_to_end(&mut volume, memory, budget, "second.gguf").unwrap();
        drop(second);
        assert_eq!(live_weights(memory), baseline);
    }
}
