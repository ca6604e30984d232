//! Range requests: limit, count, revision filters, sorting, keys-only, count-only, as etcd does them.

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
    let end = RangeEnd::from_etcd(&req.range_end);
    let result = view.range(&req.key, &end, req.revision, load_limit, req.count_only)?;
    let mut kvs = result.kvs;
    kvs.retain(|kv| keep(req, kv));

    // Records come in ascending key order: sorting by key ascending is a no-op, and sorting by any
    // other target defaults to ascending.
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    if order != SortOrder::None {
        // A stable sort keeps ties in key order.
        match target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
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
