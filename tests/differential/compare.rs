//! What may differ between two correct servers, masked before the answers are compared, and a
//! readable rendering of requests and answers.
//!
//! Masked everywhere (nested txn headers too): a header's `cluster_id`, `member_id` and `raft_term`
//! become 1 when set and stay 0 when not (the ids are random per cluster and the term depends on
//! elections, but whether a header carries them is part of etcd's behaviour). `revision` is kept.
//!
//! Masked per response:
//! - LeaseTimeToLive: the remaining `TTL` becomes 1 when positive (it counts down with the wall
//!   clock); its `keys` are sorted (etcd lists them from a Go map, in random order).
//! - LeaseKeepAlive: the `TTL` becomes 1 when positive, as for LeaseTimeToLive.
//! - LeaseLeases: sorted by id (etcd sorts them by expiry time, ties in random order).
//! - Status: only the header, `errors` and `isLearner` are compared, and `leader` as "this member
//!   leads" (the ids differ); version, db sizes, raft index/term/applied index and the 3.6-only
//!   fields (storageVersion, dbSizeQuota, downgradeInfo) are zeroed.
//! - MemberList: ids become 1 when set, names and URLs become "masked" (the count of URLs is
//!   kept); `isLearner` and the member count are compared.
//! - HashKV: the hash is zeroed (the two stores hash different bytes), and so is `hash_revision`
//!   (a field etcd 3.5.1 does not have yet: it always answers 0); the header and `compact_revision`
//!   are compared.
//! - Authenticate: the token's text becomes "masked" when one is given.
//! - JSON gateway answers: see `differential/json.rs`.

use metastore::pb::etcdserverpb::{response_op, Member, ResponseHeader, TxnResponse};

use crate::exec::{Out, WatchItem};

fn flag(x: u64) -> u64 {
    u64::from(x != 0)
}

fn mask_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = flag(h.cluster_id);
        h.member_id = flag(h.member_id);
        h.raft_term = flag(h.raft_term);
    }
}

fn mask_txn(t: &mut TxnResponse) {
    mask_header(&mut t.header);
    for r in &mut t.responses {
        match &mut r.response {
            Some(response_op::Response::ResponseRange(r)) => mask_header(&mut r.header),
            Some(response_op::Response::ResponsePut(r)) => mask_header(&mut r.header),
            Some(response_op::Response::ResponseDeleteRange(r)) => mask_header(&mut r.header),
            Some(response_op::Response::ResponseTxn(t)) => mask_txn(t),
            None => {}
        }
    }
}

fn mask_member(m: &mut Member) {
    m.id = flag(m.id);
    m.name = "masked".into();
    for u in m.peer_ur_ls.iter_mut().chain(m.client_ur_ls.iter_mut()) {
        *u = "masked".into();
    }
}

/// Mask, in place, what legitimately differs between two correct servers (see the module doc).
pub fn mask(out: &mut Out) {
    match out {
        Out::Range(r) => mask_header(&mut r.header),
        Out::Put(r) => mask_header(&mut r.header),
        Out::DeleteRange(r) => mask_header(&mut r.header),
        Out::Txn(t) => mask_txn(t),
        Out::Compact(r) => mask_header(&mut r.header),
        Out::LeaseGrant(r) => mask_header(&mut r.header),
        Out::LeaseRevoke(r) => mask_header(&mut r.header),
        Out::LeaseTimeToLive(r) => {
            mask_header(&mut r.header);
            if r.ttl > 0 {
                r.ttl = 1;
            }
            r.keys.sort();
        }
        Out::LeaseLeases(r) => {
            mask_header(&mut r.header);
            r.leases.sort_by_key(|l| l.id);
        }
        Out::LeaseKeepAlive(r) => {
            mask_header(&mut r.header);
            if r.ttl > 0 {
                r.ttl = 1;
            }
        }
        Out::Watch(items) => {
            for item in items {
                if let WatchItem::Response(r) = item {
                    mask_header(&mut r.header);
                }
            }
        }
        Out::WatchMany(phases) => {
            for item in phases.iter_mut().flatten() {
                if let WatchItem::Response(r) = item {
                    mask_header(&mut r.header);
                }
            }
        }
        Out::Status(s) => {
            let me = s.header.as_ref().map(|h| h.member_id).unwrap_or_default();
            // 1: this member leads; 2: another one does; 0: none.
            s.leader = match s.leader {
                0 => 0,
                l if l == me => 1,
                _ => 2,
            };
            mask_header(&mut s.header);
            s.version.clear();
            s.db_size = 0;
            s.db_size_in_use = 0;
            s.raft_index = 0;
            s.raft_term = 0;
            s.raft_applied_index = 0;
            s.storage_version.clear();
            s.db_size_quota = 0;
            s.downgrade_info = None;
        }
        Out::MemberList(r) => {
            mask_header(&mut r.header);
            r.members.iter_mut().for_each(mask_member);
        }
        Out::Defragment(r) => mask_header(&mut r.header),
        Out::MoveLeader(r) => mask_header(&mut r.header),
        Out::HashKv(r) => {
            mask_header(&mut r.header);
            r.hash = 0;
            r.hash_revision = 0;
        }
        Out::Alarm(r) => {
            mask_header(&mut r.header);
            for a in &mut r.alarms {
                a.member_id = flag(a.member_id);
            }
        }
        Out::Auth(a) => crate::auth::mask(a, mask_header),
        Out::Json { body, .. } => crate::json::mask(body),
        Out::Lock(r) => mask_header(&mut r.header),
        Out::Unlock(r) => mask_header(&mut r.header),
        Out::Campaign(r) => mask_header(&mut r.header),
        Out::Proclaim(r) => mask_header(&mut r.header),
        Out::Leader(r) | Out::Observe(r) => mask_header(&mut r.header),
        Out::Resign(r) => mask_header(&mut r.header),
        Out::Error { .. } | Out::Timeout => {}
    }
}

