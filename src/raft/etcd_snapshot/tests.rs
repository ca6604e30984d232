//! Restores of a real etcd snapshot and of damaged copies of it.

use std::sync::Arc;

use std::collections::BTreeMap;

use super::bbolt_write::tests::{read_back, Records};
use super::*;
use crate::mvcc::RangeEnd;
use crate::storage::MemoryEngine;

/// `etcdctl snapshot save` from etcd 3.5.1 after: put a=1, put a=2, put b=x, del b, put c=y,
/// lease grant 600 (id 0x0568a24280cd740a), put leased=v with it, compact 4, put a=3, users root
/// (password rootpw) and u1 (pw1), role r1 (readwrite [/foo, /fop)) granted to u1, auth enable.
const SNAPSHOT: &[u8] = include_bytes!("testdata/etcd-3.5.1.db");
const LEASE: i64 = 0x0568_a242_80cd_740a;

fn engine() -> SharedEngine {
    Arc::new(MemoryEngine::new())
}

fn restore_bytes(bytes: &[u8], skip_hash_check: bool) -> Result<Restored, EtcdSnapshotError> {
    restore(&engine(), bytes, bytes.len() as u64, skip_hash_check)
}

fn kv_count(engine: &SharedEngine) -> usize {
    let mut n = 0;
    engine
        .scan(Keyspace::Kv, &[], None, &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

#[test]
fn a_real_etcd_snapshot_restores_keys_revisions_leases_and_users() {
    assert!(looks_like(SNAPSHOT));
    let engine = engine();
    let got = restore(&engine, SNAPSHOT, SNAPSHOT.len() as u64, false).unwrap();
    assert_eq!(got.revision, 8);
    assert_eq!(got.compact_revision, 4);
    assert_eq!((got.leases, got.users, got.roles), (1, 2, 2));
    assert!(got.auth_enabled);

    let store = MvccStore::open(engine.clone()).unwrap();
    assert_eq!(store.current_revision(), 8);
    assert_eq!(store.compact_revision(), 4);
    let a = store.get(b"a").unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"3"[..], 2, 8, 3)
    );
    // The compaction at 4 kept a=2 (rev 3) readable at revisions 4..7.
    let at5 = store.range(b"a", &RangeEnd::Single, 5, 0, false).unwrap();
    assert_eq!(at5.kvs[0].value, b"2");
    assert_eq!(at5.kvs[0].version, 2);
    assert!(store.range(b"a", &RangeEnd::Single, 3, 0, false).is_err());
    assert!(store.get(b"b").unwrap().is_none(), "b was deleted");
    let leased = store.get(b"leased").unwrap().unwrap();
    assert_eq!(leased.lease, LEASE);
    assert_eq!(store.leases().ttl_secs(LEASE), Some(600));
    assert_eq!(store.leases().keys(LEASE), vec![b"leased".to_vec()]);
    // The events after the compaction point replay from storage.
    let (events, last) = store.events_since(5, 100).unwrap();
    assert_eq!(last, 8);
    let revs: Vec<i64> = events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revs, vec![5, 6, 7, 8]);

    let auth = AuthStore::load(engine.as_ref()).unwrap();
    assert!(auth.enabled());
    assert_eq!(
        auth.user_names(),
        vec!["root".to_string(), "u1".to_string()]
    );
    let u1 = auth.user("u1").unwrap();
    assert_eq!(u1.roles, vec!["r1".to_string()]);
    assert!(u1.password.starts_with(b"$2"), "bcrypt hash kept");
    let r1 = auth.role("r1").unwrap();
    assert_eq!(r1.key_permission[0].key, b"/foo");
    assert_eq!(r1.key_permission[0].range_end, b"/fop");
}

