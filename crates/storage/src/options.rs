//! The RocksDB settings of a dr store: one database, four column families,
//! each tuned for how it is used. The reasons are in
//! `docs/design/storage.md`; this file is the single place they are set.

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DBRecoveryMode, Options,
};

/// The Raft log: entries keyed by big-endian index.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Hard state and configuration: two small, hot records.
pub const CF_RAFT_STATE: &str = "raft_state";
/// The key-value state machine.
pub const CF_DATA: &str = "data";
/// Format version, applied index, compaction point, snapshots.
pub const CF_META: &str = "meta";
/// Every column family of a store.
pub const COLUMN_FAMILIES: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META];

/// Bytes of block cache shared by the column families that read from disk.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// WAL bytes kept before RocksDB forces the memtables behind them out.
pub const WAL_BYTES_MAX: u64 = 512 << 20;

/// Database-wide options: WAL, recovery, and paranoia.
pub(crate) fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Verify checksums of everything RocksDB reads back, and fail the open
    // on a corrupted file rather than carrying on.
    options.set_paranoid_checks(true);
    // A crash can leave only a torn record at the WAL's very end (a write
    // that never returned: every acknowledged write is synced); tolerate
    // that. A bad record anywhere before the end is damage to synced,
    // possibly acknowledged data: refuse to open rather than drop it and
    // everything after it, as point-in-time recovery would, silently.
    options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    // Recycled WAL files can make stale records look valid after a crash;
    // fresh files cost a little allocation and remove that doubt.
    options.set_recycle_log_file_num(0);
    options.set_max_total_wal_size(WAL_BYTES_MAX);
    // fdatasync, as every modern filesystem makes that enough.
    options.set_use_fsync(false);
    // Flush all column families together, so that even with the WAL gone
    // they never disagree.
    options.set_atomic_flush(true);
    options.set_manual_wal_flush(false);
    options.set_keep_log_file_num(4);
    // Flushes and compactions sync their files every megabyte as they
    // write, rather than leaving the kernel hundreds of megabytes of dirty
    // pages to write back at once: a burst that would queue the WAL's
    // fdatasync, which every acknowledgement waits for, behind it.
    options.set_bytes_per_sync(1 << 20);
    options
}

/// The column families with their options.
pub(crate) fn column_families(cache: &Cache) -> Vec<ColumnFamilyDescriptor> {
    vec![
        ColumnFamilyDescriptor::new(CF_RAFT_LOG, raft_log_options()),
        ColumnFamilyDescriptor::new(CF_RAFT_STATE, small_hot_options()),
        ColumnFamilyDescriptor::new(CF_DATA, data_options(cache)),
        ColumnFamilyDescriptor::new(CF_META, meta_options()),
    ]
}

/// Appended in order, read mostly while recent (still in the memtable),
/// deleted in ranges from the front: large memtables, no compression (the
/// entries' payloads are the clients' bytes, and compressing them costs
/// latency on the append path), no bloom filter (reads are ranges).
fn raft_log_options() -> Options {
    let mut options = Options::default();
    options.set_write_buffer_size(64 << 20);
    options.set_compression_type(DBCompressionType::None);
    options.set_level_compaction_dynamic_level_bytes(true);
    options
}

/// A handful of keys rewritten all the time: small memtables, no
/// compression, everything stays cached.
fn small_hot_options() -> Options {
    let mut options = Options::default();
    options.set_write_buffer_size(4 << 20);
    options.set_compression_type(DBCompressionType::None);
    options
}

/// A few hot records plus the snapshot slots, which a snapshot rewrites
/// whole (tens of megabytes at once): a memtable large enough to take a
/// snapshot without forcing a flush of every family in the middle of it
/// (flushes are atomic across families), otherwise as the small ones.
fn meta_options() -> Options {
    let mut options = small_hot_options();
    options.set_write_buffer_size(64 << 20);
    options
}

/// Point reads and writes of client keys: bloom filters so a miss costs no
/// disk read, the shared block cache, lz4 (cheap, and the only codec
/// compiled in), leveled compaction with dynamic level sizes for bounded
/// space amplification.
fn data_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    // Filters and indexes are what every point read needs: kept ahead of
    // data blocks, L0's pinned. Without this, a large key space's data
    // blocks pushed them out and each miss read and checksummed a whole
    // filter block from disk (a million keys under TTL loaded 5x slower).
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_pin_top_level_index_and_filter(true);
    // Partitioned: a large file's filter is many small cached blocks, not
    // one block bigger than a cache shard (which is never kept).
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options.set_write_buffer_size(64 << 20);
    options.set_compression_type(DBCompressionType::Lz4);
    options.set_level_compaction_dynamic_level_bytes(true);
    options
}
