//! Unit tests of the store: revisions and reads at past revisions, compares, events live and
//! from storage, the unflushed overlay, compaction in steps.

use std::sync::Arc;

use super::*;
use crate::storage::{Durability, MemoryEngine};

fn store() -> MvccStore {
    MvccStore::open(Arc::new(MemoryEngine::new())).expect("open")
}

fn commit(s: &mut MvccStore, f: impl FnOnce(&mut WriteTxn<'_>)) -> i64 {
    let mut txn = s.write_txn();
    f(&mut txn);
    let (batch, rev) = txn.finish();
    s.engine().write(batch, Durability::Sync).expect("write");
    s.mark_flushed();
    rev
}

#[test]
fn revisions_versions_and_reads_at_past_revisions() {
    let mut s = store();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(
        commit(&mut s, |t| {
            t.put(b"a", b"1".to_vec(), 0).unwrap();
        }),
        2
    );
    assert_eq!(
        commit(&mut s, |t| {
            t.put(b"a", b"2".to_vec(), 0).unwrap();
        }),
        3
    );
    let kv = s.get(b"a").unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let old = s.range(b"a", &RangeEnd::Single, 2, 0, false).unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    assert_eq!(old.rev, 3, "header revision is the current one");
    assert!(matches!(
        s.range(b"a", &RangeEnd::Single, 4, 0, false),
        Err(MvccError::FutureRevision)
    ));
    // Deleting nothing does not bump the revision.
    assert_eq!(
        commit(&mut s, |t| assert!(t
            .delete_range(b"zz", &RangeEnd::Single)
            .unwrap()
            .is_empty())),
        3
    );
    assert_eq!(
        commit(&mut s, |t| assert_eq!(
            t.delete_range(b"a", &RangeEnd::Single).unwrap().len(),
            1
        )),
        4
    );
    assert_eq!(s.get(b"a").unwrap(), None);
    let kv = commit(&mut s, |t| {
        let kv = t.put(b"a", b"3".to_vec(), 0).unwrap();
        assert_eq!((kv.create_revision, kv.version), (5, 1));
    });
    assert_eq!(kv, 5);
}

#[test]
fn all_hold_stops_at_the_first_key_that_fails_and_agrees_with_a_range() {
    let mut s = store();
    let mut batch = WriteBatch::new();
    assert!(s.lease_grant(7, 60, &mut batch));
    s.engine().write(batch, Durability::Sync).expect("write");
    // Keys k0..k9 written over several revisions, some twice, one deleted, some on a lease.
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move |n: u32| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 16) % n
    };
    for round in 0..30 {
        commit(&mut s, |t| {
            let key = format!("k{}", next(10));
            if round % 7 == 6 {
                t.delete_range(key.as_bytes(), &RangeEnd::Single).unwrap();
            } else {
                let lease = if next(3) == 0 { 7 } else { 0 };
                let value = format!("v{}", next(4)).into_bytes();
                t.put(key.as_bytes(), value, lease).unwrap();
            }
        });
    }
    let current = s.current_revision();
    let ranges = [
        (b"k".to_vec(), RangeEnd::Before(b"l".to_vec())),
        (b"k3".to_vec(), RangeEnd::Before(b"k7".to_vec())),
        (b"k5".to_vec(), RangeEnd::Single),
        (b"k".to_vec(), RangeEnd::Unbounded),
        (b"x".to_vec(), RangeEnd::Unbounded),
    ];
    for (key, end) in &ranges {
        for rev in [0, current - 10, current] {
            let whole = s.range(key, end, rev, 0, false).unwrap().kvs;
            for keys_only in [false, true] {
                // Every record it visits is the one a range returns, in order, without its
                // value when keys-only.
                let mut seen = Vec::new();
                let all = s
                    .all_hold(key, end, rev, keys_only, |kv| {
                        seen.push(kv.clone());
                        true
                    })
                    .unwrap();
                let mut want = whole.clone();
                if keys_only {
                    want.iter_mut().for_each(|kv| kv.value.clear());
                }
                assert_eq!(seen, want, "{key:?} {end:?} at {rev}");
                assert_eq!(all, (!whole.is_empty()).then_some(true));
                // A predicate that fails on the n-th key is asked n times, and decides.
                for n in 1..=whole.len() {
                    let mut asked = 0;
                    let all = s
                        .all_hold(key, end, rev, keys_only, |_| {
                            asked += 1;
                            asked < n
                        })
                        .unwrap();
                    assert_eq!((all, asked), (Some(false), n));
                }
                // And a real one answers as the whole range does.
                let newer = |kv: &KeyValue| kv.mod_revision > current - 12;
                let all = s.all_hold(key, end, rev, keys_only, newer).unwrap();
                let want = (!whole.is_empty()).then(|| whole.iter().all(newer));
                assert_eq!(all, want);
            }
        }
    }
    assert!(matches!(
        s.all_hold(b"k", &RangeEnd::Unbounded, current + 1, true, |_| true),
        Err(MvccError::FutureRevision)
    ));
}

