//! Opening a store: the format version, the records kept in memory, and
//! a check of every log entry's checksum and position.

use super::*;

impl RocksStorage {
    pub(super) fn read(&self, family: &str, key: &[u8]) -> Result<Option<Vec<u8>>, OpenError> {
        self.db
            .get_cf(cf(&self.db, family), key)
            .map_err(|e| OpenError::RocksDb(e.to_string()))
    }

    pub(super) fn check_format_version(&mut self) -> Result<(), OpenError> {
        match self.read(CF_META, KEY_FORMAT_VERSION)? {
            Some(record) => {
                let found = records::decode_u64("format version", &record)?;
                if found != FORMAT_VERSION {
                    return Err(OpenError::FormatVersion {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
                let record = self.read(CF_META, KEY_STATE_MACHINE)?.ok_or_else(|| {
                    OpenError::Corrupt("the state machine record is missing".into())
                })?;
                let code = records::decode_u64("state machine", &record)?;
                let found = StateMachine::from_code(code).ok_or_else(|| {
                    OpenError::Corrupt(format!("unknown state machine kind {code}"))
                })?;
                if found != self.state_machine {
                    return Err(OpenError::StateMachine {
                        found,
                        requested: self.state_machine,
                    });
                }
                let kind = match self.read(CF_META, KEY_LOG_KIND)? {
                    None => LogKind::RocksDb,
                    Some(record) => {
                        let code = records::decode_u64("log kind", &record)?;
                        LogKind::from_code(code)
                            .ok_or_else(|| OpenError::Corrupt(format!("unknown log kind {code}")))?
                    }
                };
                self.open_log(kind)
            }
            None => {
                let empty = options::COLUMN_FAMILIES.iter().all(|family| {
                    self.db
                        .iterator_cf(cf(&self.db, family), rocksdb::IteratorMode::Start)
                        .next()
                        .is_none()
                });
                if !empty {
                    return Err(OpenError::NotADrStore);
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    cf(&self.db, CF_META),
                    KEY_FORMAT_VERSION,
                    records::encode_u64(FORMAT_VERSION),
                );
                batch.put_cf(
                    cf(&self.db, CF_META),
                    KEY_STATE_MACHINE,
                    records::encode_u64(self.state_machine.code()),
                );
                batch.put_cf(
                    cf(&self.db, CF_META),
                    KEY_LOG_KIND,
                    records::encode_u64(self.options.log.code()),
                );
                if self.options.log == LogKind::Segments && Self::segments_dir(&self.path).exists()
                {
                    return Err(OpenError::Corrupt(format!(
                        "{} holds a raft log but the store is new",
                        Self::segments_dir(&self.path).display()
                    )));
                }
                self.commit(batch, "writing the format version");
                self.open_log(self.options.log)
            }
        }
    }

    fn open_log(&mut self, kind: LogKind) -> Result<(), OpenError> {
        if kind == LogKind::Segments {
            let dir = Self::segments_dir(&self.path);
            self.segments = Some(
                SegmentLog::open(&dir, self.options.segment_bytes).map_err(OpenError::Corrupt)?,
            );
        }
        Ok(())
    }

    pub(super) fn load_records(&mut self) -> Result<(), OpenError> {
        if let Some(record) = self.read(CF_RAFT_STATE, KEY_HARD_STATE)? {
            self.cached.hard_state = records::decode_hard_state(&record)?;
        }
        if let Some(record) = self.read(CF_RAFT_STATE, KEY_CONF_STATE)? {
            self.cached.conf_state = records::decode_conf_state(&record)?;
        }
        if let Some(record) = self.read(CF_META, KEY_APPLIED)? {
            (self.cached.applied, self.cached.applied_term) = records::decode_applied(&record)?;
        }
        if let Some(record) = self.read(CF_META, KEY_COMPACTION_POINT)? {
            let (index, term) = records::decode_index_term(&record)?;
            self.cached.compacted_index = index;
            self.cached.compacted_term = term;
        }
        if let Some(record) = self.read(CF_META, KEY_SNAPSHOT)? {
            let (meta, len) = records::decode_snapshot_meta("snapshot", &record)?;
            self.cached.snapshot = meta;
            self.cached.snapshot_len = len;
        }
        if let Some(record) = self.read(CF_META, KEY_SNAPSHOT_SLOT)? {
            let slot = records::decode_u64("snapshot slot", &record)?;
            self.cached.slot = u8::try_from(slot)
                .ok()
                .filter(|slot| *slot < 2)
                .ok_or_else(|| OpenError::Corrupt(format!("snapshot slot {slot}")))?;
        }
        self.cached.snapshot_is_view = self.read(CF_META, KEY_SNAPSHOT_VIEW)?.is_some();
        if let Some(record) = self.read(CF_META, KEY_STAGED)? {
            self.cached.staged = Some(records::decode_snapshot_meta("staged snapshot", &record)?);
        }
        if self.cached.compacted_index > self.cached.snapshot.index {
            return Err(OpenError::Corrupt(format!(
                "the log is compacted to {} past the snapshot at {}",
                self.cached.compacted_index, self.cached.snapshot.index
            )));
        }
        Ok(())
    }

    /// Reads every entry: contiguous after the compaction point, each one's
    /// checksum and index right. Rebuilds the term index on the way.
    pub(super) fn verify_log(&mut self) -> Result<(), OpenError> {
        if self.segments.is_some() {
            self.verify_segments()?;
        } else {
            self.verify_rocks_log()?;
        }
        let commit = self.cached.hard_state.commit;
        if commit > self.cached.last_index.max(self.cached.snapshot.index) {
            return Err(OpenError::Corrupt(format!(
                "the commit index {commit} is past the log's last index {}",
                self.cached.last_index
            )));
        }
        Ok(())
    }

    /// The segmented log was checked batch by batch as it opened (every
    /// entry decoded, positions and term order checked): here it is made
    /// to agree with the compaction point, and the indexes rebuilt.
    fn verify_segments(&mut self) -> Result<(), OpenError> {
        let cached = &mut self.cached;
        let log = self.segments.as_mut().expect("checked by the caller");
        log.reconcile(cached.compacted_index, cached.compacted_term)
            .map_err(|e| OpenError::Corrupt(e.to_string()))?;
        if let Some(hard_state) = log.hard_state() {
            cached.hard_state = hard_state;
        }
        let mut runs = TermRuns::after(cached.compacted_term);
        for (index, term) in log.terms() {
            runs.push(index, term)?;
        }
        cached.last_index = log.last_index();
        cached.term_runs = runs.runs;
        Ok(())
    }

    fn verify_rocks_log(&mut self) -> Result<(), OpenError> {
        let mut expected = self.cached.compacted_index + 1;
        let mut runs = TermRuns::after(self.cached.compacted_term);
        let mut iterator = self.db.raw_iterator_cf(cf(&self.db, CF_RAFT_LOG));
        iterator.seek_to_first();
        while iterator.valid() {
            let key = iterator.key().expect("valid iterator has a key");
            let index = <[u8; 8]>::try_from(key)
                .map(u64::from_be_bytes)
                .map_err(|_| OpenError::Corrupt(format!("raft log key of {} bytes", key.len())))?;
            if index != expected {
                return Err(OpenError::Corrupt(format!(
                    "raft log entry {index} where {expected} was expected (compaction point {})",
                    self.cached.compacted_index
                )));
            }
            let value =
                Bytes::copy_from_slice(iterator.value().expect("valid iterator has a value"));
            let entry = decode_stored_entry(index, &value, &self.codec)
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
            runs.push(index, entry.term)?;
            expected += 1;
            iterator.next();
        }
        iterator
            .status()
            .map_err(|e| OpenError::RocksDb(e.to_string()))?;
        self.cached.last_index = expected - 1;
        self.cached.term_runs = runs.runs;
        Ok(())
    }
}

/// The runs of equal terms of a log read back in order, checking that terms
/// never decrease (from the compaction point's term on).
struct TermRuns {
    runs: BTreeMap<LogIndex, Term>,
    previous_term: Term,
}

impl TermRuns {
    fn after(compacted_term: Term) -> Self {
        Self {
            runs: BTreeMap::new(),
            previous_term: compacted_term,
        }
    }

    fn push(&mut self, index: LogIndex, term: Term) -> Result<(), OpenError> {
        if term < self.previous_term {
            return Err(OpenError::Corrupt(format!(
                "raft log entry {index} has term {term} below the term {} before it",
                self.previous_term
            )));
        }
        if term != self.previous_term || self.runs.is_empty() {
            self.runs.insert(index, term);
        }
        self.previous_term = term;
        Ok(())
    }
}
