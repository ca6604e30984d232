//! Apply-level tests: etcd's semantics for put, delete, txn and range options.

use std::sync::Arc;

use super::*;
use crate::cluster::version::VersionState;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use crate::storage::{Durability, MemoryEngine};

pub(super) fn store() -> MvccStore {
    MvccStore::open(Arc::new(MemoryEngine::new())).expect("open")
}

/// Apply `op` to `s` and write its batch, as the state machine does (shared with `range_tests`).
pub(super) fn run(s: &mut MvccStore, op: command::Op) -> Result<Applied, ApplyError> {
    let (applied, batch) = apply(
        s,
        &mut AuthStore::default(),
        &mut VersionState::default(),
        Command {
            op: Some(op),
            ..Default::default()
        },
    )?;
    s.engine().write(batch, Durability::Sync).expect("write");
    s.mark_flushed();
    Ok(applied)
}

pub(super) fn put(s: &mut MvccStore, k: &str, v: &str) -> PutResponse {
    let req = PutRequest {
        key: k.into(),
        value: v.into(),
        prev_kv: true,
        ..Default::default()
    };
    match run(s, command::Op::Put(req)).expect("put") {
        Applied::Put(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

pub(super) fn get(s: &MvccStore, req: RangeRequest) -> RangeResponse {
    range(s, &req).expect("range")
}

pub(super) fn rr(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

pub(super) fn cmp(
    k: &str,
    target: CompareTarget,
    result: CompareResult,
    u: TargetUnion,
) -> Compare {
    Compare {
        key: k.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        range_end: vec![],
    }
}

pub(super) fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

pub(super) fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(rr(k, ""))),
    }
}

pub(super) fn txn(s: &mut MvccStore, req: TxnRequest) -> Result<TxnResponse, ApplyError> {
    match run(s, command::Op::Txn(req))? {
        Applied::Txn(t) => Ok(t),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn put_returns_prev_kv_and_bumps_revision() {
    let mut s = store();
    let r = put(&mut s, "k", "v1");
    assert_eq!(r.header.unwrap().revision, 2);
    assert!(r.prev_kv.is_none());
    let r = put(&mut s, "k", "v2");
    assert_eq!(r.header.unwrap().revision, 3);
    let prev = r.prev_kv.unwrap();
    assert_eq!(
        (prev.value.as_slice(), prev.version, prev.mod_revision),
        (&b"v1"[..], 1, 2)
    );
}

#[test]
fn ignore_value_and_lease_need_an_existing_key() {
    let mut s = store();
    let req = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    assert!(matches!(
        run(&mut s, command::Op::Put(req.clone())),
        Err(ApplyError::KeyNotFound)
    ));
    assert_eq!(s.current_revision(), 1, "a rejected put changes nothing");
    put(&mut s, "k", "keep");
    run(&mut s, command::Op::Put(req)).unwrap();
    let kv = &get(&s, rr("k", "")).kvs[0];
    assert_eq!((kv.value.as_slice(), kv.version), (&b"keep"[..], 2));
    let leased = PutRequest {
        key: b"k".to_vec(),
        lease: 7,
        ..Default::default()
    };
    assert!(matches!(
        run(&mut s, command::Op::Put(leased)),
        Err(ApplyError::LeaseNotFound)
    ));
}

#[test]
fn delete_of_nothing_keeps_the_revision() {
    let mut s = store();
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    let d = DeleteRangeRequest {
        key: b"x".to_vec(),
        range_end: b"z".to_vec(),
        prev_kv: true,
    };
    match run(&mut s, command::Op::DeleteRange(d)).unwrap() {
        Applied::DeleteRange(r) => assert_eq!((r.deleted, r.header.unwrap().revision), (0, 3)),
        other => panic!("{other:?}"),
    }
    let d = DeleteRangeRequest {
        key: b"a".to_vec(),
        range_end: b"\0".to_vec(),
        prev_kv: true,
    };
    match run(&mut s, command::Op::DeleteRange(d)).unwrap() {
        Applied::DeleteRange(r) => {
            assert_eq!(
                (r.deleted, r.header.unwrap().revision, r.prev_kvs.len()),
                (2, 4, 2)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn range_options_combine_like_etcd() {
    let mut s = store();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("d", "0")] {
        put(&mut s, k, v);
    }
    put(&mut s, "b", "9"); // b: version 2, mod 6
                           // limit + more + count
    let r = get(
        &s,
        RangeRequest {
            limit: 2,
            ..rr("a", "\0")
        },
    );
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 4));
    let r = get(
        &s,
        RangeRequest {
            limit: 4,
            ..rr("a", "\0")
        },
    );
    assert!(!r.more);
    // sort by value descending, limited
    let r = get(
        &s,
        RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Value as i32,
            limit: 2,
            ..rr("a", "\0")
        },
    );
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"b".to_vec(), b"a".to_vec()]);
    assert!(r.more);
    // a target without order sorts ascending
    let r = get(
        &s,
        RangeRequest {
            sort_target: SortTarget::Version as i32,
            ..rr("a", "\0")
        },
    );
    assert_eq!(r.kvs.last().unwrap().key, b"b");
    // filters
    let r = get(
        &s,
        RangeRequest {
            min_mod_revision: 4,
            max_mod_revision: 5,
            ..rr("a", "\0")
        },
    );
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"c".to_vec(), b"d".to_vec()]);
    assert_eq!(r.count, 4, "count is taken before filtering, as in etcd");
    let r = get(
        &s,
        RangeRequest {
            min_create_revision: 3,
            max_create_revision: 3,
            ..rr("a", "\0")
        },
    );
    assert_eq!(r.kvs.len(), 1);
    // keys only / count only
    let r = get(
        &s,
        RangeRequest {
            keys_only: true,
            ..rr("a", "c")
        },
    );
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()) && r.kvs.len() == 2);
    let r = get(
        &s,
        RangeRequest {
            count_only: true,
            ..rr("a", "\0")
        },
    );
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    // past revision
    let r = get(
        &s,
        RangeRequest {
            revision: 3,
            ..rr("b", "")
        },
    );
    assert_eq!(r.kvs[0].value, b"1");
    assert_eq!(r.header.unwrap().revision, 6);
}

