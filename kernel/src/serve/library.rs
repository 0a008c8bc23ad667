//! The models on the card: listing `/models`, and loading one into a weights buffer with full
//! validation before it can serve.

#![forbid(unsafe_code)]

use super::{
    chat::ServedModel,
    loader::{LoadError, read_whole},
};
use crate::{
    fs::{FileLayout, FsError, Volume},
    hil::BlockDevice,
    mm::{
        MemError,
        buffer::{BackedMemory, TensorBuffer},
        tensor::{Pool, TensorKind},
    },
    model::ModelError,
};
use alloc::{format, string::String, vec::Vec};
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
/// are left out).
pub fn list_models<D: BlockDevice>(volume: &mut Volume<D>) -> Result<Vec<ModelEntry>, FsError> {
    Ok(volume
        .list(MODEL_DIRECTORY)?
        .into_iter()
        .filter(|entry| !entry.is_directory() && !entry.name().to_ascii_lowercase().contains("tokenizer"))
        .map(|entry| ModelEntry { name: entry.name().into(), size: entry.size() })
        .collect())
}

/// A weights buffer of `size` bytes, within `budget` bytes of weights in all (`tessera.cfg`)
/// when one is set.
fn weights_buffer(
    memory: &BackedMemory,
    budget: Option<u64>,
    size: u64,
) -> Result<TensorBuffer<'_>, LibraryError> {
    let statistics = memory.memory().statistics(Pool::Weights);
    if let Some(budget) = budget {
        let held = statistics.counters.reserved_bytes;
        if held + size > budget {
            let error = MemError::OutOfMemory {
                pool: "weights budget (tessera.cfg)",
                requested: size,
                free: budget.saturating_sub(held),
                largest_free: budget.saturating_sub(held),
            };
            return Err(LibraryError::NoMemory { needed: size, error });
        }
    }
    memory.alloc(size, TensorKind::Weights).map_err(|error| LibraryError::NoMemory { needed: size, error })
}

/// Loads `/models/NAME` into a new weights buffer, reporting `progress(done, total)`, then
/// validates it. A llama2.c checkpoint takes its tokenizer from `/models/tokenizer.bin`.
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
    let is_gguf = buffer.starts_with(b"GGUF");
    if !is_gguf && name.to_ascii_lowercase().ends_with(".gguf") {
        // A .gguf file without the GGUF magic is reported as such, not as a broken checkpoint.
        let found = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
        return Err(LibraryError::Invalid(crate::model::ModelError::new(
            0,
            crate::model::ModelErrorKind::BadMagic { found },
        )));
    }
    drop(file);
    let tokenizer = if is_gguf {
        None
    } else {
        // Check the checkpoint itself first, so a corrupt file is reported as such rather
        // than as a missing tokenizer.
        crate::model::ModelFile::parse(&buffer[..length]).map_err(LibraryError::Invalid)?;
        let mut tokenizer =
            volume.open(&format!("{MODEL_DIRECTORY}/tokenizer.bin")).map_err(LibraryError::Fs)?;
        let mut bytes = alloc::vec![0; tokenizer.size() as usize];
        read_whole(&mut tokenizer, &mut bytes, |_, _| {}).map_err(LibraryError::Load)?;
        Some(bytes)
    };
    ServedModel::new(name, buffer, length, tokenizer.as_deref()).map_err(LibraryError::Invalid)
}

/// A model being read in the background: a bounded piece per call to
/// [`StagedLoad::advance`], between generated tokens, into its own weights buffer, while the
/// active model keeps serving. Nothing changes for the active model until it is complete and
/// valid.
pub struct StagedLoad<'memory> {
    name: String,
    layout: FileLayout,
    buffer: TensorBuffer<'memory>,
    done: u64,
}

