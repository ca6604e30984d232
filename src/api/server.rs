//! Serving the client API and the peer service: binds the listen addresses and runs the gRPC
//! servers until shutdown. On the client port, HTTP/1.1 connections (health, metrics, the JSON
//! gateway) are told apart from gRPC by their first bytes and served by `api::http`;
//! `--listen-metrics-urls` listeners serve only HTTP; the peer port serves only gRPC. An
//! `https://` client or peer listener completes a TLS handshake (`net::tls`) on each connection
//! first.

use std::net::SocketAddr;
use std::sync::Arc;

use super::access::Access;
use super::auth::AuthService;
use super::cluster::ClusterService;
use super::election::ElectionService;
use super::kv::KvService;
use super::lease::LeaseService;
use super::lock::LockService;
use super::maintenance::MaintenanceService;
use super::peer::PeerService;
use super::watch::WatchService;
use crate::limits;
#[cfg(not(madsim))]
use crate::net::conn_limit::{Admitted, ConnectionLimit};
#[cfg(not(madsim))]
use crate::net::listen::{accept_next, bind_listeners, handshake, BoundListener};
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

/// The client-facing router: with the layer that counts large answers until they are taken.
#[cfg(not(madsim))]
type ClientRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<
        super::grpc_metrics::CountLayer,
        tower::layer::util::Stack<
            super::held_body::HoldLayer,
            tower::layer::util::Stack<
                crate::net::write_gate::GateLayer,
                tower::layer::util::Identity,
            >,
        >,
    >,
>;
/// The simulator's transport hands messages over whole: no layer.
#[cfg(madsim)]
type ClientRouter = tonic::transport::server::Router;

