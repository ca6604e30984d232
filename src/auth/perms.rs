//! What a request needs and whether a set of permissions grants it.
//!
//! A request is mapped once to a list of [`Need`]s (key ranges with read or write access); a user
//! may proceed only if the permissions of its roles cover every one. Ranges use etcd's encoding: an
//! empty `range_end` is the key alone, `"\0"` means from the key to the end of the key space, and a
//! permission covers a range only if the union of the user's permissions of that kind contains the
//! whole range (etcd merges them into an interval set the same way).

use crate::pb::authpb::permission::Type as PermType;
use crate::pb::authpb::Permission;
use crate::pb::etcdserverpb::request_op::Request;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
};

/// Read or write access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermKind {
    Read,
    Write,
}

impl PermKind {
    /// Whether a permission of type `t` grants this access. A type etcd does not know grants
    /// nothing (etcd 3.5 stores whatever type a grant names).
    fn granted_by(self, t: i32) -> bool {
        matches!(
            (self, PermType::try_from(t)),
            (_, Ok(PermType::Readwrite))
                | (PermKind::Read, Ok(PermType::Read))
                | (PermKind::Write, Ok(PermType::Write))
        )
    }
}

/// One access a request needs: `kind` on `[key, range_end)` in etcd's range encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl Need {
    /// `kind` access to `[key, range_end)`.
    pub fn new(kind: PermKind, key: &[u8], range_end: &[u8]) -> Self {
        Self {
            kind,
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        }
    }
}

/// The upper end of an interval: a key (exclusive) or the end of the key space.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Infinite,
}

/// `[key, range_end)` as an interval; `None` if it holds no key.
fn interval(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, End)> {
    match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            Some((key.to_vec(), End::Key(next)))
        }
        [0] => Some((key.to_vec(), End::Infinite)),
        end if end > key => Some((key.to_vec(), End::Key(end.to_vec()))),
        _ => None,
    }
}

/// Whether the permissions in `perms` grant `need`.
pub fn covers<'a>(perms: impl IntoIterator<Item = &'a Permission>, need: &Need) -> bool {
    // An empty or inverted range touches no key; judge it by its start key, so it is never a way
    // around the check.
    let (start, end) = interval(&need.key, &need.range_end)
        .or_else(|| interval(&need.key, &[]))
        .expect("a single key is a non-empty interval");
    let mut granted: Vec<(Vec<u8>, End)> = perms
        .into_iter()
        .filter(|p| need.kind.granted_by(p.perm_type))
        .filter_map(|p| interval(&p.key, &p.range_end))
        .collect();
    granted.sort();
    // Sweep: extend the covered prefix of [start, end) with every interval that starts inside it.
    let mut covered_to = End::Key(start);
    for (from, to) in granted {
        if covered_to >= end {
            break;
        }
        if End::Key(from) > covered_to {
            return false;
        }
        if to > covered_to {
            covered_to = to;
        }
    }
    covered_to >= end
}

/// A range read needs read access to its range.
pub fn range_needs(req: &RangeRequest) -> Vec<Need> {
    vec![Need::new(PermKind::Read, &req.key, &req.range_end)]
}

/// A put needs write access to its key, and read access too if it returns the previous value.
pub fn put_needs(req: &PutRequest) -> Vec<Need> {
    let mut needs = vec![Need::new(PermKind::Write, &req.key, &[])];
    if req.prev_kv {
        needs.push(Need::new(PermKind::Read, &req.key, &[]));
    }
    needs
}

/// A delete needs write access to its range, and read access too if it returns the deleted values.
pub fn delete_needs(req: &DeleteRangeRequest) -> Vec<Need> {
    let mut needs = vec![Need::new(PermKind::Write, &req.key, &req.range_end)];
    if req.prev_kv {
        needs.push(Need::new(PermKind::Read, &req.key, &req.range_end));
    }
    needs
}

/// A watch needs read access to its range (an empty key is `"\0"`, the smallest key, as etcd's
/// watch reads it).
pub fn watch_needs(req: &WatchCreateRequest) -> Vec<Need> {
    let key: &[u8] = if req.key.is_empty() { &[0] } else { &req.key };
    vec![Need::new(PermKind::Read, key, &req.range_end)]
}

