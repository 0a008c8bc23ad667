//! GGUF v3 writer, for synthetic models, test fixtures and the host tools.

use alloc::string::String;
use alloc::vec::Vec;

use super::gguf::{DEFAULT_ALIGNMENT, GGUF_MAGIC, ValueType};
use super::quant::TensorType;

/// A metadata value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    String(String),
    /// array of `ValueType` elements (each must be of that type)
    Array(ValueType, Vec<WriteValue>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl WriteValue {
    fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(..) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::U8(value) => out.push(*value),
            Self::I8(value) => out.push(*value as u8),
            Self::U16(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::I16(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::U32(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::I32(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::F32(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::Bool(value) => out.push(u8::from(*value)),
            Self::String(value) => encode_string(value, out),
            Self::Array(element_type, values) => {
                out.extend_from_slice(&type_code(*element_type).to_le_bytes());
                out.extend_from_slice(&(values.len() as u64).to_le_bytes());
                values.iter().for_each(|value| value.encode(out));
            }
            Self::U64(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::I64(value) => out.extend_from_slice(&value.to_le_bytes()),
            Self::F64(value) => out.extend_from_slice(&value.to_le_bytes()),
        }
    }
}

fn type_code(value_type: ValueType) -> u32 {
    (0..=12).find(|code| ValueType::from_code(*code) == Some(value_type)).unwrap_or(0)
}

fn encode_string(value: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

struct PendingTensor {
    name: String,
    dimensions: Vec<u64>,
    tensor_type: TensorType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then lays out a GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, WriteValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn metadata(&mut self, key: &str, value: WriteValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor with dimensions innermost first and already-encoded `data`.
    pub fn tensor(
        &mut self,
        name: &str,
        dimensions: &[u64],
        tensor_type: TensorType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dimensions: dimensions.into(),
            tensor_type,
            data,
        });
        self
    }

    /// The alignment the file will use (`general.alignment` when given as u32).
    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find_map(|(key, value)| match (key.as_str(), value) {
                ("general.alignment", WriteValue::U32(value)) if value.is_power_of_two() => {
                    Some(u64::from(*value))
                }
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Encodes the file.
    pub fn finish(&self) -> Vec<u8> {
        let alignment = self.alignment() as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_string(key, &mut out);
            out.extend_from_slice(&type_code(value.value_type()).to_le_bytes());
            value.encode(&mut out);
        }
        let mut offset = 0usize;
        for tensor in &self.tensors {
            encode_string(&tensor.name, &mut out);
            out.extend_from_slice(&(tensor.dimensions.len() as u32).to_le_bytes());
            tensor.dimensions.iter().for_each(|dimension| out.extend_from_slice(&dimension.to_le_bytes()));
            out.extend_from_slice(&tensor.tensor_type.code().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + tensor.data.len()).next_multiple_of(alignment);
        }
        out.resize(out.len().next_multiple_of(alignment), 0);
        for tensor in &self.tensors {
            out.extend_from_slice(&tensor.data);
            out.resize(out.len().next_multiple_of(alignment), 0);
        }
        out
    }
}
