//! Ranges read in pieces and from the key index: keys-only and count-only answers equal the full
//! range's, a range read in pieces equals one read at once, writes proceed between the pieces, and
//! a compaction racing a range gives `ErrCompacted` or the exact answer. On both engines.

use std::sync::{Arc, Mutex, RwLock};

use super::tests::run;
use super::*;
use crate::mvcc::RangeRead;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
};
use crate::storage::{Durability, MemoryEngine, SharedEngine};

/// The engines every test here runs on (the RocksDB one in a directory kept alive by the guard).
fn engines() -> Vec<(SharedEngine, Option<tempfile::TempDir>)> {
    let memory: (SharedEngine, Option<tempfile::TempDir>) = (Arc::new(MemoryEngine::new()), None);
    #[cfg(rocksdb_engine)]
    let rocks = {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = crate::storage::RocksEngine::open(dir.path()).expect("open rocksdb");
        Some((Arc::new(engine) as SharedEngine, Some(dir)))
    };
    #[cfg(not(rocksdb_engine))]
    let rocks = None;
    std::iter::once(memory).chain(rocks).collect()
}

/// Empty every keyspace, so the next store opened on `engine` starts fresh.
fn clear(engine: &SharedEngine) {
    let mut batch = crate::storage::WriteBatch::new();
    for ks in crate::storage::Keyspace::ALL {
        batch.delete_range(ks, Vec::new(), vec![0xff; 20]);
    }
    engine.write(batch, Durability::Sync).expect("clear");
}

fn put(s: &mut MvccStore, key: &[u8], value: &[u8], lease: i64) {
    let req = PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    };
    run(s, command::Op::Put(req)).expect("put");
}

/// A small deterministic generator (splitmix64): the same seed, the same history.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn key(&mut self) -> Vec<u8> {
        format!("k{:02}", self.below(40)).into_bytes()
    }
}

/// A random history of puts (some with leases, some ignoring their lease), deletes, lease grants
/// and revokes, and a compaction half way (physically done or not).
fn history(s: &mut MvccStore, g: &mut Gen, ops: usize) {
    let mut leases: Vec<i64> = Vec::new();
    for i in 0..ops {
        match g.below(10) {
            0 => {
                let id = 100 + i as i64;
                let grant = LeaseGrantRequest { ttl: 60, id };
                run(s, command::Op::LeaseGrant(grant)).expect("grant");
                leases.push(id);
            }
            1 if !leases.is_empty() => {
                let id = leases.remove(g.below(leases.len() as u64) as usize);
                run(s, command::Op::LeaseRevoke(LeaseRevokeRequest { id })).expect("revoke");
            }
            2 => {
                let (a, b) = (g.key(), g.key());
                let (key, range_end) = if a <= b { (a, b) } else { (b, a) };
                let req = DeleteRangeRequest {
                    key,
                    range_end,
                    ..Default::default()
                };
                run(s, command::Op::DeleteRange(req)).expect("delete");
            }
            3 => {
                // ignore_lease keeps the key's lease (refused, harmlessly, if the key is gone).
                let req = PutRequest {
                    key: g.key(),
                    value: vec![b'i'; g.below(5) as usize],
                    ignore_lease: true,
                    ..Default::default()
                };
                let _ = run(s, command::Op::Put(req));
            }
            _ => {
                let lease = match g.below(3) {
                    0 if !leases.is_empty() => leases[g.below(leases.len() as u64) as usize],
                    _ => 0,
                };
                let value = format!("v{i}").into_bytes();
                put(s, &g.key(), &value, lease);
            }
        }
        if i == ops / 2 {
            let revision = s.current_revision() - 3;
            let req = crate::pb::etcdserverpb::CompactionRequest {
                revision,
                physical: false,
            };
            run(s, command::Op::Compaction(req)).expect("compact");
            if g.below(2) == 0 {
                s.finish_compaction().expect("physical compaction");
            }
        }
    }
}

fn random_request(g: &mut Gen, s: &MvccStore) -> RangeRequest {
    let (a, b) = (g.key(), g.key());
    let (key, range_end) = match g.below(4) {
        0 => (a, Vec::new()),
        1 => (a, vec![0]),
        2 => (vec![0], vec![0]),
        _ if a <= b => (a, b),
        _ => (b, a),
    };
    let span = (s.current_revision() - s.compact_revision()).max(0) as u64;
    let revision = match g.below(3) {
        0 => 0,
        _ => s.compact_revision().max(1) + g.below(span + 1) as i64,
    };
    let mut req = RangeRequest {
        key,
        range_end,
        revision,
        limit: [0, 0, 1, 3, 10][g.below(5) as usize],
        ..Default::default()
    };
    if g.below(4) == 0 {
        req.sort_order = g.below(3) as i32;
        req.sort_target = g.below(5) as i32;
    }
    if g.below(6) == 0 {
        req.min_mod_revision = s.current_revision() - g.below(20) as i64;
    }
    if g.below(6) == 0 {
        req.max_create_revision = s.current_revision() - g.below(20) as i64;
    }
    req
}

