//! What the fuzz targets share: a store on the memory engine driven the way the state machine
//! drives it, the MVCC invariants every accepted request must keep, and the framing that turns
//! one fuzz input into a sequence of requests.

use std::sync::Arc;

use metastore::apply::{self, Applied, ApplyError};
use metastore::mvcc::{MvccFingerprint, MvccStore};
use metastore::pb::etcdserverpb::RangeRequest;
use metastore::pb::metastore::Command;
use metastore::pb::mvccpb::{Event, KeyValue};
use metastore::storage::{Durability, Engine, Keyspace, MemoryEngine};

/// A fresh store on the memory engine.
pub struct Store {
    pub engine: Arc<MemoryEngine>,
    pub mvcc: MvccStore,
    /// Auth state (the targets send no auth changes; apply still consults it).
    pub auth: metastore::auth::AuthStore,
    /// The cluster's downgrade setting (the targets send no downgrades; apply still takes it).
    pub versions: metastore::cluster::version::VersionState,
    /// Every event applied so far, in order (what a watcher from revision 1 must see).
    pub history: Vec<Event>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a request could change: both replicated keyspaces, the store's revisions and every
/// piece of its in-memory state (key index, leases, pending events and records).
#[derive(Debug, PartialEq)]
pub struct Digest {
    records: Vec<(Keyspace, Vec<u8>, Vec<u8>)>,
    current: i64,
    compacted: i64,
    memory: MvccFingerprint,
}

impl Store {
    pub fn new() -> Self {
        let engine = Arc::new(MemoryEngine::new());
        let mvcc = MvccStore::open(engine.clone()).expect("open an empty store");
        Self {
            engine,
            mvcc,
            auth: metastore::auth::AuthStore::default(),
            versions: Default::default(),
            history: Vec::new(),
        }
    }

    /// Apply a command as the state machine does: on success write its batch, mark the store
    /// flushed and collect its events; on failure write nothing.
    pub fn apply(&mut self, cmd: Command) -> Result<Applied, ApplyError> {
        let (applied, batch) =
            apply::apply(&mut self.mvcc, &mut self.auth, &mut self.versions, cmd)?;
        self.engine
            .write(batch, Durability::Buffered)
            .expect("memory engine write");
        self.mvcc.mark_flushed();
        self.history.extend(self.mvcc.take_events());
        // A little of a pending compaction's physical half, as the background task would take
        // it: later requests meet a compaction half done.
        self.mvcc.compact_step(2).expect("compaction step");
        Ok(applied)
    }

    /// The store's state, for "a rejected request changed nothing" checks.
    pub fn digest(&self) -> Digest {
        let mut records = Vec::new();
        for ks in [Keyspace::Meta, Keyspace::Kv] {
            self.engine
                .scan(ks, &[], None, &mut |k, v| {
                    records.push((ks, k.to_vec(), v.to_vec()));
                    true
                })
                .expect("scan");
        }
        Digest {
            records,
            current: self.mvcc.current_revision(),
            compacted: self.mvcc.compact_revision(),
            memory: self.mvcc.fingerprint(),
        }
    }

    /// What a restart would rebuild from the engine must be what the store holds in memory: the
    /// same revisions, the same leases and attachments, and the same answer to a read of every
    /// key at every retained revision.
    pub fn check_reopen(&self) {
        let reopened = MvccStore::open(self.engine.clone()).expect("reopen");
        let live = &self.mvcc;
        assert_eq!(
            (reopened.current_revision(), reopened.compact_revision()),
            (live.current_revision(), live.compact_revision()),
            "revisions after a reopen"
        );
        assert_eq!(reopened.leases(), live.leases(), "leases after a reopen");
        assert_eq!(
            reopened.live_keys(),
            live.live_keys(),
            "live keys after a reopen"
        );
        let first = live.compact_revision().max(1);
        for rev in first..=live.current_revision() {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: rev,
                ..Default::default()
            };
            let (a, b) = (apply::range(live, &all), apply::range(&reopened, &all));
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "read at {rev} after a reopen"),
                (a, b) => panic!("read at {rev}: in memory {a:?}, after a reopen {b:?}"),
            }
        }
    }

    /// Every live key at the current revision.
    pub fn live(&self) -> Vec<KeyValue> {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        apply::range(&self.mvcc, &all)
            .expect("a range at the current revision always works")
            .kvs
    }

    /// The MVCC invariants: every live key's revisions are consistent with each other and with
    /// the store, and no revision is ahead of the store.
    pub fn check_invariants(&self) {
        let current = self.mvcc.current_revision();
        assert!(
            self.mvcc.compact_revision() <= current,
            "compacted past the head"
        );
        for kv in self.live() {
            assert!(
                kv.version >= 1,
                "live key with version {}: {kv:?}",
                kv.version
            );
            assert!(
                0 < kv.create_revision && kv.create_revision <= kv.mod_revision,
                "created after modified: {kv:?}"
            );
            assert!(kv.mod_revision <= current, "modified in the future: {kv:?}");
            assert_eq!(
                kv.version == 1,
                kv.create_revision == kv.mod_revision,
                "version 1 exactly when created and last modified at once: {kv:?}"
            );
            assert!(
                kv.version <= kv.mod_revision - kv.create_revision + 1,
                "more versions than revisions: {kv:?}"
            );
        }
        let mut last = 0;
        for ev in &self.history {
            let rev = ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
            assert!(rev >= last, "events out of revision order");
            last = rev;
        }
        assert!(last <= current, "an event after the head");
    }
}

/// Splits a fuzz input into `(tag, payload)` frames: one tag byte, a little-endian u16 length,
/// then the payload (cut short at the end of the input).
pub struct Frames<'a> {
    data: &'a [u8],
}

impl<'a> Frames<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, rest) = self.data.split_first()?;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
            _ => (rest.len(), &[][..]),
        };
        let len = len.min(rest.len());
        let (payload, rest) = rest.split_at(len);
        self.data = rest;
        Some((tag, payload))
    }
}

/// Frame `payload` with `tag` (how the seed corpus is written).
pub fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("seed payloads are small");
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A heap that counts its live bytes and their peak, for targets that bound what an input costs.
/// A target installs it with `#[global_allocator] static ALLOC: heap::Counting = heap::Counting;`.
pub mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system allocator, counted.
    pub struct Counting;

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    // SAFETY: every call is forwarded to the system allocator unchanged; the counters are only
    // bookkeeping.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = System.alloc(layout);
            if !p.is_null() {
                let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            System.dealloc(ptr, layout)
        }
    }

    /// Start measuring: the peak restarts from the bytes live now, which are returned.
    pub fn start() -> usize {
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        live
    }

    /// The most bytes live at once since [`start`] returned `before`, beyond `before`.
    pub fn peak_since(before: usize) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(before)
    }
}
