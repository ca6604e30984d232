//! The `v3electionpb.Election` service, run on the server with etcd's key layout and semantics.
//!
//! A candidate's key is `name/<lease in hex>` attached to its lease; the leader is the oldest key of
//! `name/`. `Campaign` queues the key (or re-uses it, proclaiming the new value) and waits until every
//! older candidate is gone, as `Lock` does. `Proclaim` and `Resign` act only while the key still is
//! the one the leader was given (same create revision). `Observe` streams the leader's value each time
//! it changes; a response is made only when the transport asks for the next one, so an observer
//! slower than the proclamations gets the leader as it is then (etcd queues every proclamation for
//! it in memory), and its response counts in the member's watch budget until the client takes it.
//!
//! As with `Lock`, lease 0 campaigns with a fresh lease of [`crate::limits::LOCK_SESSION_TTL_SECS`]
//! (etcd's server-side session), reported back in the leader key; a Proclaim or Resign with lease 0
//! gets one too (etcd runs them in a session as well: a proclaimed key moves to that lease, and a
//! resign's is left to expire). A campaign whose wait ends without leadership withdraws its key
//! (etcd resigns); its answer carries the header of the write that queued it, as etcd's does;
//! every write is proposed as the caller.

use super::access::cert_user;
use super::status;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::access::{Access, Caller};
use super::lock::{
    acquire_key, delete_op, if_created_at, queue_key, session_lease, wait_for_older, Acquired,
    Withdraw,
};
use super::validate::ValidationError;
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
use crate::watch::{HubMessage, StreamReceiver, WatchSpec, WatcherKey};

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

/// A Proclaim or Resign must name a key: etcd's txn on an empty one is refused as any txn
/// writing the empty key is ("key is not provided"), before its caller is looked at and whatever
/// the revision (etcd validates a txn before it runs it).
fn check_leader_key(leader: &LeaderKey) -> Result<(), Status> {
    if leader.key.is_empty() {
        return Err(ValidationError::EmptyKey.into());
    }
    Ok(())
}

