//! GGUF validation in bounded steps: the same checks as [`GgufFile::parse`](super::GgufFile),
//! done a budget of bytes at a time, so a model loading in the background never spends more
//! than a few microseconds of a round on them, however large its vocabulary or its tensor
//! table.
//!
//! [`GgufScan::step`] walks the header, then every metadata entry (strings are checked as
//! UTF-8 a piece at a time, arrays an element at a time, arrays of fixed-size numbers skipped
//! whole once their bounds are checked), then every tensor info twice: once for its own
//! fields, once, after the data section's offset is known, for its alignment and bounds. Each
//! valid tensor is handed to the caller, and the entries of the metadata keys a model needs
//! ([`KNOWN_KEYS`]) are remembered by offset, so they are read afterwards without a second walk
//! ([`ScannedMetadata`]).
//!
//! The scan keeps no reference to the file: each step is handed the same bytes again.

use alloc::string::ToString;

use super::error::{ModelError, ModelErrorKind};
use super::gguf::{
    Array, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MetadataSource, TensorInfo, Value, ValueType,
    read_tensor_info, read_value,
};
use super::reader::Reader;

/// Longest tensor name GGUF allows, in bytes.
pub const MAX_TENSOR_NAME_BYTES: u64 = 64;

/// Longest string value of a [`KNOWN_KEYS`] entry that [`ScannedMetadata`] reads back (an
/// architecture or tokenizer model name); a longer one is refused rather than checked again
/// in one piece.
pub const MAX_KNOWN_STRING_BYTES: u64 = 4096;

/// Bytes of tensor info a tensor costs in a step's budget (an info is at most about 120
/// bytes, since its name is at most [`MAX_TENSOR_NAME_BYTES`]).
const TENSOR_INFO_COST: usize = 128;

/// The metadata keys whose entries a scan remembers: the llama hyperparameters and the
/// tokenizer. Only these can be read through [`ScannedMetadata`].
pub const KNOWN_KEYS: [&str; 21] = [
    "general.architecture",
    "general.alignment",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.block_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.vocab_size",
    "llama.context_length",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.dimension_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.padding_token_id",
];

/// Where a remembered metadata entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownEntry {
    /// Offset of the entry (its key) in the file.
    pub entry_offset: usize,
    /// The value's type.
    pub value_type: ValueType,
    /// Offset of the value.
    pub value_start: usize,
    /// Offset just past the value.
    pub value_end: usize,
}

/// One level of the value being walked: elements of `element_type` still to check.
#[derive(Clone, Copy, Debug)]
struct Frame {
    element_type: ValueType,
    left: u64,
}

/// A string whose UTF-8 is being checked a piece at a time.
#[derive(Clone, Copy, Debug)]
struct PendingString {
    /// Offset of its length field (where an error is reported).
    start: usize,
    /// Checked up to here.
    checked: usize,
    /// Its end.
    end: usize,
}

/// The walk of one metadata value (or key string): a stack of arrays being walked and the
/// string being checked.
#[derive(Clone, Copy, Debug)]
struct ValueWalk {
    frames: [Frame; MAX_ARRAY_DEPTH as usize + 1],
    depth: usize,
    string: Option<PendingString>,
}

impl ValueWalk {
    fn idle() -> Self {
        Self {
            frames: [Frame { element_type: ValueType::U8, left: 0 }; MAX_ARRAY_DEPTH as usize + 1],
            depth: 0,
            string: None,
        }
    }

    /// Starts the walk of one value of `value_type`.
    fn begin(&mut self, value_type: ValueType) {
        self.frames[0] = Frame { element_type: value_type, left: 1 };
        self.depth = 1;
        self.string = None;
    }

    /// Walks on for up to about `budget` bytes from `*position`; returns whether the value is
    /// complete (then `*position` is just past it).
    fn step(&mut self, bytes: &[u8], position: &mut usize, budget: &mut usize) -> Result<bool, ModelError> {
        loop {
            if let Some(string) = &mut self.string {
                check_utf8_piece(bytes, string, budget)?;
                if string.checked < string.end {
                    return Ok(false);
                }
                *position = string.end;
                self.string = None;
            }
            if self.depth == 0 {
                return Ok(true);
            }
            if *budget == 0 {
                return Ok(false);
            }
            let level = self.depth - 1;
            let frame = &mut self.frames[level];
            if frame.left == 0 {
                self.depth -= 1;
                continue;
            }
            let element_type = frame.element_type;
            if level > 0 && fixed_size(element_type).is_some() {
                // Numbers in an array: their bytes were bounds-checked with the array.
                let size = fixed_size(element_type).unwrap_or(1) as u64;
                *position += (frame.left * size) as usize;
                frame.left = 0;
                *budget = budget.saturating_sub(1);
                continue;
            }
            frame.left -= 1;
            self.element(bytes, position, budget, element_type, level)?;
        }
    }

