//! MVCC against a reference model simple enough to be obviously right: the whole key space as of
//! every revision. Random sequences of put / delete-range / txn (nested, and refused half-way) /
//! compact / range-at-revision must give the same responses, header revisions and errors on the
//! memory engine and on RocksDB, and a refused command must leave the in-memory state untouched.

use std::collections::BTreeMap;
use std::sync::Arc;

use metastore::apply::{self, Applied, ApplyError};
use metastore::mvcc::MvccStore;
use metastore::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore::pb::etcdserverpb::{
    request_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use metastore::pb::metastore::{command, Command};
use metastore::pb::mvccpb::KeyValue;
use metastore::storage::{Durability, Keyspace, MemoryEngine, RocksEngine, SharedEngine};
use proptest::prelude::*;
use prost::Message;

const KEYS: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        value: u8,
    },
    Delete {
        start: usize,
        end: Option<usize>,
    },
    /// If `key` holds `value`, put `then_key`, else delete `else_key`; with `nested` the branch's
    /// write sits inside a nested txn; with `doomed` a range at a future revision follows the write
    /// (in the nested txn too), so the whole txn must be refused and leave nothing behind.
    Txn {
        key: usize,
        value: u8,
        then_key: usize,
        else_key: usize,
        nested: bool,
        doomed: bool,
    },
    Compact {
        back: i64,
    },
    Range {
        start: usize,
        end: Option<usize>,
        back: i64,
        limit: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    let end = proptest::option::of(0..=KEYS.len());
    prop_oneof![
        4 => (k.clone(), 0u8..4).prop_map(|(key, value)| Op::Put { key, value }),
        2 => (k.clone(), end.clone()).prop_map(|(start, end)| Op::Delete { start, end }),
        3 => (k.clone(), 0u8..4, k.clone(), k.clone(), any::<bool>(), prop::bool::weighted(0.3))
            .prop_map(|(key, value, then_key, else_key, nested, doomed)| Op::Txn {
                key, value, then_key, else_key, nested, doomed,
            }),
        1 => (-2i64..6).prop_map(|back| Op::Compact { back }),
        4 => (k, end, -2i64..8, 0i64..4).prop_map(|(start, end, back, limit)| Op::Range { start, end, back, limit }),
    ]
}

/// `end` index past the last key means "to the end" (`"\0"`); `None` means the single key.
fn range_end(end: Option<usize>) -> Vec<u8> {
    match end {
        None => Vec::new(),
        Some(e) if e >= KEYS.len() => vec![0],
        Some(e) => KEYS[e].as_bytes().to_vec(),
    }
}

/// The model: the full key space as of each revision (index 0 is revision 1).
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![BTreeMap::new()],
            compacted: -1,
        }
    }
    fn rev(&self) -> i64 {
        self.states.len() as i64
    }
    fn at(&self, rev: i64) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.states[(rev - 1) as usize]
    }
    fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
        match end {
            [] => key == start,
            [0] => key >= start,
            e => key >= start && key < e,
        }
    }
    fn put(&mut self, next: &mut BTreeMap<Vec<u8>, KeyValue>, key: &[u8], value: Vec<u8>) {
        let rev = self.rev() + 1;
        let kv = match next.get(key) {
            Some(old) => KeyValue {
                mod_revision: rev,
                version: old.version + 1,
                value,
                ..old.clone()
            },
            None => KeyValue {
                key: key.to_vec(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value,
                lease: 0,
            },
        };
        next.insert(key.to_vec(), kv);
    }
    fn commit(&mut self, next: BTreeMap<Vec<u8>, KeyValue>, changed: bool) {
        if changed {
            self.states.push(next);
        }
    }
}

/// What one operation answered, in a form both sides produce.
#[derive(Debug, PartialEq)]
enum Outcome {
    Err(&'static str),
    Write {
        rev: i64,
        deleted: i64,
        succeeded: bool,
    },
    Read {
        rev: i64,
        kvs: Vec<KeyValue>,
        count: i64,
        more: bool,
    },
}

fn err_name(e: &ApplyError) -> &'static str {
    match e {
        ApplyError::Compacted => "compacted",
        ApplyError::FutureRevision => "future",
        other => panic!("unexpected error {other:?}"),
    }
}

