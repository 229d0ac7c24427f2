//! The log: readies persisted in one synced batch, entries appended and
//! read back, the hard state, and dr-raft's storage traits.

use super::*;

impl RocksStorage {
    /// Writes `batch` (unsynced) once it holds `INSTALL_BATCH_BYTES`, and
    /// starts a new one: bulk copies go out in bounded pieces, and the
    /// synced batch that ends them makes them durable (the WAL is ordered).
    pub(super) fn write_if_full(&self, batch: &mut WriteBatch, what: &str) {
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            self.db
                .write(std::mem::take(batch))
                .unwrap_or_else(|error| fatal(what, error));
        }
    }

    /// Builds a batch with `build`; when it fails, the cached state it may
    /// have changed is put back, so the store stays as it was.
    pub(super) fn try_batch(
        &mut self,
        build: impl FnOnce(&mut Self, &mut WriteBatch) -> Result<(), StorageError>,
    ) -> Result<WriteBatch, StorageError> {
        let saved = self.cached.clone();
        let mut batch = WriteBatch::default();
        match build(self, &mut batch) {
            Ok(()) => Ok(batch),
            Err(error) => {
                self.cached = saved;
                self.log_batch.clear();
                Err(error)
            }
        }
    }

    /// Whether persisting `ready` syncs the disk: it does when the ready
    /// changes what the node promises others (entries, a snapshot, its
    /// term or its vote); a ready that only moves the commit index is
    /// written without a sync. Ask before persisting it.
    pub fn must_sync(&self, ready: &Ready) -> bool {
        ready.makes_promises(&self.cached.hard_state)
    }

    /// Makes `batch` and the segmented log's part of the write durable:
    /// RocksDB's first (the compaction point and snapshot records the log
    /// is reconciled with on open), then the log's, each synced.
    pub(super) fn commit(&mut self, batch: WriteBatch, what: &str) {
        if self.segments.is_none() || !batch.is_empty() {
            self.commit_rocks(batch, what);
        }
        self.write_log(true, what);
    }

    /// Writes `batch` and the segmented log's part of the write without a
    /// sync: durable with the next synced write or sync.
    pub(super) fn write_unsynced(&mut self, batch: WriteBatch, what: &str) {
        if !batch.is_empty() {
            self.db
                .write(batch)
                .unwrap_or_else(|error| fatal(what, error));
        }
        self.write_log(false, what);
    }

    /// Writes the segmented log's part of the write, if any.
    pub(super) fn write_log(&mut self, sync: bool, what: &str) {
        if let Some(log) = self.segments.as_mut()
            && !self.log_batch.is_empty()
        {
            log.write(&self.log_batch, sync)
                .unwrap_or_else(|error| fatal(what, error));
        }
        self.log_batch.clear();
    }

    fn commit_rocks(&self, batch: WriteBatch, what: &str) {
        #[cfg(feature = "failpoints")]
        match crate::failpoints::before_synced_write() {
            crate::failpoints::Injected::Proceed => {}
            crate::failpoints::Injected::Fail(error) => fatal(what, error),
            crate::failpoints::Injected::Tear => {
                let bytes = batch.size_in_bytes() as u64;
                let mut unsynced = WriteOptions::default();
                unsynced.set_sync(false);
                let _ = self.db.write_opt(batch, &unsynced);
                let _ = crate::failpoints::tear_wal_tail(&self.path, bytes / 2 + 1);
                eprintln!("dr-storage: {what}: torn write injected; ending the process");
                std::process::abort();
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .unwrap_or_else(|error| fatal(what, error));
    }

    pub(super) fn add_ready(
        &mut self,
        batch: &mut WriteBatch,
        ready: &Ready,
        chunks_done: bool,
    ) -> Result<(), StorageError> {
        if !chunks_done {
            self.add_chunks(batch, &ready.snapshot_chunks)?;
        }
        if let Some(meta) = &ready.snapshot {
            self.add_snapshot_switch(batch, meta)?;
        }
        self.add_entries(batch, &ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            self.add_hard_state(batch, hard_state);
        }
        Ok(())
    }

    pub(super) fn add_hard_state(&mut self, batch: &mut WriteBatch, hard_state: HardState) {
        self.cached.hard_state = hard_state;
        if self.segments.is_some() {
            self.log_batch.push_hard_state(hard_state);
            return;
        }
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_HARD_STATE,
            records::encode_hard_state(&hard_state),
        );
    }

    pub(super) fn add_entries(
        &mut self,
        batch: &mut WriteBatch,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        check_contiguous(entries)?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index > self.cached.last_index + 1 {
            return Err(StorageError::Invalid(format!(
                "append at index {} leaves a gap after the last index {}",
                first.index, self.cached.last_index
            )));
        }
        let skip = (self.cached.compacted_index + 1).saturating_sub(first.index) as usize;
        let Some(kept) = entries.get(skip..).filter(|kept| !kept.is_empty()) else {
            return Ok(());
        };
        let from = kept[0].index;
        if self.segments.is_some() {
            // The log replaces entries from `from` on as it takes them in.
            for entry in kept {
                self.log_batch.push_entry(entry, &self.codec)?;
            }
        } else {
            let log = cf(&self.db, CF_RAFT_LOG);
            if from <= self.cached.last_index {
                batch.delete_range_cf(log, log_key(from), log_key(self.cached.last_index + 1));
            }
            let mut encoded = bytes::BytesMut::new();
            for entry in kept {
                encoded.clear();
                encode_entry(entry, &self.codec, &mut encoded).map_err(|e| {
                    StorageError::Invalid(format!("entry {} cannot be encoded: {e}", entry.index))
                })?;
                batch.put_cf(log, log_key(entry.index), &encoded);
            }
        }
        let runs = &mut self.cached.term_runs;
        runs.split_off(&from);
        let mut previous = runs.last_key_value().map(|(_, &term)| term);
        if from == self.cached.compacted_index + 1 {
            previous = None;
        }
        for entry in kept {
            if previous != Some(entry.term) {
                runs.insert(entry.index, entry.term);
                previous = Some(entry.term);
            }
        }
        self.cached.last_index = kept.last().expect("kept is not empty").index;
        Ok(())
    }

    pub(super) fn check_in_log(&self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.cached.compacted_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        if index > self.cached.last_index {
            return Err(StorageError::Unavailable {
                index,
                last_index: self.cached.last_index,
            });
        }
        Ok(())
    }
}

