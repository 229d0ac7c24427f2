//! # dr-node: the replicated key-value server
//!
//! The crate that stacks the others into `drkv`, a server people run and
//! talk to with the Redis tools they already have: `redis-cli`,
//! `redis-benchmark`, any Redis client library.
//!
//! - [`node`]: one node — configuration, data directory, start and
//!   orderly stop of everything below.
//! - [`runtime`]: the engine thread: dr-engine's replica engine over the
//!   RocksDB store (dr-storage), the peer transport (dr-transport), the
//!   system clock and [`machine`]'s key-value state machine; ticks, peer
//!   messages and client requests in, one synced write per turn for
//!   every proposal that arrived (group commit), apply, answer.
//! - [`lease`]: the lease gate for reads on the connections' threads
//!   (`--read-lease`); [`status`]: the state published every turn,
//!   lock-free.
//! - [`kv`]: the state machine: write commands as log entries stamped
//!   with the leader's time, applied deterministically (a presence cache
//!   spares most writes a store read); keys with types, versions and
//!   expiry times; [`reads`]: reads of the applied state; [`command`]:
//!   Redis commands parsed and answered.
//! - [`connection`]: the client port (authentication, permissions,
//!   protected mode); [`auth`]: users and password hashes.
//! - [`server`]: the executor that carries commands
//!   to the engine; on a follower the engine forwards writes to the
//!   leader, and fetches read indexes from it, as messages on the peer
//!   transport (never through a client port).
//! - [`admin`]: the HTTP admin port (`/metrics`, `/status`, membership,
//!   leader transfer, snapshot, backup); [`metrics`]: its counters.
//! - [`resp`]: the Redis protocol, RESP2 and RESP3; [`loadgen`]: the
//!   closed-loop load generator behind `drkv bench`.
//!
//! ## Invariants
//!
//! - A write is answered only after its entry is committed by a quorum
//!   and applied here; the answer is the outcome this node computed when
//!   applying it (every node computes the same). A proposal whose index
//!   ends up holding another term's entry is answered `-TRYAGAIN` (it had
//!   no effect); one whose fate cannot be known (lost leader, timeout) is
//!   answered `-UNCERTAIN`, never success.
//! - A key whose expiry time has passed on the serving node's clock (or
//!   the state's, if ahead) is never returned; every node removes it at
//!   the same log entry (the first write that meets it, or the leader's
//!   housekeeping entry).
//! - `EXEC` is one log entry: its commands apply atomically on every node
//!   or, when a watched key's version moved, not at all.
//! - Every read is linearizable: served once the applied index reaches a
//!   read index the leader confirmed with a quorum (ReadIndex), on the
//!   leader or on a follower that fetched the index from the leader. With
//!   `read_lease` the leader may instead hand out its commit index while
//!   its lease lasts ([`lease`]): three quarters of the time for which a
//!   quorum promised to elect no one else, by the monotonic clock (clock
//!   rates must agree within that margin; pauses only shorten it). Its
//!   connections then answer single-key reads from the store directly,
//!   only if the lease held both before and after the read.
//! - A ready is persisted (one synced RocksDB write) before its messages
//!   leave and before anything it covers is applied or answered.
//! - A client's bytes never make the server allocate past the request
//!   limit, wait forever for a request's end, or panic.
//! - The client port changes no cluster state but the data: membership,
//!   leadership and member addresses change only through the admin API
//!   ([`admin`]), and node-to-node traffic (forwarded writes, read-index
//!   fetches) travels only on the peer transport.
//! - With a password configured, a client that has not authenticated
//!   gets `-NOAUTH` for everything but `AUTH`, `HELLO` and `QUIT`; no
//!   password or hash is ever logged or shown ([`auth`]).
//! - One clock ([`clock`]) for the engine's ticks and leases and the
//!   connections' lease gate. The test-only `failpoints` feature (for the
//!   robustness suite) adds `PUT /failpoints` to the admin API: a clock
//!   rate and dr-storage's disk faults; a build without it has neither.
//!
//! ## What it does not do
//!
//! Strings and hashes only (no lists, sets, sorted sets, streams, pub/sub
//! or scripts), one database; users
//! are read from the configuration (`ACL SETUSER` and friends are not
//! served). `SCAN` cursors live on the node that handed them out. Expiry
//! follows the leader's clock for writes and the serving node's clock
//! for reads (`docs/design/expiry.md` states the bound). A
//! write whose leader fails before answering is reported as
//! `-UNCERTAIN`: retrying it is the client's decision (`INCR` is not
//! idempotent).
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

pub mod admin;
pub mod auth;
pub mod clock;
pub mod command;
pub mod config;
pub mod connection;
pub mod glob;
pub mod kv;
pub mod lease;
pub mod loadgen;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod reads;
pub mod resp;
pub mod runtime;
pub mod server;
pub mod status;
pub mod tls;
