//! Frames: a fixed 16-byte header, then an rkyv archive (the body).
//!
//! See the crate docs for the layout byte by byte. Encoding appends one
//! frame to a `BytesMut`; decoding checks a frame from outside completely
//! (length, header fields, checksum, archive structure) before reading any
//! field, and hands out payloads as slices of the frame's `Bytes`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use rkyv::api::low::LowSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Allocator, Positional, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::message::{
    AppendEntries, AppendEntriesResponse, ForwardRequest, ForwardResponse, ForwardStatus,
    Heartbeat, HeartbeatResponse, InstallSnapshot, InstallSnapshotResponse, ReadIndexRequest,
    ReadIndexResponse, RejectHint, VoteRequest, VoteResponse,
};
use crate::message::{
    ArchivedAppendEntries, ArchivedConfState, ArchivedEntry, ArchivedEntryKind,
    ArchivedForwardStatus, ArchivedMessage, ArchivedMessageBody, ArchivedSnapshotMeta, ConfState,
    Entry, EntryKind, LogIndex, Message, MessageBody, SnapshotMeta, Term,
};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"DRFM";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 16;
/// Header bytes covered by the checksum (everything before it).
const CHECKSUMMED_HEADER_LEN: usize = 12;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A batch of [`Message`]s to one peer.
    Messages = 1,
    /// One log [`Entry`] (the on-disk record of the Raft log).
    Entry = 2,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Messages),
            2 => Some(Self::Entry),
            _ => None,
        }
    }
}

/// Limits applied to frames from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecConfig {
    /// The largest frame (header and body) accepted or produced. Checked
    /// against the header's length field before anything is read or
    /// allocated, so a lying header cannot make a reader wait for or
    /// reserve more.
    pub frame_bytes_max: usize,
}

impl Default for CodecConfig {
    /// 64 MiB: a batch of entries or a snapshot chunk fits comfortably.
    fn default() -> Self {
        Self {
            frame_bytes_max: 64 << 20,
        }
    }
}

