//! The `v3lockpb.Lock` service: etcd's distributed mutex, run on the server with etcd's key layout.
//!
//! `Lock(name, lease)` puts `name/<lease in hex>` attached to the lease (or finds it, if this lease
//! already queued), then waits until every key of `name/` created before it is gone: the holder is
//! always the oldest key. Waiting is a watch on the next-older key's deletion, so a waiter costs one
//! watcher. A wait that ends without the lock (the client went away, a read failed) takes its key
//! back out of the queue, as etcd's `Mutex.Lock` does, so an abandoned waiter never blocks the
//! ones behind it. `Unlock(key)` deletes the key. The lease bounds everything: when it expires its
//! key goes, and so does the lock.
//!
//! Lease 0 means "no lease of the caller's own": as etcd's server (which opens a concurrency
//! session with lease 0, so the session grants one and is then left without keep-alives), a fresh
//! lease of [`limits::LOCK_SESSION_TTL_SECS`] is granted and the key is attached to it, so two
//! lease-0 lockers queue on two keys and the lock frees itself when that lease runs out.
//!
//! Every write here is proposed as the caller (the [`Requester`] its permission check returned),
//! so apply refuses it if auth changed before it committed, as it does a KV write.

use super::access::{cert_user, Access, Caller};
use super::status;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::keys::prefix_end;
use crate::limits;
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use crate::pb::metastore::command::Op;
use crate::pb::metastore::Requester;
use crate::pb::mvccpb::event::EventType;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::watch::{HubMessage, WatchSpec, WatcherKey};

/// Serves Lock and Unlock.
pub struct LockService {
    node: Arc<Node>,
    access: Arc<Access>,
}

impl LockService {
    /// A lock service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<Access>) -> Self {
        Self { node, access }
    }
}

/// Removes a server-side watcher when the wait ends or the request is dropped.
pub(super) struct WatchGuard {
    node: Arc<Node>,
    stream: u64,
}

impl WatchGuard {
    /// Removes the watchers of `stream` when dropped.
    pub(super) fn new(node: Arc<Node>, stream: u64) -> Self {
        Self { node, stream }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.node.watch_hub().remove_stream(self.stream);
    }
}

/// The lease a lock or campaign attaches its key to: the caller's, or for lease 0 a fresh one of
/// [`limits::LOCK_SESSION_TTL_SECS`] that nobody keeps alive (etcd's server-side session).
pub(super) async fn session_lease(node: &Node, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    Ok(node.lease_grant(0, limits::LOCK_SESSION_TTL_SECS).await?.id)
}

/// The key of `lease` in the queue of `prefix`: `prefix` and the lease id in hex (etcd's layout).
pub(super) fn queue_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    // Go's `%x` of a signed id: a negative one (etcd grants those) is `-` and its magnitude.
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    [prefix, hex.as_bytes()].concat()
}

/// A queue key as [`acquire_key`] found or made it.
pub(super) struct Acquired {
    /// Its create revision (its place in the queue).
    pub rev: i64,
    /// Its value now.
    pub value: Vec<u8>,
    /// The revision the txn that created or found it answered at.
    pub answered_at: i64,
}

/// Create `key` with `value` and `lease` unless it exists, as `requester`.
pub(super) async fn acquire_key(
    node: &Node,
    key: &[u8],
    value: &[u8],
    lease: i64,
    requester: &Requester,
) -> Result<Acquired, Status> {
    let get = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            key: key.to_vec(),
            target: CompareTarget::Create as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: vec![],
        }],
        success: vec![put, get.clone()],
        failure: vec![get],
    };
    let Applied::Txn(resp) = node
        .propose_as(Op::Txn(txn), Some(requester.clone()))
        .await?
    else {
        return Err(status::unexpected_apply("lock"));
    };
    let answered_at = resp.header.as_ref().map_or(0, |h| h.revision);
    let created = resp.responses.iter().rev().find_map(|r| match &r.response {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.first().map(|kv| Acquired {
            rev: kv.create_revision,
            value: kv.value.clone(),
            answered_at,
        }),
        _ => None,
    });
    created.ok_or_else(status::lock_key_vanished)
}

/// Run `op` as `requester` only if `key` still has create revision `rev` (the incarnation the
/// caller queued or was given); the txn's outcome.
pub(super) async fn if_created_at(
    node: &Node,
    key: &[u8],
    rev: i64,
    op: RequestOp,
    requester: &Requester,
) -> Result<crate::pb::etcdserverpb::TxnResponse, Status> {
    let txn = TxnRequest {
        compare: vec![Compare {
            key: key.to_vec(),
            target: CompareTarget::Create as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::CreateRevision(rev)),
            range_end: vec![],
        }],
        success: vec![op],
        failure: vec![],
    };
    // Checked as the KV service checks a txn (an empty key never reaches the store).
    super::validate::txn(&txn, 1)?;
    match node
        .propose_as(Op::Txn(txn), Some(requester.clone()))
        .await?
    {
        Applied::Txn(t) => Ok(t),
        _ => Err(status::unexpected_apply("a conditional write")),
    }
}

/// A delete of exactly `key`.
pub(super) fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// Takes a queued key back out when the wait for it ends without success (the request was
/// dropped because its client went away, or the wait failed): what etcd's `Mutex.Lock` and
/// `Election.Campaign` do on a failed wait, so an abandoned waiter does not hold up everyone
/// queued behind it until its lease runs out. The delete runs in the background (its own proposal
/// deadline bounds it), as the caller with the caller's permissions as they are then (etcd's
/// client unlocks with its token), and only removes the incarnation this request queued.
pub(super) struct Withdraw {
    node: Arc<Node>,
    access: Arc<Access>,
    caller: Caller,
    key: Vec<u8>,
    rev: i64,
    armed: bool,
}

