//! Dialing a member: TCP, a rustls client handshake for an `https://` peer, and writes gathered as
//! a served connection's are (`net::coalesce`), under tonic's channel. Members dial their peers
//! through it, and `metastore bench` the servers it loads.
//!
//! tonic's own connector refuses `https://` URIs unless tonic is built with its `tls` feature (we
//! use tokio-rustls directly, as the listeners do), so a TLS peer's channel is given the same
//! `host:port` as `http://` and [`MemberConnector`] adds the TLS: the server certificate is checked
//! against `--peer-trusted-ca-file` for the host of the peer URL as written, and this member's
//! `--peer-cert-file` goes along as its client certificate (see `net::tls::TlsFlags::dial_config`).
//! Plain peers are dialed through it too, for the gathered writes: a leader's appends to a
//! follower, and a follower's forwarded proposals, are written as they are ready, so several
//! ready at once would otherwise cost a socket write each. tonic's connect timeout covers the
//! handshake too. Real sockets only: not compiled in the simulator.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::either::Either;
use tonic::codegen::http::uri::InvalidUri;
use tonic::codegen::http::Uri;

use super::coalesce::Coalesced;

/// A connection to a member: plain or TLS, its writes gathered.
pub type MemberConn = TokioIo<Coalesced<Either<TcpStream, TlsStream<TcpStream>>>>;

/// A tower connector (`Service<Uri>`) that dials one member.
#[derive(Clone)]
pub struct MemberConnector {
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    /// The name the peer's certificate must carry: the host of its URL (an IP address or a DNS
    /// name such as `localhost`).
    server_name: ServerName<'static>,
}

impl MemberConnector {
    /// A connector for a plain (`http://`) member.
    pub fn plain() -> Self {
        Self { tls: None }
    }

    /// A connector for the peer at `url` (`https://host:port`) with the client configuration
    /// `config`. Refused with what is wrong with the URL.
    pub fn tls(config: Arc<rustls::ClientConfig>, url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e: InvalidUri| e.to_string())?;
        let host = uri.host().ok_or("no host")?;
        // An IPv6 host comes bracketed out of a URI; a certificate names the bare address.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is no TLS server name: {e}"))?;
        Ok(Self {
            tls: Some(Tls {
                connector: tokio_rustls::TlsConnector::from(config),
                server_name,
            }),
        })
    }
}

impl tonic::codegen::Service<Uri> for MemberConnector {
    type Response = MemberConn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            // tonic hands back the `http://host:port` it was given: the address to dial.
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "URI without host")
            })?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            // Small trailing HTTP/2 frames (heartbeats, acks) must not wait out Nagle + delayed
            // ACK (~40 ms): tonic sets this on its own connections, not on ours.
            tcp.set_nodelay(true)?;
            let stream = match tls {
                None => Either::Left(tcp),
                Some(Tls {
                    connector,
                    server_name,
                }) => Either::Right(connector.connect(server_name, tcp).await?),
            };
            Ok(TokioIo::new(Coalesced::new(stream)))
        })
    }
}
