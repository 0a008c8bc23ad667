//! Links the QEMU test kernels with the workspace's linker script, and prepares the inference
//! fixture: a synthetic model, plus the logits hash and greedy tokens the host computes for it,
//! which the `infer_cores` kernel must reproduce exactly.

use kernel::{
    hil::SingleCpu,
    infer::{
        ContiguousKv, Sampler, SamplerConfig, Session, State, forward,
        synthetic::{SyntheticFormat, SyntheticSpec},
    },
    model::{ModelFile, TensorType},
};
use std::{fmt::Write, path::Path};

/// Tokens fed one per position for the logits comparison.
const TOKENS: [u32; 12] = [1, 77, 299, 3, 77, 150, 12, 250, 8, 9, 100, 2];
/// Greedy tokens generated after the first four of `TOKENS`.
const GENERATED: usize = 24;

/// FNV-1a over the bit patterns of `values`.
fn hash(values: &[f32]) -> u64 {
    values.iter().flat_map(|value| value.to_bits().to_le_bytes()).fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = Path::new(&manifest).join("../linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("aarch64") {
        println!(
            "cargo:rustc-link-arg-tests=-T{}",
            script.canonicalize().expect("linker.ld exists").display()
        );
    }

    let spec = SyntheticSpec::tiny(64, 21);
    let model = spec.generate(SyntheticFormat::Gguf(TensorType::Q4_1)).expect("synthetic model").model;
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out).join("infer-fixture.gguf"), &model).expect("write the fixture");

    let file = ModelFile::parse(&model).expect("parse the fixture");
    let weights = &file.weights;
    let config = weights.config;
    let mut state = State::new(weights);
    let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).expect("KV");
    let mut logits = Vec::new();
    for (position, &token) in TOKENS.iter().enumerate() {
        logits.extend_from_slice(
            forward(weights, &mut state, &mut kv, &SingleCpu, token, position).expect("forward"),
        );
    }
    let kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).expect("KV");
    let mut session = Session::new(weights, kv);
    let mut sampler = Sampler::new(SamplerConfig::default());
    let mut generated = Vec::new();
    session
        .generate(
            &SingleCpu,
            &mut state,
            &TOKENS[..4],
            &mut sampler,
            GENERATED,
            |_| false,
            |token| generated.push(token),
        )
        .expect("generate");

    let mut expected = String::new();
    writeln!(
        expected,
        "/// Tokens fed one per position.\npub const TOKENS: [u32; {}] = {TOKENS:?};",
        TOKENS.len()
    )
    .unwrap();
    writeln!(
        expected,
        "/// FNV-1a of the host's logits at every position.\npub const LOGITS_HASH: u64 = {:#x};",
        hash(&logits)
    )
    .unwrap();
    writeln!(
        expected,
        "/// The host's greedy tokens after the first four.\npub const GENERATED: [u32; {}] = {generated:?};",
        generated.len()
    )
    .unwrap();
    std::fs::write(Path::new(&out).join("infer-expected.rs"), expected).expect("write the expectations");
}