impl Withdraw {
    pub(super) fn new(
        node: &Arc<Node>,
        access: &Arc<Access>,
        caller: &Caller,
        key: &[u8],
        rev: i64,
    ) -> Self {
        Self {
            node: node.clone(),
            access: access.clone(),
            caller: caller.clone(),
            key: key.to_vec(),
            rev,
            armed: true,
        }
    }

    /// The wait succeeded: the key stays.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (node, access) = (self.node.clone(), self.access.clone());
        let caller = self.caller.clone();
        let key = std::mem::take(&mut self.key);
        let rev = self.rev;
        crate::rt::spawn(async move {
            let withdrawn = match access.check(&caller, &Access::key_rw_needs(&key)) {
                Ok(requester) => if_created_at(&node, &key, rev, delete_op(&key), &requester)
                    .await
                    .map(|_| ()),
                Err(e) => Err(Status::from(e)),
            };
            if let Err(e) = withdrawn {
                tracing::debug!("cannot withdraw an abandoned lock or campaign key: {e}");
            }
        });
    }
}

/// Wait until no key under `prefix` created before `my_rev` is left (each wait is a watch on the
/// next-older key's deletion, starting at the revision it was read at, so none is missed).
pub(super) async fn wait_for_older(
    node: &Arc<Node>,
    prefix: &[u8],
    my_rev: i64,
) -> Result<(), Status> {
    loop {
        let older = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            max_create_revision: my_rev - 1,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        };
        let found = node.range(&older).await?;
        let Some(ahead) = found.kvs.first() else {
            return Ok(());
        };
        let seen_at = found.header.map(|h| h.revision).unwrap_or(0);
        wait_for_delete(node, &ahead.key, seen_at + 1).await;
    }
}

/// Wait until `key` is deleted at or after revision `from` (or the watch is cut off, after which the
/// caller re-checks).
pub(super) async fn wait_for_delete(node: &Arc<Node>, key: &[u8], from: i64) {
    let (tx, mut rx) = node.watch_hub().stream_channel();
    let stream = node.watch_hub().new_stream();
    let _guard = WatchGuard {
        node: node.clone(),
        stream,
    };
    let spec = WatchSpec {
        no_put: true,
        ..WatchSpec::all_changes(key.to_vec(), RangeEnd::Single)
    };
    // The only watcher of its own stream: it cannot be refused.
    let _ = node.add_watcher(
        WatcherKey {
            stream,
            watch_id: 0,
        },
        spec,
        from,
        tx,
        crate::watch::Admission::Request,
        |_, _| {},
    );
    loop {
        match rx.recv().await {
            Some(HubMessage::Events { events, .. })
                if events.iter().any(|e| e.r#type == EventType::Delete as i32) =>
            {
                return
            }
            Some(HubMessage::Compacted { .. }) | None => return,
            Some(_) => continue,
        }
    }
}

/// The bodies of the Lock calls; [`Lock`] below answers their errors as etcd does.
impl LockService {
    async fn serve_lock(
        &self,
        request: Request<LockRequest>,
    ) -> Result<Response<LockResponse>, Status> {
        // etcd runs the lock as the caller: it reads and writes keys under `name/` and attaches
        // the lease.
        let prefix = [request.get_ref().name.as_slice(), b"/"].concat();
        let mut needs = Access::prefix_needs(&prefix);
        needs.extend(self.access.lease_needs(request.get_ref().lease));
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        let requester = self.access.check(&caller, &needs)?;
        // An empty name is a name too: its keys are `/<lease>` (etcd 3.5.1 grants such a lock).
        let req = request.into_inner();
        let lease = session_lease(&self.node, req.lease).await?;
        let key = queue_key(&prefix, lease);
        let my_rev = acquire_key(&self.node, &key, &[], lease, &requester)
            .await?
            .rev;
        let withdraw = Withdraw::new(&self.node, &self.access, &caller, &key, my_rev);
        wait_for_older(&self.node, &prefix, my_rev).await?;
        withdraw.disarm();
        let header = Some(self.node.header(self.node.current_revision()));
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn serve_unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let needs = [crate::auth::Need::new(
            crate::auth::PermKind::Write,
            &request.get_ref().key,
            &[],
        )];
        let requester =
            self.access
                .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        let key = request.into_inner().key;
        let del = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        super::validate::delete_range(&del)?;
        let Applied::DeleteRange(resp) = self
            .node
            .propose_as(Op::DeleteRange(del), Some(requester))
            .await?
        else {
            return Err(status::unexpected_apply("unlock"));
        };
        Ok(Response::new(UnlockResponse {
            header: self.node.complete_header(resp.header),
        }))
    }
}

/// etcd serves Lock through an in-process client, so every error reaches the caller as code
/// Unknown with etcd's text ([`super::status::through_client`]).
#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.serve_lock(request)
            .await
            .map_err(super::status::through_client)
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.serve_unlock(request)
            .await
            .map_err(super::status::through_client)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queue_keys_print_the_lease_as_go_prints_it() {
        let key = |lease| String::from_utf8(super::queue_key(b"lk/", lease)).unwrap();
        assert_eq!(key(0x1234), "lk/1234");
        assert_eq!(key(-1), "lk/-1", "etcd 3.5.1's key for lease -1");
        assert_eq!(key(i64::MIN), "lk/-8000000000000000");
        assert_eq!(key(i64::MAX), "lk/7fffffffffffffff");
    }
}
