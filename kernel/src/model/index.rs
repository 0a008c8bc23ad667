//! The validated tensor index: where each tensor the forward pass reads lies in the model
//! file, with its type and shape, as fixed-size records in a byte buffer. Built once at load,
//! in bounded steps, and kept in the model's tables buffer; a batch turns it into
//! [`Weights`] views without parsing the file again.
//!
//! Records are indexed by [`Role`]: the token embedding, the final norm, the classifier and
//! nine tensors per layer. A record is 56 bytes of little-endian numbers: the type code (or
//! [`EMPTY`] while no tensor has the role), the dimension count, four dimensions, the data's
//! absolute offset in the file and its size.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::config::Config;
use super::error::{ModelError, ModelErrorKind};
use super::gguf::{GgufFile, MAX_DIMENSIONS, TensorInfo};
use super::quant::TensorType;
use super::tensor::Matrix;
use super::weights::{LayerWeights, Vector, Weights};

/// Bytes of one record.
pub const RECORD_BYTES: usize = 56;

/// The type word of a record no tensor has filled.
pub const EMPTY: u32 = u32::MAX;

/// Records of the three tensors outside the layers.
const GLOBAL_ROLES: usize = 3;

/// The nine tensors of a layer, in the order the weights are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    /// RMSNorm before attention.
    AttentionNorm,
    /// Query projection.
    Query,
    /// Key projection.
    Key,
    /// Value projection.
    Value,
    /// Attention output projection.
    Output,
    /// RMSNorm before the feed-forward network.
    FfnNorm,
    /// SwiGLU gate.
    Gate,
    /// Down projection.
    Down,
    /// Up projection.
    Up,
}

/// Each layer tensor with its GGUF name (`blk.N.NAME.weight`).
pub const LAYER_TENSORS: [(LayerTensor, &str); 9] = [
    (LayerTensor::AttentionNorm, "attn_norm"),
    (LayerTensor::Query, "attn_q"),
    (LayerTensor::Key, "attn_k"),
    (LayerTensor::Value, "attn_v"),
    (LayerTensor::Output, "attn_output"),
    (LayerTensor::FfnNorm, "ffn_norm"),
    (LayerTensor::Gate, "ffn_gate"),
    (LayerTensor::Down, "ffn_down"),
    (LayerTensor::Up, "ffn_up"),
];

/// What a tensor is to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `token_embd.weight`.
    TokenEmbedding,
    /// `output_norm.weight`.
    FinalNorm,
    /// `output.weight` (absent when tied to the embedding).
    Classifier,
    /// `blk.N.*.weight`.
    Layer(usize, LayerTensor),
}

impl Role {
    /// The role of the GGUF tensor called `name` in a model of `layers` layers, if any.
    pub fn of(name: &str, layers: usize) -> Option<Self> {
        match name {
            "token_embd.weight" => return Some(Role::TokenEmbedding),
            "output_norm.weight" => return Some(Role::FinalNorm),
            "output.weight" => return Some(Role::Classifier),
            _ => {}
        }
        let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
        let (number, tensor) = rest.split_once('.')?;
        // Plain decimal, as the writer spells it ("blk.01" is not layer 1).
        if number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
            return None;
        }
        let layer: usize = number.parse().ok().filter(|layer| *layer < layers)?;
        let (tensor, _) = LAYER_TENSORS.iter().find(|(_, suffix)| *suffix == tensor)?;
        Some(Role::Layer(layer, *tensor))
    }

    /// The tensor's GGUF name.
    pub fn name(self) -> String {
        match self {
            Role::TokenEmbedding => "token_embd.weight".into(),
            Role::FinalNorm => "output_norm.weight".into(),
            Role::Classifier => "output.weight".into(),
            Role::Layer(layer, tensor) => {
                let suffix =
                    LAYER_TENSORS.iter().find(|(each, _)| *each == tensor).map_or("", |(_, suffix)| suffix);
                format!("blk.{layer}.{suffix}.weight")
            }
        }
    }

    fn slot(self) -> usize {
        match self {
            Role::TokenEmbedding => 0,
            Role::FinalNorm => 1,
            Role::Classifier => 2,
            Role::Layer(layer, tensor) => GLOBAL_ROLES + layer * LAYER_TENSORS.len() + tensor as usize,
        }
    }
}

