//! The member's listening sockets: bound before the store opens (a client connecting meanwhile
//! waits in the kernel's queue), connections accepted with `TCP_NODELAY` until shutdown, and the
//! TLS handshake of an `https://` listener's connections, under a deadline.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::limits;
use crate::rt::Shutdown;

/// A listening socket and, for an `https://` URL, its TLS configuration: bound before the member
/// opens its store (`bind_listeners`), served once it has started.
pub struct BoundListener {
    pub listener: tokio::net::TcpListener,
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl BoundListener {
    /// The address the socket is bound to (the port the OS chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Bind every listener without accepting on any yet. A member binds its client ports before it
/// opens its store, as etcd does: a client that connects meanwhile is queued by the kernel (up to
/// [`limits::LISTEN_BACKLOG`]) and answered once the member serves, instead of being refused and
/// waiting out its client's reconnect backoff (gRPC's starts at 1 s and grows), which after a
/// restart cost up to a second beyond the store's open.
pub fn bind_listeners(
    listeners: Vec<(SocketAddr, Option<Arc<tokio_rustls::rustls::ServerConfig>>)>,
) -> std::io::Result<Vec<BoundListener>> {
    listeners
        .into_iter()
        .map(|(addr, tls)| {
            let listener = bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            Ok(BoundListener { listener, tls })
        })
        .collect()
}

/// A listening socket on `addr` with a backlog of [`limits::LISTEN_BACKLOG`] (tokio's `bind` uses
/// std's 128: a burst of a few hundred connects while the accept loop is busy would overflow it,
/// and the kernel then drops the handshakes it cannot queue, resetting those clients).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(limits::LISTEN_BACKLOG)
}

/// The next accepted connection, with TCP_NODELAY set (our own listeners bypass the builder's TCP
/// options: without it small trailing HTTP/2 frames wait out Nagle + delayed ACK, ~40 ms); `None`
/// once `stop` is raised. Failed accepts are waited out (`accept_failed`) and skipped.
pub async fn accept_next(
    listener: &tokio::net::TcpListener,
    stop: &Shutdown,
) -> Option<tokio::net::TcpStream> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// A failed accept (out of file descriptors, a connection reset before it was taken): logged,
/// and the listener pauses briefly instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("cannot accept a connection: {e}");
    crate::rt::sleep(limits::ACCEPT_RETRY_PAUSE).await;
}

/// The TLS handshake of an accepted connection on an `https://` listener (`tls`), or the plain
/// connection; `None` when the handshake fails (an untrusted or missing client certificate, not
/// TLS at all) or takes longer than [`limits::TLS_HANDSHAKE_TIMEOUT`].
pub async fn handshake(
    stream: tokio::net::TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
) -> Option<super::tls::ServerStream> {
    use super::tls::ServerStream;
    let Some(acceptor) = tls else {
        return Some(ServerStream::Plain(stream));
    };
    let peer = stream.peer_addr().ok();
    match crate::rt::timeout(limits::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(ServerStream::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::debug!(?peer, "TLS handshake failed: {e}");
            None
        }
        Err(crate::rt::Elapsed) => {
            tracing::debug!(?peer, "TLS handshake timed out");
            None
        }
    }
}
