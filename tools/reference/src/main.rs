//! `reference-check`: compares Tessera's inference engine with the independent Python
//! references beside it, and exits non-zero on any mismatch.
//!
//! - Logits: synthetic llama2.c and GGUF models (multi-head, grouped-query and multi-query,
//!   tied and untied, F32 and quantized) run a fixed token stream through the engine and
//!   through `reference.py` (numpy, float64); every logit of every position must agree
//!   within 1e-4, fed one token per pass and in batched passes of every shape in
//!   `PASS_SHAPES` (prompt chunks of T tokens, B sequences per pass, chunks beside decode
//!   rows).
//! - Tokenizer: a varied corpus is tokenized by the engine's byte-level BPE and by
//!   `tokenizer_reference.py` (the PyPI `tokenizers` package built from the same GGUF
//!   vocabulary and merges); the ids must be identical. Runs on a synthetic vocabulary and,
//!   when present, on SmolLM2's.
//!
//! Usage: `reference-check [--python PYTHON] [--work DIR] [--smollm2 MODEL]`. Needs numpy,
//! gguf and tokenizers (tools/reference/requirements.txt). Ends with `N passed, M failed`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kernel::hil::SingleCpu;
use kernel::infer::forward::{PassSequence, forward_batch};
use kernel::infer::synthetic::{SyntheticFormat, SyntheticSpec};
use kernel::infer::{ContiguousKv, Precision, Session, State, Tokenizer};
use kernel::model::{GgufFile, ModelFile, TensorType};

/// Largest difference allowed between an engine logit and the reference's.
const TOLERANCE: f32 = 1e-4;

/// Texts the tokenizers must agree on.
const CORPUS: &[&str] = &[
    "Hello, world!",
    "What is the capital of France?",
    "The year 2024 had 366 days; π ≈ 3.14159.",
    "I'm sure they'll say we've done it, didn't they? You'd think so.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs, new\nlines\n\n\nand\r\nwindows line ends",
    "multiple     spaces    between      words",
    "Ünïcödé façade naïve café résumé Ångström",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文文本",
    "مرحبا بالعالم",
    "हिन्दी में लिखा गया वाक्य",
    "emoji 🙂🙃 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 skin 👍🏽",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special<|im_end|>glued<|endoftext|>tokens",
    "email: someone@example.com, url: https://example.org/path?q=1&r=2#frag",
    "fn main() { println!(\"{}\", 1 + 2 * 3); }",
    "numbers: 0 1 12 123 1234 12345 3.5e-7 -42 +7 1,000,000 ½ ² Ⅻ",
    "punctuation!!! ??? ... --- ((( ))) [[[ ]]] {{{ }}} \"quotes\" 'single' `back`",
    "MiXeD CaSe WoRdS and ALLCAPS and lowercase",
    "control\u{4}char and bell\u{7} and nul\u{0}",
    "",
    " ",
    "\n",
    "a",
    "Once upon a time, there was a little girl who lived in a village near the forest.",
];

/// What `reference-check --help` prints.
const USAGE: &str = "\
reference-check: the inference engine against independent references: every position's logits
against the numpy forward pass on synthetic models (1e-4), BPE token ids against the
`tokenizers` package (tools/reference/check.sh, `make test-reference`, runs it)

usage: reference-check [--python PYTHON] [--work DIR] [--smollm2 MODEL]

  --python PYTHON   the interpreter with numpy, gguf and tokenizers (default python3)
  --work DIR        where the synthetic models and outputs go (default build/reference)
  --smollm2 MODEL   SmolLM2's GGUF, whose vocabulary is checked too (it must exist; without
                    the option, build/models/SmolLM2-135M-Instruct.Q4_1.gguf if it exists)
";

