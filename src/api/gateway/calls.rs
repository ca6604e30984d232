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
use crate::pb::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};

use super::GatewayRequest;
use crate::api::json::to_json;
/// `response` as JSON, still counted as its handler counted it (its count follows the JSON's
/// size).
pub(super) fn held_json<T: Serialize>(mut response: tonic::Response<T>) -> Reply {
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
    pub(super) kv: KvService,
    pub(super) lease: LeaseService,
    pub(super) watch: WatchService,
    pub(super) maintenance: MaintenanceService,
    pub(super) cluster: ClusterService,
    pub(super) lock: LockService,
    pub(super) election: ElectionService,
    pub(super) auth: AuthService,
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

    /// Call the method `request`'s route names (see `gateway_routes!`): its answer as JSON, or
    /// the stream of its answers.
    pub async fn call(
        &self,
        request: GatewayRequest,
        token: Option<&str>,
    ) -> Result<Reply, Status> {
        super::call_route(self, request, token).await
    }

    /// Open a watch stream fed by `requests`.
    pub async fn watch_stream(
        &self,
        requests: futures::stream::BoxStream<'static, Result<WatchRequest, Status>>,
        token: Option<&str>,
    ) -> Result<Reply, Status> {
        let responses = self.watch.watch_requests(with_token(requests, token));
        Ok(json_stream(responses.await?.into_inner()))
    }

    /// Open a keep-alive stream fed by `requests`.
    pub async fn keep_alive_stream(
        &self,
        requests: futures::stream::BoxStream<'static, Result<LeaseKeepAliveRequest, Status>>,
        token: Option<&str>,
    ) -> Result<Reply, Status> {
        let responses = self.lease.keep_alive_requests(with_token(requests, token));
        Ok(json_stream(responses.await?.into_inner()))
    }
}

/// A stream of responses, each as JSON.
pub(super) fn json_stream<T, S>(responses: S) -> Reply
where
    T: Serialize,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    Reply::Stream(Box::pin(responses.map(|r| r.map(|m| to_json(&m)))))
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