fn has_filters(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

/// A range read at once, and the same range read in pieces of `piece` keys.
fn both_ways(s: &MvccStore, req: &RangeRequest, piece: usize) -> [RangeResponse; 2] {
    let whole = range(s, req).expect("range");
    let pieces = range_in_pieces_of(|| s, req, piece).expect("range in pieces");
    [whole, pieces]
}

#[test]
fn keys_only_and_count_only_equal_the_full_range_read_at_once_or_in_pieces() {
    for (engine, _dir) in engines() {
        let kind = engine.kind();
        let mut leased = 0;
        for seed in 0..12u64 {
            let mut s = MvccStore::open(engine.clone()).expect("open");
            let mut g = Gen(seed);
            history(&mut s, &mut g, 150);
            // Reopened half the time: the lease attachments then come from the stored records.
            if seed % 2 == 1 {
                s = MvccStore::open(engine.clone()).expect("reopen");
            }
            for _ in 0..80 {
                let req = random_request(&mut g, &s);
                let piece = 1 + g.below(6) as usize;
                let [full, full_pieces] = both_ways(&s, &req, piece);
                let ctx = format!("{kind} seed {seed} piece {piece} {req:?}");
                assert_eq!(full_pieces, full, "in pieces: {ctx}");
                leased += full.kvs.iter().filter(|kv| kv.lease != 0).count();

                let keys_req = RangeRequest {
                    keys_only: true,
                    ..req.clone()
                };
                let mut want = full.clone();
                for kv in &mut want.kvs {
                    kv.value.clear();
                }
                for got in both_ways(&s, &keys_req, piece) {
                    assert_eq!(got, want, "keys-only: {ctx}");
                }
                if req.sort_order == 0 && req.sort_target == 0 && !has_filters(&req) {
                    // The same in small chunks of a range stream (etcd 3.7's RangeStream).
                    let mut stream = RangeStream::new(keys_req.clone(), 64);
                    let mut kvs = Vec::new();
                    while !stream.is_done() {
                        let chunk = stream.next_chunk(&s).expect("chunk");
                        kvs.extend(chunk.kvs);
                        if stream.is_done() {
                            assert_eq!((chunk.count, chunk.more), (want.count, want.more));
                        }
                    }
                    assert_eq!(kvs, want.kvs, "keys-only stream: {ctx}");
                }

                let count_req = RangeRequest {
                    count_only: true,
                    ..req.clone()
                };
                for got in both_ways(&s, &count_req, piece) {
                    assert!(got.kvs.is_empty(), "count-only: {ctx}");
                    assert_eq!((got.count, got.header), (full.count, full.header));
                }
            }
            assert!(
                leased > 0,
                "{kind} seed {seed}: the ranges met no leased key"
            );
            drop(s);
            clear(&engine);
        }
        assert!(leased > 100, "{kind}: the ranges met {leased} leased keys");
    }
}

/// Eleven keys `k00..k10`, each written twice; returns the revision after the first round.
fn eleven_keys(s: &mut MvccStore) -> i64 {
    for round in 0..2 {
        for i in 0..11 {
            put(
                s,
                format!("k{i:02}").as_bytes(),
                format!("r{round}").as_bytes(),
                0,
            );
        }
    }
    s.current_revision() - 11
}

fn whole(revision: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    }
}

