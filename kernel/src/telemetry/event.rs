//! Trace events: what happened, on which core and when, in a fixed-size form that the trace ring
//! stores without allocating, and the one-line rendering `/trace` prints.

use core::fmt;

use super::format::{ByteSize, Duration};

/// Bytes a [`ShortName`] holds.
pub const SHORT_NAME_BYTES: usize = 16;

/// A name of up to [`SHORT_NAME_BYTES`] bytes kept inline (a pool, a model, a command), so an
/// event never points at memory that may go away.
///
/// Longer names are cut at the last character boundary that fits; a NUL byte ends the name.
/// Unused bytes are zero, so two names are equal exactly when their text is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShortName {
    bytes: [u8; SHORT_NAME_BYTES],
}

impl ShortName {
    /// The empty name.
    pub const EMPTY: Self = Self { bytes: [0; SHORT_NAME_BYTES] };

    /// `text`, cut to fit.
    pub const fn new(text: &str) -> Self {
        let source = text.as_bytes();
        let mut length = if source.len() < SHORT_NAME_BYTES { source.len() } else { SHORT_NAME_BYTES };
        // Step back over continuation bytes so the cut falls between characters.
        while length < source.len() && length > 0 && source[length] & 0xC0 == 0x80 {
            length -= 1;
        }
        let mut bytes = [0; SHORT_NAME_BYTES];
        let mut index = 0;
        while index < length && source[index] != 0 {
            bytes[index] = source[index];
            index += 1;
        }
        Self { bytes }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        let length = self.bytes.iter().position(|&byte| byte == 0).unwrap_or(SHORT_NAME_BYTES);
        // Built from a `&str` cut at a character boundary, or checked by `from_words`.
        core::str::from_utf8(&self.bytes[..length]).unwrap_or("")
    }

    /// Whether the name is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes[0] == 0
    }

    /// The name as two little-endian words, for the trace ring.
    pub(super) fn to_words(self) -> [u64; 2] {
        let mut low = [0; 8];
        let mut high = [0; 8];
        low.copy_from_slice(&self.bytes[..8]);
        high.copy_from_slice(&self.bytes[8..]);
        [u64::from_le_bytes(low), u64::from_le_bytes(high)]
    }

    /// The name stored by [`ShortName::to_words`], or `None` when the bytes are not UTF-8.
    pub(super) fn from_words(words: [u64; 2]) -> Option<Self> {
        let mut bytes = [0; SHORT_NAME_BYTES];
        bytes[..8].copy_from_slice(&words[0].to_le_bytes());
        bytes[8..].copy_from_slice(&words[1].to_le_bytes());
        let length = bytes.iter().position(|&byte| byte == 0).unwrap_or(SHORT_NAME_BYTES);
        bytes[length..].fill(0);
        core::str::from_utf8(&bytes[..length]).ok()?;
        Some(Self { bytes })
    }
}

impl From<&str> for ShortName {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for ShortName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.pad(self.as_str())
    }
}

impl fmt::Debug for ShortName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), formatter)
    }
}

/// The memory-pressure actions, mildest first, in the order the pressure manager tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PressureLevel {
    /// Cached prefix blocks that no sequence uses were dropped.
    DropCachedPrefixes,
    /// The KV blocks of inactive sequences were compressed to int8.
    CompressInactive,
    /// A sequence was preempted (its blocks released, the request re-queued).
    Preempt,
    /// Model weights that nothing uses (a staged or an old model) were evicted.
    EvictUnusedWeights,
    /// New requests were rejected.
    RejectRequests,
}

impl PressureLevel {
    /// Every level, mildest first.
    pub const ALL: [Self; 5] = [
        Self::DropCachedPrefixes,
        Self::CompressInactive,
        Self::Preempt,
        Self::EvictUnusedWeights,
        Self::RejectRequests,
    ];

    /// Number of levels.
    pub const COUNT: usize = Self::ALL.len();