#[test]
fn txn_compares_branches_and_sees_its_own_writes() {
    let mut s = store();
    put(&mut s, "k", "v");
    let req = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"v".to_vec()),
        )],
        success: vec![op_put("k", "w"), op_get("k")],
        failure: vec![op_get("k")],
    };
    let r = txn(&mut s, req.clone()).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3);
    let Some(response_op::Response::ResponseRange(got)) = &r.responses[1].response else {
        panic!()
    };
    assert_eq!(
        got.kvs[0].value, b"w",
        "a range inside the txn sees the earlier put"
    );
    let r = txn(&mut s, req).unwrap();
    assert!(!r.succeeded);
    assert_eq!(
        r.header.unwrap().revision,
        3,
        "a read-only branch does not bump the revision"
    );

    // Compare over a range, and every target/result.
    put(&mut s, "p/1", "a");
    put(&mut s, "p/2", "b");
    let over = |result, v| Compare {
        range_end: b"p0".to_vec(),
        ..cmp(
            "p/",
            CompareTarget::Version,
            result,
            TargetUnion::Version(v),
        )
    };
    assert!(
        txn(
            &mut s,
            TxnRequest {
                compare: vec![over(CompareResult::Equal, 1)],
                ..Default::default()
            }
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            TxnRequest {
                compare: vec![over(CompareResult::Greater, 1)],
                ..Default::default()
            }
        )
        .unwrap()
        .succeeded
    );
    let absent = cmp(
        "none",
        CompareTarget::Create,
        CompareResult::Equal,
        TargetUnion::CreateRevision(0),
    );
    assert!(
        txn(
            &mut s,
            TxnRequest {
                compare: vec![absent],
                ..Default::default()
            }
        )
        .unwrap()
        .succeeded
    );
    let absent_value = cmp(
        "none",
        CompareTarget::Value,
        CompareResult::NotEqual,
        TargetUnion::Value(b"x".to_vec()),
    );
    assert!(
        !txn(
            &mut s,
            TxnRequest {
                compare: vec![absent_value],
                ..Default::default()
            }
        )
        .unwrap()
        .succeeded
    );
    let lease = cmp(
        "k",
        CompareTarget::Lease,
        CompareResult::Equal,
        TargetUnion::Lease(0),
    );
    assert!(
        txn(
            &mut s,
            TxnRequest {
                compare: vec![lease],
                ..Default::default()
            }
        )
        .unwrap()
        .succeeded
    );
    let modr = cmp(
        "k",
        CompareTarget::Mod,
        CompareResult::Less,
        TargetUnion::ModRevision(4),
    );
    assert!(
        txn(
            &mut s,
            TxnRequest {
                compare: vec![modr],
                ..Default::default()
            }
        )
        .unwrap()
        .succeeded
    );
}

