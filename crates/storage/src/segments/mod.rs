//! dr's own Raft log: segmented append-only files beside RocksDB, as
//! TiKV's raft-engine and etcd's WAL are (`docs/design/storage.md`,
//! "The segmented log").
//!
//! - One `pwrite` and (when the ready makes promises) one `fdatasync` per
//!   persisted ready: the batch of its entries and hard state, checksummed
//!   with CRC32C over the segment's id and the bytes. A caller may also
//!   write unsynced and make everything written durable later with one
//!   [`SegmentLog::sync`].
//! - Segments have a fixed size and are written only over blocks written
//!   before (zero-filled ahead of time on a thread of their own, or a
//!   segment the log no longer needs, recycled): a sync never grows a file,
//!   so it writes no file-system metadata.
//! - Every segment but the newest ends with a seal naming the next; each
//!   segment opens with the hard state (synced; rewritten on open if a
//!   crash cut it), and a segment is dropped only while a later one holds
//!   a hard state, so dropping old segments never loses it.
//! - Compaction drops whole segments whose entries are all compacted (or
//!   were all replaced by a snapshot's `clear`).
//! - On open every batch is checked. A damaged batch ends the newest
//!   segment when nothing valid follows it (a write torn by a crash:
//!   never synced, so never promised), or when every valid batch after it
//!   says (its synced record) that the damaged bytes were not yet durable
//!   when it was written (unsynced writes, of which a power failure kept
//!   some pages and lost others); those later batches are erased.
//!   Anywhere else it is damage, and the log refuses to open.
//!
//! The caller (the store) keeps the compaction point and the snapshot in
//! RocksDB, writes them before the log's own changes, and reconciles the
//! two on open ([`SegmentLog::reconcile`]).

mod format;
mod recovery;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;
use dr_codec::message::{LogIndex, Term};
use dr_raft::HardState;

pub(crate) use format::LogBatch;
use format::{HEADER_BYTES, SEAL_BATCH_BYTES};

/// The size of a segment unless the store is told otherwise.
pub const SEGMENT_BYTES_DEFAULT: u64 = 32 << 20;
/// The smallest segment allowed (a batch must fit beside the seal).
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;

/// Why a segment size cannot be used, if it cannot: at least
/// [`SEGMENT_BYTES_MIN`], and whole batch alignments.
pub(crate) fn check_segment_bytes(bytes: u64) -> Result<(), String> {
    if bytes < SEGMENT_BYTES_MIN || !bytes.is_multiple_of(format::ALIGN_BYTES) {
        return Err(format!(
            "a raft log segment of {bytes} bytes: at least {SEGMENT_BYTES_MIN} and a multiple of {}",
            format::ALIGN_BYTES
        ));
    }
    Ok(())
}
/// Segments kept for reuse once compacted away, at most; more are
/// deleted. Within it, the log keeps as many as take its files (live and
/// spare) back to the most it has held: a log that compacts every few
/// segments grows that far again, and each segment it would otherwise
/// zero-fill anew costs a 32 MiB write through the page cache.
const SPARES_MAX: usize = 16;
/// Zeros written per call while a segment is prepared.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// The log writes whole pages of this size (see [`SegmentLog::write_at`]).
const PAGE_BYTES: u64 = 4096;

/// A segment file in the log.
#[derive(Debug)]
struct Segment {
    id: u64,
    file: File,
    /// The highest entry index written into it (0 if none).
    max_index: LogIndex,
    /// Whether it holds a hard state record: a segment may be dropped
    /// only while a later one does, or the hard state could be lost.
    holds_hard_state: bool,
}

/// Where an entry's frame is.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
    term: Term,
}