/// Every client-facing service over `node`, in one router; all share `access` (one token table
/// per member, whichever address a client uses).
fn client_router(node: &Arc<Node>, access: &Arc<Access>) -> ClientRouter {
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
    // as etcd's go-grpc-prometheus counts it (`api::grpc_metrics`).
    #[cfg(not(madsim))]
    let mut builder = builder
        .layer(crate::net::write_gate::GateLayer)
        .layer(super::held_body::layer())
        .layer(super::grpc_metrics::CountLayer::new(node.metrics().clone()));
    #[cfg(madsim)]
    let mut builder = builder;
    builder
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
fn peer_router(node: &Arc<Node>) -> tonic::transport::server::Router {
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
    #[cfg(not(madsim))]
    {
        let listeners = bind_listeners(addrs.into_iter().map(|addr| (addr, None)).collect())?;
        serve_clients(node, listeners, shutdown, on_bound).await
    }
    #[cfg(madsim)]
    {
        let access = Access::new(node.clone());
        serve_routers(|| client_router(&node, &access), addrs, shutdown, on_bound).await
    }
}

/// Serve the client API (gRPC and HTTP/1.1) on every bound listener, reporting each address
/// through `on_bound` as it starts accepting, until `shutdown` is raised; a listener with a TLS
/// configuration serves inside TLS (`net::tls`).
#[cfg(not(madsim))]
pub async fn serve_clients(
    node: Arc<Node>,
    listeners: Vec<BoundListener>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    // One token table per member, whichever address or protocol a client uses.
    let access = Access::new(node.clone());
    for BoundListener { listener, tls } in listeners {
        on_bound(listener.local_addr()?);
        let http =
            super::http::HttpApi::new(node.clone(), access.clone(), super::http::Scope::Client);
        tasks.push(crate::rt::spawn(serve_client_listener(
            listener,
            node.config().grpc_keepalive_min_time,
            tls.map(tokio_rustls::TlsAcceptor::from),
            client_router(&node, &access),
            http,
            shutdown.clone(),
        )));
    }
    join_all(tasks).await
}

/// Serve `/metrics` and `/health` over HTTP/1.1 on every bound listener (etcd's
/// `--listen-metrics-urls`, plain HTTP), reporting each address through `on_bound` as it starts
/// accepting, until `shutdown` is raised.
#[cfg(not(madsim))]
pub async fn serve_metrics(
    node: Arc<Node>,
    listeners: Vec<BoundListener>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    for BoundListener { listener, .. } in listeners {
        on_bound(listener.local_addr()?);
        let http = super::http::HttpApi::new(
            node.clone(),
            Access::new(node.clone()),
            super::http::Scope::MetricsOnly,
        );
        let stop = shutdown.clone();
        tasks.push(crate::rt::spawn(async move {
            while let Some(stream) = accept_next(&listener, &stop).await {
                let Some(slot) = ConnectionLimit::clients().admit() else {
                    continue;
                };
                let conn = Admitted::new(stream, slot);
                crate::rt::spawn(http.clone().serve_connection(conn, stop.clone()));
            }
            Ok(())
        }));
    }
    join_all(tasks).await
}

/// Serve gRPC and HTTP/1.1 on one client listener: each accepted connection's first bytes say
/// which (see `api::http::sniff`); gRPC connections go to `router` through the `:authority`
/// fix-up, the others to `http`.
#[cfg(not(madsim))]
async fn serve_client_listener(
    listener: tokio::net::TcpListener,
    ping_min_interval: std::time::Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: ClientRouter,
    http: Arc<super::http::HttpApi>,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    use super::http::{sniff, Prefixed, Protocol};
    use crate::net::authority::AuthorityFix;
    use crate::net::tls::ServerStream;
    use futures::SinkExt;

    use crate::net::write_gate::Gated;
    type GrpcConn = Gated<AuthorityFix<Prefixed<Admitted<ServerStream>>>>;
    let (grpc_tx, grpc_rx) =
        futures::channel::mpsc::channel::<std::io::Result<GrpcConn>>(limits::CLIENT_ACCEPT_QUEUE);
    let stop = shutdown.clone();
    let acceptor = crate::rt::spawn(async move {
        while let Some(stream) = accept_next(&listener, &stop).await {
            // Dropped (closed) at once when every slot is taken.
            let Some(slot) = ConnectionLimit::clients().admit() else {
                continue;
            };
            let mut grpc_tx = grpc_tx.clone();
            let http = http.clone();
            let stop = stop.clone();
            let tls = tls.clone();
            // The handshake and sniffing wait for the client: never in the accept loop.
            crate::rt::spawn(async move {
                let Some(stream) = handshake(stream, tls.as_ref()).await else {
                    return;
                };
                let mut stream = Admitted::new(stream, slot);
                let sniffed =
                    crate::rt::timeout(limits::CLIENT_SNIFF_TIMEOUT, sniff(&mut stream)).await;
                match sniffed {
                    Ok(Ok((Protocol::Grpc, seen))) => {
                        // Every gRPC connection goes through the `:authority` fix-up; one whose
                        // first request is well-formed is passed through untouched after it.
                        let conn = Gated::new(AuthorityFix::with_ping_policy(
                            Prefixed::new(seen, stream),
                            ping_min_interval,
                        ));
                        let _ = grpc_tx.send(Ok(conn)).await;
                    }
                    Ok(Ok((Protocol::Http1, seen))) => {
                        http.serve_connection(Prefixed::new(seen, stream), stop)
                            .await;
                    }
                    Ok(Err(_)) | Err(crate::rt::Elapsed) => {}
                }
            });
        }
    });
    let stop = shutdown.clone();
    let served = router
        .serve_with_incoming_shutdown(grpc_rx, async move { stop.wait().await })
        .await;
    acceptor.abort();
    served
}

/// Bind every address in `addrs`, report each bound address through `on_bound`, and serve other
/// members (the `metastore.Peer` service) until `shutdown` is raised.
pub async fn serve_peers(
    node: Arc<Node>,
    addrs: Vec<SocketAddr>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    #[cfg(not(madsim))]
    {
        let listeners = bind_listeners(addrs.into_iter().map(|addr| (addr, None)).collect())?;
        serve_peer_listeners(node, listeners, shutdown, on_bound).await
    }
    #[cfg(madsim)]
    {
        serve_routers(|| peer_router(&node), addrs, shutdown, on_bound).await
    }
}

/// Serve other members on every bound peer listener, reporting each address through `on_bound`
/// as it starts accepting, until `shutdown` is raised; a listener with a TLS configuration
/// (`--peer-cert-file` ...) serves inside TLS.
#[cfg(not(madsim))]
pub async fn serve_peer_listeners(
    node: Arc<Node>,
    listeners: Vec<BoundListener>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    for BoundListener { listener, tls } in listeners {
        on_bound(listener.local_addr()?);
        tasks.push(crate::rt::spawn(serve_peer_listener(
            listener,
            tls.map(tokio_rustls::TlsAcceptor::from),
            peer_router(&node),
            shutdown.clone(),
        )));
    }
    join_all(tasks).await
}

/// Serve the peer service on one listener: each accepted connection (after its TLS handshake, on
/// an `https://` listener) goes to `router`. Peers speak only gRPC: nothing is sniffed.
#[cfg(not(madsim))]
async fn serve_peer_listener(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: tonic::transport::server::Router,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    use crate::net::authority::AuthorityFix;
    use crate::net::tls::ServerStream;
    use futures::SinkExt;

    let (conn_tx, conn_rx) = futures::channel::mpsc::channel::<
        std::io::Result<AuthorityFix<Admitted<ServerStream>>>,
    >(limits::PEER_ACCEPT_QUEUE);
    let stop = shutdown.clone();
    let acceptor = crate::rt::spawn(async move {
        while let Some(stream) = accept_next(&listener, &stop).await {
            let Some(slot) = ConnectionLimit::peers().admit() else {
                continue;
            };
            let mut conn_tx = conn_tx.clone();
            let tls = tls.clone();
            // A handshake waits for the peer: never in the accept loop.
            crate::rt::spawn(async move {
                if let Some(stream) = handshake(stream, tls.as_ref()).await {
                    // Every connection goes through the `:authority` fix-up; one whose first
                    // request is well-formed (peers always are) is passed through untouched.
                    let stream = Admitted::new(stream, slot);
                    let _ = conn_tx.send(Ok(AuthorityFix::new(stream))).await;
                }
            });
        }
    });
    let stop = shutdown.clone();
    let served = router
        .serve_with_incoming_shutdown(conn_rx, async move { stop.wait().await })
        .await;
    acceptor.abort();
    served
}

/// Serve a router from `make_router` on every address until `shutdown` (the simulator's
/// transport, which binds by address itself).
#[cfg(madsim)]
async fn serve_routers(
    make_router: impl Fn() -> tonic::transport::server::Router,
    addrs: Vec<SocketAddr>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    for addr in &addrs {
        let router = make_router();
        let stop = shutdown.clone();
        on_bound(*addr);
        let addr = *addr;
        tasks.push(crate::rt::spawn(async move {
            router
                .serve_with_shutdown(addr, async move { stop.wait().await })
                .await
        }));
    }
    join_all(tasks).await
}

async fn join_all(
    tasks: Vec<crate::rt::JoinHandle<Result<(), tonic::transport::Error>>>,
) -> std::io::Result<()> {
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(std::io::Error::other(e)),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    Ok(())
}
