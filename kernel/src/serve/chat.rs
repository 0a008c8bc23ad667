//! A served model and one chat turn with it: the prompt in the model's chat template, the
//! settings, outcomes and errors of a turn, and [`answer`], one turn in one go over any
//! [`KvStore`] (the generation itself is [`super::generation`]).

#![forbid(unsafe_code)]

use super::prepare::{ModelLayout, Preparation, prepare_llama2c};
use crate::{
    hil::{Cpus, KvStore},
    infer::{
        InferError, Precision, State, Tokenizer,
        tokenizer::chat::{self, Message, Role},
    },
    model::{Config, Format, ModelError, Weights},
};
use alloc::{string::String, vec::Vec};
use core::{fmt, ops::Deref};

/// Rows of the scratch [`ModelView::scratch`] makes.
pub const SCRATCH_ROWS: usize = 16;

/// A model ready to serve: the loaded file, validated once, and its tables (the tensor index
/// and the tokenizer, see [`super::prepare`]), built once from it. `Bytes` is a weights-pool
/// buffer in the kernel, so a model is two buffers of the weights pool, freed with it; on the
/// host it is a `Vec<u8>`.
pub struct ServedModel<Bytes: Deref<Target = [u8]>> {
    /// The file name it was loaded from.
    pub name: String,
    bytes: Bytes,
    length: usize,
    tables: Bytes,
    layout: ModelLayout,
}

impl ServedModel<Vec<u8>> {
    /// Validates the first `length` bytes of `bytes` (the file; a buffer may be longer)
    /// completely (header, every tensor's offset and size, the tokenizer) and builds its tables.
    /// `tokenizer_file` is llama2.c's `tokenizer.bin`; GGUF files carry their own.
    pub fn new(
        name: &str,
        bytes: Vec<u8>,
        length: usize,
        tokenizer_file: Option<&[u8]>,
    ) -> Result<Self, ModelError> {
        let length = length.min(bytes.len());
        let file = &bytes[..length];
        let mut allocate = |size| Ok::<_, ModelError>(alloc::vec![0; size]);
        let (tables, layout) = if file.starts_with(b"GGUF") {
            Preparation::run(file, &mut allocate)?
        } else {
            prepare_llama2c(file, tokenizer_file, &mut allocate)?
        };
        Ok(Self::from_prepared(name, bytes, length, tables, layout))
    }
}

impl<Bytes: Deref<Target = [u8]>> ServedModel<Bytes> {
    /// A model whose first `length` bytes of `bytes` were validated completely and whose
    /// `tables` were built from them as `layout` says (see [`super::prepare`]): nothing is
    /// parsed here, so making it is cheap.
    pub(crate) fn from_prepared(
        name: &str,
        bytes: Bytes,
        length: usize,
        tables: Bytes,
        layout: ModelLayout,
    ) -> Self {
        let length = length.min(bytes.len());
        Self { name: name.into(), bytes, length, tables, layout }
    }

    /// The weights buffer and the tables buffer, taken apart (to free them one at a time).
    pub(crate) fn into_parts(self) -> (Bytes, Bytes) {
        (self.bytes, self.tables)
    }

    /// Where the model's parts lie in its tables.
    #[cfg(test)]
    pub(crate) fn layout(&self) -> ModelLayout {
        self.layout
    }

    /// Bytes of the model file.
    pub fn size(&self) -> usize {
        self.length
    }

    /// Bytes of the model's tables (tensor index and tokenizer).
    pub fn tables_size(&self) -> usize {
        self.layout.tables_bytes()
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        &self.layout.config
    }

    /// The views a batch works with: the weights from the tensor index (one allocation, the
    /// table of layers) and the tokenizer over its tables. Nothing is parsed.
    pub fn view(&self) -> Result<ModelView<'_>, ModelError> {
        let weights = self.layout.weights(&self.bytes[..self.length], &self.tables)?;
        Ok(ModelView {
            file: ModelWeights { format: self.layout.format, weights },
            tokenizer: self.layout.tokenizer(&self.tables),
        })
    }
}

/// A served model's weights, as a view of its file.
pub struct ModelWeights<'model> {
    /// The file's format.
    pub format: Format,
    /// The weights.
    pub weights: Weights<'model>,
}

impl ModelWeights<'_> {
    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        &self.weights.config
    }
}

/// A served model's weights and tokenizer, for one batch.
pub struct ModelView<'model> {
    /// The weights.
    pub file: ModelWeights<'model>,
    /// The tokenizer.
    pub tokenizer: Tokenizer<&'model [u8]>,
}