/// The segmented log of one store: see the module documentation.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last is written to. Ids are consecutive.
    live: VecDeque<Segment>,
    /// Where the next batch goes in the newest segment.
    offset: u64,
    /// The newest segment's bytes before this offset are durable (older
    /// segments are, whole: sealed with a synced write).
    durable: u64,
    /// Where the newest segment's batches start after its opening hard
    /// state: a batch too big for a segment is written anyway after it.
    opening_offset: u64,
    /// Zero-filled or recycled files ready to become segments.
    spares: Vec<PathBuf>,
    /// The most files (live segments and spares) the log has held since
    /// it was opened, counting those it found: spares kept stay within
    /// it, so recycling never takes more disk than the log took.
    files_peak: usize,
    spare_counter: u64,
    /// A spare being zero-filled on its own thread.
    preparing: Option<JoinHandle<io::Result<PathBuf>>>,
    /// The index of `locations[0]` (or of the next entry, when empty).
    first: LogIndex,
    locations: VecDeque<Location>,
    hard_state: Option<HardState>,
    /// Segments below this id hold only entries a clear replaced.
    cleared_below: u64,
    /// The framed batch being written (kept to reuse its memory).
    frame: Vec<u8>,
    /// The newest segment's bytes from `tail_at` (a page boundary) to the
    /// end of the last write: what a write that starts inside that page
    /// writes again before its own bytes. `None` when not known (a new or
    /// reopened segment, a failed write): then read back.
    tail: Vec<u8>,
    tail_at: Option<u64>,
    /// The pages of a write being assembled (kept to reuse its memory).
    pages: Vec<u8>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn spare_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("spare-{n:020}"))
}

/// Makes the directory's entries (created, renamed, removed files)
/// durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a file of `bytes` zeros and syncs it: blocks written once, so
/// writing over them later changes no file-system metadata.
fn zero_filled(path: &Path, bytes: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut written = 0u64;
    while written < bytes {
        let n = (bytes - written).min(ZERO_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], written)?;
        written += n as u64;
    }
    file.sync_all()
}

impl SegmentLog {
    /// The hard state last written, if any.
    pub(crate) fn hard_state(&self) -> Option<HardState> {
        self.hard_state
    }

    /// The last index held (`first_index() - 1` when empty).
    pub(crate) fn last_index(&self) -> LogIndex {
        self.first + self.locations.len() as u64 - 1
    }

