//! The staged keys a store with applies kept behind keeps for scans and
//! checkpoints, put in byte order when something asks for the order,
//! not as each write is staged.
//!
//! Ordering keys as they were staged (one `BTreeSet` insert per write,
//! each comparison a likely cache miss in a set of a hundred thousand
//! keys) cost 4-7% of the engine threads' CPU, on every write, for an
//! order that only scans and checkpoints use. Now a staged key is pushed
//! on a vector; a scan sorts the keys that arrived since the last scan
//! and inserts them into the ordered set (a sorted run walks the tree's
//! nodes in order); a freeze hands all of them to a checkpoint, which
//! sorts them once as a vector (a background checkpoint on its own
//! thread).
//!
//! Each key carries its first 16 bytes as a big-endian number beside the
//! pointer, so comparisons mostly stay inside the tree's nodes or the
//! sorted vector.
//!
//! ## Invariants
//!
//! - The order is the keys' byte order: the heads (zero-padded) order
//!   keys whose first 16 bytes differ as their bytes do (a zero pad sorts
//!   a shorter key before every longer key it begins), and equal heads
//!   fall back to the whole keys.
//! - Every key given to [`DirtyKeys::insert`] since the last clear or
//!   freeze is in the dirty keys' order once a scan takes it, each once
//!   (a key given twice is kept once).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::OnceLock;

use parking_lot::{Mutex, MutexGuard};

/// Bytes of a key compared as one number.
const HEAD_BYTES: usize = 16;

/// The first [`HEAD_BYTES`] bytes of `key`, zero-padded, big-endian.
fn head_of(key: &[u8]) -> u128 {
    let mut head = [0u8; HEAD_BYTES];
    let taken = key.len().min(HEAD_BYTES);
    head[..taken].copy_from_slice(&key[..taken]);
    u128::from_be_bytes(head)
}

/// A key with its head.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OrderedKey {
    /// The first [`HEAD_BYTES`] bytes, zero-padded, big-endian.
    head: u128,
    key: Box<[u8]>,
}

impl OrderedKey {
    fn new(key: &[u8]) -> Self {
        Self {
            head: head_of(key),
            key: key.into(),
        }
    }

    /// How this key compares with `key`, whose head is `head`.
    fn cmp_with(&self, head: u128, key: &[u8]) -> Ordering {
        self.head.cmp(&head).then_with(|| self.key[..].cmp(key))
    }
}

/// The keys staged since the last freeze: pushed as they come, ordered
/// when a scan asks.
#[derive(Debug, Default)]
pub(super) struct DirtyKeys(Mutex<Dirty>);

#[derive(Debug, Default)]
struct Dirty {
    /// Keys in order, each once.
    ordered: BTreeSet<OrderedKey>,
    /// Keys staged since the last ordering, as they came.
    arrived: Vec<OrderedKey>,
}

impl DirtyKeys {
    /// Adds `key` (kept once however often it is added).
    pub(super) fn insert(&mut self, key: &[u8]) {
        self.0.get_mut().arrived.push(OrderedKey::new(key));
    }

    pub(super) fn is_empty(&mut self) -> bool {
        let dirty = self.0.get_mut();
        dirty.ordered.is_empty() && dirty.arrived.is_empty()
    }

    pub(super) fn clear(&mut self) {
        *self.0.get_mut() = Dirty::default();
    }

    /// Every key, in order, for as long as the view is held (the owner's
    /// scans; nothing else shares the keys).
    pub(super) fn ordered(&self) -> OrderedDirty<'_> {
        let mut dirty = self.0.lock();
        let mut arrived = std::mem::take(&mut dirty.arrived);
        arrived.sort_unstable();
        dirty.ordered.extend(arrived);
        OrderedDirty(dirty)
    }

    /// Takes every key for a checkpoint (on its own thread or the
    /// owner's), which orders them; the dirty keys start again empty.
    pub(super) fn freeze(&mut self) -> FrozenKeys {
        let Dirty {
            ordered,
            mut arrived,
        } = std::mem::take(self.0.get_mut());
        arrived.extend(ordered);
        FrozenKeys {
            arrived: Mutex::new(arrived),
            ordered: OnceLock::new(),
        }
    }
}

