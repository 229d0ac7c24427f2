//! The buffer pool: size classes of `BytesMut` buffers, bounded by a byte
//! budget, handed out as [`PooledBuffer`] and taken back on drop.
//!
//! # Layout: thread magazines over a shared depot
//!
//! Bonwick's magazine design (the one behind Solaris' and jemalloc's
//! thread caches). Each thread keeps, per pool and size class, two
//! *magazines*: small stacks of idle buffers. A get pops from the loaded
//! magazine and a return pushes onto it, with no atomic operation and no
//! lock: a thread-local lookup, a `Vec` pop or push and three counter
//! stores by their only writer. Only when the loaded magazine runs empty
//! (or full) does the thread swap in its other magazine, or trade a whole
//! magazine with the pool's shared *depot* (a lock-free queue of full
//! magazines per class). So a buffer filled on one thread and dropped on
//! another (the receive path) costs one queue operation per magazine, not
//! per buffer.
//!
//! Each buffer lives in a `Box<BytesMut>` that stays with it through the
//! pool, so handing it out and taking it back moves one pointer. Moving the
//! 32-byte `BytesMut` itself through a stack cost 25 ns a round trip here
//! (store-to-load forwarding stalls on this Zen 3), the boxed one 8 ns.
//!
//! # The budget
//!
//! Idle buffers are paid for from the pool's byte budget *before* they are
//! kept: a thread reserves room for a magazine's worth of buffers at a time
//! (one atomic add per magazine, or one buffer's worth when a magazine no
//! longer fits), a full magazine carries its reservation into the depot and
//! out to the thread that takes it, and a thread that finds its magazines
//! empty gives back what it reserved. Reserved bytes never exceed the
//! budget and idle bytes never exceed the reserved, so idle buffers never
//! exceed the budget, even while threads race.

use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// The most size classes a pool may have (each thread's cache holds them
/// inline).
pub const SIZE_CLASSES_MAX: usize = 16;

/// The bytes of buffer capacity one magazine aims to hold: 32 buffers of
/// 16 KiB or less, 8 of 64 KiB, 2 of 256 KiB, 1 of 1 MiB or more. Long
/// magazines make trades with the depot rare; the budget bounds the memory.
const MAGAZINE_BYTES: usize = 512 << 10;
const MAGAZINE_BUFFERS_MAX: usize = 32;

/// How a [`BufferPool`] is sized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferPoolConfig {
    /// Capacities of the size classes, in bytes. A request gets a buffer of
    /// the smallest class that fits it; requests larger than every class
    /// are allocated exactly and never pooled.
    pub size_classes: Vec<usize>,
    /// The most bytes of capacity that idle buffers may hold, in every
    /// thread's magazines and the depot together. A buffer returned when
    /// the budget has no room for it is freed. Threads reserve room a
    /// magazine at a time (up to 512 KiB per class), so a budget of many
    /// magazines per thread keeps each thread's returns cheap.
    pub budget_bytes: usize,
    /// The most idle buffers one size class keeps in the shared depot
    /// (rounded up to whole magazines). Each thread using the class also
    /// keeps up to two magazines of its own; the budget bounds them all.
    pub idle_buffers_per_class_max: usize,
}

impl Default for BufferPoolConfig {
    /// Classes from 256 B to 1 MiB in steps of 4x, a 64 MiB budget, at most
    /// 4096 idle buffers per class in the depot.
    fn default() -> Self {
        Self {
            size_classes: vec![
                256,
                1 << 10,
                4 << 10,
                16 << 10,
                64 << 10,
                256 << 10,
                1 << 20,
            ],
            budget_bytes: 64 << 20,
            idle_buffers_per_class_max: 4096,
        }
    }
}

/// Why a [`BufferPoolConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BufferPoolConfigError {
    /// No size class was given.
    NoSizeClasses,
    /// Size classes must be non-zero and strictly ascending.
    SizeClassesNotAscending,
    /// `idle_buffers_per_class_max` was zero.
    ZeroIdleBuffers,
    /// More than [`SIZE_CLASSES_MAX`] size classes were given.
    TooManySizeClasses,
}

impl fmt::Display for BufferPoolConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSizeClasses => "a buffer pool needs at least one size class",
            Self::SizeClassesNotAscending => {
                "buffer pool size classes must be non-zero and strictly ascending"
            }
            Self::ZeroIdleBuffers => "idle_buffers_per_class_max must be at least 1",
            Self::TooManySizeClasses => "a buffer pool has at most 16 size classes",
        })
    }
}