#[test]
fn limit_and_count() {
    let mut s = store();
    commit(&mut s, |t| {
        for k in ["a", "b", "c", "d"] {
            t.put(k.as_bytes(), vec![], 0).unwrap();
        }
    });
    let r = s.range(b"a", &RangeEnd::Unbounded, 0, 2, false).unwrap();
    assert_eq!((r.kvs.len(), r.count), (2, 4));
    let r = s
        .range(b"b", &RangeEnd::Before(b"d".to_vec()), 0, 0, true)
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 2));
    assert_eq!(s.current_revision(), 2, "one txn, one revision");
}

#[test]
fn txn_reads_its_own_writes() {
    let mut s = store();
    commit(&mut s, |t| {
        t.put(b"k", b"v".to_vec(), 0).unwrap();
        let r = t
            .range(b"k", &RangeEnd::Single, 0, 0, false, false)
            .unwrap();
        assert_eq!(r.kvs[0].value, b"v");
        assert_eq!(r.rev, 2);
        let deleted = t.delete_range(b"k", &RangeEnd::Single).unwrap();
        assert_eq!(deleted.len(), 1);
        assert!(t.get(b"k").unwrap().is_none());
    });
}

#[test]
fn events_live_and_from_storage_agree() {
    let mut s = store();
    commit(&mut s, |t| {
        t.put(b"a", b"1".to_vec(), 0).unwrap();
    });
    commit(&mut s, |t| {
        t.put(b"b", b"2".to_vec(), 0).unwrap();
        t.put(b"c", b"3".to_vec(), 0).unwrap();
    });
    commit(&mut s, |t| {
        drop(t.delete_range(b"a", &RangeEnd::Single).unwrap())
    });
    let live = s.take_events();
    assert_eq!(live.len(), 4);
    assert!(s.take_events().is_empty());
    let (stored, covered) = s.events_since(2, 100).unwrap();
    assert_eq!((stored.clone(), covered), (live.clone(), 4));
    assert_eq!(
        stored[3].kv.as_ref().unwrap().mod_revision,
        4,
        "a delete event carries its revision"
    );
    // A batch limit cuts only between revisions: revision 3 has two events.
    let (part, covered) = s.events_since(3, 1).unwrap();
    assert_eq!((part.len(), covered), (2, 3));
    let (none, covered) = s.events_since(5, 10).unwrap();
    assert_eq!((none.len(), covered), (0, 4));
    let mut batch = WriteBatch::new();
    s.compact(3, &mut batch).unwrap();
    s.engine().write(batch, Durability::Sync).unwrap();
    assert!(matches!(s.events_since(2, 10), Err(MvccError::Compacted)));
}

fn records(engine: &SharedEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    engine
        .scan(Keyspace::Kv, &[], None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[test]
fn unflushed_overlay_serves_reads_until_written_and_compaction_waits_for_it() {
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let mut s = MvccStore::open(engine.clone()).unwrap();
    // Three transactions applied back to back; their batches are written only at the end.
    let mut all = WriteBatch::new();
    for f in [
        |t: &mut WriteTxn<'_>| {
            t.put(b"a", b"1".to_vec(), 0).unwrap();
        },
        |t: &mut WriteTxn<'_>| {
            t.put(b"a", b"2".to_vec(), 0).unwrap();
        },
        |t: &mut WriteTxn<'_>| drop(t.delete_range(b"a", &RangeEnd::Single).unwrap()),
    ] {
        let mut txn = s.write_txn();
        f(&mut txn);
        assert!(txn.has_changes());
        all.append(txn.finish().0);
    }
    assert_eq!(
        s.range(b"a", &RangeEnd::Single, 3, 0, false).unwrap().kvs[0].value,
        b"2"
    );
    s.compact(4, &mut all).unwrap();
    assert!(
        matches!(s.compact_step(10), Err(MvccError::Invariant(_))),
        "a step must not run before the records it would judge are written"
    );
    engine.write(all, Durability::Sync).unwrap();
    s.mark_flushed();
    assert_eq!(
        records(&engine).len(),
        3,
        "the physical half has not run yet"
    );
    s.finish_compaction().unwrap();
    assert!(
        records(&engine).is_empty(),
        "superseded puts and the tombstone are compacted"
    );
    let reopened = MvccStore::open(engine).unwrap();
    assert_eq!(
        (
            reopened.current_revision(),
            reopened.compact_revision(),
            reopened.finished_compact_revision()
        ),
        (4, 4, 4)
    );
    assert_eq!(reopened.indexed_keys(), 0);
}