/// The dirty keys in order (see [`DirtyKeys::ordered`]).
pub(super) struct OrderedDirty<'a>(MutexGuard<'a, Dirty>);

impl OrderedDirty<'_> {
    /// The keys from `start` on, in order.
    pub(super) fn range_from<'a>(&'a self, start: &[u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .ordered
            .range(OrderedKey::new(start)..)
            .map(|ordered| &ordered.key[..])
    }
}

/// A checkpoint's keys: ordered once, by whichever comes first of its
/// thread and a scan on the owner's.
#[derive(Debug)]
pub(super) struct FrozenKeys {
    /// The keys as they were staged, until ordered.
    arrived: Mutex<Vec<OrderedKey>>,
    ordered: OnceLock<Vec<OrderedKey>>,
}

impl FrozenKeys {
    /// The keys sorted, each once (sorts them on the first call; a
    /// concurrent caller waits for that sort).
    fn ordered(&self) -> &[OrderedKey] {
        self.ordered.get_or_init(|| {
            let mut keys = std::mem::take(&mut *self.arrived.lock());
            keys.sort_unstable();
            keys.dedup();
            keys
        })
    }

    /// Every key, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ordered().iter().map(|ordered| &ordered.key[..])
    }

    /// The keys from `start` on, in order.
    pub(super) fn range_from<'a>(&'a self, start: &[u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let keys = self.ordered();
        let head = head_of(start);
        let from = keys.partition_point(|key| key.cmp_with(head, start) == Ordering::Less);
        keys[from..].iter().map(|ordered| &ordered.key[..])
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

    /// `all` and `range` (the keys from a start on) as a set of the
    /// keys in `model` would give them.
    fn same_as_a_set<'a>(
        all: Vec<&[u8]>,
        range: impl Fn(&[u8]) -> Vec<&'a [u8]>,
        model: &BTreeSet<Vec<u8>>,
        starts: &[Vec<u8>],
    ) -> Result<(), TestCaseError> {
        let expected: Vec<&[u8]> = model.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(all, expected);
        for start in starts.iter().chain(model.iter()) {
            let expected: Vec<&[u8]> = model.range(start.clone()..).map(Vec::as_slice).collect();
            prop_assert_eq!(range(start), expected, "from {:?}", start);
        }
        Ok(())
    }

    proptest! {
        /// Keys staged in rounds with a scan after each: the dirty keys
        /// order and range as a set of them would, and so do the frozen
        /// keys after a freeze (with keys staged again since the last
        /// scan, and some staged twice).
        #[test]
        fn it_orders_keys_as_their_bytes(
            rounds in prop::collection::vec(prop::collection::vec(key(), 0..20), 1..4),
            unscanned in prop::collection::vec(key(), 0..20),
            starts in prop::collection::vec(key(), 1..8),
        ) {
            let mut dirty = DirtyKeys::default();
            let mut model = BTreeSet::new();
            for round in &rounds {
                for key in round.iter().chain(round.iter().take(2)) {
                    dirty.insert(key);
                    model.insert(key.clone());
                }
                let ordered = dirty.ordered();
                // Every key: the keys from the empty key on.
                same_as_a_set(ordered.range_from(&[]).collect(), |start| ordered.range_from(start).collect(), &model, &starts)?;
            }
            for key in unscanned.iter().chain(rounds[0].iter()) {
                dirty.insert(key);
                model.insert(key.clone());
            }
            let frozen = dirty.freeze();
            prop_assert!(dirty.is_empty());
            prop_assert_eq!(dirty.ordered().range_from(&[]).count(), 0);
            same_as_a_set(frozen.iter().collect(), |start| frozen.range_from(start).collect(), &model, &starts)?;
        }
    }
}