/// Why a frame could not be read. Every variant says what was wrong with
/// the bytes; none leaves the decoder in a state to retry with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header says the frame has: wait for more (on a
    /// stream) or treat as corrupt (on disk).
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The first four bytes are not [`MAGIC`]: not a dr frame at all.
    BadMagic([u8; 4]),
    /// Written by a format version this build does not read.
    UnsupportedVersion(u16),
    /// The kind byte names no [`FrameKind`].
    UnknownKind(u8),
    /// The reserved header byte is not zero.
    ReservedByteSet(u8),
    /// The header announces a frame over [`CodecConfig::frame_bytes_max`].
    TooLarge {
        /// The announced frame length.
        frame_len: u64,
        /// The limit.
        max: usize,
    },
    /// The checksum over header and body does not match: corruption.
    ChecksumMismatch {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// The checksum matched but the body is not a valid archive of its
    /// kind (a bug on the sending side, or a deliberate forgery).
    Malformed(String),
    /// A frame of another kind than the caller asked for.
    WrongKind {
        /// The kind asked for.
        expected: FrameKind,
        /// The kind found.
        found: FrameKind,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(
                    f,
                    "truncated frame: needs {needed} bytes, {available} available"
                )
            }
            Self::BadMagic(found) => write!(
                f,
                "not a dr frame: magic {found:02x?}, expected {MAGIC:02x?}"
            ),
            Self::UnsupportedVersion(version) => {
                write!(
                    f,
                    "frame format version {version} is not supported (this build reads {FORMAT_VERSION})"
                )
            }
            Self::UnknownKind(kind) => write!(f, "unknown frame kind {kind}"),
            Self::ReservedByteSet(byte) => {
                write!(f, "reserved header byte is {byte:#04x}, must be 0")
            }
            Self::TooLarge { frame_len, max } => {
                write!(
                    f,
                    "frame of {frame_len} bytes exceeds the limit of {max} bytes (frame_bytes_max)"
                )
            }
            Self::ChecksumMismatch { stored, computed } => {
                write!(
                    f,
                    "frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupted)"
                )
            }
            Self::Malformed(reason) => write!(f, "malformed frame body: {reason}"),
            Self::WrongKind { expected, found } => {
                write!(f, "expected a {expected:?} frame, found {found:?}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be written. The output buffer is left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The frame would exceed [`CodecConfig::frame_bytes_max`]: split the
    /// batch.
    TooLarge {
        /// The frame's length.
        frame_len: usize,
        /// The limit.
        max: usize,
    },
    /// rkyv could not serialize the value.
    Serialize(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { frame_len, max } => {
                write!(
                    f,
                    "encoded frame of {frame_len} bytes exceeds the limit of {max} bytes; send a smaller batch"
                )
            }
            Self::Serialize(reason) => write!(f, "could not serialize: {reason}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends rkyv's output to the frame being built.
struct FrameWriter<'a> {
    out: &'a mut BytesMut,
    body_start: usize,
}

impl Positional for FrameWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.body_start
    }
}

impl<E> Writer<E> for FrameWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Archives a slice of messages as an `ArchivedVec`, so callers need not
/// own a `Vec` to encode a batch.
struct MessageSlice<'a>(&'a [Message]);

impl Archive for MessageSlice<'_> {
    type Archived = ArchivedVec<ArchivedMessage>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<S> Serialize<S> for MessageSlice<'_>
where
    S: rancor::Fallible + Allocator + Writer + ?Sized,
    Message: Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

/// Appends one frame holding `messages` (a batch to one peer) to `out`.
/// Returns the frame's length.
pub fn encode_messages(
    messages: &[Message],
    config: &CodecConfig,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    encode(FrameKind::Messages, &MessageSlice(messages), config, out)
}

/// Appends one frame holding `entry` (a log record) to `out`. Returns the
/// frame's length.
pub fn encode_entry(
    entry: &Entry,
    config: &CodecConfig,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    encode(FrameKind::Entry, entry, config, out)
}

fn encode<T>(
    kind: FrameKind,
    value: &T,
    config: &CodecConfig,
    out: &mut BytesMut,
) -> Result<usize, EncodeError>
where
    T: for<'a, 'w> Serialize<LowSerializer<FrameWriter<'w>, ArenaHandle<'a>, rancor::Error>>,
{
    let frame_start = out.len();
    out.put_bytes(0, HEADER_LEN);
    let writer = FrameWriter {
        out,
        body_start: frame_start + HEADER_LEN,
    };
    // The low-level serializer: dr's types share no pointers, so the
    // high-level API's sharing map would be pure overhead. Scratch space
    // comes from rkyv's thread-local arena, reused across calls.
    let serialized = rkyv::util::with_arena(|arena| {
        rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            value,
            writer,
            arena.acquire(),
        )
    });
    if let Err(error) = serialized {
        out.truncate(frame_start);
        return Err(EncodeError::Serialize(error.to_string()));
    }
    let frame_len = out.len() - frame_start;
    let body_len = frame_len - HEADER_LEN;
    if frame_len > config.frame_bytes_max || u32::try_from(body_len).is_err() {
        out.truncate(frame_start);
        return Err(EncodeError::TooLarge {
            frame_len,
            max: config.frame_bytes_max,
        });
    }
    let frame = &mut out[frame_start..];
    frame[0..4].copy_from_slice(&MAGIC);
    frame[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame[6] = kind as u8;
    frame[7] = 0;
    frame[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());
    let checksum = frame_checksum(&frame[..CHECKSUMMED_HEADER_LEN], &frame[HEADER_LEN..]);
    frame[12..16].copy_from_slice(&checksum.to_le_bytes());
    Ok(frame_len)
}

/// CRC32C of the checksummed header bytes followed by the body.
fn frame_checksum(header: &[u8], body: &[u8]) -> u32 {
    dr_simd::crc32c::update(dr_simd::crc32c(header), body)
}

/// The parsed, checked header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the body holds.
    pub kind: FrameKind,
    /// The whole frame's length, header included.
    pub frame_len: usize,
    checksum: u32,
}

