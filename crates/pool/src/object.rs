//! The object pool: reusable values of one type, reset before reuse.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_queue::ArrayQueue;

/// A snapshot of an object pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectPoolStats {
    /// Requests served from an idle object.
    pub hits: u64,
    /// Requests that created a new object.
    pub misses: u64,
    /// Objects dropped on return because the pool was full.
    pub discards: u64,
    /// Idle objects now.
    pub idle: usize,
}

struct Shared<T> {
    idle: ArrayQueue<T>,
    create: Box<dyn Fn() -> T + Send + Sync>,
    reset: Box<dyn Fn(&mut T) + Send + Sync>,
    hits: AtomicU64,
    misses: AtomicU64,
    discards: AtomicU64,
}

/// A bounded pool of reusable `T`s (message batches, entry vectors).
///
/// `create` makes a new object when the pool is empty; `reset` runs on every
/// returned object before it is pooled (clear a vector, zero a counter), so
/// a handed-out object is always in its reset state. At most `idle_max`
/// objects wait in the pool; more are dropped on return.
pub struct ObjectPool<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for ObjectPool<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for ObjectPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T: Send + 'static> ObjectPool<T> {
    /// A pool keeping at most `idle_max` (at least 1) idle objects.
    pub fn new(
        idle_max: usize,
        create: impl Fn() -> T + Send + Sync + 'static,
        reset: impl Fn(&mut T) + Send + Sync + 'static,
    ) -> Self {
        let shared = Shared {
            idle: ArrayQueue::new(idle_max.max(1)),
            create: Box::new(create),
            reset: Box::new(reset),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discards: AtomicU64::new(0),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// An object in its reset state, pooled or new.
    pub fn get(&self) -> Pooled<T> {
        let object = match self.shared.idle.pop() {
            Some(object) => {
                self.shared.hits.fetch_add(1, Relaxed);
                object
            }
            None => {
                self.shared.misses.fetch_add(1, Relaxed);
                (self.shared.create)()
            }
        };
        Pooled {
            object: Some(object),
            pool: Arc::clone(&self.shared),
        }
    }
}

impl<T> ObjectPool<T> {
    /// The pool's counters now.
    pub fn stats(&self) -> ObjectPoolStats {
        ObjectPoolStats {
            hits: self.shared.hits.load(Relaxed),
            misses: self.shared.misses.load(Relaxed),
            discards: self.shared.discards.load(Relaxed),
            idle: self.shared.idle.len(),
        }
    }
}

/// An object from an [`ObjectPool`], returned (after `reset`) when dropped.
pub struct Pooled<T> {
    /// Always `Some` until dropped or detached.
    object: Option<T>,
    pool: Arc<Shared<T>>,
}

impl<T> Pooled<T> {
    /// Takes the object out of the pool's care.
    pub fn detach(mut self) -> T {
        self.object.take().expect("a live Pooled holds its object")
    }
}

impl<T> Deref for Pooled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.object
            .as_ref()
            .expect("a live Pooled holds its object")
    }
}

impl<T> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.object
            .as_mut()
            .expect("a live Pooled holds its object")
    }
}

impl<T: fmt::Debug> fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pooled").field(&self.object).finish()
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        let Some(mut object) = self.object.take() else {
            return;
        };
        (self.pool.reset)(&mut object);
        if self.pool.idle.push(object).is_err() {
            self.pool.discards.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_back_reset() {
        let pool = ObjectPool::new(4, Vec::<u32>::new, Vec::clear);
        let mut batch = pool.get();
        batch.extend([1, 2, 3]);
        let capacity = batch.capacity();
        drop(batch);
        let again = pool.get();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity, "the allocation is reused");
        assert_eq!(
            pool.stats(),
            ObjectPoolStats {
                hits: 1,
                misses: 1,
                discards: 0,
                idle: 0
            }
        );
    }

    #[test]
    fn a_full_pool_drops_returns() {
        let pool = ObjectPool::new(1, || 0u64, |value| *value = 0);
        let (a, b) = (pool.get(), pool.get());
        drop((a, b));
        assert_eq!(pool.stats().discards, 1);
        assert_eq!(pool.stats().idle, 1);
    }

    #[test]
    fn detached_objects_stay_out() {
        let pool = ObjectPool::new(2, String::new, String::clear);
        let owned: String = pool.get().detach();
        drop(owned);
        assert_eq!(pool.stats().idle, 0);
    }
}
