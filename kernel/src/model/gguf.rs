//! GGUF v3 parser: header, typed metadata (every value type, arrays included, read lazily),
//! tensor infos and the aligned data section, as zero-copy views over the file bytes.
//!
//! Every count, offset and size is checked against the bytes that remain, so a hostile file
//! yields a [`ModelError`] and never an out-of-bounds read, a panic or a huge allocation.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::error::{ModelError, ModelErrorKind};
use super::quant::TensorType;
use super::reader::Reader;
use super::scan::GgufScan;
use super::tensor::TensorView;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a GGUF tensor may have.
pub const MAX_DIMENSIONS: usize = 4;
/// Deepest nesting of arrays inside arrays that the parser accepts.
pub(crate) const MAX_ARRAY_DEPTH: u32 = 3;

/// A metadata value type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// u8
    U8,
    /// i8
    I8,
    /// u16
    U16,
    /// i16
    I16,
    /// u32
    U32,
    /// i32
    I32,
    /// f32
    F32,
    /// bool (one byte, 0 or 1)
    Bool,
    /// UTF-8 string with a u64 length
    String,
    /// array: element type, u64 count, elements
    Array,
    /// u64
    U64,
    /// i64
    I64,
    /// f64
    F64,
}

impl ValueType {
    /// The type for a code, if GGUF defines it.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The smallest encoding of one value of this type, in bytes.
    pub(crate) fn minimum_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

/// A metadata value. Strings and arrays borrow from the file.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
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
    String(&'a str),
    /// array, validated but decoded on demand
    Array(Array<'a>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(value) => Some(value.into()),
            Value::U16(value) => Some(value.into()),
            Value::U32(value) => Some(value.into()),
            Value::U64(value) => Some(value),
            Value::I8(value) => u64::try_from(value).ok(),
            Value::I16(value) => u64::try_from(value).ok(),
            Value::I32(value) => u64::try_from(value).ok(),
            Value::I64(value) => u64::try_from(value).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float of either width.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(value) => Some(value.into()),
            Value::F64(value) => Some(value),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(value) => Some(value),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Value::Array(array) => Some(array),
            _ => None,
        }
    }
}

/// A metadata array: its element type, count and encoded elements, checked when parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<'a> {
    /// Type of every element.
    pub element_type: ValueType,
    /// Number of elements.
    pub count: usize,
    /// The encoded elements.
    bytes: &'a [u8],
    /// Offset of `bytes` in the file, for error messages.
    offset: usize,
}

impl<'a> Array<'a> {
    /// An array of `count` elements of `element_type` encoded in `bytes`, which start at
    /// `offset` in the file; the elements must have been checked already (by a scan).
    pub(crate) fn checked(element_type: ValueType, count: usize, bytes: &'a [u8], offset: usize) -> Self {
        Self { element_type, count, bytes, offset }
    }

    /// Bytes of the encoded elements (for strings: their lengths and their text).
    pub fn byte_length(&self) -> usize {
        self.bytes.len()
    }

    /// Iterates over the elements. The bytes were validated at parse time, so iteration
    /// yields exactly `count` values.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + '_ {
        let mut reader = Reader::new(self.bytes);
        let element_type = self.element_type;
        let offset = self.offset;
        (0..self.count).map_while(move |_| read_value(&mut reader, element_type, 0, offset).ok())
    }

    /// The elements as strings, if this is an array of strings.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + '_> {
        (self.element_type == ValueType::String).then(|| self.iter().filter_map(|value| value.as_str()))
    }

    /// Offset of the first element in the file.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// One metadata entry.
#[derive(Clone, Debug, PartialEq)]
pub struct MetadataEntry<'a> {
    /// The key, such as `general.architecture`.
    pub key: &'a str,
    /// The value.
    pub value: Value<'a>,
    /// Offset of the entry in the file.
    pub offset: usize,
}

/// One tensor's description, checked against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo<'a> {
    /// The tensor name, such as `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Dimensions, innermost (contiguous) first; unused ones are 1.
    pub dimensions: [usize; MAX_DIMENSIONS],
    /// How many of `dimensions` the file gave.
    pub dimension_count: usize,
    /// Element type.
    pub tensor_type: TensorType,
    /// Absolute offset of the data in the file.
    pub offset: usize,
    /// Size of the data in bytes.
    pub size: usize,
}

