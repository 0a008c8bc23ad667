//! A model file made ready to serve, in bounded units: the GGUF structure validated a few
//! kilobytes at a time ([`GgufScan`]), the tensor index and the tokenizer's tables built into
//! one tables buffer taken once their size is known, the shapes checked a layer at a time.
//!
//! What comes out is the model's tables buffer (its tensor index, then its tokenizer's flat
//! tables) and a [`ModelLayout`] that says where each lies; with the file's own buffer, that is
//! all a served model holds. A batch makes its weights views and its tokenizer from them
//! without parsing anything again.

#![forbid(unsafe_code)]

use core::ops::DerefMut;

use crate::{
    infer::{
        Tokenizer,
        tokenizer::{
            TablesLayout, TokenizerBuild,
            build::{build_score, plan_score},
        },
    },
    model::{
        Config, Format, ModelError, ModelErrorKind, Weights,
        gguf::MetadataSource,
        index::{TensorIndex, TensorIndexWriter, TensorSource, index_bytes, index_of_weights},
        llama2c::{Checkpoint, TokenizerFile},
        scan::GgufScan,
        weights::{check_architecture, gguf_config},
    },
};

/// Bytes of the file the validation walks in one unit: a few microseconds of work on a
/// Cortex-A53.
pub const STAGE_SCAN_BYTES: usize = 4 * 1024;

/// Tokens or merges added to the tokenizer in one unit.
pub const STAGE_TOKENIZER_UNITS: usize = 64;

/// Where a prepared model's parts lie in its tables buffer, and what the file is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelLayout {
    /// The file's format.
    pub format: Format,
    /// Its hyperparameters.
    pub config: Config,
    /// Bytes of the tensor index, at the start of the tables buffer.
    pub index_bytes: usize,
    /// The tokenizer's tables follow the index.
    pub tokenizer: TablesLayout,
}

impl ModelLayout {
    /// The weights views into `file`, from the index in `tables` (one allocation, the layer
    /// table; no parsing).
    pub fn weights<'a>(&self, file: &'a [u8], tables: &[u8]) -> Result<Weights<'a>, ModelError> {
        let records = tables.get(..self.index_bytes).unwrap_or(&[]);
        TensorIndex::new(records, self.config.layers).weights(file, self.config)
    }

    /// The tokenizer over its tables in `tables`.
    pub fn tokenizer<'t>(&self, tables: &'t [u8]) -> Tokenizer<&'t [u8]> {
        Tokenizer::from_parts(tables.get(self.index_bytes..).unwrap_or(&[]), self.tokenizer)
    }

    /// Bytes of the tables buffer.
    pub fn tables_bytes(&self) -> usize {
        self.index_bytes + self.tokenizer.total_bytes()
    }
}

/// Where a preparation is.
#[derive(Clone, Debug)]
enum Stage {
    /// Walking the header and metadata.
    Metadata,
    /// Next: size and take the tables buffer.
    Plan,
    /// Walking the tensor infos, recording the model's tensors in the index.
    Tensors,
    /// Next: the config from the metadata and the embedding.
    Config,
    /// Checking the shapes of check step `n` (see [`TensorSource::check`]).
    Check(usize),
    /// Building the tokenizer.
    Tokenizer,
    /// Everything is checked and built.
    Ready,
}

/// A GGUF model being prepared (see the module documentation), a unit at a time. It keeps no
/// reference to the file: each unit is handed the same bytes again. `T` is the tables buffer.
pub struct Preparation<T> {
    stage: Stage,
    scan: GgufScan,
    tables: Option<T>,
    layers: usize,
    index_bytes: usize,
    build: Option<TokenizerBuild>,
    config: Option<Config>,
    tokenizer: Option<TablesLayout>,
}

impl<T> Default for Preparation<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Preparation<T> {
    /// A preparation at the start of a file.
    pub fn new() -> Self {
        Self {
            stage: Stage::Metadata,
            scan: GgufScan::new(),
            tables: None,
            layers: 0,
            index_bytes: 0,
            build: None,
            config: None,
            tokenizer: None,
        }
    }

    /// What the next unit of work is.
    pub fn next_work(&self) -> &'static str {
        match self.stage {
            Stage::Metadata => "validate metadata",
            Stage::Plan => "take the tables buffer",
            Stage::Tensors => "validate tensors",
            Stage::Config => "read the config",
            Stage::Check(_) => "check a layer's shapes",
            Stage::Tokenizer => self.build.as_ref().map_or("tokenizer", TokenizerBuild::next_work),
            Stage::Ready => "ready",
        }
    }

    /// Whether the model is validated and its tables built.
    pub fn is_ready(&self) -> bool {
        matches!(self.stage, Stage::Ready)
    }

    /// The tables buffer and the layout, once ready.
    pub fn finish(self) -> Option<(T, ModelLayout)> {
        let layout = ModelLayout {
            format: Format::Gguf,
            config: self.config?,
            index_bytes: self.index_bytes,
            tokenizer: self.tokenizer?,
        };
        if !matches!(self.stage, Stage::Ready) {
            return None;
        }
        Some((self.tables?, layout))
    }
}

