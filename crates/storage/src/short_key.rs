//! A hash map key that keeps short keys inline.
//!
//! The in-memory maps on the write path (the read mirror's generations,
//! drkv's presence cache) hold hundreds of thousands of keys. With each
//! key in its own allocation, a lookup that finds its bucket still misses
//! the cache once more to compare the key's bytes; a key of up to
//! [`INLINE_BYTES`] bytes kept in the bucket is compared where it lies.
//! Longer keys are boxed as before.
//!
//! Invariant: a `ShortKey` hashes, compares and orders exactly as its
//! bytes do (`Borrow<[u8]>`), so maps keyed by it are looked up with a
//! plain `&[u8]`.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The longest key kept inline: the key is then 32 bytes, like a boxed
/// slice's 16 plus its allocation's header, and holds an expiry-index key
/// (9 bytes) of a 22-byte client key.
pub const INLINE_BYTES: usize = 30;

/// A key's bytes, inline when short (see the module documentation).
#[derive(Clone)]
pub struct ShortKey(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Boxed(Box<[u8]>),
}

impl ShortKey {
    /// A copy of `key`.
    pub fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            let len = u8::try_from(key.len()).expect("INLINE_BYTES fits a u8");
            Self(Repr::Inline { len, bytes })
        } else {
            Self(Repr::Boxed(key.into()))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Boxed(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for ShortKey {
    fn from(key: &[u8]) -> Self {
        Self::new(key)
    }
}

impl Deref for ShortKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for ShortKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for ShortKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so that `&[u8]` finds it (`Borrow`).
        self.as_bytes().hash(state);
    }
}

impl PartialEq for ShortKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortKey {}

impl PartialOrd for ShortKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii().to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::hash::BuildHasher;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn it_is_no_larger_than_a_boxed_key_and_its_allocation_header() {
        assert_eq!(size_of::<ShortKey>(), 32);
    }

    proptest! {
        /// Keys on both sides of the inline limit: a map keyed by
        /// `ShortKey` answers `&[u8]` lookups as one keyed by `Vec<u8>`,
        /// and keys hash and order as their bytes.
        #[test]
        fn it_behaves_as_its_bytes(keys in prop::collection::vec(prop::collection::vec(0u8..4, 0..40), 1..60)) {
            let mut short: HashMap<ShortKey, usize> = HashMap::new();
            let mut plain: HashMap<Vec<u8>, usize> = HashMap::new();
            let mut ordered: BTreeMap<ShortKey, usize> = BTreeMap::new();
            for (at, key) in keys.iter().enumerate() {
                let made = ShortKey::new(key);
                prop_assert_eq!(made.as_bytes(), &key[..]);
                prop_assert_eq!(short.hasher().hash_one(key.as_slice()), short.hasher().hash_one(&made));
                short.insert(made.clone(), at);
                ordered.insert(made, at);
                plain.insert(key.clone(), at);
            }
            for key in &keys {
                prop_assert_eq!(short.get(key.as_slice()), plain.get(key));
            }
            let sorted: Vec<&[u8]> = ordered.keys().map(|key| key.as_bytes()).collect();
            let mut expected: Vec<&[u8]> = plain.keys().map(Vec::as_slice).collect();
            expected.sort();
            prop_assert_eq!(sorted, expected);
        }
    }
}
