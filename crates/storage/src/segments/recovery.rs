//! Opening a segmented log: every batch of every segment checked and
//! replayed into the in-memory index; a torn tail told from damage.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use bytes::Bytes;
use dr_codec::frame::{CodecConfig, decode_entry};

use super::format::{
    self, ALIGN_BYTES, BATCH_MAGIC, HEADER_BYTES, PAYLOAD_BYTES_MAX, RecordKind, batch_crc,
};
use super::{Location, Segment, SegmentLog, check_segment_bytes};
use crate::records;

/// Writes zeros over `from..to` of `file`, synced.
fn erase(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (to - from) as usize];
    file.write_all_at(&zeros, from)?;
    file.sync_data()
}

/// What is at an offset of a segment.
enum Scanned {
    /// A whole batch with a matching checksum: its payload and where the
    /// next batch starts.
    Batch(Vec<u8>, u64),
    /// Not a batch of this segment (zeros, a torn write, another
    /// segment's bytes, damage).
    Invalid,
}

fn scan_at(file: &File, file_len: u64, segment_id: u64, at: u64) -> std::io::Result<Scanned> {
    if at + HEADER_BYTES as u64 > file_len {
        return Ok(Scanned::Invalid);
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, at)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("four bytes"));
    let (magic, len, crc) = (word(0), word(4), word(8));
    let end = at + HEADER_BYTES as u64 + u64::from(len);
    if magic != BATCH_MAGIC || len > PAYLOAD_BYTES_MAX || end > file_len {
        return Ok(Scanned::Invalid);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, at + HEADER_BYTES as u64)?;
    if batch_crc(segment_id, len, &payload) != crc {
        return Ok(Scanned::Invalid);
    }
    Ok(Scanned::Batch(payload, format::padded(end)))
}

/// The valid batches of the segment after offset `from` (which is not
/// one): where each starts and ends, and what its synced record says.
fn valid_batches_after(
    file: &File,
    file_len: u64,
    segment_id: u64,
    from: u64,
) -> std::io::Result<Vec<LaterBatch>> {
    const WINDOW_BYTES: u64 = 1 << 20;
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut found = Vec::new();
    let mut window_at = from;
    let mut window = vec![0u8; WINDOW_BYTES as usize];
    // A valid batch's bytes are skipped whole: a later one starts after.
    let mut skip_to = from;
    while window_at < file_len {
        let n = (file_len - window_at).min(WINDOW_BYTES) as usize;
        file.read_exact_at(&mut window[..n], window_at)?;
        let mut i = 0;
        while i + 4 <= n {
            let at = window_at + i as u64;
            if at >= skip_to
                && window[i..i + 4] == magic
                && let Scanned::Batch(payload, end) = scan_at(file, file_len, segment_id, at)?
            {
                // A payload whose checksum matched but whose records do
                // not parse claims nothing: counted as unknown.
                let synced_through = format::records(&payload)
                    .ok()
                    .and_then(|records| format::synced_through(&records));
                found.push(LaterBatch {
                    at,
                    end,
                    synced_through,
                });
                skip_to = end;
            }
            i += ALIGN_BYTES as usize;
        }
        window_at += n as u64;
    }
    Ok(found)
}

/// A valid batch found after a damaged one.
struct LaterBatch {
    at: u64,
    end: u64,
    /// Its synced record (none in batches written before the record
    /// existed: unknown, so it may have been synced).
    synced_through: Option<u64>,
}