fn model_step(m: &mut Model, op: &Op) -> Outcome {
    let mut next = m.at(m.rev()).clone();
    match op {
        Op::Put { key, value } => {
            m.put(&mut next, KEYS[*key].as_bytes(), vec![*value]);
            m.commit(next, true);
            Outcome::Write {
                rev: m.rev(),
                deleted: 0,
                succeeded: true,
            }
        }
        Op::Delete { start, end } => {
            let (s, e) = (KEYS[*start].as_bytes(), range_end(*end));
            let before = next.len();
            next.retain(|k, _| !Model::in_range(k, s, &e));
            let deleted = (before - next.len()) as i64;
            m.commit(next, deleted > 0);
            Outcome::Write {
                rev: m.rev(),
                deleted,
                succeeded: true,
            }
        }
        Op::Txn { doomed: true, .. } => Outcome::Err("future"),
        Op::Txn {
            key,
            value,
            then_key,
            else_key,
            ..
        } => {
            let holds = next
                .get(KEYS[*key].as_bytes())
                .is_some_and(|kv| kv.value == vec![*value]);
            let changed = if holds {
                m.put(&mut next, KEYS[*then_key].as_bytes(), b"txn".to_vec());
                true
            } else {
                next.remove(KEYS[*else_key].as_bytes()).is_some()
            };
            m.commit(next, changed);
            Outcome::Write {
                rev: m.rev(),
                deleted: 0,
                succeeded: holds,
            }
        }
        Op::Compact { back } => {
            let rev = m.rev() - back;
            if rev <= m.compacted {
                Outcome::Err("compacted")
            } else if rev > m.rev() {
                Outcome::Err("future")
            } else {
                m.compacted = rev;
                Outcome::Write {
                    rev: m.rev(),
                    deleted: 0,
                    succeeded: true,
                }
            }
        }
        Op::Range {
            start,
            end,
            back,
            limit,
        } => {
            let at = if *back < 0 { 0 } else { m.rev() - back };
            let read_at = if at <= 0 { m.rev() } else { at };
            if read_at > m.rev() {
                return Outcome::Err("future");
            }
            if read_at < m.compacted {
                return Outcome::Err("compacted");
            }
            let (s, e) = (KEYS[*start].as_bytes(), range_end(*end));
            let all: Vec<KeyValue> = m
                .at(read_at)
                .iter()
                .filter(|(k, _)| Model::in_range(k, s, &e))
                .map(|(_, v)| v.clone())
                .collect();
            let count = all.len() as i64;
            let (kvs, more) = if *limit > 0 && all.len() > *limit as usize {
                (all[..*limit as usize].to_vec(), true)
            } else {
                (all, false)
            };
            Outcome::Read {
                rev: m.rev(),
                kvs,
                count,
                more,
            }
        }
    }
}

/// Keys or records one compaction step takes in these tests: small, so a compaction spans many
/// operations.
const COMPACT_STEP_LIMIT: usize = 2;

fn real_step(s: &mut MvccStore, op: &Op) -> Outcome {
    real_step_recorded(s, op, &mut Vec::new())
}