/// Keys `k0..k9` written `rounds` times each (one transaction per write), every third key
/// deleted after each round but the last.
fn history(s: &mut MvccStore, rounds: u8) {
    for round in 0..rounds {
        for k in 0..10u8 {
            commit(s, |t| {
                drop(t.put(&[b'k', b'0' + k], vec![round], 0).unwrap())
            });
        }
        if round + 1 < rounds {
            for k in (0..10u8).step_by(3) {
                commit(s, |t| {
                    drop(
                        t.delete_range(&[b'k', b'0' + k], &RangeEnd::Single)
                            .unwrap(),
                    )
                });
            }
        }
    }
}

fn compact_at(s: &mut MvccStore, rev: i64) {
    let mut batch = WriteBatch::new();
    s.compact(rev, &mut batch).unwrap();
    s.engine().write(batch, Durability::Sync).unwrap();
}

#[test]
fn a_hash_in_pieces_starts_over_when_a_compaction_lands_meanwhile() {
    // The same history twice; `later` was compacted further. The lock hands out `earlier`
    // for the first `k` holds, then `later`, as if the compaction were applied between two
    // pieces: for every `k`, the hash is `later`'s unless the whole attempt saw `earlier`,
    // never a mix.
    let mut earlier = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    let mut later = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    history(&mut earlier, 5);
    history(&mut later, 5);
    let head = earlier.current_revision();
    compact_at(&mut earlier, head - 12);
    compact_at(&mut later, head - 6);
    later.finish_compaction().unwrap();
    let (want_earlier, want_later) = (earlier.hash_kv(head).unwrap(), later.hash_kv(head).unwrap());
    assert_ne!(want_earlier, want_later, "the two states hash apart");
    let holds = std::cell::Cell::new(0);
    let counted = || {
        holds.set(holds.get() + 1);
        &earlier
    };
    MvccStore::hash_kv_in_pieces(counted, head, 2).unwrap();
    let attempt = holds.get();
    assert!(attempt > 10, "pieces of two records: {attempt} holds");
    for k in 1..=attempt {
        holds.set(0);
        let lock = || {
            holds.set(holds.get() + 1);
            if holds.get() <= k {
                &earlier
            } else {
                &later
            }
        };
        let (hash, rev, compact) = MvccStore::hash_kv_in_pieces(lock, head, 2).unwrap();
        let want = if k == attempt {
            (want_earlier, head, head - 12)
        } else {
            (want_later, head, head - 6)
        };
        assert_eq!(
            (hash, rev, compact),
            want,
            "switched after {k} of {attempt} holds"
        );
    }
    // A compaction that keeps landing: refused as compacted after a few attempts.
    let flip = std::cell::Cell::new(false);
    let flapping = || {
        flip.set(!flip.get());
        if flip.get() {
            &earlier
        } else {
            &later
        }
    };
    assert!(matches!(
        MvccStore::hash_kv_in_pieces(flapping, head, 2),
        Err(MvccError::Compacted)
    ));
}

