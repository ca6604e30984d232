//! The gateway's calls: a parsed request handed to the same tonic service implementation a gRPC
//! client reaches (so validation, limits and auth apply identically), its answer as JSON.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde::Serialize;
use tonic::{Request, Status};

use super::super::access::Access;
use super::super::auth::AuthService;
use super::super::cluster::ClusterService;
use super::super::election::ElectionService;
use super::super::kv::{HeldAnswer, KvService};
use super::super::lease::LeaseService;
use super::super::lock::LockService;
use super::super::maintenance::MaintenanceService;
use super::super::watch::WatchService;
use crate::node::send_budget::Held;
use crate::node::Node;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3lockpb::lock_server::Lock;

use super::GatewayRequest;
use crate::api::json::to_json;
/// `response` as JSON, still counted as its handler counted it (its count follows the JSON's
/// size).
fn held_json<T: Serialize>(mut response: tonic::Response<T>) -> Reply {
    let held = response
        .extensions_mut()
        .remove::<HeldAnswer>()
        .and_then(HeldAnswer::into_held);
    let json = to_json(response.get_ref());
    drop(response);
    match held {
        Some(mut held) => {
            held.resize(json.len());
            Reply::Held(json, held)
        }
        None => Reply::Unary(json),
    }
}

/// A streamed response: one JSON object per message.
pub type JsonStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Status>> + Send + 'static>>;

/// What a call produced.
pub enum Reply {
    /// A unary method's response message, as JSON.
    Unary(Vec<u8>),
    /// A large one, with what the send budget counts for it (`node::send_budget`): held from
    /// its read until the client has taken the JSON.
    Held(Vec<u8>, Held),
    /// A streaming method's responses, each as JSON (unwrapped: `api::http` frames them).
    Stream(JsonStream),
}

/// The services the gateway calls, over one member.
pub struct Services {
    kv: KvService,
    lease: LeaseService,
    watch: WatchService,
    maintenance: MaintenanceService,
    cluster: ClusterService,
    lock: LockService,
    election: ElectionService,
    auth: AuthService,
}

impl Services {
    /// The services over `node`, checking callers with `access` (the member's token table).
    pub fn new(node: Arc<Node>, access: Arc<Access>) -> Self {
        Self {
            kv: KvService::new(node.clone(), access.clone()),
            lease: LeaseService::new(node.clone(), access.clone()),
            watch: WatchService::new(node.clone(), access.clone()),
            maintenance: MaintenanceService::new(node.clone(), access.clone()),
            cluster: ClusterService::new(node.clone(), access.clone()),
            lock: LockService::new(node.clone(), access.clone()),
            election: ElectionService::new(node.clone(), access.clone()),
            auth: AuthService::new(node, access),
        }
    }

    /// Call a unary method.
    pub async fn call(&self, req: GatewayRequest, token: Option<&str>) -> Result<Reply, Status> {
        use GatewayRequest as G;
        let json = match req {
            G::Range(m) => return Ok(held_json(self.kv.range(with_token(m, token)).await?)),
            G::Put(m) => to_json(&self.kv.put(with_token(m, token)).await?.into_inner()),
            G::DeleteRange(m) => to_json(
                &self
                    .kv
                    .delete_range(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Txn(m) => return Ok(held_json(self.kv.txn(with_token(m, token)).await?)),
            G::Compaction(m) => to_json(&self.kv.compact(with_token(m, token)).await?.into_inner()),
            G::LeaseGrant(m) => to_json(
                &self
                    .lease
                    .lease_grant(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::LeaseRevoke(m) => to_json(
                &self
                    .lease
                    .lease_revoke(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::LeaseTimeToLive(m) => to_json(
                &self
                    .lease
                    .lease_time_to_live(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::LeaseLeases(m) => to_json(
                &self
                    .lease
                    .lease_leases(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Status(m) => to_json(
                &self
                    .maintenance
                    .status(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Alarm(m) => to_json(
                &self
                    .maintenance
                    .alarm(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Defragment(m) => to_json(
                &self
                    .maintenance
                    .defragment(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::MemberList(m) => to_json(
                &self
                    .cluster
                    .member_list(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::MemberAdd(m) => to_json(
                &self
                    .cluster
                    .member_add(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::MemberRemove(m) => to_json(
                &self
                    .cluster
                    .member_remove(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::MemberUpdate(m) => to_json(
                &self
                    .cluster
                    .member_update(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::MemberPromote(m) => to_json(
                &self
                    .cluster
                    .member_promote(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Authenticate(m) => to_json(
                &self
                    .auth
                    .authenticate(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Hash(m) => to_json(
                &self
                    .maintenance
                    .hash(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::MoveLeader(m) => to_json(
                &self
                    .maintenance
                    .move_leader(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Lock(m) => to_json(&self.lock.lock(with_token(m, token)).await?.into_inner()),
            G::Unlock(m) => to_json(&self.lock.unlock(with_token(m, token)).await?.into_inner()),
            G::Campaign(m) => to_json(
                &self
                    .election
                    .campaign(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Proclaim(m) => to_json(
                &self
                    .election
                    .proclaim(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Leader(m) => to_json(
                &self
                    .election
                    .leader(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Resign(m) => to_json(
                &self
                    .election
                    .resign(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Auth(m) => m.call(&self.auth, token).await?,
            G::HashKv(m) => to_json(
                &self
                    .maintenance
                    .hash_kv(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Downgrade(m) => to_json(
                &self
                    .maintenance
                    .downgrade(with_token(m, token))
                    .await?
                    .into_inner(),
            ),
            G::Observe(m) => {
                let responses = self
                    .election
                    .observe(with_token(m, token))
                    .await?
                    .into_inner();
                return Ok(Reply::Stream(Box::pin(
                    responses.map(|r| r.map(|m| to_json(&m))),
                )));
            }
            G::Watch(reqs) => {
                let stream = futures::stream::iter(reqs.into_iter().map(Ok));
                return self.watch_stream(stream.boxed(), token).await;
            }
            G::LeaseKeepAlive(reqs) => {
                let stream = futures::stream::iter(reqs.into_iter().map(Ok));
                return self.keep_alive_stream(stream.boxed(), token).await;
            }
        };
        Ok(Reply::Unary(json))
    }

    /// Open a watch stream fed by `requests`.
    pub async fn watch_stream(
        &self,
        requests: futures::stream::BoxStream<'static, Result<WatchRequest, Status>>,
        token: Option<&str>,
    ) -> Result<Reply, Status> {
        let responses = self
            .watch
            .watch_requests(with_token(requests, token))
            .await?
            .into_inner();
        Ok(Reply::Stream(Box::pin(
            responses.map(|r| r.map(|m| to_json(&m))),
        )))
    }

    /// Open a keep-alive stream fed by `requests`.
    pub async fn keep_alive_stream(
        &self,
        requests: futures::stream::BoxStream<'static, Result<LeaseKeepAliveRequest, Status>>,
        token: Option<&str>,
    ) -> Result<Reply, Status> {
        let responses = self
            .lease
            .keep_alive_requests(with_token(requests, token))
            .await?
            .into_inner();
        Ok(Reply::Stream(Box::pin(
            responses.map(|r| r.map(|m| to_json(&m))),
        )))
    }
}

/// A request carrying the client's `Authorization` header as the gRPC metadata `token`, where
/// etcd's auth looks for it.
pub(super) fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(msg);
    if let Some(value) = token.and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("token", value);
    }
    request
}
