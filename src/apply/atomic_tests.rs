//! Apply tests, second part: a command refused anywhere (a txn's later op, a range revision, a
//! nested branch, a put's lease) leaves no trace in any state and the next command works; and
//! etcd's answers at the edges (nested txn headers, sort ties, unknown compare targets and
//! results, downgrade changes).

use super::tests::{get, op_put, put, rr, run, store, txn};
use super::*;
use crate::cluster::version::VersionState;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn op_range_at(k: &str, revision: i64) -> RequestOp {
    op(request_op::Request::RequestRange(RangeRequest {
        revision,
        ..rr(k, "")
    }))
}

/// Apply `cmd` and require that it is refused with `want` and left every in-memory state exactly
/// as it was (the engine is untouched anyway: a refused command returns no batch).
fn refused(s: &mut MvccStore, cmd: command::Op, want: fn(&ApplyError) -> bool) {
    let before = s.fingerprint();
    let mut auth = AuthStore::default();
    let outcome = apply(
        s,
        &mut auth,
        &mut VersionState::default(),
        Command {
            op: Some(cmd),
            ..Default::default()
        },
    );
    match outcome {
        Err(e) => assert!(want(&e), "refused with an unexpected error: {e:?}"),
        Ok((applied, _)) => panic!("expected a refusal, got {applied:?}"),
    }
    assert_eq!(s.fingerprint(), before, "a refused command changed state");
    assert_eq!(auth, AuthStore::default());
}

/// The request that stopped every member: a txn whose put ran before a later range of the same
/// branch failed left its put in the key index, and the next write reused its revision.
#[test]
fn a_txn_refused_after_a_put_leaves_no_trace_and_the_next_put_works() {
    let mut s = store();
    let crash = TxnRequest {
        compare: vec![],
        success: vec![op_put("k1", "v"), op_range_at("k2", 999_999)],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(crash), |e| {
        matches!(e, ApplyError::FutureRevision)
    });
    assert!(s.take_events().is_empty(), "no event for a refused put");
    let r = put(&mut s, "k1", "x");
    assert_eq!(r.header.unwrap().revision, 2);
    assert_eq!(get(&s, rr("k1", "")).kvs[0].version, 1);
}

/// Ops that fail only while running (after the up-front check passed) still leave nothing: apply
/// does not rely on the edge's validation, which forbids these shapes.
#[test]
fn failures_in_the_middle_of_a_txn_leave_no_trace() {
    let mut s = store();
    put(&mut s, "a", "1");
    let grant = crate::pb::etcdserverpb::LeaseGrantRequest { ttl: 60, id: 7 };
    assert!(run(&mut s, command::Op::LeaseGrant(grant)).is_ok());
    // A from-key delete (etcd's duplicate-key check lets it pass), then a put of a key it
    // deleted with ignore_value: the put finds no key any more. etcd 3.5.1 panics here.
    let del_then_ignore = TxnRequest {
        compare: vec![],
        success: vec![
            op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    ..Default::default()
                },
            )),
            op(request_op::Request::RequestPut(PutRequest {
                key: b"a".to_vec(),
                ignore_value: true,
                ..Default::default()
            })),
        ],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(del_then_ignore), |e| {
        matches!(e, ApplyError::KeyNotFound)
    });
    // A put with a lease, then a nested txn whose range reads a future revision.
    let nested_failure = TxnRequest {
        compare: vec![],
        success: vec![
            op(request_op::Request::RequestPut(PutRequest {
                key: b"leased".to_vec(),
                lease: 7,
                ..Default::default()
            })),
            op(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![op_put("b", "1"), op_range_at("a", 50)],
                failure: vec![],
            })),
        ],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(nested_failure), |e| {
        matches!(e, ApplyError::FutureRevision)
    });
    assert_eq!(get(&s, rr("a", "")).kvs[0].value, b"1");
}

#[test]
fn txns_check_range_revisions_up_front() {
    let mut s = store();
    for v in ["1", "2", "3"] {
        put(&mut s, "a", v);
    }
    assert!(run(
        &mut s,
        command::Op::Compaction(CompactionRequest {
            revision: 3,
            physical: false
        })
    )
    .is_ok());
    // With a write, a negative revision is below the compaction: refused, as etcd's checkTxn does.
    let write = TxnRequest {
        compare: vec![],
        success: vec![op_put("b", "x"), op_range_at("a", -1)],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(write), |e| {
        matches!(e, ApplyError::Compacted)
    });
    // Read-only too (etcd 3.5 checks every txn's ranges).
    let read = TxnRequest {
        compare: vec![],
        success: vec![op_range_at("a", -1)],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(read), |e| {
        matches!(e, ApplyError::Compacted)
    });
    // A plain range reads the head at a negative revision.
    assert_eq!(
        get(
            &s,
            RangeRequest {
                revision: -1,
                ..rr("a", "")
            }
        )
        .kvs[0]
            .value,
        b"3"
    );
    // The put's own revision is not readable up front either (etcd: future revision).
    let own = TxnRequest {
        compare: vec![],
        success: vec![op_put("b", "x"), op_range_at("b", 5)],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(own), |e| {
        matches!(e, ApplyError::FutureRevision)
    });
}