/// Bytes of the index of a model of `layers` layers.
pub fn index_bytes(layers: usize) -> Option<usize> {
    layers.checked_mul(LAYER_TENSORS.len())?.checked_add(GLOBAL_ROLES)?.checked_mul(RECORD_BYTES)
}

/// One tensor's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRecord {
    /// Element type.
    pub tensor_type: TensorType,
    /// Dimensions, innermost first; unused ones are 1.
    pub dimensions: [u64; MAX_DIMENSIONS],
    /// How many dimensions the file gave.
    pub dimension_count: usize,
    /// Absolute offset of the data in the file.
    pub offset: usize,
    /// Bytes of data.
    pub size: usize,
}

impl TensorRecord {
    /// The record of a checked GGUF tensor info (offset already absolute).
    pub fn of(info: &TensorInfo<'_>) -> Self {
        Self {
            tensor_type: info.tensor_type,
            dimensions: info.dimensions.map(|dimension| dimension as u64),
            dimension_count: info.dimension_count,
            offset: info.offset,
            size: info.size,
        }
    }

    /// The record of a matrix view into `file` (a llama2.c checkpoint, whose tensors are all
    /// two-dimensional), located by address.
    pub fn of_matrix(file: &[u8], matrix: &Matrix<'_>) -> Self {
        Self {
            tensor_type: matrix.tensor_type,
            dimensions: [matrix.columns as u64, matrix.rows as u64, 1, 1],
            dimension_count: 2,
            offset: (matrix.data.as_ptr() as usize).wrapping_sub(file.as_ptr() as usize),
            size: matrix.data.len(),
        }
    }

    /// Values per row.
    fn columns(&self) -> usize {
        self.dimensions[0] as usize
    }

    /// Rows: every dimension but the first.
    fn rows(&self) -> usize {
        self.dimensions[1..].iter().product::<u64>() as usize
    }

    fn write(&self, out: &mut [u8]) {
        let mut words = [0u8; RECORD_BYTES];
        words[..4].copy_from_slice(&self.tensor_type.code().to_le_bytes());
        words[4..8].copy_from_slice(&(self.dimension_count as u32).to_le_bytes());
        for (index, dimension) in self.dimensions.iter().enumerate() {
            words[8 + 8 * index..16 + 8 * index].copy_from_slice(&dimension.to_le_bytes());
        }
        words[40..48].copy_from_slice(&(self.offset as u64).to_le_bytes());
        words[48..56].copy_from_slice(&(self.size as u64).to_le_bytes());
        out.copy_from_slice(&words);
    }

    fn read(bytes: &[u8]) -> Option<Self> {
        let u64_at =
            |at: usize| bytes.get(at..at + 8).and_then(|word| word.try_into().ok()).map(u64::from_le_bytes);
        let u32_at =
            |at: usize| bytes.get(at..at + 4).and_then(|word| word.try_into().ok()).map(u32::from_le_bytes);
        let tensor_type = TensorType::from_code(u32_at(0)?)?;
        let mut dimensions = [1u64; MAX_DIMENSIONS];
        for (index, dimension) in dimensions.iter_mut().enumerate() {
            *dimension = u64_at(8 + 8 * index)?;
        }
        Some(Self {
            tensor_type,
            dimensions,
            dimension_count: u32_at(4)? as usize,
            offset: usize::try_from(u64_at(40)?).ok()?,
            size: usize::try_from(u64_at(48)?).ok()?,
        })
    }
}

/// A model's tensor index over its record bytes (`records`, [`index_bytes`] long).
#[derive(Debug)]
pub struct TensorIndex<'r> {
    records: &'r [u8],
    layers: usize,
}

/// The same, being written.
#[derive(Debug)]
pub struct TensorIndexWriter<'r> {
    records: &'r mut [u8],
    layers: usize,
}

fn record_range(slot: usize) -> core::ops::Range<usize> {
    slot * RECORD_BYTES..(slot + 1) * RECORD_BYTES
}