/// What to do about the newest segment's first damaged batch at `at`,
/// given the valid batches after it: cut the segment there (erasing them)
/// when none of them says the bytes at `at` were durable, or refuse.
fn cut_or_refuse(at: u64, later: &[LaterBatch]) -> Result<Option<u64>, String> {
    match later
        .iter()
        .find(|batch| batch.synced_through.is_none_or(|synced| synced > at))
    {
        Some(batch) => Err(format!(
            "the batch at offset {at} is damaged, but the valid batch at {} was written after \
             it was durable{}: damage, not a lost write",
            batch.at,
            if batch.synced_through.is_none() {
                " (or says nothing about it)"
            } else {
                ""
            }
        )),
        None => Ok(later.last().map(|batch| batch.end)),
    }
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it), replaying every segment.
    /// Errors name the segment, the offset and what is wrong.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<Self, String> {
        check_segment_bytes(segment_bytes)?;
        let io =
            |what: &str, e: std::io::Error| format!("raft log in {}: {what}: {e}", dir.display());
        fs::create_dir_all(dir).map_err(|e| io("creating the directory", e))?;
        let mut segments = BTreeMap::new();
        let mut spares = Vec::new();
        let mut spare_counter = 0;
        for entry in fs::read_dir(dir).map_err(|e| io("listing", e))? {
            let entry = entry.map_err(|e| io("listing", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|id| id.parse::<u64>().ok())
            {
                segments.insert(id, entry.path());
            } else if name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(|e| io("removing a half-made spare", e))?;
            } else if let Some(n) = name
                .strip_prefix("spare-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                spare_counter = spare_counter.max(n);
                spares.push(entry.path());
            } else {
                return Err(format!(
                    "raft log in {}: unexpected file {name}",
                    dir.display()
                ));
            }
        }
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            live: VecDeque::new(),
            offset: 0,
            durable: 0,
            opening_offset: 0,
            files_peak: segments.len() + spares.len(),
            spares,
            spare_counter,
            preparing: None,
            first: 1,
            locations: VecDeque::new(),
            hard_state: None,
            cleared_below: 0,
            frame: Vec::new(),
            tail: Vec::new(),
            tail_at: None,
            pages: Vec::new(),
        };
        if segments.is_empty() {
            log.cleared_below = 1;
            log.start_segment(1)
                .map_err(|e| io("creating the first segment", e))?;
            return Ok(log);
        }
        let ids: Vec<u64> = segments.keys().copied().collect();
        if let Some(gap) = ids.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(format!(
                "raft log in {}: segment {} follows segment {}: segments are missing",
                dir.display(),
                gap[1],
                gap[0]
            ));
        }
        log.cleared_below = ids[0];
        let mut started = false;
        for (n, (&id, path)) in segments.iter().enumerate() {
            let newest = n + 1 == segments.len();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| io("opening a segment", e))?;
            log.live.push_back(Segment {
                id,
                file,
                max_index: 0,
                holds_hard_state: false,
            });
            let (end, sealed) = log
                .replay_segment(id, newest, &mut started)
                .map_err(|what| format!("raft log segment {}: {what}", path.display()))?;
            if newest {
                log.offset = end;
                if sealed {
                    // A crash between the seal and its successor's start.
                    log.start_segment(id + 1)
                        .map_err(|e| io("starting the segment after a sealed one", e))?;
                }
            }
        }
        // What was read back may be only in the page cache (a process
        // ended before its sync): durable from here on, so the synced
        // records of later batches are true.
        log.newest()
            .file
            .sync_data()
            .map_err(|e| io("syncing the newest segment", e))?;
        log.durable = log.offset;
        log.open_with_hard_state()
            .map_err(|e| io("writing the hard state into the newest segment", e))?;
        if log.offset * 2 > log.segment_bytes {
            log.prepare_spare();
        }
        Ok(log)
    }

    /// Replays one segment's batches; returns where its valid bytes end.
    /// Every segment but the newest must end with its seal; the newest
    /// may (a crash before its successor started), which the answer says.
    fn replay_segment(
        &mut self,
        id: u64,
        newest: bool,
        started: &mut bool,
    ) -> Result<(u64, bool), String> {
        let file = &self.newest().file;
        let file_len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut at = 0u64;
        let mut sealed = false;
        let mut batches = Vec::new();
        while !sealed {
            match scan_at(file, file_len, id, at).map_err(|e| e.to_string())? {
                Scanned::Batch(payload, next) => {
                    for record in format::records(&payload)
                        .map_err(|e| format!("batch at offset {at}: {e}"))?
                    {
                        if record.kind == RecordKind::Seal {
                            let next_id = format::body_u64(&record)?;
                            if next_id != id + 1 {
                                return Err(format!("sealed at {at} naming segment {next_id}"));
                            }
                            sealed = true;
                        }
                    }
                    batches.push((at, payload));
                    at = next;
                }
                Scanned::Invalid => break,
            }
        }
        if !sealed && !newest {
            return Err(format!(
                "ends at offset {at} without its seal, and later segments exist: damage"
            ));
        }
        if newest && !sealed {
            let later = valid_batches_after(file, file_len, id, at + ALIGN_BYTES)
                .map_err(|e| e.to_string())?;
            if let Some(end) = cut_or_refuse(at, &later)? {
                // Written unsynced after the lost bytes: never promised,
                // and erased so they are never read as the log's again.
                erase(file, at, end).map_err(|e| format!("erasing lost unsynced writes: {e}"))?;
            }
        }
        for (batch_at, payload) in batches {
            self.replay_batch(id, batch_at, &payload, started)
                .map_err(|e| format!("batch at offset {batch_at}: {e}"))?;
        }
        Ok((at, sealed))
    }

    fn replay_batch(
        &mut self,
        id: u64,
        batch_at: u64,
        payload: &[u8],
        started: &mut bool,
    ) -> Result<(), String> {
        let payload_at = batch_at + HEADER_BYTES as u64;
        for record in format::records(payload)? {
            match record.kind {
                RecordKind::Entry => {
                    let frame = Bytes::copy_from_slice(record.body);
                    let (entry, frame_len) = decode_entry(&frame, &CodecConfig::default())
                        .map_err(|e| format!("an entry that does not decode: {e}"))?;
                    if frame_len != frame.len() {
                        return Err(format!("entry {} in a longer record", entry.index));
                    }
                    if !*started {
                        self.first = entry.index;
                        *started = true;
                    }
                    let len = u32::try_from(frame_len).expect("a record body fits u32");
                    self.place(
                        entry.index,
                        Location {
                            segment: id,
                            offset: payload_at + record.body_at as u64,
                            len,
                            term: entry.term,
                        },
                    )?;
                }
                RecordKind::HardState => {
                    self.hard_state =
                        Some(records::decode_hard_state(record.body).map_err(|e| e.0)?);
                    self.newest_mut().holds_hard_state = true;
                }
                RecordKind::Clear => {
                    self.locations.clear();
                    self.first = format::body_u64(&record)?;
                    self.cleared_below = id;
                    *started = true;
                }
                RecordKind::Seal | RecordKind::Synced => {}
            }
        }
        Ok(())
    }
}