impl ModelView<'_> {
    /// Forward-pass scratch for sequences of up to `positions` positions and passes of up to
    /// [`SCRATCH_ROWS`] rows (a prompt fed 16 tokens a pass), at the default precision
    /// (allocated wherever the caller's allocation scope says).
    pub fn scratch(&self, positions: usize) -> State {
        State::for_batch(self.file.config(), Precision::default(), positions, SCRATCH_ROWS)
    }

    /// Whether the model's tokenizer knows the ChatML markers (so chat gets the template).
    pub fn speaks_chatml(&self) -> bool {
        self.file.format == Format::Gguf && self.tokenizer.token_id("<|im_start|>").is_some()
    }

    /// The tokens of a chat turn: the ChatML template around `prompt` when the model knows it,
    /// else the plain text after BOS.
    pub fn prompt_tokens(&self, prompt: &str) -> Vec<u32> {
        let mut tokens = Vec::new();
        if self.speaks_chatml() {
            let text = chat::render(
                &[Message { role: Role::User, content: prompt }],
                Some(chat::DEFAULT_SYSTEM_PROMPT),
            );
            self.tokenizer.encode(&text, &mut tokens);
        } else {
            if self.tokenizer.adds_bos()
                && let Some(bos) = self.tokenizer.bos()
            {
                tokens.push(bos);
            }
            self.tokenizer.encode(prompt, &mut tokens);
        }
        tokens
    }

    /// The tokens of a conversation: the model's ChatML template around all of `messages`
    /// (with the default system prompt when they have none) when the model knows it, else a
    /// plain transcript after BOS, one `role: content` line a message, ending with
    /// `assistant:` for the reply.
    pub fn conversation_tokens(&self, messages: &[Message<'_>]) -> Vec<u32> {
        let mut tokens = Vec::new();
        if self.speaks_chatml() {
            let text = chat::render(messages, Some(chat::DEFAULT_SYSTEM_PROMPT));
            self.tokenizer.encode(&text, &mut tokens);
            return tokens;
        }
        if self.tokenizer.adds_bos()
            && let Some(bos) = self.tokenizer.bos()
        {
            tokens.push(bos);
        }
        let mut text = String::new();
        for message in messages {
            for part in [message.role.name(), ": ", message.content, "\n"] {
                text.push_str(part);
            }
        }
        text.push_str("assistant:");
        self.tokenizer.encode(&text, &mut tokens);
        tokens
    }

    /// The tokens of a request: its conversation when it has one, else its prompt as one
    /// user message.
    pub fn request_tokens(&self, prompt: &str, messages: &[crate::serve::protocol::ChatMessage]) -> Vec<u32> {
        if messages.is_empty() {
            return self.prompt_tokens(prompt);
        }
        let messages: Vec<Message<'_>> = messages.iter().map(|message| message.as_message()).collect();
        self.conversation_tokens(&messages)
    }
}

/// Generation settings a user can change with `/set`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerationSettings {
    /// Sampling temperature (0 is greedy).
    pub temperature: f32,
    /// Nucleus sampling threshold (1 keeps all).
    pub top_p: f32,
    /// Sampler seed.
    pub seed: u64,
    /// Most tokens generated per answer.
    pub max_tokens: usize,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 0.9, seed: 1, max_tokens: 128 }
    }
}

/// How a chat turn went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStatistics {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
    /// Whether the turn stopped because it was cancelled.
    pub cancelled: bool,
}

/// Why a chat turn failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ChatError {
    /// The prompt encodes to no tokens.
    EmptyPrompt,
    /// The prompt does not fit the KV capacity.
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Positions available.
        capacity: usize,
    },
    /// The forward pass failed (e.g. KV memory ran out).
    Inference(InferError),
    /// The sequence needs more KV memory than the whole cache holds, even with every other
    /// sequence preempted.
    DoesNotFit {
        /// Positions the sequence had reached.
        positions: usize,
        /// Positions the whole KV cache holds.
        cache_positions: usize,
    },
}

impl fmt::Display for ChatError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::EmptyPrompt => write!(formatter, "the message has no tokens"),
            ChatError::PromptTooLong { tokens, capacity: 0 } => write!(
                formatter,
                "the message is {tokens} tokens, and the KV cache has no room for any beside this model \
                 (the LLM arena is full: see /mem)"
            ),
            ChatError::PromptTooLong { tokens, capacity } => {
                write!(formatter, "the message is {tokens} tokens but only {capacity} fit")
            }
            ChatError::Inference(error) => write!(formatter, "{error}"),
            ChatError::DoesNotFit { positions, cache_positions } => write!(
                formatter,
                "the conversation needs KV memory for more than {positions} tokens, and the whole KV \
                 cache holds {cache_positions}"
            ),
        }
    }
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced a stop token.
    Stop,
    /// `max_tokens` were generated, or the KV capacity was reached.
    Length,
    /// It was cancelled.
    Cancelled,
}