    /// Position in [`PressureLevel::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::DropCachedPrefixes => 0,
            Self::CompressInactive => 1,
            Self::Preempt => 2,
            Self::EvictUnusedWeights => 3,
            Self::RejectRequests => 4,
        }
    }

    /// A short label for tables.
    pub const fn label(self) -> &'static str {
        match self {
            Self::DropCachedPrefixes => "drop-prefixes",
            Self::CompressInactive => "compress",
            Self::Preempt => "preempt",
            Self::EvictUnusedWeights => "evict-weights",
            Self::RejectRequests => "reject",
        }
    }

    /// What the action did, in words.
    pub const fn description(self) -> &'static str {
        match self {
            Self::DropCachedPrefixes => "dropped cached prefix blocks",
            Self::CompressInactive => "compressed inactive KV to int8",
            Self::Preempt => "preempted a sequence",
            Self::EvictUnusedWeights => "evicted unused model weights",
            Self::RejectRequests => "rejected new requests",
        }
    }
}

/// Why a core was lost (taken out of every later job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreLoss {
    /// It took a CPU exception.
    Exception {
        /// The exception class (ESR_EL1.EC).
        class: u8,
    },
    /// It panicked.
    Panic,
    /// It stopped responding: it had not finished its share long after core 0 finished the
    /// same piece of work.
    Hang,
}

impl CoreLoss {
    /// The cause as a word for the trace ring: the kind in the low byte, the class above it.
    fn to_word(self) -> u64 {
        match self {
            Self::Exception { class } => 1 | u64::from(class) << 8,
            Self::Panic => 2,
            Self::Hang => 3,
        }
    }

    /// The cause stored by [`CoreLoss::to_word`], or `None` for a word no cause encodes to.
    fn from_word(word: u64) -> Option<Self> {
        match (word & 0xFF, word >> 8) {
            (1, class) => Some(Self::Exception { class: u8::try_from(class).ok()? }),
            (2, 0) => Some(Self::Panic),
            (3, 0) => Some(Self::Hang),
            _ => None,
        }
    }
}

impl fmt::Display for CoreLoss {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exception { class } => write!(formatter, "exception class {class:#04x}"),
            Self::Panic => formatter.write_str("panic"),
            Self::Hang => formatter.write_str("stopped responding"),
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An allocation took its pool's slow path (refill, split or reclaim).
    AllocationSlowPath {
        /// The pool.
        pool: ShortName,
        /// Bytes requested.
        bytes: u64,
    },
    /// KV blocks were evicted from the cache.
    KvEviction {
        /// Blocks evicted.
        blocks: u64,
    },
    /// The active model was swapped at a token boundary.
    ModelSwap {
        /// The model that served before.
        from: ShortName,
        /// The model that serves now.
        to: ShortName,
    },
    /// A model load began.
    LoadStarted {
        /// The model file.
        model: ShortName,
    },
    /// A model load finished and the model is ready to serve.
    LoadFinished {
        /// The model file.
        model: ShortName,
        /// Bytes loaded.
        bytes: u64,
    },
    /// A model load failed; the old model keeps serving.
    LoadFailed {
        /// The model file.
        model: ShortName,
    },
    /// A control command was answered later than its deadline.
    DeadlineMiss {
        /// The command.
        command: ShortName,
        /// Time from the end of its line to the answer.
        latency_ns: u64,
    },
    /// An exception was taken and handled.
    Exception {
        /// The exception class.
        class: u8,
    },
    /// A request was admitted to the batch.
    RequestAdmitted {
        /// The request id.
        id: u64,
        /// Prompt tokens.
        tokens: u32,
    },
    /// A request finished.
    RequestFinished {
        /// The request id.
        id: u64,
        /// Tokens generated.
        tokens: u32,
    },
    /// The memory-pressure manager acted.
    PressureAction {
        /// The action taken.
        level: PressureLevel,
    },
    /// A core was lost: no job runs on it again, and the others carry on.
    CoreLost {
        /// The core lost (the event's own core is the one that recorded it).
        core: u32,
        /// Why.
        cause: CoreLoss,
    },
}

