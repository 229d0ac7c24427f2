//! The portable kernel for keys longer than the inline limit: 8-byte words.
//!
//! Words are compared for equality as loaded, and the last word overlaps
//! its predecessor (it starts at `len - 8`), so there is no byte loop for
//! the tail. For ordering, a differing word is read big-endian so that
//! integer order equals lexicographic byte order.

use std::cmp::Ordering;

/// The word size of the portable code, in bytes.
pub(super) const WORD: usize = 8;

#[inline(always)]
pub(super) fn word_le(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; WORD];
    word.copy_from_slice(&bytes[at..at + WORD]);
    u64::from_le_bytes(word)
}

#[inline(always)]
pub(super) fn word_be(bytes: &[u8], at: usize) -> u64 {
    word_le(bytes, at).swap_bytes()
}

/// Equality of two slices of the same length, at least 8 bytes.
pub(super) fn eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    debug_assert!(len == b.len() && len >= WORD);
    let (words_a, _) = a.as_chunks::<WORD>();
    let (words_b, _) = b.as_chunks::<WORD>();
    let body_equal = words_a.iter().zip(words_b).all(|(x, y)| x == y);
    body_equal && word_le(a, len - WORD) == word_le(b, len - WORD)
}

/// Ordering of two slices whose shorter one has at least 8 bytes.
pub(super) fn compare(a: &[u8], b: &[u8]) -> Ordering {
    let len = a.len().min(b.len());
    debug_assert!(len >= WORD);
    let (a_common, b_common) = (&a[..len], &b[..len]);
    let (words_a, _) = a_common.as_chunks::<WORD>();
    let (words_b, _) = b_common.as_chunks::<WORD>();
    for (index, (x, y)) in words_a.iter().zip(words_b).enumerate() {
        if x != y {
            let at = index * WORD;
            return word_be(a_common, at).cmp(&word_be(b_common, at));
        }
    }
    word_be(a_common, len - WORD)
        .cmp(&word_be(b_common, len - WORD))
        .then(a.len().cmp(&b.len()))
}