#[test]
fn a_damaged_or_truncated_snapshot_is_refused() {
    let mut flipped = SNAPSHOT.to_vec();
    flipped[9000] ^= 1;
    let err = restore_bytes(&flipped, false).unwrap_err();
    assert!(err.to_string().contains("integrity check failed"), "{err}");

    let truncated = &SNAPSHOT[..SNAPSHOT.len() - 4096];
    let err = restore_bytes(truncated, false).unwrap_err();
    assert!(err.to_string().contains("integrity check failed"), "{err}");
    let err = restore_bytes(&SNAPSHOT[..SNAPSHOT.len() - 100], false).unwrap_err();
    assert!(err.to_string().contains("missing hash"), "{err}");
    // Past the hash check, the structure is checked too.
    let err = restore_bytes(truncated, true).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    let err = restore_bytes(b"hello", false).unwrap_err();
    assert!(err.to_string().contains("missing hash"), "{err}");
    let mut zeros = vec![0u8; 4096 * 4];
    zeros.extend_from_slice(&Sha256::digest(&zeros));
    let err = restore_bytes(&zeros, false).unwrap_err();
    assert!(
        matches!(err, EtcdSnapshotError::Bolt(BoltError::NotBolt(_))),
        "{err}"
    );
}

#[test]
fn no_damage_to_the_database_panics_the_reader() {
    // The hash is skipped so every change reaches the bbolt reader and the record checks.
    let data = &SNAPSHOT[..SNAPSHOT.len() - HASH_BYTES as usize];
    assert!(restore_bytes(data, true).is_ok());
    let mut refused = 0;
    for at in (0..data.len()).step_by(3) {
        let mut f = data.to_vec();
        f[at] ^= 0x5a;
        let engine = engine();
        if restore(&engine, &f[..], f.len() as u64, true).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0);
    for len in (0..data.len()).step_by(97) {
        assert!(restore_bytes(&data[..len], true).is_err(), "{len} bytes");
    }
}

#[test]
fn a_database_without_a_key_bucket_is_not_an_etcd_snapshot() {
    let file = bbolt::tests::sample();
    let engine = engine();
    let err = restore(&engine, &file[..], file.len() as u64, true).unwrap_err();
    assert!(err.to_string().contains("no `key` bucket"), "{err}");
    assert_eq!(kv_count(&engine), 0);
}

/// Found by the `etcd_snapshot` fuzz target: a put and a tombstone at one revision reached the key
/// index, whose invariant (each change newer than the last) then stopped the restore with a panic.
#[test]
fn regression_a_put_and_a_tombstone_at_one_revision_are_refused() {
    let file: &[u8] = include_bytes!("testdata/fuzz-put-and-tombstone-at-one-revision.db");
    let err = restore_bytes(file, true).unwrap_err();
    assert!(
        err.to_string().contains("repeated or out of order"),
        "{err}"
    );
}

fn dump(engine: &SharedEngine, ks: Keyspace) -> Vec<(Vec<u8>, Vec<u8>)> {
    crate::raft::snapshot::tests::dump(engine.as_ref(), ks)
}

/// The etcd snapshot file MetaStore streams for `engine`, checking that no piece is much larger
/// than a chunk (the largest value here is below one).
fn snapshot_of(engine: &SharedEngine) -> Vec<u8> {
    let mut w = writer::SnapshotWriter::new(engine.view().unwrap()).unwrap();
    let total = w.total_bytes();
    let mut file = Vec::new();
    let mut pieces = 0;
    while let Some(piece) = w.next_piece().unwrap() {
        assert!(
            piece.len() <= limits::SNAPSHOT_CHUNK_BYTES + 256 * 1024,
            "a piece of {} bytes",
            piece.len()
        );
        file.extend_from_slice(&piece);
        pieces += 1;
    }
    assert!(pieces >= 2, "pages, then the hash");
    assert_eq!(file.len() as u64, total, "the size announced up front");
    assert_eq!(file.len() as u64 % HASH_ALIGN, HASH_BYTES, "etcdctl's test");
    file
}

/// Every bucket of an etcd snapshot file: name → records.
fn buckets_of(file: &[u8]) -> BTreeMap<Vec<u8>, Records> {
    read_back(&file[..file.len() - HASH_BYTES as usize])
}

