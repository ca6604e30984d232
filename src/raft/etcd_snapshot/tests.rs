//! Restores of a real etcd snapshot and of damaged copies of it.

use std::sync::Arc;

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
