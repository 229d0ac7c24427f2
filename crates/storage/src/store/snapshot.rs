//! Snapshots: copies of the state machine taken in the background or on
//! the caller's thread, received snapshots staged and switched in, and the
//! slot reader that streams a stored snapshot.

use super::*;

impl RocksStorage {
    /// Starts a snapshot of the state machine at the applied index (at the
    /// last checkpoint's, with applies kept behind) and returns its index:
    /// RocksDB's state is pinned as it is (`snapshot_view`: nothing is
    /// copied) and measured on a thread of its own while the caller goes
    /// on applying. It becomes the current snapshot when
    /// [`poll_snapshot`](Self::poll_snapshot) sees it measured.
    /// [`LogStore::create_snapshot`] does the same on the caller's thread
    /// (and drops a snapshot in the making).
    ///
    /// Refused for a store whose state machine is external (it hands its
    /// image to `create_snapshot`), while one is in the making or a
    /// received snapshot is being staged, and when nothing was applied
    /// since the current snapshot.
    pub fn begin_snapshot(&mut self, conf_state: ConfState) -> Result<LogIndex, StorageError> {
        if self.state_machine != StateMachine::DataFamily {
            return Err(StorageError::Invalid(
                "a store with an external state machine takes its snapshot image from create_snapshot"
                    .into(),
            ));
        }
        if let Some(making) = &self.making {
            return Err(StorageError::Invalid(format!(
                "a snapshot at index {} is being made",
                making.meta.index
            )));
        }
        self.refuse_while_receiving()?;
        let index = if self.writes_behind() {
            self.checkpointed_index()?
        } else {
            self.cached.applied
        };
        self.refuse_out_of_date(index)?;
        let meta = SnapshotMeta {
            index,
            term: self.term(index)?,
            conf_state,
        };
        let view = SnapshotView::pin(Arc::clone(&self.db), meta).map_err(StorageError::Io)?;
        self.making = Some(view);
        Ok(index)
    }

