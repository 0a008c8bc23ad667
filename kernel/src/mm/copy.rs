//! `tensor_copy`: bulk copies of tensor bytes, 128 bits at a time with NEON on aarch64 and a
//! plain copy elsewhere; and [`stage_copy`], which hands the bulk of a large copy to a
//! [`CopyEngine`] (the DMA engine) so the core can compute while it runs. Together with
//! [`buffer`](super::buffer) this is the part of the memory manager that touches memory.

#![allow(unsafe_code)]

use super::buffer::TensorBuffer;
use crate::hil::{CopyEngine, CopyError, CopyRequest, CopyStatus, check_request};
use core::marker::PhantomData;

/// Bytes moved per loop step on the NEON path: four 128-bit registers, one cache line.
pub const COPY_STEP: usize = 64;

/// Copies `min(destination.len(), source.len())` bytes from `source` to `destination` and
/// returns the count. The slices cannot overlap (the borrow rules forbid it).
pub fn tensor_copy(destination: &mut [u8], source: &[u8]) -> usize {
    let length = destination.len().min(source.len());
    let (destination, source) = (&mut destination[..length], &source[..length]);
    let bulk = length - length % COPY_STEP;
    copy_bulk(&mut destination[..bulk], &source[..bulk]);
    destination[bulk..].copy_from_slice(&source[bulk..]);
    length
}

/// Copies whole [`COPY_STEP`] blocks with 128-bit NEON loads and stores: four registers per
/// step, in one `ld1`/`st1` pair.
///
/// This is assembly rather than `vld1q_u8`/`vst1q_u8` because the `aarch64-unknown-none`
/// target builds with `+strict-align`: LLVM then splits a byte-aligned 128-bit load into 16
/// byte loads (measured: 4.7 instructions per byte). `ld1`/`st1` of `.16b` elements need only
/// byte alignment, even with alignment checking on, so they are correct for any slice.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn copy_bulk(destination: &mut [u8], source: &[u8]) {
    debug_assert_eq!(destination.len(), source.len());
    debug_assert_eq!(source.len() % COPY_STEP, 0);
    let steps = source.len() / COPY_STEP;
    if steps == 0 {
        return;
    }
    // SAFETY: `source` and `destination` are `steps * 64` bytes long; each iteration reads the
    // next 64 bytes of `source` and writes the next 64 of `destination`, so every access stays
    // inside them. `.16b` element accesses need no alignment. v0-v3 and the pointer and count
    // registers are declared clobbered; the flags are changed by `subs`.
    unsafe {
        core::arch::asm!(
            "2:",
            "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{source}], #64",
            "subs {steps}, {steps}, #1",
            "st1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{destination}], #64",
            "b.ne 2b",
            source = inout(reg) source.as_ptr() => _,
            destination = inout(reg) destination.as_mut_ptr() => _,
            steps = inout(reg) steps => _,
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            options(nostack),
        );
    }
}

/// Copies whole [`COPY_STEP`] blocks, eight 64-bit words at a time (the host fallback).
#[cfg(not(all(target_arch = "aarch64", target_feature = "neon")))]
fn copy_bulk(destination: &mut [u8], source: &[u8]) {
    for (to, from) in destination.chunks_exact_mut(8).zip(source.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(from);
        to.copy_from_slice(&u64::from_ne_bytes(word).to_ne_bytes());
    }
}

/// Copies shorter than this stay on the core even when an engine is present: starting the
/// DMA engine (cache maintenance, control block, register writes) costs more than the NEON
/// copy of a few KiB. `bench_dma_copy` measures both sides.
pub const OFFLOAD_MIN_BYTES: usize = 16 * 1024;

/// Who moved the bytes of a [`StagedCopy`], once it is finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CopyReport {
    /// Bytes the engine copied.
    pub engine_bytes: usize,
    /// Bytes the core copied (the unaligned head and tail, short copies, and any fallback).
    pub cpu_bytes: usize,
    /// Why the engine did not do its share; `None` when it did, or when there was no engine.
    pub fallback: Option<Fallback>,
}

