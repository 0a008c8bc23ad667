//! The one host test that runs the real model: SmolLM2-135M-Instruct (Q4_1 GGUF) answers
//! "What is the capital of France?" with Paris under greedy decoding.
//!
//! The model comes from `tools/reference/fetch_smollm2.sh` at `build/models/`, or from
//! `$TESSERA_SMOLLM2`. The test is ignored by a plain `cargo test` (the model is a download);
//! `tools/reference/check.sh` (part of `make test`) fetches the model and runs it, and so can
//! you: `cargo test --release -p cli --test smollm2 -- --ignored`.

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
#[ignore = "needs SmolLM2 (tools/reference/fetch_smollm2.sh); tools/reference/check.sh runs it"]
fn smollm2_says_paris() {
    let model = model_path();
    assert!(model.exists(), "{} is absent; run tools/reference/fetch_smollm2.sh", model.display());
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