pub(super) fn check_contiguous(entries: &[Entry]) -> Result<(), StorageError> {
    match entries
        .windows(2)
        .find(|pair| pair[1].index != pair[0].index + 1)
    {
        Some(gap) => Err(StorageError::Invalid(format!(
            "appended entries are not contiguous: {} follows {}",
            gap[1].index, gap[0].index
        ))),
        None => Ok(()),
    }
}

/// Decodes a stored entry, checking its frame, checksum and index.
pub(super) fn decode_stored_entry(
    index: LogIndex,
    value: &Bytes,
    codec: &CodecConfig,
) -> Result<Entry, StorageError> {
    let (entry, frame_len) = decode_entry(value, codec)
        .map_err(|e| io_error(&format!("raft log entry {index} is damaged"), e))?;
    if frame_len != value.len() || entry.index != index {
        return Err(StorageError::Io(format!(
            "raft log entry stored at {index} holds index {} in {frame_len} of {} bytes",
            entry.index,
            value.len()
        )));
    }
    Ok(entry)
}

/// Entries `low..high` (checked to be held) from the segmented log, up to
/// `max_bytes` of payload (at least one).
fn read_segments(
    log: &SegmentLog,
    low: LogIndex,
    high: LogIndex,
    max_bytes: u64,
    codec: &CodecConfig,
) -> Result<Vec<Entry>, StorageError> {
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    for index in low..high {
        let frame = log
            .read_frame(index)
            .map_err(|e| io_error(&format!("reading raft log entry {index}"), e))?;
        let entry = decode_stored_entry(index, &frame, codec)?;
        bytes += entry.payload.len() as u64;
        if !entries.is_empty() && bytes > max_bytes {
            break;
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl Storage for RocksStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.cached.hard_state,
            conf_state: self.cached.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low > high {
            return Err(StorageError::Invalid(format!(
                "entries range {low}..{high} is reversed"
            )));
        }
        if low == high {
            if low <= self.cached.compacted_index {
                return Err(StorageError::Compacted {
                    index: low,
                    first_index: self.first_index(),
                });
            }
            return Ok(Vec::new());
        }
        self.check_in_log(low)?;
        self.check_in_log(high - 1)?;
        if let Some(log) = &self.segments {
            return read_segments(log, low, high, max_bytes, &self.codec);
        }
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_RAFT_LOG));
        iterator.seek(log_key(low));
        for index in low..high {
            if !iterator.valid() || iterator.key() != Some(&log_key(index)[..]) {
                iterator
                    .status()
                    .map_err(|e| io_error("reading the raft log", e))?;
                return Err(StorageError::Io(format!(
                    "raft log entry {index} is missing"
                )));
            }
            let value =
                Bytes::copy_from_slice(iterator.value().expect("valid iterator has a value"));
            let entry = decode_stored_entry(index, &value, &self.codec)?;
            bytes += entry.payload.len() as u64;
            if !entries.is_empty() && bytes > max_bytes {
                break;
            }
            entries.push(entry);
            iterator.next();
        }
        Ok(entries)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.cached.compacted_index {
            return Ok(self.cached.compacted_term);
        }
        self.check_in_log(index)?;
        let (_, &term) = self
            .cached
            .term_runs
            .range(..=index)
            .next_back()
            .expect("every index in the log lies in a term run");
        Ok(term)
    }

    fn first_index(&self) -> LogIndex {
        self.cached.compacted_index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.cached.last_index
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.cached.snapshot.clone())
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<SnapshotChunk, StorageError> {
        if *meta != self.cached.snapshot {
            return Err(StorageError::SnapshotOutOfDate {
                offered: meta.index,
                current: self.cached.snapshot.index,
            });
        }
        if let Some(view) = &self.view {
            let (data, done) = view
                .chunk(offset, max_bytes)
                .map_err(|e| io_error(&format!("reading the snapshot at offset {offset}"), e))?;
            return Ok(SnapshotChunk { data, done });
        }
        let total = self.cached.snapshot_len;
        if offset > total {
            return Err(StorageError::Invalid(format!(
                "snapshot offset {offset} is past its {total} bytes"
            )));
        }
        let end = offset.saturating_add(max_bytes).min(total);
        let mut data = vec![0u8; (end - offset) as usize];
        if !data.is_empty() {
            SlotReader::at(&self.db, self.cached.slot, offset)
                .and_then(|mut reader| reader.read_exact(&mut data))
                .map_err(|e| io_error(&format!("reading the snapshot at offset {offset}"), e))?;
        }
        Ok(SnapshotChunk {
            data: Bytes::from(data),
            done: end == total,
        })
    }
}

