//! QEMU test: secondary cores lost in the middle of jobs are reported and retired, and the kernel
//! carries on with the cores left, with correct results.
//!
//! 1. Core 2 takes a data abort before the first barrier of a summing job: the report names
//!    core 2, the exception and the last trace events; the job runs again over cores 0, 1, 3
//!    and its sum is right; the next job runs on those three, and so does a greedy generation,
//!    which gives the host's tokens.
//! 2. Core 3 panics (an allocation the heap cannot satisfy) between the job's two barriers: the
//!    same again, leaving cores 0 and 1.
//! 3. Core 1 faults inside a matrix-vector product of a forward pass: core 0 redoes its band,
//!    and the logits of every position still hash to what the host computed.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use boot::cpus::{PiCpus, lost_cores};
use bsp::arch::aarch64::cpu;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::{
    hil::{Cpus, SharesLost},
    infer::{ContiguousKv, Sampler, SamplerConfig, Session, State, forward},
    model::ModelFile,
    telemetry::CoreLoss,
};
use systests::{
    TEST_CONFIG,
    cores::{Injection, Mishap, Moment, loss_recorded, suffer, sum_rows},
    ensure, pass,
};

boot::entry!(main, TEST_CONFIG);

mod expected {
    include!(concat!(env!("OUT_DIR"), "/infer-expected.rs"));
}

static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/infer-fixture.gguf"));

/// Data abort class (same exception level).
const DATA_ABORT: u8 = 0x25;

fn main(info: &'static boot::BootInfo) -> ! {
    ensure!(info.cores_online == 4, "{} cores online", info.cores_online);
    let cpus = PiCpus::new(4);

    let fault = Injection { core: 2, mishap: Mishap::DataAbort, moment: Moment::BeforeFirstBarrier };
    let sum = sum_rows(&cpus, 1, true, Some(fault));
    ensure!(sum.total == sum.expected, "sum {} after core 2's fault, expected {}", sum.total, sum.expected);
    ensure!(sum.runs == 2, "{} runs: the lost run should have run once more", sum.runs);
    ensure!(sum.cores == 0b1011, "the completed run used cores {:#06b}", sum.cores);
    ensure!(cpus.count() == 3, "count() is {} after losing core 2", cpus.count());
    ensure!(lost_cores() == 0b0100, "lost cores {:#06b}", lost_cores());
    ensure!(
        loss_recorded(2) == Some(CoreLoss::Exception { class: DATA_ABORT }),
        "trace ring: core 2 lost to {:?}",
        loss_recorded(2)
    );
    let next = sum_rows(&cpus, 2, true, None);
    ensure!(next.total == next.expected && next.runs == 1, "the next job: {next:?}");
    ensure!(next.cores == 0b1011, "the next job ran on cores {:#06b}", next.cores);
    boot::println!("core 2's fault: sum right after a rerun on cores 0, 1, 3; the next job ran on 3 cores");
    let generated = greedy_tokens(&cpus);
    ensure!(
        generated == expected::GENERATED,
        "greedy tokens {generated:?} on cores 0, 1, 3; host gave {:?}",
        expected::GENERATED
    );
    boot::println!("greedy generation on cores 0, 1, 3 (worker 2 on core 3) equals the host's");

    let panic = Injection { core: 3, mishap: Mishap::Panic, moment: Moment::BetweenBarriers };
    let sum = sum_rows(&cpus, 3, true, Some(panic));
    ensure!(sum.total == sum.expected, "sum {} after core 3's panic, expected {}", sum.total, sum.expected);
    ensure!(sum.runs == 2 && sum.cores == 0b0011, "after core 3's panic: {sum:?}");
    ensure!(cpus.count() == 2, "count() is {} after losing core 3", cpus.count());
    ensure!(loss_recorded(3) == Some(CoreLoss::Panic), "trace ring: core 3 lost to {:?}", loss_recorded(3));
    let next = sum_rows(&cpus, 4, false, None);
    ensure!(next.total == next.expected && next.cores == 0b0011, "the job after the panic: {next:?}");
    boot::println!("core 3's panic: sum right after a rerun on cores 0, 1; the next job ran on 2 cores");

    let losing =
        FaultAtRun { inner: &cpus, core: 1, at_run: 40, runs: AtomicU32::new(0), lost: AtomicU32::new(0) };
    let hash = logits_hash(&losing);
    ensure!(
        losing.lost.load(Ordering::SeqCst) == 0b10,
        "run 40 lost workers {:#b}",
        losing.lost.load(Ordering::SeqCst)
    );
    ensure!(
        hash == expected::LOGITS_HASH,
        "logits hash {hash:#x}, host computed {:#x}",
        expected::LOGITS_HASH
    );
    ensure!(
        cpus.count() == 1 && lost_cores() == 0b1110,
        "{} cores left, lost {:#06b}",
        cpus.count(),
        lost_cores()
    );
    boot::println!("core 1's fault inside a matmul: core 0 redid its band; logits equal the host's");
    pass()
}

