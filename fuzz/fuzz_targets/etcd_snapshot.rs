//! An etcd snapshot file (a bbolt database, with or without etcd's SHA-256 trailer) from raw
//! bytes through `metastore snapshot restore`'s reader into a fresh memory engine.
//!
//! Properties: no input panics the reader or loops (each page is reached once, the tree depth is
//! bounded); a file is either restored into a store that opens with the revision and compaction
//! point reported, or refused; the hash check refuses any input whose trailer does not match; heap
//! memory peaks within a small multiple of the input, whatever sizes, counts and page ids the
//! file claims.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use metastore::mvcc::MvccStore;
use metastore::raft::etcd_snapshot::{check_hash, restore};
use metastore::storage::{MemoryEngine, SharedEngine};

/// Counts live heap bytes and their peak, to check what hostile lengths and counts cost.
struct Counting;

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

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    // Real trailers are 32 bytes of SHA-256: a mutated input almost never matches, so the hash is
    // checked on its own and the restore skips it (reaching the structure checks).
    let _ = check_hash(data, len, false);

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let restored = restore(&engine, data, len, true);
    if let Ok(r) = &restored {
        let store = MvccStore::open(engine.clone()).expect("a restored store opens");
        assert_eq!(store.current_revision(), r.revision);
        assert_eq!(store.compact_revision(), r.compact_revision);
        assert!(r.revision >= r.compact_revision);
    }
    drop(restored);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    // The engine's copy of the records, the key index, one page per tree level and the hash
    // buffer: a few times the input at most.
    let bound = 16 * data.len() + (1 << 20);
    assert!(
        peak <= bound,
        "peak heap {peak} bytes for {} input bytes",
        data.len()
    );
});