/// [`real_step`], also appending the encoded response (or the error's name) to `transcript`.
fn real_step_recorded(s: &mut MvccStore, op: &Op, transcript: &mut Vec<Vec<u8>>) -> Outcome {
    let cmd = |op| Command {
        op: Some(op),
        ..Default::default()
    };
    let put = |key: usize, value: Vec<u8>| PutRequest {
        key: KEYS[key].into(),
        value,
        ..Default::default()
    };
    let command = match op {
        Op::Put { key, value } => command::Op::Put(put(*key, vec![*value])),
        Op::Delete { start, end } => command::Op::DeleteRange(DeleteRangeRequest {
            key: KEYS[*start].into(),
            range_end: range_end(*end),
            prev_kv: false,
        }),
        Op::Txn {
            key,
            value,
            then_key,
            else_key,
            nested,
            doomed,
        } => {
            let then_op = RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    *then_key,
                    b"txn".to_vec(),
                ))),
            };
            let else_op = RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: KEYS[*else_key].into(),
                        ..Default::default()
                    },
                )),
            };
            let future = s.current_revision() + 100;
            let shape = |write: RequestOp| {
                let mut ops = vec![write];
                if *doomed {
                    ops.push(RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: b"a".to_vec(),
                            revision: future,
                            ..Default::default()
                        })),
                    });
                }
                if *nested {
                    ops = vec![RequestOp {
                        request: Some(request_op::Request::RequestTxn(TxnRequest {
                            compare: vec![],
                            success: ops,
                            failure: vec![],
                        })),
                    }];
                }
                ops
            };
            command::Op::Txn(TxnRequest {
                compare: vec![Compare {
                    key: KEYS[*key].into(),
                    target: CompareTarget::Value as i32,
                    result: CompareResult::Equal as i32,
                    target_union: Some(TargetUnion::Value(vec![*value])),
                    range_end: vec![],
                }],
                success: shape(then_op),
                failure: shape(else_op),
            })
        }
        Op::Compact { back } => command::Op::Compaction(CompactionRequest {
            revision: s.current_revision() - back,
            physical: true,
        }),
        Op::Range {
            start,
            end,
            back,
            limit,
        } => {
            let at = if *back < 0 {
                0
            } else {
                s.current_revision() - back
            };
            let req = RangeRequest {
                key: KEYS[*start].into(),
                range_end: range_end(*end),
                revision: at,
                limit: *limit,
                ..Default::default()
            };
            let result = apply::range(s, &req);
            transcript.push(match &result {
                Ok(r) => r.encode_to_vec(),
                Err(e) => err_name(e).as_bytes().to_vec(),
            });
            return match result {
                Ok(r) => Outcome::Read {
                    rev: r.header.unwrap().revision,
                    kvs: r.kvs,
                    count: r.count,
                    more: r.more,
                },
                Err(e) => Outcome::Err(err_name(&e)),
            };
        }
    };
    let result = apply::apply(
        s,
        &mut metastore::auth::AuthStore::default(),
        &mut Default::default(),
        cmd(command),
    );
    transcript.push(match &result {
        Ok((Applied::Put(r), _)) => r.encode_to_vec(),
        Ok((Applied::DeleteRange(r), _)) => r.encode_to_vec(),
        Ok((Applied::Txn(r), _)) => r.encode_to_vec(),
        Ok((Applied::Compaction(r), _)) => r.encode_to_vec(),
        Ok((other, _)) => format!("{other:?}").into_bytes(),
        Err(e) => err_name(e).as_bytes().to_vec(),
    });
    match result {
        Err(e) => Outcome::Err(err_name(&e)),
        Ok((applied, batch)) => {
            s.engine()
                .write(batch, Durability::Buffered)
                .expect("engine write");
            s.mark_flushed();
            match applied {
                Applied::Put(r) => Outcome::Write {
                    rev: r.header.unwrap().revision,
                    deleted: 0,
                    succeeded: true,
                },
                Applied::DeleteRange(r) => Outcome::Write {
                    rev: r.header.unwrap().revision,
                    deleted: r.deleted,
                    succeeded: true,
                },
                Applied::Txn(r) => Outcome::Write {
                    rev: r.header.unwrap().revision,
                    deleted: 0,
                    succeeded: r.succeeded,
                },
                Applied::Compaction(r) => Outcome::Write {
                    rev: r.header.unwrap().revision,
                    deleted: 0,
                    succeeded: true,
                },
                other => panic!("the model issues no lease commands: {other:?}"),
            }
        }
    }
}

