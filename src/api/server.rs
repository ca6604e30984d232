//! Serving the client API: binds the listen addresses and runs the gRPC server until shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

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
use crate::node::Node;
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::metastore::peer_server::PeerServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;

/// A one-way shutdown signal shared by every listener.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(AtomicBool, Notify)>,
}

impl Shutdown {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise the signal: every waiter returns.
    pub fn trigger(&self) {
        self.inner.0.store(true, Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }

    /// Wait until the signal is raised.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.1.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.inner.0.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

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
fn client_router(node: &Arc<Node>, access: &Arc<Access>) -> tonic::transport::server::Router {
    let a = access;
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
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
    let access = Access::new(node.clone());
    serve_routers(|| client_router(&node, &access), addrs, shutdown, on_bound).await
}

/// Bind every address in `addrs`, report each bound address through `on_bound`, and serve other
/// members (the `metastore.Peer` service) until `shutdown` is raised.
pub async fn serve_peers(
    node: Arc<Node>,
    addrs: Vec<SocketAddr>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> std::io::Result<()> {
    serve_routers(|| peer_router(&node), addrs, shutdown, on_bound).await
}

/// Serve a router from `make_router` on every address until `shutdown`.
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
        #[cfg(not(madsim))]
        {
            use futures::StreamExt;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            on_bound(listener.local_addr()?);
            // Our own listener (to learn the bound port) bypasses the builder's TCP options: set
            // TCP_NODELAY here, or small trailing HTTP/2 frames wait out Nagle + delayed ACK (~40 ms).
            // Every connection goes through the `:authority` fix-up; one whose first request is
            // well-formed (peers always are) is passed through untouched after it.
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(|conn| conn.map(super::authority::AuthorityFix::new));
            tasks.push(crate::rt::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, async move { stop.wait().await })
                    .await
            }));
        }
        #[cfg(madsim)]
        {
            on_bound(*addr);
            let addr = *addr;
            tasks.push(crate::rt::spawn(async move {
                router
                    .serve_with_shutdown(addr, async move { stop.wait().await })
                    .await
            }));
        }
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