#[test]
fn nested_txn_decides_before_writing_and_rejects_atomically() {
    let mut s = store();
    put(&mut s, "a", "1");
    let inner = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"1".to_vec()),
        )],
        success: vec![op_put("b", "inner-then")],
        failure: vec![op_put("b", "inner-else")],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("a", "2"),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(inner)),
            },
        ],
        failure: vec![],
    };
    let r = txn(&mut s, outer).unwrap();
    let Some(response_op::Response::ResponseTxn(nested)) = &r.responses[1].response else {
        panic!()
    };
    assert!(
        nested.succeeded,
        "the nested compare saw a=1, the state before the outer txn"
    );
    assert_eq!(get(&s, rr("b", "")).kvs[0].value, b"inner-then");

    // A put with ignore_value on a missing key anywhere in the chosen branch rejects everything.
    let before = s.current_revision();
    let bad = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("c", "x"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"missing".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert!(matches!(txn(&mut s, bad), Err(ApplyError::KeyNotFound)));
    assert_eq!(s.current_revision(), before);
    assert!(get(&s, rr("c", "")).kvs.is_empty());
}

#[test]
fn compaction_errors_and_effect() {
    let mut s = store();
    put(&mut s, "k", "1");
    put(&mut s, "k", "2");
    let compact = |rev| {
        command::Op::Compaction(CompactionRequest {
            revision: rev,
            physical: true,
        })
    };
    assert!(matches!(
        run(&mut s, compact(10)),
        Err(ApplyError::FutureRevision)
    ));
    run(&mut s, compact(3)).unwrap();
    assert!(matches!(
        run(&mut s, compact(3)),
        Err(ApplyError::Compacted)
    ));
    assert!(matches!(
        range(
            &s,
            &RangeRequest {
                revision: 2,
                ..rr("k", "")
            }
        ),
        Err(ApplyError::Compacted)
    ));
    assert_eq!(
        get(
            &s,
            RangeRequest {
                revision: 3,
                ..rr("k", "")
            }
        )
        .kvs[0]
            .value,
        b"2"
    );
}

#[test]
fn a_write_checked_against_an_older_auth_revision_is_refused() {
    use crate::pb::etcdserverpb::AuthUserGrantRoleRequest;
    use crate::pb::etcdserverpb::{AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest};
    use crate::pb::metastore::{auth_command, AuthCommand, Requester};

    let mut s = store();
    let mut auth = AuthStore::default();
    let step = |s: &mut MvccStore, auth: &mut AuthStore, op, requester| {
        let cmd = Command {
            op: Some(op),
            requester,
            ..Default::default()
        };
        let (applied, batch) = apply(s, auth, &mut VersionState::default(), cmd)?;
        s.engine().write(batch, Durability::Sync).expect("write");
        s.mark_flushed();
        Ok::<_, ApplyError>(applied)
    };
    let change = |op| command::Op::Auth(AuthCommand { op: Some(op) });
    let put = || {
        command::Op::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    };
    for op in [
        auth_command::Op::UserAdd(AuthUserAddRequest {
            name: "root".into(),
            hashed_password: "h".into(),
            ..Default::default()
        }),
        auth_command::Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }),
        auth_command::Op::Enable(AuthEnableRequest {}),
    ] {
        step(&mut s, &mut auth, change(op), None).expect("auth change");
    }
    let checked_at = auth.revision();
    let root = |rev| {
        Some(Requester {
            username: "root".into(),
            auth_revision: rev,
        })
    };
    step(&mut s, &mut auth, put(), root(checked_at)).expect("current revision");
    // Auth changes between the check at the edge and the apply.
    let role = auth_command::Op::RoleAdd(AuthRoleAddRequest { name: "r".into() });
    step(&mut s, &mut auth, change(role), None).expect("role add");
    let rev_before = s.current_revision();
    let stale = step(&mut s, &mut auth, put(), root(checked_at));
    assert!(
        matches!(stale, Err(ApplyError::Auth(AuthError::AuthOldRevision))),
        "{stale:?}"
    );
    assert_eq!(
        s.current_revision(),
        rev_before,
        "the refused put wrote nothing"
    );
    // A request that carried no user (auth was off when it was checked) is refused once auth is on.
    let anonymous = Some(Requester {
        username: String::new(),
        auth_revision: auth.revision(),
    });
    let refused = step(&mut s, &mut auth, put(), anonymous);
    assert!(
        matches!(refused, Err(ApplyError::Auth(AuthError::UserEmpty))),
        "{refused:?}"
    );
    // The member's own commands (lease expiry, checkpoints) carry no requester and pass.
    step(&mut s, &mut auth, put(), None).expect("internal command");
}