/// A parsed GGUF file: zero-copy views over `bytes`.
#[derive(Clone, Debug)]
pub struct GgufFile<'a> {
    /// Format version (3).
    pub version: u32,
    /// Data-section alignment.
    pub alignment: u64,
    /// Metadata, in file order.
    pub metadata: Vec<MetadataEntry<'a>>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo<'a>>,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    bytes: &'a [u8],
}

fn read_string<'a>(reader: &mut Reader<'a>) -> Result<&'a str, ModelError> {
    let start = reader.position();
    let length = reader.u64()?;
    let bytes = reader.take(length)?;
    core::str::from_utf8(bytes).map_err(|_| ModelError::new(start, ModelErrorKind::InvalidUtf8))
}

/// Reads one value of `value_type`. `base` is the offset of the reader's buffer in the file.
pub(crate) fn read_value<'a>(
    reader: &mut Reader<'a>,
    value_type: ValueType,
    depth: u32,
    base: usize,
) -> Result<Value<'a>, ModelError> {
    let at = |reader: &Reader<'a>, kind| ModelError::new(base + reader.position(), kind);
    Ok(match value_type {
        ValueType::U8 => Value::U8(reader.u8()?),
        ValueType::I8 => Value::I8(reader.u8()? as i8),
        ValueType::U16 => Value::U16(reader.u16()?),
        ValueType::I16 => Value::I16(reader.u16()? as i16),
        ValueType::U32 => Value::U32(reader.u32()?),
        ValueType::I32 => Value::I32(reader.i32()?),
        ValueType::F32 => Value::F32(reader.f32()?),
        ValueType::Bool => match reader.u8()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(at(reader, ModelErrorKind::InvalidBool(other))),
        },
        ValueType::String => Value::String(read_string(reader)?),
        ValueType::U64 => Value::U64(reader.u64()?),
        ValueType::I64 => Value::I64(reader.u64()? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(reader.u64()?)),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(at(reader, ModelErrorKind::NestingTooDeep));
            }
            let code = reader.u32()?;
            let element_type = ValueType::from_code(code)
                .ok_or_else(|| at(reader, ModelErrorKind::UnknownValueType(code)))?;
            let count = reader.u64()?;
            let fits = count
                .checked_mul(element_type.minimum_size())
                .is_some_and(|size| size <= reader.remaining() as u64);
            if !fits {
                return Err(at(reader, ModelErrorKind::TooLarge { what: "array length", value: count }));
            }
            let start = reader.position();
            for _ in 0..count {
                read_value(reader, element_type, depth + 1, base)?;
            }
            let mut whole = reader.clone();
            whole.seek(start)?;
            let bytes = whole.take((reader.position() - start) as u64)?;
            Value::Array(Array { element_type, count: count as usize, bytes, offset: base + start })
        }
    })
}