impl EventKind {
    /// A short label of at most 11 characters, the event's column in `/trace`.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::AllocationSlowPath { .. } => "alloc-slow",
            Self::KvEviction { .. } => "kv-evict",
            Self::ModelSwap { .. } => "swap",
            Self::LoadStarted { .. } => "load",
            Self::LoadFinished { .. } => "loaded",
            Self::LoadFailed { .. } => "load-failed",
            Self::DeadlineMiss { .. } => "deadline",
            Self::Exception { .. } => "exception",
            Self::RequestAdmitted { .. } => "admit",
            Self::RequestFinished { .. } => "finish",
            Self::PressureAction { .. } => "pressure",
            Self::CoreLost { .. } => "core-lost",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::AllocationSlowPath { pool, bytes } => write!(formatter, "{pool} {}", ByteSize(bytes)),
            Self::KvEviction { blocks: 1 } => write!(formatter, "1 block"),
            Self::KvEviction { blocks } => write!(formatter, "{blocks} blocks"),
            Self::ModelSwap { from, to } => write!(formatter, "{from} -> {to}"),
            Self::LoadStarted { model } | Self::LoadFailed { model } => write!(formatter, "{model}"),
            Self::LoadFinished { model, bytes } => write!(formatter, "{model} ({})", ByteSize(bytes)),
            Self::DeadlineMiss { command, latency_ns } => {
                write!(formatter, "{command} answered in {}", Duration(latency_ns))
            }
            Self::Exception { class } => write!(formatter, "class {class:#04x}"),
            Self::RequestAdmitted { id, tokens } => write!(formatter, "request {id}, {tokens} prompt tokens"),
            Self::RequestFinished { id, tokens } => write!(formatter, "request {id}, {tokens} tokens"),
            Self::PressureAction { level } => formatter.write_str(level.description()),
            Self::CoreLost { core, cause } => write!(formatter, "core {core}: {cause}"),
        }
    }
}

/// One entry of the trace ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// When, in nanoseconds since boot.
    pub timestamp_ns: u64,
    /// The core that recorded it (stored in 24 bits).
    pub core: u32,
    /// What happened.
    pub kind: EventKind,
}

/// Words one encoded event takes in the trace ring.
pub(super) const EVENT_WORDS: usize = 6;

/// Largest core number an event keeps; larger numbers are stored as this.
const MAX_CORE: u32 = (1 << 24) - 1;

impl TraceEvent {
    /// An event of `kind` on `core` at `timestamp_ns`.
    pub const fn new(timestamp_ns: u64, core: u32, kind: EventKind) -> Self {
        Self { timestamp_ns, core, kind }
    }

    /// The event as words: the timestamp; the kind's tag, the core and a 32-bit field; then up
    /// to four payload words.
    pub(super) fn encode(&self) -> [u64; EVENT_WORDS] {
        let mut words = [0; EVENT_WORDS];
        words[0] = self.timestamp_ns;
        let (tag, small): (u64, u32) = match self.kind {
            EventKind::AllocationSlowPath { pool, bytes } => {
                words[2..4].copy_from_slice(&pool.to_words());
                words[4] = bytes;
                (1, 0)
            }
            EventKind::KvEviction { blocks } => {
                words[2] = blocks;
                (2, 0)
            }
            EventKind::ModelSwap { from, to } => {
                words[2..4].copy_from_slice(&from.to_words());
                words[4..6].copy_from_slice(&to.to_words());
                (3, 0)
            }
            EventKind::LoadStarted { model } => {
                words[2..4].copy_from_slice(&model.to_words());
                (4, 0)
            }
            EventKind::LoadFinished { model, bytes } => {
                words[2..4].copy_from_slice(&model.to_words());
                words[4] = bytes;
                (5, 0)
            }
            EventKind::LoadFailed { model } => {
                words[2..4].copy_from_slice(&model.to_words());
                (6, 0)
            }
            EventKind::DeadlineMiss { command, latency_ns } => {
                words[2..4].copy_from_slice(&command.to_words());
                words[4] = latency_ns;
                (7, 0)
            }
            EventKind::Exception { class } => (8, u32::from(class)),
            EventKind::RequestAdmitted { id, tokens } => {
                words[2] = id;
                (9, tokens)
            }
            EventKind::RequestFinished { id, tokens } => {
                words[2] = id;
                (10, tokens)
            }
            EventKind::PressureAction { level } => (11, level.index() as u32),
            EventKind::CoreLost { core, cause } => {
                words[2] = cause.to_word();
                (12, core)
            }
        };
        words[1] = tag | u64::from(self.core.min(MAX_CORE)) << 8 | u64::from(small) << 32;
        words
    }