#[test]
fn nothing_readable_depends_on_how_far_the_physical_half_got() {
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let mut s = MvccStore::open(engine.clone()).unwrap();
    history(&mut s, 5);
    let head = s.current_revision();
    let at = head - 12;
    let readable = |s: &MvccStore| {
        let mut seen = Vec::new();
        for rev in at..=head {
            let r = s.range(b"k", &RangeEnd::Unbounded, rev, 0, false).unwrap();
            let hash = s.hash_kv(rev.max(at + 1)).unwrap();
            // Read in pieces, the hash is the same.
            for piece in [1, 5, 300] {
                let (pieces, _, _) =
                    MvccStore::hash_kv_in_pieces(|| s, rev.max(at + 1), piece).unwrap();
                assert_eq!(pieces, hash, "pieces of {piece} at {rev}");
            }
            seen.push((r.kvs, hash));
        }
        (seen, s.events_since(at, usize::MAX).unwrap())
    };
    compact_at(&mut s, at);
    assert!(matches!(
        s.range(b"k", &RangeEnd::Unbounded, at - 1, 0, false),
        Err(MvccError::Compacted)
    ));
    assert!(matches!(s.hash_kv(at), Err(MvccError::Compacted)));
    // (The hash above the point does change with the point itself, as etcd's does: it
    // covers only what a read at or above the point can see. It must not change with the
    // progress of the physical half, checked below.)
    let want = readable(&s);
    let mut steps = 0;
    loop {
        match s.compact_step(3).unwrap() {
            CompactStep::Finished { revision, .. } => {
                assert_eq!(revision, at);
                break;
            }
            CompactStep::IndexBatch | CompactStep::RecordBatch(_) => steps += 1,
            CompactStep::Idle => panic!("a pending compaction went idle"),
        }
        assert_eq!(readable(&s), want, "after step {steps}");
        if steps % 4 == 0 {
            // A restart half-way: the compaction point holds, the work starts again.
            let reopened = MvccStore::open(engine.clone()).unwrap();
            assert_eq!(reopened.compact_revision(), at);
            assert!(reopened.compaction_pending());
            assert_eq!(readable(&reopened), want, "reopened after step {steps}");
        }
    }
    assert!(steps > 10, "three keys or records a step: {steps} steps");
    assert_eq!(s.compact_step(3).unwrap(), CompactStep::Idle);
    assert_eq!(readable(&s), want);
    // Only the records that hold a value at the compaction point or later are left.
    let mut full = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    history(&mut full, 5);
    compact_at(&mut full, at);
    full.finish_compaction().unwrap();
    assert_eq!(records(&engine), records(full.engine()));
    assert_eq!(s.fingerprint().index, full.fingerprint().index);
}

#[test]
fn a_restart_mid_compaction_resumes_it_and_a_later_compaction_waits_its_turn() {
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let mut s = MvccStore::open(engine.clone()).unwrap();
    history(&mut s, 4);
    let first = s.current_revision() - 20;
    compact_at(&mut s, first);
    for _ in 0..6 {
        assert_ne!(s.compact_step(2).unwrap(), CompactStep::Idle);
    }
    drop(s);
    let mut s = MvccStore::open(engine.clone()).unwrap();
    assert_eq!(
        (s.compact_revision(), s.finished_compact_revision()),
        (first, -1)
    );
    history(&mut s, 1);
    assert_eq!(s.compact_step(2).unwrap(), CompactStep::IndexBatch);
    let second = s.current_revision() - 5;
    compact_at(&mut s, second);
    assert!(matches!(
        s.range(b"k", &RangeEnd::Unbounded, second - 1, 0, false),
        Err(MvccError::Compacted)
    ));
    let mut finished = Vec::new();
    loop {
        match s.compact_step(2).unwrap() {
            CompactStep::Finished { revision, .. } => finished.push(revision),
            CompactStep::IndexBatch | CompactStep::RecordBatch(_) => {}
            CompactStep::Idle => break,
        }
    }
    assert_eq!(finished, vec![first, second], "one after the other");
    let reopened = MvccStore::open(engine.clone()).unwrap();
    assert_eq!(
        (
            reopened.compact_revision(),
            reopened.finished_compact_revision()
        ),
        (second, second)
    );
    assert!(!reopened.compaction_pending());
    assert!(records(&engine)
        .iter()
        .all(|(k, _)| Revision::from_record_key(k).unwrap().0.main > second || !k.ends_with(b"t")));
}

#[test]
fn compaction_drops_superseded_records_and_survives_reopen() {
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let mut s = MvccStore::open(engine.clone()).unwrap();
    for v in 0..3 {
        commit(&mut s, |t| {
            t.put(b"a", vec![v], 0).unwrap();
        });
    }
    commit(&mut s, |t| {
        t.put(b"b", b"x".to_vec(), 0).unwrap();
    });
    commit(&mut s, |t| {
        drop(t.delete_range(b"b", &RangeEnd::Single).unwrap())
    });
    assert_eq!(s.current_revision(), 6);
    let mut batch = WriteBatch::new();
    s.compact(6, &mut batch).unwrap();
    engine.write(batch, Durability::Sync).unwrap();
    s.finish_compaction().unwrap();
    let mut records = 0;
    engine
        .scan(Keyspace::Kv, &[], None, &mut |_, _| {
            records += 1;
            true
        })
        .unwrap();
    assert_eq!(records, 1, "only a@4 is left");
    assert!(matches!(
        s.range(b"a", &RangeEnd::Single, 5, 0, false),
        Err(MvccError::Compacted)
    ));
    assert!(matches!(
        s.compact(6, &mut WriteBatch::new()),
        Err(MvccError::Compacted)
    ));
    // As etcd: HashKV at the compacted revision is refused, at 0 (the head) it is not.
    assert!(matches!(s.hash_kv(6), Err(MvccError::Compacted)));
    assert!(s.hash_kv(0).is_ok());
    let reopened = MvccStore::open(engine).unwrap();
    assert_eq!(reopened.compact_revision(), 6);
    assert_eq!(reopened.current_revision(), 6);
    let kv = reopened.get(b"a").unwrap().unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.clone()
        ),
        (2, 4, 3, vec![2])
    );
    assert_eq!(reopened.get(b"b").unwrap(), None);
    assert_eq!(reopened.indexed_keys(), 1);
}