    /// Reads the start of one element of `element_type`, the value at nesting `level`.
    fn element(
        &mut self,
        bytes: &[u8],
        position: &mut usize,
        budget: &mut usize,
        element_type: ValueType,
        level: usize,
    ) -> Result<(), ModelError> {
        let mut reader = Reader::at(bytes, *position);
        match element_type {
            ValueType::String => {
                let start = reader.position();
                let length = reader.u64()?;
                reader.take(length)?;
                let checked = start + 8;
                self.string = Some(PendingString { start, checked, end: checked + length as usize });
                *budget = budget.saturating_sub(8);
                return Ok(());
            }
            ValueType::Array => {
                if level as u32 >= MAX_ARRAY_DEPTH {
                    return Err(reader.error(ModelErrorKind::NestingTooDeep));
                }
                let code = reader.u32()?;
                let inner = ValueType::from_code(code)
                    .ok_or_else(|| reader.error(ModelErrorKind::UnknownValueType(code)))?;
                let count = reader.u64()?;
                let fits = count
                    .checked_mul(inner.minimum_size())
                    .is_some_and(|size| size <= reader.remaining() as u64);
                if !fits {
                    return Err(reader.error(ModelErrorKind::TooLarge { what: "array length", value: count }));
                }
                self.frames[self.depth] = Frame { element_type: inner, left: count };
                self.depth += 1;
                *budget = budget.saturating_sub(12);
            }
            scalar => {
                read_value(&mut reader, scalar, 0, 0)?;
                *budget = budget.saturating_sub(fixed_size(scalar).unwrap_or(1));
            }
        }
        *position = reader.position();
        Ok(())
    }
}

/// Bytes of one value of a fixed-size number type (not bool, whose bytes must each be
/// checked).
fn fixed_size(value_type: ValueType) -> Option<usize> {
    match value_type {
        ValueType::U8 | ValueType::I8 => Some(1),
        ValueType::U16 | ValueType::I16 => Some(2),
        ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
        ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
        ValueType::Bool | ValueType::String | ValueType::Array => None,
    }
}

/// Checks up to `budget` more bytes (at least 4, so a character is never cut short) of a
/// string's UTF-8.
fn check_utf8_piece(bytes: &[u8], string: &mut PendingString, budget: &mut usize) -> Result<(), ModelError> {
    let invalid = || ModelError::new(string.start, ModelErrorKind::InvalidUtf8);
    let piece_end = string.end.min(string.checked.saturating_add((*budget).max(4)));
    let piece = bytes.get(string.checked..piece_end).ok_or_else(invalid)?;
    *budget = budget.saturating_sub(piece.len());
    match core::str::from_utf8(piece) {
        Ok(_) => string.checked = piece_end,
        // A character cut by the piece's end: check it again with the next piece.
        Err(error) if error.error_len().is_none() && piece_end < string.end => {
            string.checked += error.valid_up_to();
        }
        Err(_) => return Err(invalid()),
    }
    Ok(())
}

/// Where a scan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Magic, version, counts.
    Header,
    /// Checking the key string of the entry at `entry_offset`.
    Key { entry_offset: usize },
    /// Walking the value of the entry at `entry_offset`, whose key ends at `key_end`.
    Value { entry_offset: usize, key_start: usize, key_end: usize, value_type: ValueType, value_start: usize },
    /// Checking each tensor info's own fields.
    TensorInfos,
    /// Checking each tensor's alignment and bounds, handing the valid ones out.
    TensorBounds,
    /// Every check passed.
    Done,
}

/// A GGUF file being validated in bounded steps (see the module documentation).
#[derive(Clone, Debug)]
pub struct GgufScan {
    stage: Stage,
    position: usize,
    tensor_count: u64,
    metadata_count: u64,
    /// Metadata entries or tensor infos finished in the current stage.
    done: u64,
    alignment: u64,
    walk: ValueWalk,
    known: [Option<KnownEntry>; KNOWN_KEYS.len()],
    /// Offset of the first tensor info.
    tensor_infos: usize,
    data_offset: usize,
}

