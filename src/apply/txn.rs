//! Put, DeleteRange and Txn execution inside one MVCC write transaction.
//!
//! A transaction is refused whole or applied whole: its branches are decided and every chosen put
//! and range is checked before the first write, as etcd 3.5's apply does, and the
//! MVCC write transaction stages every change until the caller finishes it, so an operation that
//! still fails half-way leaves no trace.
//!
//! The same steps serve a read-only transaction (only ranges, nested ones too) outside apply, on
//! a view pinned at one revision ([`TxnView`]), as etcd serves such transactions without raft.

use super::{execute_range, header, ApplyError, ReadView};
use crate::mvcc::{RangeEnd, WriteTxn};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::KeyValue;

/// Checks a lone put against the store before anything is written: the lease first, then the key
/// (etcd's order for a put outside a transaction; inside one see `check_txn_put`).
pub(super) fn check_put(txn: &WriteTxn<'_>, req: &PutRequest) -> Result<(), ApplyError> {
    if req.lease != 0 && !txn.lease_exists(req.lease) {
        return Err(ApplyError::LeaseNotFound);
    }
    if (req.ignore_value || req.ignore_lease) && txn.key_at(&req.key).is_none() {
        return Err(ApplyError::KeyNotFound);
    }
    Ok(())
}

/// Execute a checked put. Inside a transaction the put cannot count on its check: an earlier
/// operation of the same transaction may have deleted the key (a from-key delete passes etcd's
/// duplicate-key rule, and apply does not rely on validation anyway), so a missing key is refused
/// here too; the unfinished transaction is then dropped whole.
pub(super) fn put(txn: &mut WriteTxn<'_>, req: PutRequest) -> Result<PutResponse, ApplyError> {
    let prev = if req.prev_kv || req.ignore_value || req.ignore_lease {
        txn.get(&req.key)?
    } else {
        None
    };
    if (req.ignore_value || req.ignore_lease) && prev.is_none() {
        return Err(ApplyError::KeyNotFound);
    }
    let value = match (&prev, req.ignore_value) {
        (Some(p), true) => p.value.clone(),
        _ => req.value,
    };
    let lease = match (&prev, req.ignore_lease) {
        (Some(p), true) => p.lease,
        _ => req.lease,
    };
    let kv = txn.put(&req.key, value, lease)?;
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

/// What a transaction runs on: a write transaction in apply, or a view pinned at one revision
/// for a read-only transaction (whose writes are never called: [`is_read_only`]).
pub(super) trait TxnView: ReadView {
    /// The revision before the transaction: ranges at a later one are refused.
    fn begin_rev(&self) -> i64;
    /// The compaction revision: ranges below it are refused.
    fn compact_rev(&self) -> i64;
    /// See `check_txn_put`.
    fn check_put(&self, req: &PutRequest) -> Result<(), ApplyError>;
    fn put(&mut self, req: PutRequest) -> Result<PutResponse, ApplyError>;
    fn delete_range(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, ApplyError>;
}

impl TxnView for WriteTxn<'_> {
    fn begin_rev(&self) -> i64 {
        WriteTxn::begin_rev(self)
    }

    fn compact_rev(&self) -> i64 {
        WriteTxn::compact_rev(self)
    }

    fn check_put(&self, req: &PutRequest) -> Result<(), ApplyError> {
        check_txn_put(self, req)
    }

    fn put(&mut self, req: PutRequest) -> Result<PutResponse, ApplyError> {
        put(self, req)
    }

    fn delete_range(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, ApplyError> {
        delete_range(self, req)
    }
}

/// Whether `req` only reads, in both branches and every nested transaction (etcd's
/// `isTxnReadonly`, which also sends a nested transaction that only reads through raft: the answer
/// is the same, and here such a transaction cannot hold up writes either).
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => is_read_only(inner),
            _ => false,
        })
}

/// Whether either branch of `req` puts directly: what etcd's quota charges a transaction for (its
/// cost is the larger branch's top-level puts; nested transactions cost nothing).
pub fn has_top_level_put(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))))
}

/// Whether every operation of `req` is a serializable range (etcd's `isTxnSerializable`; a
/// nested transaction is not, so one that only reads is still served linearizably, as etcd
/// serves it through raft): then a read-only transaction needs no read barrier.
pub fn is_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            _ => false,
        })
}

/// Which branch every (nested) transaction takes, decided before any write, as etcd does.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