/// Read and write access to the leader key a request names.
fn leader_key_needs(leader: &LeaderKey) -> Vec<Need> {
    Access::key_rw_needs(&leader.key)
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
        return Err(status::election_not_leader());
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

/// One Observe call: its election's watcher, and the leader it reported last.
struct Observer {
    node: Arc<Node>,
    name: Vec<u8>,
    rx: StreamReceiver,
    last: Option<(Vec<u8>, i64)>,
    /// The size of the response it made last: room for as much is held before the leader is read
    /// again, so observers waiting for room read nothing.
    last_size: usize,
    /// Removes the watcher when the call goes (the client left: its response stream is dropped).
    _watching: super::lock::WatchGuard,
}

impl Observer {
    /// The next response: the leader once it differs from the one reported last, made only when
    /// the transport asks for it and counted in the member's watch budget until the transport asks
    /// for the one after (the client took it). `None` when the watch ends; an error once the call
    /// was evicted for holding the spent budget while its client took nothing.
    async fn next_leader(&mut self) -> Option<Result<LeaderResponse, Status>> {
        loop {
            // The previous response is taken, and every change cued so far is seen by the read
            // below: the cues only say "read again".
            loop {
                match self.rx.try_recv() {
                    Ok(HubMessage::Events { .. }) => continue,
                    Ok(_) => return None,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                }
            }
            self.rx.delivered();
            if self.rx.is_evicted() {
                return Some(Err(super::status::watch_stream_evicted()));
            }
            let reserved = self.last_size.max(OBSERVE_LEAST_HOLD);
            if !self.rx.try_hold(reserved) {
                self.wait_for_room().await;
                continue;
            }
            if let Ok((Some(kv), rev)) = leader_kv(&self.node, &self.name).await {
                let now = (kv.key.clone(), kv.mod_revision);
                if self.last.as_ref() != Some(&now) {
                    let resp = LeaderResponse {
                        header: Some(self.node.header(rev)),
                        kv: Some(kv),
                    };
                    let size = prost::Message::encoded_len(&resp);
                    self.last_size = size;
                    if size > reserved && !self.rx.try_hold(size - reserved) {
                        // Larger than the room held: dropped, and read again once there is room
                        // for this size.
                        self.rx.delivered();
                        self.wait_for_room().await;
                        continue;
                    }
                    self.rx.hold_exactly(size);
                    self.last = Some(now);
                    return Some(Ok(resp));
                }
            }
            self.rx.delivered();
            // Wait for the next change.
            let evicted = self.rx.eviction();
            tokio::select! {
                biased;
                _ = evicted => {}
                cue = self.rx.recv() => match cue {
                    Some(HubMessage::Events { .. }) => {}
                    _ => return None,
                },
            }
        }
    }

    /// Wait until some of the budget may have come back, or a while, or eviction, reading nothing
    /// meanwhile.
    async fn wait_for_room(&self) {
        let (evicted, freed) = (self.rx.eviction(), self.rx.room_freed());
        tokio::select! {
            biased;
            _ = evicted => {}
            _ = freed => {}
            _ = crate::rt::sleep(crate::limits::WATCH_CATCHUP_INTERVAL) => {}
        }
    }
}

/// The least room an observer holds before reading the leader (a leader response without a value
/// is about this large).
const OBSERVE_LEAST_HOLD: usize = 256;

/// The bodies of the Election calls; [`Election`] below answers their errors as etcd does.
impl ElectionService {
    async fn serve_campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let mut needs = Access::prefix_needs(&[request.get_ref().name.as_slice(), b"/"].concat());
        needs.extend(self.access.lease_needs(request.get_ref().lease));
        let (caller, requester) = self.permit(&request, &needs)?;
        // An empty name is a name too: its keys are `/<lease>` (as etcd 3.5.1 serves it).
        let req = request.into_inner();
        let prefix = [req.name.as_slice(), b"/"].concat();
        let lease = session_lease(&self.node, req.lease).await?;
        let key = queue_key(&prefix, lease);
        let Acquired {
            rev,
            value,
            answered_at,
        } = acquire_key(&self.node, &key, &req.value, lease, &requester).await?;
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
        // As etcd's: the header of the txn that queued (or found) the key, whatever was written
        // while it waited or proclaimed.
        let header = Some(self.node.header(answered_at));
        Ok(Response::new(CampaignResponse {
            header,
            leader: Some(leader),
        }))
    }

    async fn serve_proclaim(
        &self,
        mut request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let Some(leader) = request.get_mut().leader.take() else {
            return Err(status::election_missing_leader_key());
        };
        check_leader_key(&leader)?;
        let (_, requester) = self.permit(&request, &leader_key_needs(&leader))?;
        let req = request.into_inner();
        // etcd proclaims through a session of the leader key's lease, a fresh one for lease 0:
        // the key then moves to that lease.
        let lease = session_lease(&self.node, leader.lease).await?;
        let rev = if_still_leader(
            &self.node,
            &leader,
            put_op(&leader.key, &req.value, lease),
            &requester,
        )
        .await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(self.node.header(rev)),
        }))
    }

    async fn serve_leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.permit(&request, &read_prefix(&request.get_ref().name))?;
        let (kv, rev) = leader_kv(&self.node, &request.into_inner().name).await?;
        let kv = kv.ok_or_else(status::election_no_leader)?;
        Ok(Response::new(LeaderResponse {
            header: Some(self.node.header(rev)),
            kv: Some(kv),
        }))
    }

    async fn serve_observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        self.permit(&request, &read_prefix(&request.get_ref().name))?;
        let end_connection = super::connection_ender(request.extensions());
        let name = request.into_inner().name;
        let prefix = [name.as_slice(), b"/"].concat();
        // Watch the whole election; each change is a cue to read the leader again.
        let (tx, rx) = self.node.watch_hub().stream_channel();
        tx.when_evicted(end_connection);
        let stream = self.node.watch_hub().new_stream();
        let spec = WatchSpec::all_changes(prefix.clone(), RangeEnd::Before(prefix_end(&prefix)));
        // The only watcher of its own stream: it cannot be refused.
        let _ = self.node.add_watcher(
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
        let observer = Observer {
            node: self.node.clone(),
            name,
            rx,
            last: None,
            last_size: 0,
            _watching: super::lock::WatchGuard::new(self.node.clone(), stream),
        };
        // A response is made only when the transport asks for one, so nothing queues behind a
        // client that does not take them: it gets the leader as it is then.
        let responses = futures::stream::unfold(Some(observer), |observer| async move {
            let mut observer = observer?;
            let answer = observer.next_leader().await?;
            let done = answer.is_err();
            let parts = futures::stream::iter([answer]).chain(super::watch::taken_first(!done));
            Some((parts, (!done).then_some(observer)))
        })
        .flatten();
        Ok(Response::new(Box::pin(responses)))
    }

    async fn serve_resign(
        &self,
        mut request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let Some(leader) = request.get_mut().leader.take() else {
            return Err(status::election_missing_leader_key());
        };
        check_leader_key(&leader)?;
        let (_, requester) = self.permit(&request, &leader_key_needs(&leader))?;
        // etcd resigns through a session too: for lease 0 one is granted (and left to expire).
        session_lease(&self.node, leader.lease).await?;
        // As etcd's: deletes the key only while it is still this leader's, and answers with the
        // header either way (a leader that lost its key has nothing left to resign).
        let t = if_created_at(
            &self.node,
            &leader.key,
            leader.rev,
            delete_op(&leader.key),
            &requester,
        )
        .await?;
        let rev = t.header.map(|h| h.revision).unwrap_or(0);
        Ok(Response::new(ResignResponse {
            header: Some(self.node.header(rev)),
        }))
    }
}

/// etcd serves Election through an in-process client, so every error reaches the caller as code
/// Unknown with etcd's text ([`super::status::through_client`]).
#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = ObserveStream;

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.serve_campaign(request)
            .await
            .map_err(super::status::through_client)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        self.serve_proclaim(request)
            .await
            .map_err(super::status::through_client)
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.serve_leader(request)
            .await
            .map_err(super::status::through_client)
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        self.serve_observe(request)
            .await
            .map_err(super::status::through_client)
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        self.serve_resign(request)
            .await
            .map_err(super::status::through_client)
    }
}