impl Default for GgufScan {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufScan {
    /// A scan at the start of a file.
    pub fn new() -> Self {
        Self {
            stage: Stage::Header,
            position: 0,
            tensor_count: 0,
            metadata_count: 0,
            done: 0,
            alignment: DEFAULT_ALIGNMENT,
            walk: ValueWalk::idle(),
            known: [None; KNOWN_KEYS.len()],
            tensor_infos: 0,
            data_offset: 0,
        }
    }

    /// Validates about `budget` more bytes of `bytes` (the whole file, the same every step;
    /// at least one item is checked), handing each tensor whose bounds are checked to
    /// `on_tensor` with the data section's offset. Returns whether the whole file is valid.
    pub fn step<'a>(
        &mut self,
        bytes: &'a [u8],
        budget: usize,
        on_tensor: &mut dyn FnMut(TensorInfo<'a>, usize) -> Result<(), ModelError>,
    ) -> Result<bool, ModelError> {
        self.advance(bytes, budget, on_tensor, false)
    }

    /// Like [`GgufScan::step`], stopping once the metadata is walked (before any tensor is
    /// handed out). Returns whether it is.
    pub fn step_metadata(&mut self, bytes: &[u8], budget: usize) -> Result<bool, ModelError> {
        self.advance(bytes, budget, &mut |_, _| Ok(()), true)?;
        Ok(self.metadata_done())
    }

    fn advance<'a>(
        &mut self,
        bytes: &'a [u8],
        budget: usize,
        on_tensor: &mut dyn FnMut(TensorInfo<'a>, usize) -> Result<(), ModelError>,
        metadata_only: bool,
    ) -> Result<bool, ModelError> {
        let mut budget = budget.max(1);
        while budget > 0 {
            if metadata_only && self.metadata_done() {
                break;
            }
            match self.stage {
                Stage::Header => self.header(bytes)?,
                Stage::Key { entry_offset } => self.key(bytes, entry_offset, &mut budget)?,
                Stage::Value { .. } => self.value(bytes, &mut budget)?,
                Stage::TensorInfos => self.tensor_info(bytes, &mut budget)?,
                Stage::TensorBounds => self.tensor_bounds(bytes, &mut budget, on_tensor)?,
                Stage::Done => return Ok(true),
            }
        }
        Ok(self.stage == Stage::Done)
    }

    /// Runs the whole scan at once.
    pub fn run<'a>(
        bytes: &'a [u8],
        on_tensor: &mut dyn FnMut(TensorInfo<'a>, usize) -> Result<(), ModelError>,
    ) -> Result<Self, ModelError> {
        let mut scan = Self::new();
        while !scan.step(bytes, usize::MAX, on_tensor)? {}
        Ok(scan)
    }

    /// Whether every check passed.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Offset of the data section (once done).
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The data-section alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Number of tensors the header declares.
    pub fn tensor_count(&self) -> u64 {
        self.tensor_count
    }

    /// Whether the metadata has been walked (the [`KNOWN_KEYS`] entries are found).
    pub fn metadata_done(&self) -> bool {
        matches!(self.stage, Stage::TensorInfos | Stage::TensorBounds | Stage::Done)
    }

