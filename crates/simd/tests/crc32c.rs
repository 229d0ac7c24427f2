//! Every CRC32C kernel against the scalar kernel and the `crc32c` crate:
//! all lengths 0..=1024 at every alignment 0..64, random splits for
//! `update` and `combine`, and lengths large enough for many fused blocks.

use dr_simd::crc32c::{combine, update};
use dr_simd::{Crc32cKernel, crc32c};
use proptest::prelude::*;

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Checks every available kernel, and the dispatched entry point, on
/// `data` against the reference crate.
fn check(data: &[u8], context: &str) {
    let expected = ::crc32c::crc32c(data);
    for kernel in Crc32cKernel::available() {
        assert_eq!(
            kernel.update(0, data),
            expected,
            "{} {context}",
            kernel.name()
        );
    }
    assert_eq!(crc32c(data), expected, "dispatched {context}");
}

#[test]
fn standard_check_value() {
    check(b"123456789", "check value");
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn scalar_kernel_runs_and_matches_on_every_machine() {
    // The scalar fallback is what non-x86 machines run: test it here
    // directly rather than trusting that dispatch never picks it.
    assert!(Crc32cKernel::Scalar.is_available());
    let data = pattern(5000, 42);
    for len in [0, 1, 15, 16, 17, 255, 4096, 5000] {
        assert_eq!(
            Crc32cKernel::Scalar.update(0, &data[..len]),
            ::crc32c::crc32c(&data[..len])
        );
    }
}

#[test]
fn every_length_to_1024_at_every_alignment() {
    let buffer = pattern(1024 + 64, 7);
    for alignment in 0..64 {
        for len in 0..=1024 {
            check(
                &buffer[alignment..alignment + len],
                &format!("len {len} alignment {alignment}"),
            );
        }
    }
}

#[test]
fn fused_block_boundaries_and_large_inputs() {
    // Lengths around the fused kernels' block sizes (136 and 200 bytes per
    // iteration, 4 to 128 iterations per block) and well past them.
    let data = pattern(1 << 20, 99);
    let mut lengths = vec![(1 << 20) - 1, 1 << 20, 65_536, 4096, 25_600, 17_408];
    for per_iteration in [136, 200] {
        for iterations in [4, 5, 127, 128, 129, 256, 300] {
            let len: usize = per_iteration * iterations;
            lengths.extend([
                len - 1,
                len,
                len + 1,
                len + 15,
                len + 16,
                len + 63,
                len + 64,
            ]);
        }
    }
    for len in lengths {
        check(&data[..len], &format!("len {len}"));
    }
}

#[test]
fn every_kernel_continues_a_nonzero_crc() {
    let data = pattern(3000, 5);
    for kernel in Crc32cKernel::available() {
        for split in [0, 1, 63, 64, 100, 1500, 2999, 3000] {
            let (a, b) = data.split_at(split);
            let continued = kernel.update(kernel.update(0, a), b);
            assert_eq!(
                continued,
                ::crc32c::crc32c(&data),
                "{} split {split}",
                kernel.name()
            );
        }
    }
}

#[test]
fn all_ones_and_all_zeros() {
    for byte in [0x00u8, 0xFF] {
        for len in [1, 32, 64, 1000, 10_000] {
            check(&vec![byte; len], &format!("byte {byte:#x} len {len}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_match_the_reference(data in prop::collection::vec(any::<u8>(), 0..20_000)) {
        let expected = ::crc32c::crc32c(&data);
        for kernel in Crc32cKernel::available() {
            prop_assert_eq!(kernel.update(0, &data), expected);
        }
    }

    #[test]
    fn update_and_combine_agree_with_one_shot(
        data in prop::collection::vec(any::<u8>(), 0..5_000),
        split_seed in any::<usize>(),
    ) {
        let split = split_seed % (data.len() + 1);
        let (a, b) = data.split_at(split);
        let whole = crc32c(&data);
        prop_assert_eq!(update(crc32c(a), b), whole);
        prop_assert_eq!(combine(crc32c(a), crc32c(b), b.len() as u64), whole);
    }
}
