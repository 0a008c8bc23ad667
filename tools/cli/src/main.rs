//! `tessera`: the host CLI over Tessera's inference engine (the same `kernel` code the
//! unikernel runs): inspect, tokenize, logits, generate and gen-model; and the board's clients,
//! console and serve (the OpenAI-compatible gateway).

#![forbid(unsafe_code)]

mod console;
mod load;
mod serve;
mod threads;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use kernel::infer::synthetic::{SyntheticFormat, SyntheticSpec};
use kernel::infer::tokenizer::StreamDecoder;
use kernel::infer::tokenizer::chat::{self, Message, Role};
use kernel::infer::{ContiguousKv, Precision, Sampler, SamplerConfig, Session, State};
use kernel::model::gguf::describe;
use kernel::model::{Format, TensorType};

/// Prompt positions `generate` feeds per forward pass (each weight block is unpacked once for
/// all of them; see docs/BENCHMARKS.md for how the size was chosen).
const PREFILL_CHUNK: usize = 32;

use load::Loaded;
use threads::HostThreads;

/// Tessera's host CLI.
#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Inspect, tokenize, run and generate Tessera models on the host"
)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the format, config, metadata summary and tensor table of a model.
    Inspect {
        /// Model file (GGUF or llama2.c checkpoint).
        model: PathBuf,
        /// llama2.c tokenizer.bin (default: next to the model).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Print the token ids of TEXT, space-separated (no BOS is added).
    Tokenize {
        /// Model file whose tokenizer to use.
        model: PathBuf,
        /// Text to tokenize.
        text: String,
        /// llama2.c tokenizer.bin (default: next to the model).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Feed tokens one per position from 0 and write every position's logits
    /// (little-endian f32, positions × vocab).
    Logits {
        /// Model file.
        model: PathBuf,
        /// Unused for logits; accepted for symmetry with the other commands.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Comma-separated token ids, such as 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// How activations meet quantized weights.
        #[arg(long, value_enum, default_value_t = PrecisionArgument::Int16)]
        precision: PrecisionArgument,
        /// Host threads the matmuls are split across.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Generate text from a prompt, streaming it, then report tokens/s.
    Generate {
        /// Model file.
        model: PathBuf,
        /// llama2.c tokenizer.bin (default: next to the model).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the ChatML chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 256)]
        steps: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling threshold.
        #[arg(long, default_value_t = 0.9)]
        top_p: f32,
        /// Keep only the K most likely tokens (0 keeps all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Repetition penalty (1 is off).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// PRNG seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the generated token ids after the text.
        #[arg(long)]
        print_tokens: bool,
        /// How activations meet quantized weights.
        #[arg(long, value_enum, default_value_t = PrecisionArgument::Int16)]
        precision: PrecisionArgument,
        /// Host threads the matmuls are split across.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Chat with a running Tessera in machine mode, over QEMU's serial socket
    /// (`-serial unix:PATH,server`) or a serial device; each line typed (or each --prompt)
    /// is a request, and the answer streams back.
    Console {
        /// QEMU's serial socket.
        #[arg(long, conflicts_with = "device")]
        socket: Option<PathBuf>,
        /// A serial device set to 115200 8N1 raw (e.g. `stty -F /dev/ttyUSB0 115200 raw -echo`).
        #[arg(long)]
        device: Option<PathBuf>,
        /// Send this message instead of reading lines from standard input (repeatable).
        #[arg(long)]
        prompt: Vec<String>,
        /// Most tokens per answer.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Seconds to wait for each answer to finish.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
    /// Serve the OpenAI HTTP API (and a web chat at /) for one board: a serial device, or a
    /// QEMU booted here.
    Serve(serve::ServeOptions),
    /// Write a deterministic synthetic model (and, for llama2c, OUT's tokenizer next to it).
    GenModel {
        /// Output model file; a llama2.c tokenizer goes to OUT with extension `.tokenizer.bin`.
        out: PathBuf,
        /// PRNG seed.
        #[arg(long)]
        seed: u64,
        /// Residual width.
        #[arg(long, default_value_t = 64)]
        dim: usize,
        /// Feed-forward width (default: 8/3 × dim rounded up to 32).
        #[arg(long)]
        hidden: Option<usize>,
        /// Transformer blocks.
        #[arg(long, default_value_t = 2)]
        layers: usize,
        /// Query heads.
        #[arg(long, default_value_t = 4)]
        heads: usize,
        /// Key/value heads.
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        /// Vocabulary size (at least 259).
        #[arg(long, default_value_t = 512)]
        vocab: usize,
        /// Context length.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Store a separate classifier instead of tying it to the embedding.
        #[arg(long)]
        untied: bool,
        /// File format.
        #[arg(long, value_enum, default_value_t = ModelFormat::Llama2c)]
        format: ModelFormat,
    },
}

/// How activations meet quantized weights.
#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArgument {
    /// f32 activations, weight blocks expanded as read (matches the reference; fastest with AVX2).
    Float,
    /// Activations quantized to 8 bits, integer dot products (llama.cpp-style; changes SmolLM2 answers).
    Int8,
    /// Activations quantized to 16 bits, integer dot products (the default; as the unikernel).
    Int16,
}

impl From<PrecisionArgument> for Precision {
    fn from(argument: PrecisionArgument) -> Self {
        match argument {
            PrecisionArgument::Float => Precision::Float,
            PrecisionArgument::Int8 => Precision::Int8,
            PrecisionArgument::Int16 => Precision::Int16,
        }
    }
}

/// Formats `gen-model` writes.
#[derive(Clone, Copy, ValueEnum)]
enum ModelFormat {
    /// llama2.c checkpoint with tokenizer.bin.
    Llama2c,
    /// GGUF, F32 matrices.
    #[value(name = "gguf-f32")]
    GgufF32,
    /// GGUF, Q8_0 matrices.
    #[value(name = "gguf-q8_0")]
    GgufQ8_0,
    /// GGUF, Q4_0 matrices.
    #[value(name = "gguf-q4_0")]
    GgufQ4_0,
    /// GGUF, Q4_1 matrices.
    #[value(name = "gguf-q4_1")]
    GgufQ4_1,
}

impl From<ModelFormat> for SyntheticFormat {
    fn from(format: ModelFormat) -> Self {
        match format {
            ModelFormat::Llama2c => SyntheticFormat::Llama2c,
            ModelFormat::GgufF32 => SyntheticFormat::Gguf(TensorType::F32),
            ModelFormat::GgufQ8_0 => SyntheticFormat::Gguf(TensorType::Q8_0),
            ModelFormat::GgufQ4_0 => SyntheticFormat::Gguf(TensorType::Q4_0),
            ModelFormat::GgufQ4_1 => SyntheticFormat::Gguf(TensorType::Q4_1),
        }
    }
}

fn main() -> ExitCode {
    match run(Arguments::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tessera: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command: each arm hands its options to the function that does the work.
fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Console { socket, device, prompt, max_tokens, timeout } => converse(
            socket.as_deref(),
            device.as_deref(),
            prompt,
            max_tokens,
            std::time::Duration::from_secs(timeout),
        ),
        Command::Inspect { model, tokenizer } => inspect(&model, tokenizer.as_deref()),
        Command::Tokenize { model, text, tokenizer } => tokenize(&model, tokenizer.as_deref(), &text),
        Command::Logits { model, tokenizer: _, tokens, out, precision, threads } => {
            write_logits(&model, &tokens, &out, precision.into(), threads)
        }
        Command::Generate {
            model,
            tokenizer,
            prompt,
            chat,
            steps,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            print_tokens,
            precision,
            threads,
        } => {
            let sampler = SamplerConfig {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed,
                ..SamplerConfig::default()
            };
            generate(
                &model,
                tokenizer.as_deref(),
                &prompt,
                chat,
                steps,
                sampler,
                print_tokens,
                precision.into(),
                threads,
            )
        }
        Command::Serve(options) => serve::serve(options),
        Command::GenModel { out, seed, dim, hidden, layers, heads, kv_heads, vocab, seq, untied, format } => {
            let hidden_dim = hidden.unwrap_or_else(|| (dim * 8 / 3).next_multiple_of(32));
            let spec = SyntheticSpec {
                dim,
                hidden_dim,
                layers,
                heads,
                kv_heads,
                vocab_size: vocab,
                context_length: seq,
                tied: !untied,
                seed,
            };
            gen_model(&out, &spec, format.into())
        }
    }
}

/// Connects to a running Tessera (QEMU's serial `socket` or a serial `device`) and sends each
/// of `prompts` (or, when there are none, each line of standard input) as a request, printing
/// the answers as they stream back.
fn converse(
    socket: Option<&Path>,
    device: Option<&Path>,
    prompts: Vec<String>,
    max_tokens: usize,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let (reader, writer) = console::connect(socket, device)?;
    let inputs: Box<dyn Iterator<Item = String>> = if prompts.is_empty() {
        Box::new(std::io::stdin().lines().map_while(Result::ok))
    } else {
        Box::new(prompts.into_iter())
    };
    let mut stdout = std::io::stdout();
    console::converse(reader, writer, inputs, max_tokens, &mut stdout, timeout)
}

/// Prints the token ids of `text` under the model's tokenizer, space-separated.
fn tokenize(model: &Path, tokenizer: Option<&Path>, text: &str) -> Result<(), String> {
    let loaded = Loaded::read(model, tokenizer)?;
    let (file, tokenizer) = loaded.parse_with_tokenizer()?;
    drop(file);
    let mut ids = Vec::new();
    tokenizer.encode(text, &mut ids);
    let line: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("{}", line.join(" "));
    Ok(())
}

/// Feeds `tokens` one per position from 0 and writes every position's logits to `out` as
/// little-endian f32.
fn write_logits(
    model: &Path,
    tokens: &[u32],
    out: &Path,
    precision: Precision,
    threads: usize,
) -> Result<(), String> {
    let cpus = HostThreads::new(threads);
    let loaded = Loaded::read(model, None)?;
    let file = loaded.parse()?;
    let weights = &file.weights;
    let config = weights.config;
    let kv =
        ContiguousKv::new(config.layers, config.kv_dim(), config.context_length.min(tokens.len().max(1)))
            .ok_or("KV cache size overflows")?;
    let mut session = Session::new(weights, kv);
    let mut state = State::for_positions(weights, precision, session.positions());
    let mut bytes = Vec::with_capacity(tokens.len() * config.vocab_size * 4);
    for &token in tokens {
        session.feed(&cpus, &mut state, token).map_err(|error| error.to_string())?;
        state.logits().iter().for_each(|value| bytes.extend_from_slice(&value.to_le_bytes()));
    }
    std::fs::write(out, bytes).map_err(|error| format!("{}: {error}", out.display()))
}

/// Generates the model `spec` describes in `format`, writes it to `out` (and a llama2.c
/// tokenizer next to it), and says what it wrote.
fn gen_model(out: &Path, spec: &SyntheticSpec, format: SyntheticFormat) -> Result<(), String> {
    let generated = spec.generate(format)?;
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|error| format!("{}: {error}", path.display()))
    };
    write(out, &generated.model)?;
    println!("wrote {} ({} bytes)", out.display(), generated.model.len());
    if let Some(tokenizer) = generated.tokenizer {
        let path = load::tokenizer_path_for(out);
        write(&path, &tokenizer)?;
        println!("wrote {} ({} bytes)", path.display(), tokenizer.len());
    }
    Ok(())
}

fn inspect(model: &Path, tokenizer: Option<&Path>) -> Result<(), String> {
    let loaded = Loaded::read(model, tokenizer)?;
    let file = loaded.parse()?;
    let config = file.config();
    println!("file      {} ({} bytes)", model.display(), loaded.model_bytes().len());
    println!(
        "format    {}",
        match file.format {
            Format::Gguf => "GGUF v3",
            Format::Llama2c => "llama2.c checkpoint",
        }
    );
    println!(
        "config    dim {} hidden {} layers {} heads {} kv-heads {} head-size {} vocab {} context {} rope-base {} eps {}",
        config.dim,
        config.hidden_dim,
        config.layers,
        config.heads,
        config.kv_heads,
        config.head_dim(),
        config.vocab_size,
        config.context_length,
        config.rope_base,
        config.norm_epsilon
    );
    println!(
        "weights   {} bytes read per token, classifier {}",
        file.weights.bytes_per_token(),
        if file.weights.classifier == file.weights.token_embedding {
            "tied to the embedding"
        } else {
            "separate"
        }
    );
    match loaded.tokenizer_of(&file) {
        Ok(tokenizer) => println!(
            "tokenizer {} tokens, bos {:?}, eos {:?}",
            tokenizer.vocab_size(),
            tokenizer.bos(),
            tokenizer.eos()
        ),
        Err(error) => println!("tokenizer none ({error})"),
    }
    if let Some(gguf) = &file.gguf {
        println!(
            "\nmetadata ({} entries, alignment {}, data at {})",
            gguf.metadata.len(),
            gguf.alignment,
            gguf.data_offset
        );
        for entry in &gguf.metadata {
            println!("  {:<44} {}", entry.key, describe(&entry.value));
        }
        println!("\ntensors ({})", gguf.tensors.len());
        println!("  {:<32} {:<5} {:<18} {:>12} {:>12}", "name", "type", "dimensions", "offset", "bytes");
        for tensor in &gguf.tensors {
            let dimensions: Vec<String> =
                tensor.dimensions[..tensor.dimension_count].iter().map(usize::to_string).collect();
            println!(
                "  {:<32} {:<5} {:<18} {:>12} {:>12}",
                tensor.name,
                tensor.tensor_type.name(),
                dimensions.join(" x "),
                tensor.offset,
                tensor.size
            );
        }
    } else {
        println!("\ntensors (llama2.c layout, all F32)");
        let weights = &file.weights;
        let row = |name: &str, rows: usize, columns: usize, bytes: usize| {
            println!("  {name:<32} F32   {:<18} {bytes:>12}", format!("{columns} x {rows}"));
        };
        row(
            "token_embedding",
            weights.token_embedding.rows,
            weights.token_embedding.columns,
            weights.token_embedding.data.len(),
        );
        for (index, layer) in weights.layers.iter().enumerate() {
            for (name, matrix) in [
                ("query", layer.query),
                ("key", layer.key),
                ("value", layer.value),
                ("output", layer.output),
                ("gate", layer.gate),
                ("down", layer.down),
                ("up", layer.up),
            ] {
                row(&format!("layer {index} {name}"), matrix.rows, matrix.columns, matrix.data.len());
            }
        }
        row("classifier", weights.classifier.rows, weights.classifier.columns, weights.classifier.data.len());
    }
    Ok(())
}

#[expect(clippy::too_many_arguments, reason = "one argument per option of the generate command")]
fn generate(
    model: &Path,
    tokenizer: Option<&Path>,
    prompt: &str,
    chat: bool,
    steps: usize,
    sampler_config: SamplerConfig,
    print_tokens: bool,
    precision: Precision,
    threads: usize,
) -> Result<(), String> {
    let cpus = HostThreads::new(threads);
    let loaded = Loaded::read(model, tokenizer)?;
    let (file, tokenizer) = loaded.parse_with_tokenizer()?;
    let weights = &file.weights;
    let config = weights.config;
    let mut prompt_tokens = Vec::new();
    if chat {
        let text =
            chat::render(&[Message { role: Role::User, content: prompt }], Some(chat::DEFAULT_SYSTEM_PROMPT));
        tokenizer.encode(&text, &mut prompt_tokens);
    } else {
        if tokenizer.adds_bos()
            && let Some(bos) = tokenizer.bos()
        {
            prompt_tokens.push(bos);
        }
        tokenizer.encode(prompt, &mut prompt_tokens);
    }
    if prompt_tokens.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let capacity = config.context_length.min(prompt_tokens.len() + steps);
    let kv = ContiguousKv::new(config.layers, config.kv_dim(), capacity).ok_or("KV cache size overflows")?;
    let mut state = State::for_batch(&config, precision, capacity, PREFILL_CHUNK);
    let mut session = Session::new(weights, kv);
    let mut sampler = Sampler::new(sampler_config);

    let started = Instant::now();
    session.feed_prompt(&cpus, &mut state, &prompt_tokens).map_err(|error| error.to_string())?;
    let prompt_time = started.elapsed();

    let mut decoder = StreamDecoder::new();
    let mut text = String::new();
    let mut generated = Vec::new();
    let mut previous = prompt_tokens.last().copied();
    let mut stdout = std::io::stdout().lock();
    let decode_start = Instant::now();
    let outcome = session.generate(
        &cpus,
        &mut state,
        &[],
        &mut sampler,
        steps,
        |token| tokenizer.is_stop(token),
        |token| {
            generated.push(token);
            if !tokenizer.is_stop(token) {
                text.clear();
                decoder.push(tokenizer.decode(previous, token), &mut text);
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            previous = Some(token);
        },
    );
    let decode_time = decode_start.elapsed();
    text.clear();
    decoder.finish(&mut text);
    let _ = writeln!(stdout, "{text}");
    outcome.map_err(|error| error.to_string())?;
    if print_tokens {
        let ids: Vec<String> = generated.iter().map(u32::to_string).collect();
        let _ = writeln!(stdout, "tokens: {}", ids.join(" "));
    }
    // Each generated token but the last ran one forward pass during decoding.
    let decoded_passes = generated.len().saturating_sub(1).max(1);
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tokens/s); generated: {} tokens in {:.2} s ({:.1} tokens/s)",
        prompt_tokens.len(),
        prompt_time.as_secs_f64(),
        prompt_tokens.len() as f64 / prompt_time.as_secs_f64(),
        generated.len(),
        decode_time.as_secs_f64(),
        decoded_passes as f64 / decode_time.as_secs_f64().max(1e-9),
    );
    eprintln!(
        "kernels: {}, {} activations, {} thread{}",
        kernel::infer::simd::instruction_set().unwrap_or("scalar"),
        match precision {
            Precision::Float => "float",
            Precision::Int8 => "int8",
            Precision::Int16 => "int16",
        },
        threads,
        if threads == 1 { "" } else { "s" }
    );
    Ok(())
}
