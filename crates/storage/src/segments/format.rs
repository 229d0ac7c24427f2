//! The bytes of a segment: batches of records, each batch checksummed
//! with the segment's id, so a batch left in a recycled file by the
//! segment it used to be never passes for one of the new segment's.
//!
//! ```text
//! batch  = magic u32 LE | payload length u32 LE | crc32c u32 LE | payload | zero padding to 8 bytes
//!          (the crc covers the segment id u64 LE, the payload length and the payload)
//! record = kind u8 | body length u32 LE | body
//! kinds  = 1 entry (a dr-codec entry frame) | 2 hard state (a checked record)
//!          | 3 clear (u64 LE: the index the log starts at next) | 4 seal (u64 LE: the next segment's id)
//!          | 5 synced (u64 LE: every byte of the segment before this offset was durable when
//!            the batch was written; for a synced batch, its own end)
//! ```
//!
//! The synced record, which every batch the log writes ends with, tells a
//! write lost unsynced (a power failure keeps any subset of the pages
//! written since the last sync) from damage to bytes once durable.

use bytes::{BufMut, BytesMut};
use dr_codec::frame::{CodecConfig, encode_entry};
use dr_codec::message::{Entry, LogIndex};
use dr_raft::{HardState, StorageError};

use crate::records;

/// The first four bytes of every batch ("DRLG").
pub(super) const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"DRLG");
/// Magic, payload length and checksum.
pub(super) const HEADER_BYTES: usize = 12;
/// Batches start at multiples of this, so a scan for a batch after a
/// damaged one only looks at aligned offsets.
pub(super) const ALIGN_BYTES: u64 = 8;
/// The space a seal batch takes, always kept free at a segment's end.
pub(super) const SEAL_BATCH_BYTES: u64 = 40;
/// The largest payload a batch may declare: a declared length above it
/// is damage, not a batch to read.
pub(super) const PAYLOAD_BYTES_MAX: u32 = 1 << 30;
/// A record's kind and body length.
const RECORD_HEADER_BYTES: usize = 5;
/// The synced record every batch ends with.
const SYNCED_RECORD_BYTES: usize = RECORD_HEADER_BYTES + 8;

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum RecordKind {
    /// One log entry, as a dr-codec frame.
    Entry = 1,
    /// The hard state from here on.
    HardState = 2,
    /// Every entry before is forgotten; the log goes on at the index the
    /// body names (a snapshot replaced the log).
    Clear = 3,
    /// The segment ends here; the body names the next segment's id.
    Seal = 4,
    /// Every byte of the segment before the body's offset was durable
    /// when the batch was written.
    Synced = 5,
}

impl RecordKind {
    pub(super) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Entry),
            2 => Some(Self::HardState),
            3 => Some(Self::Clear),
            4 => Some(Self::Seal),
            5 => Some(Self::Synced),
            _ => None,
        }
    }
}

/// The records of one write, encoded; where each entry's frame sits in
/// the payload is kept so the log can find it again.
#[derive(Debug, Default)]
pub(crate) struct LogBatch {
    payload: BytesMut,
    /// (index, term, offset of the frame in the payload, frame length).
    pub(super) entries: Vec<(LogIndex, u64, usize, u32)>,
    /// The index the log restarts at, when the batch clears it.
    pub(super) clear: Option<LogIndex>,
    /// The newest hard state in the batch.
    pub(super) hard_state: Option<HardState>,
}

/// The most payload capacity a cleared batch keeps for the next write
/// (one large catch-up batch does not pin its buffer).
const KEPT_PAYLOAD_BYTES_MAX: usize = 1 << 20;

impl LogBatch {
    /// Empties the batch for the next write, keeping its buffers (up to
    /// [`KEPT_PAYLOAD_BYTES_MAX`]) so that a write does not grow a new
    /// one from nothing.
    pub(crate) fn clear(&mut self) {
        if self.payload.capacity() > KEPT_PAYLOAD_BYTES_MAX {
            *self = Self::default();
            return;
        }
        self.payload.clear();
        self.entries.clear();
        self.clear = None;
        self.hard_state = None;
    }

