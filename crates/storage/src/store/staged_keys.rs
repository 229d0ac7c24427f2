//! The ordered set of staged keys a store with applies kept behind keeps
//! for scans and checkpoints.
//!
//! A `BTreeSet<Box<[u8]>>` compares keys through their pointers: every
//! comparison of an insert into a set of a hundred thousand keys is a
//! cache miss, and those misses were the largest single cost of staging a
//! write on the engine thread (memcmp, 4% of the nodes' CPU). Each key
//! here carries its first 16 bytes as a big-endian number beside the
//! pointer, so comparisons mostly stay inside the tree's nodes.
//!
//! ## Invariants
//!
//! - The order is the keys' byte order: the heads (zero-padded) order
//!   keys whose first 16 bytes differ as their bytes do (a zero pad sorts
//!   a shorter key before every longer key it begins), and equal heads
//!   fall back to the whole keys.

use std::collections::BTreeSet;

/// Bytes of a key compared as one number.
const HEAD_BYTES: usize = 16;

/// A key with its head.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OrderedKey {
    /// The first [`HEAD_BYTES`] bytes, zero-padded, big-endian.
    head: u128,
    key: Box<[u8]>,
}

impl OrderedKey {
    fn new(key: &[u8]) -> Self {
        let mut head = [0u8; HEAD_BYTES];
        let taken = key.len().min(HEAD_BYTES);
        head[..taken].copy_from_slice(&key[..taken]);
        Self {
            head: u128::from_be_bytes(head),
            key: key.into(),
        }
    }
}

/// Staged keys in byte order, each once.
#[derive(Clone, Debug, Default)]
pub(super) struct StagedKeys(BTreeSet<OrderedKey>);

impl StagedKeys {
    /// Adds `key` (once).
    pub(super) fn insert(&mut self, key: &[u8]) {
        self.0.insert(OrderedKey::new(key));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Every key, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|ordered| &ordered.key[..])
    }

    /// The keys from `start` on, in order.
    pub(super) fn range_from<'a>(&'a self, start: &[u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .range(OrderedKey::new(start)..)
            .map(|ordered| &ordered.key[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Short alphabets and lengths around the head's size, so keys
        // share heads, pad with zeros, and end inside or past the head.
        prop::collection::vec(
            prop_oneof![Just(0u8), Just(1), Just(255), any::<u8>()],
            0..40,
        )
    }

    proptest! {
        /// The same order and the same ranges as a set of the keys.
        #[test]
        fn it_orders_keys_as_their_bytes(keys in prop::collection::vec(key(), 0..60), starts in prop::collection::vec(key(), 1..8)) {
            let mut staged = StagedKeys::default();
            let mut model = BTreeSet::new();
            for key in &keys {
                staged.insert(key);
                model.insert(key.clone());
            }
            let all: Vec<&[u8]> = staged.iter().collect();
            let expected: Vec<&[u8]> = model.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(all, expected);
            for start in starts.iter().chain(keys.iter()) {
                let from: Vec<&[u8]> = staged.range_from(start).collect();
                let expected: Vec<&[u8]> = model.range(start.clone()..).map(Vec::as_slice).collect();
                prop_assert_eq!(from, expected, "from {:?}", start);
            }
        }
    }
}
