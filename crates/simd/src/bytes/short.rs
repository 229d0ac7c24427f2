//! Keys of up to 64 bytes, compared inline without dispatch.
//!
//! Words of 4, 8 or 16 bytes are read with overlapping loads: the last
//! word starts at `len - size` even when that overlaps the previous one, so
//! no byte loop is needed for the tail. For ordering, short words are read
//! big-endian so that integer order equals lexicographic byte order; 16 to
//! 64 bytes are ordered with SSE2 on x86_64 (part of its baseline, so no
//! detection) and with 16-byte words elsewhere.

use std::cmp::Ordering;

use super::scalar::{WORD, word_be, word_le};

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

/// Orders the first `len` (16 to 64) bytes by 16-byte words, the last one
/// overlapping its predecessor. Words are compared for equality as loaded;
/// only a differing word pays for locating its first differing byte.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn compare_wide_words(a: &[u8], b: &[u8], len: usize) -> Ordering {
    let last = len - 16;
    let mut at = 0;
    loop {
        let here = at.min(last);
        let differing = wide_le(a, here) ^ wide_le(b, here);
        if differing != 0 {
            // Little-endian: the lowest set bit is in the first differing byte.
            let index = here + (differing.trailing_zeros() / 8) as usize;
            return a[index].cmp(&b[index]);
        }
        if here == last {
            return Ordering::Equal;
        }
        at += 16;
    }
}

/// Orders the first `len` (16 to 64) bytes with SSE2, which every x86_64
/// CPU has (no detection needed), in steps of two 16-byte vectors (the
/// second at the step's end, overlapping the first): their difference masks, joined into one
/// 32-bit mask, give the first differing byte as its lowest set bit. Up to
/// 32 bytes take one step; longer ones the first 32 bytes, then the last
/// 32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn compare_wide_words(a: &[u8], b: &[u8], len: usize) -> Ordering {
    if len <= 32 {
        return compare_two_vectors(a, b, len);
    }
    // The first 32 bytes, then the last 32 (overlapping them): two steps
    // of two vectors, as glibc's memcmp takes 33-64 bytes, measured
    // faster than joining all four masks.
    match compare_two_vectors(a, b, 32) {
        Ordering::Equal => compare_two_vectors(&a[len - 32..], &b[len - 32..], 32),
        order => order,
    }
}

/// [`compare_wide_words`]'s step: orders the first `len` (16 to 32) bytes
/// by the vectors at 0 and at `len - 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn compare_two_vectors(a: &[u8], b: &[u8], len: usize) -> Ordering {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8};

    assert!(len <= a.len() && len <= b.len() && (16..=32).contains(&len));
    let last = len - 16;
    let mut differing = 0u32;
    for (segment, at) in [0, last].into_iter().enumerate() {
        // SAFETY: `at <= len - 16` and both slices hold at least `len`
        // bytes (asserted above), so 16 bytes are readable at `at`; `loadu`
        // has no alignment requirement. SSE2 is part of the x86_64 baseline,
        // so the intrinsics run on every x86_64 CPU.
        let equal_mask = unsafe {
            let x = _mm_loadu_si128(a.as_ptr().add(at).cast());
            let y = _mm_loadu_si128(b.as_ptr().add(at).cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) as u32
        };
        differing |= (!equal_mask & 0xFFFF) << (16 * segment);
    }
    if differing == 0 {
        return Ordering::Equal;
    }
    let first = differing.trailing_zeros() as usize;
    // Branch-free (a branch here measured 10% slower at 64 bytes).
    let index = (first / 16 * 16).min(last) + first % 16;
    debug_assert!(index < len);
    // SAFETY: bit `first` is byte `first % 16` of the vector at 0 or at
    // `last = len - 16`, so `index < len`, which both slices hold
    // (asserted above). Unchecked, because the two bounds checks and their
    // panic paths cost this hot inline path a register spill.
    unsafe { a.get_unchecked(index).cmp(b.get_unchecked(index)) }
}
