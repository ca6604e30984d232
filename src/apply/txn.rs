//! Put, DeleteRange and Txn execution inside one MVCC write transaction.

use super::{execute_range, header, ApplyError};
use crate::mvcc::{RangeEnd, WriteTxn};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RequestOp, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::KeyValue;

/// Checks a put against the store before anything is written.
pub(super) fn check_put(txn: &WriteTxn<'_>, req: &PutRequest) -> Result<(), ApplyError> {
    if req.lease != 0 && !txn.lease_exists(req.lease) {
        return Err(ApplyError::LeaseNotFound);
    }
    if (req.ignore_value || req.ignore_lease) && txn.key_at(&req.key).is_none() {
        return Err(ApplyError::KeyNotFound);
    }
    Ok(())
}

/// Execute a checked put.
pub(super) fn put(txn: &mut WriteTxn<'_>, req: PutRequest) -> Result<PutResponse, ApplyError> {
    let prev = if req.prev_kv || req.ignore_value || req.ignore_lease {
        txn.get(&req.key)?
    } else {
        None
    };
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value,
    };
    let lease = match (&prev, req.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => req.lease,
    };
    let kv = txn.put(&req.key, value, lease);
    Ok(PutResponse {
        header: header(kv.mod_revision),
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

/// Execute a delete.
pub(super) fn delete_range(
    txn: &mut WriteTxn<'_>,
    req: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ApplyError> {
    let deleted = txn.delete_range(&req.key, &RangeEnd::from_etcd(&req.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(txn.read_rev()),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    })
}

/// Which branch every (nested) transaction takes, decided before any write, as etcd does.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

fn decide(txn: &WriteTxn<'_>, req: &TxnRequest) -> Result<Path, ApplyError> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare(txn, c)? {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut nested = Vec::new();
    for op in branch {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            nested.push(decide(txn, inner)?);
        }
    }
    Ok(Path { succeeded, nested })
}

fn branch<'r>(req: &'r TxnRequest, path: &Path) -> &'r [RequestOp] {
    if path.succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn check(txn: &WriteTxn<'_>, req: &TxnRequest, path: &Path) -> Result<(), ApplyError> {
    let mut nested = path.nested.iter();
    for op in branch(req, path) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => check_put(txn, p)?,
            Some(request_op::Request::RequestTxn(inner)) => {
                let Some(p) = nested.next() else {
                    unreachable!("decide() made one path per nested txn")
                };
                check(txn, inner, p)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn run(txn: &mut WriteTxn<'_>, req: &TxnRequest, path: &Path) -> Result<TxnResponse, ApplyError> {
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(branch(req, path).len());
    for op in branch(req, path) {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(execute_range(&*txn, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put(txn, p.clone())?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(txn, d.clone())?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                let Some(p) = nested.next() else {
                    unreachable!("decide() made one path per nested txn")
                };
                response_op::Response::ResponseTxn(run(txn, inner, p)?)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: header(txn.read_rev()),
        succeeded: path.succeeded,
        responses,
    })
}

/// Execute a validated transaction: decide every branch on the state before the transaction, check
/// the chosen operations, then run them.
pub(super) fn execute_txn(
    txn: &mut WriteTxn<'_>,
    req: &TxnRequest,
) -> Result<TxnResponse, ApplyError> {
    let path = decide(txn, req)?;
    check(txn, req, &path)?;
    run(txn, req, &path)
}

/// Evaluate one comparison. Over a range, every key must satisfy it; a range with no keys compares
/// as one absent key (all zero), except that a value comparison with no key always fails.
fn compare(txn: &WriteTxn<'_>, c: &Compare) -> Result<bool, ApplyError> {
    let end = RangeEnd::from_etcd(&c.range_end);
    let kvs = txn.range(&c.key, &end, 0, 0, false)?.kvs;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    if kvs.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ordering = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        _ => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => *v,
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => *v,
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => *v,
                (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let have = match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Lease => kv.lease,
                CompareTarget::Value => unreachable!("handled above"),
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}
