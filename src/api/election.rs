//! The `v3electionpb.Election` service, run on the server with etcd's key layout and semantics.
//!
//! A candidate's key is `name/<lease in hex>` attached to its lease; the leader is the oldest key of
//! `name/`. `Campaign` queues the key (or re-uses it, proclaiming the new value) and waits until every
//! older candidate is gone, as `Lock` does. `Proclaim` and `Resign` act only while the key still is
//! the one the leader was given (same create revision). `Observe` streams the leader's value each time
//! it changes.
//!
//! As with `Lock`, lease 0 campaigns with a fresh lease of [`crate::limits::LOCK_SESSION_TTL_SECS`]
//! (etcd's server-side session), reported back in the leader key; a campaign whose wait ends
//! without leadership withdraws its key (etcd resigns); every write is proposed as the caller.

use super::access::cert_user;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::access::{Access, Caller};
use super::lock::{
    acquire_key, delete_op, if_created_at, queue_key, session_lease, wait_for_older, Withdraw,
};
use crate::auth::{Need, PermKind};
use crate::keys::prefix_end;
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp};
use crate::pb::metastore::Requester;
use crate::pb::mvccpb::KeyValue;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::watch::{HubMessage, WatchSpec, WatcherKey};

/// Serves Campaign, Proclaim, Leader, Observe and Resign.
pub struct ElectionService {
    node: Arc<Node>,
    access: Arc<Access>,
}

impl ElectionService {
    /// An election service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<Access>) -> Self {
        Self { node, access }
    }

    /// The caller of `request`, who must have what the keys under `name/` need (etcd runs
    /// elections as the caller), and the requester to propose its writes as.
    fn permit<T>(
        &self,
        request: &Request<T>,
        needs: &[Need],
    ) -> Result<(Caller, Requester), Status> {
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        let requester = self.access.check(&caller, needs)?;
        Ok((caller, requester))
    }
}

/// Read access to the keys of election `name`.
fn read_prefix(name: &[u8]) -> Vec<Need> {
    let prefix = [name, b"/"].concat();
    vec![Need::new(PermKind::Read, &prefix, &prefix_end(&prefix))]
}

/// Read and write access to the leader key a request names.
fn leader_key_needs(leader: Option<&LeaderKey>) -> Vec<Need> {
    leader
        .map(|l| Access::key_rw_needs(&l.key))
        .unwrap_or_default()
}

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

/// The current leader's key-value of election `name`.
async fn leader_kv(node: &Node, name: &[u8]) -> Result<(Option<KeyValue>, i64), Status> {
    let prefix = [name, b"/"].concat();
    let req = RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(&prefix),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    };
    let resp = node.range(&req).await?;
    let rev = resp.header.map(|h| h.revision).unwrap_or(0);
    Ok((resp.kvs.into_iter().next(), rev))
}

/// Run `op` as `requester` only if `leader.key` still has the create revision the leader was
/// given.
async fn if_still_leader(
    node: &Node,
    leader: &LeaderKey,
    op: RequestOp,
    requester: &Requester,
) -> Result<i64, Status> {
    let t = if_created_at(node, &leader.key, leader.rev, op, requester).await?;
    if !t.succeeded {
        return Err(not_leader());
    }
    Ok(t.header.map(|h| h.revision).unwrap_or(0))
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let mut needs = Access::prefix_needs(&[request.get_ref().name.as_slice(), b"/"].concat());
        needs.extend(self.access.lease_needs(request.get_ref().lease));
        let (caller, requester) = self.permit(&request, &needs)?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(super::validate::ValidationError::EmptyKey.into());
        }
        let prefix = [req.name.as_slice(), b"/"].concat();
        let lease = session_lease(&self.node, req.lease).await?;
        let key = queue_key(&prefix, lease);
        let (rev, value) = acquire_key(&self.node, &key, &req.value, lease, &requester).await?;
        let withdraw = Withdraw::new(&self.node, &self.access, &caller, &key, rev);
        let leader = LeaderKey {
            name: req.name.clone(),
            key,
            rev,
            lease,
        };
        if value != req.value {
            // Re-campaigning with the same lease: the key exists, proclaim the new value.
            if_still_leader(
                &self.node,
                &leader,
                put_op(&leader.key, &req.value, lease),
                &requester,
            )
            .await?;
        }
        wait_for_older(&self.node, &prefix, rev).await?;
        withdraw.disarm();
        let header = Some(self.node.header(self.node.current_revision()));
        Ok(Response::new(CampaignResponse {
            header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let (_, requester) = self.permit(
            &request,
            &leader_key_needs(request.get_ref().leader.as_ref()),
        )?;
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(not_leader)?;
        let rev = if_still_leader(
            &self.node,
            &leader,
            put_op(&leader.key, &req.value, leader.lease),
            &requester,
        )
        .await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(self.node.header(rev)),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.permit(&request, &read_prefix(&request.get_ref().name))?;
        let (kv, rev) = leader_kv(&self.node, &request.into_inner().name).await?;
        let kv = kv.ok_or_else(no_leader)?;
        Ok(Response::new(LeaderResponse {
            header: Some(self.node.header(rev)),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        self.permit(&request, &read_prefix(&request.get_ref().name))?;
        let name = request.into_inner().name;
        let prefix = [name.as_slice(), b"/"].concat();
        let (out_tx, out_rx) =
            mpsc::channel::<Result<LeaderResponse, Status>>(crate::limits::WATCH_STREAM_BUFFER);
        let node = self.node.clone();
        crate::rt::spawn(async move {
            // Watch the whole election; after every change, report the leader if it changed.
            let (tx, mut rx) = node.watch_hub().stream_channel();
            let stream = node.watch_hub().new_stream();
            let spec =
                WatchSpec::all_changes(prefix.clone(), RangeEnd::Before(prefix_end(&prefix)));
            // The only watcher of its own stream: it cannot be refused.
            let _ = node.add_watcher(
                WatcherKey {
                    stream,
                    watch_id: 0,
                },
                spec,
                0,
                tx,
                crate::watch::Admission::Request,
                |_, _| {},
            );
            let follow = async {
                let mut last: Option<(Vec<u8>, i64)> = None;
                loop {
                    if let Ok((Some(kv), rev)) = leader_kv(&node, &name).await {
                        let now = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&now) {
                            last = Some(now);
                            let resp = LeaderResponse {
                                header: Some(node.header(rev)),
                                kv: Some(kv),
                            };
                            if out_tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    match rx.recv().await {
                        Some(HubMessage::Events { .. }) => continue,
                        _ => return,
                    }
                }
            };
            // The observer going away ends the task at once, whatever it waits for (the next
            // change of a quiet election may never come).
            tokio::select! {
                biased;
                _ = out_tx.closed() => {}
                _ = follow => {}
            }
            node.watch_hub().remove_stream(stream);
        });
        let responses =
            futures::stream::unfold(
                out_rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        Ok(Response::new(Box::pin(responses)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let (_, requester) = self.permit(
            &request,
            &leader_key_needs(request.get_ref().leader.as_ref()),
        )?;
        let leader = request.into_inner().leader.ok_or_else(not_leader)?;
        let rev = if_still_leader(&self.node, &leader, delete_op(&leader.key), &requester).await?;
        Ok(Response::new(ResignResponse {
            header: Some(self.node.header(rev)),
        }))
    }
}