    /// Whether the batch holds nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    fn record(&mut self, kind: RecordKind, body_len: usize) {
        self.payload.put_u8(kind as u8);
        self.payload
            .put_u32_le(u32::try_from(body_len).expect("a record body fits u32"));
    }

    /// Adds an entry (after the caller checked it continues the log).
    pub(crate) fn push_entry(
        &mut self,
        entry: &Entry,
        codec: &CodecConfig,
    ) -> Result<(), StorageError> {
        let start = self.payload.len();
        self.record(RecordKind::Entry, 0);
        let frame_at = self.payload.len();
        let frame_len = encode_entry(entry, codec, &mut self.payload).map_err(|e| {
            StorageError::Invalid(format!("entry {} cannot be encoded: {e}", entry.index))
        })?;
        let frame_len32 = u32::try_from(frame_len).map_err(|_| {
            StorageError::Invalid(format!("entry {} is {frame_len} bytes", entry.index))
        })?;
        self.payload[start + 1..frame_at].copy_from_slice(&frame_len32.to_le_bytes());
        self.entries
            .push((entry.index, entry.term, frame_at, frame_len32));
        Ok(())
    }

    /// Adds the hard state.
    pub(crate) fn push_hard_state(&mut self, hard_state: HardState) {
        let body = records::encode_hard_state(&hard_state);
        self.record(RecordKind::HardState, body.len());
        self.payload.put_slice(&body);
        self.hard_state = Some(hard_state);
    }

    /// Forgets every entry: the log goes on at `next`.
    pub(crate) fn push_clear(&mut self, next: LogIndex) {
        self.record(RecordKind::Clear, 8);
        self.payload.put_u64_le(next);
        self.entries.clear();
        self.clear = Some(next);
    }

    pub(super) fn push_seal(&mut self, next_segment: u64) {
        self.record(RecordKind::Seal, 8);
        self.payload.put_u64_le(next_segment);
    }

    /// The bytes [`Self::frame`] writes.
    pub(super) fn framed_len(&self) -> u64 {
        padded((HEADER_BYTES + self.payload.len() + SYNCED_RECORD_BYTES) as u64)
    }

    /// The batch as written into segment `segment_id`: header, payload
    /// ending with the synced record (`synced_through`), padding.
    pub(super) fn frame(&self, segment_id: u64, synced_through: u64, out: &mut Vec<u8>) {
        out.clear();
        let len = u32::try_from(self.payload.len() + SYNCED_RECORD_BYTES)
            .expect("a batch is under 4 GiB");
        out.extend_from_slice(&BATCH_MAGIC.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.payload);
        out.push(RecordKind::Synced as u8);
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&synced_through.to_le_bytes());
        let crc = batch_crc(segment_id, len, &out[HEADER_BYTES..]);
        out[8..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        out.resize(padded(out.len() as u64) as usize, 0);
        debug_assert_eq!(out.len() as u64, self.framed_len());
    }
}

/// The checksum of a batch of `segment_id` with this payload.
pub(super) fn batch_crc(segment_id: u64, len: u32, payload: &[u8]) -> u32 {
    let crc = dr_simd::crc32c::update(0, &segment_id.to_le_bytes());
    let crc = dr_simd::crc32c::update(crc, &len.to_le_bytes());
    dr_simd::crc32c::update(crc, payload)
}

/// `len` rounded up to the batch alignment.
pub(super) fn padded(len: u64) -> u64 {
    len.div_ceil(ALIGN_BYTES) * ALIGN_BYTES
}

/// One record of a payload: its kind, its body and the body's offset in
/// the payload.
pub(super) struct RawRecord<'a> {
    pub(super) kind: RecordKind,
    pub(super) body: &'a [u8],
    pub(super) body_at: usize,
}

/// Splits a checked payload into records; a record that does not parse
/// is damage (the payload's checksum matched, so it was written so).
pub(super) fn records(payload: &[u8]) -> Result<Vec<RawRecord<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let header = payload
            .get(at..at + RECORD_HEADER_BYTES)
            .ok_or_else(|| format!("a record header cut at payload offset {at}"))?;
        let kind = RecordKind::from_code(header[0])
            .ok_or_else(|| format!("unknown record kind {} at payload offset {at}", header[0]))?;
        let len = u32::from_le_bytes(header[1..5].try_into().expect("four bytes")) as usize;
        let body_at = at + RECORD_HEADER_BYTES;
        let body = payload
            .get(body_at..body_at + len)
            .ok_or_else(|| format!("a {len}-byte record body past the payload at {body_at}"))?;
        out.push(RawRecord {
            kind,
            body,
            body_at,
        });
        at = body_at + len;
    }
    Ok(out)
}

