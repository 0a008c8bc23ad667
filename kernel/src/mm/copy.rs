//! `tensor_copy`: bulk copies of tensor bytes, 128 bits at a time with NEON on aarch64 and a
//! plain copy elsewhere. This is the one module of the memory manager that touches memory.

// Unsafe code exists only for the NEON intrinsics; everywhere else this module is safe Rust.
#![cfg_attr(not(all(target_arch = "aarch64", target_feature = "neon")), forbid(unsafe_code))]

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

/// Copies whole [`COPY_STEP`] blocks with 128-bit NEON loads and stores.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn copy_bulk(destination: &mut [u8], source: &[u8]) {
    use core::arch::aarch64::{vld1q_u8, vst1q_u8};
    debug_assert_eq!(destination.len(), source.len());
    debug_assert_eq!(source.len() % COPY_STEP, 0);
    for (to, from) in destination.chunks_exact_mut(COPY_STEP).zip(source.chunks_exact(COPY_STEP)) {
        // SAFETY: `from` and `to` are exactly COPY_STEP (64) bytes long, so the four 16-byte
        // loads at offsets 0, 16, 32, 48 read inside `from` and the four stores write inside
        // `to`; vld1q/vst1q have no alignment requirement, and NEON is enabled (cfg above).
        unsafe {
            let (input, output) = (from.as_ptr(), to.as_mut_ptr());
            let first = vld1q_u8(input);
            let second = vld1q_u8(input.add(16));
            let third = vld1q_u8(input.add(32));
            let fourth = vld1q_u8(input.add(48));
            vst1q_u8(output, first);
            vst1q_u8(output.add(16), second);
            vst1q_u8(output.add(32), third);
            vst1q_u8(output.add(48), fourth);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

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
    }
}