impl Finish {
    /// The protocol's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// What one [`Generation::step`] produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Prompt tokens were fed (no text), or a token was generated, whose text is given (may
    /// be empty while a UTF-8 character is incomplete).
    Running(String),
    /// The generation ended; the text is whatever the decoder still held.
    Finished(Finish, String),
}

/// Answers `prompt` with `model`, keeping K/V in `kv`, in one go: the single-sequence use of
/// [`Generation`], with scratch of its own. Text goes to `on_text` as it is produced;
/// `cancelled` is asked before every step.
pub fn answer(
    model: &ModelView<'_>,
    kv: &mut dyn KvStore,
    cpus: &dyn Cpus,
    prompt: &str,
    settings: &GenerationSettings,
    mut on_text: impl FnMut(&str),
    cancelled: impl Fn() -> bool,
) -> Result<TurnStatistics, ChatError> {
    let mut generation = super::generation::Generation::new(model, kv, prompt, settings)?;
    let mut state = model.scratch(generation.positions());
    loop {
        if cancelled() {
            generation.cancel();
        }
        match generation.step(cpus, &mut state)? {
            Step::Running(text) => on_text(&text),
            Step::Finished(_, text) => {
                on_text(&text);
                return Ok(generation.statistics());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hil::SingleCpu,
        infer::{
            ContiguousKv,
            synthetic::{SyntheticFormat, SyntheticSpec},
        },
        model::TensorType,
        serve::generation::Generation,
    };

    fn synthetic(format: SyntheticFormat) -> (Vec<u8>, Option<Vec<u8>>) {
        let spec = SyntheticSpec::tiny(256, 3);
        let model = spec.generate(format).unwrap();
        (model.model, model.tokenizer)
    }

    #[test]
    fn answers_stream_text_and_respect_limits() {
        let (bytes, _) = synthetic(SyntheticFormat::Gguf(TensorType::Q8_0));
        let model = ServedModel::new("tiny.gguf", bytes.clone(), bytes.len(), None).unwrap();
        let view = model.view().unwrap();
        let config = view.file.config();
        let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).unwrap();
        let settings = GenerationSettings { max_tokens: 5, ..GenerationSettings::default() };
        let mut text = String::new();
        let statistics = answer(
            &view,
            &mut kv,
            &SingleCpu,
            "hello there",
            &settings,
            |piece| text.push_str(piece),
            || false,
        )
        .unwrap();
        assert!(statistics.prompt_tokens > 0);
        assert!((1..=5).contains(&statistics.generated_tokens));
        assert!(!statistics.cancelled);

        let mut again = String::new();
        answer(&view, &mut kv, &SingleCpu, "hello there", &settings, |piece| again.push_str(piece), || false)
            .unwrap();
        assert_eq!(text, again, "greedy answers repeat");

        let cancelled = answer(&view, &mut kv, &SingleCpu, "hello", &settings, |_| {}, || true).unwrap();
        assert!(cancelled.cancelled);
        assert_eq!(cancelled.generated_tokens, 0);

        let long: String = "word ".repeat(400);
        assert!(matches!(
            answer(&view, &mut kv, &SingleCpu, &long, &settings, |_| {}, || false),
            Err(ChatError::PromptTooLong { .. })
        ));
    }

    #[test]
    fn a_prompt_that_does_not_fit_says_why() {
        let some = ChatError::PromptTooLong { tokens: 85, capacity: 64 }.to_string();
        assert_eq!(some, "the message is 85 tokens but only 64 fit");
        let none = ChatError::PromptTooLong { tokens: 85, capacity: 0 }.to_string();
        assert!(none.contains("no room for any beside this model") && none.contains("/mem"), "{none}");
    }

    #[test]
    fn cached_prefixes_change_nothing_but_the_work() {
        use crate::mm::{
            buffer::tests::host_backed_memory,
            kv::{KvBlockPool, PagedKv, floats_per_block},
            layout::MIB,
        };
        let (bytes, _) = synthetic(SyntheticFormat::Gguf(TensorType::Q8_0));
        let model = ServedModel::new("tiny.gguf", bytes.clone(), bytes.len(), None).unwrap();
        let view = model.view().unwrap();
        let config = *view.file.config();
        let memory = host_backed_memory(64 * MIB);
        let pool = KvBlockPool::new(memory, floats_per_block(16, config.kv_dim()), 4096).unwrap();
        let settings = GenerationSettings { max_tokens: 12, ..GenerationSettings::default() };
        let run = |prompt: &str| {
            let kv = PagedKv::new(&pool, config.layers, config.kv_dim(), 16, 256).unwrap();
            let tokens = view.prompt_tokens(prompt);
            let mut generation =
                Generation::with_cached_prefix(&view, kv, &tokens, &settings, |kv, tokens| {
                    kv.with_prefix(9, tokens)
                })
                .unwrap();
            let mut text = String::new();
            let mut state = view.scratch(generation.positions());
            loop {
                match generation.step(&SingleCpu, &mut state).unwrap() {
                    Step::Running(piece) => text.push_str(&piece),
                    Step::Finished(_, piece) => {
                        text.push_str(&piece);
                        break;
                    }
                }
            }
            let history = generation.history().to_vec();
            generation.kv_mut().publish(9, &history);
            (text, generation.statistics().cached_tokens)
        };
        let (first, first_cached) = run("hello there");
        let (second, second_cached) = run("hello there");
        assert_eq!(first_cached, 0);
        assert!(second_cached >= 16, "the repeated prompt reuses cached blocks ({second_cached})");
        assert_eq!(first, second, "cached K/V gives the same answer");
    }

    #[test]
    fn conversations_use_the_chat_template_or_a_transcript() {
        use crate::serve::protocol::{ChatMessage, MessageRole};
        let (bytes, _) = synthetic(SyntheticFormat::Gguf(TensorType::Q8_0));
        let model = ServedModel::new("tiny.gguf", bytes.clone(), bytes.len(), None).unwrap();
        let view = model.view().unwrap();
        assert!(view.speaks_chatml());
        let user = |content: &str| ChatMessage { role: MessageRole::User, content: content.into() };
        assert_eq!(view.request_tokens("hello", &[]), view.prompt_tokens("hello"));
        assert_eq!(
            view.request_tokens("", &[user("hello")]),
            view.prompt_tokens("hello"),
            "one user message"
        );
        let conversation = [
            ChatMessage { role: MessageRole::System, content: "Be brief".into() },
            user("hi"),
            ChatMessage { role: MessageRole::Assistant, content: "hello".into() },
            user("bye"),
        ];
        let mut expected = Vec::new();
        let messages: Vec<Message<'_>> = conversation.iter().map(ChatMessage::as_message).collect();
        view.tokenizer.encode(&chat::render(&messages, None), &mut expected);
        assert_eq!(
            view.request_tokens("", &conversation),
            expected,
            "the whole conversation, its own system"
        );

        let (bytes, tokenizer) = synthetic(SyntheticFormat::Llama2c);
        let plain = ServedModel::new("tiny.bin", bytes.clone(), bytes.len(), tokenizer.as_deref()).unwrap();
        let view = plain.view().unwrap();
        let mut transcript = Vec::new();
        if let Some(bos) = view.tokenizer.bos().filter(|_| view.tokenizer.adds_bos()) {
            transcript.push(bos);
        }
        view.tokenizer.encode("user: hi\nassistant:", &mut transcript);
        assert_eq!(view.request_tokens("", &[user("hi")]), transcript);
    }

    #[test]
    fn llama2c_needs_its_tokenizer() {
        let (bytes, tokenizer) = synthetic(SyntheticFormat::Llama2c);
        assert!(ServedModel::new("tiny.bin", bytes.clone(), bytes.len(), None).is_err());
        let model = ServedModel::new("tiny.bin", bytes.clone(), bytes.len(), tokenizer.as_deref()).unwrap();
        assert!(!model.view().unwrap().speaks_chatml());
    }

    #[test]
    fn hostile_bytes_are_refused() {
        let (bytes, _) = synthetic(SyntheticFormat::Gguf(TensorType::F32));
        for cut in [0, 3, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(ServedModel::new("cut.gguf", bytes.clone(), cut, None).is_err(), "truncated at {cut}");
        }
        let mut bad_bos = bytes.clone();
        let key = b"tokenizer.ggml.bos_token_id";
        let at = bad_bos.windows(key.len()).position(|window| window == key).unwrap() + key.len() + 4;
        bad_bos[at..at + 4].copy_from_slice(&4_000_000u32.to_le_bytes());
        let error = ServedModel::new("bos.gguf", bad_bos.clone(), bad_bos.len(), None).err().unwrap();
        assert!(alloc::format!("{error}").contains("special token id is past the end"), "{error}");
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] ^= 0xFF;
        assert!(ServedModel::new("magic.gguf", wrong_magic.clone(), wrong_magic.len(), None).is_err());
    }
}
