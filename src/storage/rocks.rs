//! The RocksDB engine: one column family per keyspace. Compiled only outside the simulator, because
//! RocksDB's own threads would escape madsim's scheduler.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DBRawIterator, Options, ReadOptions, SnapshotWithThreadMode,
    WriteOptions, DB,
};

use super::{
    BatchOp, Durability, Engine, EngineView, Keyspace, Order, Result, StorageError, Visitor,
    WriteBatch,
};
use crate::limits;

/// A RocksDB-backed [`Engine`].
pub struct RocksEngine {
    db: Arc<DB>,
}

/// A view: a RocksDB snapshot, which keeps the data it sees from being compacted away.
struct RocksView {
    /// Declared before `db` so it is dropped (released) while the database still exists.
    snapshot: SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

fn cf_of(db: &DB, ks: Keyspace) -> Result<&rocksdb::ColumnFamily> {
    db.cf_handle(ks.name())
        .ok_or_else(|| StorageError::Corrupt {
            ks,
            reason: "column family missing".into(),
        })
}

/// Walk a positioned iterator in `order`, handing each record to `visit` until it says stop.
fn drive(mut it: DBRawIterator<'_>, order: Order, visit: &mut Visitor<'_>) -> Result<()> {
    match order {
        Order::Ascending => it.seek_to_first(),
        Order::Descending => it.seek_to_last(),
    }
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !visit(k, v) {
            return Ok(());
        }
        match order {
            Order::Ascending => it.next(),
            Order::Descending => it.prev(),
        }
    }
    it.status().map_err(err)
}

impl EngineView for RocksView {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snapshot.get_cf(cf_of(&self.db, ks)?, key).map_err(err)
    }

    fn get_many(&self, ks: Keyspace, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snapshot);
        multi_get(&self.db, cf_of(&self.db, ks)?, keys, &ro)
    }

    fn scan(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.iterate(ks, start, end, true, visit)
    }

    fn scan_uncached(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.iterate(ks, start, end, false, visit)
    }
}

impl RocksView {
    /// Visit `[start, end)` of `ks` at the view's snapshot, in ascending order; without
    /// `fill_cache` the blocks read are dropped instead of entering the block cache.
    fn iterate(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        fill_cache: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let Some(ro) = scan_options(start, end, fill_cache) else {
            return Ok(());
        };
        let it = self.snapshot.raw_iterator_cf_opt(cf_of(&self.db, ks)?, ro);
        drive(it, Order::Ascending, visit)
    }
}

/// RocksDB's batched `MultiGet` of sorted `keys`: one pass through the memtables and table files
/// for all of them (a `get` each costs a lookup of its own: 19% of a member's CPU in the
/// Kubernetes-shaped workload, whose lists read hundreds of records scattered over revisions).
fn multi_get(
    db: &DB,
    cf: &rocksdb::ColumnFamily,
    keys: &[Vec<u8>],
    ro: &ReadOptions,
) -> Result<Vec<Option<Vec<u8>>>> {
    debug_assert!(keys.windows(2).all(|w| w[0] <= w[1]), "keys out of order");
    db.batched_multi_get_cf_opt(cf, keys, true, ro)
        .into_iter()
        .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(err))
        .collect()
}