    /// With applies kept behind, a background snapshot pins RocksDB's
    /// state machine, which is the state at the last checkpoint's index
    /// (never stalling the caller for a checkpoint): that index, once no
    /// checkpoint is in flight ([`StorageError::SnapshotTemporarilyUnavailable`]
    /// meanwhile). When it is not newer than the current snapshot, a
    /// checkpoint is started and the snapshot postponed the same way.
    fn checkpointed_index(&mut self) -> Result<LogIndex, StorageError> {
        self.poll_checkpoint();
        if self.checkpoint_in_flight().is_some() {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        let index = self.checkpointed;
        if index <= self.cached.snapshot.index && index < self.cached.applied {
            self.start_checkpoint();
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(index)
    }

    /// The latest snapshot's data in bytes (0 for the bootstrap one).
    pub fn snapshot_len(&self) -> u64 {
        self.cached.snapshot_len
    }

    /// The index of the snapshot in the making, if one is.
    pub fn snapshot_making_index(&self) -> Option<LogIndex> {
        self.making.as_ref().map(|making| making.meta.index)
    }

    /// Makes a measured view the current snapshot, in one synced write,
    /// and returns its index; `None` while it is measured or when none is
    /// in the making. A failed read of the state is fatal, as every
    /// failed read of the store's own data.
    pub fn poll_snapshot(&mut self) -> Option<LogIndex> {
        let stream_len = match self.making.as_ref()?.poll_measured()? {
            Ok(stream_len) => stream_len,
            Err(error) => fatal("reading the state machine for a snapshot", error),
        };
        let view = self.making.take()?;
        // Whatever would supersede the view (a received snapshot, a
        // synchronous one) drops it first, so these always hold.
        assert!(
            view.meta.index > self.cached.snapshot.index && self.cached.staged.is_none(),
            "a snapshot in the making outlived a change of snapshot"
        );
        let index = view.meta.index;
        let mut batch = WriteBatch::default();
        self.add_view_switch(&mut batch, (view, stream_len));
        self.commit(batch, "switching in a snapshot");
        Some(index)
    }

    /// Pins RocksDB's state as the snapshot `meta` and waits for its
    /// measure (the caller makes it current).
    pub(super) fn pin_measured(
        &mut self,
        meta: SnapshotMeta,
    ) -> Result<(SnapshotView, u64), StorageError> {
        self.making = None;
        let view = SnapshotView::pin(Arc::clone(&self.db), meta).map_err(StorageError::Io)?;
        let stream_len = view
            .wait_measured()
            .unwrap_or_else(|error| fatal("reading the state machine for a snapshot", error));
        Ok((view, stream_len))
    }

    /// Makes a measured view the current snapshot: its metadata, the view
    /// marker, a slot snapshot's data deleted. (The log is the caller's
    /// business.)
    pub(super) fn add_view_switch(&mut self, batch: &mut WriteBatch, view: (SnapshotView, u64)) {
        let (view, stream_len) = view;
        let meta_cf = cf(&self.db, CF_META);
        batch.put_cf(
            meta_cf,
            KEY_SNAPSHOT,
            records::encode_snapshot_meta(&view.meta, stream_len),
        );
        batch.put_cf(
            meta_cf,
            KEY_SNAPSHOT_VIEW,
            records::encode_u64(view.meta.index),
        );
        if !self.cached.snapshot_is_view {
            add_clear_slot(batch, meta_cf, self.cached.slot);
        }
        self.cached.snapshot = view.meta.clone();
        self.cached.snapshot_len = stream_len;
        self.cached.snapshot_is_view = true;
        self.view = Some(view);
    }

    /// A view does not outlive the process: a store whose snapshot was one
    /// pins RocksDB's state again on open, at the applied index it finds,
    /// which becomes the snapshot. That may be older than the snapshot
    /// recorded (the state machine skips the WAL, and the view was not
    /// flushed), never older than the log's compaction point (the log is
    /// never compacted past what RocksDB holds on disk).
    pub(super) fn pin_view_on_open(&mut self) -> Result<(), StorageError> {
        if !self.cached.snapshot_is_view || self.view.is_some() {
            return Ok(());
        }
        let (applied, stored) = (self.cached.applied, self.cached.snapshot.clone());
        if applied < self.cached.compacted_index {
            return Err(StorageError::Invalid(format!(
                "the state machine is at {applied}, behind the log's compaction point {}: \
                 the store lost data",
                self.cached.compacted_index
            )));
        }
        let meta = if applied == stored.index {
            stored.clone()
        } else {
            // Configuration changes are applied through to RocksDB with
            // the configuration they make: the one recorded is the
            // applied index's.
            SnapshotMeta {
                index: applied,
                term: self.term(applied)?,
                conf_state: self.cached.conf_state.clone(),
            }
        };
        let view = self.pin_measured(meta)?;
        if view.0.meta == stored {
            self.view = Some(view.0);
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.add_view_switch(&mut batch, view);
        self.commit(batch, "moving the snapshot to the state found on open");
        Ok(())
    }

    /// A snapshot at `index` would not be newer than the current one.
    pub(super) fn refuse_out_of_date(&self, index: LogIndex) -> Result<(), StorageError> {
        let current = self.cached.snapshot.index;
        if index <= current {
            return Err(StorageError::SnapshotOutOfDate {
                offered: index,
                current,
            });
        }
        Ok(())
    }

    /// Copying the state machine would overwrite the staging slot under
    /// the chunks arriving for a newer state: let that finish.
    pub(super) fn refuse_while_receiving(&self) -> Result<(), StorageError> {
        if let Some((receiving, _)) = &self.cached.staged {
            return Err(StorageError::Invalid(format!(
                "a snapshot at index {} is being received; not snapshotting now",
                receiving.index
            )));
        }
        Ok(())
    }

    /// Drops a snapshot in the making (a received one replaces it).
    pub(super) fn drop_snapshot_in_making(&mut self) {
        self.making = None;
    }

    pub(super) fn add_chunks(
        &mut self,
        batch: &mut WriteBatch,
        chunks: &[StagedChunk],
    ) -> Result<(), StorageError> {
        for StagedChunk { meta, offset, data } in chunks {
            self.add_staged_chunk(batch, meta, *offset, data)?;
        }
        Ok(())
    }

    pub(super) fn add_staged_chunk(
        &mut self,
        batch: &mut WriteBatch,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if offset == 0 {
            self.drop_snapshot_in_making();
        }
        let staging_slot = 1 - self.cached.slot;
        let meta_cf = cf(&self.db, CF_META);
        if offset == 0 {
            add_clear_slot(batch, meta_cf, staging_slot);
            self.cached.staged = Some((meta.clone(), 0));
        }
        let Some((staged_meta, staged_len)) = &mut self.cached.staged else {
            return Err(StorageError::Invalid(format!(
                "snapshot chunk at offset {offset} with nothing staged"
            )));
        };
        if staged_meta != meta || *staged_len != offset {
            return Err(StorageError::Invalid(format!(
                "snapshot chunk at offset {offset} does not continue the staged snapshot ({} bytes of index {})",
                staged_len, staged_meta.index
            )));
        }
        for piece in data.chunks(SNAPSHOT_RECORD_BYTES) {
            batch.put_cf(meta_cf, snapshot_key(staging_slot, *staged_len), piece);
            *staged_len += piece.len() as u64;
        }
        batch.put_cf(
            meta_cf,
            KEY_STAGED,
            records::encode_snapshot_meta(meta, *staged_len),
        );
        Ok(())
    }

    pub(super) fn add_snapshot_switch(
        &mut self,
        batch: &mut WriteBatch,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        if meta.index <= self.cached.snapshot.index {
            return Err(StorageError::SnapshotOutOfDate {
                offered: meta.index,
                current: self.cached.snapshot.index,
            });
        }
        let Some((staged_meta, staged_len)) =
            self.cached.staged.take_if(|(staged, _)| staged == meta)
        else {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} was not staged",
                meta.index
            )));
        };
        // A checkpoint in flight writes the applied index too: it lands
        // before the switch's, never after.
        self.wait_checkpoint();
        self.add_slot_switch(batch, staged_meta, staged_len);
        self.add_log_replacement(batch, meta);
        if self.state_machine == StateMachine::DataFamily {
            // The data family is rebuilt from the new slot right after this
            // batch; the marker makes a crash in between finish it on open.
            let meta_cf = cf(&self.db, CF_META);
            batch.put_cf(meta_cf, KEY_DATA_INSTALL, records::encode_u64(meta.index));
            batch.put_cf(
                meta_cf,
                KEY_APPLIED,
                records::encode_applied(meta.index, Some(meta.term)),
            );
            self.cached.applied = meta.index;
            self.cached.applied_term = Some(meta.term);
        }
        Ok(())
    }

    /// Makes the snapshot `meta` replace the log: the compaction point at
    /// it, the log cleared to go on after it, its configuration the
    /// store's.
    pub(super) fn add_log_replacement(&mut self, batch: &mut WriteBatch, meta: &SnapshotMeta) {
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_COMPACTION_POINT,
            records::encode_index_term(meta.index, meta.term),
        );
        if self.segments.is_some() {
            self.log_batch.push_clear(meta.index + 1);
        } else {
            let log = cf(&self.db, CF_RAFT_LOG);
            batch.delete_range_cf(log, log_key(0), log_key(u64::MAX));
        }
        batch.put_cf(
            cf(&self.db, CF_RAFT_STATE),
            KEY_CONF_STATE,
            records::encode_conf_state(&meta.conf_state),
        );
        let cached = &mut self.cached;
        cached.compacted_index = meta.index;
        cached.compacted_term = meta.term;
        cached.last_index = meta.index;
        cached.term_runs.clear();
        cached.conf_state = meta.conf_state.clone();
    }

    /// Persists the chunks of a ready that also switches to the snapshot
    /// they complete, and checks the whole staged stream before the
    /// switch: a state-machine snapshot that does not parse must never
    /// replace the data.
    pub(super) fn stage_and_check(
        &mut self,
        ready: &Ready,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        if !ready.snapshot_chunks.is_empty() {
            let batch =
                self.try_batch(|store, batch| store.add_chunks(batch, &ready.snapshot_chunks))?;
            self.commit(batch, "staging snapshot chunks");
        }
        self.check_staged_stream(meta)
    }

    pub(super) fn check_staged_stream(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let Some((staged_meta, staged_len)) = &self.cached.staged else {
            return Ok(());
        };
        if self.state_machine != StateMachine::DataFamily || staged_meta != meta {
            return Ok(());
        }
        let mut pairs = self.slot_pairs(1 - self.cached.slot, *staged_len)?;
        while pairs.next_pair().map_err(invalid_stream)?.is_some() {}
        Ok(())
    }

    pub(super) fn slot_pairs(
        &self,
        slot: u8,
        len: u64,
    ) -> Result<PairReader<SlotReader<'_>>, StorageError> {
        let reader = SlotReader::at(&self.db, slot, 0)
            .map_err(|e| io_error("reading a staged snapshot", e))?;
        PairReader::new(reader, len).map_err(invalid_stream)
    }

    /// Rebuilds the data family from the current snapshot slot, in bounded
    /// batches, then clears the install marker. Idempotent, so a crash
    /// midway is finished by running it again on open.
    pub(super) fn finish_data_install(&mut self) -> Result<(), StorageError> {
        let installs = Arc::clone(&self.installs);
        let _installing = installs.begin();
        // Before the family changes: no reader may take a mirrored value
        // of the state being replaced for the new one's (nor a write
        // kept behind).
        self.drop_writes_behind();
        let data = cf(&self.db, CF_DATA);
        let mut batch = WriteBatch::default();
        let everything_after: &[u8] = &[];
        batch.delete_range_cf(data, everything_after, &kv_stream::key_upper_bound()[..]);
        let mut pairs = self.slot_pairs(self.cached.slot, self.cached.snapshot_len)?;
        while let Some((key, value)) = pairs.next_pair().map_err(invalid_stream)? {
            batch.put_cf(data, key, value);
            self.write_if_full(&mut batch, "installing a snapshot");
        }
        drop(pairs);
        batch.delete_cf(cf(&self.db, CF_META), KEY_DATA_INSTALL);
        self.commit(batch, "finishing a snapshot install");
        // RocksDB holds the state at the snapshot's index, recorded with
        // the switch.
        self.checkpointed = self.cached.applied;
        Ok(())
    }

    /// Makes the staged slot the current snapshot: its metadata, the slot
    /// flip, the old slot deleted. (The log is the caller's business.)
    pub(super) fn add_slot_switch(&mut self, batch: &mut WriteBatch, meta: SnapshotMeta, len: u64) {
        let old_slot = self.cached.slot;
        let meta_cf = cf(&self.db, CF_META);
        batch.put_cf(
            meta_cf,
            KEY_SNAPSHOT,
            records::encode_snapshot_meta(&meta, len),
        );
        batch.put_cf(
            meta_cf,
            KEY_SNAPSHOT_SLOT,
            records::encode_u64(u64::from(1 - old_slot)),
        );
        batch.delete_cf(meta_cf, KEY_STAGED);
        batch.delete_cf(meta_cf, KEY_SNAPSHOT_VIEW);
        add_clear_slot(batch, meta_cf, old_slot);
        self.view = None;
        self.cached.snapshot_is_view = false;
        self.cached.slot = 1 - old_slot;
        self.cached.snapshot = meta;
        self.cached.snapshot_len = len;
        self.cached.staged = None;
    }
}

