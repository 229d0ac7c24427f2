//! # dr-simd: the byte kernels under every checksum and key comparison
//!
//! `dr-simd` is the bottom crate of Distributed Rust. It provides:
//!
//! - [`crc32c()`](crate::crc32c()): CRC32C (Castagnoli), the checksum of dr's
//!   wire frames and on-disk records, with [`crc32c::update`] to continue a
//!   CRC and [`crc32c::combine`] to join the CRCs of two pieces without
//!   rereading them;
//! - [`eq`] and [`compare`]: equality and lexicographic order of byte
//!   strings, tuned for keys (short keys of 8-64 bytes and long ones of
//!   1-4 KiB).
//!
//! ## Dispatch
//!
//! Each family has several kernels ([`Crc32cKernel`], [`BytesKernel`]):
//! a portable scalar one that runs everywhere and x86_64 vector ones
//! (SSE4.2 with PCLMULQDQ, AVX2 with VPCLMULQDQ). The first call detects the
//! CPU's features ([`CpuFeatures`]), picks the fastest kernel it can run
//! and caches its function pointer (CRC32C in a `OnceLock`; `eq` and
//! `compare` in an `AtomicPtr` that starts out pointing at a resolver);
//! every later call pays one atomic load and an indirect call, as a call
//! into glibc's `memcmp` through the GOT does. Keys of up to 64 bytes never reach
//! the pointer: they are compared inline with overlapping word loads.
//! Every kernel can also be called directly (`Crc32cKernel::Scalar.update`)
//! so tests and benches can compare them on one machine.
//!
//! ## Invariants
//!
//! - Every kernel of a family returns exactly what the scalar kernel
//!   returns, for every input length and alignment (property-tested).
//! - A vector kernel runs only after its CPU features were detected: the
//!   `#[target_feature]` functions are reachable only through the kernel
//!   enums, which check availability before handing out a function pointer.
//! - `unsafe` is confined to the x86 modules: vector loads from array
//!   references and calls of `#[target_feature]` functions, each with a
//!   `// SAFETY:` comment.
//!
//! ## What this crate does not do
//!
//! It computes CRC32C only (not CRC32/IEEE or CRC64), has no AVX-512 (zmm)
//! kernels (the 256-bit VPCLMULQDQ kernel runs on AVX-512 machines too, and
//! we have no AVX-512 machine to test a zmm kernel on), no aarch64 kernels
//! yet (the scalar kernel serves there), and never allocates.
//!
//! ## Example
//!
//! ```
//! use std::cmp::Ordering;
//! use dr_simd::{compare, crc32c, eq, Crc32cKernel};
//!
//! let frame = b"append-entries term=7 index=42";
//! let checksum = crc32c(frame);
//! // Every kernel this CPU has agrees with the dispatched one.
//! for kernel in Crc32cKernel::available() {
//!     assert_eq!(kernel.update(0, frame), checksum);
//! }
//! assert!(eq(b"user:0001", b"user:0001"));
//! assert_eq!(compare(b"user:0001", b"user:0002"), Ordering::Less);
//! ```

#![allow(unsafe_code)] // Only in the x86 kernel modules; see the invariants above.
#![deny(missing_docs)]

pub mod bytes;
mod cpu;
pub mod crc32c;

pub use bytes::{BytesKernel, compare, eq};
pub use cpu::CpuFeatures;
pub use crc32c::{Crc32cKernel, crc32c};
