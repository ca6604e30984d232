//! Every client request is checked here once, before it reaches raft, with etcd's rules: a request
//! that fails a check never becomes a log entry and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::version::{parse_downgrade_target, Version};
use crate::limits::{LEASE_MAX_TTL_SECS, MAX_TXN_NESTING_DEPTH};
use crate::pb::etcdserverpb::downgrade_request::DowngradeAction;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    request_op, DeleteRangeRequest, DowngradeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};

/// A request that breaks one of etcd's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("empty request operation")]
    EmptyRequestOp,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("RangeStream does not support custom sort orders")]
    StreamSortUnsupported,
    #[error("RangeStream does not support revision filters")]
    StreamRevisionFiltersUnsupported,
    #[error("unknown method")]
    UnknownMethod,
    #[error("wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
}

type Result = std::result::Result<(), ValidationError>;

/// Check a range request.
pub fn range(r: &RangeRequest) -> Result {
    if r.key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    // etcd 3.5 accepts any sort order (an unknown one leaves the keys in key order) but has no
    // sorter for an unknown target (its apply crashes on one): refused here, as etcd 3.6 does.
    if SortTarget::try_from(r.sort_target).is_err() {
        return Err(ValidationError::InvalidSortOption);
    }
    Ok(())
}

/// Check a `RangeStream` request, as etcd 3.7 does: a range's checks, an unknown sort order
/// refused too, then what a stream cannot serve (it sends keys in key order as it reads them):
/// any order but the key's ascending one, and revision filters. etcd 3.7 lets a target other than
/// the key with no order through and sorts each chunk apart, so the chunks add up to `Range`'s
/// answer only when it fits one; here that is refused as the sort it is.
pub fn range_stream(r: &RangeRequest) -> Result {
    range(r)?;
    let order =
        SortOrder::try_from(r.sort_order).map_err(|_| ValidationError::InvalidSortOption)?;
    let key_order = r.sort_target == SortTarget::Key as i32
        && matches!(order, SortOrder::None | SortOrder::Ascend);
    if !key_order {
        return Err(ValidationError::StreamSortUnsupported);
    }
    if r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
    {
        return Err(ValidationError::StreamRevisionFiltersUnsupported);
    }
    Ok(())
}

/// What a checked `Downgrade` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downgrade {
    /// Whether a downgrade to this cluster version could be enabled now.
    Validate(Version),
    /// Enable a downgrade to this cluster version.
    Enable(Version),
    /// Cancel the downgrade in progress.
    Cancel,
}

/// Check a `Downgrade` request as etcd 3.6 does before it looks at the cluster: an action it knows
/// ("unknown method"), and for validate and enable a target it can read (a semantic version or
/// major.minor; its patch, pre-release and metadata are dropped).
pub fn downgrade(r: &DowngradeRequest) -> std::result::Result<Downgrade, ValidationError> {
    let target =
        || parse_downgrade_target(&r.version).ok_or(ValidationError::WrongDowngradeVersionFormat);
    match DowngradeAction::try_from(r.action).map_err(|_| ValidationError::UnknownMethod)? {
        DowngradeAction::Validate => Ok(Downgrade::Validate(target()?)),
        DowngradeAction::Enable => Ok(Downgrade::Enable(target()?)),
        // A cancel's version is not read.
        DowngradeAction::Cancel => Ok(Downgrade::Cancel),
    }
}

/// Check a put request.
pub fn put(r: &PutRequest) -> Result {
    if r.key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ValidationError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ValidationError::LeaseProvided);
    }
    Ok(())
}

/// Check a lease grant.
pub fn lease_grant(r: &LeaseGrantRequest) -> Result {
    if r.ttl > LEASE_MAX_TTL_SECS {
        return Err(ValidationError::LeaseTtlTooLarge);
    }
    Ok(())
}

/// Check a delete request.
pub fn delete_range(r: &DeleteRangeRequest) -> Result {
    if r.key.is_empty() {
        return Err(ValidationError::EmptyKey);
    }
    Ok(())
}

/// etcd's first txn check alone: no branch and no compare list longer than `max_txn_ops` (at the
/// top level; [`txn`] checks nested transactions too). It reads three lengths.
pub fn txn_op_count(r: &TxnRequest, max_txn_ops: usize) -> Result {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(ValidationError::TooManyOps);
    }
    Ok(())
}