pub(super) fn invalid_stream(error: StreamError) -> StorageError {
    match error {
        StreamError::Io(error) => io_error("reading a staged snapshot", error),
        StreamError::Invalid(what) => StorageError::Invalid(format!(
            "the snapshot is not a valid state-machine stream: {what}"
        )),
    }
}

/// Reads a snapshot slot's stored records as one byte stream.
pub(super) struct SlotReader<'a> {
    iterator: DBRawIterator<'a>,
    slot: u8,
    /// The stream offset of `record`'s first byte past the consumed ones.
    position: u64,
    record: Vec<u8>,
    consumed: usize,
}

impl<'a> SlotReader<'a> {
    /// A reader of `slot` from stream offset `offset`: it starts in the
    /// record holding that offset, so no earlier record is read.
    pub(super) fn at(db: &'a DB, slot: u8, offset: u64) -> io::Result<Self> {
        let iterator = db.raw_iterator_cf(cf(db, CF_META));
        let mut reader = Self {
            iterator,
            slot,
            position: 0,
            record: Vec::new(),
            consumed: 0,
        };
        if offset == 0 {
            reader.iterator.seek(snapshot_key(slot, 0));
            return Ok(reader);
        }
        reader.iterator.seek_for_prev(snapshot_key(slot, offset));
        let start = reader
            .iterator
            .key()
            .and_then(|key| key.strip_prefix(SNAPSHOT_DATA_PREFIX))
            .filter(|rest| rest.len() == 9 && rest[0] == slot)
            .map(|rest| u64::from_be_bytes(rest[1..].try_into().expect("8 bytes")));
        let Some(start) = start else {
            reader.iterator.status().map_err(io::Error::other)?;
            return Err(io::Error::other(format!(
                "snapshot data at offset {offset} is missing"
            )));
        };
        reader.position = start;
        if !reader.next_record()? || start + reader.record.len() as u64 <= offset {
            return Err(io::Error::other(format!(
                "snapshot data at offset {offset} is missing"
            )));
        }
        reader.consumed = (offset - start) as usize;
        reader.position = offset;
        Ok(reader)
    }

    fn next_record(&mut self) -> io::Result<bool> {
        let expected = snapshot_key(self.slot, self.position);
        if !self.iterator.valid() {
            self.iterator.status().map_err(io::Error::other)?;
            return Ok(false);
        }
        if self.iterator.key() != Some(&expected[..]) {
            return Err(io::Error::other(format!(
                "snapshot record at offset {} is missing",
                self.position
            )));
        }
        self.record.clear();
        self.record
            .extend_from_slice(self.iterator.value().expect("valid iterator has a value"));
        self.consumed = 0;
        self.iterator.next();
        Ok(true)
    }
}

impl Read for SlotReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.consumed == self.record.len() && !self.next_record()? {
            return Ok(0);
        }
        let available = &self.record[self.consumed..];
        let taken = available.len().min(buffer.len());
        buffer[..taken].copy_from_slice(&available[..taken]);
        self.consumed += taken;
        self.position += taken as u64;
        Ok(taken)
    }
}