#[test]
fn an_etcd_snapshot_restored_and_written_again_holds_what_etcd_wrote() {
    let first = engine();
    let restored = restore(&first, SNAPSHOT, SNAPSHOT.len() as u64, false).unwrap();
    let file = snapshot_of(&first);

    // etcd's buckets, with etcd's very records, but for what belongs to the old cluster's raft:
    // its members and its raft positions (consistent index, term, conf state).
    let ours = buckets_of(&file);
    let mut etcds = buckets_of(SNAPSHOT);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        etcds.keys().collect::<Vec<_>>()
    );
    etcds.insert(b"members".to_vec(), Records::new());
    etcds
        .get_mut(b"meta".as_slice())
        .unwrap()
        .retain(|k, _| k.ends_with(b"CompactRev"));
    assert_eq!(ours, etcds);

    // And it restores to the same state.
    let second = engine();
    assert_eq!(
        restore(&second, &file[..], file.len() as u64, false).unwrap(),
        restored
    );
    assert_eq!(dump(&second, Keyspace::Kv), dump(&first, Keyspace::Kv));
    assert_eq!(dump(&second, Keyspace::Meta), dump(&first, Keyspace::Meta));
}

#[test]
fn a_large_store_streams_in_bounded_pieces_and_reads_back() {
    let source = engine();
    let lease = 0x1234;
    let mut batch = WriteBatch::new();
    batch.put(
        Keyspace::Meta,
        lease::record_key(lease),
        lease::encode_record(60, Some(42)),
    );
    source.write(batch, Durability::Sync).unwrap();
    let mut store = MvccStore::open(source.clone()).unwrap();
    for i in 0..6000u32 {
        let mut txn = store.write_txn();
        let key = format!("key/{:05}", i % 4000);
        // Every 500th value spans overflow pages; the rest fill branch pages of the `key` bucket.
        let value = vec![i as u8; if i % 500 == 7 { 200 * 1024 } else { 300 }];
        let lease_id = if i == 1 { lease } else { 0 };
        txn.put(key.as_bytes(), value, lease_id).unwrap();
        source.write(txn.finish().0, Durability::Buffered).unwrap();
        store.mark_flushed();
        if i % 1000 == 999 {
            let mut txn = store.write_txn();
            txn.delete_range(key.as_bytes(), &RangeEnd::Single).unwrap();
            source.write(txn.finish().0, Durability::Buffered).unwrap();
            store.mark_flushed();
        }
    }
    let mut batch = WriteBatch::new();
    store.compact(1000, &mut batch).unwrap();
    source.write(batch, Durability::Sync).unwrap();
    store.finish_compaction().unwrap();

    let file = snapshot_of(&source);
    assert!(
        file.len() > 3 * limits::SNAPSHOT_CHUNK_BYTES,
        "{} bytes",
        file.len()
    );
    let target = engine();
    let got = restore(&target, &file[..], file.len() as u64, false).unwrap();
    assert_eq!(got.revision, store.current_revision());
    assert_eq!(got.compact_revision, 1000);
    assert_eq!(got.leases, 1);
    assert_eq!(dump(&target, Keyspace::Kv), dump(&source, Keyspace::Kv));
    let restored = MvccStore::open(target.clone()).unwrap();
    assert_eq!(restored.leases().ttl_secs(lease), Some(60));
    let rev = store.current_revision();
    assert_eq!(restored.hash_kv(rev).unwrap(), store.hash_kv(rev).unwrap());
}

#[test]
fn a_snapshot_taken_mid_compaction_has_etcd_finish_it() {
    let (source, mut store, at) = crate::raft::backup::tests::half_compacted_store();
    let file = snapshot_of(&source);
    let meta = &buckets_of(&file)[b"meta".as_slice()];
    assert_eq!(
        meta.keys().map(|k| k.as_slice()).collect::<Vec<_>>(),
        vec![&b"scheduledCompactRev"[..]],
        "scheduled, not finished: etcd finishes it on open"
    );
    store.finish_compaction().unwrap();
    let target = engine();
    let got = restore(&target, &file[..], file.len() as u64, false).unwrap();
    assert_eq!(got.compact_revision, at);
    let mut restored = MvccStore::open(target.clone()).unwrap();
    restored.finish_compaction().unwrap();
    assert_eq!(dump(&target, Keyspace::Kv), dump(&source, Keyspace::Kv));
}
