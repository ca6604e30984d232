//! Serving the member's ports, in both worlds. Outside the simulator, on the sockets `listen`
//! bound: a client port's connections complete their TLS handshake, then their first bytes
//! (`sniff`) send them to the gRPC router (through the `:authority` fix-up and the write gate) or
//! to the HTTP/1.1 service; a metrics port serves HTTP/1.1 only; a peer port gRPC only. In the
//! simulator, madsim's transport binds each address itself and hands messages over whole: a
//! router is served by address, and no HTTP/1.1 connection exists.
//!
//! The services are the API's (`api::server` builds the routers, `api::http` the HTTP/1.1 side);
//! this room knows them only as a [`GrpcRouter`] and an [`Http1Service`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config;
use crate::rt::Shutdown;

/// A listen address and, for an `https://` URL, the TLS configuration its connections are served
/// in.
pub struct ListenUrl {
    addr: SocketAddr,
    #[cfg(not(madsim))]
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl ListenUrl {
    /// A plain (`http://`) listener on `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            #[cfg(not(madsim))]
            tls: None,
        }
    }
}

/// The listeners of a comma-separated URL list, each `https://` one with its TLS configuration
/// (an error, as etcd's, when such a URL has no certificate). The simulator's transport has no
/// TLS: there every URL is served plain.
pub fn listen_urls(
    urls: &str,
    tls: &config::TlsFlags,
    port: config::TlsPort,
) -> Result<Vec<ListenUrl>, String> {
    let mut listeners = Vec::new();
    for (addr, https) in config::parse_tls_urls(urls).map_err(|e| e.to_string())? {
        #[cfg(not(madsim))]
        let listener = ListenUrl {
            addr,
            tls: match https {
                true => Some(
                    tls.server_config(port, &format!("https://{addr}"))
                        .map_err(|e| e.to_string())?,
                ),
                false => None,
            },
        };
        #[cfg(madsim)]
        let listener = {
            let _ = (https, tls, port);
            ListenUrl::plain(addr)
        };
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A listener ready to serve: outside the simulator, a socket bound (before the member opens its
/// store: a client connecting meanwhile waits in the kernel's queue); in it, an address the
/// transport binds once serving starts.
pub struct Bound {
    #[cfg(not(madsim))]
    inner: super::listen::BoundListener,
    #[cfg(madsim)]
    addr: SocketAddr,
}

impl Bound {
    /// The address served (the port the OS chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        #[cfg(not(madsim))]
        return self.inner.local_addr();
        #[cfg(madsim)]
        return Ok(self.addr);
    }
}

/// Bind every listener without serving any yet; a port in use is an error naming it.
pub fn bind(urls: Vec<ListenUrl>) -> io::Result<Vec<Bound>> {
    #[cfg(not(madsim))]
    return Ok(
        super::listen::bind_listeners(urls.into_iter().map(|u| (u.addr, u.tls)).collect())?
            .into_iter()
            .map(|inner| Bound { inner })
            .collect(),
    );
    #[cfg(madsim)]
    return Ok(urls.into_iter().map(|u| Bound { addr: u.addr }).collect());
}

/// A gRPC router the member serves: tonic's `Router`, whatever its layers.
pub trait GrpcRouter {
    /// Serve the connections `incoming` yields until `stop` is raised.
    #[cfg(not(madsim))]
    fn serve_incoming<IO>(
        self,
        incoming: futures::channel::mpsc::Receiver<io::Result<IO>>,
        stop: Shutdown,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send
    where
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static;

    /// Serve `addr` (the simulator's transport binds it) until `stop` is raised.
    #[cfg(madsim)]
    fn serve_addr(
        self,
        addr: SocketAddr,
        stop: Shutdown,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send;
}

#[cfg(not(madsim))]
impl<L, ResBody> GrpcRouter for tonic::transport::server::Router<L>
where
    L: tower::Layer<tonic::service::Routes> + Send + Sync + 'static,
    L::Service: tower::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<ResBody>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Error:
        Into<tonic::codegen::StdError> + Send,
    ResBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    fn serve_incoming<IO>(
        self,
        incoming: futures::channel::mpsc::Receiver<io::Result<IO>>,
        stop: Shutdown,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send
    where
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        self.serve_with_incoming_shutdown(incoming, async move { stop.wait().await })
    }
}

#[cfg(madsim)]
impl<L: Send + 'static> GrpcRouter for tonic::transport::server::Router<L> {
    fn serve_addr(
        self,
        addr: SocketAddr,
        stop: Shutdown,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + Send {
        self.serve_with_shutdown(addr, async move { stop.wait().await })
    }
}

/// A client connection that speaks HTTP/1.1, its first bytes put back in front.
#[cfg(not(madsim))]
pub type Http1Conn = super::sniff::Prefixed<super::conn_limit::Admitted<super::tls::ServerStream>>;

/// The simulator's transport carries no HTTP/1.1: no such connection can be made there.
#[cfg(madsim)]
pub enum Http1Conn {}

/// The HTTP/1.1 side of a port: health, metrics and the JSON gateway (`api::http`).
pub trait Http1Service: Send + Sync + 'static {
    /// Serve `conn` until its client leaves or `stop` is raised.
    fn serve_http1(
        self: Arc<Self>,
        conn: Http1Conn,
        stop: Shutdown,
    ) -> impl Future<Output = ()> + Send;
}

/// Serve the client API on every listener, reporting each address through `on_bound` as it starts
/// accepting, until `shutdown` is raised. `service` makes each listener's gRPC router and
/// HTTP/1.1 side; `ping_min_interval` is the least time between a client's pings
/// (`--grpc-keepalive-min-time`). Returns when every listener has stopped, or the first error.
pub async fn serve_clients<R: GrpcRouter, H: Http1Service>(
    listeners: Vec<Bound>,
    ping_min_interval: Duration,
    mut service: impl FnMut() -> (R, Arc<H>),
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> io::Result<()> {
    serve_each(listeners, on_bound, |listener| {
        let (router, http) = service();
        world::serve_client_listener(listener, ping_min_interval, router, http, shutdown.clone())
    })
    .await
}

/// Serve HTTP/1.1 only (etcd's `--listen-metrics-urls`: `/metrics` and `/health`, plain HTTP) on
/// every listener, reporting each address through `on_bound`, until `shutdown` is raised. In the
/// simulator, which has no HTTP/1.1, the listeners are reported and nothing is served.
pub async fn serve_http1<H: Http1Service>(
    listeners: Vec<Bound>,
    mut service: impl FnMut() -> Arc<H>,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> io::Result<()> {
    serve_each(listeners, on_bound, |listener| {
        world::serve_http1_listener(listener, service(), shutdown.clone())
    })
    .await
}

/// Serve other members (`make_router`'s router, the `metastore.Peer` service) on every listener,
/// reporting each address through `on_bound`, until `shutdown` is raised.
pub async fn serve_peers<R: GrpcRouter>(
    listeners: Vec<Bound>,
    mut make_router: impl FnMut() -> R,
    shutdown: Shutdown,
    on_bound: impl Fn(SocketAddr),
) -> io::Result<()> {
    serve_each(listeners, on_bound, |listener| {
        world::serve_peer_listener(listener, make_router(), shutdown.clone())
    })
    .await
}

/// Report each listener's address through `on_bound` and start `serve` on it; then wait for every
/// listener's serving to end. The first error ends the rest.
async fn serve_each<F>(
    listeners: Vec<Bound>,
    on_bound: impl Fn(SocketAddr),
    mut serve: impl FnMut(Bound) -> F,
) -> io::Result<()>
where
    F: Future<Output = Result<(), tonic::transport::Error>>,
{
    let mut serving = Vec::new();
    for listener in listeners {
        on_bound(listener.local_addr()?);
        serving.push(Box::pin(serve(listener)));
    }
    futures::future::try_join_all(serving)
        .await
        .map(|_| ())
        .map_err(io::Error::other)
}

#[cfg(not(madsim))]
use real as world;
#[cfg(madsim)]
use simulated as world;

/// The accept loops on real sockets.
#[cfg(not(madsim))]
mod real {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::SinkExt;

    use super::{Bound, GrpcRouter, Http1Service};
    use crate::limits;
    use crate::net::authority::AuthorityFix;
    use crate::net::coalesce::Coalesced;
    use crate::net::conn_limit::{Admitted, ConnectionLimit};
    use crate::net::listen::{accept_next, handshake, BoundListener};
    use crate::net::sniff::{sniff, Prefixed, Protocol};
    use crate::net::tls::ServerStream;
    use crate::net::write_gate::Gated;
    use crate::rt::{self, Shutdown};

    /// Serve gRPC and HTTP/1.1 on one client listener: each accepted connection's first bytes
    /// say which; gRPC connections go to `router` through the `:authority` fix-up, the others to
    /// `http`.
    pub(super) async fn serve_client_listener<R: GrpcRouter, H: Http1Service>(
        bound: Bound,
        ping_min_interval: Duration,
        router: R,
        http: Arc<H>,
        shutdown: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        type GrpcConn = Coalesced<Gated<AuthorityFix<Prefixed<Admitted<ServerStream>>>>>;
        let BoundListener { listener, tls } = bound.inner;
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let (grpc_tx, grpc_rx) = futures::channel::mpsc::channel::<std::io::Result<GrpcConn>>(
            limits::CLIENT_ACCEPT_QUEUE,
        );
        let stop = shutdown.clone();
        let acceptor = rt::spawn(async move {
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
                rt::spawn(async move {
                    let Some(stream) = handshake(stream, tls.as_ref()).await else {
                        return;
                    };
                    let mut stream = Admitted::new(stream, slot);
                    let sniffed =
                        rt::timeout(limits::CLIENT_SNIFF_TIMEOUT, sniff(&mut stream)).await;
                    match sniffed {
                        Ok(Ok((Protocol::Grpc, seen))) => {
                            // Every gRPC connection goes through the `:authority` fix-up; one
                            // whose first request is well-formed is passed through untouched
                            // after it.
                            // Outside the write gate: the gate sees the socket's writes, not
                            // the yields that gather them.
                            let conn = Coalesced::new(Gated::new(AuthorityFix::with_ping_policy(
                                Prefixed::new(seen, stream),
                                ping_min_interval,
                            )));
                            let _ = grpc_tx.send(Ok(conn)).await;
                        }
                        Ok(Ok((Protocol::Http1, seen))) => {
                            http.serve_http1(Prefixed::new(seen, stream), stop).await;
                        }
                        Ok(Err(_)) | Err(rt::Elapsed) => {}
                    }
                });
            }
        });
        let served = router.serve_incoming(grpc_rx, shutdown).await;
        acceptor.abort();
        served
    }

    /// Serve HTTP/1.1 only on one listener (plain: metrics listeners have no TLS).
    pub(super) async fn serve_http1_listener<H: Http1Service>(
        bound: Bound,
        http: Arc<H>,
        stop: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        while let Some(stream) = accept_next(&bound.inner.listener, &stop).await {
            let Some(slot) = ConnectionLimit::clients().admit() else {
                continue;
            };
            let conn = Prefixed::new(Vec::new(), Admitted::new(ServerStream::Plain(stream), slot));
            rt::spawn(http.clone().serve_http1(conn, stop.clone()));
        }
        Ok(())
    }

    /// Serve the peer service on one listener: each accepted connection (after its TLS
    /// handshake, on an `https://` listener) goes to `router`. Peers speak only gRPC: nothing is
    /// sniffed.
    pub(super) async fn serve_peer_listener<R: GrpcRouter>(
        bound: Bound,
        router: R,
        shutdown: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        let BoundListener { listener, tls } = bound.inner;
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let (conn_tx, conn_rx) = futures::channel::mpsc::channel::<
            std::io::Result<Coalesced<AuthorityFix<Admitted<ServerStream>>>>,
        >(limits::PEER_ACCEPT_QUEUE);
        let stop = shutdown.clone();
        let acceptor = rt::spawn(async move {
            while let Some(stream) = accept_next(&listener, &stop).await {
                let Some(slot) = ConnectionLimit::peers().admit() else {
                    continue;
                };
                let mut conn_tx = conn_tx.clone();
                let tls = tls.clone();
                // A handshake waits for the peer: never in the accept loop.
                rt::spawn(async move {
                    if let Some(stream) = handshake(stream, tls.as_ref()).await {
                        // Every connection goes through the `:authority` fix-up; one whose first
                        // request is well-formed (peers always are) is passed through untouched.
                        let stream = Admitted::new(stream, slot);
                        let conn = Coalesced::new(AuthorityFix::new(stream));
                        let _ = conn_tx.send(Ok(conn)).await;
                    }
                });
            }
        });
        let served = router.serve_incoming(conn_rx, shutdown).await;
        acceptor.abort();
        served
    }
}

/// The simulator's transport: a router is served by address; there is no HTTP/1.1.
#[cfg(madsim)]
mod simulated {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Bound, GrpcRouter, Http1Service};
    use crate::rt::Shutdown;

    pub(super) async fn serve_client_listener<R: GrpcRouter, H: Http1Service>(
        bound: Bound,
        _ping_min_interval: Duration,
        router: R,
        _http: Arc<H>,
        stop: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        router.serve_addr(bound.addr, stop).await
    }

    pub(super) async fn serve_http1_listener<H: Http1Service>(
        _bound: Bound,
        _http: Arc<H>,
        stop: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        stop.wait().await;
        Ok(())
    }

    pub(super) async fn serve_peer_listener<R: GrpcRouter>(
        bound: Bound,
        router: R,
        stop: Shutdown,
    ) -> Result<(), tonic::transport::Error> {
        router.serve_addr(bound.addr, stop).await
    }
}

/// The uninhabited connection type is a byte stream like any other, so the HTTP/1.1 service is
/// the same code in both worlds.
#[cfg(madsim)]
mod no_http1 {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::Http1Conn;

    impl AsyncRead for Http1Conn {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match *self.get_mut() {}
        }
    }

    impl AsyncWrite for Http1Conn {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            match *self.get_mut() {}
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            match *self.get_mut() {}
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            match *self.get_mut() {}
        }
    }
}
