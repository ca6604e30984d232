//! The storage engine seam: ordered keyspaces, atomic write batches with an explicit durability
//! flag, and point-in-time consistent reads.
//!
//! Nothing here knows about etcd, MVCC or raft. Two engines implement [`Engine`]: [`MemoryEngine`]
//! (tests, simulation, `--engine memory`) and `RocksEngine` (the durable default; compiled only
//! where `cfg(rocksdb_engine)` holds: feature `rocksdb`, outside the simulator). `conformance` (test builds) is the one suite both must pass.

#[cfg(test)]
pub mod conformance;
mod fail_stop;
mod memory;
#[cfg(rocksdb_engine)]
mod rocks;

use std::sync::Arc;

use crate::config::EngineKind;

pub use fail_stop::{DiskFailure, FailStop};
pub use memory::MemoryEngine;
#[cfg(rocksdb_engine)]
pub use rocks::RocksEngine;

/// Open an engine of `kind` for the member whose data dir is `data_dir` (RocksDB keeps its files
/// under `member/rocksdb` there); the error says why in an operator's words.
pub fn open(
    kind: EngineKind,
    data_dir: &std::path::Path,
) -> std::result::Result<SharedEngine, String> {
    match kind {
        EngineKind::Memory => Ok(Arc::new(MemoryEngine::new())),
        #[cfg(rocksdb_engine)]
        EngineKind::RocksDb => {
            let dir = data_dir.join("member").join("rocksdb");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
            let engine = RocksEngine::open(&dir)
                .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
            Ok(Arc::new(engine))
        }
        #[cfg(not(rocksdb_engine))]
        EngineKind::RocksDb => {
            let _ = data_dir;
            Err("this build has no rocksdb engine (the simulator's, or one without feature `rocksdb`)".into())
        }
    }
}

/// A named, independently ordered key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keyspace {
    /// Raft log entries, vote, committed and purged log ids.
    Raft,
    /// Small state-machine metadata: applied log id, membership, current and compacted revision.
    Meta,
    /// MVCC records keyed by revision.
    Kv,
}

impl Keyspace {
    /// Every keyspace, in a fixed order.
    pub const ALL: [Keyspace; 3] = [Keyspace::Raft, Keyspace::Meta, Keyspace::Kv];

    /// A stable name (the RocksDB column family name).
    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Raft => "raft",
            Keyspace::Meta => "meta",
            Keyspace::Kv => "kv",
        }
    }

    /// Position in [`Keyspace::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether a write must be on stable storage before [`Engine::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before returning: survives power loss.
    Sync,
    /// May sit in OS or engine buffers: survives a process crash on RocksDB, may be lost on power
    /// loss (and is lost by a simulated crash).
    Buffered,
}

/// Direction of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Insert or overwrite `key`.
    Put {
        ks: Keyspace,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove `key` (absent keys are fine).
    Delete { ks: Keyspace, key: Vec<u8> },
    /// Remove every key in `[start, end)`.
    DeleteRange {
        ks: Keyspace,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Operations applied atomically: after a crash either all of them are visible or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue a put.
    pub fn put(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            ks,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Queue a delete.
    pub fn delete(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            ks,
            key: key.into(),
        });
    }

    /// Queue a range delete of `[start, end)`.
    pub fn delete_range(
        &mut self,
        ks: Keyspace,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops.push(BatchOp::DeleteRange {
            ks,
            start: start.into(),
            end: end.into(),
        });
    }

    /// Queue every operation of `other` after the ones already queued.
    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// The queued operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Errors of the storage layer. Any of them means the member can no longer trust its disk.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("storage engine is closed")]
    Closed,
    #[error("corrupt data in keyspace {ks:?}: {reason}")]
    Corrupt { ks: Keyspace, reason: String },
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e)
    }
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Visitor over `(key, value)` pairs; return `false` to stop the scan.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> bool + 'a;