fn decide<T: TxnView>(txn: &T, req: &TxnRequest) -> Result<Path, ApplyError> {
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

/// A range's revision against the state before the transaction (etcd's `checkRequestRange`): a
/// future revision, or one below the compaction (a negative one too: before any compaction the
/// compaction revision is -1, so -2 and below are refused).
fn check_range<T: TxnView>(txn: &T, req: &RangeRequest) -> Result<(), ApplyError> {
    if req.revision == 0 {
        return Ok(());
    }
    if req.revision > txn.begin_rev() {
        return Err(ApplyError::FutureRevision);
    }
    if req.revision < txn.compact_rev() {
        return Err(ApplyError::Compacted);
    }
    Ok(())
}

/// A put inside a transaction against the state before it (etcd's `checkRequestPut`): unlike a
/// lone put, the key's existence (for ignore_value / ignore_lease) is checked before the lease.
fn check_txn_put(txn: &WriteTxn<'_>, req: &PutRequest) -> Result<(), ApplyError> {
    if (req.ignore_value || req.ignore_lease) && txn.key_at(&req.key).is_none() {
        return Err(ApplyError::KeyNotFound);
    }
    if req.lease != 0 && !txn.lease_exists(req.lease) {
        return Err(ApplyError::LeaseNotFound);
    }
    Ok(())
}

/// Visit every operation of every chosen branch, nested ones in place, in order.
fn for_each_chosen(
    req: &TxnRequest,
    path: &Path,
    f: &mut dyn FnMut(&RequestOp) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let mut nested = path.nested.iter();
    for op in branch(req, path) {
        match &op.request {
            Some(request_op::Request::RequestTxn(inner)) => {
                let p = nested.next().ok_or(ApplyError::EmptyCommand)?;
                for_each_chosen(inner, p, f)?;
            }
            _ => f(op)?,
        }
    }
    Ok(())
}

/// Check the chosen operations before anything is written, as etcd 3.5's apply does for every
/// transaction: first every put (in order, nested ones in place), then every range; the first
/// that cannot succeed refuses the transaction.
fn check<T: TxnView>(txn: &T, req: &TxnRequest, path: &Path) -> Result<(), ApplyError> {
    for_each_chosen(req, path, &mut |op| match &op.request {
        Some(request_op::Request::RequestPut(p)) => txn.check_put(p),
        _ => Ok(()),
    })?;
    // The mutation build checks only puts up front, as the old apply did.
    if cfg!(feature = "sim-bug-partial-txn") {
        return Ok(());
    }
    for_each_chosen(req, path, &mut |op| match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(txn, r),
        _ => Ok(()),
    })
}

fn run<T: TxnView>(txn: &mut T, req: &TxnRequest, path: &Path) -> Result<TxnResponse, ApplyError> {
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(branch(req, path).len());
    for op in branch(req, path) {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => Some(
                response_op::Response::ResponseRange(execute_range(&*txn, r)?),
            ),
            Some(request_op::Request::RequestPut(p)) => {
                Some(response_op::Response::ResponsePut(txn.put(p.clone())?))
            }
            Some(request_op::Request::RequestDeleteRange(d)) => Some(
                response_op::Response::ResponseDeleteRange(txn.delete_range(d.clone())?),
            ),
            Some(request_op::Request::RequestTxn(inner)) => {
                let p = nested.next().ok_or(ApplyError::EmptyCommand)?;
                Some(response_op::Response::ResponseTxn(run(txn, inner, p)?))
            }
            // Refused at the edge; kept in place here so responses stay aligned with requests.
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    // A nested transaction's response carries an empty header, as etcd's do; the caller sets the
    // outermost one.
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded: path.succeeded,
        responses,
    })
}

/// Execute a validated transaction: decide every branch on the state before the transaction, check
/// the chosen operations, then run them. Any failure drops the
/// caller's write transaction unfinished, so nothing of it remains.
pub(super) fn execute_txn<T: TxnView>(
    txn: &mut T,
    req: &TxnRequest,
) -> Result<TxnResponse, ApplyError> {
    let path = decide(txn, req)?;
    check(txn, req, &path)?;
    run(txn, req, &path)
}

/// Evaluate one comparison. Over a range, every key must satisfy it; a range with no keys compares
/// as one absent key (all zero), except that a value comparison with no key always fails.
fn compare<T: TxnView>(txn: &T, c: &Compare) -> Result<bool, ApplyError> {
    let end = RangeEnd::from_etcd(&c.range_end);
    // An unknown target compares as equal, as in etcd.
    let target = CompareTarget::try_from(c.target).ok();
    // Only a value compare needs the values: the others read the key index (a compare over a
    // large range would otherwise read every value in it inside apply). The keys are visited one
    // at a time and the first that fails decides: a compare over the whole keyspace holds one
    // record, not a copy of every key.
    let keys_only = target != Some(CompareTarget::Value);
    let all = txn.all_hold(&c.key, &end, keys_only, &mut |kv| compare_kv(c, target, kv))?;
    Ok(match all {
        Some(all) => all,
        None if target == Some(CompareTarget::Value) => false,
        None => compare_kv(c, target, &KeyValue::default()),
    })
}

fn compare_kv(c: &Compare, target: Option<CompareTarget>, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let Some(target) = target else {
        // etcd compares an unknown target as equal.
        return compare_result(c, Ordering::Equal);
    };
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
    compare_result(c, ordering)
}

/// Whether `ordering` (the key's field against the compare's) satisfies the compare's result. An
/// unknown result holds, as in etcd.
fn compare_result(c: &Compare, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering;
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}
