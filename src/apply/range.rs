//! Range requests: limit, count, revision filters, sorting, keys-only, count-only, as etcd does them.

use std::cmp::Ordering;

use super::{header, ApplyError, ReadView};
use crate::mvcc::RangeEnd;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
use crate::pb::mvccpb::KeyValue;

fn needs_full_scan(req: &RangeRequest) -> bool {
    req.sort_order != SortOrder::None as i32
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

fn keep(req: &RangeRequest, kv: &KeyValue) -> bool {
    (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
}

/// Execute a validated range request on `view`.
pub fn execute_range(view: &dyn ReadView, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
    let limit = usize::try_from(req.limit).unwrap_or(0);
    // Without sorting or filtering the store's key order is final, so load one extra record only to
    // learn whether there are more.
    let load_limit = if limit > 0 && !needs_full_scan(req) {
        limit + 1
    } else {
        0
    };
    // Records come in ascending key order: sorting by key ascending is a no-op. A target other
    // than the key with no order sorts ascending; an order etcd does not know sorts nothing (etcd
    // 3.5 leaves such a range in key order).
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let order = match SortOrder::try_from(req.sort_order) {
        Ok(SortOrder::None) if target != SortTarget::Key => SortOrder::Ascend,
        Ok(SortOrder::Ascend) if target == SortTarget::Key => SortOrder::None,
        Ok(order) => order,
        Err(_) => SortOrder::None,
    };
    // A keys-only range sorted by value still sorts by the values (as etcd's, which drops them
    // only from the answer), so only then does it read them.
    let keys_only = req.keys_only && !(order != SortOrder::None && target == SortTarget::Value);
    let end = RangeEnd::from_etcd(&req.range_end);
    let result = view.range(
        &req.key,
        &end,
        req.revision,
        load_limit,
        req.count_only,
        keys_only,
    )?;
    let mut kvs = result.kvs;
    kvs.retain(|kv| keep(req, kv));

    if order != SortOrder::None {
        let by: fn(&KeyValue, &KeyValue) -> Ordering = match target {
            SortTarget::Key => |a, b| a.key.cmp(&b.key),
            SortTarget::Version => |a, b| a.version.cmp(&b.version),
            SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => |a, b| a.value.cmp(&b.value),
        };
        // A stable sort keeps ties in ascending key order in both directions, as etcd's does (its
        // insertion sort on small results; on large ones Go leaves tie order unspecified).
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }

    let mut more = false;
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(result.rev),
        kvs,
        more,
        count: result.count as i64,
    })
}