impl<T: DerefMut<Target = [u8]>> Preparation<T> {
    /// Prepares the GGUF model in `file` in one go.
    pub fn run<E: From<ModelError>>(
        file: &[u8],
        allocate: &mut dyn FnMut(usize) -> Result<T, E>,
    ) -> Result<(T, ModelLayout), E> {
        let mut preparation = Self::new();
        while !preparation.unit(file, allocate)? {}
        preparation.finish().ok_or_else(|| not_finished().into())
    }

    /// Does one bounded unit of work on `file` (the whole model file, the same every time).
    /// `allocate(bytes)` is called once, for the tables buffer, when its size is known; its
    /// contents need not be cleared. Returns whether the model is ready.
    pub fn unit<E: From<ModelError>>(
        &mut self,
        file: &[u8],
        allocate: &mut dyn FnMut(usize) -> Result<T, E>,
    ) -> Result<bool, E> {
        match self.stage {
            Stage::Metadata => {
                if self.scan.step_metadata(file, STAGE_SCAN_BYTES)? {
                    self.stage = Stage::Plan;
                }
            }
            Stage::Plan => self.plan(file, allocate)?,
            Stage::Tensors => self.tensors(file)?,
            Stage::Config => {
                let tables = self.tables.as_deref().ok_or_else(not_finished)?;
                let index = TensorIndex::new(&tables[..self.index_bytes], self.layers);
                self.config = Some(gguf_config(&self.scan.metadata(file), index.embedding_rows())?);
                self.stage = Stage::Check(0);
            }
            Stage::Check(step) => {
                let (tables, config) =
                    (self.tables.as_deref().ok_or_else(not_finished)?, self.config.ok_or_else(not_finished)?);
                let index = TensorIndex::new(&tables[..self.index_bytes], self.layers);
                self.stage = if index.check(&config, step, self.scan.data_offset())? {
                    Stage::Tokenizer
                } else {
                    Stage::Check(step + 1)
                };
            }
            Stage::Tokenizer => self.tokenizer(file)?,
            Stage::Ready => {}
        }
        Ok(self.is_ready())
    }

    /// Sizes the tables from the metadata (layers, vocabulary and merges), takes the buffer and
    /// clears the index.
    fn plan<E: From<ModelError>>(
        &mut self,
        file: &[u8],
        allocate: &mut dyn FnMut(usize) -> Result<T, E>,
    ) -> Result<(), E> {
        let metadata = self.scan.metadata(file);
        check_architecture(&metadata)?;
        let layers = metadata.required_usize("llama.block_count")?;
        // Each layer has nine tensors: a larger count cannot be a valid file, and would only
        // make the index large.
        if layers > (self.scan.tensor_count() / 9) as usize {
            return Err(ModelError::new(
                0,
                ModelErrorKind::InvalidConfig("the block count needs more tensors than the file has"),
            )
            .into());
        }
        let build = TokenizerBuild::begin(&metadata)?;
        let too_large =
            || ModelError::new(0, ModelErrorKind::InvalidConfig("the model's tables are too large"));
        self.index_bytes = index_bytes(layers).ok_or_else(too_large)?;
        let total = self.index_bytes.checked_add(build.tables_bytes()).ok_or_else(too_large)?;
        let mut tables = allocate(total)?;
        TensorIndexWriter::clear(&mut tables[..self.index_bytes], layers)?;
        self.tables = Some(tables);
        self.layers = layers;
        self.build = Some(build);
        self.stage = Stage::Tensors;
        Ok(())
    }

    /// Walks on through the tensor infos, recording each of the model's tensors.
    fn tensors(&mut self, file: &[u8]) -> Result<(), ModelError> {
        let tables = self.tables.as_deref_mut().ok_or_else(not_finished)?;
        let mut writer = TensorIndexWriter::resume(&mut tables[..self.index_bytes], self.layers);
        if self.scan.step(file, STAGE_SCAN_BYTES, &mut |info, data_offset| writer.add(&info, data_offset))? {
            self.stage = Stage::Config;
        }
        Ok(())
    }

    /// Adds a few more tokens or merges; when the tokenizer is complete, checks it against the
    /// model's vocabulary.
    fn tokenizer(&mut self, file: &[u8]) -> Result<(), ModelError> {
        let (tables, build) = (
            self.tables.as_deref_mut().ok_or_else(not_finished)?,
            self.build.as_mut().ok_or_else(not_finished)?,
        );
        let tokenizer_tables = &mut tables[self.index_bytes..];
        if !build.step(file, tokenizer_tables, STAGE_TOKENIZER_UNITS)? {
            return Ok(());
        }
        let layout = build.finish_layout(tokenizer_tables)?;
        if layout.vocab_size > self.config.ok_or_else(not_finished)?.vocab_size {
            return Err(ModelError::new(
                0,
                ModelErrorKind::InvalidTokenizer("the tokenizer has more tokens than the model's vocabulary"),
            ));
        }
        self.tokenizer = Some(layout);
        self.build = None;
        self.stage = Stage::Ready;
        Ok(())
    }
}

