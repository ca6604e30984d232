//! Serving the client API and the peer service: the gRPC routers (etcd's services and their
//! layers, the peer service) and the HTTP/1.1 side (`api::http`) each port serves, handed to
//! `net::serve`, which accepts connections and tells gRPC from HTTP/1.1 on the client port.
//! `--listen-metrics-urls` listeners serve only HTTP; the peer port serves only gRPC.

use std::net::SocketAddr;
use std::sync::Arc;

use super::access::Access;
use super::auth::AuthService;
use super::cluster::ClusterService;
use super::election::ElectionService;
use super::http::{HttpApi, Scope};
use super::kv::KvService;
use super::lease::LeaseService;
use super::lock::LockService;
use super::maintenance::MaintenanceService;
use super::peer::PeerService;
use super::watch::WatchService;
use crate::limits;
use crate::net::serve::{self, Bound, GrpcRouter, ListenUrl};
use crate::node::Node;
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::grpc_health::health_server::HealthServer;
use crate::pb::metastore::peer_server::PeerServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::rt::Shutdown;

/// The KV service with etcd's message size limits (the simulator's transport ignores them; the
/// node's own encoded-size check still applies there).
macro_rules! kv_server {
    ($node:expr, $access:expr) => {
        KvServer::new(KvService::new($node.clone(), $access.clone()))
            .max_decoding_message_size(
                $node.config().max_request_bytes + limits::GRPC_OVERHEAD_BYTES,
            )
            .max_encoding_message_size(limits::MAX_RESPONSE_BYTES)
    };
}

/// Every client-facing service over `node`, in one router; all share `access` (one token table
/// per member, whichever address a client uses).
fn client_router(node: &Arc<Node>, access: &Arc<Access>) -> impl GrpcRouter {
    let a = access;
    let config = node.config();
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        // etcd's keepalive: a silent connection is pinged, and closed if the ping goes unanswered
        // (a half-open client's streams and watchers go with it).
        .http2_keepalive_interval(Some(config.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout));
    // Responses wait while their connection's socket is full (`net::write_gate`, outermost, so
    // that a large answer is not asked for its next piece either); large answers are counted
    // until their client has taken them (`api::held_body`); innermost, every call is counted
    // as etcd's go-grpc-prometheus counts it (`api::grpc_metrics`). The simulator's transport
    // hands messages over whole and takes no layers.
    builder
        .layer(crate::net::GateLayer)
        .layer(super::held_body::layer())
        .layer(super::grpc_metrics::CountLayer::new(node.metrics().clone()))
        .add_service(kv_server!(node, a))
        .add_service(WatchServer::new(WatchService::new(node.clone(), a.clone())))
        .add_service(LeaseServer::new(LeaseService::new(node.clone(), a.clone())))
        .add_service(LockServer::new(LockService::new(node.clone(), a.clone())))
        .add_service(ElectionServer::new(ElectionService::new(
            node.clone(),
            a.clone(),
        )))
        .add_service(ClusterServer::new(ClusterService::new(
            node.clone(),
            a.clone(),
        )))
        .add_service(MaintenanceServer::new(MaintenanceService::new(
            node.clone(),
            a.clone(),
        )))
        .add_service(AuthServer::new(AuthService::new(node.clone(), a.clone())))
        .add_service(HealthServer::new(super::grpc_health::HealthService))
}

/// The member-to-member service over `node`.
fn peer_router(node: &Arc<Node>) -> impl GrpcRouter {
    let service = PeerServer::new(PeerService::new(node.clone()))
        .max_decoding_message_size(limits::PEER_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(limits::PEER_MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder().add_service(service)
}

/// Bind every address in `addrs`, report each bound address through `on_bound`, and serve the
/// client API until `shutdown` is raised. Returns once all listeners have stopped.
pub async fn serve(
    node: Arc<Node>,
    addrs: Vec<SocketAddr>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let listeners = serve::bind(addrs.into_iter().map(ListenUrl::plain).collect())?;
    serve_clients(node, listeners, shutdown, on_bound).await
}

/// Serve the client API (gRPC and HTTP/1.1) on every bound listener, reporting each address
/// through `on_bound` as it starts accepting, until `shutdown` is raised; a listener with a TLS
/// configuration serves inside TLS (`net::tls`).
pub async fn serve_clients(
    node: Arc<Node>,
    listeners: Vec<Bound>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    // One token table per member, whichever address or protocol a client uses.
    let access = Access::new(node.clone());
    let service = || {
        let http = HttpApi::new(node.clone(), access.clone(), Scope::Client);
        (client_router(&node, &access), http)
    };
    let ping_min_interval = node.config().grpc_keepalive_min_time;
    serve::serve_clients(listeners, ping_min_interval, service, shutdown, on_bound).await
}

/// Serve `/metrics` and `/health` over HTTP/1.1 on every bound listener (etcd's
/// `--listen-metrics-urls`, plain HTTP), reporting each address through `on_bound` as it starts
/// accepting, until `shutdown` is raised.
pub async fn serve_metrics(
    node: Arc<Node>,
    listeners: Vec<Bound>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let service = || HttpApi::new(node.clone(), Access::new(node.clone()), Scope::MetricsOnly);
    serve::serve_http1(listeners, service, shutdown, on_bound).await
}

/// Bind every address in `addrs`, report each bound address through `on_bound`, and serve other
/// members (the `metastore.Peer` service) until `shutdown` is raised.
pub async fn serve_peers(
    node: Arc<Node>,
    addrs: Vec<SocketAddr>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let listeners = serve::bind(addrs.into_iter().map(ListenUrl::plain).collect())?;
    serve_peer_listeners(node, listeners, shutdown, on_bound).await
}

/// Serve other members on every bound peer listener, reporting each address through `on_bound`
/// as it starts accepting, until `shutdown` is raised; a listener with a TLS configuration
/// (`--peer-cert-file` ...) serves inside TLS.
pub async fn serve_peer_listeners(
    node: Arc<Node>,
    listeners: Vec<Bound>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    serve::serve_peers(listeners, || peer_router(&node), shutdown, on_bound).await
}
