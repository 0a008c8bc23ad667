//! The one host test that runs the real model: SmolLM2-135M-Instruct (Q4_1 GGUF) answers
//! "What is the capital of France?" with Paris under greedy decoding.
//!
//! The model comes from `tools/reference/fetch_smollm2.sh` (which `make test` runs first) at
//! `build/models/`, or from `$TESSERA_SMOLLM2`. Without it the test says so and passes
//! without running. Run it optimized: `cargo test --release -p cli --test smollm2`.

use std::path::PathBuf;
use std::process::Command;

fn model_path() -> PathBuf {
    match std::env::var_os("TESSERA_SMOLLM2") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../build/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

#[test]
fn smollm2_says_paris() {
    let model = model_path();
    if !model.exists() {
        eprintln!(
            "SKIPPED smollm2_says_paris: {} is absent; run tools/reference/fetch_smollm2.sh",
            model.display()
        );
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("generate")
        .arg(&model)
        .args(["--chat", "--prompt", "What is the capital of France?", "--steps", "16", "--print-tokens"])
        .output()
        .expect("tessera runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tessera failed: {}", String::from_utf8_lossy(&output.stderr));
    eprintln!("SmolLM2 answered: {text}");
    assert!(text.contains("Paris"), "no Paris in {text:?}");
}