    /// The event stored by [`TraceEvent::encode`], or `None` for words no event encodes to.
    pub(super) fn decode(words: &[u64; EVENT_WORDS]) -> Option<Self> {
        let tag = words[1] & 0xFF;
        let core = ((words[1] >> 8) & u64::from(MAX_CORE)) as u32;
        let small = (words[1] >> 32) as u32;
        let name = |first: usize| ShortName::from_words([words[first], words[first + 1]]);
        let kind = match tag {
            1 => EventKind::AllocationSlowPath { pool: name(2)?, bytes: words[4] },
            2 => EventKind::KvEviction { blocks: words[2] },
            3 => EventKind::ModelSwap { from: name(2)?, to: name(4)? },
            4 => EventKind::LoadStarted { model: name(2)? },
            5 => EventKind::LoadFinished { model: name(2)?, bytes: words[4] },
            6 => EventKind::LoadFailed { model: name(2)? },
            7 => EventKind::DeadlineMiss { command: name(2)?, latency_ns: words[4] },
            8 => EventKind::Exception { class: u8::try_from(small).ok()? },
            9 => EventKind::RequestAdmitted { id: words[2], tokens: small },
            10 => EventKind::RequestFinished { id: words[2], tokens: small },
            11 => EventKind::PressureAction { level: *PressureLevel::ALL.get(small as usize)? },
            12 => EventKind::CoreLost { core: small, cause: CoreLoss::from_word(words[2])? },
            _ => return None,
        };
        Some(Self { timestamp_ns: words[0], core, kind })
    }
}

