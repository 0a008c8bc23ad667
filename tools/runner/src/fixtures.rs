//! Model files for SD-card tests: small synthetic models made on the spot, hostile variants
//! of them, and real models from `build/models/`.

use kernel::{
    infer::synthetic::{SyntheticFormat, SyntheticSpec},
    model::TensorType,
};
use std::path::{Path, PathBuf};

fn tiny(tensor_type: TensorType, seed: u64) -> Result<Vec<u8>, String> {
    synthetic(64, 96, tensor_type, seed)
}

fn synthetic(dim: usize, hidden_dim: usize, tensor_type: TensorType, seed: u64) -> Result<Vec<u8>, String> {
    let spec = SyntheticSpec {
        dim,
        hidden_dim,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab_size: 320,
        context_length: 512,
        tied: true,
        seed,
    };
    spec.generate(SyntheticFormat::Gguf(tensor_type)).map(|model| model.model).map_err(str::to_string)
}

/// Size of `bulk-wrong-magic.gguf`.
const BULK_BYTES: usize = 32 << 20;

/// The bytes of the fixture called `name`:
/// - `tiny-q8.gguf`, `tiny-q4.gguf`: synthetic llama models (Q8_0 seed 7, Q4_1 seed 9);
/// - `medium-a.gguf`, `medium-b.gguf`: larger synthetic Q8_0 models of about 1.5 MiB each;
/// - `large-a.gguf`: a synthetic Q8_0 model of about 5.7 MiB;
/// - `bulk-wrong-magic.gguf`: 32 MiB that are not a model (magic `FUGG`, zeros after): the
///   kernel reads all of it, seconds under QEMU without reading the console, then refuses it;
/// - `truncated.gguf`, `wrong-magic.gguf`, `empty.gguf`, `offsets-past-end.gguf`,
///   `absurd-dimensions.gguf`, `tokenizer-out-of-range.gguf`: hostile files derived from
///   `tiny-q8.gguf`;
/// - anything else is a path relative to the workspace root (e.g. a model in build/models/).
///
/// A test may put a fixture on the card under another name (see [`fixture_and_file_name`]).
pub fn model_bytes(root: &Path, name: &str) -> Result<Vec<u8>, String> {
    match name {
        "tiny-q8.gguf" => tiny(TensorType::Q8_0, 7),
        "tiny-q4.gguf" => tiny(TensorType::Q4_1, 9),
        "medium-a.gguf" => synthetic(256, 512, TensorType::Q8_0, 11),
        "medium-b.gguf" => synthetic(256, 512, TensorType::Q8_0, 12),
        "large-a.gguf" => synthetic(512, 1024, TensorType::Q8_0, 13),
        "bulk-wrong-magic.gguf" => {
            let mut bytes = vec![0u8; BULK_BYTES];
            bytes[..4].copy_from_slice(b"FUGG");
            Ok(bytes)
        }
        "truncated.gguf" => tiny(TensorType::Q8_0, 7).map(|bytes| bytes[..bytes.len() / 2].to_vec()),
        "wrong-magic.gguf" => tiny(TensorType::Q8_0, 7).map(|mut bytes| {
            bytes[..4].copy_from_slice(b"FUGG");
            bytes
        }),
        "empty.gguf" => Ok(Vec::new()),
        // The embedding width claims four billion: the config check must refuse it.
        "absurd-dimensions.gguf" => {
            tiny(TensorType::Q8_0, 7).and_then(|bytes| patch_u32(bytes, "llama.embedding_length", u32::MAX))
        }
        // The BOS token id points far past the vocabulary.
        "tokenizer-out-of-range.gguf" => tiny(TensorType::Q8_0, 7)
            .and_then(|bytes| patch_u32(bytes, "tokenizer.ggml.bos_token_id", 4_000_000)),
        // Cut inside the tensor data: the header and tensor table are intact but the last
        // tensors' offsets point past the end of the file.
        "offsets-past-end.gguf" => {
            tiny(TensorType::Q8_0, 7).map(|bytes| bytes[..bytes.len() - 4096].to_vec())
        }
        path => std::fs::read(root.join(path)).map_err(|error| format!("{path}: {error}")),
    }
}

/// Overwrites the u32 value of GGUF metadata `key` (stored as: key bytes, a u32 type tag of 4
/// for u32, then the value).
fn patch_u32(mut bytes: Vec<u8>, key: &str, value: u32) -> Result<Vec<u8>, String> {
    let at = bytes
        .windows(key.len())
        .position(|window| window == key.as_bytes())
        .ok_or_else(|| format!("fixture has no metadata key {key}"))?
        + key.len();
    if bytes.get(at..at + 4) != Some(&4u32.to_le_bytes()[..]) {
        return Err(format!("metadata {key} is not a u32"));
    }
    bytes[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    Ok(bytes)
}

/// A fixture name as a test lists it, split into the fixture and the file name it gets on
/// the card: `FIXTURE=NAME` puts fixture `FIXTURE` (say, a model in build/models/) on the card
/// as `NAME` (so one file can be there twice); a plain `FIXTURE` keeps its own file name.
pub fn fixture_and_file_name(entry: &str) -> Result<(&str, &str), String> {
    let (fixture, file_name) = match entry.split_once('=') {
        Some((fixture, file_name)) => (fixture, file_name),
        None => (entry, Path::new(entry).file_name().and_then(|name| name.to_str()).unwrap_or("")),
    };
    let plain =
        !file_name.is_empty() && !file_name.contains(['/', '\\']) && file_name != "." && file_name != "..";
    if fixture.is_empty() || !plain {
        return Err(format!("bad model name {entry}"));
    }
    Ok((fixture, file_name))
}

/// Writes each fixture of `names` into `directory` under its file name (see
/// [`fixture_and_file_name`]), returning the paths.
pub fn write_models(root: &Path, directory: &Path, names: &[String]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    names
        .iter()
        .map(|entry| {
            let (fixture, file_name) = fixture_and_file_name(entry)?;
            let bytes = model_bytes(root, fixture)?;
            let path = directory.join(file_name);
            std::fs::write(&path, bytes).map_err(|error| format!("{}: {error}", path.display()))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixture_can_take_another_name_on_the_card() {
        assert_eq!(fixture_and_file_name("tiny-q8.gguf"), Ok(("tiny-q8.gguf", "tiny-q8.gguf")));
        assert_eq!(
            fixture_and_file_name("build/models/m.gguf=copy.gguf"),
            Ok(("build/models/m.gguf", "copy.gguf"))
        );
        assert_eq!(fixture_and_file_name("build/models/m.gguf"), Ok(("build/models/m.gguf", "m.gguf")));
        for bad in ["=copy.gguf", "m.gguf=", "m.gguf=a/b.gguf", "m.gguf=..", ""] {
            assert!(fixture_and_file_name(bad).is_err(), "{bad}");
        }
        let directory = std::env::temp_dir().join(format!("tessera-fixtures-{}", std::process::id()));
        let paths = write_models(
            Path::new("."),
            &directory,
            &["tiny-q8.gguf".to_string(), "tiny-q8.gguf=again.gguf".to_string()],
        )
        .unwrap();
        assert_eq!(paths, [directory.join("tiny-q8.gguf"), directory.join("again.gguf")]);
        assert_eq!(std::fs::read(&paths[0]).unwrap(), std::fs::read(&paths[1]).unwrap());
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
