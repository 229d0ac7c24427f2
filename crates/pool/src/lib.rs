//! # dr-pool: reusable memory for dr's hot paths
//!
//! Receive buffers, frame encoding buffers and message batches are made and
//! dropped for every message a node handles. This crate keeps them for
//! reuse:
//!
//! - [`BufferPool`]: `BytesMut` buffers in size classes. [`BufferPool::get`]
//!   hands out a [`PooledBuffer`] (a `BytesMut` through `Deref`) that goes
//!   back to its class when dropped; [`PooledBuffer::freeze`] turns it into
//!   `Bytes` whose slices keep it alive and which returns to the pool when
//!   the last slice is gone, so a frame decoded into payload slices recycles
//!   its buffer by itself.
//! - [`ObjectPool`]: reusable values of any type with a reset hook.
//!
//! Both are lock-free (crossbeam `ArrayQueue`s), cheap to clone (an
//! `Arc`), and usable from any thread: a buffer filled on one thread may be
//! dropped on another. The buffer pool is split into [`SHARDS`] shards on
//! separate cache lines, and each thread starts at its own, so threads
//! working at once rarely share a cache line (see the `buffer` module
//! docs). A [`PooledBuffer`] borrows its pool rather than holding an
//! `Arc`, which keeps reference counting off the hot path.
//!
//! ## Invariants
//!
//! - **Bounded.** Idle buffers never hold more than
//!   [`BufferPoolConfig::budget_bytes`] of capacity: each shard reserves
//!   its share of the budget before it queues a buffer and releases it
//!   after one is taken, so racing threads cannot overshoot. A class also
//!   keeps at most `idle_buffers_per_class_max` buffers (rounded up to a
//!   multiple of the shard count); an object pool at most its `idle_max`
//!   objects.
//! - **Never blocks.** An empty class allocates and counts a miss.
//! - **Handed out clean.** A buffer comes out empty with at least the
//!   requested capacity; an object comes out after its reset hook ran.
//! - **One owner.** A pooled buffer or object is owned by exactly one
//!   handle at a time; it re-enters the pool only when that handle drops.
//!
//! ## What this crate does not do
//!
//! It has no per-thread caches (we measured them slower here: see the
//! `buffer` module docs), never trims itself (idle buffers stay until
//! reused), does not zero memory (a buffer is empty, not scrubbed: do not
//! rely on it for secrets), and keeps no buffer its user has split or
//! grown. Its only `unsafe` code is the counting allocator of the
//! `testing` feature (for allocation-free tests), never in the pools.
//!
//! ## Example
//!
//! ```
//! use bytes::BufMut;
//! use dr_pool::{BufferPool, BufferPoolConfig};
//!
//! let pool = BufferPool::new(&BufferPoolConfig::default())?;
//! let mut buffer = pool.get(4096);
//! buffer.put_slice(b"frame header and body");
//! let frame = buffer.freeze(); // Bytes; the buffer returns when it is dropped
//! let body = frame.slice(13..);
//! drop(frame);
//! assert_eq!(&body[..], b"and body");
//! drop(body);
//! assert_eq!(pool.stats().buffers_held, 1);
//! # Ok::<(), dr_pool::BufferPoolConfigError>(())
//! ```

#![deny(unsafe_code)] // `testing` (a counting allocator) allows it locally.
#![deny(missing_docs)]

mod buffer;
mod object;
#[cfg(feature = "testing")]
pub mod testing;

pub use buffer::{
    BufferPool, BufferPoolConfig, BufferPoolConfigError, BufferPoolStats, PooledBuffer, SHARDS,
};
pub use object::{ObjectPool, ObjectPoolStats, Pooled};