impl<'r> TensorIndexWriter<'r> {
    /// An empty index of a model of `layers` layers, over `records` (whatever they held).
    pub fn clear(records: &'r mut [u8], layers: usize) -> Result<Self, ModelError> {
        let length = index_bytes(layers).filter(|length| *length <= records.len()).ok_or_else(|| {
            ModelError::new(0, ModelErrorKind::InvalidConfig("the tensor index does not fit its buffer"))
        })?;
        for record in records[..length].chunks_exact_mut(RECORD_BYTES) {
            record.fill(0);
            record[..4].copy_from_slice(&EMPTY.to_le_bytes());
        }
        Ok(Self { records, layers })
    }

    /// An index already cleared (a later step of the same build).
    pub fn resume(records: &'r mut [u8], layers: usize) -> Self {
        Self { records, layers }
    }

    /// Records `info` if its name gives it a role; a second tensor with the same role is an
    /// error. `data_offset` locates the error, as the whole-file parse does.
    pub fn add(&mut self, info: &TensorInfo<'_>, data_offset: usize) -> Result<(), ModelError> {
        match Role::of(info.name, self.layers) {
            Some(role) => self.put(role, TensorRecord::of(info), data_offset),
            None => Ok(()),
        }
    }

    /// Records `record` under `role`; an error (at `error_offset`) when the role already has
    /// one.
    pub fn put(&mut self, role: Role, record: TensorRecord, error_offset: usize) -> Result<(), ModelError> {
        let duplicate =
            || ModelError::new(error_offset, ModelErrorKind::DuplicateTensor { name: role.name() });
        let slot = self.records.get_mut(record_range(role.slot())).ok_or_else(duplicate)?;
        if slot[..4] != EMPTY.to_le_bytes() {
            return Err(duplicate());
        }
        record.write(slot);
        Ok(())
    }

    /// The index for reading.
    pub fn index(&self) -> TensorIndex<'_> {
        TensorIndex { records: self.records, layers: self.layers }
    }
}

impl<'r> TensorIndex<'r> {
    /// The index of a model of `layers` layers in `records`.
    pub fn new(records: &'r [u8], layers: usize) -> Self {
        Self { records, layers }
    }
}

/// Where a model's tensors are looked up by role: a [`TensorIndex`], or a parsed GGUF file
/// ([`GgufTensors`]). The shape checks and the weights views are made once, over either.
pub trait TensorSource {
    /// The record of `role`, when a tensor has it.
    fn get(&self, role: Role) -> Option<TensorRecord>;

    /// Layers of the model.
    fn layers(&self) -> usize;

    /// Rows of the token embedding as GGUF gives them (its second dimension), which is the
    /// vocabulary size when the metadata has none.
    fn embedding_rows(&self) -> Option<usize> {
        self.get(Role::TokenEmbedding).map(|record| record.dimensions[1] as usize)
    }