impl fmt::Display for TraceEvent {
    /// One line: `  12.345678 s  core 0  swap        smollm2 -> tiny`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.timestamp_ns / 1_000_000_000;
        let microseconds = self.timestamp_ns % 1_000_000_000 / 1000;
        write!(
            formatter,
            "{seconds:>4}.{microseconds:06} s  core {}  {:<11} {}",
            self.core,
            self.kind.label(),
            self.kind
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn short_names_cut_at_character_boundaries() {
        assert_eq!(ShortName::new("smollm2").as_str(), "smollm2");
        assert_eq!(ShortName::new("smollm2-135m-instruct-q8_0").as_str(), "smollm2-135m-ins");
        // 15 ASCII bytes then a two-byte character: the character does not fit and is dropped.
        assert_eq!(ShortName::new("abcdefghijklmnoé").as_str(), "abcdefghijklmno");
        assert_eq!(ShortName::new("ab\0cd").as_str(), "ab");
        assert!(ShortName::new("").is_empty());
        assert_eq!(ShortName::new("tiny"), ShortName::from("tiny"));
        assert_ne!(ShortName::new("tiny"), ShortName::new("tin"));
    }

    #[test]
    fn events_render_as_one_aligned_line() {
        let swap = EventKind::ModelSwap { from: ShortName::new("smollm2"), to: ShortName::new("tiny") };
        assert_eq!(
            TraceEvent::new(12_345_678_901, 0, swap).to_string(),
            "  12.345678 s  core 0  swap        smollm2 -> tiny"
        );
        let cases = [
            (
                EventKind::AllocationSlowPath { pool: "activations".into(), bytes: 4096 },
                "activations 4.0 KiB",
            ),
            (EventKind::KvEviction { blocks: 1 }, "1 block"),
            (EventKind::KvEviction { blocks: 12 }, "12 blocks"),
            (EventKind::LoadStarted { model: "tiny".into() }, "tiny"),
            (EventKind::LoadFinished { model: "tiny".into(), bytes: 3 << 20 }, "tiny (3.0 MiB)"),
            (EventKind::LoadFailed { model: "tiny".into() }, "tiny"),
            (
                EventKind::DeadlineMiss { command: "stats".into(), latency_ns: 12_345_678 },
                "stats answered in 12.3 ms",
            ),
            (EventKind::Exception { class: 0x25 }, "class 0x25"),
            (EventKind::RequestAdmitted { id: 7, tokens: 12 }, "request 7, 12 prompt tokens"),
            (EventKind::RequestFinished { id: 7, tokens: 40 }, "request 7, 40 tokens"),
            (EventKind::PressureAction { level: PressureLevel::Preempt }, "preempted a sequence"),
            (
                EventKind::CoreLost { core: 2, cause: CoreLoss::Exception { class: 0x25 } },
                "core 2: exception class 0x25",
            ),
            (EventKind::CoreLost { core: 3, cause: CoreLoss::Panic }, "core 3: panic"),
            (EventKind::CoreLost { core: 1, cause: CoreLoss::Hang }, "core 1: stopped responding"),
        ];
        for (kind, details) in cases {
            let line = TraceEvent::new(1_500_000, 3, kind).to_string();
            let expected = alloc::format!("   0.001500 s  core 3  {:<11} {details}", kind.label());
            assert_eq!(line, expected);
            assert!(kind.label().len() <= 11);
        }
    }

    #[test]
    fn pressure_levels_are_indexed_in_order() {
        for (position, level) in PressureLevel::ALL.iter().enumerate() {
            assert_eq!(level.index(), position);
        }
    }

    #[test]
    fn foreign_words_do_not_decode() {
        assert_eq!(TraceEvent::decode(&[0; EVENT_WORDS]), None, "tag 0 is no event");
        assert_eq!(TraceEvent::decode(&[0, 13, 0, 0, 0, 0]), None, "unknown tag");
        assert_eq!(TraceEvent::decode(&[0, 12, 9, 0, 0, 0]), None, "unknown cause of a lost core");
        assert_eq!(TraceEvent::decode(&[0, 12, 1 | 256 << 8, 0, 0, 0]), None, "cause class beyond a byte");
        assert_eq!(TraceEvent::decode(&[0, 12, 2 | 1 << 8, 0, 0, 0]), None, "a panic carries no class");
        assert_eq!(TraceEvent::decode(&[0, 11 | 9 << 32, 0, 0, 0, 0]), None, "unknown pressure level");
        assert_eq!(TraceEvent::decode(&[0, 8 | 256 << 32, 0, 0, 0, 0]), None, "class beyond a byte");
        assert_eq!(TraceEvent::decode(&[0, 4, 0xFF, 0, 0, 0]), None, "name that is not UTF-8");
    }

    fn short_name() -> impl Strategy<Value = ShortName> {
        "[a-z0-9_.é-]{0,20}".prop_map(|text| ShortName::new(&text))
    }

    fn core_loss() -> impl Strategy<Value = CoreLoss> {
        prop_oneof![
            any::<u8>().prop_map(|class| CoreLoss::Exception { class }),
            Just(CoreLoss::Panic),
            Just(CoreLoss::Hang),
        ]
    }

    fn event_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (short_name(), any::<u64>())
                .prop_map(|(pool, bytes)| EventKind::AllocationSlowPath { pool, bytes }),
            any::<u64>().prop_map(|blocks| EventKind::KvEviction { blocks }),
            (short_name(), short_name()).prop_map(|(from, to)| EventKind::ModelSwap { from, to }),
            short_name().prop_map(|model| EventKind::LoadStarted { model }),
            (short_name(), any::<u64>()).prop_map(|(model, bytes)| EventKind::LoadFinished { model, bytes }),
            short_name().prop_map(|model| EventKind::LoadFailed { model }),
            (short_name(), any::<u64>())
                .prop_map(|(command, latency_ns)| EventKind::DeadlineMiss { command, latency_ns }),
            any::<u8>().prop_map(|class| EventKind::Exception { class }),
            (any::<u64>(), any::<u32>()).prop_map(|(id, tokens)| EventKind::RequestAdmitted { id, tokens }),
            (any::<u64>(), any::<u32>()).prop_map(|(id, tokens)| EventKind::RequestFinished { id, tokens }),
            prop::sample::select(PressureLevel::ALL.to_vec())
                .prop_map(|level| EventKind::PressureAction { level }),
            (any::<u32>(), core_loss()).prop_map(|(core, cause)| EventKind::CoreLost { core, cause }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn every_event_survives_encoding(timestamp_ns in any::<u64>(), core in 0..=MAX_CORE, kind in event_kind()) {
            let event = TraceEvent::new(timestamp_ns, core, kind);
            prop_assert_eq!(TraceEvent::decode(&event.encode()), Some(event));
        }

        #[test]
        fn short_names_keep_a_prefix_that_fits(text in "\\PC{0,24}") {
            let name = ShortName::new(&text);
            prop_assert!(name.as_str().len() <= SHORT_NAME_BYTES);
            prop_assert!(text.starts_with(name.as_str()));
            if text.len() <= SHORT_NAME_BYTES && !text.contains('\0') {
                prop_assert_eq!(name.as_str(), text.as_str());
            } else {
                prop_assert!(name.as_str().len() > SHORT_NAME_BYTES - 4, "only a partial character is cut");
            }
            prop_assert_eq!(ShortName::from_words(name.to_words()), Some(name));
        }
    }
}
