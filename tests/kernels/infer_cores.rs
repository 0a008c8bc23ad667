//! QEMU test: the engine in the unikernel reproduces the host exactly. On a synthetic Q4_1
//! model the logits of every position hash to what the host computed at build time, on one
//! core and on four (identical bits), and greedy generation gives the host's tokens.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use boot::cpus::PiCpus;
use kernel::{
    hil::Cpus,
    infer::{ContiguousKv, Sampler, SamplerConfig, Session, State, forward},
    model::ModelFile,
};
use systests::{TEST_CONFIG, ensure, pass};

boot::entry!(main, TEST_CONFIG);

mod expected {
    include!(concat!(env!("OUT_DIR"), "/infer-expected.rs"));
}

static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/infer-fixture.gguf"));

fn hash(values: &[f32]) -> u64 {
    values.iter().flat_map(|value| value.to_bits().to_le_bytes()).fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main(_info: &'static boot::BootInfo) -> ! {
    let file = ModelFile::parse(MODEL).unwrap_or_else(|error| systests::fail(format_args!("parse: {error}")));
    let weights = &file.weights;
    let config = weights.config;
    let logits_on = |cpus: &dyn Cpus| -> Vec<f32> {
        let mut state = State::new(weights);
        let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).expect("KV");
        let mut all = Vec::new();
        for (position, &token) in expected::TOKENS.iter().enumerate() {
            match forward(weights, &mut state, &mut kv, cpus, token, position) {
                Ok(logits) => all.extend_from_slice(logits),
                Err(error) => systests::fail(format_args!("forward: {error}")),
            }
        }
        all
    };
    let one = logits_on(&PiCpus::new(1));
    let four = logits_on(&PiCpus::new(4));
    ensure!(
        one.iter().zip(&four).all(|(a, b)| a.to_bits() == b.to_bits()),
        "logits differ between 1 and 4 cores"
    );
    ensure!(
        hash(&four) == expected::LOGITS_HASH,
        "logits hash {:#x}, host computed {:#x}",
        hash(&four),
        expected::LOGITS_HASH
    );
    let kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).expect("KV");
    let mut session = Session::new(weights, kv);
    let mut sampler = Sampler::new(SamplerConfig::default());
    let mut state = State::new(weights);
    let mut generated = Vec::new();
    if let Err(error) = session.generate(
        &PiCpus::new(4),
        &mut state,
        &expected::TOKENS[..4],
        &mut sampler,
        expected::GENERATED.len(),
        |_| false,
        |token| generated.push(token),
    ) {
        systests::fail(format_args!("generate: {error}"));
    }
    ensure!(
        generated == expected::GENERATED,
        "greedy tokens {generated:?}, host gave {:?}",
        expected::GENERATED
    );
    boot::println!(
        "{} logits identical on 1 and 4 cores and equal to the host's; {} greedy tokens equal the host's",
        four.len(),
        generated.len()
    );
    pass()
}
