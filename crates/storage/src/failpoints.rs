//! Disk faults for tests, compiled in only with the `failpoints` feature
//! (never in a release build of the server without it).
//!
//! One fault at a time, for the whole process, applied to the store's
//! synced writes (the raft log's segments or RocksDB's, hard state,
//! snapshots): the writes whose success a node promises to others. What
//! the store does then is what it does on a real disk fault: a failed
//! durable write ends the process (see `fatal`), since after a failed
//! fsync nothing tells what reached the disk; a slow one only delays.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// A disk fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFault {
    /// The next synced write fails with an I/O error (EIO).
    FailSync,
    /// The next synced write fails: no space left on the device (ENOSPC).
    NoSpace,
    /// Every synced write takes this long longer.
    SlowSync(Duration),
    /// The next synced write reaches the disk only in part (the first
    /// half of a log segment's batch; or written to RocksDB without a
    /// sync, its tail cut from the write-ahead log), and the process
    /// ends, as at a power cut in the middle of the write.
    TornWrite,
}

static FAULT: Mutex<Option<DiskFault>> = Mutex::new(None);

/// Sets (or with `None` clears) the process's disk fault.
pub fn set(fault: Option<DiskFault>) {
    *FAULT.lock().unwrap_or_else(|e| e.into_inner()) = fault;
}

/// The fault in force.
pub fn current() -> Option<DiskFault> {
    *FAULT.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a synced write must do now.
pub(crate) enum Injected {
    /// Write as usual.
    Proceed,
    /// Fail with this error.
    Fail(&'static str),
    /// Tear the write and end the process.
    Tear,
}

/// Called before every synced write. A fault that ends the process fires
/// once and is cleared as it fires (so [`current`] tells it fired).
pub(crate) fn before_synced_write() -> Injected {
    let fault = {
        let mut slot = FAULT.lock().unwrap_or_else(|e| e.into_inner());
        let fault = *slot;
        if !matches!(fault, Some(DiskFault::SlowSync(_))) {
            *slot = None;
        }
        fault
    };
    match fault {
        None => Injected::Proceed,
        Some(DiskFault::SlowSync(delay)) => {
            std::thread::sleep(delay);
            Injected::Proceed
        }
        Some(DiskFault::FailSync) => Injected::Fail("Input/output error (os error 5, injected)"),
        Some(DiskFault::NoSpace) => {
            Injected::Fail("No space left on device (os error 28, injected)")
        }
        Some(DiskFault::TornWrite) => Injected::Tear,
    }
}

/// Cuts up to `bytes` from the end of the newest write-ahead log file in
/// `db_dir` (never below its first 4 KiB block), so its last record is
/// torn.
pub(crate) fn tear_wal_tail(db_dir: &Path, bytes: u64) -> std::io::Result<()> {
    let newest = std::fs::read_dir(db_dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .max_by_key(|e| e.file_name());
    if let Some(entry) = newest {
        let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
        let length = file.metadata()?.len();
        let cut = bytes.min(length.saturating_sub(4096));
        file.set_len(length - cut)?;
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_set_and_cleared() {
        set(Some(DiskFault::SlowSync(Duration::from_millis(1))));
        assert!(matches!(before_synced_write(), Injected::Proceed));
        assert_eq!(
            current(),
            Some(DiskFault::SlowSync(Duration::from_millis(1))),
            "stays"
        );
        set(Some(DiskFault::NoSpace));
        assert!(matches!(before_synced_write(), Injected::Fail(e) if e.contains("No space")));
        assert_eq!(current(), None, "fired once");
        set(None);
        assert!(matches!(before_synced_write(), Injected::Proceed));
    }
}