    /// The remembered metadata entries over `bytes` (the scanned file), once
    /// [`GgufScan::metadata_done`].
    pub fn metadata<'a>(&self, bytes: &'a [u8]) -> ScannedMetadata<'a> {
        ScannedMetadata { bytes, known: self.known }
    }

    fn header(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let mut reader = Reader::new(bytes);
        let magic = reader.u32()?;
        if magic != GGUF_MAGIC {
            return Err(ModelError::new(0, ModelErrorKind::BadMagic { found: magic }));
        }
        let version = reader.u32()?;
        if version != 3 {
            return Err(ModelError::new(4, ModelErrorKind::UnsupportedVersion(version)));
        }
        self.tensor_count = reader.u64()?;
        self.metadata_count = reader.u64()?;
        // Each metadata entry takes at least 13 bytes and each tensor info at least 24.
        let remaining = reader.remaining() as u64;
        if self.metadata_count > remaining / 13 {
            return Err(ModelError::new(
                16,
                ModelErrorKind::TooLarge { what: "metadata count", value: self.metadata_count },
            ));
        }
        if self.tensor_count > remaining / 24 {
            return Err(ModelError::new(
                8,
                ModelErrorKind::TooLarge { what: "tensor count", value: self.tensor_count },
            ));
        }
        self.position = reader.position();
        self.next_entry();
        Ok(())
    }

    /// Moves to the next metadata entry, or to the tensor infos after the last.
    fn next_entry(&mut self) {
        if self.done < self.metadata_count {
            self.stage = Stage::Key { entry_offset: self.position };
            self.walk.begin(ValueType::String);
        } else {
            self.done = 0;
            self.tensor_infos = self.position;
            self.stage = Stage::TensorInfos;
        }
    }

    fn key(&mut self, bytes: &[u8], entry_offset: usize, budget: &mut usize) -> Result<(), ModelError> {
        if !self.walk.step(bytes, &mut self.position, budget)? {
            return Ok(());
        }
        let key_start = entry_offset + 8;
        let key_end = self.position;
        let mut reader = Reader::at(bytes, self.position);
        let code = reader.u32()?;
        let value_type =
            ValueType::from_code(code).ok_or_else(|| reader.error(ModelErrorKind::UnknownValueType(code)))?;
        self.position = reader.position();
        self.stage =
            Stage::Value { entry_offset, key_start, key_end, value_type, value_start: self.position };
        self.walk.begin(value_type);
        Ok(())
    }

    fn value(&mut self, bytes: &[u8], budget: &mut usize) -> Result<(), ModelError> {
        let Stage::Value { entry_offset, key_start, key_end, value_type, value_start } = self.stage else {
            return Ok(());
        };
        if !self.walk.step(bytes, &mut self.position, budget)? {
            return Ok(());
        }
        let key = bytes.get(key_start..key_end).unwrap_or(&[]);
        if key == b"general.alignment" {
            let value = read_value(&mut Reader::at(bytes, value_start), value_type, 0, 0)?;
            self.alignment = match value {
                Value::U32(value) if value.is_power_of_two() => value.into(),
                Value::U32(value) => {
                    return Err(ModelError::new(entry_offset, ModelErrorKind::BadAlignment(value.into())));
                }
                _ => {
                    return Err(ModelError::new(
                        entry_offset,
                        ModelErrorKind::WrongKeyType("general.alignment".to_string()),
                    ));
                }
            };
        }
        if let Some(index) = KNOWN_KEYS.iter().position(|known| known.as_bytes() == key)
            && self.known[index].is_none()
        {
            self.known[index] =
                Some(KnownEntry { entry_offset, value_type, value_start, value_end: self.position });
        }
        self.done += 1;
        self.next_entry();
        Ok(())
    }

    fn tensor_info(&mut self, bytes: &[u8], budget: &mut usize) -> Result<(), ModelError> {
        if self.done == self.tensor_count {
            let header_end = self.position as u64;
            self.data_offset = header_end
                .checked_next_multiple_of(self.alignment)
                .filter(|offset| *offset <= bytes.len() as u64)
                .ok_or_else(|| {
                    ModelError::new(
                        self.position,
                        ModelErrorKind::Truncated {
                            needed: self.alignment,
                            available: bytes.len().saturating_sub(self.position),
                        },
                    )
                })? as usize;
            self.done = 0;
            self.position = self.tensor_infos;
            self.stage = Stage::TensorBounds;
            return Ok(());
        }
        let mut reader = Reader::at(bytes, self.position);
        let name_length = Reader::at(bytes, self.position).u64()?;
        if name_length > MAX_TENSOR_NAME_BYTES {
            return Err(
                reader.error(ModelErrorKind::TooLarge { what: "tensor name length", value: name_length })
            );
        }
        read_tensor_info(&mut reader)?;
        self.position = reader.position();
        self.done += 1;
        *budget = budget.saturating_sub(TENSOR_INFO_COST);
        Ok(())
    }

    fn tensor_bounds<'a>(
        &mut self,
        bytes: &'a [u8],
        budget: &mut usize,
        on_tensor: &mut dyn FnMut(TensorInfo<'a>, usize) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        if self.done == self.tensor_count {
            self.stage = Stage::Done;
            return Ok(());
        }
        let mut reader = Reader::at(bytes, self.position);
        let mut tensor = read_tensor_info(&mut reader)?;
        let relative = tensor.offset as u64;
        let name = || tensor.name.to_string();
        if !relative.is_multiple_of(self.alignment) {
            return Err(ModelError::new(self.data_offset, ModelErrorKind::MisalignedTensor { name: name() }));
        }
        let end = (self.data_offset as u64)
            .checked_add(relative)
            .and_then(|start| start.checked_add(tensor.size as u64));
        if end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(ModelError::new(
                self.data_offset,
                ModelErrorKind::TensorOutOfBounds { name: name() },
            ));
        }
        tensor.offset += self.data_offset;
        self.position = reader.position();
        self.done += 1;
        *budget = budget.saturating_sub(TENSOR_INFO_COST);
        on_tensor(tensor, self.data_offset)
    }
}

