//! # dr-codec: the bytes between nodes and on disk
//!
//! The one crate that knows rkyv. It defines the messages of the consensus
//! protocol and the entries of the Raft log ([`message`]), and the frame
//! they travel and rest in ([`frame`]): a fixed header followed by an rkyv
//! archive. Decoding a frame received into a `bytes::Bytes` checks it
//! completely, then hands out entries whose payloads are slices of that
//! same buffer: no payload byte is copied.
//!
//! ## Frame layout
//!
//! All integers little-endian.
//!
//! | offset | size | field | value |
//! |---|---|---|---|
//! | 0 | 4 | magic | `"DRFM"` (`44 52 46 4D`) |
//! | 4 | 2 | format version | 1 |
//! | 6 | 1 | frame kind | 1 = batch of messages, 2 = one log entry |
//! | 7 | 1 | reserved | 0 |
//! | 8 | 4 | body length | bytes after the header |
//! | 12 | 4 | checksum | CRC32C (via `dr-simd`) of bytes 0..12, then of the body |
//! | 16 | body length | body | rkyv 0.8 archive, little-endian, unaligned, 32-bit relative pointers; root at the end |
//!
//! A batch body is an archived `Vec<Message>`; an entry body an archived
//! `Entry`. The checksum covers the header fields too, so a flipped kind
//! or length byte is caught, not misread.
//!
//! ## Invariants
//!
//! - **Nothing from outside is trusted before it is checked.** Decoding
//!   checks, in order: that 16 header bytes are there; magic, version,
//!   kind and reserved byte; that the announced length is within
//!   [`CodecConfig::frame_bytes_max`] (before waiting for or reserving
//!   anything); that the whole frame is there; the checksum; and the
//!   archive's structure (rkyv's checked access: every relative pointer
//!   and length in bounds, every enum tag valid). Any failure is a
//!   [`DecodeError`] naming what was wrong, never a panic.
//! - **No allocation sized by the sender.** The only allocations while
//!   decoding are the output `Vec`s, whose lengths come from an archive
//!   already checked to fit inside the frame.
//! - **Zero-copy payloads.** Entry payloads and snapshot chunks decode to
//!   `Bytes::slice_ref` of the frame, sharing its buffer.
//! - **Encoding is all or nothing.** A failed encode leaves the output
//!   buffer as it was.
//!
//! ## What this crate does not do
//!
//! It does not compress, encrypt or authenticate (the checksum detects
//! corruption, not forgery: TLS in the transport is for that), does not
//! frame streams by itself (a reader uses [`frame::peek_header`] to learn
//! each frame's length), and does not check the protocol meaning of
//! messages (consecutive entry indexes, terms): the consensus core does.
//! Archives are little-endian with unaligned fields so that a frame can be
//! read at any offset of a receive buffer, at the cost of unaligned loads.
//!
//! ## Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use dr_codec::frame::{decode_messages, encode_messages, CodecConfig};
//! use dr_codec::message::{AppendEntries, Entry, EntryKind, Message, MessageBody};
//!
//! let config = CodecConfig::default();
//! let append = AppendEntries {
//!     prev_log_index: 41,
//!     prev_log_term: 6,
//!     leader_commit: 40,
//!     entries: vec![Entry { term: 7, index: 42, kind: EntryKind::Normal, payload: Bytes::from_static(b"SET k v") }],
//! };
//! let message = Message { from: 1, to: 2, term: 7, body: MessageBody::AppendEntries(append) };
//! let mut buffer = BytesMut::new();
//! encode_messages(std::slice::from_ref(&message), &config, &mut buffer)?;
//!
//! let received: Bytes = buffer.freeze();
//! let mut decoded = Vec::new();
//! let frame_len = decode_messages(&received, &config, &mut decoded)?;
//! assert_eq!(frame_len, received.len());
//! assert_eq!(decoded, [message]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod frame;
pub mod message;

pub use frame::{CodecConfig, DecodeError, EncodeError, FrameKind};