/// What a batch's synced record says, if it has one (batches written
/// before the record existed have none).
pub(super) fn synced_through(records: &[RawRecord<'_>]) -> Option<u64> {
    records
        .iter()
        .rev()
        .find(|record| record.kind == RecordKind::Synced)
        .and_then(|record| body_u64(record).ok())
}

/// A u64 record body.
pub(super) fn body_u64(record: &RawRecord<'_>) -> Result<u64, String> {
    <[u8; 8]>::try_from(record.body)
        .map(u64::from_le_bytes)
        .map_err(|_| format!("a {:?} record of {} bytes", record.kind, record.body.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_frames_and_splits_back_into_its_records() {
        let mut batch = LogBatch::default();
        let entries = dr_raft::conformance::entries(5, 7, 2);
        for entry in &entries {
            batch.push_entry(entry, &CodecConfig::default()).unwrap();
        }
        batch.push_hard_state(HardState {
            term: 2,
            vote: Some(1),
            commit: 5,
        });
        batch.push_seal(9);
        let mut framed = Vec::new();
        batch.frame(3, 4096, &mut framed);
        assert_eq!(framed.len() as u64, batch.framed_len());
        assert_eq!(framed.len() as u64 % ALIGN_BYTES, 0);
        let len = u32::from_le_bytes(framed[4..8].try_into().unwrap());
        let payload = &framed[HEADER_BYTES..HEADER_BYTES + len as usize];
        let crc = u32::from_le_bytes(framed[8..12].try_into().unwrap());
        assert_eq!(batch_crc(3, len, payload), crc);
        assert_ne!(batch_crc(4, len, payload), crc, "the segment id is checked");
        let split = records(payload).unwrap();
        let kinds: Vec<_> = split.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                RecordKind::Entry,
                RecordKind::Entry,
                RecordKind::Entry,
                RecordKind::HardState,
                RecordKind::Seal,
                RecordKind::Synced
            ]
        );
        assert_eq!(body_u64(&split[4]).unwrap(), 9);
        assert_eq!(synced_through(&split), Some(4096));
        for (record, (index, term, at, len)) in split.iter().zip(&batch.entries) {
            assert_eq!((record.body_at, record.body.len()), (*at, *len as usize));
            let (entry, _) = dr_codec::frame::decode_entry(
                &bytes::Bytes::copy_from_slice(record.body),
                &CodecConfig::default(),
            )
            .unwrap();
            assert_eq!((entry.index, entry.term), (*index, *term));
        }
        assert!(records(&payload[..payload.len() - 1]).is_err());
    }

    /// A batch cleared for reuse frames its next records exactly as a
    /// new batch would (the log keeps one batch across writes).
    #[test]
    fn a_cleared_batch_frames_as_a_new_one() {
        let codec = CodecConfig::default();
        let fill = |batch: &mut LogBatch, first: u64| {
            for entry in &dr_raft::conformance::entries(first, first + 3, 2) {
                batch.push_entry(entry, &codec).unwrap();
            }
            batch.push_hard_state(HardState {
                term: 2,
                vote: None,
                commit: first,
            });
        };
        let mut reused = LogBatch::default();
        fill(&mut reused, 1);
        reused.push_clear(9);
        reused.clear();
        assert!(reused.is_empty());
        assert_eq!((reused.clear, reused.hard_state), (None, None));
        fill(&mut reused, 9);
        let mut fresh = LogBatch::default();
        fill(&mut fresh, 9);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        reused.frame(1, 0, &mut a);
        fresh.frame(1, 0, &mut b);
        assert_eq!(a, b);
        assert_eq!(reused.entries, fresh.entries);
        assert_eq!(reused.hard_state, fresh.hard_state);
        // A buffer grown past the kept limit is let go.
        let mut big = LogBatch::default();
        big.payload.reserve(KEPT_PAYLOAD_BYTES_MAX + 1);
        big.clear();
        assert!(big.payload.capacity() <= KEPT_PAYLOAD_BYTES_MAX);
    }
}
