//! End-to-end tests of the `tessera` binary on synthetic models it generates itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kernel::hil::SingleCpu;
use kernel::infer::{ContiguousKv, Session, State};
use kernel::model::ModelFile;

fn tessera(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(arguments).output().expect("tessera runs")
}

fn succeed(arguments: &[&str]) -> String {
    let output = tessera(arguments);
    assert!(
        output.status.success(),
        "tessera {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("tessera-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("scratch directory");
    directory
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn every_subcommand_has_help() {
    for command in ["inspect", "tokenize", "logits", "generate", "gen-model"] {
        let help = succeed(&[command, "--help"]);
        assert!(help.contains("Usage: tessera"), "{command}: {help}");
    }
    assert!(succeed(&["--help"]).contains("gen-model"));
    assert!(!tessera(&["generate"]).status.success(), "missing arguments are refused");
}

#[test]
fn gen_model_is_deterministic_in_every_format() {
    let directory = scratch("determinism");
    for format in ["llama2c", "gguf-f32", "gguf-q8_0", "gguf-q4_0", "gguf-q4_1"] {
        let first = directory.join(format!("{format}-a.bin"));
        let second = directory.join(format!("{format}-b.bin"));
        let other = directory.join(format!("{format}-c.bin"));
        succeed(&["gen-model", path(&first), "--seed", "7", "--format", format]);
        succeed(&["gen-model", path(&second), "--seed", "7", "--format", format]);
        succeed(&["gen-model", path(&other), "--seed", "8", "--format", format]);
        let read = |file: &Path| std::fs::read(file).expect("model written");
        assert_eq!(read(&first), read(&second), "{format}: same seed, same bytes");
        assert_ne!(read(&first), read(&other), "{format}: another seed, other weights");
        let inspect = succeed(&["inspect", path(&first)]);
        assert!(inspect.contains("dim 64 hidden 192 layers 2 heads 4 kv-heads 2"), "{inspect}");
        assert!(inspect.contains("tokenizer 512 tokens"), "{inspect}");
    }
    let refused = tessera(&["gen-model", path(&directory.join("x")), "--seed", "1", "--heads", "3"]);
    assert!(!refused.status.success());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn logits_file_matches_the_engine() {
    let directory = scratch("logits");
    let model = directory.join("model.gguf");
    succeed(&[
        "gen-model",
        path(&model),
        "--seed",
        "3",
        "--format",
        "gguf-q4_1",
        "--kv-heads",
        "1",
        "--vocab",
        "300",
    ]);
    let out = directory.join("logits.bin");
    succeed(&["logits", path(&model), "--tokens", "5,299,17,17", "--out", path(&out)]);
    let written: Vec<f32> = std::fs::read(&out)
        .expect("logits written")
        .chunks_exact(4)
        .map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap()))
        .collect();
    assert_eq!(written.len(), 4 * 300);

    let bytes = std::fs::read(&model).unwrap();
    let file = ModelFile::parse(&bytes).unwrap();
    let config = file.weights.config;
    let mut session =
        Session::new(&file.weights, ContiguousKv::new(config.layers, config.kv_dim(), 4).unwrap());
    let mut state = State::new(&file.weights);
    let mut expected = Vec::new();
    for token in [5, 299, 17, 17] {
        session.feed(&SingleCpu, &mut state, token).unwrap();
        expected.extend_from_slice(state.logits());
    }
    assert_eq!(written, expected);
    let threaded = directory.join("threaded.bin");
    succeed(&["logits", path(&model), "--tokens", "5,299,17,17", "--out", path(&threaded), "--threads", "3"]);
    assert_eq!(
        std::fs::read(&threaded).unwrap(),
        std::fs::read(&out).unwrap(),
        "threads give the same logits"
    );
    assert!(!tessera(&["logits", path(&model), "--tokens", "300", "--out", path(&out)]).status.success());
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn tokenize_and_generate_on_synthetic_models() {
    let directory = scratch("generate");
    let llama2c = directory.join("tiny.bin");
    succeed(&["gen-model", path(&llama2c), "--seed", "4", "--dim", "32", "--layers", "1", "--vocab", "400"]);
    assert!(directory.join("tiny.tokenizer.bin").exists());
    let gguf = directory.join("tiny.gguf");
    succeed(&[
        "gen-model",
        path(&gguf),
        "--seed",
        "4",
        "--dim",
        "32",
        "--layers",
        "1",
        "--vocab",
        "400",
        "--format",
        "gguf-q8_0",
    ]);

    let ids = succeed(&["tokenize", path(&gguf), "<|im_start|>The capital"]);
    let ids: Vec<u32> = ids.split_whitespace().map(|id| id.parse().unwrap()).collect();
    assert_eq!(ids[0], 398, "<|im_start|> is recognised as one token");
    assert!(ids.len() < 12, "merges apply: {ids:?}");

    for model in [&llama2c, &gguf] {
        let run = |seed: &str, temperature: &str| {
            let output = tessera(&[
                "generate",
                path(model),
                "--prompt",
                "Once upon a time",
                "--steps",
                "12",
                "--temperature",
                temperature,
                "--seed",
                seed,
                "--print-tokens",
            ]);
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            assert!(String::from_utf8_lossy(&output.stderr).contains("tokens/s"));
            String::from_utf8(output.stdout).unwrap()
        };
        let greedy = run("1", "0");
        assert_eq!(greedy, run("2", "0"), "greedy ignores the seed");
        assert!(greedy.contains("tokens: "));
        let sampled = run("1", "1.0");
        assert_eq!(sampled, run("1", "1.0"), "a seed repeats");
    }
    let chat = succeed(&["generate", path(&gguf), "--chat", "--prompt", "Hi", "--steps", "4"]);
    assert!(!chat.contains("<|im_start|>"), "the prompt is not echoed");
    let _ = std::fs::remove_dir_all(directory);
}