/// A frozen, point-in-time view of every keyspace (from [`Engine::view`]): writes made after it
/// was taken are never seen through it, however long it is held. It pins old data in the engine
/// (RocksDB keeps the files, the memory engine copies a keyspace on its next write), not in the
/// holder's memory, so a snapshot of any size can be read through it piece by piece.
pub trait EngineView: Send + Sync {
    /// The value stored under `key` when the view was taken.
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The values stored under `keys` (in ascending order) when the view was taken, in the order
    /// asked. An engine with a batched lookup (RocksDB's `MultiGet`) serves them in one pass; the
    /// default asks for each.
    fn get_many(&self, ks: Keyspace, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(ks, k)).collect()
    }

    /// Visit keys in `[start, end)` (`end = None`: to the end) in ascending order; `visit`
    /// returns false to stop.
    fn scan(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()>;

    /// [`Self::scan`] for data read once and not again soon (a snapshot sent to a member or a
    /// client, a hash of everything), as [`Engine::scan_uncached`]. The default is [`Self::scan`].
    fn scan_uncached(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.scan(ks, start, end, visit)
    }
}

/// The narrow interface every storage engine implements.
pub trait Engine: Send + Sync + 'static {
    /// The value stored under `key`.
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The values stored under `keys` (in ascending order), in the order asked. An engine with
    /// a batched lookup (RocksDB's `MultiGet`) serves them in one pass; the default asks for each.
    fn get_many(&self, ks: Keyspace, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(ks, k)).collect()
    }

    /// Visit keys in `[start, end)` (`end = None`: to the end) in `order`, on one point-in-time
    /// view: writes that land during the scan are not seen. `visit` returns false to stop.
    fn scan_ordered(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        order: Order,
        visit: &mut Visitor<'_>,
    ) -> Result<()>;

    /// [`Engine::scan_ordered`] in ascending key order.
    fn scan(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.scan_ordered(ks, start, end, Order::Ascending, visit)
    }

    /// [`Engine::scan`] for data read once and not again soon (a compaction's pass over old
    /// records): an engine with a block cache leaves it as it was, so one pass over a million
    /// records neither evicts the blocks foreground reads keep using nor grows the member's
    /// memory by the cache's size. The default is [`Engine::scan`].
    fn scan_uncached(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.scan(ks, start, end, visit)
    }

    /// [`Engine::scan_ordered`] in descending key order.
    fn scan_rev(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.scan_ordered(ks, start, end, Order::Descending, visit)
    }

    /// A frozen view of all keyspaces as of now: one point between two write batches.
    fn view(&self) -> Result<Arc<dyn EngineView>>;

    /// Apply `batch` atomically; with [`Durability::Sync`] it is on stable storage on return.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;

    /// Make every earlier buffered write durable.
    fn sync(&self) -> Result<()>;

    /// Extra time each fsync takes on a simulated slow disk (a fault the simulator injects). The
    /// log's background syncer waits it out on the seam's clock before syncing; a real disk takes
    /// its own time, so real engines keep the default of zero.
    fn simulated_sync_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Bytes keyspace `ks` occupies (on disk, or in memory for the memory engine).
    fn keyspace_bytes(&self, ks: Keyspace) -> u64;

    /// Bytes of keyspace `ks` that hold live records (etcd's "size in use"); what is left of
    /// [`Engine::keyspace_bytes`] is space a defragment can give back.
    fn keyspace_live_bytes(&self, ks: Keyspace) -> u64 {
        self.keyspace_bytes(ks)
    }

    /// Bytes the engine occupies in all keyspaces.
    fn size_bytes(&self) -> u64 {
        Keyspace::ALL
            .iter()
            .map(|ks| self.keyspace_bytes(*ks))
            .sum()
    }

    /// Give space held by deleted and overwritten records back (etcd's defragment). Blocks.
    fn defragment(&self) -> Result<()>;

    /// Stop background work before the process exits (RocksDB's threads must not outlive it, or
    /// exit can abort). Reads and writes after this may fail.
    fn close(&self) {}

    /// A short name for logs and status ("rocksdb", "memory").
    fn kind(&self) -> &'static str;
}

/// A shared engine handle: callers hold this, never a concrete engine type.
pub type SharedEngine = Arc<dyn Engine>;