fn err(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

impl RocksEngine {
    /// Open (creating if needed) the database in directory `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // A log file lives until every column family with writes in it has flushed them. The
        // small `meta` family fills its memtable slowly, so by default the log grew to hundreds
        // of MB (620 MB of a 721 MB data dir after 1M puts), all replayed by a restart.
        opts.set_max_total_wal_size(limits::ENGINE_LOG_BYTES_MAX);
        // Table files (flushes, compactions) are written back as they grow instead of all at
        // once: a log fsync otherwise waits for the filesystem to write out whatever dirty data
        // piled up meanwhile (tens of MB after a flush), which showed as 70-150 ms puts while a big
        // compaction ran.
        opts.set_bytes_per_sync(limits::ENGINE_WRITEBACK_BYTES);
        let cfs = Keyspace::ALL.iter().map(|ks| {
            let mut cf = Options::default();
            // A memtable is resident until flushed: half RocksDB's default keeps a burst of
            // deletes (a compaction of a million records) within the abuse tests' 64 MiB.
            cf.set_write_buffer_size(limits::ENGINE_MEMTABLE_BYTES);
            ColumnFamilyDescriptor::new(ks.name(), cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(err)?;
        Ok(Self { db: Arc::new(db) })
    }

    fn cf(&self, ks: Keyspace) -> Result<&rocksdb::ColumnFamily> {
        cf_of(&self.db, ks)
    }

    /// Visit `[start, end)` of `ks` in `order` on an iterator's implicit snapshot (taken when it
    /// is created); without `fill_cache` the blocks it reads are dropped with it instead of
    /// entering the block cache.
    fn iterate(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        order: Order,
        fill_cache: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let Some(ro) = scan_options(start, end, fill_cache) else {
            return Ok(());
        };
        let it = self.db.raw_iterator_cf_opt(self.cf(ks)?, ro);
        drive(it, order, visit)
    }
}

/// The read options of a scan of `[start, end)` (entering the block cache or not); `None` when
/// the range is empty.
fn scan_options(start: &[u8], end: Option<&[u8]>, fill_cache: bool) -> Option<ReadOptions> {
    if matches!(end, Some(end) if end <= start) {
        return None;
    }
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(start.to_vec());
    if let Some(end) = end {
        ro.set_iterate_upper_bound(end.to_vec());
    }
    ro.fill_cache(fill_cache);
    Some(ro)
}

impl Engine for RocksEngine {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(ks)?, key).map_err(err)
    }

    fn get_many(&self, ks: Keyspace, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        multi_get(&self.db, self.cf(ks)?, keys, &ReadOptions::default())
    }

    fn scan_ordered(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        order: Order,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.iterate(ks, start, end, order, true, visit)
    }

    fn scan_uncached(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.iterate(ks, start, end, Order::Ascending, false, visit)
    }

    fn view(&self) -> Result<Arc<dyn EngineView>> {
        let db = self.db.clone();
        let snapshot = db.snapshot();
        // SAFETY: the snapshot borrows the `DB` inside `db`'s allocation, which never moves and
        // outlives it: the view owns that `Arc` and drops the snapshot first (field order). The
        // borrow checker cannot see a borrow of a sibling field, hence the lifetime extension.
        let snapshot = unsafe {
            std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(
                snapshot,
            )
        };
        Ok(Arc::new(RocksView { snapshot, db }))
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                BatchOp::Put { ks, key, value } => wb.put_cf(self.cf(*ks)?, key, value),
                BatchOp::Delete { ks, key } => wb.delete_cf(self.cf(*ks)?, key),
                BatchOp::DeleteRange { ks, start, end } => {
                    if start < end {
                        wb.delete_range_cf(self.cf(*ks)?, start, end)
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        self.db.write_opt(wb, &wo).map_err(err)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(err)
    }

    fn keyspace_bytes(&self, ks: Keyspace) -> u64 {
        let Ok(cf) = self.cf(ks) else { return 0 };
        [
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
        ]
        .iter()
        .map(|prop| {
            self.db
                .property_int_value_cf(cf, *prop)
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .sum()
    }

    fn keyspace_live_bytes(&self, ks: Keyspace) -> u64 {
        let Ok(cf) = self.cf(ks) else { return 0 };
        let prop = |name: &str| {
            self.db
                .property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let files = prop("rocksdb.total-sst-files-size");
        let live = prop("rocksdb.estimate-live-data-size").min(files);
        live + prop("rocksdb.cur-size-all-mem-tables")
    }

    fn defragment(&self) -> Result<()> {
        // Flush and rewrite every keyspace so deleted and overwritten records leave the files.
        for ks in Keyspace::ALL {
            let cf = self.cf(ks)?;
            self.db.flush_cf(cf).map_err(err)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn close(&self) {
        let _ = self.db.flush_wal(true);
        self.db.cancel_all_background_work(true);
    }

    fn kind(&self) -> &'static str {
        "rocksdb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dirs = std::cell::RefCell::new(Vec::new());
        super::super::conformance::run_all(&|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let engine = RocksEngine::open(dir.path()).expect("open");
            dirs.borrow_mut().push(dir);
            Box::new(engine)
        });
    }

    #[test]
    fn reopen_keeps_synced_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let e = RocksEngine::open(dir.path()).expect("open");
            let mut b = WriteBatch::new();
            b.put(Keyspace::Meta, "k", "v");
            e.write(b, Durability::Sync).expect("write");
        }
        let e = RocksEngine::open(dir.path()).expect("reopen");
        assert_eq!(
            e.get(Keyspace::Meta, b"k").expect("get"),
            Some(b"v".to_vec())
        );
    }

    fn log_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// As apply writes: big records in one family, a small applied marker in another with every
    /// batch. The marker's family never fills its memtable, yet the log files stay bounded.
    #[test]
    fn the_log_stays_bounded_when_one_family_writes_little() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = RocksEngine::open(dir.path()).expect("open");
        let limit = limits::ENGINE_LOG_BYTES_MAX;
        let value = vec![7u8; 1024 * 1024];
        let batches = 3 * limit / value.len() as u64;
        for i in 0..batches {
            let mut b = WriteBatch::new();
            b.put(Keyspace::Kv, format!("k{i:06}"), value.clone());
            b.put(Keyspace::Meta, "applied", i.to_be_bytes());
            e.write(b, Durability::Buffered).expect("write");
        }
        // Flushes run in the background: give them a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while log_bytes(dir.path()) > 2 * limit && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let bytes = log_bytes(dir.path());
        assert!(
            bytes <= 2 * limit,
            "{bytes} bytes of log after writing {} MiB (limit {limit})",
            batches
        );
    }
}