/// Why a copy with an engine present ran on the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// No part of the copy that suits the engine is [`OFFLOAD_MIN_BYTES`] long.
    Short,
    /// The engine refused the request (it was busy, or its constraints do not fit).
    Refused(CopyError),
    /// The engine failed part-way; the core copied its share again.
    Failed(CopyError),
}

/// A copy into an owned buffer, possibly still running on an engine. The buffer is handed
/// back by [`StagedCopy::finish`]; until then nothing can reach it. Dropping the value waits
/// for the engine before the buffer is freed, and if the value is leaked the buffer is never
/// freed, so an engine still writing it cannot corrupt another owner.
#[must_use = "finish the copy to get the buffer back"]
pub struct StagedCopy<'source, 'memory, 'engine, E: CopyEngine + ?Sized> {
    /// Always `Some` until `finish` takes it.
    destination: Option<TensorBuffer<'memory>>,
    engine: Option<&'engine mut E>,
    /// The engine's part: `(offset in the destination, source bytes)`, while it is in flight.
    in_flight: Option<(usize, &'source [u8])>,
    report: CopyReport,
    source: PhantomData<&'source [u8]>,
}

/// Starts copying `source` into `destination[offset..]` and returns at once.
///
/// The part of the copy that meets `engine`'s constraints (the destination aligned as it
/// requires, at least [`OFFLOAD_MIN_BYTES`] long) goes to the engine; the core copies the
/// head and tail around it with [`tensor_copy`] while the engine runs, and copies everything
/// itself when there is no engine, the copy is short, or the engine refuses it. Copies
/// `min(source.len(), destination.len() - offset)` bytes.
///
/// # Safety
/// The returned [`StagedCopy`] must be finished or dropped, never leaked (`mem::forget`, a
/// reference cycle): only its `finish` or `Drop` waits for the engine, which reads `source`
/// until then, and a leaked value would end the borrow of `source` while the engine may still
/// read it (a leaked value keeps the destination buffer, so that half stays safe).
pub unsafe fn stage_copy<'source, 'memory, 'engine, E: CopyEngine + ?Sized>(
    mut engine: Option<&'engine mut E>,
    mut destination: TensorBuffer<'memory>,
    offset: usize,
    source: &'source [u8],
) -> StagedCopy<'source, 'memory, 'engine, E> {
    let mut report = CopyReport::default();
    let mut in_flight = None;
    let target: &mut [u8] = &mut destination;
    let target = target.get_mut(offset..).unwrap_or_default();
    let length = target.len().min(source.len());
    let (target, source_bytes) = (&mut target[..length], &source[..length]);
    let split = match engine.as_deref() {
        Some(_) if length == 0 => Err(None),
        Some(engine) => engine_share(engine, target, source_bytes).map_err(Some),
        None => Err(None),
    };
    let (head, middle) = match split {
        Ok(share) => share,
        Err(fallback) => {
            report.fallback = fallback;
            (length, 0)
        }
    };
    let (head_target, rest) = target.split_at_mut(head);
    let (middle_target, tail_target) = rest.split_at_mut(middle);
    if middle > 0
        && let Some(engine) = engine.as_deref_mut()
    {
        let request = CopyRequest {
            source: source_bytes[head..].as_ptr() as u64,
            destination: middle_target.as_mut_ptr() as u64,
            length: middle as u64,
        };
        // SAFETY: both ranges are RAM the caller's slices cover (the destination inside the
        // owned buffer, the source borrowed for 'source, so nothing writes it while the
        // returned StagedCopy lives, and this function's caller promises that value is
        // finished or dropped, whose `finish`/`Drop` wait for the engine, never leaked);
        // nothing reads or writes `middle_target` again until the engine reports the copy
        // finished, and the buffer is owned here so no one else can reach it.
        match unsafe { engine.start(request) } {
            Ok(()) => {
                in_flight = Some((offset + head, &source_bytes[head..head + middle]));
                report.engine_bytes = middle;
            }
            Err(error) => {
                report.fallback = Some(Fallback::Refused(error));
                report.cpu_bytes += tensor_copy(middle_target, &source_bytes[head..head + middle]);
            }
        }
    }
    report.cpu_bytes += tensor_copy(head_target, &source_bytes[..head]);
    report.cpu_bytes += tensor_copy(tail_target, &source_bytes[head + middle..]);
    StagedCopy { destination: Some(destination), engine, in_flight, report, source: PhantomData }
}

