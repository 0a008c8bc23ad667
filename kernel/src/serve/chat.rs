//! A served model and one chat turn with it: the prompt in the model's chat template, the
//! generation loop over any [`KvStore`], and text streamed as whole UTF-8 characters.

#![forbid(unsafe_code)]

use crate::{
    hil::{Cpus, KvStore},
    infer::{
        InferError, Sampler, SamplerConfig, Session, Tokenizer,
        tokenizer::{
            StreamDecoder,
            chat::{self, Message, Role},
        },
    },
    model::{Format, ModelError, ModelErrorKind, ModelFile},
};
use alloc::{string::String, vec::Vec};
use core::{fmt, ops::Deref};

/// A model ready to serve: the loaded bytes (validated once), and the tokenizer built from
/// them. `Bytes` is a weights-pool buffer in the kernel and a `Vec<u8>` on the host.
pub struct ServedModel<Bytes: Deref<Target = [u8]>> {
    /// The file name it was loaded from.
    pub name: String,
    bytes: Bytes,
    length: usize,
    tokenizer: Tokenizer,
}

impl<Bytes: Deref<Target = [u8]>> ServedModel<Bytes> {
    /// Validates the first `length` bytes of `bytes` (the file; a pool buffer may be longer)
    /// completely (header, every tensor's offset and size, the tokenizer) and builds the
    /// tokenizer. `tokenizer_file` is llama2.c's `tokenizer.bin`; GGUF files carry their own.
    pub fn new(
        name: &str,
        bytes: Bytes,
        length: usize,
        tokenizer_file: Option<&[u8]>,
    ) -> Result<Self, ModelError> {
        let length = length.min(bytes.len());
        let file = ModelFile::parse(&bytes[..length])?;
        let tokenizer = match (&file.gguf, tokenizer_file) {
            (Some(gguf), _) => Tokenizer::from_gguf(gguf)?,
            (None, Some(tokenizer)) => Tokenizer::from_llama2c(tokenizer, file.config().vocab_size)?,
            (None, None) => {
                return Err(ModelError::new(
                    0,
                    ModelErrorKind::InvalidTokenizer("llama2.c models need tokenizer.bin"),
                ));
            }
        };
        drop(file);
        Ok(Self { name: name.into(), bytes, length, tokenizer })
    }

    /// Bytes of the model file.
    pub fn size(&self) -> usize {
        self.length
    }

    /// The parsed views over the bytes (cheap: the header and tensor table only).
    pub fn view(&self) -> Result<ModelView<'_>, ModelError> {
        Ok(ModelView { file: ModelFile::parse(&self.bytes[..self.length])?, tokenizer: &self.tokenizer })
    }
}

/// A served model's parsed file and tokenizer, for one turn.
pub struct ModelView<'model> {
    /// The parsed file.
    pub file: ModelFile<'model>,
    /// The tokenizer.
    pub tokenizer: &'model Tokenizer,
}

impl ModelView<'_> {
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
}

impl fmt::Display for ChatError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::EmptyPrompt => write!(formatter, "the message has no tokens"),
            ChatError::PromptTooLong { tokens, capacity } => {
                write!(formatter, "the message is {tokens} tokens but only {capacity} fit")
            }
            ChatError::Inference(error) => write!(formatter, "{error}"),
        }
    }
}

/// Answers `prompt` with `model`, keeping K/V in `kv`: feeds the prompt, then samples up to
/// `settings.max_tokens` tokens, handing the text to `on_text` as it is produced. `cancelled`
/// is asked before every token and stops the turn early.
pub fn answer(
    model: &ModelView<'_>,
    kv: &mut dyn KvStore,
    cpus: &dyn Cpus,
    prompt: &str,
    settings: &GenerationSettings,
    mut on_text: impl FnMut(&str),
    cancelled: impl Fn() -> bool,
) -> Result<TurnStatistics, ChatError> {
    let tokens = model.prompt_tokens(prompt);
    if tokens.is_empty() {
        return Err(ChatError::EmptyPrompt);
    }
    let capacity = kv.capacity().min(model.file.config().context_length);
    if tokens.len() >= capacity {
        return Err(ChatError::PromptTooLong { tokens: tokens.len(), capacity });
    }
    let weights = &model.file.weights;
    let mut session = Session::new(weights, &mut *kv);
    let config = SamplerConfig {
        temperature: settings.temperature,
        top_p: settings.top_p,
        seed: settings.seed,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(config, weights.config.vocab_size);
    let mut statistics = TurnStatistics { prompt_tokens: tokens.len(), ..TurnStatistics::default() };
    for &token in &tokens {
        if cancelled() {
            statistics.cancelled = true;
            return Ok(statistics);
        }
        session.feed(cpus, token).map_err(ChatError::Inference)?;
    }
    let mut decoder = StreamDecoder::new();
    let mut text = String::new();
    let mut previous = tokens.last().copied();
    let result = session.generate(
        cpus,
        &[],
        &mut sampler,
        settings.max_tokens,
        |token| model.tokenizer.is_stop(token) || cancelled(),
        |token| {
            statistics.generated_tokens += 1;
            if !model.tokenizer.is_stop(token) {
                text.clear();
                decoder.push(&model.tokenizer.decode(previous, token), &mut text);
                on_text(&text);
            }
            previous = Some(token);
        },
    );
    text.clear();
    decoder.finish(&mut text);
    on_text(&text);
    statistics.cancelled = cancelled();
    result.map(|_| statistics).map_err(ChatError::Inference)
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
    };

    fn synthetic(format: SyntheticFormat) -> (Vec<u8>, Option<Vec<u8>>) {
        let spec = SyntheticSpec {
            dim: 64,
            hidden_dim: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab_size: 320,
            context_length: 256,
            tied: true,
            seed: 3,
        };
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
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] ^= 0xFF;
        assert!(ServedModel::new("magic.gguf", wrong_magic.clone(), wrong_magic.len(), None).is_err());
    }
}