impl std::error::Error for BufferPoolConfigError {}

/// A snapshot of a pool's counters, summed over its threads, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferPoolStats {
    /// Requests served from an idle buffer.
    pub hits: u64,
    /// Requests that found no idle buffer and allocated.
    pub misses: u64,
    /// Requests larger than every class (allocated, never pooled).
    pub oversized: u64,
    /// Buffers taken back for reuse.
    pub returns: u64,
    /// Buffers freed on return: no room in the budget or the depot, or
    /// resized by their user (split or grown).
    pub discards: u64,
    /// Bytes of capacity held by idle buffers now. Never more than
    /// `bytes_reserved` once the pool's threads are quiet (while buffers
    /// move between threads the sum may count a magazine twice or not at
    /// all).
    pub bytes_held: usize,
    /// Bytes of the budget reserved for idle buffers now (held, or room
    /// threads keep for the buffers they will return). Never more than the
    /// budget.
    pub bytes_reserved: usize,
    /// Idle buffers now.
    pub buffers_held: usize,
}

/// A pooled buffer: boxed, so that it moves through the pool as a pointer.
type Buffer = Box<BytesMut>;
/// A stack of idle buffers of one class.
type Magazine = Vec<Buffer>;

/// One size class's shared depot of full magazines (its capacity is in
/// `Shared::capacities`).
struct Class {
    magazine_len: usize,
    /// Magazines of idle buffers, each carrying its reservation.
    full: ArrayQueue<Magazine>,
    /// Empty magazines for reuse, so trading magazines does not allocate.
    empty: ArrayQueue<Magazine>,
}

/// One size class's counts in one thread.
#[derive(Default)]
struct ClassCounts {
    hits: AtomicU64,
    returns: AtomicU64,
    /// Buffers that entered this thread's magazines a magazine at a time
    /// (from the depot) minus those that left that way (wrapping).
    moved_in: AtomicU64,
}

impl ClassCounts {
    /// Idle buffers of this class in the thread's magazines.
    fn held(&self) -> u64 {
        let returns = self.returns.load(Relaxed);
        let moved_in = self.moved_in.load(Relaxed);
        returns
            .wrapping_add(moved_in)
            .wrapping_sub(self.hits.load(Relaxed))
    }
}

/// Counters written by one thread only (a load and a store, no atomic
/// read-modify-write) and read by [`BufferPool::stats`] from any thread.
/// A get or a return updates one of them.
#[derive(Default)]
struct Counts {
    classes: [ClassCounts; SIZE_CLASSES_MAX],
    misses: AtomicU64,
    discards: AtomicU64,
}

