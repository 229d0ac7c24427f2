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
//! Both are cheap to clone (an `Arc`) and usable from any thread: a buffer
//! filled on one thread may be dropped on another. The buffer pool keeps
//! per-thread *magazines* over a shared lock-free depot (Bonwick's design,
//! see the `buffer` module docs): a get and a return on one thread touch no
//! atomic and take no lock, and buffers crossing threads move between them
//! a magazine at a time. A [`PooledBuffer`] borrows its pool rather than
//! holding an `Arc`, which keeps reference counting off the hot path. The
//! object pool is one crossbeam `ArrayQueue`.
//!
//! ## Invariants
//!
//! - **Bounded.** Idle buffers never hold more than
//!   [`BufferPoolConfig::budget_bytes`] of capacity: room in the budget is
//!   reserved before a buffer is kept (a magazine's worth at a time) and
//!   travels with the buffers between threads, so racing threads cannot
//!   overshoot. The shared depot keeps at most `idle_buffers_per_class_max`
//!   buffers per class (in whole magazines); an object pool at most its
//!   `idle_max` objects.
//! - **Never blocks.** An empty class allocates and counts a miss.
//! - **Handed out clean.** A buffer comes out empty with at least the
//!   requested capacity; an object comes out after its reset hook ran.
//! - **One owner.** A pooled buffer or object is owned by exactly one
//!   handle at a time; it re-enters the pool only when that handle drops.
//!
//! ## What this crate does not do
//!
//! It never trims itself: idle buffers stay until reused, and a thread's
//! magazines (up to two per class, 512 KiB each at most) stay with that
//! thread until it exits, when they go to the depot; a thread that stops
//! using a pool keeps its magazines until it uses another pool or exits.
//! It does not zero memory (a buffer is empty, not scrubbed: do not rely on
//! it for secrets), and keeps no buffer its user has split or grown. Its
//! only `unsafe` code is the counting allocator of the `testing` feature
//! (for allocation-free tests), never in the pools.
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
    BufferPool, BufferPoolConfig, BufferPoolConfigError, BufferPoolStats, PooledBuffer,
    SIZE_CLASSES_MAX,
};
pub use object::{ObjectPool, ObjectPoolStats, Pooled};