/// Reads the header at the front of `bytes`: `Ok(None)` when fewer than
/// [`HEADER_LEN`] bytes have arrived. Checks magic, version, kind, the
/// reserved byte and the length limit, so a stream reader knows how many
/// bytes to wait for, and that the number is sane, before reading them.
pub fn peek_header(bytes: &[u8], config: &CodecConfig) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let field = |range: std::ops::Range<usize>| &header[range];
    let magic: [u8; 4] = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let kind = FrameKind::from_byte(header[6]).ok_or(DecodeError::UnknownKind(header[6]))?;
    if header[7] != 0 {
        return Err(DecodeError::ReservedByteSet(header[7]));
    }
    let body_len = u32::from_le_bytes(field(8..12).try_into().unwrap_or_default());
    let frame_len = HEADER_LEN as u64 + u64::from(body_len);
    if frame_len > config.frame_bytes_max as u64 {
        return Err(DecodeError::TooLarge {
            frame_len,
            max: config.frame_bytes_max,
        });
    }
    let checksum = u32::from_le_bytes(field(12..16).try_into().unwrap_or_default());
    Ok(Some(FrameHeader {
        kind,
        frame_len: frame_len as usize,
        checksum,
    }))
}

/// A frame whose header, checksum and archive have all been checked.
#[derive(Clone, Copy)]
pub enum Frame<'a> {
    /// A batch of messages.
    Messages(MessagesView<'a>),
    /// One log entry.
    Entry(EntryView<'a>),
}

impl Frame<'_> {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Messages(_) => FrameKind::Messages,
            Self::Entry(_) => FrameKind::Entry,
        }
    }
}

/// Checks the frame at the front of `bytes` completely and returns a view
/// of it plus its length (bytes after it, such as the next frame, are left
/// alone). Nothing of the body is trusted before the checks pass.
pub fn decode_frame<'a>(
    bytes: &'a Bytes,
    config: &CodecConfig,
) -> Result<(Frame<'a>, usize), DecodeError> {
    let header = peek_header(bytes, config)?.ok_or(DecodeError::Truncated {
        needed: HEADER_LEN,
        available: bytes.len(),
    })?;
    let frame = bytes
        .get(..header.frame_len)
        .ok_or(DecodeError::Truncated {
            needed: header.frame_len,
            available: bytes.len(),
        })?;
    let body = &frame[HEADER_LEN..];
    let computed = frame_checksum(&frame[..CHECKSUMMED_HEADER_LEN], body);
    if computed != header.checksum {
        return Err(DecodeError::ChecksumMismatch {
            stored: header.checksum,
            computed,
        });
    }
    let malformed = |error: rancor::Error| DecodeError::Malformed(error.to_string());
    let view = match header.kind {
        FrameKind::Messages => {
            let messages =
                rkyv::api::low::access::<ArchivedVec<ArchivedMessage>, rancor::Error>(body)
                    .map_err(malformed)?;
            Frame::Messages(MessagesView {
                frame: bytes,
                messages,
            })
        }
        FrameKind::Entry => {
            let entry =
                rkyv::api::low::access::<ArchivedEntry, rancor::Error>(body).map_err(malformed)?;
            Frame::Entry(EntryView {
                frame: bytes,
                entry,
            })
        }
    };
    Ok((view, header.frame_len))
}

/// Decodes the messages frame at the front of `bytes`, appending its
/// messages to `out`; payloads are slices of `bytes`. Returns the frame's
/// length.
pub fn decode_messages(
    bytes: &Bytes,
    config: &CodecConfig,
    out: &mut Vec<Message>,
) -> Result<usize, DecodeError> {
    match decode_frame(bytes, config)? {
        (Frame::Messages(view), frame_len) => {
            out.extend(view.iter());
            Ok(frame_len)
        }
        (frame, _) => Err(DecodeError::WrongKind {
            expected: FrameKind::Messages,
            found: frame.kind(),
        }),
    }
}

/// Decodes the entry frame at the front of `bytes`; its payload is a slice
/// of `bytes`. Returns the entry and the frame's length.
pub fn decode_entry(bytes: &Bytes, config: &CodecConfig) -> Result<(Entry, usize), DecodeError> {
    match decode_frame(bytes, config)? {
        (Frame::Entry(view), frame_len) => Ok((view.entry(), frame_len)),
        (frame, _) => Err(DecodeError::WrongKind {
            expected: FrameKind::Entry,
            found: frame.kind(),
        }),
    }
}

/// A checked batch of messages, read lazily from the frame.
#[derive(Clone, Copy)]
pub struct MessagesView<'a> {
    frame: &'a Bytes,
    messages: &'a ArchivedVec<ArchivedMessage>,
}