/// A transaction needs read access to every compared range and what every operation of both
/// branches needs, nested transactions included, whichever branch runs.
pub fn txn_needs(req: &TxnRequest) -> Vec<Need> {
    let mut needs = Vec::new();
    add_txn_needs(req, &mut needs);
    needs
}

fn add_txn_needs(req: &TxnRequest, needs: &mut Vec<Need>) {
    for cmp in &req.compare {
        needs.push(Need::new(PermKind::Read, &cmp.key, &cmp.range_end));
    }
    for op in req.success.iter().chain(&req.failure) {
        add_op_needs(op, needs);
    }
}

fn add_op_needs(op: &RequestOp, needs: &mut Vec<Need>) {
    match &op.request {
        Some(Request::RequestRange(r)) => needs.extend(range_needs(r)),
        Some(Request::RequestPut(p)) => needs.extend(put_needs(p)),
        Some(Request::RequestDeleteRange(d)) => needs.extend(delete_needs(d)),
        Some(Request::RequestTxn(t)) => add_txn_needs(t, needs),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::Compare;

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    fn read(key: &str, end: &str) -> Need {
        Need::new(PermKind::Read, key.as_bytes(), end.as_bytes())
    }

    fn write(key: &str, end: &str) -> Need {
        Need::new(PermKind::Write, key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn single_key_permission_covers_only_that_key() {
        let perms = [perm(PermType::Read, "a", "")];
        assert!(covers(&perms, &read("a", "")));
        assert!(!covers(&perms, &read("a0", "")));
        assert!(!covers(&perms, &read("", "")));
        assert!(
            !covers(&perms, &write("a", "")),
            "read does not grant write"
        );
        // A range that starts at the key but holds more keys is not covered.
        assert!(!covers(&perms, &read("a", "b")));
        // ... but the range holding exactly that key is ("a\0" is the key right after "a").
        assert!(covers(&perms, &read("a", "a\0")));
    }

    #[test]
    fn a_permission_type_etcd_does_not_know_grants_nothing() {
        // etcd 3.5 stores any type a grant names; neither read nor write follows from 3 or 9.
        for unknown in [3, 9, -1] {
            let perms = [Permission {
                perm_type: unknown,
                key: b"a".to_vec(),
                range_end: b"\0".to_vec(),
            }];
            assert!(
                !covers(&perms, &read("a", "")),
                "type {unknown} grants read"
            );
            assert!(
                !covers(&perms, &write("a", "")),
                "type {unknown} grants write"
            );
        }
        // Beside a real grant, it takes nothing away.
        let perms = [
            perm(PermType::Readwrite, "a", ""),
            Permission {
                perm_type: 3,
                key: b"a".to_vec(),
                range_end: Vec::new(),
            },
        ];
        assert!(covers(&perms, &write("a", "")));
    }

    #[test]
    fn ranges_and_prefixes() {
        // etcdctl role grant-permission r readwrite b c ; ... write p --prefix  (p..q)
        let perms = [
            perm(PermType::Readwrite, "b", "c"),
            perm(PermType::Write, "p", "q"),
        ];
        assert!(covers(&perms, &read("b", "")));
        assert!(covers(&perms, &read("bzzz", "")));
        assert!(!covers(&perms, &read("c", "")), "range_end is exclusive");
        assert!(covers(&perms, &read("b", "c")));
        assert!(covers(&perms, &read("ba", "bb")));
        assert!(
            !covers(&perms, &read("a", "c")),
            "starts before the permission"
        );
        assert!(
            !covers(&perms, &read("b", "d")),
            "ends after the permission"
        );
        assert!(covers(&perms, &write("p1", "")));
        assert!(covers(&perms, &write("p", "q")));
        assert!(
            !covers(&perms, &read("p1", "")),
            "write does not grant read"
        );
        assert!(
            !covers(&perms, &write("b", "q")),
            "the gap [c, p) is not granted"
        );
        assert!(!covers(&perms, &read("b", "\0")));
    }

    #[test]
    fn adjacent_and_overlapping_permissions_merge() {
        let perms = [
            perm(PermType::Read, "a", "c"),
            perm(PermType::Readwrite, "c", "e"),
            perm(PermType::Read, "d", "g"),
        ];
        assert!(covers(&perms, &read("a", "g")));
        assert!(covers(&perms, &read("b", "f")));
        assert!(!covers(&perms, &read("a", "h")));
        assert!(!covers(&perms, &write("b", "d")));
        assert!(covers(&perms, &write("c", "e")));
    }

    #[test]
    fn open_ended_ranges() {
        // etcdctl role grant-permission r read x --from-key: range_end "\0".
        let perms = [perm(PermType::Read, "x", "\0")];
        assert!(covers(&perms, &read("x", "")));
        assert!(covers(&perms, &read("zzzz", "")));
        assert!(covers(&perms, &read("\u{7f}\u{7f}", "")));
        assert!(
            covers(&perms, &read("x", "\0")),
            "to the end of the key space"
        );
        assert!(covers(&perms, &read("y", "z")));
        assert!(!covers(&perms, &read("w", "")));
        assert!(!covers(&perms, &read("w", "\0")));
        // Everything: key "\0" to the end is what `etcdctl get "" --from-key` asks for.
        let all = [perm(PermType::Read, "\0", "\0")];
        assert!(covers(&all, &read("\0", "\0")));
        assert!(covers(&all, &read("anything", "")));
        // A bounded permission never covers an open-ended request.
        let bounded = [perm(PermType::Read, "\0", "\u{7f}")];
        assert!(!covers(&bounded, &read("a", "\0")));
    }

    #[test]
    fn no_permissions_grant_nothing_and_empty_ranges_are_judged_by_their_key() {
        assert!(!covers(&[], &read("a", "")));
        let perms = [perm(PermType::Read, "a", "")];
        // An inverted range ("b" > "a") asks for nothing, but is never a way around the check.
        assert!(covers(&perms, &read("a", "0")));
        assert!(!covers(&perms, &read("b", "a")));
        // An inverted permission grants nothing.
        let inverted = [perm(PermType::Read, "z", "a")];
        assert!(!covers(&inverted, &read("m", "")));
    }

    #[test]
    fn txn_needs_every_compare_and_every_op_of_both_branches_nested_too() {
        let op = |r: Request| RequestOp { request: Some(r) };
        let nested = TxnRequest {
            compare: vec![Compare {
                key: b"n".to_vec(),
                ..Default::default()
            }],
            success: vec![op(Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"d".to_vec(),
                range_end: b"e".to_vec(),
                prev_kv: true,
            }))],
            failure: vec![],
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                range_end: b"d".to_vec(),
                ..Default::default()
            }],
            success: vec![op(Request::RequestRange(RangeRequest {
                key: b"r".to_vec(),
                ..Default::default()
            }))],
            failure: vec![
                op(Request::RequestPut(PutRequest {
                    key: b"p".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                })),
                op(Request::RequestTxn(nested)),
            ],
        };
        assert_eq!(
            txn_needs(&txn),
            vec![
                read("c", "d"),
                read("r", ""),
                write("p", ""),
                read("p", ""),
                read("n", ""),
                write("d", "e"),
                read("d", "e"),
            ]
        );
        // A user who may do everything but the nested delete is refused the whole txn.
        let perms = [
            perm(PermType::Read, "c", "d"),
            perm(PermType::Readwrite, "n", ""),
            perm(PermType::Readwrite, "p", ""),
            perm(PermType::Read, "r", ""),
            perm(PermType::Read, "d", "e"),
        ];
        let needs = txn_needs(&txn);
        assert!(!needs.iter().all(|n| covers(&perms, n)));
        let mut all = perms.to_vec();
        all.push(perm(PermType::Write, "d", "e"));
        assert!(needs.iter().all(|n| covers(&all, n)));
    }

    #[test]
    fn prev_kv_needs_read() {
        let put = PutRequest {
            key: b"k".to_vec(),
            prev_kv: true,
            ..Default::default()
        };
        let write_only = [perm(PermType::Write, "k", "")];
        assert!(!put_needs(&put).iter().all(|n| covers(&write_only, n)));
        let plain = PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert!(put_needs(&plain).iter().all(|n| covers(&write_only, n)));
        let del = DeleteRangeRequest {
            key: b"k".to_vec(),
            prev_kv: true,
            ..Default::default()
        };
        assert!(!delete_needs(&del).iter().all(|n| covers(&write_only, n)));
    }
}
