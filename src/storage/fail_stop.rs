//! Fail-stop on a failed fsync: once any synced write or sync of the engine fails, every later
//! write fails too, and whoever holds a [`DiskFailure`] learns of it.
//!
//! After a failed fsync the kernel may have dropped the dirty pages it could not write and marked
//! them clean, so a retried fsync "succeeds" without them (PostgreSQL's "fsyncgate"). Nothing the
//! member wrote since its last good fsync can be trusted to be on disk, so it must not go on
//! acknowledging anything: the node stops and the server exits (`Node::stopped`). Raft's own log
//! appends already stop raft on an I/O error; this wrapper covers every other synced write (votes,
//! snapshot staging and install, bootstrap) and makes the stop unconditional.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Durability, Engine, EngineView, Keyspace, Order, Result, StorageError, Visitor};
use super::{SharedEngine, WriteBatch};

/// Shared knowledge that the disk failed an fsync.
#[derive(Clone, Default)]
pub struct DiskFailure {
    inner: Arc<(AtomicBool, Notify)>,
}

impl DiskFailure {
    /// Whether an fsync has failed.
    pub fn failed(&self) -> bool {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Resolves once an fsync has failed.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.1.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.failed() {
                return;
            }
            notified.await;
        }
    }

    fn raise(&self) {
        self.inner.0.store(true, Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }
}

/// An engine that refuses every write after one of its fsyncs failed.
pub struct FailStop {
    inner: SharedEngine,
    failure: DiskFailure,
}

impl FailStop {
    /// Wrap `inner`; the returned [`DiskFailure`] reports its first failed fsync.
    pub fn wrap(inner: SharedEngine) -> (SharedEngine, DiskFailure) {
        let failure = DiskFailure::default();
        let engine = Arc::new(FailStop {
            inner,
            failure: failure.clone(),
        });
        (engine, failure)
    }

    fn refuse_after_failure(&self) -> Result<()> {
        if self.failure.failed() {
            return Err(StorageError::Engine(
                "an earlier fsync failed: the disk can no longer be trusted".into(),
            ));
        }
        Ok(())
    }

    fn watch_sync<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.failure.raise();
        }
        result
    }
}

impl Engine for FailStop {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(ks, key)
    }

    fn get_many(&self, ks: Keyspace, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(ks, keys)
    }

    fn scan_ordered(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        order: Order,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.inner.scan_ordered(ks, start, end, order, visit)
    }

    fn scan_uncached(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        self.inner.scan_uncached(ks, start, end, visit)
    }

    fn view(&self) -> Result<Arc<dyn EngineView>> {
        self.inner.view()
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        self.refuse_after_failure()?;
        let result = self.inner.write(batch, durability);
        match durability {
            Durability::Sync => self.watch_sync(result),
            Durability::Buffered => result,
        }
    }

    fn sync(&self) -> Result<()> {
        self.refuse_after_failure()?;
        let result = self.inner.sync();
        self.watch_sync(result)
    }

    fn simulated_sync_delay(&self) -> Duration {
        self.inner.simulated_sync_delay()
    }

    fn keyspace_bytes(&self, ks: Keyspace) -> u64 {
        self.inner.keyspace_bytes(ks)
    }

    fn keyspace_live_bytes(&self, ks: Keyspace) -> u64 {
        self.inner.keyspace_live_bytes(ks)
    }

    fn defragment(&self) -> Result<()> {
        self.refuse_after_failure()?;
        self.inner.defragment()
    }

    fn close(&self) {
        self.inner.close()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    #[test]
    fn one_failed_fsync_refuses_every_later_write() {
        let disk = Arc::new(MemoryEngine::with_crash_model());
        let (engine, failure) = FailStop::wrap(disk.clone());
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "a", "1");
        engine.write(b, Durability::Sync).unwrap();
        assert!(!failure.failed());
        disk.fail_syncs();
        assert!(engine.sync().is_err());
        assert!(failure.failed());
        // Even once the disk "works" again, nothing more is written.
        disk.repair_disk();
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "b", "2");
        assert!(engine.write(b, Durability::Buffered).is_err());
        assert!(engine.sync().is_err());
        assert_eq!(engine.get(Keyspace::Kv, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(engine.get(Keyspace::Kv, b"b").unwrap(), None);
    }
}