impl<'a> MessagesView<'a> {
    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, decoded one by one; payloads are slices of the frame.
    pub fn iter(&self) -> impl Iterator<Item = Message> + 'a {
        let frame = self.frame;
        self.messages
            .iter()
            .map(move |message| decode_message(frame, message))
    }

    /// The entries of the `index`th message if it is an append, decoded
    /// one by one without collecting them: the allocation-free way to move
    /// entries from a received frame into a log.
    pub fn entries_of(&self, index: usize) -> Option<impl Iterator<Item = Entry> + 'a> {
        let frame = self.frame;
        Some(
            self.archived_entries_of(index)?
                .iter()
                .map(move |entry| decode_entry_archived(frame, entry)),
        )
    }

    /// The entries of the `index`th message if it is an append, read in
    /// place: each payload borrows the frame, so nothing is counted or
    /// allocated per entry (an [`Entry`] holds a `Bytes` slice, whose
    /// reference count each one raises and lowers). For looking at
    /// entries; [`EntryRef::to_entry`] makes an owned one.
    pub fn entry_refs_of(&self, index: usize) -> Option<impl Iterator<Item = EntryRef<'a>> + 'a> {
        Some(self.archived_entries_of(index)?.iter().map(EntryRef::from))
    }

    fn archived_entries_of(&self, index: usize) -> Option<&'a ArchivedVec<ArchivedEntry>> {
        match &self.messages.get(index)?.body {
            ArchivedMessageBody::AppendEntries(append) => Some(&append.entries),
            _ => None,
        }
    }
}

/// A checked log entry read in place from its frame: the payload borrows
/// the frame's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The entry's term.
    pub term: Term,
    /// The entry's index.
    pub index: LogIndex,
    /// What the entry holds.
    pub kind: EntryKind,
    /// The payload, inside the frame.
    pub payload: &'a [u8],
}

impl<'a> From<&'a ArchivedEntry> for EntryRef<'a> {
    fn from(entry: &'a ArchivedEntry) -> Self {
        Self {
            term: entry.term.to_native(),
            index: entry.index.to_native(),
            kind: decode_entry_kind(&entry.kind),
            payload: entry.payload.as_slice(),
        }
    }
}

impl EntryRef<'_> {
    /// The owned entry, its payload a slice of `frame` (the frame this
    /// entry was read from; another buffer panics, as `Bytes::slice_ref`
    /// does).
    pub fn to_entry(&self, frame: &Bytes) -> Entry {
        Entry {
            term: self.term,
            index: self.index,
            kind: self.kind,
            payload: frame.slice_ref(self.payload),
        }
    }
}

fn decode_entry_kind(kind: &ArchivedEntryKind) -> EntryKind {
    match kind {
        ArchivedEntryKind::Normal => EntryKind::Normal,
        ArchivedEntryKind::ConfChange => EntryKind::ConfChange,
        ArchivedEntryKind::Noop => EntryKind::Noop,
    }
}

/// A checked log entry.
#[derive(Clone, Copy)]
pub struct EntryView<'a> {
    frame: &'a Bytes,
    entry: &'a ArchivedEntry,
}

impl EntryView<'_> {
    /// The entry; its payload is a slice of the frame.
    pub fn entry(&self) -> Entry {
        decode_entry_archived(self.frame, self.entry)
    }
}

fn decode_entry_archived(frame: &Bytes, entry: &ArchivedEntry) -> Entry {
    EntryRef::from(entry).to_entry(frame)
}

fn decode_ids(ids: &ArchivedVec<rkyv::Archived<u64>>) -> Vec<u64> {
    ids.iter().map(|id| id.to_native()).collect()
}

fn decode_conf_state(conf: &ArchivedConfState) -> ConfState {
    ConfState {
        voters: decode_ids(&conf.voters),
        voters_outgoing: decode_ids(&conf.voters_outgoing),
        learners: decode_ids(&conf.learners),
        learners_next: decode_ids(&conf.learners_next),
    }
}

fn decode_snapshot_meta(meta: &ArchivedSnapshotMeta) -> SnapshotMeta {
    SnapshotMeta {
        index: meta.index.to_native(),
        term: meta.term.to_native(),
        conf_state: decode_conf_state(&meta.conf_state),
    }
}