/// The highest header revision anywhere in an answer (the generator's idea of "now").
pub fn max_revision(out: &Out) -> i64 {
    fn h(h: &Option<ResponseHeader>) -> i64 {
        h.as_ref().map(|h| h.revision).unwrap_or_default()
    }
    match out {
        Out::Range(r) => h(&r.header),
        Out::Put(r) => h(&r.header),
        Out::DeleteRange(r) => h(&r.header),
        Out::Txn(r) => h(&r.header),
        Out::Compact(r) => h(&r.header),
        Out::LeaseGrant(r) => h(&r.header),
        Out::LeaseRevoke(r) => h(&r.header),
        Out::LeaseTimeToLive(r) => h(&r.header),
        Out::LeaseLeases(r) => h(&r.header),
        Out::LeaseKeepAlive(r) => h(&r.header),
        Out::WatchMany(phases) => phases
            .iter()
            .flatten()
            .filter_map(|i| match i {
                WatchItem::Response(r) => Some(h(&r.header)),
                _ => None,
            })
            .max()
            .unwrap_or_default(),
        Out::Watch(items) => items
            .iter()
            .filter_map(|i| match i {
                WatchItem::Response(r) => Some(h(&r.header)),
                _ => None,
            })
            .max()
            .unwrap_or_default(),
        Out::Status(r) => h(&r.header),
        Out::MemberList(r) => h(&r.header),
        Out::Defragment(r) => h(&r.header),
        Out::MoveLeader(r) => h(&r.header),
        Out::HashKv(r) => h(&r.header),
        Out::Alarm(r) => h(&r.header),
        // Auth requests do not move the store's revision.
        Out::Auth(_) => 0,
        Out::Json { body, .. } => crate::json::revision(body),
        Out::Lock(r) => h(&r.header),
        Out::Unlock(r) => h(&r.header),
        Out::Campaign(r) => h(&r.header),
        Out::Proclaim(r) => h(&r.header),
        Out::Leader(r) | Out::Observe(r) => h(&r.header),
        Out::Resign(r) => h(&r.header),
        Out::Error { .. } | Out::Timeout => 0,
    }
}

/// `b"..."` with printable ASCII kept and every other byte as `\xNN`.
pub fn bytes(b: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &c in b {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    s
}

/// The Debug text of a request or answer with byte fields (`key`, `range_end`, `value`, `keys`)
/// shown as byte strings instead of lists of numbers.
pub fn pretty(debug: &str) -> String {
    const FIELDS: [&str; 4] = ["key: [", "range_end: [", "value: [", "Value(["];
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    'scan: while !rest.is_empty() {
        for f in FIELDS.iter().chain(["keys: ["].iter()) {
            if let Some(after) = rest.strip_prefix(f) {
                let nested = *f == "keys: [";
                if let Some((text, len)) = byte_list(after, nested) {
                    out.push_str(&f[..f.len() - 1]);
                    out.push_str(&text);
                    rest = &after[len..];
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Parse `n, n, n]` (or, nested, `[n, n], [n]]`) at the start of `s`: the rendering and the
/// length consumed.
fn byte_list(s: &str, nested: bool) -> Option<(String, usize)> {
    if nested {
        let mut parts = Vec::new();
        let mut i = 0;
        loop {
            let t = &s[i..];
            if let Some(rest) = t.strip_prefix(']') {
                let _ = rest;
                return Some((format!("[{}]", parts.join(", ")), i + 1));
            }
            let t2 = t.strip_prefix(", ").unwrap_or(t);
            i += t.len() - t2.len();
            let inner = t2.strip_prefix('[')?;
            let (text, len) = byte_list(inner, false)?;
            parts.push(text);
            i += 1 + len;
        }
    }
    let end = s.find(']')?;
    let body = &s[..end];
    let mut v = Vec::new();
    if !body.is_empty() {
        for n in body.split(", ") {
            v.push(n.parse::<u8>().ok()?);
        }
    }
    Some((bytes(&v), end + 1))
}