/// Check a transaction: operation counts and each operation (recursively), then that no branch
/// writes one key twice or both puts and deletes it.
pub fn txn(r: &TxnRequest, max_txn_ops: usize) -> Result {
    txn_ops(r, max_txn_ops, 0)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`, in its order: the operation count, then every compare's key, then
/// each operation of the success branch and of the failure branch (a nested transaction in full
/// before the next operation). A nested transaction may hold only as many operations per branch as
/// its parent left unused.
fn txn_ops(r: &TxnRequest, max_txn_ops: usize, depth: usize) -> Result {
    if depth >= MAX_TXN_NESTING_DEPTH {
        return Err(ValidationError::TooManyOps);
    }
    txn_op_count(r, max_txn_ops)?;
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ValidationError::EmptyKey);
    }
    let nested_max = max_txn_ops - opc;
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => range(x)?,
            Some(request_op::Request::RequestPut(x)) => put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => delete_range(x)?,
            Some(request_op::Request::RequestTxn(x)) => txn_ops(x, nested_max, depth + 1)?,
            None => return Err(ValidationError::EmptyRequestOp),
        }
    }
    Ok(())
}

/// The keys a branch deletes: single keys, and `[start, end)` ranges kept merged into disjoint
/// intervals, so asking whether a key is deleted costs O(log n) however many deletes there are
/// (etcd keeps an interval tree for the same question).
#[derive(Debug, Default)]
struct Deleted {
    keys: BTreeSet<Vec<u8>>,
    /// Disjoint, non-adjacent intervals: start → end.
    ranges: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Deleted {
    /// Add what a DeleteRange of `key`..`end` removes. etcd compares `end` as a plain string
    /// here, so a from-key delete (`end = "\0"`) is an empty interval that never conflicts with a
    /// put; we keep that for compatibility.
    fn insert(&mut self, key: &[u8], end: &[u8]) {
        if end.is_empty() {
            self.keys.insert(key.to_vec());
            return;
        }
        if end <= key {
            return;
        }
        let (mut start, mut stop) = (key.to_vec(), end.to_vec());
        // Merge with an interval starting at or before `start` that reaches it...
        if let Some((s, e)) = self.ranges.range(..=start.clone()).next_back() {
            if e.as_slice() >= start.as_slice() {
                let (s, e) = (s.clone(), e.clone());
                self.ranges.remove(&s);
                start = s;
                stop = stop.max(e);
            }
        }
        // ...and with every interval starting inside the merged one.
        while let Some((s, e)) = self.ranges.range(start.clone()..).next() {
            if s.as_slice() > stop.as_slice() {
                break;
            }
            let (s, e) = (s.clone(), e.clone());
            self.ranges.remove(&s);
            stop = stop.max(e);
        }
        self.ranges.insert(start, stop);
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains(key)
            || self
                .ranges
                .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
                .next_back()
                .is_some_and(|(_, end)| key < end.as_slice())
    }

    fn extend(&mut self, other: Deleted) {
        self.keys.extend(other.keys);
        for (start, end) in other.ranges {
            self.insert(&start, &end);
        }
    }
}

/// etcd's rule: within one branch (including the branches of nested transactions, whose then/else
/// are mutually exclusive) a key may be put at most once and never both put and deleted. Linear
/// in the operations up to a logarithmic factor.
fn check_intervals(
    ops: &[RequestOp],
) -> std::result::Result<(BTreeSet<Vec<u8>>, Deleted), ValidationError> {
    let mut dels = Deleted::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.insert(&d.key, &d.range_end);
        }
    }
    // A set, as etcd's: a key both branches of a nested txn put counts once.
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(inner)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&inner.success)?;
        let (puts_else, dels_else) = check_intervals(&inner.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(ValidationError::DuplicateKey);
            }
        }
        for k in &puts_else {
            // The same key in then and else is fine: only one of them runs.
            if (puts.contains(k) && !puts_then.contains(k)) || dels.contains(k) {
                return Err(ValidationError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.contains(&p.key) {
            return Err(ValidationError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn t(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    /// The rule checked the obvious quadratic way (every put against every delete), as a
    /// reference for the indexed [`check_intervals`].
    type Intervals = Vec<(Vec<u8>, Vec<u8>)>;

    fn reference_check(ops: &[RequestOp]) -> Option<(BTreeSet<Vec<u8>>, Intervals)> {
        let hit = |dels: &Intervals, k: &[u8]| {
            dels.iter().any(|(s, e)| {
                if e.is_empty() {
                    k == s.as_slice()
                } else {
                    k >= s.as_slice() && k < e.as_slice()
                }
            })
        };
        let mut dels: Intervals = ops
            .iter()
            .filter_map(|op| match &op.request {
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    Some((d.key.clone(), d.range_end.clone()))
                }
                _ => None,
            })
            .collect();
        let mut puts = BTreeSet::new();
        for op in ops {
            let Some(request_op::Request::RequestTxn(inner)) = &op.request else {
                continue;
            };
            let (then_puts, then_dels) = reference_check(&inner.success)?;
            let (else_puts, else_dels) = reference_check(&inner.failure)?;
            for k in &then_puts {
                if puts.contains(k) || hit(&dels, k) {
                    return None;
                }
            }
            puts.extend(then_puts.iter().cloned());
            for k in else_puts {
                if (puts.contains(&k) && !then_puts.contains(&k)) || hit(&dels, &k) {
                    return None;
                }
                puts.insert(k);
            }
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
        for op in ops {
            if let Some(request_op::Request::RequestPut(p)) = &op.request {
                if puts.contains(&p.key) || hit(&dels, &p.key) {
                    return None;
                }
                puts.insert(p.key.clone());
            }
        }
        Some((puts, dels))
    }

    /// Random branches over a few one- and two-letter keys: puts, point and range deletes
    /// (from-key ones included) and nested transactions.
    fn arb_ops(depth: u32) -> proptest::strategy::BoxedStrategy<Vec<RequestOp>> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec!["a", "ab", "b", "ba", "c", "d", "\0"]);
        let leaf = prop_oneof![
            key.clone().prop_map(put_op),
            (
                key.clone(),
                prop::sample::select(vec!["", "b", "c", "ca", "e", "\0", "a"])
            )
                .prop_map(|(k, e)| del_op(k, e)),
        ];
        let op = if depth == 0 {
            leaf.boxed()
        } else {
            prop_oneof![
                3 => leaf,
                1 => (arb_ops(depth - 1), arb_ops(depth - 1)).prop_map(|(s, f)| txn_op(s, f)),
            ]
            .boxed()
        };
        prop::collection::vec(op, 0..6).boxed()
    }

    proptest::proptest! {
        /// The indexed check accepts and refuses exactly what the quadratic reference does.
        #[test]
        fn indexed_intervals_agree_with_the_reference(ops in arb_ops(2)) {
            let indexed = check_intervals(&ops).map(|(puts, _)| puts).ok();
            let reference = reference_check(&ops).map(|(puts, _)| puts);
            proptest::prop_assert_eq!(indexed, reference);
        }
    }

    #[test]
    fn many_puts_and_deletes_are_checked_without_comparing_every_pair() {
        // 20,000 puts next to 20,000 disjoint range deletes: a pairwise check would make 4e8
        // comparisons; the indexed one makes a few hundred thousand.
        let mut ops = Vec::new();
        for i in 0..20_000u32 {
            ops.push(put_op(&format!("k{i:06}")));
            ops.push(del_op(&format!("k{i:06}a"), &format!("k{i:06}b")));
        }
        assert!(check_intervals(&ops).is_ok());
        ops.push(put_op("k001234aa"));
        assert_eq!(
            check_intervals(&ops).map(|_| ()),
            Err(ValidationError::DuplicateKey)
        );
    }

    #[test]
    fn duplicate_puts_and_put_inside_delete_are_rejected() {
        assert_eq!(
            txn(&t(vec![put_op("a"), put_op("a")]), 128),
            Err(ValidationError::DuplicateKey)
        );
        assert_eq!(
            txn(&t(vec![del_op("a", "c"), put_op("b")]), 128),
            Err(ValidationError::DuplicateKey)
        );
        assert_eq!(
            txn(&t(vec![del_op("a", "\0"), put_op("z")]), 128),
            Ok(()),
            "etcd lets a put pass next to a from-key delete"
        );
        assert_eq!(txn(&t(vec![del_op("a", "c"), put_op("c")]), 128), Ok(()));
        assert_eq!(
            txn(&t(vec![del_op("a", ""), del_op("a", "b")]), 128),
            Ok(()),
            "deletes may overlap"
        );
        // Nested: then/else may share a key; a nested put may not hit an outer put.
        assert_eq!(
            txn(&t(vec![txn_op(vec![put_op("k")], vec![put_op("k")])]), 128),
            Ok(())
        );
        assert_eq!(
            txn(
                &t(vec![put_op("k"), txn_op(vec![put_op("k")], vec![])]),
                128
            ),
            Err(ValidationError::DuplicateKey)
        );
        assert_eq!(
            txn(
                &t(vec![del_op("k", ""), txn_op(vec![], vec![put_op("k")])]),
                128
            ),
            Err(ValidationError::DuplicateKey)
        );
    }

    #[test]
    fn a_key_put_by_both_branches_counts_once_further_up() {
        // then/else of the innermost txn both put "k": one key to the levels above, as in etcd.
        let inner = txn_op(vec![put_op("k")], vec![put_op("k")]);
        let middle = txn_op(vec![], vec![inner]);
        let outer = TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![middle],
        };
        assert_eq!(txn(&outer, 128), Ok(()));
    }

    #[test]
    fn op_counts_and_nested_checks() {
        let many: Vec<RequestOp> = (0..3).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(txn(&t(many.clone()), 3), Ok(()));
        assert_eq!(txn(&t(many), 2), Err(ValidationError::TooManyOps));
        assert_eq!(txn(&t(vec![put_op("")]), 8), Err(ValidationError::EmptyKey));
        assert_eq!(
            txn(&t(vec![RequestOp { request: None }]), 8),
            Err(ValidationError::EmptyRequestOp)
        );
        let mut deep = t(vec![]);
        for _ in 0..MAX_TXN_NESTING_DEPTH + 1 {
            deep = t(vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(deep)),
            }]);
        }
        assert_eq!(txn(&deep, 8), Err(ValidationError::TooManyOps));
    }

    #[test]
    fn downgrade_requests_are_checked_action_first() {
        let req = |action: i32, version: &str| DowngradeRequest {
            action,
            version: version.into(),
        };
        let v36 = Version { major: 3, minor: 6 };
        let (validate, enable, cancel) = (
            DowngradeAction::Validate as i32,
            DowngradeAction::Enable as i32,
            DowngradeAction::Cancel as i32,
        );
        assert_eq!(
            downgrade(&req(validate, "3.6")),
            Ok(Downgrade::Validate(v36))
        );
        assert_eq!(downgrade(&req(enable, "3.6.4")), Ok(Downgrade::Enable(v36)));
        assert_eq!(downgrade(&req(cancel, "junk")), Ok(Downgrade::Cancel));
        for action in [validate, enable] {
            assert_eq!(
                downgrade(&req(action, "v3.6")),
                Err(ValidationError::WrongDowngradeVersionFormat)
            );
        }
        // An unknown action is refused before its version is read.
        assert_eq!(
            downgrade(&req(3, "junk")),
            Err(ValidationError::UnknownMethod)
        );
        assert_eq!(
            downgrade(&req(-1, "3.6")),
            Err(ValidationError::UnknownMethod)
        );
    }

    #[test]
    fn single_request_rules() {
        assert_eq!(
            range(&RangeRequest::default()),
            Err(ValidationError::EmptyKey)
        );
        let bad_sort = RangeRequest {
            key: b"a".to_vec(),
            sort_target: 9,
            ..Default::default()
        };
        assert_eq!(range(&bad_sort), Err(ValidationError::InvalidSortOption));
        let unknown_order = RangeRequest {
            key: b"a".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            range(&unknown_order),
            Ok(()),
            "etcd 3.5 leaves such a range unsorted"
        );
        let p = PutRequest {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(ValidationError::ValueProvided));
        let p = PutRequest {
            key: b"a".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(put(&p), Err(ValidationError::LeaseProvided));
        assert_eq!(
            delete_range(&DeleteRangeRequest::default()),
            Err(ValidationError::EmptyKey)
        );
    }

    #[test]
    fn range_stream_serves_key_order_without_filters_only() {
        let r = |f: fn(&mut RangeRequest)| {
            let mut r = RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            };
            f(&mut r);
            range_stream(&r)
        };
        assert_eq!(r(|_| {}), Ok(()));
        assert_eq!(
            r(|r| r.sort_order = SortOrder::Ascend as i32),
            Ok(()),
            "ascending by key is the default order"
        );
        assert_eq!(
            r(|r| r.key.clear()),
            Err(ValidationError::EmptyKey),
            "a range's checks come first"
        );
        assert_eq!(
            r(|r| r.sort_order = 9),
            Err(ValidationError::InvalidSortOption)
        );
        assert_eq!(
            r(|r| r.sort_target = 9),
            Err(ValidationError::InvalidSortOption)
        );
        assert_eq!(
            r(|r| r.sort_order = SortOrder::Descend as i32),
            Err(ValidationError::StreamSortUnsupported)
        );
        assert_eq!(
            r(|r| r.sort_target = SortTarget::Mod as i32),
            Err(ValidationError::StreamSortUnsupported),
            "a target with no order sorts ascending by it in Range"
        );
        for f in [
            (|r: &mut RangeRequest| r.min_mod_revision = 1) as fn(&mut RangeRequest),
            |r| r.max_mod_revision = 1,
            |r| r.min_create_revision = 1,
            |r| r.max_create_revision = 1,
        ] {
            assert_eq!(r(f), Err(ValidationError::StreamRevisionFiltersUnsupported));
        }
    }
}