fn decode_append(frame: &Bytes, append: &ArchivedAppendEntries) -> AppendEntries {
    AppendEntries {
        prev_log_index: append.prev_log_index.to_native(),
        prev_log_term: append.prev_log_term.to_native(),
        leader_commit: append.leader_commit.to_native(),
        entries: append
            .entries
            .iter()
            .map(|entry| decode_entry_archived(frame, entry))
            .collect(),
    }
}

fn decode_forward_status(status: &ArchivedForwardStatus) -> ForwardStatus {
    match status {
        ArchivedForwardStatus::Done => ForwardStatus::Done,
        ArchivedForwardStatus::NotDone => ForwardStatus::NotDone,
        ArchivedForwardStatus::Uncertain => ForwardStatus::Uncertain,
        ArchivedForwardStatus::Refused => ForwardStatus::Refused,
    }
}

fn decode_message(frame: &Bytes, message: &ArchivedMessage) -> Message {
    let body = match &message.body {
        ArchivedMessageBody::Vote(vote) => MessageBody::Vote(VoteRequest {
            pre_vote: vote.pre_vote,
            last_log_index: vote.last_log_index.to_native(),
            last_log_term: vote.last_log_term.to_native(),
            leader_transfer: vote.leader_transfer,
        }),
        ArchivedMessageBody::VoteResponse(response) => MessageBody::VoteResponse(VoteResponse {
            pre_vote: response.pre_vote,
            granted: response.granted,
        }),
        ArchivedMessageBody::AppendEntries(append) => {
            MessageBody::AppendEntries(decode_append(frame, append))
        }
        ArchivedMessageBody::AppendEntriesResponse(response) => {
            MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                index: response.index.to_native(),
                reject: response.reject.as_ref().map(|hint| RejectHint {
                    last_index: hint.last_index.to_native(),
                    conflict_term: hint.conflict_term.to_native(),
                    conflict_index: hint.conflict_index.to_native(),
                }),
            })
        }
        ArchivedMessageBody::Heartbeat(heartbeat) => MessageBody::Heartbeat(Heartbeat {
            commit: heartbeat.commit.to_native(),
            read_context: heartbeat.read_context.to_native(),
        }),
        ArchivedMessageBody::HeartbeatResponse(response) => {
            MessageBody::HeartbeatResponse(HeartbeatResponse {
                read_context: response.read_context.to_native(),
            })
        }
        ArchivedMessageBody::InstallSnapshot(chunk) => {
            MessageBody::InstallSnapshot(InstallSnapshot {
                meta: decode_snapshot_meta(&chunk.meta),
                offset: chunk.offset.to_native(),
                data: frame.slice_ref(chunk.data.as_slice()),
                done: chunk.done,
            })
        }
        ArchivedMessageBody::InstallSnapshotResponse(response) => {
            MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                snapshot_index: response.snapshot_index.to_native(),
                next_offset: response.next_offset.to_native(),
                rejected: response.rejected,
            })
        }
        ArchivedMessageBody::TimeoutNow => MessageBody::TimeoutNow,
        ArchivedMessageBody::Forward(request) => MessageBody::Forward(ForwardRequest {
            request_id: request.request_id.to_native(),
            payload: frame.slice_ref(request.payload.as_slice()),
        }),
        ArchivedMessageBody::ForwardResponse(response) => {
            MessageBody::ForwardResponse(ForwardResponse {
                request_id: response.request_id.to_native(),
                status: decode_forward_status(&response.status),
                payload: frame.slice_ref(response.payload.as_slice()),
            })
        }
        ArchivedMessageBody::ReadIndex(request) => MessageBody::ReadIndex(ReadIndexRequest {
            request_id: request.request_id.to_native(),
        }),
        ArchivedMessageBody::ReadIndexResponse(response) => {
            MessageBody::ReadIndexResponse(ReadIndexResponse {
                request_id: response.request_id.to_native(),
                status: decode_forward_status(&response.status),
                index: response.index.to_native(),
            })
        }
    };
    Message {
        from: message.from.to_native(),
        to: message.to.to_native(),
        term: message.term.to_native(),
        body,
    }
}