/// The head (copied by the core) and middle (copied by the engine) lengths of a copy, or why
/// the engine should not take any of it.
fn engine_share<E: CopyEngine + ?Sized>(
    engine: &E,
    target: &[u8],
    source: &[u8],
) -> Result<(usize, usize), Fallback> {
    let constraints = engine.constraints();
    let address = target.as_ptr() as u64;
    let alignment = constraints.destination_alignment.max(1);
    let head = usize::try_from(address.next_multiple_of(alignment) - address).unwrap_or(usize::MAX);
    let head = head.min(target.len());
    let granule = constraints.length_granule.max(1) as usize;
    let longest = usize::try_from(constraints.max_length).unwrap_or(usize::MAX);
    let middle = ((target.len() - head) / granule * granule).min(longest / granule * granule);
    if middle < OFFLOAD_MIN_BYTES {
        return Err(Fallback::Short);
    }
    let request = CopyRequest {
        source: source[head..].as_ptr() as u64,
        destination: address + head as u64,
        length: middle as u64,
    };
    check_request(&request, &constraints).map(|()| (head, middle)).map_err(Fallback::Refused)
}

impl<'source, 'memory, E: CopyEngine + ?Sized> StagedCopy<'source, 'memory, '_, E> {
    /// Whether the copy has finished (the engine's part included). Never blocks.
    pub fn is_finished(&mut self) -> bool {
        let Some((offset, source)) = self.in_flight else { return true };
        let Some(engine) = self.engine.as_deref_mut() else { return true };
        match engine.poll() {
            Ok(CopyStatus::Busy) => false,
            Ok(CopyStatus::Done) => {
                self.in_flight = None;
                true
            }
            Err(error) => {
                self.recover(offset, source, error);
                true
            }
        }
    }

    /// Waits for the engine's part (bounded by the engine's timeout) and returns the buffer
    /// with a report of who copied what. If the engine failed, the core has redone its part,
    /// so the buffer always holds the copy.
    pub fn finish(mut self) -> (TensorBuffer<'memory>, CopyReport) {
        if let Some((offset, source)) = self.in_flight
            && let Some(engine) = self.engine.as_deref_mut()
            && let Err(error) = engine.wait()
        {
            self.recover(offset, source, error);
        }
        self.in_flight = None;
        let destination = self.destination.take();
        // `finish` is the only taker, and it consumes `self`.
        (destination.expect("a staged copy owns its buffer until finished"), self.report)
    }

    /// The engine failed with `error` (and is idle again: its drivers stop a failed copy):
    /// the core copies the engine's share itself.
    fn recover(&mut self, offset: usize, source: &[u8], error: CopyError) {
        self.in_flight = None;
        self.report.fallback = Some(Fallback::Failed(error));
        self.report.engine_bytes -= source.len();
        if let Some(destination) = self.destination.as_mut() {
            let target: &mut [u8] = destination;
            self.report.cpu_bytes += tensor_copy(&mut target[offset..offset + source.len()], source);
        }
    }
}