#[test]
fn nested_txn_responses_carry_an_empty_header() {
    let mut s = store();
    let nested = TxnRequest {
        compare: vec![],
        success: vec![op_put("x", "1")],
        failure: vec![],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![op(request_op::Request::RequestTxn(nested))],
        failure: vec![],
    };
    let r = txn(&mut s, outer).unwrap();
    assert_eq!(r.header.unwrap().revision, 2);
    let Some(response_op::Response::ResponseTxn(inner)) = &r.responses[0].response else {
        panic!("{r:?}")
    };
    assert_eq!(inner.header, Some(ResponseHeader::default()));
    let Some(response_op::Response::ResponsePut(p)) = &inner.responses[0].response else {
        panic!("{inner:?}")
    };
    assert_eq!(
        p.header.unwrap().revision,
        2,
        "an op's own header keeps its revision"
    );
}

#[test]
fn descending_sort_keeps_ties_in_ascending_key_order() {
    let mut s = store();
    for k in ["a", "b", "c"] {
        put(&mut s, k, "same");
    }
    put(&mut s, "d", "zzz");
    let r = get(
        &s,
        RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Value as i32,
            ..rr("a", "z")
        },
    );
    let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"d"[..], b"a", b"b", b"c"]);
}

#[test]
fn unknown_compare_target_is_equal_and_unknown_result_holds() {
    let mut s = store();
    put(&mut s, "a", "1");
    let with = |target: i32, result: i32| TxnRequest {
        compare: vec![Compare {
            key: b"a".to_vec(),
            target,
            result,
            target_union: None,
            range_end: vec![],
        }],
        success: vec![],
        failure: vec![],
    };
    assert!(
        txn(&mut s, with(9, CompareResult::Equal as i32))
            .unwrap()
            .succeeded
    );
    assert!(
        !txn(&mut s, with(9, CompareResult::Less as i32))
            .unwrap()
            .succeeded
    );
    assert!(
        txn(&mut s, with(CompareTarget::Version as i32, 9))
            .unwrap()
            .succeeded
    );
}

#[test]
fn txn_checks_every_put_before_any_range_and_a_key_before_a_lease() {
    let mut s = store();
    // A range at a future revision comes first, but the put's unknown lease is what etcd reports.
    let puts_first = TxnRequest {
        compare: vec![],
        success: vec![
            op_range_at("a", 35),
            op(request_op::Request::RequestPut(PutRequest {
                key: b"b".to_vec(),
                lease: 3,
                ..Default::default()
            })),
        ],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(puts_first), |e| {
        matches!(e, ApplyError::LeaseNotFound)
    });
    let key_first = TxnRequest {
        compare: vec![],
        success: vec![op(request_op::Request::RequestPut(PutRequest {
            key: b"b".to_vec(),
            ignore_value: true,
            lease: 4660,
            ..Default::default()
        }))],
        failure: vec![],
    };
    refused(&mut s, command::Op::Txn(key_first), |e| {
        matches!(e, ApplyError::KeyNotFound)
    });
    // Before any compaction the compaction revision is -1: -2 is below it.
    refused(
        &mut s,
        command::Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op_range_at("a", -2)],
            failure: vec![],
        }),
        |e| matches!(e, ApplyError::Compacted),
    );
    assert!(txn(
        &mut s,
        TxnRequest {
            compare: vec![],
            success: vec![op_range_at("a", -1)],
            failure: vec![],
        }
    )
    .is_ok());
}

/// A downgrade change through apply: checked against the state it meets (a second enable, or a
/// cancel with nothing enabled, is refused and changes nothing), recorded in the batch, and the
/// store's revision untouched.
#[test]
fn downgrade_changes_apply_whole_or_not_at_all() {
    use crate::cluster::version::{DowngradeError, Version};
    use crate::pb::etcdserverpb::DowngradeInfo;
    let mut s = store();
    let mut auth = AuthStore::default();
    let mut versions = VersionState::default();
    let serving = Version::serving();
    let target = serving.downgrade_target().expect("a minor above 0");
    let mut run = |versions: &mut VersionState, enabled: bool, target: Option<Version>| {
        let change = DowngradeInfo {
            enabled,
            target_version: target.map(|v| v.to_string()).unwrap_or_default(),
        };
        let cmd = Command {
            op: Some(command::Op::Downgrade(change)),
            ..Default::default()
        };
        apply(&mut s, &mut auth, versions, cmd)
    };
    let refusal = |r: Result<(Applied, WriteBatch), ApplyError>| match r {
        Err(ApplyError::Downgrade(e)) => e,
        other => panic!("expected a refused downgrade, got {other:?}"),
    };

    assert_eq!(
        refusal(run(&mut versions, false, None)),
        DowngradeError::NoInflight
    );
    assert_eq!(
        refusal(run(&mut versions, true, Some(serving))),
        DowngradeError::InvalidTarget
    );
    assert_eq!(versions, VersionState::default());

    let (applied, batch) = run(&mut versions, true, Some(target)).expect("enable");
    assert_eq!(
        applied,
        Applied::Downgrade {
            revision: 1,
            before: serving
        }
    );
    assert!(!batch.is_empty(), "the setting is written with the entry");
    assert_eq!(versions.cluster_version(), target);

    let enabled = versions;
    assert_eq!(
        refusal(run(&mut versions, true, target.downgrade_target())),
        DowngradeError::InProcess
    );
    assert_eq!(versions, enabled, "a refused enable changes nothing");

    let (applied, _) = run(&mut versions, false, None).expect("cancel");
    assert_eq!(
        applied,
        Applied::Downgrade {
            revision: 1,
            before: target
        }
    );
    assert_eq!(versions, VersionState::default());
}