fn check(engine: SharedEngine, ops: &[Op]) {
    let mut model = Model::new();
    let mut store = MvccStore::open(engine.clone()).expect("open");
    for (i, op) in ops.iter().enumerate() {
        let want = model_step(&mut model, op);
        let before = store.fingerprint();
        let got = real_step(&mut store, op);
        assert_eq!(got, want, "step {i}: {op:?}");
        if matches!(got, Outcome::Err(_)) {
            assert_eq!(
                store.fingerprint(),
                before,
                "step {i}: a refused {op:?} changed the in-memory state"
            );
        }
        assert_eq!(
            store.live_keys(),
            model.at(model.rev()).len(),
            "live key count after step {i}: {op:?}"
        );
        // The physical half of a compaction advances a little between operations, as the
        // background task takes it: the next operations run against a compaction half done.
        store
            .compact_step(COMPACT_STEP_LIMIT)
            .expect("compaction step");
    }
    // A restart rebuilds the same state from the engine (mid-compaction, often), and finishes
    // the compaction the restart interrupted.
    drop(store);
    let mut reopened = MvccStore::open(engine).expect("reopen");
    reopened.finish_compaction().expect("finish compaction");
    assert_eq!(reopened.current_revision(), model.rev());
    assert_eq!(
        reopened.live_keys(),
        model.at(model.rev()).len(),
        "live key count after reopen"
    );
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        ..Default::default()
    };
    let latest: Vec<KeyValue> = model.at(model.rev()).values().cloned().collect();
    assert_eq!(
        apply::range(&reopened, &req).expect("range").kvs,
        latest,
        "after reopen"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memory_engine_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        check(Arc::new(MemoryEngine::new()), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rocksdb_engine_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        check(Arc::new(RocksEngine::open(dir.path()).expect("open")), &ops);
    }
}

/// Every record of the replicated keyspaces, for byte-for-byte comparison of two engines.
fn dump(engine: &SharedEngine) -> Vec<(Keyspace, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for ks in [Keyspace::Meta, Keyspace::Kv] {
        engine
            .scan(ks, &[], None, &mut |k, v| {
                out.push((ks, k.to_vec(), v.to_vec()));
                true
            })
            .expect("scan");
    }
    out
}

/// The same operations on the memory engine and on RocksDB: byte-identical responses, identical
/// records, and the same HashKV at every revision still readable.
fn engines_agree(ops: &[Op]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory: SharedEngine = Arc::new(MemoryEngine::new());
    let rocks: SharedEngine = Arc::new(RocksEngine::open(dir.path()).expect("open"));
    let mut on_memory = MvccStore::open(memory.clone()).expect("open");
    let mut on_rocks = MvccStore::open(rocks.clone()).expect("open");
    let (mut said_memory, mut said_rocks) = (Vec::new(), Vec::new());
    for op in ops {
        real_step_recorded(&mut on_memory, op, &mut said_memory);
        real_step_recorded(&mut on_rocks, op, &mut said_rocks);
        on_memory.compact_step(COMPACT_STEP_LIMIT).expect("step");
        on_rocks.compact_step(COMPACT_STEP_LIMIT).expect("step");
    }
    assert_eq!(said_memory, said_rocks, "responses differ");
    assert_eq!(dump(&memory), dump(&rocks), "stored records differ");
    let head = on_memory.current_revision();
    assert_eq!(head, on_rocks.current_revision());
    let hashes = |s: &MvccStore| -> Vec<u32> {
        ((s.compact_revision() + 1).max(1)..=head)
            .map(|rev| s.hash_kv(rev).expect("hash"))
            .collect()
    };
    let mid = hashes(&on_memory);
    assert_eq!(
        mid,
        hashes(&on_rocks),
        "HashKV at the revisions still readable"
    );
    // A member whose compaction is done agrees with one still at it.
    on_memory.finish_compaction().expect("finish");
    assert_eq!(
        hashes(&on_memory),
        mid,
        "HashKV before and after the compaction's end"
    );
    on_rocks.finish_compaction().expect("finish");
    assert_eq!(
        dump(&memory),
        dump(&rocks),
        "stored records differ once compacted"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_and_rocksdb_agree_byte_for_byte(ops in proptest::collection::vec(op(), 1..80)) {
        engines_agree(&ops);
    }
}
