//! Which client keys exist, and their headers, for the keys the apply
//! path wrote or read since it was last cleared.

use std::collections::HashMap;

use dr_storage::short_key::ShortKey;

use super::record::Meta;

/// Which client keys exist (with their headers), for the keys the apply
/// path wrote or read since it was last cleared. Most writes need only
/// that of their key's old state (`SET`, `MSET`, `DEL`, `NX`/`XX`: for
/// the key count, the type and the expiry index), and a hit spares the
/// store read, which is most of an apply's cost.
///
/// Invariant: what it says is what the store holds, because every write
/// of a client key goes through the apply path, which records it; the
/// other writers, a snapshot install and a flush, are followed by
/// [`clear`](Self::clear). Bounded in bytes (keys may be up to 64 KiB):
/// past its budget it starts over.
///
/// Started on a keyspace known empty ([`knows_every_key`](Self::knows_every_key)),
/// it knows every key until it forgets one (its budget, a clear): then a
/// key it does not hold is absent, and a write of a new key reads
/// nothing from the store.
#[derive(Debug)]
pub struct PresenceCache {
    /// Keyed inline when short: a lookup compares the key in its bucket.
    known: HashMap<ShortKey, Option<Meta>>,
    /// Every client key the store holds is in `known`.
    complete: bool,
    bytes: usize,
    bytes_max: usize,
}

impl Default for PresenceCache {
    fn default() -> Self {
        Self::with_limit(PRESENCE_BYTES_MAX)
    }
}

/// Bytes a [`PresenceCache`] may hold by default: about 256k keys of
/// 64 bytes.
pub const PRESENCE_BYTES_MAX: usize = 32 << 20;

/// What a remembered key costs beyond its bytes (the map's slot with
/// the header and the key inline, or the key's allocation when it is
/// longer; an upper bound for keys kept inline).
pub(super) const PRESENCE_ENTRY_OVERHEAD: usize = 96;

impl PresenceCache {
    /// A cache that holds at most `bytes_max` bytes.
    pub fn with_limit(bytes_max: usize) -> Self {
        Self {
            known: HashMap::new(),
            complete: false,
            bytes: 0,
            bytes_max,
        }
    }

    /// Forgets everything (after the store changed behind the apply path).
    pub fn clear(&mut self) {
        self.known = HashMap::new();
        self.complete = false;
        self.bytes = 0;
    }

    /// Says that the store holds no client key besides those it knows
    /// (call it when the keyspace is empty and the cache too, or just
    /// cleared after the keyspace was emptied): from now on, until it
    /// forgets a key, a key it does not know is absent.
    pub fn knows_every_key(&mut self) {
        self.complete = true;
    }

    /// Whether a key it does not know is absent.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The bytes it holds, as its budget counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What it knows of a stored key: `Some(None)` absent, `None` unknown.
    pub(super) fn get(&self, stored_key: &[u8]) -> Option<Option<Meta>> {
        match self.known.get(stored_key) {
            Some(known) => Some(*known),
            None => self.complete.then_some(None),
        }
    }

    pub(super) fn record(&mut self, stored_key: &[u8], meta: Option<Meta>) {
        if let Some(known) = self.known.get_mut(stored_key) {
            *known = meta;
            return;
        }
        let cost = stored_key.len() + PRESENCE_ENTRY_OVERHEAD;
        if cost > self.bytes_max {
            // Not remembered: it no longer knows every key.
            self.complete = false;
            return;
        }
        if self.bytes + cost > self.bytes_max {
            self.clear();
        }
        self.bytes += cost;
        self.known.insert(ShortKey::new(stored_key), meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::record::Kind;

    #[test]
    fn the_presence_cache_keeps_its_byte_budget_whatever_the_key_sizes() {
        let budget = 1 << 20;
        let mut cache = PresenceCache::with_limit(budget);
        let meta = Meta {
            kind: Kind::String,
            version: 1,
            expire_at_ms: None,
        };
        for round in 0..200usize {
            let key = vec![round as u8; (round * 997) % (64 << 10) + 1];
            let known = (round % 2 == 0).then_some(meta);
            cache.record(&key, known);
            assert!(cache.bytes() <= budget, "over budget after {round} keys");
            assert_eq!(cache.get(&key), Some(known));
        }
        cache.record(&vec![1; budget], Some(meta));
        assert_eq!(
            cache.get(&vec![1; budget]),
            None,
            "a key over the budget is not kept"
        );
        cache.clear();
        assert!(cache.is_empty() && cache.bytes() == 0);
    }

    #[test]
    fn it_knows_every_key_until_it_forgets_one() {
        let meta = Meta {
            kind: Kind::String,
            version: 1,
            expire_at_ms: None,
        };
        let mut cache = PresenceCache::with_limit(3 * (2 + PRESENCE_ENTRY_OVERHEAD));
        assert_eq!(cache.get(b"never"), None, "unknown by default");
        cache.knows_every_key();
        assert_eq!(
            cache.get(b"never"),
            Some(None),
            "absent once it knows every key"
        );
        cache.record(b"k1", Some(meta));
        assert_eq!(cache.get(b"k1"), Some(Some(meta)));
        // A key too large to remember: it no longer knows every key.
        cache.record(&[7; 1000], Some(meta));
        assert!(!cache.is_complete());
        assert_eq!(cache.get(b"never"), None);
        // Past its budget it starts over and no longer knows every key.
        cache.knows_every_key();
        for key in [b"k2", b"k3", b"k4"] {
            cache.record(key, Some(meta));
        }
        assert!(!cache.is_complete());
        assert_eq!(cache.get(b"never"), None);
        cache.knows_every_key();
        cache.clear();
        assert!(!cache.is_complete(), "a clear forgets it");
    }
}