/// Adds `delta` (wrapping) to a counter that only the calling thread
/// writes.
#[inline]
fn bump(counter: &AtomicU64, delta: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// Counts kept outside any live thread's cache: the depot's holdings,
/// the counts of threads that have exited, and the rare paths (oversized
/// requests, calls made during thread teardown). Atomic read-modify-writes,
/// off the fast path.
#[derive(Default)]
struct SharedCounts {
    oversized: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    returns: AtomicU64,
    discards: AtomicU64,
    depot_buffers: AtomicUsize,
    depot_bytes: AtomicUsize,
}

struct Shared {
    /// Each class's capacity, ascending: searched on every get, so kept
    /// apart from the classes' queues (hundreds of bytes each).
    capacities: Box<[usize]>,
    /// In the order of `capacities`.
    classes: Box<[Class]>,
    budget_bytes: usize,
    /// Budget reserved by threads' magazines and the depot.
    reserved_bytes: CachePadded<AtomicUsize>,
    counts: SharedCounts,
    /// The counters of every thread with a cache for this pool.
    threads: Mutex<Vec<Arc<Counts>>>,
}

impl Shared {
    fn class_for(&self, capacity: usize) -> Option<usize> {
        self.capacities.iter().position(|&class| class >= capacity)
    }

    /// Reserves `bytes` of the budget, if they fit. A compare-and-swap
    /// loop rather than add-then-undo, so the reserved count never exceeds
    /// the budget even for an instant (`stats` may read it at any time).
    fn reserve(&self, bytes: usize) -> bool {
        self.reserved_bytes
            .fetch_update(Relaxed, Relaxed, |reserved| {
                reserved
                    .checked_add(bytes)
                    .filter(|&total| total <= self.budget_bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.reserved_bytes.fetch_sub(bytes, Relaxed);
        }
    }

    /// An empty magazine for `class`, reused when one is spare.
    fn empty_magazine(&self, class: usize) -> Magazine {
        let class = &self.classes[class];
        class
            .empty
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(class.magazine_len))
    }

    /// Keeps an emptied magazine for reuse (freed when enough are kept).
    fn recycle(&self, class: usize, magazine: Magazine) {
        debug_assert!(magazine.is_empty());
        let _freed_if_enough_are_spare = self.classes[class].empty.push(magazine);
    }

    /// Moves `magazine` (non-empty, with its reservation) into the depot;
    /// gives it back when the depot is full.
    fn deposit(&self, class: usize, magazine: Magazine) -> Result<(), Magazine> {
        let (buffers, capacity) = (magazine.len(), self.capacities[class]);
        self.classes[class].full.push(magazine)?;
        self.counts.depot_buffers.fetch_add(buffers, Relaxed);
        self.counts
            .depot_bytes
            .fetch_add(buffers * capacity, Relaxed);
        Ok(())
    }

    /// A magazine of idle buffers from the depot, with its reservation.
    fn withdraw(&self, class: usize) -> Option<Magazine> {
        let magazine = self.classes[class].full.pop()?;
        let (buffers, capacity) = (magazine.len(), self.capacities[class]);
        self.counts.depot_buffers.fetch_sub(buffers, Relaxed);
        self.counts
            .depot_bytes
            .fetch_sub(buffers * capacity, Relaxed);
        Some(magazine)
    }
}

/// One thread's magazines for one class.
#[derive(Default)]
struct ClassCache {
    capacity: usize,
    magazine_len: usize,
    loaded: Magazine,
    previous: Magazine,
    /// Buffers' worth of budget this cache has reserved: at least as many
    /// as its magazines hold.
    slots: usize,
}

impl ClassCache {
    fn held(&self) -> usize {
        self.loaded.len() + self.previous.len()
    }
}

/// One thread's cache for one pool.
struct ThreadCache {
    /// The pool's address: while `pool` (a weak reference) lives, no other
    /// pool can be allocated there, so comparing addresses identifies it.
    pool_address: usize,
    pool: Weak<Shared>,
    /// Inline, in the order of the pool's classes: one pointer less to
    /// follow on every get and return.
    classes: [ClassCache; SIZE_CLASSES_MAX],
    counts: Arc<Counts>,
}

impl ThreadCache {
    fn new(shared: &Arc<Shared>) -> Self {
        let counts = Arc::new(Counts::default());
        shared.threads.lock().push(Arc::clone(&counts));
        let mut classes: [ClassCache; SIZE_CLASSES_MAX] = Default::default();
        let pool_classes = shared.capacities.iter().zip(&shared.classes);
        for (cache, (&capacity, class)) in classes.iter_mut().zip(pool_classes) {
            cache.capacity = capacity;
            cache.magazine_len = class.magazine_len;
        }
        Self {
            pool_address: Arc::as_ptr(shared) as usize,
            pool: Arc::downgrade(shared),
            classes,
            counts,
        }
    }

    /// An idle buffer of `class`, or `None` (a miss, counted).
    #[inline]
    fn take(&mut self, shared: &Shared, class: usize) -> Option<Buffer> {
        let cache = &mut self.classes[class];
        if let Some(buffer) = cache.loaded.pop() {
            bump(&self.counts.classes[class].hits, 1);
            return Some(buffer);
        }
        self.take_slow(shared, class)
    }

    /// `take` with an empty loaded magazine: swap in the other one, or
    /// trade the empty one for a full one from the depot.
    #[cold]
    fn take_slow(&mut self, shared: &Shared, class: usize) -> Option<Buffer> {
        let cache = &mut self.classes[class];
        if cache.previous.is_empty() {
            let Some(full) = shared.withdraw(class) else {
                bump(&self.counts.misses, 1);
                return None;
            };
            // Both magazines were empty: the reservation we kept for them
            // goes back, and the new magazine brings its own.
            shared.release(cache.slots * cache.capacity);
            cache.slots = full.len();
            bump(&self.counts.classes[class].moved_in, full.len() as u64);
            let empty = std::mem::replace(&mut cache.loaded, full);
            shared.recycle(class, empty);
        } else {
            std::mem::swap(&mut cache.loaded, &mut cache.previous);
        }
        let buffer = cache.loaded.pop()?;
        bump(&self.counts.classes[class].hits, 1);
        Some(buffer)
    }

    /// Keeps `buffer` (cleared, of its class's capacity) for reuse, or
    /// gives it back to be freed (counted) when there is no room.
    #[inline]
    fn keep(&mut self, shared: &Shared, class: usize, buffer: Buffer) -> Result<(), Buffer> {
        let cache = &mut self.classes[class];
        if cache.loaded.len() < cache.magazine_len && cache.held() < cache.slots {
            cache.loaded.push(buffer);
            bump(&self.counts.classes[class].returns, 1);
            return Ok(());
        }
        self.keep_slow(shared, class, buffer)
    }

    /// `keep` with a full loaded magazine or no reserved room: swap in the
    /// other magazine or send a full one to the depot, then reserve room.
    #[cold]
    fn keep_slow(&mut self, shared: &Shared, class: usize, buffer: Buffer) -> Result<(), Buffer> {
        let cache = &mut self.classes[class];
        if cache.loaded.len() >= cache.magazine_len {
            if cache.previous.len() >= cache.magazine_len {
                let full = std::mem::take(&mut cache.previous);
                let buffers = full.len();
                if let Err(full) = shared.deposit(class, full) {
                    // The depot is at its limit: this buffer goes.
                    cache.previous = full;
                    bump(&self.counts.discards, 1);
                    return Err(buffer);
                }
                cache.previous = shared.empty_magazine(class);
                cache.slots -= buffers;
                let moved_out = (buffers as u64).wrapping_neg();
                bump(&self.counts.classes[class].moved_in, moved_out);
            }
            std::mem::swap(&mut cache.loaded, &mut cache.previous);
        }
        if cache.held() >= cache.slots && !Self::reserve_room(shared, cache) {
            bump(&self.counts.discards, 1);
            return Err(buffer);
        }
        cache.loaded.push(buffer);
        bump(&self.counts.classes[class].returns, 1);
        Ok(())
    }

    /// Reserves a magazine's worth of budget, or one buffer's worth when
    /// that does not fit.
    fn reserve_room(shared: &Shared, cache: &mut ClassCache) -> bool {
        // Two magazines' worth at most: what the two magazines can hold.
        let room_left = (2 * cache.magazine_len).saturating_sub(cache.slots);
        let magazine = cache.magazine_len.min(room_left);
        for buffers in [magazine, room_left.min(1)] {
            if buffers > 0 && shared.reserve(buffers * cache.capacity) {
                cache.slots += buffers;
                return true;
            }
        }
        false
    }
}

impl Drop for ThreadCache {
    /// At thread exit (or once its pool is gone): magazines go to the
    /// depot, unused reservations back to the budget, the counts to the
    /// pool's shared counts.
    fn drop(&mut self) {
        let Some(shared) = self.pool.upgrade() else {
            return;
        };
        let classes = self.classes.iter_mut().take(shared.classes.len());
        for (class, cache) in classes.enumerate() {
            let mut kept = 0;
            for magazine in [
                std::mem::take(&mut cache.loaded),
                std::mem::take(&mut cache.previous),
            ] {
                let buffers = magazine.len();
                if buffers == 0 {
                    continue;
                }
                match shared.deposit(class, magazine) {
                    Ok(()) => kept += buffers,
                    Err(_freed) => bump(&self.counts.discards, buffers as u64),
                }
            }
            shared.release((cache.slots - kept) * cache.capacity);
        }
        let counts = &shared.counts;
        let mine = &self.counts;
        for class in &mine.classes {
            counts.hits.fetch_add(class.hits.load(Relaxed), Relaxed);
            counts
                .returns
                .fetch_add(class.returns.load(Relaxed), Relaxed);
        }
        counts.misses.fetch_add(mine.misses.load(Relaxed), Relaxed);
        counts
            .discards
            .fetch_add(mine.discards.load(Relaxed), Relaxed);
        shared
            .threads
            .lock()
            .retain(|counts| !Arc::ptr_eq(counts, &self.counts));
    }
}

thread_local! {
    /// This thread's caches, one per pool it has used.
    static THREAD_CACHES: RefCell<Vec<ThreadCache>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` on this thread's cache for `shared`, made on first use.
/// `None` when thread-local storage is gone (thread teardown) or already
/// borrowed (a re-entrant call): callers then bypass the pool.
#[inline]
fn with_thread_cache<R>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&mut ThreadCache) -> R,
) -> Option<R> {
    THREAD_CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let address = Arc::as_ptr(shared) as usize;
            let index = match caches.iter().position(|c| c.pool_address == address) {
                Some(index) => index,
                None => install_thread_cache(&mut caches, shared),
            };
            Some(work(&mut caches[index]))
        })
        .ok()
        .flatten()
}

/// Adds this thread's cache for `shared`, first dropping caches of pools
/// that are gone (their buffers are freed).
#[cold]
fn install_thread_cache(caches: &mut Vec<ThreadCache>, shared: &Arc<Shared>) -> usize {
    caches.retain(|cache| cache.pool.strong_count() > 0);
    caches.push(ThreadCache::new(shared));
    caches.len() - 1
}

/// A bounded pool of reusable `BytesMut` buffers in size classes.
///
/// Cloning is cheap and shares the pool. Getting never blocks: with no idle
/// buffer it allocates (and counts a miss). Idle buffers never hold more
/// than the budget.
#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl BufferPool {
    /// A pool sized by `config`.
    pub fn new(config: &BufferPoolConfig) -> Result<Self, BufferPoolConfigError> {
        let sizes = &config.size_classes;
        if sizes.is_empty() {
            return Err(BufferPoolConfigError::NoSizeClasses);
        }
        if sizes[0] == 0 || sizes.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(BufferPoolConfigError::SizeClassesNotAscending);
        }
        if config.idle_buffers_per_class_max == 0 {
            return Err(BufferPoolConfigError::ZeroIdleBuffers);
        }
        if sizes.len() > SIZE_CLASSES_MAX {
            return Err(BufferPoolConfigError::TooManySizeClasses);
        }
        let classes = sizes
            .iter()
            .map(|&capacity| {
                let magazine_len = (MAGAZINE_BYTES / capacity).clamp(1, MAGAZINE_BUFFERS_MAX);
                let magazines = config.idle_buffers_per_class_max.div_ceil(magazine_len);
                Class {
                    magazine_len,
                    full: ArrayQueue::new(magazines),
                    empty: ArrayQueue::new(magazines),
                }
            })
            .collect();
        let shared = Shared {
            capacities: sizes.clone().into_boxed_slice(),
            classes,
            budget_bytes: config.budget_bytes,
            reserved_bytes: CachePadded::new(AtomicUsize::new(0)),
            counts: SharedCounts::default(),
            threads: Mutex::new(Vec::new()),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// An empty buffer with capacity for at least `capacity` bytes. It
    /// returns to the pool when dropped.
    pub fn get(&self, capacity: usize) -> PooledBuffer<'_> {
        let shared = &self.shared;
        let Some(class) = shared.class_for(capacity) else {
            shared.counts.oversized.fetch_add(1, Relaxed);
            return PooledBuffer {
                buffer: Some(Box::new(BytesMut::with_capacity(capacity))),
                home: None,
            };
        };
        let allocate = || Box::new(BytesMut::with_capacity(shared.capacities[class]));
        let buffer = match with_thread_cache(shared, |cache| cache.take(shared, class)) {
            Some(Some(buffer)) => buffer,
            // A miss, which the thread's cache counted.
            Some(None) => allocate(),
            // No cache (thread teardown): a miss counted here.
            None => {
                shared.counts.misses.fetch_add(1, Relaxed);
                allocate()
            }
        };
        debug_assert!(buffer.is_empty() && buffer.capacity() >= capacity);
        PooledBuffer {
            buffer: Some(buffer),
            home: Some((shared, class)),
        }
    }

    /// The pool's counters now, summed over its threads: each thread's
    /// counts as of its last store, so the totals are exact once the
    /// threads are quiet and approximate while they work. `bytes_reserved`
    /// is always exact and never above the budget.
    pub fn stats(&self) -> BufferPoolStats {
        let counts = &self.shared.counts;
        let mut stats = BufferPoolStats {
            hits: counts.hits.load(Relaxed),
            misses: counts.misses.load(Relaxed),
            oversized: counts.oversized.load(Relaxed),
            returns: counts.returns.load(Relaxed),
            discards: counts.discards.load(Relaxed),
            bytes_held: counts.depot_bytes.load(Relaxed),
            bytes_reserved: self.shared.reserved_bytes.load(Relaxed),
            buffers_held: counts.depot_buffers.load(Relaxed),
        };
        for thread in self.shared.threads.lock().iter() {
            stats.misses += thread.misses.load(Relaxed);
            stats.discards += thread.discards.load(Relaxed);
            for (class, &capacity) in thread.classes.iter().zip(&self.shared.capacities) {
                stats.hits += class.hits.load(Relaxed);
                stats.returns += class.returns.load(Relaxed);
                let held = class.held() as usize;
                stats.buffers_held += held;
                stats.bytes_held += held * capacity;
            }
        }
        stats
    }

    /// The byte budget for idle buffers.
    pub fn budget_bytes(&self) -> usize {
        self.shared.budget_bytes
    }
}

/// Takes `buffer` back into `class` through this thread's cache, or frees
/// it (counted) when it was resized or there is no room.
fn give_back(shared: &Arc<Shared>, class: usize, mut buffer: Buffer) {
    buffer.clear();
    // A buffer split or grown by its user no longer has its class's
    // capacity, which the budget accounts for exactly.
    let resized = buffer.capacity() != shared.capacities[class];
    let kept = with_thread_cache(shared, |cache| {
        if resized {
            bump(&cache.counts.discards, 1);
            return;
        }
        // Freed here when there was no room; `keep` counted it.
        let _freed_if_refused = cache.keep(shared, class, buffer);
    });
    if kept.is_none() {
        shared.counts.discards.fetch_add(1, Relaxed);
    }
}

/// A buffer from a [`BufferPool`]: a `BytesMut` (through `Deref`) that goes
/// back to its pool when dropped.
pub struct PooledBuffer<'pool> {
    /// Always `Some` until `drop`, `detach` or `freeze` takes it (a `Box`
    /// cannot be moved out of a value with a destructor otherwise).
    buffer: Option<Buffer>,
    /// The pool and class it returns to; `None` for oversized buffers.
    home: Option<(&'pool Arc<Shared>, usize)>,
}

const TAKEN: &str = "a pooled buffer is present until its handle is consumed";

impl PooledBuffer<'_> {
    /// Takes the buffer out of the pool's care: it will be freed, not
    /// returned, when dropped.
    pub fn detach(mut self) -> BytesMut {
        self.home = None;
        *self.buffer.take().expect(TAKEN)
    }

    /// Turns the filled buffer into shared, immutable `Bytes`. Slices of it
    /// (`Bytes::slice`) keep the memory alive; when the last one is
    /// dropped the buffer returns to its pool, through the cache of the
    /// thread that drops it. This is the receive path: a frame read into a
    /// pooled buffer, decoded into payloads that are slices of it, recycled
    /// when the last payload is gone. (`Bytes` allocates one small header
    /// per frozen buffer for its reference count.)
    pub fn freeze(mut self) -> Bytes {
        let home = self
            .home
            .take()
            .map(|(shared, class)| (Arc::clone(shared), class));
        let buffer = self.buffer.take().expect(TAKEN);
        Bytes::from_owner(FrozenBuffer {
            buffer: Some(buffer),
            home,
        })
    }
}

impl Deref for PooledBuffer<'_> {
    type Target = BytesMut;

    #[inline]
    fn deref(&self) -> &BytesMut {
        self.buffer.as_deref().expect(TAKEN)
    }
}

impl DerefMut for PooledBuffer<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut BytesMut {
        self.buffer.as_deref_mut().expect(TAKEN)
    }
}

impl AsRef<[u8]> for PooledBuffer<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for PooledBuffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuffer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("pooled", &self.home.is_some())
            .finish()
    }
}

impl Drop for PooledBuffer<'_> {
    fn drop(&mut self) {
        if let (Some((shared, class)), Some(buffer)) = (self.home.take(), self.buffer.take()) {
            give_back(shared, class, buffer);
        }
    }
}

/// The owner behind [`PooledBuffer::freeze`]'s `Bytes`: holds the pool
/// alive (an `Arc`) because `Bytes` may outlive every pool handle.
struct FrozenBuffer {
    /// `Some` until dropped.
    buffer: Option<Buffer>,
    home: Option<(Arc<Shared>, usize)>,
}

impl AsRef<[u8]> for FrozenBuffer {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_deref().map_or(&[], |buffer| buffer)
    }
}

impl Drop for FrozenBuffer {
    fn drop(&mut self) {
        if let (Some((shared, class)), Some(buffer)) = (self.home.take(), self.buffer.take()) {
            give_back(&shared, class, buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size_classes: &[usize], budget_bytes: usize) -> BufferPool {
        let config = BufferPoolConfig {
            size_classes: size_classes.to_vec(),
            budget_bytes,
            idle_buffers_per_class_max: 64,
        };
        BufferPool::new(&config).expect("valid config")
    }

    #[test]
    fn requests_get_the_smallest_class_that_fits() {
        let pool = pool(&[256, 4096], 1 << 20);
        for (request, capacity) in [(0, 256), (1, 256), (256, 256), (257, 4096), (4096, 4096)] {
            assert_eq!(pool.get(request).capacity(), capacity, "request {request}");
        }
        let oversized = pool.get(5000);
        assert!(oversized.capacity() >= 5000);
        drop(oversized);
        let stats = pool.stats();
        assert_eq!(stats.oversized, 1);
        assert_eq!(stats.buffers_held, 2, "oversized buffers are not pooled");
    }

    #[test]
    fn a_returned_buffer_is_handed_out_again_empty() {
        let pool = pool(&[1024], 1 << 20);
        let mut buffer = pool.get(100);
        buffer.extend_from_slice(b"payload");
        let address = buffer.as_ptr();
        drop(buffer);
        let again = pool.get(100);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty());
        let stats = pool.stats();
        assert_eq!((stats.hits, stats.misses, stats.returns), (1, 1, 1));
    }

    #[test]
    fn the_budget_bounds_idle_bytes() {
        // Room for four 1 KiB buffers: less than a magazine, so the thread
        // reserves one buffer's worth at a time; four kept, three freed.
        let pool = pool(&[1024], 4 * 1024);
        let buffers: Vec<_> = (0..7).map(|_| pool.get(1024)).collect();
        drop(buffers);
        let stats = pool.stats();
        assert_eq!((stats.bytes_held, stats.bytes_reserved), (4096, 4096));
        assert_eq!((stats.returns, stats.discards), (4, 3));
        let again: Vec<_> = (0..4).map(|_| pool.get(1024)).collect();
        assert_eq!(pool.stats().hits, 4);
        drop(again);
    }

    #[test]
    fn a_magazine_reservation_is_taken_whole_when_it_fits() {
        let pool = pool(&[4096], 1 << 20);
        drop(pool.get(4096));
        let stats = pool.stats();
        let magazine_bytes = MAGAZINE_BUFFERS_MAX * 4096;
        assert_eq!(
            (stats.bytes_held, stats.bytes_reserved),
            (4096, magazine_bytes)
        );
    }

    #[test]
    fn an_exiting_thread_leaves_its_buffers_to_the_others() {
        let pool = pool(&[1024], 1 << 20);
        // `join` (unlike a scope's end) waits for thread-local destructors.
        let worker = pool.clone();
        std::thread::spawn(move || {
            let buffers: Vec<_> = (0..40).map(|_| worker.get(1000)).collect();
            drop(buffers);
        })
        .join()
        .expect("worker thread");
        let stats = pool.stats();
        assert_eq!(
            (stats.misses, stats.returns, stats.buffers_held),
            (40, 40, 40)
        );
        assert_eq!(stats.bytes_reserved, 40 * 1024, "unused room went back");
        let again: Vec<_> = (0..40).map(|_| pool.get(1000)).collect();
        let stats = pool.stats();
        assert_eq!((stats.hits, stats.misses), (40, 40));
        drop(again);
    }

    /// Bytes of budget this thread's cache for `pool` has reserved.
    fn thread_room(pool: &BufferPool) -> usize {
        let address = Arc::as_ptr(&pool.shared) as usize;
        THREAD_CACHES.with(|caches| {
            let caches = caches.borrow();
            let cache = caches.iter().find(|c| c.pool_address == address);
            cache.map_or(0, |cache| {
                let classes = cache.classes.iter();
                classes.map(|class| class.slots * class.capacity).sum()
            })
        })
    }

    #[test]
    fn accounting_holds_after_every_step_of_a_random_workload() {
        // Small budget and depot, so reservations, 1-buffer fallbacks,
        // depot trades and refusals all happen; one thread, so the stats
        // are exact after every step.
        let config = BufferPoolConfig {
            size_classes: vec![256, 4096, 64 << 10],
            budget_bytes: 300 << 10,
            idle_buffers_per_class_max: 40,
        };
        let pool = BufferPool::new(&config).expect("valid config");
        let mut outstanding = Vec::new();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..20_000 {
            let roll = next();
            let wants_more = roll % 100 < 50 && outstanding.len() < 200;
            if wants_more || outstanding.is_empty() {
                let size = [100, 256, 3000, 50_000][(roll >> 8) as usize % 4];
                outstanding.push(pool.get(size));
            } else {
                let at = (roll >> 8) as usize % outstanding.len();
                outstanding.swap_remove(at);
            }
            let stats = pool.stats();
            let allocated = stats.misses - stats.discards;
            assert_eq!(
                allocated,
                stats.buffers_held as u64 + outstanding.len() as u64,
                "step {step}: {stats:?}"
            );
            assert!(
                stats.bytes_held <= stats.bytes_reserved,
                "step {step}: {stats:?}"
            );
            // Every reserved byte is the depot's or this thread's room.
            let depot_bytes = pool.shared.counts.depot_bytes.load(Relaxed);
            assert_eq!(
                stats.bytes_reserved,
                depot_bytes + thread_room(&pool),
                "step {step}: {stats:?}"
            );
            assert!(
                stats.bytes_reserved <= config.budget_bytes,
                "step {step}: {stats:?}"
            );
        }
        drop(outstanding);
        let stats = pool.stats();
        assert!(stats.hits > 8_000, "buffers were reused: {stats:?}");
    }

    #[test]
    fn a_dropped_pools_thread_cache_goes_when_another_pool_arrives() {
        let first = pool(&[1024], 1 << 20);
        drop(first.get(10));
        drop(first);
        let second = pool(&[1024], 1 << 20);
        drop(second.get(10));
        let caches = THREAD_CACHES.with(|caches| caches.borrow().len());
        assert_eq!(caches, 1, "the dropped pool's cache is gone");
    }

    #[test]
    fn frozen_bytes_return_the_buffer_when_the_last_slice_drops() {
        let pool = pool(&[1024], 1 << 20);
        let mut buffer = pool.get(10);
        buffer.extend_from_slice(b"hello, world");
        let frozen = buffer.freeze();
        let slice = frozen.slice(7..12);
        drop(frozen);
        assert_eq!(
            pool.stats().buffers_held,
            0,
            "a slice still holds the buffer"
        );
        assert_eq!(&slice[..], b"world");
        drop(slice);
        assert_eq!(pool.stats().buffers_held, 1);
    }

    #[test]
    fn detached_and_resized_buffers_are_not_pooled() {
        let pool = pool(&[1024], 1 << 20);
        let detached = pool.get(10).detach();
        assert_eq!(detached.capacity(), 1024);
        let mut shrunk = pool.get(10);
        shrunk.extend_from_slice(&[0; 1024]);
        let _front = shrunk.split_to(512);
        drop(shrunk);
        let mut grown = pool.get(10);
        grown.extend_from_slice(&[0; 2000]);
        drop(grown);
        let stats = pool.stats();
        assert_eq!((stats.buffers_held, stats.discards), (0, 2));
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let config = |size_classes: Vec<usize>, idle| BufferPoolConfig {
            size_classes,
            budget_bytes: 1 << 20,
            idle_buffers_per_class_max: idle,
        };
        assert_eq!(
            BufferPool::new(&config(vec![], 1)).err(),
            Some(BufferPoolConfigError::NoSizeClasses)
        );
        for classes in [vec![512, 256], vec![0, 256], vec![256, 256]] {
            assert_eq!(
                BufferPool::new(&config(classes, 1)).err(),
                Some(BufferPoolConfigError::SizeClassesNotAscending)
            );
        }
        assert_eq!(
            BufferPool::new(&config(vec![256], 0)).err(),
            Some(BufferPoolConfigError::ZeroIdleBuffers)
        );
    }
}