/// A random read-only transaction: compares and ranges, perhaps a nested one.
fn random_read_only_txn(g: &mut Gen, s: &MvccStore, depth: u32) -> TxnRequest {
    use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use crate::pb::etcdserverpb::{request_op, Compare, RequestOp};
    let compare = (0..g.below(3))
        .map(|_| {
            let (target, union) = match g.below(3) {
                0 => (
                    CompareTarget::Value,
                    TargetUnion::Value(format!("v{}", g.below(150)).into_bytes()),
                ),
                1 => (
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(g.below(s.current_revision() as u64 + 2) as i64),
                ),
                _ => (
                    CompareTarget::Version,
                    TargetUnion::Version(g.below(4) as i64),
                ),
            };
            Compare {
                result: [
                    CompareResult::Equal,
                    CompareResult::Greater,
                    CompareResult::Less,
                ][g.below(3) as usize] as i32,
                target: target as i32,
                key: g.key(),
                range_end: if g.below(3) == 0 { vec![0] } else { Vec::new() },
                target_union: Some(union),
            }
        })
        .collect();
    let ops = |g: &mut Gen| -> Vec<RequestOp> {
        (0..g.below(4))
            .map(|_| RequestOp {
                request: Some(if depth < 2 && g.below(5) == 0 {
                    request_op::Request::RequestTxn(random_read_only_txn(g, s, depth + 1))
                } else {
                    request_op::Request::RequestRange(random_request(g, s))
                }),
            })
            .collect()
    };
    let success = ops(g);
    let failure = ops(g);
    TxnRequest {
        compare,
        success,
        failure,
    }
}

#[test]
fn a_read_only_txn_read_in_pieces_answers_as_apply_does() {
    for (engine, _dir) in engines() {
        for seed in 0..8u64 {
            let mut s = MvccStore::open(engine.clone()).expect("open");
            let mut g = Gen(seed + 100);
            history(&mut s, &mut g, 150);
            for _ in 0..40 {
                let req = random_read_only_txn(&mut g, &s, 0);
                assert!(txn::is_read_only(&req));
                let rev = s.current_revision();
                let applied = {
                    // Run as apply runs it, then dropped unfinished: it writes nothing.
                    let mut w = s.write_txn();
                    txn::execute_txn(&mut w, &req)
                };
                let piece = 1 + g.below(5) as usize;
                let read = read_only_txn_gated(|| &s, &req, piece, &|| true)
                    .map(|r| r.expect("never held back"));
                match (applied, read) {
                    (Ok(a), Ok(r)) => {
                        assert_eq!(r.header, header(rev));
                        let r = TxnResponse {
                            header: a.header,
                            ..r
                        };
                        assert_eq!(a, r, "seed {seed}: {req:?}");
                    }
                    (Err(a), Err(r)) => assert_eq!(a.to_string(), r.to_string()),
                    (a, r) => panic!("seed {seed}: apply {a:?}, read {r:?} for {req:?}"),
                }
                assert_eq!(s.current_revision(), rev, "nothing written");
            }
            clear(&engine);
        }
    }
}

#[test]
fn a_range_past_its_first_piece_goes_on_only_if_it_may_grow() {
    for (engine, _dir) in engines() {
        let mut s = MvccStore::open(engine).expect("open");
        eleven_keys(&mut s);
        let asked = std::cell::Cell::new(0);
        let never = || {
            asked.set(asked.get() + 1);
            false
        };
        let read = |req: &RangeRequest, may_grow: &dyn Fn() -> bool| {
            range_gated(|| &s, req, 4, may_grow).expect("range")
        };
        assert!(read(&whole(0), &never).is_none(), "held back after a piece");
        assert_eq!(asked.get(), 1);
        let small = RangeRequest {
            key: b"k00".to_vec(),
            range_end: b"k03".to_vec(),
            ..Default::default()
        };
        assert_eq!(read(&small, &never).expect("one piece").kvs.len(), 3);
        let count = RangeRequest {
            count_only: true,
            ..whole(0)
        };
        assert_eq!(read(&count, &never).expect("counts keep nothing").count, 11);
        assert_eq!(asked.get(), 1, "neither asked");
        let grown = read(&whole(0), &|| true).expect("allowed");
        assert_eq!(grown, range(&s, &whole(0)).expect("range"));
    }
}

#[test]
fn writes_go_on_between_the_pieces_of_a_range_and_it_still_reads_its_revision() {
    for (engine, _dir) in engines() {
        let mut s = MvccStore::open(engine).expect("open");
        eleven_keys(&mut s);
        let head = s.current_revision();
        let want = range(&s, &whole(0)).expect("range");
        let store = RwLock::new(s);
        // What happened, in order: each piece taking the lock, and the writes made between.
        let log = Mutex::new(Vec::new());
        let got = range_in_pieces_of(
            || {
                let mut log = log.lock().unwrap();
                let pieces = log.iter().filter(|e| **e == "piece").count();
                if pieces == 1 {
                    // Between the first and the second piece the store is free for a writer:
                    // overwrite a key the range already passed and one it has yet to reach,
                    // delete one, add one.
                    let mut w = store.try_write().expect("no piece holds the lock");
                    put(&mut w, b"k00", b"new", 0);
                    put(&mut w, b"k09", b"new", 0);
                    put(&mut w, b"k05a", b"new", 0);
                    let del = DeleteRangeRequest {
                        key: b"k07".to_vec(),
                        ..Default::default()
                    };
                    run(&mut w, command::Op::DeleteRange(del)).expect("delete");
                    log.push("write");
                }
                log.push("piece");
                store.read().unwrap()
            },
            &whole(0),
            4,
        )
        .expect("range");
        log.lock().unwrap().push("range answered");
        assert_eq!(
            *log.lock().unwrap(),
            ["piece", "write", "piece", "piece", "range answered"],
            "the write completed while the range was in flight"
        );
        assert_eq!(got, want, "the range reads the state at its revision only");
        assert_eq!(got.header.unwrap().revision, head);
        assert_eq!(store.read().unwrap().current_revision(), head + 4);
    }
}

