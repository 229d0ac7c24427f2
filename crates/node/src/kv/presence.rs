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
#[derive(Debug)]
pub struct PresenceCache {
    /// Keyed inline when short: a lookup compares the key in its bucket.
    known: HashMap<ShortKey, Option<Meta>>,
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

/// What a remembered key costs beyond its bytes (the map's slot, the
/// header, the key's allocation).
pub(super) const PRESENCE_ENTRY_OVERHEAD: usize = 96;

impl PresenceCache {
    /// A cache that holds at most `bytes_max` bytes.
    pub fn with_limit(bytes_max: usize) -> Self {
        Self {
            known: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Forgets everything (after the store changed behind the apply path).
    pub fn clear(&mut self) {
        self.known = HashMap::new();
        self.bytes = 0;
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
        self.known.get(stored_key).copied()
    }

    pub(super) fn record(&mut self, stored_key: &[u8], meta: Option<Meta>) {
        if let Some(known) = self.known.get_mut(stored_key) {
            *known = meta;
            return;
        }
        let cost = stored_key.len() + PRESENCE_ENTRY_OVERHEAD;
        if cost > self.bytes_max {
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
}