    /// Every held entry's index and term, in order.
    pub(crate) fn terms(&self) -> impl Iterator<Item = (LogIndex, Term)> + '_ {
        (self.first..).zip(self.locations.iter().map(|l| l.term))
    }

    /// How many segment files are live (for tests and metrics).
    pub(crate) fn segment_count(&self) -> usize {
        self.live.len()
    }

    /// The frame of entry `index` (which the caller checked is held), as
    /// written; the caller decodes and checks it.
    pub(crate) fn read_frame(&self, index: LogIndex) -> io::Result<Bytes> {
        let location = index
            .checked_sub(self.first)
            .and_then(|at| self.locations.get(at as usize))
            .ok_or_else(|| io::Error::other(format!("entry {index} is not in the log")))?;
        let segment = &self.live[(location.segment - self.live[0].id) as usize];
        let mut frame = vec![0u8; location.len as usize];
        segment.file.read_exact_at(&mut frame, location.offset)?;
        Ok(Bytes::from(frame))
    }

    /// Writes `batch` (synced if `sync`); when it returns, what the batch
    /// says is the log's state. An error leaves the log in an unknown
    /// state on disk: the caller must stop.
    pub(crate) fn write(&mut self, batch: &LogBatch, sync: bool) -> io::Result<()> {
        debug_assert!(!batch.is_empty(), "an empty batch is never written");
        let framed_len = batch.framed_len();
        if self.offset + framed_len + SEAL_BATCH_BYTES > self.segment_bytes
            && self.offset > self.opening_offset
        {
            self.roll_over()?;
        }
        let segment_id = self.active_id();
        let at = self.offset;
        let synced_through = if sync { at + framed_len } else { self.durable };
        let mut frame = std::mem::take(&mut self.frame);
        batch.frame(segment_id, synced_through, &mut frame);
        let written = self.write_at(&frame, at, sync);
        self.frame = frame;
        written?;
        self.offset += framed_len;
        self.durable = synced_through;
        self.take_in(batch, segment_id, at + HEADER_BYTES as u64);
        if self.offset * 2 > self.segment_bytes {
            self.prepare_spare();
        }
        Ok(())
    }

    /// Makes every batch written so far durable: one `fdatasync` of the
    /// newest segment (the older ones were synced as they were sealed).
    /// Nothing to do when the last write was synced. An error leaves the
    /// log in an unknown state on disk: the caller must stop.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.durable == self.offset {
            return Ok(());
        }
        #[cfg(feature = "failpoints")]
        match crate::failpoints::before_synced_write() {
            crate::failpoints::Injected::Proceed => {}
            crate::failpoints::Injected::Fail(error) => return Err(io::Error::other(error)),
            crate::failpoints::Injected::Tear => {
                eprintln!("dr-storage: raft log: crash before a sync injected; ending the process");
                std::process::abort();
            }
        }
        self.newest().file.sync_data()?;
        self.durable = self.offset;
        Ok(())
    }

    fn active_id(&self) -> u64 {
        self.newest().id
    }

    /// The segment being written (a log always has one).
    fn newest(&self) -> &Segment {
        self.live.back().expect("a log has a segment")
    }

    fn newest_mut(&mut self) -> &mut Segment {
        self.live.back_mut().expect("a log has a segment")
    }

    /// Writes `frame` at `at` in whole pages: from the start of the page
    /// `at` falls in (its bytes before `at` written again, as they are)
    /// to the end of the page the frame ends in (zeros after the frame,
    /// where nothing of this segment's log is yet). A write that ended
    /// inside a page the page cache did not hold made ext4 read that
    /// block from disk first, synchronously: one disk read per write,
    /// on the engine's thread. Bytes before `at` are rewritten unchanged,
    /// so a write torn by a crash cannot damage what was written before.
    fn write_at(&mut self, frame: &[u8], at: u64, sync: bool) -> io::Result<()> {
        let page_at = at - at % PAGE_BYTES;
        let end = at + frame.len() as u64;
        // Within the segment's size (a batch bigger than a segment goes
        // past it, and its last page is then partial).
        let pages_end = end
            .next_multiple_of(PAGE_BYTES)
            .min(self.segment_bytes.max(end));
        self.load_tail(page_at, at)?;
        let mut pages = std::mem::take(&mut self.pages);
        pages.clear();
        pages.extend_from_slice(&self.tail);
        pages.extend_from_slice(frame);
        pages.resize((pages_end - page_at) as usize, 0);
        // An injected torn write keeps the first half of the frame.
        let torn_len = self.tail.len() + frame.len() / 2 + 1;
        let written = self.write_pages(&pages, page_at, sync, torn_len);
        if written.is_ok() {
            let tail_at = end - end % PAGE_BYTES;
            self.tail.clear();
            self.tail
                .extend_from_slice(&pages[(tail_at - page_at) as usize..(end - page_at) as usize]);
            self.tail_at = Some(tail_at);
        } else {
            // Unknown on disk: read back before the next write.
            self.forget_tail();
        }
        self.pages = pages;
        written
    }

    /// Makes `tail` the newest segment's bytes from `page_at` to `at`:
    /// kept from the last write when it ended there, else read back.
    fn load_tail(&mut self, page_at: u64, at: u64) -> io::Result<()> {
        if self.tail_at == Some(page_at) && page_at + self.tail.len() as u64 == at {
            return Ok(());
        }
        self.tail.clear();
        self.tail.resize((at - page_at) as usize, 0);
        let file = &self.live.back().expect("a log has a segment").file;
        let read = file.read_exact_at(&mut self.tail, page_at);
        if read.is_err() {
            self.forget_tail();
        } else {
            self.tail_at = Some(page_at);
        }
        read
    }

    /// The tail is not known (a new or reopened segment, a failed write).
    fn forget_tail(&mut self) {
        self.tail.clear();
        self.tail_at = None;
    }

    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    fn write_pages(&self, pages: &[u8], at: u64, sync: bool, torn_len: usize) -> io::Result<()> {
        let file = &self.newest().file;
        #[cfg(feature = "failpoints")]
        if sync {
            match crate::failpoints::before_synced_write() {
                crate::failpoints::Injected::Proceed => {}
                crate::failpoints::Injected::Fail(error) => return Err(io::Error::other(error)),
                crate::failpoints::Injected::Tear => {
                    let _ = file.write_all_at(&pages[..torn_len], at);
                    eprintln!("dr-storage: raft log: torn write injected; ending the process");
                    std::process::abort();
                }
            }
        }
        file.write_all_at(pages, at)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Updates the in-memory index for a batch written at `payload_at`.
    fn take_in(&mut self, batch: &LogBatch, segment: u64, payload_at: u64) {
        if let Some(next) = batch.clear {
            self.locations.clear();
            self.first = next;
            self.cleared_below = segment;
        }
        for &(index, term, at, len) in &batch.entries {
            self.place(
                index,
                Location {
                    segment,
                    offset: payload_at + at as u64,
                    len,
                    term,
                },
            )
            .unwrap_or_else(|error| panic!("dr-storage: raft log: {error}"));
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = Some(hard_state);
            self.newest_mut().holds_hard_state = true;
        }
    }

    /// Puts entry `index` at the end of the log, replacing any entries at
    /// and after it.
    fn place(&mut self, index: LogIndex, location: Location) -> Result<(), String> {
        if index < self.first {
            return Err(format!(
                "entry {index} comes before the log's first index {}",
                self.first
            ));
        }
        let at = (index - self.first) as usize;
        if at > self.locations.len() {
            return Err(format!(
                "entry {index} leaves a gap after the last index {}",
                self.last_index()
            ));
        }
        self.locations.truncate(at);
        if let Some(previous) = self.locations.back()
            && previous.term > location.term
        {
            return Err(format!(
                "entry {index} has term {} below the term {} before it",
                location.term, previous.term
            ));
        }
        self.locations.push_back(location);
        let segment = self
            .live
            .iter_mut()
            .rev()
            .find(|s| s.id == location.segment)
            .expect("entries are placed in live segments");
        segment.max_index = segment.max_index.max(index);
        Ok(())
    }

    /// Seals the newest segment and opens the next, which starts with the
    /// hard state, synced.
    fn roll_over(&mut self) -> io::Result<()> {
        let id = self.active_id();
        let mut seal = LogBatch::default();
        seal.push_seal(id + 1);
        let mut frame = Vec::new();
        seal.frame(id, self.offset + seal.framed_len(), &mut frame);
        self.write_at(&frame, self.offset, true)?;
        self.start_segment(id + 1)
    }

    /// Makes segment `id` (a spare renamed) the newest, opened with the
    /// hard state, synced.
    pub(super) fn start_segment(&mut self, id: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, id);
        let spare = match self.spares.pop() {
            Some(spare) => spare,
            None => self.finish_preparing()?,
        };
        fs::rename(&spare, &path)?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        self.live.push_back(Segment {
            id,
            file,
            max_index: 0,
            holds_hard_state: false,
        });
        self.files_peak = self.files_peak.max(self.live.len() + self.spares.len());
        self.offset = 0;
        self.durable = 0;
        self.opening_offset = 0;
        self.forget_tail();
        self.open_with_hard_state()
    }

    /// Writes the hard state (if there is one) into the newest segment,
    /// synced, unless it holds one already: every segment opens with it,
    /// so older segments can be dropped.
    pub(super) fn open_with_hard_state(&mut self) -> io::Result<()> {
        let newest = self.newest();
        if newest.holds_hard_state {
            return Ok(());
        }
        let Some(hard_state) = self.hard_state else {
            return Ok(());
        };
        let mut opening = LogBatch::default();
        opening.push_hard_state(hard_state);
        let mut frame = Vec::new();
        let at = self.offset;
        opening.frame(newest.id, at + opening.framed_len(), &mut frame);
        self.write_at(&frame, at, true)?;
        self.offset += frame.len() as u64;
        self.durable = self.offset;
        self.opening_offset = self.offset;
        self.newest_mut().holds_hard_state = true;
        Ok(())
    }

    /// A name no spare has yet.
    fn next_spare_path(&mut self) -> PathBuf {
        self.spare_counter += 1;
        spare_path(&self.dir, self.spare_counter)
    }

    /// Starts zero-filling a spare on its own thread, unless one is ready
    /// or under way.
    fn prepare_spare(&mut self) {
        if !self.spares.is_empty() || self.preparing.is_some() {
            return;
        }
        let spare = self.next_spare_path();
        let temporary = spare.with_extension("tmp");
        let bytes = self.segment_bytes;
        let preparing = std::thread::Builder::new()
            .name("dr-log-prepare".into())
            .spawn(move || {
                zero_filled(&temporary, bytes)?;
                fs::rename(&temporary, &spare)?;
                Ok(spare)
            });
        // Without a thread the spare is made when it is needed.
        self.preparing = preparing.ok();
    }

    /// A spare: the one being prepared, or one made now.
    fn finish_preparing(&mut self) -> io::Result<PathBuf> {
        match self.preparing.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the segment-preparing thread panicked"))?,
            None => {
                let spare = self.next_spare_path();
                zero_filled(&spare, self.segment_bytes)?;
                Ok(spare)
            }
        }
    }

    /// Forgets entries up to `index` (which the caller has made durable
    /// as its compaction point) and drops the segments no longer needed,
    /// keeping up to `SPARES_MAX` of them for reuse.
    pub(crate) fn compact(&mut self, index: LogIndex) -> io::Result<()> {
        if index >= self.first {
            let drop = ((index + 1 - self.first) as usize).min(self.locations.len());
            self.locations.drain(..drop);
            self.first = index + 1;
        }
        while self.live.len() > 1 {
            let oldest = &self.live[0];
            if oldest.id >= self.cleared_below && oldest.max_index > index {
                break;
            }
            if oldest.holds_hard_state && !self.live.iter().skip(1).any(|s| s.holds_hard_state) {
                // The only copy of the hard state (a crash came between a
                // new segment and its opening batch): kept until a later
                // segment holds one.
                break;
            }
            let oldest = self.live.pop_front().expect("checked above");
            let path = segment_path(&self.dir, oldest.id);
            drop(oldest.file);
            let files_after = self.live.len() + self.spares.len() + 1;
            if self.spares.len() < SPARES_MAX && files_after <= self.files_peak {
                let spare = self.next_spare_path();
                fs::rename(&path, &spare)?;
                self.spares.push(spare);
            } else {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Makes the log agree with the store's compaction point (`index`,
    /// `term`), written before the log's own changes. A log that holds the
    /// entry at `index` with `term`, or starts right after it, agrees: the
    /// entries up to it are dropped. A log that starts after it leaves a
    /// gap, which is damage. Any other log is one a snapshot replaced
    /// while a crash kept the clear from reaching the disk: the clear is
    /// written now, synced, so entries appended later are not replayed
    /// behind the old ones (which would drop them, or read as a gap).
    pub(crate) fn reconcile(&mut self, index: LogIndex, term: Term) -> io::Result<()> {
        let holds_it = index >= self.first
            && self
                .locations
                .get((index - self.first) as usize)
                .is_some_and(|location| location.term == term);
        if holds_it || self.first == index + 1 {
            return self.compact(index);
        }
        if self.first > index + 1 && !self.locations.is_empty() {
            return Err(io::Error::other(format!(
                "the raft log starts at {} but the compaction point is {index}: entries are missing",
                self.first
            )));
        }
        let mut clear = LogBatch::default();
        clear.push_clear(index + 1);
        self.write(&clear, true)
    }

    /// Copies the live segments, each up to the end of its batches, into
    /// `target` (created), synced: a backup of the log as it is now.
    pub(crate) fn copy_to(&self, target: &Path) -> io::Result<()> {
        fs::create_dir_all(target)?;
        for (n, segment) in self.live.iter().enumerate() {
            let len = if n + 1 == self.live.len() {
                self.offset
            } else {
                segment.file.metadata()?.len()
            };
            let mut source = io::Read::take(File::open(segment_path(&self.dir, segment.id))?, len);
            let mut copy = File::create(segment_path(target, segment.id))?;
            io::copy(&mut source, &mut copy)?;
            copy.sync_all()?;
        }
        sync_dir(target)
    }

    /// Waits for a spare being prepared, so the directory is quiet (tests
    /// and shutdown).
    pub(crate) fn settle(&mut self) {
        if let Some(thread) = self.preparing.take()
            && let Ok(Ok(spare)) = thread.join()
        {
            self.spares.push(spare);
        }
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        self.settle();
    }
}
