//! Typed errors of the model parsers: what is wrong, and at which byte offset of the file.

use alloc::string::String;
use core::fmt;

/// A model file could not be parsed or does not describe a usable model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelError {
    /// Byte offset in the file where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub kind: ModelErrorKind,
}

impl ModelError {
    /// An error of `kind` found at `offset`.
    pub fn new(offset: usize, kind: ModelErrorKind) -> Self {
        Self { offset, kind }
    }
}

/// The kinds of [`ModelError`].
#[derive(Clone, Debug, PartialEq)]
pub enum ModelErrorKind {
    /// The file ends before a field of `needed` bytes could be read.
    Truncated {
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        available: usize,
    },
    /// The file does not start with the GGUF magic.
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// A GGUF version this parser does not read.
    UnsupportedVersion(u32),
    /// A count or size does not fit the arithmetic or the file.
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// A metadata value type code that GGUF does not define.
    UnknownValueType(u32),
    /// A boolean that is neither 0 nor 1.
    InvalidBool(u8),
    /// Arrays nested deeper than the parser allows.
    NestingTooDeep,
    /// A tensor type code that is not supported.
    UnsupportedTensorType(u32),
    /// `general.alignment` is zero, not a power of two, or not a u32.
    BadAlignment(u64),
    /// A tensor has more dimensions than GGUF allows, or a zero dimension.
    BadDimensions {
        /// The tensor name.
        name: String,
    },
    /// A tensor's row length is not a multiple of its type's block size.
    NotBlockMultiple {
        /// The tensor name.
        name: String,
    },
    /// A tensor's data offset is not a multiple of the alignment.
    MisalignedTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor's data runs past the end of the file.
    TensorOutOfBounds {
        /// The tensor name.
        name: String,
    },
    /// Two tensors have the same name.
    DuplicateTensor {
        /// The tensor name.
        name: String,
    },
    /// A required metadata key is absent.
    MissingKey(String),
    /// A metadata key holds a value of the wrong type or range.
    WrongKeyType(String),
    /// A required tensor is absent.
    MissingTensor(String),
    /// A tensor has the wrong shape or type for the model.
    WrongTensor {
        /// The tensor name.
        name: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The hyperparameters are inconsistent or unsupported.
    InvalidConfig(&'static str),
    /// The tokenizer data is unusable.
    InvalidTokenizer(&'static str),
}

impl fmt::Display for ModelError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "at byte offset {}: ", self.offset)?;
        match &self.kind {
            ModelErrorKind::Truncated { needed, available } => {
                write!(formatter, "file truncated: needed {needed} bytes, {available} left")
            }
            ModelErrorKind::BadMagic { found } => {
                write!(formatter, "not a GGUF file (magic {found:#010x})")
            }
            ModelErrorKind::UnsupportedVersion(version) => {
                write!(formatter, "unsupported GGUF version {version} (only 3 is read)")
            }
            ModelErrorKind::TooLarge { what, value } => write!(formatter, "{what} {value} is too large"),
            ModelErrorKind::InvalidUtf8 => write!(formatter, "string is not valid UTF-8"),
            ModelErrorKind::UnknownValueType(code) => write!(formatter, "unknown metadata value type {code}"),
            ModelErrorKind::InvalidBool(value) => write!(formatter, "boolean value {value} is not 0 or 1"),
            ModelErrorKind::NestingTooDeep => write!(formatter, "metadata arrays nested too deeply"),
            ModelErrorKind::UnsupportedTensorType(code) => {
                write!(formatter, "tensor type {code} is not supported (F32, F16, Q8_0, Q4_0, Q4_1)")
            }
            ModelErrorKind::BadAlignment(value) => {
                write!(formatter, "alignment {value} is not a non-zero power of two")
            }
            ModelErrorKind::BadDimensions { name } => write!(formatter, "tensor {name:?} has bad dimensions"),
            ModelErrorKind::NotBlockMultiple { name } => {
                write!(formatter, "tensor {name:?}: row length is not a multiple of the block size")
            }
            ModelErrorKind::MisalignedTensor { name } => {
                write!(formatter, "tensor {name:?}: data offset is not aligned")
            }
            ModelErrorKind::TensorOutOfBounds { name } => {
                write!(formatter, "tensor {name:?}: data runs past the end of the file")
            }
            ModelErrorKind::DuplicateTensor { name } => write!(formatter, "tensor {name:?} appears twice"),
            ModelErrorKind::MissingKey(key) => write!(formatter, "metadata key {key:?} is missing"),
            ModelErrorKind::WrongKeyType(key) => {
                write!(formatter, "metadata key {key:?} has the wrong type or an invalid value")
            }
            ModelErrorKind::MissingTensor(name) => write!(formatter, "tensor {name:?} is missing"),
            ModelErrorKind::WrongTensor { name, expected } => {
                write!(formatter, "tensor {name:?} is not {expected}")
            }
            ModelErrorKind::InvalidConfig(reason) => write!(formatter, "invalid model config: {reason}"),
            ModelErrorKind::InvalidTokenizer(reason) => write!(formatter, "invalid tokenizer: {reason}"),
        }
    }
}
