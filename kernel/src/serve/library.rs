//! The models on the card: listing `/models`, and loading one into a weights buffer with full
//! validation before it can serve.

#![forbid(unsafe_code)]

use super::{
    chat::ServedModel,
    loader::{LoadError, read_whole},
};
use crate::{
    fs::{FsError, Volume},
    hil::BlockDevice,
    mm::{
        MemError,
        buffer::{BackedMemory, TensorBuffer},
        tensor::TensorKind,
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
                "not enough weights memory for {} MiB next to the current model ({error})",
                needed.div_ceil(1 << 20)
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

/// Loads `/models/NAME` into a new weights buffer, reporting `progress(done, total)`, then
/// validates it. A llama2.c checkpoint takes its tokenizer from `/models/tokenizer.bin`.
pub fn load_model<'memory, D: BlockDevice>(
    volume: &mut Volume<D>,
    memory: &'memory BackedMemory,
    name: &str,
    progress: impl FnMut(u64, u64),
) -> Result<ServedModel<TensorBuffer<'memory>>, LibraryError> {
    let path = format!("{MODEL_DIRECTORY}/{name}");
    let mut file = volume.open(&path).map_err(LibraryError::Fs)?;
    let size = file.size();
    if size == 0 {
        return Err(LibraryError::Load(LoadError::Empty));
    }
    let mut buffer = memory
        .alloc(size, TensorKind::Weights)
        .map_err(|error| LibraryError::NoMemory { needed: size, error })?;
    let length = read_whole(&mut file, &mut buffer, progress).map_err(LibraryError::Load)?;
    let is_gguf = buffer.starts_with(b"GGUF");
    drop(file);
    let tokenizer = if is_gguf {
        None
    } else {
        let mut tokenizer =
            volume.open(&format!("{MODEL_DIRECTORY}/tokenizer.bin")).map_err(LibraryError::Fs)?;
        let mut bytes = alloc::vec![0; tokenizer.size() as usize];
        read_whole(&mut tokenizer, &mut bytes, |_, _| {}).map_err(LibraryError::Load)?;
        Some(bytes)
    };
    ServedModel::new(name, buffer, length, tokenizer.as_deref()).map_err(LibraryError::Invalid)
}
