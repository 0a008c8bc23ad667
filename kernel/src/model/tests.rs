//! Parser tests: synthetic models round-trip, and arbitrary or mutated bytes never panic.

use alloc::vec::Vec;

use proptest::prelude::*;

use super::gguf::GgufFile;
use super::llama2c::TokenizerFile;
use super::{Format, ModelErrorKind, ModelFile, TensorType};
use crate::hil::SingleCpu;
use crate::infer::synthetic::{SyntheticFormat, SyntheticSpec};
use crate::infer::{ContiguousKv, State, Tokenizer, forward};

fn spec(seed: u64) -> SyntheticSpec {
    SyntheticSpec {
        dim: 32,
        hidden_dim: 64,
        layers: 1,
        heads: 4,
        kv_heads: 2,
        vocab_size: 272,
        context_length: 8,
        tied: true,
        seed,
    }
}

fn small_gguf() -> Vec<u8> {
    spec(1).generate(SyntheticFormat::Gguf(TensorType::Q4_1)).unwrap().model
}

#[test]
fn synthetic_models_parse_in_every_format() {
    for format in [
        SyntheticFormat::Llama2c,
        SyntheticFormat::Gguf(TensorType::F32),
        SyntheticFormat::Gguf(TensorType::Q8_0),
        SyntheticFormat::Gguf(TensorType::Q4_0),
        SyntheticFormat::Gguf(TensorType::Q4_1),
    ] {
        let generated = spec(5).generate(format).unwrap();
        let model = ModelFile::parse(&generated.model).unwrap();
        let config = model.config();
        assert_eq!((config.dim, config.hidden_dim, config.layers), (32, 64, 1));
        assert_eq!((config.heads, config.kv_heads, config.vocab_size, config.context_length), (4, 2, 272, 8));
        assert_eq!(model.weights.layers[0].key.rows, 16);
        match format {
            SyntheticFormat::Llama2c => {
                assert_eq!(model.format, Format::Llama2c);
                let tokenizer = generated.tokenizer.unwrap();
                assert_eq!(TokenizerFile::parse(&tokenizer, 272).unwrap().tokens.len(), 272);
            }
            SyntheticFormat::Gguf(tensor_type) => {
                assert_eq!(model.format, Format::Gguf);
                assert_eq!(model.weights.layers[0].query.tensor_type, tensor_type);
                assert_eq!(model.weights.classifier, model.weights.token_embedding, "tied embeddings");
                let tokenizer = Tokenizer::from_gguf(model.gguf.as_ref().unwrap()).unwrap();
                assert_eq!(tokenizer.vocab_size(), 272, "the tokenizer covers the embedding");
                assert!(tokenizer.bos().is_some() && tokenizer.eos().is_some());
            }
        }
    }
}

#[test]
fn typed_errors_name_the_problem() {
    let bytes = small_gguf();
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'X';
    assert!(matches!(GgufFile::parse(&wrong_magic).unwrap_err().kind, ModelErrorKind::BadMagic { .. }));
    let mut wrong_version = bytes.clone();
    wrong_version[4] = 2;
    assert_eq!(GgufFile::parse(&wrong_version).unwrap_err().kind, ModelErrorKind::UnsupportedVersion(2));
    let truncated = &bytes[..bytes.len() - 1];
    let error = GgufFile::parse(truncated).unwrap_err();
    assert!(matches!(error.kind, ModelErrorKind::TensorOutOfBounds { .. }), "{error}");
    let mut huge_count = bytes.clone();
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let error = GgufFile::parse(&huge_count).unwrap_err();
    assert_eq!(
        (error.offset, error.kind.clone()),
        (8, ModelErrorKind::TooLarge { what: "tensor count", value: u64::MAX })
    );
    assert!(alloc::format!("{error}").contains("tensor count"));
}

/// Parses `bytes` every way the engine would and, when a model comes out with a sane
/// context, runs one token through it. Nothing may panic.
fn exercise(bytes: &[u8]) {
    let _ = TokenizerFile::parse(bytes, 300);
    let _ = Tokenizer::from_llama2c(bytes, 16);
    if let Ok(file) = GgufFile::parse(bytes) {
        if let Ok(tokenizer) = Tokenizer::from_gguf(&file) {
            let mut ids = Vec::new();
            tokenizer.encode("Hello <|im_start|> 42 🙂", &mut ids);
        }
        for tensor in &file.tensors {
            let view = file.view(tensor);
            assert_eq!(view.data.len(), tensor.size);
        }
    }
    if let Ok(model) = ModelFile::parse(bytes)
        && model.config().context_length <= 64
        && model.config().dim * model.config().hidden_dim <= 1 << 20
    {
        let weights = &model.weights;
        let config = weights.config;
        let mut state = State::new(weights);
        let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
        let _ = forward(weights, &mut state, &mut kv, &SingleCpu, 0, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), gguf in any::<bool>()) {
        if gguf && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"GGUF");
            bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        exercise(&bytes);
    }

    #[test]
    fn mutated_models_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        llama2c in any::<bool>(),
    ) {
        let format = if llama2c { SyntheticFormat::Llama2c } else { SyntheticFormat::Gguf(TensorType::Q8_0) };
        let mut bytes = spec(2).generate(format).unwrap().model;
        // Bias edits towards the header and metadata, where the structure lives.
        let header = bytes.len().min(4096);
        for (index, value) in edits {
            let at = index.index(header);
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(&bytes);
    }
}

#[test]
fn general_alignment_is_honoured_and_checked() {
    use super::write::{GgufWriter, WriteValue};
    let tensor = |writer: &mut GgufWriter| {
        writer.tensor("a", &[3], TensorType::F32, alloc::vec![0; 12]);
        writer.tensor("b", &[2], TensorType::F32, 1.5f32.to_le_bytes().repeat(2));
    };
    let mut writer = GgufWriter::new();
    writer.metadata("general.alignment", WriteValue::U32(256));
    tensor(&mut writer);
    let bytes = writer.finish();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.alignment, 256);
    assert_eq!(file.data_offset % 256, 0);
    assert_eq!(file.tensors[1].offset, file.data_offset + 256);
    assert_eq!(file.tensor("b").unwrap().data, 1.5f32.to_le_bytes().repeat(2));

    let mut writer = GgufWriter::new();
    writer.metadata("general.alignment", WriteValue::U32(24));
    tensor(&mut writer);
    let error = GgufFile::parse(&writer.finish()).unwrap_err();
    assert_eq!(error.kind, ModelErrorKind::BadAlignment(24));
    assert_eq!(error.offset, 24, "the offset of the alignment entry");

    let mut writer = GgufWriter::new();
    writer.metadata("general.alignment", WriteValue::U64(32));
    assert!(matches!(GgufFile::parse(&writer.finish()).unwrap_err().kind, ModelErrorKind::WrongKeyType(_)));

    // A tensor offset that is not a multiple of the alignment is refused.
    let mut writer = GgufWriter::new();
    tensor(&mut writer);
    let mut bytes = writer.finish();
    let file = GgufFile::parse(&bytes).unwrap();
    let relative = (file.tensors[1].offset - file.data_offset) as u64;
    let at = bytes.windows(8).rposition(|window| window == relative.to_le_bytes()).unwrap();
    bytes[at..at + 8].copy_from_slice(&(relative + 4).to_le_bytes());
    assert!(matches!(GgufFile::parse(&bytes).unwrap_err().kind, ModelErrorKind::MisalignedTensor { .. }));
}