    /// Checks the tensors of check step `step` against `config` (step 0: the embedding; step
    /// `1 + l`: layer `l`; the last: the classifier and the final norm). `data_offset` locates
    /// a missing tensor. Returns whether that was the last step.
    fn check(&self, config: &Config, step: usize, data_offset: usize) -> Result<bool, ModelError>
    where
        Self: Sized,
    {
        let (dim, hidden, kv_dim, vocab) =
            (config.dim, config.hidden_dim, config.kv_dim(), config.vocab_size);
        if step == 0 {
            self.expect_matrix(Role::TokenEmbedding, vocab, dim, data_offset)?;
        } else if step <= self.layers() {
            let layer = step - 1;
            for (tensor, _) in LAYER_TENSORS {
                let role = Role::Layer(layer, tensor);
                match tensor {
                    LayerTensor::AttentionNorm | LayerTensor::FfnNorm => {
                        self.expect_vector(role, dim, data_offset)?
                    }
                    LayerTensor::Query | LayerTensor::Output => {
                        self.expect_matrix(role, dim, dim, data_offset).map(drop)?
                    }
                    LayerTensor::Key | LayerTensor::Value => {
                        self.expect_matrix(role, kv_dim, dim, data_offset).map(drop)?
                    }
                    LayerTensor::Gate | LayerTensor::Up => {
                        self.expect_matrix(role, hidden, dim, data_offset).map(drop)?
                    }
                    LayerTensor::Down => self.expect_matrix(role, dim, hidden, data_offset).map(drop)?,
                }
            }
        } else {
            if self.get(Role::Classifier).is_some() {
                self.expect_matrix(Role::Classifier, vocab, dim, data_offset)?;
            }
            self.expect_vector(Role::FinalNorm, dim, data_offset)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Checks that `role`'s tensor is a `rows × columns` matrix.
    fn expect_matrix(
        &self,
        role: Role,
        rows: usize,
        columns: usize,
        data_offset: usize,
    ) -> Result<TensorRecord, ModelError>
    where
        Self: Sized,
    {
        let record = self
            .get(role)
            .ok_or_else(|| ModelError::new(data_offset, ModelErrorKind::MissingTensor(role.name())))?;
        if record.dimension_count > 2 || record.columns() != columns || record.dimensions[1] as usize != rows
        {
            return Err(ModelError::new(
                record.offset,
                ModelErrorKind::WrongTensor {
                    name: role.name(),
                    expected: "of the shape the config implies",
                },
            ));
        }
        Ok(record)
    }

    /// Checks that `role`'s tensor is an F32 vector of `length` values.
    fn expect_vector(&self, role: Role, length: usize, data_offset: usize) -> Result<(), ModelError>
    where
        Self: Sized,
    {
        let record = self.expect_matrix(role, 1, length, data_offset)?;
        if record.tensor_type != TensorType::F32 {
            return Err(ModelError::new(
                0,
                ModelErrorKind::WrongTensor { name: role.name(), expected: "an F32 vector" },
            ));
        }
        Ok(())
    }

    /// The weights of a model whose index this is (every check passed), as views into `file`.
    fn weights<'a>(&self, file: &'a [u8], config: Config) -> Result<Weights<'a>, ModelError>
    where
        Self: Sized,
    {
        let matrix = |role: Role| -> Result<Matrix<'a>, ModelError> {
            let record = self
                .get(role)
                .ok_or_else(|| ModelError::new(0, ModelErrorKind::MissingTensor(role.name())))?;
            let data = record
                .offset
                .checked_add(record.size)
                .and_then(|end| file.get(record.offset..end))
                .ok_or_else(|| {
                    ModelError::new(record.offset, ModelErrorKind::TensorOutOfBounds { name: role.name() })
                })?;
            Ok(Matrix {
                tensor_type: record.tensor_type,
                rows: record.rows(),
                columns: record.columns(),
                data,
            })
        };
        let vector = |role: Role| matrix(role).map(|matrix| Vector { data: matrix.data });
        let mut layers = Vec::with_capacity(self.layers());
        for layer in 0..self.layers() {
            let tensor = |tensor| Role::Layer(layer, tensor);
            layers.push(LayerWeights {
                attention_norm: vector(tensor(LayerTensor::AttentionNorm))?,
                query: matrix(tensor(LayerTensor::Query))?,
                key: matrix(tensor(LayerTensor::Key))?,
                value: matrix(tensor(LayerTensor::Value))?,
                output: matrix(tensor(LayerTensor::Output))?,
                ffn_norm: vector(tensor(LayerTensor::FfnNorm))?,
                gate: matrix(tensor(LayerTensor::Gate))?,
                down: matrix(tensor(LayerTensor::Down))?,
                up: matrix(tensor(LayerTensor::Up))?,
            });
        }
        let token_embedding = matrix(Role::TokenEmbedding)?;
        let classifier = match self.get(Role::Classifier) {
            Some(_) => matrix(Role::Classifier)?,
            None => token_embedding,
        };
        Ok(Weights { config, token_embedding, layers, final_norm: vector(Role::FinalNorm)?, classifier })
    }
}

impl TensorSource for TensorIndex<'_> {
    fn get(&self, role: Role) -> Option<TensorRecord> {
        TensorRecord::read(self.records.get(record_range(role.slot()))?)
    }

    fn layers(&self) -> usize {
        self.layers
    }
}