#[test]
fn a_compaction_racing_a_range_gives_compacted_or_the_exact_answer() {
    for (engine, _dir) in engines() {
        let mut s = MvccStore::open(engine).expect("open");
        let first_round = eleven_keys(&mut s);
        let head = s.current_revision();
        let want_old = range(&s, &whole(first_round)).expect("range");
        let want_head = range(&s, &whole(head)).expect("range");
        let store = RwLock::new(s);
        let compact_after_first_piece = |read_rev: i64, compact_to: i64| {
            let done = Mutex::new(false);
            range_in_pieces_of(
                || {
                    let mut done = done.lock().unwrap();
                    if !*done {
                        *done = true;
                    } else {
                        let mut w = store.try_write().expect("no piece holds the lock");
                        if compact_to > w.compact_revision() {
                            let req = crate::pb::etcdserverpb::CompactionRequest {
                                revision: compact_to,
                                physical: true,
                            };
                            run(&mut w, command::Op::Compaction(req)).expect("compact");
                            w.finish_compaction().expect("physical");
                        }
                    }
                    store.read().unwrap()
                },
                &whole(read_rev),
                4,
            )
        };
        // Up to the revision read: the superseded records go, the answer stays exact.
        assert_eq!(
            compact_after_first_piece(first_round, first_round).expect("range"),
            want_old
        );
        // Past it: ErrCompacted, never a mix of two revisions.
        assert!(matches!(
            compact_after_first_piece(first_round, head - 1),
            Err(ApplyError::Compacted)
        ));
        assert_eq!(
            compact_after_first_piece(head, head).expect("range"),
            want_head
        );
    }
}

/// The last piece has checked the compaction point; a compaction past the revision read that
/// lands before the records are read (and physically deletes them) does not reach the engine
/// view they are read from.
#[test]
fn records_are_read_from_the_view_taken_under_the_lock() {
    for (engine, _dir) in engines() {
        for keys_only in [false, true] {
            clear(&engine);
            let mut s = MvccStore::open(engine.clone()).expect("open");
            let first_round = eleven_keys(&mut s);
            let want = range(&s, &whole(first_round)).expect("range");
            let mut read = RangeRead::new(
                &[0],
                crate::mvcc::RangeEnd::Unbounded,
                first_round,
                0,
                false,
                keys_only,
            );
            while !s.range_step(&mut read, 3).expect("piece") {}
            let mut w = crate::storage::WriteBatch::new();
            let target = s.current_revision();
            s.compact(target, &mut w).expect("compact");
            s.engine().write(w, Durability::Sync).expect("write");
            s.finish_compaction().expect("physical");
            assert!(
                s.engine()
                    .get(
                        crate::storage::Keyspace::Kv,
                        &crate::mvcc::Revision::new(first_round, 0).record_key(false)
                    )
                    .expect("get")
                    .is_none(),
                "the compaction deleted the records the range needs"
            );
            let got = read.finish().expect("finish");
            let mut want = want.kvs.clone();
            if keys_only {
                for kv in &mut want {
                    kv.value.clear();
                }
            }
            assert_eq!(got.kvs, want, "keys_only {keys_only}");
        }
    }
}

#[test]
fn keys_only_sorted_by_value_sorts_by_the_values() {
    let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).expect("open");
    put(&mut s, b"a", b"3", 0);
    put(&mut s, b"b", b"1", 0);
    put(&mut s, b"c", b"2", 0);
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        keys_only: true,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Value as i32,
        ..Default::default()
    };
    let got = range(&s, &req).expect("range");
    let keys: Vec<&[u8]> = got.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"b", b"c", b"a"]);
    assert!(got.kvs.iter().all(|kv| kv.value.is_empty()));
}
