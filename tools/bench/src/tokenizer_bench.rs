//! tokenizer-bench: how fast the engine's byte-level BPE tokenizer is built from a GGUF file
//! and how fast it encodes and decodes, on the host (wall time, best of several passes).
//!
//! Usage: `tokenizer-bench [MODEL.gguf]` (default: build/models/SmolLM2-135M-Instruct.Q4_1.gguf,
//! fetched by `make model`). Prints a markdown table and a checksum of the token ids, so two
//! builds of the tokenizer can be compared for speed and for identical output.

#![forbid(unsafe_code)]

mod usage;

use kernel::{infer::Tokenizer, model::GgufFile};
use std::{hint::black_box, time::Instant};

/// Texts encoded in each pass: prose, code, numbers, several scripts and the chat markers.
const TEXTS: &[&str] = &[
    "Once upon a time, there was a little girl who lived in a village near the forest. Whenever \
     she went out, the little girl wore a red riding cloak, so everyone in the village called her \
     Little Red Riding Hood.",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
     Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "fn main() { let values: Vec<u32> = (0..100).map(|x| x * x).collect(); println!(\"{values:?}\"); }",
    "The year 2024 had 366 days; π ≈ 3.14159, and 1,000,000 is a million. Ünïcödé façade naïve café.",
    "Привет, мир! Как дела? 日本語のテキストと中文文本 مرحبا بالعالم emoji 🙂🙃 👍🏽",
    "I'm sure they'll say we've done it, didn't they?   multiple     spaces\n\n\nand\tTabs\r\n",
];

/// Passes of the whole corpus per timing, and timings kept (the best is reported).
const PASSES: usize = 200;
const TIMINGS: usize = 5;

fn best_of(mut work: impl FnMut()) -> f64 {
    (0..TIMINGS)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// What `tokenizer-bench --help` prints.
const USAGE: &str = "\
tokenizer-bench: how fast the byte-level BPE tokenizer is built from a GGUF file and how fast
it encodes and decodes, on this host; prints a Markdown table and a checksum of the token ids

usage: tokenizer-bench [MODEL.gguf]

  MODEL.gguf        default build/models/SmolLM2-135M-Instruct.Q4_1.gguf (`make model`)
  -h, --help        print this help
";

fn main() {
    let model = usage::parse(USAGE, |arguments| match arguments {
        [] => Ok(None),
        [model] if !model.starts_with('-') => Ok(Some(model.clone())),
        [model] => Err(format!("unknown option {model:?}")),
        [_, extra, ..] => Err(format!("unexpected argument {extra:?} (one model at most)")),
    });
    let path = model.unwrap_or_else(|| String::from("build/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let bytes = std::fs::read(&path).unwrap_or_else(|error| {
        eprintln!("tokenizer-bench: {path}: {error} (run `make model` first)");
        std::process::exit(1);
    });
    let file = GgufFile::parse(&bytes).unwrap_or_else(|error| {
        eprintln!("tokenizer-bench: {path}: {error}");
        std::process::exit(1);
    });
    let build_seconds = best_of(|| {
        black_box(Tokenizer::from_gguf(&file).expect("the tokenizer builds"));
    });
    let tokenizer = Tokenizer::from_gguf(&file).expect("the tokenizer builds");
    let text_bytes: usize = TEXTS.iter().map(|text| text.len()).sum::<usize>() * PASSES;
    let mut ids = Vec::new();
    let mut tokens = 0usize;
    let encode_seconds = best_of(|| {
        tokens = 0;
        for _ in 0..PASSES {
            for text in TEXTS {
                ids.clear();
                tokenizer.encode(black_box(text), &mut ids);
                tokens += ids.len();
            }
        }
    });
    let mut checksum = 0xcbf2_9ce4_8422_2325u64;
    let mut all_ids = Vec::new();
    for text in TEXTS {
        ids.clear();
        tokenizer.encode(text, &mut ids);
        for &id in &ids {
            checksum = (checksum ^ u64::from(id)).wrapping_mul(0x0100_0000_01b3);
        }
        all_ids.extend_from_slice(&ids);
    }
    let decode_seconds = best_of(|| {
        for _ in 0..PASSES {
            let mut previous = None;
            for &id in &all_ids {
                black_box(tokenizer.decode(previous, id));
                previous = Some(id);
            }
        }
    });
    println!("tokenizer-bench: {path}, {} tokens in the vocabulary", tokenizer.vocab_size());
    println!();
    println!("| measure | figure |");
    println!("|---|---:|");
    println!("| build from the GGUF metadata (best of {TIMINGS}) | {:.1} ms |", build_seconds * 1e3);
    println!("| tables (one buffer) | {} bytes |", tokenizer.tables_bytes());
    println!(
        "| encode, {} texts x {PASSES} ({} bytes, {} tokens) | {:.2} MB/s, {:.0} ns per token |",
        TEXTS.len(),
        text_bytes,
        tokens,
        text_bytes as f64 / encode_seconds / 1e6,
        encode_seconds * 1e9 / tokens as f64
    );
    println!(
        "| decode, {} tokens x {PASSES} | {:.0} ns per token |",
        all_ids.len(),
        decode_seconds * 1e9 / (all_ids.len() * PASSES) as f64
    );
    println!("| token ids checksum (FNV-1a) | {checksum:#018x} |");
}