fn not_finished() -> ModelError {
    ModelError::new(0, ModelErrorKind::InvalidTokenizer("the model's preparation was not completed"))
}

/// Prepares a llama2.c checkpoint in `file` with its `tokenizer.bin`, in one go (such models
/// load only in the foreground): the index of its weights and the tables of its vocabulary.
pub fn prepare_llama2c<T: DerefMut<Target = [u8]>, E: From<ModelError>>(
    file: &[u8],
    tokenizer_file: Option<&[u8]>,
    allocate: &mut dyn FnMut(usize) -> Result<T, E>,
) -> Result<(T, ModelLayout), E> {
    let checkpoint = Checkpoint::parse(file)?;
    let config = checkpoint.config;
    let Some(tokenizer_file) = tokenizer_file else {
        return Err(ModelError::new(
            0,
            ModelErrorKind::InvalidTokenizer("llama2.c models need tokenizer.bin"),
        )
        .into());
    };
    let vocabulary = TokenizerFile::parse(tokenizer_file, config.vocab_size)?;
    let tokenizer = plan_score(&vocabulary.tokens)?;
    let too_large = || ModelError::new(0, ModelErrorKind::InvalidConfig("the model's tables are too large"));
    let index_bytes = index_bytes(config.layers).ok_or_else(too_large)?;
    let mut tables = allocate(index_bytes.checked_add(tokenizer.total_bytes()).ok_or_else(too_large)?)?;
    let (index, tokenizer_tables) = tables.split_at_mut(index_bytes);
    index_of_weights(file, &checkpoint.weights, index)?;
    let tokenizer =
        *build_score(&vocabulary.tokens, &vocabulary.scores, tokenizer, tokenizer_tables)?.layout();
    Ok((tables, ModelLayout { format: Format::Llama2c, config, index_bytes, tokenizer }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        infer::synthetic::{SyntheticFormat, SyntheticSpec},
        model::{ModelFile, TensorType},
    };
    use alloc::vec::Vec;

    fn allocate_filled(fill: u8) -> impl FnMut(usize) -> Result<Vec<u8>, ModelError> {
        move |size| Ok(alloc::vec![fill; size])
    }

    #[test]
    fn a_prepared_model_matches_the_whole_file_parse_whatever_its_buffer_held() {
        let bytes =
            SyntheticSpec::tiny(256, 3).generate(SyntheticFormat::Gguf(TensorType::Q4_1)).unwrap().model;
        let parsed = ModelFile::parse(&bytes).unwrap();
        let whole = Tokenizer::from_gguf(parsed.gguf.as_ref().unwrap()).unwrap();
        for fill in [0x00, 0xA5, 0xFF] {
            let mut preparation = Preparation::new();
            let mut units = 0;
            while !preparation.unit(&bytes, &mut allocate_filled(fill)).unwrap() {
                units += 1;
            }
            assert!(units > 10, "{units} units");
            let (tables, layout) = preparation.finish().unwrap();
            assert_eq!(layout.config, *parsed.config());
            let weights = layout.weights(&bytes, &tables).unwrap();
            assert_eq!(weights.token_embedding, parsed.weights.token_embedding);
            assert_eq!(weights.classifier, parsed.weights.classifier);
            assert_eq!(weights.final_norm, parsed.weights.final_norm);
            for (ours, theirs) in weights.layers.iter().zip(&parsed.weights.layers) {
                assert_eq!(
                    (ours.query, ours.down, ours.ffn_norm),
                    (theirs.query, theirs.down, theirs.ffn_norm)
                );
            }
            let tokenizer = layout.tokenizer(&tables);
            for text in ["hello there", "<|im_start|>user\n42 façade 🙂<|im_end|>", ""] {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                tokenizer.encode(text, &mut ours);
                whole.encode(text, &mut theirs);
                assert_eq!(ours, theirs, "{text:?} with the buffer filled with {fill:#x}");
            }
            for id in 0..whole.vocab_size() as u32 {
                assert_eq!(tokenizer.decode(None, id), whole.decode(None, id));
                assert_eq!(tokenizer.spelling(id), whole.spelling(id));
            }
            assert_eq!(layout.tables_bytes(), tables.len());
        }
    }

    #[test]
    fn llama2c_checkpoints_are_prepared_in_one_go() {
        let generated = SyntheticSpec::tiny(64, 3).generate(SyntheticFormat::Llama2c).unwrap();
        let tokenizer = generated.tokenizer.unwrap();
        let (tables, layout) =
            prepare_llama2c(&generated.model, Some(&tokenizer), &mut allocate_filled(0x5A)).unwrap();
        let parsed = ModelFile::parse(&generated.model).unwrap();
        let weights = layout.weights(&generated.model, &tables).unwrap();
        assert_eq!(weights.layers[0].up, parsed.weights.layers[0].up);
        assert_eq!(weights.token_embedding, parsed.weights.token_embedding);
        assert_eq!(layout.format, Format::Llama2c);
        assert!(
            prepare_llama2c::<Vec<u8>, ModelError>(&generated.model, None, &mut allocate_filled(0)).is_err()
        );
    }
}