impl<'memory> StagedLoad<'memory> {
    /// Opens `/models/NAME` and reserves its weights buffer (GGUF only: a llama2.c model also
    /// needs its tokenizer, which [`load_model`] handles).
    pub fn begin<D: BlockDevice>(
        volume: &mut Volume<D>,
        memory: &'memory BackedMemory,
        budget: Option<u64>,
        name: &str,
    ) -> Result<Self, LibraryError> {
        let file = volume.open(&format!("{MODEL_DIRECTORY}/{name}")).map_err(LibraryError::Fs)?;
        let size = file.size();
        if size == 0 {
            return Err(LibraryError::Load(LoadError::Empty));
        }
        let layout = file.layout();
        let buffer = weights_buffer(memory, budget, size)?;
        Ok(Self { name: name.into(), layout, buffer, done: 0 })
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes read so far, and the file size.
    pub fn progress(&self) -> (u64, u64) {
        (self.done, self.layout.size)
    }

    /// Reads up to `budget` more bytes (rounded to whole blocks). Returns whether the whole
    /// file is in.
    pub fn advance<D: BlockDevice>(
        &mut self,
        volume: &mut Volume<D>,
        budget: usize,
    ) -> Result<bool, LibraryError> {
        let size = self.layout.size as usize;
        if self.done as usize >= size {
            return Ok(true);
        }
        let start = self.done as usize;
        let end = (start + budget.max(crate::hil::BLOCK_SIZE)).min(size);
        let mut file = volume.reopen(&self.layout);
        let read = file.read_at(self.done, &mut self.buffer[start..end]).map_err(LibraryError::Fs)?;
        if read == 0 {
            return Err(LibraryError::Load(LoadError::ShortRead {
                read: self.done,
                expected: self.layout.size,
            }));
        }
        self.done += read as u64;
        Ok(self.done as usize >= size)
    }

    /// Validates the complete file and builds the model.
    pub fn finish(self) -> Result<ServedModel<TensorBuffer<'memory>>, LibraryError> {
        if self.done < self.layout.size {
            return Err(LibraryError::Load(LoadError::ShortRead {
                read: self.done,
                expected: self.layout.size,
            }));
        }
        if !self.buffer.starts_with(b"GGUF") {
            return Err(LibraryError::Invalid(crate::model::ModelError::new(
                0,
                crate::model::ModelErrorKind::InvalidTokenizer(
                    "only GGUF models (with their tokenizer) load in the background",
                ),
            )));
        }
        ServedModel::new(&self.name, self.buffer, self.layout.size as usize, None)
            .map_err(LibraryError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fs::tests::fat_volume_with,
        infer::synthetic::{SyntheticFormat, SyntheticSpec},
        mm::{buffer::tests::host_backed_memory, layout::MIB},
        model::TensorType,
    };

    fn model_bytes(seed: u64) -> Vec<u8> {
        let spec = SyntheticSpec {
            dim: 64,
            hidden_dim: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab_size: 320,
            context_length: 64,
            tied: true,
            seed,
        };
        spec.generate(SyntheticFormat::Gguf(TensorType::Q8_0)).unwrap().model
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

        let mut staged = StagedLoad::begin(&mut volume, memory, None, "good.gguf").unwrap();
        let mut steps = 0;
        while !staged.advance(&mut volume, 4096).unwrap() {
            steps += 1;
        }
        assert_eq!(steps, good.len().div_ceil(4096) - 1, "one bounded piece per step");
        let staged = staged.finish().unwrap();
        let direct = load_model(&mut volume, memory, None, "good.gguf", |_, _| {}).unwrap();
        assert_eq!(staged.size(), direct.size());
        assert_eq!(staged.view().unwrap().file.config(), direct.view().unwrap().file.config());
        drop((staged, direct));

        assert!(matches!(
            load_model(&mut volume, memory, None, "bad.gguf", |_, _| {}),
            Err(LibraryError::Invalid(_))
        ));
        let mut bad_staged = StagedLoad::begin(&mut volume, memory, None, "bad.gguf").unwrap();
        while !bad_staged.advance(&mut volume, 1 << 20).unwrap() {}
        assert!(matches!(bad_staged.finish(), Err(LibraryError::Invalid(_))));
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
}