impl<'a> GgufFile<'a> {
    /// Parses and validates a whole GGUF file held in `bytes`: every check of a
    /// [`GgufScan`], then every tensor name must be unique.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ModelError> {
        let mut tensors: Vec<TensorInfo<'a>> = Vec::new();
        let scan = GgufScan::run(bytes, &mut |tensor, _| {
            tensors.push(tensor);
            Ok(())
        })?;
        // Validated: the entries are read again as values, for the tools that list them.
        let mut reader = Reader::at(bytes, 16);
        let metadata_count = reader.u64()?;
        let mut metadata = Vec::with_capacity(metadata_count.min(256) as usize);
        for _ in 0..metadata_count {
            let offset = reader.position();
            let key = read_string(&mut reader)?;
            let code = reader.u32()?;
            let value_type = ValueType::from_code(code)
                .ok_or_else(|| reader.error(ModelErrorKind::UnknownValueType(code)))?;
            let value = read_value(&mut reader, value_type, 0, 0)?;
            metadata.push(MetadataEntry { key, value, offset });
        }
        let data_offset = scan.data_offset();
        let mut sorted: Vec<&str> = tensors.iter().map(|tensor| tensor.name).collect();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ModelError::new(
                data_offset,
                ModelErrorKind::DuplicateTensor { name: pair[0].to_string() },
            ));
        }
        Ok(Self { version: 3, alignment: scan.alignment(), metadata, tensors, data_offset, bytes })
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.metadata.iter().find(|entry| entry.key == key).map(|entry| &entry.value)
    }

    /// The entry of a metadata key, with its offset.
    pub fn entry(&self, key: &str) -> Option<&MetadataEntry<'a>> {
        self.metadata.iter().find(|entry| entry.key == key)
    }

    /// A string value, or `None` when absent; an error when present with another type.
    pub fn string(&self, key: &str) -> Result<Option<&'a str>, ModelError> {
        MetadataSource::string(self, key)
    }

    /// A non-negative integer value, or `None` when absent; an error when of another type.
    pub fn unsigned(&self, key: &str) -> Result<Option<u64>, ModelError> {
        MetadataSource::unsigned(self, key)
    }

    /// A float value, or `None` when absent; an error when of another type.
    pub fn float(&self, key: &str) -> Result<Option<f64>, ModelError> {
        MetadataSource::float(self, key)
    }

    /// An array value, or `None` when absent; an error when of another type.
    pub fn array(&self, key: &str) -> Result<Option<Array<'a>>, ModelError> {
        MetadataSource::array(self, key)
    }

    /// A required non-negative integer that fits `usize`.
    pub fn required_usize(&self, key: &str) -> Result<usize, ModelError> {
        MetadataSource::required_usize(self, key)
    }

    /// The view of a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'a>> {
        self.tensors.iter().find(|tensor| tensor.name == name).map(|tensor| self.view(tensor))
    }

    /// The view of a tensor info (whose bounds were checked by `parse`).
    pub fn view(&self, tensor: &TensorInfo<'a>) -> TensorView<'a> {
        let data = self.bytes.get(tensor.offset..tensor.offset + tensor.size).unwrap_or(&[]);
        TensorView {
            name: tensor.name,
            tensor_type: tensor.tensor_type,
            dimensions: tensor.dimensions,
            dimension_count: tensor.dimension_count,
            data,
        }
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Length of the file.
    pub fn file_size(&self) -> usize {
        self.bytes.len()
    }
}

/// Where metadata values are looked up by key: a parsed [`GgufFile`], or the entries a
/// [`GgufScan`] remembered ([`super::scan::ScannedMetadata`]). The typed readers say what a
/// key holds, or that it holds something else.
pub trait MetadataSource<'a> {
    /// The value of `key` and the offset of its entry, when present.
    fn lookup(&self, key: &str) -> Result<Option<(usize, Value<'a>)>, ModelError>;

    /// A value converted by `convert`, or `None` when absent; an error when present with a
    /// type `convert` refuses.
    fn typed<T>(&self, key: &str, convert: impl Fn(&Value<'a>) -> Option<T>) -> Result<Option<T>, ModelError>
    where
        Self: Sized,
    {
        match self.lookup(key)? {
            None => Ok(None),
            Some((offset, value)) => convert(&value)
                .map(Some)
                .ok_or_else(|| ModelError::new(offset, ModelErrorKind::WrongKeyType(key.to_string()))),
        }
    }

    /// A string value, or `None` when absent; an error when present with another type.
    fn string(&self, key: &str) -> Result<Option<&'a str>, ModelError>
    where
        Self: Sized,
    {
        self.typed(key, Value::as_str)
    }

    /// A non-negative integer value, or `None` when absent; an error when of another type.
    fn unsigned(&self, key: &str) -> Result<Option<u64>, ModelError>
    where
        Self: Sized,
    {
        self.typed(key, Value::as_u64)
    }

    /// A float value, or `None` when absent; an error when of another type.
    fn float(&self, key: &str) -> Result<Option<f64>, ModelError>
    where
        Self: Sized,
    {
        self.typed(key, Value::as_f64)
    }

    /// An array value, or `None` when absent; an error when of another type.
    fn array(&self, key: &str) -> Result<Option<Array<'a>>, ModelError>
    where
        Self: Sized,
    {
        self.typed(key, |value| value.as_array().cloned())
    }

    /// A required non-negative integer that fits `usize`.
    fn required_usize(&self, key: &str) -> Result<usize, ModelError>
    where
        Self: Sized,
    {
        let value = self
            .unsigned(key)?
            .ok_or_else(|| ModelError::new(0, ModelErrorKind::MissingKey(key.to_string())))?;
        usize::try_from(value).map_err(|_| ModelError::new(0, ModelErrorKind::WrongKeyType(key.to_string())))
    }

    /// Whether `key` holds the boolean `true`.
    fn is_true(&self, key: &str) -> Result<bool, ModelError>
    where
        Self: Sized,
    {
        Ok(matches!(self.lookup(key)?, Some((_, Value::Bool(true)))))
    }
}

impl<'a> MetadataSource<'a> for GgufFile<'a> {
    fn lookup(&self, key: &str) -> Result<Option<(usize, Value<'a>)>, ModelError> {
        Ok(self.entry(key).map(|entry| (entry.offset, entry.value.clone())))
    }
}

/// Reads and checks one tensor info (its offset still relative to the data section).
pub(crate) fn read_tensor_info<'a>(reader: &mut Reader<'a>) -> Result<TensorInfo<'a>, ModelError> {
    let start = reader.position();
    let name = read_string(reader)?;
    let bad = |kind| ModelError::new(start, kind);
    let dimension_count = reader.u32()? as usize;
    if dimension_count == 0 || dimension_count > MAX_DIMENSIONS {
        return Err(bad(ModelErrorKind::BadDimensions { name: name.to_string() }));
    }
    let mut dimensions = [1usize; MAX_DIMENSIONS];
    let mut elements: u64 = 1;
    for dimension in dimensions.iter_mut().take(dimension_count) {
        let value = reader.u64()?;
        elements = elements
            .checked_mul(value)
            .filter(|_| value > 0)
            .ok_or_else(|| bad(ModelErrorKind::BadDimensions { name: name.to_string() }))?;
        *dimension = usize::try_from(value)
            .map_err(|_| bad(ModelErrorKind::BadDimensions { name: name.to_string() }))?;
    }
    let code = reader.u32()?;
    let tensor_type =
        TensorType::from_code(code).ok_or_else(|| bad(ModelErrorKind::UnsupportedTensorType(code)))?;
    if !dimensions[0].is_multiple_of(tensor_type.block_values()) {
        return Err(bad(ModelErrorKind::NotBlockMultiple { name: name.to_string() }));
    }
    let size = tensor_type
        .bytes_for(elements)
        .and_then(|size| usize::try_from(size).ok())
        .ok_or_else(|| bad(ModelErrorKind::TooLarge { what: "tensor size", value: elements }))?;
    let offset = reader.u64()?;
    let offset = usize::try_from(offset)
        .map_err(|_| bad(ModelErrorKind::TensorOutOfBounds { name: name.to_string() }))?;
    Ok(TensorInfo { name, dimensions, dimension_count, tensor_type, offset, size })
}

/// Human-readable summary of a value (arrays show their type and length).
pub fn describe(value: &Value<'_>) -> String {
    use core::fmt::Write;
    let mut text = String::new();
    let _ = match value {
        Value::String(text_value) => {
            let shortened: String = text_value.chars().take(60).collect();
            write!(text, "{shortened:?}{}", if text_value.chars().count() > 60 { "…" } else { "" })
        }
        Value::Array(array) => write!(text, "[{:?}; {}]", array.element_type, array.count),
        Value::U8(value) => write!(text, "{value}"),
        Value::I8(value) => write!(text, "{value}"),
        Value::U16(value) => write!(text, "{value}"),
        Value::I16(value) => write!(text, "{value}"),
        Value::U32(value) => write!(text, "{value}"),
        Value::I32(value) => write!(text, "{value}"),
        Value::F32(value) => write!(text, "{value}"),
        Value::Bool(value) => write!(text, "{value}"),
        Value::U64(value) => write!(text, "{value}"),
        Value::I64(value) => write!(text, "{value}"),
        Value::F64(value) => write!(text, "{value}"),
    };
    text
}
