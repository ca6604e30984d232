//! The `v3lockpb.Lock` service: etcd's distributed mutex, run on the server with etcd's key layout.
//!
//! `Lock(name, lease)` puts `name/<lease in hex>` attached to the lease (or finds it, if this lease
//! already queued), then waits until every key of `name/` created before it is gone: the holder is
//! always the oldest key. Waiting is a watch on the next-older key's deletion, so a waiter costs one
//! watcher, and a client that goes away drops its wait (the watcher goes with it). `Unlock(key)`
//! deletes the key. The lease bounds everything: when it expires its key goes, and so does the lock.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use crate::pb::metastore::command::Op;
use crate::pb::mvccpb::event::EventType;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::watch::{HubMessage, WatchSpec, WatcherKey};

/// Serves Lock and Unlock.
pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    /// A lock service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// Removes a server-side watcher when the wait ends or the request is dropped.
struct WatchGuard {
    node: Arc<Node>,
    stream: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.node.watch_hub().remove_stream(self.stream);
    }
}

/// The end of the prefix range of `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Create `key` with `lease` unless it exists; returns its create revision.
async fn acquire_key(node: &Node, key: &[u8], lease: i64) -> Result<i64, Status> {
    let get = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
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
    let Applied::Txn(resp) = node.propose(Op::Txn(txn)).await? else {
        return Err(Status::internal(
            "etcdserver: unexpected apply result for lock",
        ));
    };
    let created = resp.responses.iter().rev().find_map(|r| match &r.response {
        Some(response_op::Response::ResponseRange(rr)) => {
            rr.kvs.first().map(|kv| kv.create_revision)
        }
        _ => None,
    });
    created.ok_or_else(|| Status::internal("etcdserver: lock key vanished"))
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(super::validate::ValidationError::EmptyKey.into());
        }
        let prefix = [req.name.as_slice(), b"/"].concat();
        let key = [prefix.as_slice(), format!("{:x}", req.lease).as_bytes()].concat();
        let my_rev = acquire_key(&self.node, &key, req.lease).await?;
        loop {
            // The newest key of the queue created before ours: we hold the lock when there is none.
            let older = RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                max_create_revision: my_rev - 1,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                limit: 1,
                ..Default::default()
            };
            let found = self.node.range(&older).await?;
            let Some(ahead) = found.kvs.first() else {
                break;
            };
            let seen_at = found.header.map(|h| h.revision).unwrap_or(0);
            // Wait for that key's deletion (from the revision just read, so none is missed).
            let (tx, mut rx) = mpsc::channel(crate::limits::WATCH_STREAM_BUFFER);
            let stream = self.node.watch_hub().new_stream();
            let _guard = WatchGuard {
                node: self.node.clone(),
                stream,
            };
            let spec = WatchSpec {
                key: ahead.key.clone(),
                end: RangeEnd::Single,
                no_put: true,
                no_delete: false,
                prev_kv: false,
                progress_notify: false,
                fragment: false,
            };
            self.node.add_watcher(
                WatcherKey {
                    stream,
                    watch_id: 0,
                },
                spec,
                seen_at + 1,
                tx,
            );
            loop {
                match rx.recv().await {
                    Some(HubMessage::Events { events, .. })
                        if events.iter().any(|e| e.r#type == EventType::Delete as i32) =>
                    {
                        break
                    }
                    Some(HubMessage::Compacted { .. }) | None => break, // re-check from storage
                    Some(_) => continue,
                }
            }
        }
        let header = Some(self.node.header(self.node.current_revision()));
        Ok(Response::new(LockResponse { header, key }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let del = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        super::validate::delete_range(&del)?;
        let Applied::DeleteRange(resp) = self.node.propose(Op::DeleteRange(del)).await? else {
            return Err(Status::internal(
                "etcdserver: unexpected apply result for unlock",
            ));
        };
        let revision = resp
            .header
            .map(|h| h.revision)
            .unwrap_or_else(|| self.node.current_revision());
        Ok(Response::new(UnlockResponse {
            header: Some(self.node.header(revision)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"lock/"), b"lock0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