/// Greedy tokens after the first four of the fixture's token stream.
fn greedy_tokens(cpus: &dyn Cpus) -> Vec<u32> {
    let file = ModelFile::parse(MODEL).unwrap_or_else(|error| systests::fail(format_args!("parse: {error}")));
    let weights = &file.weights;
    let config = weights.config;
    let kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).expect("KV");
    let mut session = Session::new(weights, kv);
    let mut sampler = Sampler::new(SamplerConfig::default());
    let mut state = State::new(weights);
    let mut generated = Vec::new();
    let steps = expected::GENERATED.len();
    if let Err(error) = session.generate(
        cpus,
        &mut state,
        &expected::TOKENS[..4],
        &mut sampler,
        steps,
        |_| false,
        |token| generated.push(token),
    ) {
        systests::fail(format_args!("generate: {error}"));
    }
    generated
}

/// FNV-1a over the bits of the logits of every position of the fixture's token stream.
fn logits_hash(cpus: &dyn Cpus) -> u64 {
    let file = ModelFile::parse(MODEL).unwrap_or_else(|error| systests::fail(format_args!("parse: {error}")));
    let weights = &file.weights;
    let config = weights.config;
    let mut state = State::new(weights);
    let mut kv = ContiguousKv::new(config.layers, config.kv_dim(), config.context_length).expect("KV");
    let mut logits = Vec::new();
    for (position, &token) in expected::TOKENS.iter().enumerate() {
        match forward(weights, &mut state, &mut kv, cpus, token, position) {
            Ok(values) => logits.extend_from_slice(values),
            Err(error) => systests::fail(format_args!("forward: {error}")),
        }
    }
    logits.iter().flat_map(|value| value.to_bits().to_le_bytes()).fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The board's cores, with a data abort on physical core `core` at the start of its share of
/// run number `at_run` (counting from 0); remembers the shares that run lost.
struct FaultAtRun<'a> {
    inner: &'a PiCpus,
    core: usize,
    at_run: u32,
    runs: AtomicU32,
    lost: AtomicU32,
}

impl FaultAtRun<'_> {
    fn strike(&self, run: u32) {
        if run == self.at_run && cpu::core_id() == self.core {
            suffer(Mishap::DataAbort);
        }
    }
}

impl Cpus for FaultAtRun<'_> {
    fn count(&self) -> usize {
        self.inner.count()
    }

    fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        self.inner.run_on_all(&|worker| {
            self.strike(run);
            job(worker);
        });
    }

    fn try_run_on_all(&self, job: &(dyn Fn(usize) + Sync)) -> Result<(), SharesLost> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        let outcome = self.inner.try_run_on_all(&|worker| {
            self.strike(run);
            job(worker);
        });
        if let Err(lost) = outcome {
            self.lost.fetch_or(lost.mask(), Ordering::SeqCst);
        }
        outcome
    }

    fn barrier(&self) {
        self.inner.barrier();
    }
}