impl LogStore for RocksStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let batch = self.try_batch(|store, batch| store.add_entries(batch, entries))?;
        if !batch.is_empty() || !self.log_batch.is_empty() {
            self.commit(batch, "appending to the raft log");
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.add_hard_state(&mut batch, hard_state);
        self.commit(batch, "writing the hard state");
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_CONF_STATE,
            records::encode_conf_state(&conf_state),
        );
        self.commit(batch, "writing the configuration");
        self.cached.conf_state = conf_state;
        Ok(())
    }

    fn create_snapshot(
        &mut self,
        index: LogIndex,
        conf_state: ConfState,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.refuse_out_of_date(index)?;
        let term = self.term(index)?;
        let meta = SnapshotMeta {
            index,
            term,
            conf_state,
        };
        let (mut batch, len) = match self.state_machine {
            StateMachine::External => {
                let batch =
                    self.try_batch(|store, batch| store.add_staged_chunk(batch, &meta, 0, &data))?;
                (batch, data.len() as u64)
            }
            StateMachine::DataFamily => {
                self.refuse_while_receiving()?;
                if !data.is_empty() || index != self.cached.applied {
                    return Err(StorageError::Invalid(format!(
                        "a store that is its own state machine snapshots its data at the \
                         applied index {} and takes no image (asked: index {index}, {} bytes)",
                        self.cached.applied,
                        data.len()
                    )));
                }
                // Written out first: the view pins RocksDB's state, which
                // is then the state at the applied index.
                self.checkpoint();
                let view = self.pin_measured(meta)?;
                let mut batch = WriteBatch::default();
                self.add_view_switch(&mut batch, view);
                self.commit(batch, "creating a snapshot");
                return Ok(());
            }
        };
        self.add_slot_switch(&mut batch, meta, len);
        self.commit(batch, "creating a snapshot");
        Ok(())
    }

    fn stage_snapshot_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let batch =
            self.try_batch(|store, batch| store.add_staged_chunk(batch, meta, offset, data))?;
        self.commit(batch, "staging a snapshot chunk");
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.check_staged_stream(meta)?;
        let batch = self.try_batch(|store, batch| store.add_snapshot_switch(batch, meta))?;
        self.commit(batch, "applying a snapshot");
        if self.state_machine == StateMachine::DataFamily {
            self.finish_data_install()?;
        }
        Ok(())
    }

    /// Persists a ready atomically, in one synced write: its snapshot
    /// chunks, the snapshot switch, the entries and the hard state. The
    /// messages of the ready may be sent when this returns. (A ready that
    /// completes a state-machine snapshot first stages its chunks and
    /// checks the whole stream, then switches and rebuilds the data.)
    fn persist_ready(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let installs_data =
            ready.snapshot.is_some() && self.state_machine == StateMachine::DataFamily;
        let mut chunks_done = false;
        if let Some(meta) = ready.snapshot.as_ref().filter(|_| installs_data) {
            self.stage_and_check(ready, meta)?;
            chunks_done = true;
        }
        let must_sync = self.must_sync(ready);
        let batch = self.try_batch(|store, batch| store.add_ready(batch, ready, chunks_done))?;
        if must_sync {
            self.commit(batch, "persisting a ready");
        } else {
            // Only the commit index moved: written, not synced (etcd's
            // MustSync rule). A power failure can lose it, which only
            // lowers the commit index recovered; the leader teaches it
            // again. (With the RocksDB log the applied index, written
            // after it in the same WAL, can never survive it; with the
            // segmented log it can, and the consensus core takes the
            // applied index as committed on restart.)
            self.write_unsynced(batch, "persisting the commit index");
        }
        if installs_data {
            self.finish_data_install()?;
        }
        Ok(())
    }

    /// With the segmented log: the ready's batch written with one `pwrite`
    /// and no sync (the log cuts a crash's losses from its end on open).
    /// With the RocksDB log, durably (its write-ahead log refuses a lost
    /// record before a surviving one).
    fn write_ready_unsynced(&mut self, ready: &Ready) -> Result<(), StorageError> {
        if self.segments.is_none() {
            return self.persist_ready(ready);
        }
        if ready.has_snapshot_data() {
            return Err(StorageError::Invalid(
                "a ready with snapshot data is persisted with a sync".into(),
            ));
        }
        let batch = self.try_batch(|store, batch| store.add_ready(batch, ready, false))?;
        debug_assert!(
            batch.is_empty(),
            "entries and hard state go to the segmented log"
        );
        self.write_unsynced(batch, "writing a ready unsynced");
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(log) = self.segments.as_mut() {
            log.sync()
                .unwrap_or_else(|error| fatal("syncing the raft log", error));
        }
        Ok(())
    }

    fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.cached.compacted_index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        self.check_in_log(index)?;
        if index > self.cached.snapshot.index {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} would discard entries the snapshot (at {}) does not cover",
                self.cached.snapshot.index
            )));
        }
        let index = self.compaction_bound(index)?;
        if index <= self.cached.compacted_index {
            return Ok(());
        }
        let term = self.term(index)?;
        let next_term = if index < self.cached.last_index {
            Some(self.term(index + 1)?)
        } else {
            None
        };
        let mut batch = WriteBatch::default();
        let first = self.first_index();
        if self.segments.is_none() {
            batch.delete_range_cf(
                cf(&self.db, CF_RAFT_LOG),
                log_key(first),
                log_key(index + 1),
            );
        }
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_COMPACTION_POINT,
            records::encode_index_term(index, term),
        );
        self.commit(batch, "compacting the raft log");
        let runs = &mut self.cached.term_runs;
        *runs = runs.split_off(&(index + 1));
        if let Some(next_term) = next_term {
            runs.entry(index + 1).or_insert(next_term);
        }
        self.cached.compacted_index = index;
        self.cached.compacted_term = term;
        if let Some(log) = self.segments.as_mut() {
            // The compaction point is durable: the segments behind it may go.
            log.compact(index)
                .map_err(|e| io_error("dropping compacted raft log segments", e))?;
        }
        Ok(())
    }
}
