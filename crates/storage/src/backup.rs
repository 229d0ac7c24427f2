//! Backups of a whole store with RocksDB's backup engine, and restoring
//! one into a new directory.
//!
//! Backups are incremental: a backup directory holds many backups, and a
//! table file shared with an earlier backup is not copied again. Each
//! backup is taken after flushing the memtables (atomically across the
//! column families), so it is one consistent point of the whole store:
//! log, hard state, state machine and snapshot together.
//!
//! Restoring is for disaster recovery, into a directory that holds
//! nothing: a member's store rolled back in place would forget votes and
//! entries it already acknowledged, which breaks Raft's guarantees. A
//! restored store is opened and verified (format version, every log
//! entry) before `restore` returns.

use std::fmt;
use std::path::Path;

use rocksdb::Env;
use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};

use crate::store::{OpenError, RocksStorage, StateMachine};

/// One backup in a backup directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup's id; ids only grow.
    pub id: u32,
    /// When it was taken, in seconds since the Unix epoch.
    pub timestamp: i64,
    /// Bytes of the files it consists of (shared files count in every
    /// backup that uses them).
    pub bytes: u64,
    /// How many files it consists of.
    pub files: u32,
}

/// Why a backup or a restore failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupError {
    /// The backup engine failed (unreadable or damaged backup directory,
    /// no space, no such backup).
    Engine(String),
    /// The restore target is not empty; restoring never overwrites data.
    TargetNotEmpty(String),
    /// The backup directory holds no backup.
    NoBackup,
    /// The restored store does not open or verify.
    Restored(OpenError),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Engine(error) => write!(f, "backup engine: {error}"),
            Self::TargetNotEmpty(path) => {
                write!(f, "will not restore into {path}: it is not empty")
            }
            Self::NoBackup => f.write_str("the backup directory holds no backup"),
            Self::Restored(error) => write!(f, "the restored store is not usable: {error}"),
        }
    }
}

impl std::error::Error for BackupError {}

/// Beside backup `id`, the directory of its segmented log.
const LOG_BACKUP_PREFIX: &str = "raft-log-";

fn log_backup_dir(backup_dir: &Path, id: u32) -> std::path::PathBuf {
    backup_dir.join(format!("{LOG_BACKUP_PREFIX}{id}"))
}

/// Copies the files of `from` into `to` (created), synced.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    std::fs::File::open(to)?.sync_all()
}

fn engine_error(error: rocksdb::Error) -> BackupError {
    BackupError::Engine(error.to_string())
}

fn open_engine(backup_dir: &Path) -> Result<BackupEngine, BackupError> {
    let mut options = BackupEngineOptions::new(backup_dir).map_err(engine_error)?;
    options.set_sync(true);
    let env = Env::new().map_err(engine_error)?;
    BackupEngine::open(&options, &env).map_err(engine_error)
}

/// The backups in `backup_dir`, oldest first.
pub fn list_backups(backup_dir: impl AsRef<Path>) -> Result<Vec<BackupInfo>, BackupError> {
    let engine = open_engine(backup_dir.as_ref())?;
    Ok(infos(&engine))
}

fn infos(engine: &BackupEngine) -> Vec<BackupInfo> {
    let mut backups: Vec<BackupInfo> = engine
        .get_backup_info()
        .into_iter()
        .map(|info| BackupInfo {
            id: info.backup_id,
            timestamp: info.timestamp,
            bytes: info.size,
            files: info.num_files,
        })
        .collect();
    backups.sort_by_key(|backup| backup.id);
    backups
}

impl RocksStorage {
    /// Takes a consistent backup of the whole store into `backup_dir`
    /// (created if missing), copying only files earlier backups there do
    /// not have, checks it, and keeps the newest `keep` backups (at least
    /// this one). The applied writes kept in memory are written out first,
    /// so a restored store holds the state applied now.
    pub fn backup(
        &mut self,
        backup_dir: impl AsRef<Path>,
        keep: usize,
    ) -> Result<BackupInfo, BackupError> {
        self.checkpoint();
        let mut engine = open_engine(backup_dir.as_ref())?;
        engine
            .create_new_backup_flush(self.db(), true)
            .map_err(engine_error)?;
        let newest = *infos(&engine).last().ok_or(BackupError::NoBackup)?;
        engine.verify_backup(newest.id).map_err(engine_error)?;
        // The segmented log lives beside RocksDB: its segments are copied
        // beside the backup (the store's owner writes nothing meanwhile,
        // so both are of the same moment).
        let backup_dir = backup_dir.as_ref();
        self.copy_log_to(&log_backup_dir(backup_dir, newest.id))
            .map_err(|e| BackupError::Engine(format!("copying the raft log: {e}")))?;
        engine
            .purge_old_backups(keep.max(1))
            .map_err(engine_error)?;
        let kept: Vec<u32> = infos(&engine).iter().map(|b| b.id).collect();
        for entry in std::fs::read_dir(backup_dir)
            .map_err(|e| BackupError::Engine(e.to_string()))?
            .filter_map(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix(LOG_BACKUP_PREFIX)
                .and_then(|id| id.parse::<u32>().ok())
                && !kept.contains(&id)
            {
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| BackupError::Engine(format!("purging {name}: {e}")))?;
            }
        }
        Ok(newest)
    }

    /// Restores backup `id` (the newest when `None`) from `backup_dir`
    /// into `target`, which must be missing or empty, then opens the
    /// restored store as `state_machine` to verify it.
    pub fn restore(
        backup_dir: impl AsRef<Path>,
        id: Option<u32>,
        target: impl AsRef<Path>,
        state_machine: StateMachine,
    ) -> Result<RocksStorage, BackupError> {
        let target = target.as_ref();
        let occupied = std::fs::read_dir(target)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if occupied {
            return Err(BackupError::TargetNotEmpty(target.display().to_string()));
        }
        let mut engine = open_engine(backup_dir.as_ref())?;
        let backups = infos(&engine);
        let id = match id {
            Some(id) => id,
            None => backups.last().ok_or(BackupError::NoBackup)?.id,
        };
        engine.verify_backup(id).map_err(engine_error)?;
        engine
            .restore_from_backup(target, target, &RestoreOptions::default(), id)
            .map_err(engine_error)?;
        let log = log_backup_dir(backup_dir.as_ref(), id);
        if log.exists() {
            copy_dir(&log, &RocksStorage::segments_dir(target))
                .map_err(|e| BackupError::Engine(format!("restoring the raft log: {e}")))?;
        }
        RocksStorage::open(target, state_machine).map_err(BackupError::Restored)
    }
}
