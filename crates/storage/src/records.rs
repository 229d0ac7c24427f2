//! The small records dr-storage keeps beside the log (hard state,
//! configuration, snapshot metadata, indexes) and their encoding: a
//! fixed little-endian layout followed by the CRC32C of those bytes, so a
//! flipped bit is an error on read, never a wrong value.
//!
//! Log entries themselves are dr-codec entry frames, which carry their
//! own checksum.

use dr_codec::message::{ConfState, LogIndex, NodeId, SnapshotMeta, Term};
use dr_raft::HardState;

/// Why a stored record could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError(pub String);

/// Appends the checksum of `payload` to it.
fn seal(mut payload: Vec<u8>) -> Vec<u8> {
    let crc = dr_simd::crc32c(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// The payload of a sealed record, checked.
fn open<'a>(what: &str, record: &'a [u8]) -> Result<&'a [u8], RecordError> {
    let Some(split) = record.len().checked_sub(4) else {
        return Err(RecordError(format!(
            "{what} record is {} bytes, shorter than its checksum",
            record.len()
        )));
    };
    let (payload, crc) = record.split_at(split);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if dr_simd::crc32c(payload) != stored {
        return Err(RecordError(format!("{what} record fails its checksum")));
    }
    Ok(payload)
}

/// Reads little-endian u64s off a payload.
struct Reader<'a> {
    what: &'a str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(what: &'a str, payload: &'a [u8]) -> Self {
        Self {
            what,
            rest: payload,
        }
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let Some((word, rest)) = self.rest.split_first_chunk::<8>() else {
            return Err(RecordError(format!("{} record is truncated", self.what)));
        };
        self.rest = rest;
        Ok(u64::from_le_bytes(*word))
    }

    fn ids(&mut self) -> Result<Vec<NodeId>, RecordError> {
        let count = self.u64()?;
        if count > (self.rest.len() / 8) as u64 {
            return Err(RecordError(format!(
                "{} record claims {count} ids in {} bytes",
                self.what,
                self.rest.len()
            )));
        }
        (0..count).map(|_| self.u64()).collect()
    }

    fn finish(self) -> Result<(), RecordError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(RecordError(format!(
                "{} record has {} trailing bytes",
                self.what,
                self.rest.len()
            )))
        }
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[NodeId]) {
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

pub(crate) fn encode_u64(value: u64) -> Vec<u8> {
    seal(value.to_le_bytes().to_vec())
}

pub(crate) fn decode_u64(what: &str, record: &[u8]) -> Result<u64, RecordError> {
    let mut reader = Reader::new(what, open(what, record)?);
    let value = reader.u64()?;
    reader.finish()?;
    Ok(value)
}

/// The applied index, with its entry's term when the store knew it.
pub(crate) fn encode_applied(index: LogIndex, term: Option<Term>) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&index.to_le_bytes());
    if let Some(term) = term {
        out.extend_from_slice(&term.to_le_bytes());
    }
    seal(out)
}

/// An applied index record; one of the index alone (as older versions
/// wrote) has no term.
pub(crate) fn decode_applied(record: &[u8]) -> Result<(LogIndex, Option<Term>), RecordError> {
    let mut reader = Reader::new("applied index", open("applied index", record)?);
    let index = reader.u64()?;
    let term = if reader.rest.is_empty() {
        None
    } else {
        Some(reader.u64()?)
    };
    reader.finish()?;
    Ok((index, term))
}

/// An index and its term (the compaction point).
pub(crate) fn encode_index_term(index: LogIndex, term: Term) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    seal(out)
}

pub(crate) fn decode_index_term(record: &[u8]) -> Result<(LogIndex, Term), RecordError> {
    let mut reader = Reader::new("compaction point", open("compaction point", record)?);
    let pair = (reader.u64()?, reader.u64()?);
    reader.finish()?;
    Ok(pair)
}

pub(crate) fn encode_hard_state(hard_state: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    // Node ids are never 0, so 0 stands for "no vote".
    out.extend_from_slice(&hard_state.vote.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
    seal(out)
}

pub(crate) fn decode_hard_state(record: &[u8]) -> Result<HardState, RecordError> {
    let mut reader = Reader::new("hard state", open("hard state", record)?);
    let term = reader.u64()?;
    let vote = reader.u64()?;
    let commit = reader.u64()?;
    reader.finish()?;
    Ok(HardState {
        term,
        vote: (vote != 0).then_some(vote),
        commit,
    })
}

fn put_conf_state(out: &mut Vec<u8>, conf: &ConfState) {
    for ids in [
        &conf.voters,
        &conf.voters_outgoing,
        &conf.learners,
        &conf.learners_next,
    ] {
        put_ids(out, ids);
    }
}

fn read_conf_state(reader: &mut Reader<'_>) -> Result<ConfState, RecordError> {
    Ok(ConfState {
        voters: reader.ids()?,
        voters_outgoing: reader.ids()?,
        learners: reader.ids()?,
        learners_next: reader.ids()?,
    })
}

pub(crate) fn encode_conf_state(conf: &ConfState) -> Vec<u8> {
    let mut out = Vec::new();
    put_conf_state(&mut out, conf);
    seal(out)
}

pub(crate) fn decode_conf_state(record: &[u8]) -> Result<ConfState, RecordError> {
    let mut reader = Reader::new("configuration", open("configuration", record)?);
    let conf = read_conf_state(&mut reader)?;
    reader.finish()?;
    Ok(conf)
}

/// Snapshot metadata and the length of its data.
pub(crate) fn encode_snapshot_meta(meta: &SnapshotMeta, data_len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    put_conf_state(&mut out, &meta.conf_state);
    seal(out)
}

pub(crate) fn decode_snapshot_meta(
    what: &str,
    record: &[u8],
) -> Result<(SnapshotMeta, u64), RecordError> {
    let mut reader = Reader::new(what, open(what, record)?);
    let index = reader.u64()?;
    let term = reader.u64()?;
    let data_len = reader.u64()?;
    let conf_state = read_conf_state(&mut reader)?;
    reader.finish()?;
    Ok((
        SnapshotMeta {
            index,
            term,
            conf_state,
        },
        data_len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_damage() {
        let hard_state = HardState {
            term: 7,
            vote: Some(3),
            commit: 42,
        };
        let record = encode_hard_state(&hard_state);
        assert_eq!(decode_hard_state(&record), Ok(hard_state));
        for position in 0..record.len() {
            let mut damaged = record.clone();
            damaged[position] ^= 0x10;
            assert!(decode_hard_state(&damaged).is_err(), "flip at {position}");
        }
        assert!(decode_hard_state(&record[..10]).is_err());
        assert!(decode_hard_state(&[]).is_err());

        let conf = ConfState {
            voters: vec![1, 2],
            voters_outgoing: vec![1, 2, 3],
            learners: vec![4],
            learners_next: vec![3],
        };
        assert_eq!(
            decode_conf_state(&encode_conf_state(&conf)),
            Ok(conf.clone())
        );
        let meta = SnapshotMeta {
            index: 9,
            term: 2,
            conf_state: conf,
        };
        let record = encode_snapshot_meta(&meta, 1234);
        assert_eq!(decode_snapshot_meta("snapshot", &record), Ok((meta, 1234)));
        assert_eq!(decode_index_term(&encode_index_term(5, 6)), Ok((5, 6)));
        assert_eq!(decode_u64("applied", &encode_u64(77)), Ok(77));
    }

    #[test]
    fn a_lying_count_is_refused_without_allocating_it() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        let record = seal(payload);
        assert!(decode_conf_state(&record).is_err());
    }
}