/// The [`KNOWN_KEYS`] entries of a scanned file, read back by offset: numbers at once,
/// arrays as their element type, count and span without walking them again, strings checked
/// again (only up to [`MAX_KNOWN_STRING_BYTES`]).
#[derive(Clone, Copy, Debug)]
pub struct ScannedMetadata<'a> {
    bytes: &'a [u8],
    known: [Option<KnownEntry>; KNOWN_KEYS.len()],
}

impl<'a> MetadataSource<'a> for ScannedMetadata<'a> {
    fn lookup(&self, key: &str) -> Result<Option<(usize, Value<'a>)>, ModelError> {
        let Some(entry) =
            KNOWN_KEYS.iter().position(|known| *known == key).and_then(|index| self.known[index])
        else {
            return Ok(None);
        };
        let mut reader = Reader::at(self.bytes, entry.value_start);
        let value = match entry.value_type {
            ValueType::Array => {
                let code = reader.u32()?;
                let element_type = ValueType::from_code(code)
                    .ok_or_else(|| reader.error(ModelErrorKind::UnknownValueType(code)))?;
                let count = reader.u64()?;
                let start = reader.position();
                let elements = self.bytes.get(start..entry.value_end).unwrap_or(&[]);
                Value::Array(Array::checked(element_type, count as usize, elements, start))
            }
            ValueType::String => {
                let length = Reader::at(self.bytes, entry.value_start).u64()?;
                if length > MAX_KNOWN_STRING_BYTES {
                    return Err(ModelError::new(
                        entry.entry_offset,
                        ModelErrorKind::TooLarge { what: "metadata string", value: length },
                    ));
                }
                read_value(&mut reader, ValueType::String, 0, 0)?
            }
            scalar => read_value(&mut reader, scalar, 0, 0)?,
        };
        Ok(Some((entry.entry_offset, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorType;
    use crate::model::gguf::GgufFile;
    use crate::model::write::{GgufWriter, WriteValue};
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn file_with(metadata: &[(&str, WriteValue)]) -> Vec<u8> {
        let mut writer = GgufWriter::new();
        for (key, value) in metadata {
            writer.metadata(key, value.clone());
        }
        writer.tensor("a", &[32], TensorType::F32, alloc::vec![0; 128]);
        writer.tensor("b", &[32], TensorType::Q8_0, alloc::vec![0; 34]);
        writer.finish()
    }

    /// A finished scan, the steps it took, and each tensor handed out (name, offset).
    type Scanned = (GgufScan, usize, Vec<(String, usize)>);

    /// Scans `bytes` a `budget` at a time, counting the steps and the tensors handed out.
    fn scan_in_steps(bytes: &[u8], budget: usize) -> Result<Scanned, ModelError> {
        let mut scan = GgufScan::new();
        let mut tensors = Vec::new();
        let mut steps = 0;
        loop {
            steps += 1;
            let done = scan.step(bytes, budget, &mut |tensor, _| {
                tensors.push((tensor.name.to_string(), tensor.offset));
                Ok(())
            })?;
            if done {
                return Ok((scan, steps, tensors));
            }
            assert!(steps < 1_000_000, "the scan makes progress");
        }
    }

    #[test]
    fn long_strings_and_arrays_are_walked_a_piece_at_a_time() {
        let words: Vec<WriteValue> =
            (0..2000).map(|index| WriteValue::String(alloc::format!("wörd{index}"))).collect();
        let bytes = file_with(&[
            ("general.architecture", WriteValue::String("llama".into())),
            ("general.description", WriteValue::String("é".repeat(20_000))),
            ("tokenizer.ggml.tokens", WriteValue::Array(ValueType::String, words)),
            ("numbers", WriteValue::Array(ValueType::U32, (0..50_000).map(WriteValue::U32).collect())),
            (
                "flags",
                WriteValue::Array(
                    ValueType::Bool,
                    (0..3000).map(|index| WriteValue::Bool(index % 3 == 0)).collect(),
                ),
            ),
        ]);
        let file = GgufFile::parse(&bytes).unwrap();
        let (scan, steps, tensors) = scan_in_steps(&bytes, 256).unwrap();
        assert!(steps > 100, "{steps} steps of 256 bytes");
        assert_eq!(scan.data_offset(), file.data_offset);
        let expected: Vec<(String, usize)> =
            file.tensors.iter().map(|tensor| (tensor.name.to_string(), tensor.offset)).collect();
        assert_eq!(tensors, expected);
        // The 200,000-byte array of numbers costs one step: its bytes are not walked.
        let (_, whole_steps, _) = scan_in_steps(&bytes, usize::MAX).unwrap();
        assert_eq!(whole_steps, 1);
        let metadata = scan.metadata(&bytes);
        assert_eq!(metadata.lookup("general.architecture").unwrap().unwrap().1, Value::String("llama"));
        let tokens = metadata.lookup("tokenizer.ggml.tokens").unwrap().unwrap().1;
        let tokens = tokens.as_array().unwrap();
        assert_eq!(tokens.count, 2000);
        assert_eq!(tokens.strings().unwrap().nth(1999), Some("wörd1999"));
        assert_eq!(*tokens, file.array("tokenizer.ggml.tokens").unwrap().unwrap());
        assert_eq!(metadata.lookup("general.description").unwrap(), None, "not a known key");
    }

    #[test]
    fn a_character_cut_by_a_step_is_checked_whole_and_bad_bytes_are_found() {
        // Every budget cuts the 2-, 3- and 4-byte characters at some step.
        let text: String = "aé€🙂".repeat(40);
        let bytes = file_with(&[("text", WriteValue::String(text))]);
        for budget in 1..12 {
            scan_in_steps(&bytes, budget).unwrap();
        }
        let mut bad = bytes.clone();
        let at = bad.windows(3).position(|window| window == "€".as_bytes()).unwrap();
        bad[at + 1] = b'x';
        for budget in [1, 5, usize::MAX] {
            assert_eq!(scan_in_steps(&bad, budget).unwrap_err().kind, ModelErrorKind::InvalidUtf8);
        }
    }

    #[test]
    fn long_tensor_names_and_known_strings_are_refused() {
        let mut writer = GgufWriter::new();
        writer.tensor(&"n".repeat(65), &[32], TensorType::F32, alloc::vec![0; 128]);
        let error = scan_in_steps(&writer.finish(), 64).unwrap_err();
        assert_eq!(error.kind, ModelErrorKind::TooLarge { what: "tensor name length", value: 65 });
        let bytes = file_with(&[("general.architecture", WriteValue::String("x".repeat(5000)))]);
        let (scan, ..) = scan_in_steps(&bytes, 64).unwrap();
        let error = scan.metadata(&bytes).lookup("general.architecture").unwrap_err();
        assert_eq!(error.kind, ModelErrorKind::TooLarge { what: "metadata string", value: 5000 });
    }

    fn agree(bytes: &[u8], budget: usize) {
        let whole = GgufFile::parse(bytes);
        let stepped = scan_in_steps(bytes, budget);
        match (&whole, &stepped) {
            (Ok(file), Ok((scan, _, tensors))) => {
                assert_eq!(file.data_offset, scan.data_offset());
                assert_eq!(file.tensors.len(), tensors.len());
            }
            (Err(whole), Err(stepped)) => assert_eq!(whole, stepped),
            // The whole-file parse also refuses duplicate tensor names, which the scan leaves
            // to its caller.
            (Err(whole), Ok(_)) => {
                assert!(matches!(whole.kind, ModelErrorKind::DuplicateTensor { .. }), "{whole}")
            }
            (Ok(_), Err(stepped)) => panic!("only the scan refused it: {stepped}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn the_scan_agrees_with_the_whole_file_parse(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
            budget in 1usize..300,
        ) {
            let mut bytes = file_with(&[
                ("general.architecture", WriteValue::String("llama".into())),
                ("tokenizer.ggml.tokens", WriteValue::Array(ValueType::String, alloc::vec![WriteValue::String("ab".into()); 5])),
                ("nested", WriteValue::Array(ValueType::Array, alloc::vec![WriteValue::Array(ValueType::I16, alloc::vec![WriteValue::I16(-2); 3]); 2])),
                ("flag", WriteValue::Bool(true)),
            ]);
            let length = bytes.len();
            for (index, value) in edits {
                bytes[index.index(length)] = value;
            }
            if truncate {
                bytes.truncate(cut.index(length));
            }
            agree(&bytes, budget);
        }
    }
}
