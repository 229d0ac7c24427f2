//! Every byte kernel against slice `==` and `Ord::cmp`: every length to
//! 1024 at every alignment, a difference at every position, and prefixes.

use std::cmp::Ordering;

use dr_simd::{BytesKernel, compare, eq};
use proptest::prelude::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Checks every available kernel and the dispatched functions against std.
fn check(a: &[u8], b: &[u8]) {
    let (expected_eq, expected_order) = (a == b, a.cmp(b));
    let context = || format!("a len {} b len {}", a.len(), b.len());
    for kernel in BytesKernel::available() {
        assert_eq!(
            kernel.eq(a, b),
            expected_eq,
            "{} eq {}",
            kernel.name(),
            context()
        );
        assert_eq!(
            kernel.compare(a, b),
            expected_order,
            "{} compare {}",
            kernel.name(),
            context()
        );
    }
    assert_eq!(eq(a, b), expected_eq, "eq {}", context());
    assert_eq!(compare(a, b), expected_order, "compare {}", context());
}

#[test]
fn equal_slices_of_every_length_at_every_alignment() {
    let left = pattern(1024 + 64, 3);
    let right = pattern(1024 + 64, 3);
    for alignment in 0..64 {
        for len in 0..=1024 {
            // Offset the two slices differently so both alignments vary.
            let other = (alignment * 7) % 64;
            let a = &left[alignment..alignment + len];
            let b = &right[other..other + len];
            if a == b {
                check(a, b);
            }
            check(a, &left[alignment..alignment + len]);
        }
    }
}

#[test]
fn a_difference_at_every_position() {
    for len in (0..=300).chain([511, 512, 513, 1023, 1024, 4096]) {
        let base = pattern(len, 9);
        for position in 0..len {
            for delta in [1u8, 0x80, 0xFF] {
                let mut changed = base.clone();
                changed[position] = changed[position].wrapping_add(delta);
                check(&base, &changed);
                check(&changed, &base);
            }
        }
    }
}

#[test]
fn a_difference_at_every_position_at_every_alignment() {
    // The vector kernels align their loop to `a`: move both slices through
    // every start so every loop shape meets a difference everywhere.
    for len in [65, 129, 257, 600] {
        let base = pattern(len + 64, 5);
        for alignment in 0..33 {
            let a = &base[alignment..alignment + len];
            let mut changed = a.to_vec();
            for position in 0..len {
                changed[position] ^= 0x40;
                check(a, &changed);
                check(&changed, a);
                changed[position] ^= 0x40;
            }
        }
    }
}

#[test]
fn prefixes_order_before_longer_slices() {
    let long = pattern(2000, 1);
    for len in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 1999] {
        check(&long[..len], &long);
        check(&long, &long[..len]);
        check(&long[..len], &long[..len + 1]);
    }
}

#[test]
fn scalar_kernel_runs_and_matches_on_every_machine() {
    assert!(BytesKernel::Scalar.is_available());
    let a = pattern(100, 4);
    let mut b = a.clone();
    b[77] ^= 1;
    assert!(BytesKernel::Scalar.eq(&a, &a));
    assert!(!BytesKernel::Scalar.eq(&a, &b));
    assert_eq!(BytesKernel::Scalar.compare(&a, &b), a.cmp(&b));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_pairs_agree_with_std(
        a in prop::collection::vec(0u8..4, 0..200),
        b in prop::collection::vec(0u8..4, 0..200),
    ) {
        // A tiny alphabet makes long common prefixes likely.
        for kernel in BytesKernel::available() {
            prop_assert_eq!(kernel.eq(&a, &b), a == b);
            prop_assert_eq!(kernel.compare(&a, &b), a.cmp(&b));
        }
        prop_assert_eq!(compare(&a, &b), a.cmp(&b));
        prop_assert_eq!(eq(&a, &b), a == b);
        prop_assert_eq!(compare(&a, &a), Ordering::Equal);
    }
}
