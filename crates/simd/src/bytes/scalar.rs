//! Portable byte comparison on 8-byte words.
//!
//! Words are read with overlapping loads: the last word of a slice starts
//! at `len - 8` even when that overlaps the previous one, so no byte loop is
//! needed for the tail. For ordering, words are read big-endian so that
//! integer order equals lexicographic byte order.

use std::cmp::Ordering;

const WORD: usize = 8;

#[inline(always)]
fn word_le(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; WORD];
    word.copy_from_slice(&bytes[at..at + WORD]);
    u64::from_le_bytes(word)
}

#[inline(always)]
fn word_be(bytes: &[u8], at: usize) -> u64 {
    word_le(bytes, at).swap_bytes()
}

#[inline(always)]
fn half_word_be(bytes: &[u8], at: usize) -> u32 {
    let mut half = [0u8; 4];
    half.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(half)
}

#[inline(always)]
fn wide_le(bytes: &[u8], at: usize) -> u128 {
    let mut wide = [0u8; 16];
    wide.copy_from_slice(&bytes[at..at + 16]);
    u128::from_le_bytes(wide)
}

#[inline(always)]
fn wide_be(bytes: &[u8], at: usize) -> u128 {
    wide_le(bytes, at).swap_bytes()
}

/// Equality of two slices of the same length, at most 64 bytes, with two
/// or four overlapping loads per side and no loop.
#[inline(always)]
pub(super) fn eq_short(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    debug_assert!(len == b.len() && len <= 64);
    if len > 32 {
        let differing = [0, 16, len - 32, len - 16]
            .into_iter()
            .fold(0, |acc, at| acc | (wide_le(a, at) ^ wide_le(b, at)));
        differing == 0
    } else if len >= 16 {
        let first = wide_le(a, 0) ^ wide_le(b, 0);
        let last = wide_le(a, len - 16) ^ wide_le(b, len - 16);
        (first | last) == 0
    } else if len >= WORD {
        let first = word_le(a, 0) ^ word_le(b, 0);
        let last = word_le(a, len - WORD) ^ word_le(b, len - WORD);
        (first | last) == 0
    } else if len >= 4 {
        let first = half_word_be(a, 0) ^ half_word_be(b, 0);
        let last = half_word_be(a, len - 4) ^ half_word_be(b, len - 4);
        (first | last) == 0
    } else if len > 0 {
        // Positions 0, len/2 and len-1 cover every byte of 1..=3 bytes.
        let middle = len / 2;
        ((a[0] ^ b[0]) | (a[middle] ^ b[middle]) | (a[len - 1] ^ b[len - 1])) == 0
    } else {
        true
    }
}

/// Ordering of two slices the shorter of which has at most 64 bytes.
#[inline(always)]
pub(super) fn compare_short(a: &[u8], b: &[u8]) -> Ordering {
    let len = a.len().min(b.len());
    debug_assert!(len <= 64);
    let common = if len >= 16 {
        compare_wide_words(a, b, len)
    } else if len >= WORD {
        word_be(a, 0)
            .cmp(&word_be(b, 0))
            .then_with(|| word_be(a, len - WORD).cmp(&word_be(b, len - WORD)))
    } else if len >= 4 {
        half_word_be(a, 0)
            .cmp(&half_word_be(b, 0))
            .then_with(|| half_word_be(a, len - 4).cmp(&half_word_be(b, len - 4)))
    } else {
        a[..len].iter().cmp(b[..len].iter())
    };
    common.then(a.len().cmp(&b.len()))
}

/// Orders the first `len` (16 to 64) bytes by 16-byte big-endian words, the
/// last one overlapping its predecessor.
#[inline(always)]
fn compare_wide_words(a: &[u8], b: &[u8], len: usize) -> Ordering {
    let last = len - 16;
    let mut at = 0;
    loop {
        let here = at.min(last);
        let (x, y) = (wide_be(a, here), wide_be(b, here));
        if x != y {
            return x.cmp(&y);
        }
        if here == last {
            return Ordering::Equal;
        }
        at += 16;
    }
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
