//! # dr-node: the replicated key-value server
//!
//! The crate that stacks the others into `drkv`, a server people run and
//! talk to with the Redis tools they already have. It is being built in
//! steps (issue 7); what exists today is the client protocol:
//!
//! - [`resp`]: the Redis protocol, RESP2 and RESP3 — requests parsed
//!   incrementally from a connection's buffer (multibulk and inline),
//!   arguments as slices of that buffer, every length checked against
//!   [`resp::Limits`] before anything is allocated; replies encoded for the
//!   protocol the client chose.
//!
//! ## Invariants
//!
//! - A client's bytes never make the server allocate or wait for more than
//!   the configured request size; a framing error is answered with a
//!   Redis-style error and the connection closed, never a panic.
//!
//! ## What it does not do (yet)
//!
//! The runtime loop (consensus, storage, transport), the command set, the
//! admin HTTP endpoint and the `drkv` binary are the next steps.
//!
//! ## Example
//!
//! ```
//! use bytes::BytesMut;
//! use dr_node::resp::{Limits, Protocol, Reply, parse_request};
//!
//! let mut input = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nPING\r\n"[..]);
//! let get = parse_request(&mut input, &Limits::default()).unwrap().unwrap();
//! assert_eq!(get[1], "key");
//! let ping = parse_request(&mut input, &Limits::default()).unwrap().unwrap();
//! assert_eq!(ping[0], "PING");
//!
//! let mut out = BytesMut::new();
//! Reply::Null.encode(Protocol::Resp2, &mut out);
//! assert_eq!(&out[..], b"$-1\r\n");
//! ```

pub mod resp;