fn main() {
    if std::env::args().skip(1).any(|argument| argument == "-h" || argument == "--help") {
        print!("{USAGE}");
        return;
    }
    let mut python = String::from("python3");
    let mut work = PathBuf::from("build/reference");
    let mut smollm2 = Some(PathBuf::from("build/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match (argument.as_str(), arguments.next()) {
            ("--python", Some(value)) => python = value,
            ("--work", Some(value)) => work = value.into(),
            ("--smollm2", Some(value)) => {
                let path = PathBuf::from(value);
                if !path.exists() {
                    fail_setup(&format!("--smollm2 {}: no such file", path.display()));
                }
                smollm2 = Some(path);
            }
            _ => {
                eprint!("error: {argument} is not an option this takes, or lacks its value\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&work)
        .unwrap_or_else(|error| fail_setup(&format!("{}: {error}", work.display())));
    let mut checks = Checks { python, scripts: scripts.to_path_buf(), work, passed: 0, failed: 0 };

    for (name, spec, format) in logit_cases() {
        checks.logits(name, &spec, format);
    }
    let synthetic = SyntheticSpec { vocab_size: 600, ..base_spec() };
    let bytes =
        synthetic.generate(SyntheticFormat::Gguf(TensorType::F32)).unwrap_or_else(|error| fail_setup(error));
    let path = checks.work.join("tokenizer-synthetic.gguf");
    write(&path, &bytes.model);
    checks.tokenizer("synthetic vocabulary", &path);
    match smollm2.filter(|path| path.exists()) {
        Some(path) => checks.tokenizer("SmolLM2 vocabulary", &path),
        None => println!("skipped: SmolLM2 tokenizer (model absent; run tools/reference/fetch_smollm2.sh)"),
    }
    println!("reference-check: {} passed, {} failed", checks.passed, checks.failed);
    std::process::exit(i32::from(checks.failed > 0));
}

fn base_spec() -> SyntheticSpec {
    SyntheticSpec {
        dim: 64,
        hidden_dim: 160,
        layers: 2,
        heads: 4,
        kv_heads: 4,
        vocab_size: 320,
        context_length: 32,
        tied: true,
        seed: 1,
    }
}

fn logit_cases() -> Vec<(&'static str, SyntheticSpec, SyntheticFormat)> {
    let base = base_spec();
    let gqa = SyntheticSpec { heads: 8, kv_heads: 2, tied: false, seed: 2, ..base };
    let mqa = SyntheticSpec { heads: 4, kv_heads: 1, layers: 3, seed: 3, ..base };
    let f32_gguf = SyntheticFormat::Gguf(TensorType::F32);
    vec![
        ("llama2c multi-head tied", base, SyntheticFormat::Llama2c),
        ("llama2c grouped-query untied", gqa, SyntheticFormat::Llama2c),
        ("llama2c multi-query", mqa, SyntheticFormat::Llama2c),
        ("gguf-f32 multi-head tied", base, f32_gguf),
        ("gguf-f32 grouped-query untied", gqa, f32_gguf),
        ("gguf-f32 multi-query", mqa, f32_gguf),
        ("gguf-q8_0 grouped-query", gqa, SyntheticFormat::Gguf(TensorType::Q8_0)),
        ("gguf-q4_0 grouped-query", gqa, SyntheticFormat::Gguf(TensorType::Q4_0)),
        ("gguf-q4_1 multi-query", mqa, SyntheticFormat::Gguf(TensorType::Q4_1)),
    ]
}

/// Tokens in each stream fed to the engine and the reference.
const STREAM_TOKENS: usize = 24;

/// Most sequences sharing a pass in [`PASS_SHAPES`].
const MAX_SEQUENCES: usize = 4;

/// Batched pass shapes checked against the reference: prompt chunk length T and sequences per
/// pass B. Odd-numbered sequences feed one token per pass (as decoding rows do) beside the
/// even ones' chunks, so prompt chunks and decode rows share passes.
const PASS_SHAPES: &[(usize, usize)] = &[(1, 2), (3, 1), (8, 1), (24, 1), (8, 2), (5, 3), (32, 4)];

/// Token stream `stream` of a model: a fixed pattern, shifted per stream.
fn token_stream(spec: &SyntheticSpec, stream: usize) -> Vec<u32> {
    let vocab = spec.vocab_size as u32;
    (0..STREAM_TOKENS as u32).map(|index| (index * 37 + 5 + 11 * stream as u32) % vocab).collect()
}

/// Every position's logits of `tokens`, fed one token per pass.
fn one_at_a_time(model: &ModelFile<'_>, tokens: &[u32]) -> Result<Vec<f32>, String> {
    let config = model.weights.config;
    let kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).ok_or("KV size")?;
    let mut session = Session::new(&model.weights, kv);
    let mut state = State::for_positions(&model.weights, Precision::Float, session.positions());
    let mut logits = Vec::new();
    for &token in tokens {
        session.feed(&SingleCpu, &mut state, token).map_err(|error| error.to_string())?;
        logits.extend_from_slice(state.logits());
    }
    Ok(logits)
}

/// The logits after each pass of every stream in `streams`, fed together: stream s gives each
/// pass its next `chunk` tokens (s even) or its next one (s odd), and asks for the logits of
/// the last. Returns `(stream, position, logits)` for every pass's every stream.
fn batched(
    model: &ModelFile<'_>,
    streams: &[Vec<u32>],
    chunk: usize,
) -> Result<Vec<(usize, usize, Vec<f32>)>, String> {
    let config = model.weights.config;
    let mut stores = Vec::new();
    for _ in streams {
        stores
            .push(ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).ok_or("KV size")?);
    }
    let step = |stream: usize| if stream.is_multiple_of(2) { chunk } else { 1 };
    let rows = (0..streams.len()).map(step).sum();
    let mut state = State::for_batch(&config, Precision::Float, config.context_length, rows);
    let mut fed = vec![0usize; streams.len()];
    let mut found = Vec::new();
    loop {
        let mut members = Vec::new();
        let mut sequences = Vec::new();
        for (stream, kv) in stores.iter_mut().enumerate() {
            let start = fed[stream];
            let end = (start + step(stream)).min(streams[stream].len());
            if start < end {
                members.push((stream, end - 1));
                sequences.push(PassSequence {
                    kv,
                    tokens: &streams[stream][start..end],
                    start,
                    logits: true,
                });
                fed[stream] = end;
            }
        }
        if sequences.is_empty() {
            return Ok(found);
        }
        forward_batch(&model.weights, &mut state, &mut sequences, &SingleCpu, |index, logits, _| {
            let (stream, position) = members[index];
            found.push((stream, position, logits.to_vec()));
        })
        .map_err(|failure| format!("sequence {}: {}", failure.sequence, failure.error))?;
    }
}

struct Checks {
    python: String,
    scripts: PathBuf,
    work: PathBuf,
    passed: usize,
    failed: usize,
}

impl Checks {
    fn record(&mut self, ok: bool, line: String) {
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    fn python(&self, script: &str, arguments: &[&str], input: Option<&str>) -> Result<Vec<u8>, String> {
        let mut child = Command::new(&self.python)
            .arg(self.scripts.join(script))
            .args(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("{}: {error}", self.python))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.unwrap_or("").as_bytes()).map_err(|error| error.to_string())?;
        }
        let output = child.wait_with_output().map_err(|error| error.to_string())?;
        if !output.status.success() {
            return Err(format!("{script} exited with {}", output.status));
        }
        Ok(output.stdout)
    }

    /// The logits check of one synthetic model: the numpy reference for every stream, then the
    /// engine one token at a time and in every pass shape of [`PASS_SHAPES`].
    fn logits(&mut self, name: &str, spec: &SyntheticSpec, format: SyntheticFormat) {
        let generated = spec.generate(format).unwrap_or_else(|error| fail_setup(error));
        let path = self.work.join(format!("{}.model", name.replace(' ', "-")));
        write(&path, &generated.model);
        let model = ModelFile::parse(&generated.model).unwrap_or_else(|error| fail_setup(&error.to_string()));
        let streams: Vec<Vec<u32>> = (0..MAX_SEQUENCES).map(|stream| token_stream(spec, stream)).collect();
        let mut references = Vec::new();
        for (stream, tokens) in streams.iter().enumerate() {
            match self.reference(&path, &path.with_extension(format!("reference-{stream}.bin")), tokens) {
                Ok(reference) => references.push(reference),
                Err(error) => return self.record(false, format!("logits {name}: {error}")),
            }
        }
        let vocab = model.weights.config.vocab_size;
        let engine = match one_at_a_time(&model, &streams[0]) {
            Ok(engine) => engine,
            Err(error) => return self.record(false, format!("logits {name}: engine failed: {error}")),
        };
        let compared: Vec<(usize, usize, &[f32])> =
            engine.chunks_exact(vocab).enumerate().map(|(position, logits)| (0, position, logits)).collect();
        let shape = format!("one token at a time, {} positions x {vocab} vocab", streams[0].len());
        self.compare(name, &shape, &compared, &references, vocab);
        for &(chunk, sequences) in PASS_SHAPES {
            let plural = if sequences == 1 { "" } else { "s" };
            let shape = format!("chunks of {chunk}, {sequences} sequence{plural} per pass");
            match batched(&model, &streams[..sequences], chunk) {
                Ok(found) => {
                    let compared: Vec<(usize, usize, &[f32])> = found
                        .iter()
                        .map(|(stream, position, logits)| (*stream, *position, logits.as_slice()))
                        .collect();
                    self.compare(name, &shape, &compared, &references, vocab);
                }
                Err(error) => self.record(false, format!("logits {name}, {shape}: engine failed: {error}")),
            }
        }
    }

    /// Every position's logits of `tokens` through `model` by `reference.py`, which writes
    /// them to `out`.
    fn reference(&self, model: &Path, out: &Path, tokens: &[u32]) -> Result<Vec<f32>, String> {
        let token_list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        let arguments = [
            model.to_str().unwrap_or(""),
            "--tokens",
            &token_list.join(","),
            "--out",
            out.to_str().unwrap_or(""),
        ];
        self.python("reference.py", &arguments, None)?;
        Ok(std::fs::read(out)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .collect())
    }

    /// Records whether every engine logit vector `(stream, position, logits)` agrees with the
    /// reference of its stream at its position within [`TOLERANCE`].
    fn compare(
        &mut self,
        name: &str,
        shape: &str,
        compared: &[(usize, usize, &[f32])],
        references: &[Vec<f32>],
        vocab: usize,
    ) {
        let mut difference = 0.0f32;
        let mut spread = 0.0f32;
        for &(stream, position, logits) in compared {
            let Some(reference) = references[stream].get(position * vocab..(position + 1) * vocab) else {
                return self
                    .record(false, format!("logits {name}, {shape}: no reference at position {position}"));
            };
            if logits.len() != vocab {
                return self.record(
                    false,
                    format!("logits {name}, {shape}: {} logits, vocab {vocab}", logits.len()),
                );
            }
            let worst = logits.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            difference = difference.max(worst);
            spread = reference.iter().fold(spread, |acc, value| acc.max(value.abs()));
        }
        self.record(
            !compared.is_empty() && difference <= TOLERANCE && spread > 0.1,
            format!(
                "logits {name} ({shape}; {} vectors): max |engine - reference| = {difference:.2e}, max |logit| = {spread:.2}",
                compared.len()
            ),
        );
    }

    fn tokenizer(&mut self, name: &str, path: &Path) {
        let bytes =
            std::fs::read(path).unwrap_or_else(|error| fail_setup(&format!("{}: {error}", path.display())));
        let tokenizer = GgufFile::parse(&bytes)
            .and_then(|file| Tokenizer::from_gguf(&file))
            .unwrap_or_else(|error| fail_setup(&format!("{}: {error}", path.display())));
        let mut input = String::new();
        for text in CORPUS {
            input.push_str(&json_string(text));
            input.push('\n');
        }
        let output = match self.python("tokenizer_reference.py", &[path.to_str().unwrap_or("")], Some(&input))
        {
            Ok(output) => String::from_utf8_lossy(&output).into_owned(),
            Err(error) => return self.record(false, format!("tokenizer {name}: {error}")),
        };
        let lines: Vec<&str> = output.lines().collect();
        let mut mismatches = 0;
        for (index, text) in CORPUS.iter().enumerate() {
            let mut ids = Vec::new();
            tokenizer.encode(text, &mut ids);
            let ours: Vec<String> = ids.iter().map(u32::to_string).collect();
            let ours = format!("[{}]", ours.join(", "));
            let theirs = lines.get(index).copied().unwrap_or("<missing>");
            if ours != theirs {
                mismatches += 1;
                println!("     {text:?}\n       engine    {ours}\n       reference {theirs}");
            }
        }
        self.record(
            mismatches == 0,
            format!("tokenizer {name}: {} texts, {mismatches} differ", CORPUS.len()),
        );
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            character if (character as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", character as u32)),
            character => out.push(character),
        }
    }
    out.push('"');
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|error| fail_setup(&format!("{}: {error}", path.display())));
}

fn fail_setup(message: &str) -> ! {
    eprintln!("reference-check: {message}");
    println!("reference-check: 0 passed, 1 failed");
    std::process::exit(1);
}