#[test]
fn an_unfinished_txn_changes_nothing() {
    let mut s = store();
    commit(&mut s, |t| {
        t.put(b"a", b"1".to_vec(), 0).unwrap();
    });
    s.take_events();
    let before = s.fingerprint();
    {
        let mut txn = s.write_txn();
        txn.put(b"a", b"2".to_vec(), 0).unwrap();
        txn.put(b"b", b"1".to_vec(), 0).unwrap();
        assert_eq!(txn.delete_range(b"a", &RangeEnd::Single).unwrap().len(), 1);
        let seen = txn
            .range(b"a", &RangeEnd::Unbounded, 0, 0, false, false)
            .unwrap();
        assert_eq!(seen.kvs.len(), 1, "the txn sees its own writes: only b");
        // Dropped here, unfinished.
    }
    assert_eq!(s.fingerprint(), before);
    assert_eq!(
        commit(&mut s, |t| drop(t.put(b"a", b"3".to_vec(), 0).unwrap())),
        3
    );
}

#[test]
fn reads_inside_a_txn_merge_its_writes_in_key_order() {
    let mut s = store();
    commit(&mut s, |t| {
        for k in ["b", "d", "f"] {
            t.put(k.as_bytes(), b"old".to_vec(), 0).unwrap();
        }
    });
    let mut txn = s.write_txn();
    for k in ["a", "d", "e", "g"] {
        txn.put(k.as_bytes(), b"new".to_vec(), 0).unwrap();
    }
    txn.delete_range(b"f", &RangeEnd::Single).unwrap();
    let r = txn
        .range(b"a", &RangeEnd::Unbounded, 0, 0, false, false)
        .unwrap();
    let got: Vec<(&[u8], &[u8])> = r
        .kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
        .collect();
    let want: Vec<(&[u8], &[u8])> = vec![
        (b"a", b"new"),
        (b"b", b"old"),
        (b"d", b"new"),
        (b"e", b"new"),
        (b"g", b"new"),
    ];
    assert_eq!((got, r.count, r.rev), (want, 5, 3));
    let limited = txn
        .range(b"b", &RangeEnd::Before(b"g".to_vec()), 0, 2, false, false)
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.count), (2, 3));
    let past = txn
        .range(b"a", &RangeEnd::Unbounded, 2, 0, false, false)
        .unwrap();
    assert_eq!(
        past.kvs.len(),
        3,
        "the revision before the txn shows none of its writes"
    );
    let d = txn.get(b"d").unwrap().unwrap();
    assert_eq!((d.version, d.create_revision, d.mod_revision), (2, 2, 3));
    drop(txn.finish());
    assert_eq!(s.live_keys(), 5);
}

#[test]
fn a_corrupt_revision_counter_is_an_invariant_error_not_a_panic() {
    let engine: SharedEngine = Arc::new(MemoryEngine::new());
    let mut s = MvccStore::open(engine.clone()).unwrap();
    for v in 0..4u8 {
        commit(&mut s, |t| drop(t.put(b"k", vec![v], 0).unwrap()));
    }
    // The counter claims revision 2, but the key already has records up to revision 5.
    let mut batch = WriteBatch::new();
    batch.put(
        Keyspace::Meta,
        META_CURRENT_REV,
        2i64.to_be_bytes().to_vec(),
    );
    engine.write(batch, Durability::Sync).unwrap();
    let mut s = MvccStore::open(engine).unwrap();
    let before = s.fingerprint();
    let mut txn = s.write_txn();
    assert!(matches!(
        txn.put(b"k", b"x".to_vec(), 0),
        Err(MvccError::Invariant(_))
    ));
    drop(txn);
    assert_eq!(s.fingerprint(), before);
}
