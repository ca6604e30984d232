//! Group commit and write deadlines, on a member over an engine that counts (and can stall) its
//! fsyncs: synced writes and syncs of what was written before.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::pb::etcdserverpb::PutRequest;
use crate::pb::metastore::command;
use crate::storage::{Durability, Engine, Keyspace, MemoryEngine, Visitor, WriteBatch};

/// Counts fsyncs (synced writes and syncs) on the way to a memory engine; can make them stall like
/// a dying disk.
struct CountingEngine {
    inner: MemoryEngine,
    fsyncs: AtomicU64,
    stall: std::sync::atomic::AtomicBool,
}

impl CountingEngine {
    fn new() -> Self {
        Self {
            inner: MemoryEngine::new(),
            fsyncs: AtomicU64::new(0),
            stall: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// One fsync, as a synced write or a sync of what was written before makes.
    fn fsync(&self) {
        if self.stall.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1500));
        }
        self.fsyncs.fetch_add(1, Ordering::SeqCst);
        // Make an fsync cost something, as on a disk, so that proposals pile up behind it.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

impl Engine for CountingEngine {
    fn get(&self, ks: Keyspace, key: &[u8]) -> crate::storage::Result<Option<Vec<u8>>> {
        self.inner.get(ks, key)
    }
    fn scan_ordered(
        &self,
        ks: Keyspace,
        s: &[u8],
        e: Option<&[u8]>,
        o: crate::storage::Order,
        v: &mut Visitor<'_>,
    ) -> crate::storage::Result<()> {
        self.inner.scan_ordered(ks, s, e, o, v)
    }
    fn view(&self) -> crate::storage::Result<Arc<dyn crate::storage::EngineView>> {
        self.inner.view()
    }
    fn write(&self, batch: WriteBatch, durability: Durability) -> crate::storage::Result<()> {
        if durability == Durability::Sync {
            self.fsync();
        }
        self.inner.write(batch, durability)
    }
    fn sync(&self) -> crate::storage::Result<()> {
        self.fsync();
        self.inner.sync()
    }
    fn keyspace_bytes(&self, ks: Keyspace) -> u64 {
        self.inner.keyspace_bytes(ks)
    }
    fn defragment(&self) -> crate::storage::Result<()> {
        self.inner.defragment()
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs() {
    let engine = Arc::new(CountingEngine::new());
    let config = ServerConfig {
        engine: crate::config::EngineKind::Memory,
        ..ServerConfig::default()
    };
    let node = Node::start(config, engine.clone()).await.expect("start");
    let before = engine.fsyncs.load(Ordering::SeqCst);
    const WRITES: u64 = 400;
    let mut tasks = Vec::new();
    for i in 0..WRITES {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let put = PutRequest {
                key: format!("k{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            node.propose(command::Op::Put(put)).await.is_ok()
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join"), "every write is acknowledged");
    }
    let fsyncs = engine.fsyncs.load(Ordering::SeqCst) - before;
    assert!(fsyncs > 0, "acknowledged writes were never fsynced");
    assert!(
        fsyncs * 4 <= WRITES,
        "{WRITES} concurrent writes took {fsyncs} fsyncs: no group commit"
    );
    assert_eq!(node.current_revision(), 1 + WRITES as i64);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_commit_times_out() {
    let engine = Arc::new(CountingEngine::new());
    let config = ServerConfig {
        engine: crate::config::EngineKind::Memory,
        request_timeout: std::time::Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let node = Node::start(config, engine.clone()).await.expect("start");
    engine.stall.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let result = node.propose(command::Op::Put(put)).await;
    assert!(matches!(result, Err(NodeError::Timeout)), "got {result:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1200),
        "the deadline, not the disk, ended the wait"
    );
    engine.stall.store(false, Ordering::SeqCst);
    node.shutdown().await;
}