/// The tensors of a parsed GGUF file of `layers` layers, looked up by name.
#[derive(Clone, Copy, Debug)]
pub struct GgufTensors<'f, 'a> {
    /// The file.
    pub file: &'f GgufFile<'a>,
    /// Layers of the model.
    pub layers: usize,
}

impl TensorSource for GgufTensors<'_, '_> {
    fn get(&self, role: Role) -> Option<TensorRecord> {
        let name = role.name();
        self.file.tensors.iter().find(|tensor| tensor.name == name).map(TensorRecord::of)
    }

    fn layers(&self) -> usize {
        self.layers
    }
}

/// Writes the index of `weights` (views into `file`, as a llama2.c checkpoint gives them) into
/// `records`.
pub fn index_of_weights(file: &[u8], weights: &Weights<'_>, records: &mut [u8]) -> Result<(), ModelError> {
    fn vector<'v>(vector: &Vector<'v>) -> Matrix<'v> {
        Matrix { tensor_type: TensorType::F32, rows: 1, columns: vector.len(), data: vector.data }
    }
    let mut writer = TensorIndexWriter::clear(records, weights.layers.len())?;
    let mut entries: Vec<(Role, Matrix<'_>)> = alloc::vec![
        (Role::TokenEmbedding, weights.token_embedding),
        (Role::FinalNorm, vector(&weights.final_norm)),
        (Role::Classifier, weights.classifier),
    ];
    for (layer, each) in weights.layers.iter().enumerate() {
        let role = |tensor| Role::Layer(layer, tensor);
        entries.extend([
            (role(LayerTensor::AttentionNorm), vector(&each.attention_norm)),
            (role(LayerTensor::Query), each.query),
            (role(LayerTensor::Key), each.key),
            (role(LayerTensor::Value), each.value),
            (role(LayerTensor::Output), each.output),
            (role(LayerTensor::FfnNorm), vector(&each.ffn_norm)),
            (role(LayerTensor::Gate), each.gate),
            (role(LayerTensor::Down), each.down),
            (role(LayerTensor::Up), each.up),
        ]);
    }
    for (role, matrix) in entries {
        writer.put(role, TensorRecord::of_matrix(file, &matrix), 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_names_and_go_back_to_them() {
        assert_eq!(Role::of("blk.3.ffn_down.weight", 4), Some(Role::Layer(3, LayerTensor::Down)));
        for name in [
            "blk.4.ffn_down.weight",
            "blk.03.attn_q.weight",
            "blk..attn_q.weight",
            "blk.1.attn_x.weight",
            "blk.1.attn_q.bias",
            "output.bias",
        ] {
            assert_eq!(Role::of(name, 4), None, "{name}");
        }
        for role in [
            Role::TokenEmbedding,
            Role::FinalNorm,
            Role::Classifier,
            Role::Layer(2, LayerTensor::AttentionNorm),
        ] {
            assert_eq!(Role::of(&role.name(), 4), Some(role));
        }
        assert_eq!(index_bytes(30), Some((3 + 270) * RECORD_BYTES));
        assert_eq!(index_bytes(usize::MAX), None);
    }

    #[test]
    fn records_round_trip_and_a_role_takes_one_tensor() {
        let mut bytes = alloc::vec![0xAB; index_bytes(2).unwrap() + 7];
        let mut writer = TensorIndexWriter::clear(&mut bytes, 2).unwrap();
        let record = TensorRecord {
            tensor_type: TensorType::Q4_1,
            dimensions: [64, 32, 1, 1],
            dimension_count: 2,
            offset: 4096,
            size: 1280,
        };
        let role = Role::Layer(1, LayerTensor::Gate);
        writer.put(role, record, 0).unwrap();
        let error = writer.put(role, record, 9).unwrap_err();
        assert_eq!(error.kind, ModelErrorKind::DuplicateTensor { name: "blk.1.ffn_gate.weight".into() });
        assert_eq!(error.offset, 9);
        let index = writer.index();
        assert_eq!(index.get(role), Some(record));
        assert_eq!(index.get(Role::Layer(0, LayerTensor::Gate)), None, "cleared, whatever the buffer held");
        assert_eq!(record.rows(), 32);
    }
}