impl<E: CopyEngine + ?Sized> Drop for StagedCopy<'_, '_, '_, E> {
    /// Waits for the engine's part before the buffer goes back to its pool. An engine is idle
    /// once `wait` returns, even with an error (its drivers stop a failed copy), but when
    /// `wait` reports an error the buffer is leaked anyway rather than handed to a new owner,
    /// in case the hardware did not stop.
    fn drop(&mut self) {
        if self.in_flight.take().is_some()
            && let Some(engine) = self.engine.as_deref_mut()
            && engine.wait().is_err()
        {
            core::mem::forget(self.destination.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hil::CopyConstraints,
        mm::{buffer::tests::host_backed_memory, layout::MIB, tensor::TensorKind},
    };
    use proptest::prelude::*;

    /// A copy engine made of the host CPU: it copies on the `polls`-th poll after a start,
    /// or fails with `failure` instead. It stands in for the DMA engine, which only exists on
    /// the Pi (the QEMU test `dma_copy` drives the real one through the same code).
    struct HostEngine {
        constraints: CopyConstraints,
        pending: Option<(CopyRequest, u32)>,
        polls: u32,
        failure: Option<CopyError>,
        started: u32,
    }

    impl HostEngine {
        fn new(polls: u32) -> Self {
            let constraints = CopyConstraints {
                source_alignment: 4,
                destination_alignment: 64,
                length_granule: 64,
                max_length: 1 << 30,
                reachable_end: u64::MAX,
            };
            Self { constraints, pending: None, polls, failure: None, started: 0 }
        }
    }

    impl CopyEngine for HostEngine {
        fn constraints(&self) -> CopyConstraints {
            self.constraints
        }

        unsafe fn start(&mut self, request: CopyRequest) -> Result<(), CopyError> {
            check_request(&request, &self.constraints)?;
            if self.pending.is_some() {
                return Err(CopyError::Busy);
            }
            self.started += 1;
            self.pending = Some((request, self.polls));
            Ok(())
        }

        fn poll(&mut self) -> Result<CopyStatus, CopyError> {
            let Some((request, polls_left)) = self.pending.take() else { return Err(CopyError::Idle) };
            if polls_left > 1 {
                self.pending = Some((request, polls_left - 1));
                return Ok(CopyStatus::Busy);
            }
            if let Some(error) = self.failure {
                return Err(error);
            }
            // SAFETY: `start`'s contract: both ranges are memory nobody else touches until
            // this poll reports the copy done, and check_request ruled out an overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    request.source as *const u8,
                    request.destination as *mut u8,
                    request.length as usize,
                )
            };
            Ok(CopyStatus::Done)
        }

        fn wait(&mut self) -> Result<(), CopyError> {
            while self.poll()? == CopyStatus::Busy {}
            Ok(())
        }
    }

    fn pattern(length: usize, seed: u8) -> Vec<u8> {
        (0..length).map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn large_aligned_copies_go_to_the_engine_and_the_rest_stays_on_the_core() {
        let backed = host_backed_memory(32 * MIB);
        let source = pattern(256 * 1024 + 8, 3);
        let mut engine = HostEngine::new(3);
        let destination = backed.alloc(512 * 1024, TensorKind::Activation).unwrap();
        // The destination starts 16 bytes into a 64-byte line and the source 4 bytes into its
        // own, so after a 48-byte head both are aligned as the engine needs.
        // SAFETY: the staged copy is finished or dropped here, never leaked.
        let mut copy = unsafe { stage_copy(Some(&mut engine), destination, 16, &source[4..]) };
        assert!(!copy.is_finished(), "the engine needs three polls");
        let (destination, report) = copy.finish();
        assert_eq!(&destination[16..16 + source.len() - 4], &source[4..]);
        assert!(destination[..16].iter().all(|&byte| byte == 0));
        assert!(destination[16 + source.len() - 4..].iter().all(|&byte| byte == 0));
        assert_eq!(report.fallback, None);
        assert_eq!(report.engine_bytes + report.cpu_bytes, source.len() - 4);
        assert!(report.cpu_bytes < 128, "only the head and tail: {report:?}");
        assert_eq!(engine.started, 1);
    }

    #[test]
    fn dropping_a_staged_copy_waits_for_the_engine_before_freeing_the_buffer() {
        let backed = host_backed_memory(32 * MIB);
        let source = pattern(64 * 1024, 5);
        let mut engine = HostEngine::new(3);
        let destination = backed.alloc(64 * 1024, TensorKind::Activation).unwrap();
        // SAFETY: the staged copy is finished or dropped here, never leaked.
        let staged = unsafe { stage_copy(Some(&mut engine), destination, 0, &source) };
        drop(staged);
        assert!(engine.pending.is_none(), "the engine was left running");
        assert_eq!(engine.poll(), Err(CopyError::Idle));
    }

    #[test]
    fn each_fallback_is_reported_and_the_data_is_still_copied() {
        let backed = host_backed_memory(32 * MIB);
        let source = pattern(128 * 1024, 9);
        let destination = backed.alloc(128 * 1024, TensorKind::Activation).unwrap();

        let mut engine = HostEngine::new(1);
        // SAFETY: the staged copy is finished or dropped here, never leaked.
        let (destination, report) =
            unsafe { stage_copy(Some(&mut engine), destination, 0, &source[..4096]) }.finish();
        assert_eq!(report.fallback, Some(Fallback::Short));
        assert_eq!((report.engine_bytes, report.cpu_bytes), (0, 4096));
        assert_eq!(&destination[..4096], &source[..4096]);

        // Source and destination differ in alignment by 2 bytes: no 4-byte-aligned source
        // exists for any 64-byte-aligned destination.
        // SAFETY: the staged copy is finished or dropped here, never leaked.
        let (destination, report) =
            unsafe { stage_copy(Some(&mut engine), destination, 0, &source[2..]) }.finish();
        assert!(matches!(
            report.fallback,
            Some(Fallback::Refused(CopyError::Misaligned { which: "source", .. }))
        ));
        assert_eq!(&destination[..source.len() - 2], &source[2..]);

        engine.failure = Some(CopyError::Device { status: 4 });
        // SAFETY: the staged copy is finished or dropped here, never leaked.
        let (destination, report) =
            unsafe { stage_copy(Some(&mut engine), destination, 0, &source[64..]) }.finish();
        assert_eq!(report.fallback, Some(Fallback::Failed(CopyError::Device { status: 4 })));
        assert_eq!((report.engine_bytes, report.cpu_bytes), (0, source.len() - 64));
        assert_eq!(&destination[..source.len() - 64], &source[64..]);

        // SAFETY: the staged copy is finished or dropped here, never leaked.
        let (destination, report) =
            unsafe { stage_copy(None::<&mut HostEngine>, destination, 5, &source) }.finish();
        assert_eq!(report, CopyReport { engine_bytes: 0, cpu_bytes: source.len() - 5, fallback: None });
        assert_eq!(&destination[5..], &source[..source.len() - 5]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn copies_exactly_the_common_prefix(
            source in proptest::collection::vec(any::<u8>(), 0..700),
            destination_length in 0usize..700,
            offset in 0usize..16,
        ) {
            let mut destination = vec![0xAAu8; destination_length + offset];
            let copied = tensor_copy(&mut destination[offset..], &source);
            let expected = source.len().min(destination_length);
            prop_assert_eq!(copied, expected);
            prop_assert_eq!(&destination[offset..offset + copied], &source[..copied]);
            prop_assert!(destination[..offset].iter().all(|&byte| byte == 0xAA), "nothing before");
            prop_assert!(destination[offset + copied..].iter().all(|&byte| byte == 0xAA), "nothing after");
        }

        /// Staged copies of any length, offset and alignment write exactly the copied bytes,
        /// whoever copies them, and account for every byte.
        #[test]
        fn staged_copies_are_exact(
            length in 0usize..200_000,
            offset in 0usize..130,
            source_skew in 0usize..8,
            polls in 1u32..4,
            with_engine in any::<bool>(),
        ) {
            static MEMORY: std::sync::OnceLock<&'static crate::mm::buffer::BackedMemory> =
                std::sync::OnceLock::new();
            let backed = *MEMORY.get_or_init(|| host_backed_memory(32 * MIB));
            let source = pattern(length + source_skew, length as u8);
            let mut engine = HostEngine::new(polls);
            let mut destination = backed.alloc(256 * 1024, TensorKind::Activation).unwrap();
            destination.fill(0xAA);
            let engine_ref = if with_engine { Some(&mut engine) } else { None };
            // SAFETY: the staged copy is finished or dropped here, never leaked.
            let (destination, report) = unsafe { stage_copy(engine_ref, destination, offset, &source[source_skew..]) }.finish();
            let copied = length.min(256 * 1024 - offset);
            prop_assert_eq!(report.engine_bytes + report.cpu_bytes, copied);
            prop_assert_eq!(&destination[offset..offset + copied], &source[source_skew..source_skew + copied]);
            prop_assert!(destination[..offset].iter().all(|&byte| byte == 0xAA), "nothing before");
            prop_assert!(destination[offset + copied..].iter().all(|&byte| byte == 0xAA), "nothing after");
            if report.engine_bytes > 0 {
                prop_assert!(report.engine_bytes >= OFFLOAD_MIN_BYTES && report.cpu_bytes < 128);
            }
        }
    }
}
