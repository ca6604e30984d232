//! An etcd snapshot file (a bbolt database, with or without etcd's SHA-256 trailer) from raw
//! bytes through `metastore snapshot restore`'s reader into a fresh memory engine.
//!
//! Properties: no input panics the reader or loops (each page is reached once, the tree depth is
//! bounded); a file is either restored into a store that opens with the revision and compaction
//! point reported, or refused; the hash check refuses any input whose trailer does not match; heap
//! memory peaks within a small multiple of the input, whatever sizes, counts and page ids the
//! file claims.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use metastore::mvcc::MvccStore;
use metastore::raft::etcd_snapshot::{check_hash, restore};
use metastore::storage::{MemoryEngine, SharedEngine};
use metastore_fuzz::heap;

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    // Real trailers are 32 bytes of SHA-256: a mutated input almost never matches, so the hash is
    // checked on its own and the restore skips it (reaching the structure checks).
    let _ = check_hash(data, len, false);

    let before = heap::start();
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let restored = restore(&engine, data, len, true);
    if let Ok(r) = &restored {
        let store = MvccStore::open(engine.clone()).expect("a restored store opens");
        assert_eq!(store.current_revision(), r.revision);
        assert_eq!(store.compact_revision(), r.compact_revision);
        assert!(r.revision >= r.compact_revision);
    }
    drop(restored);
    let peak = heap::peak_since(before);
    // The engine's copy of the records, the key index, one page per tree level and the hash
    // buffer: a few times the input at most.
    let bound = 16 * data.len() + (1 << 20);
    assert!(
        peak <= bound,
        "peak heap {peak} bytes for {} input bytes",
        data.len()
    );
});
