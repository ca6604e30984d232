//! TLS on the client and peer ports (etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth` and their `--peer-` twins), with rustls.
//!
//! A listener whose URL is `https://` completes a TLS handshake on each connection before
//! anything else. On the client port, what runs inside is told apart as on a plain listener (the
//! HTTP/2 preface is gRPC, anything else HTTP/1.1), so gRPC, the JSON gateway, `/health` and
//! `/metrics` all work over TLS on one port, as with etcd; ALPN prefers `http/1.1` and offers
//! `h2` (what gRPC clients ask for). The peer port speaks only gRPC, so only `h2`. With
//! `--client-cert-auth` (`--peer-client-cert-auth`), a client (another member) must present a
//! certificate signed by a CA of `--trusted-ca-file` (`--peer-trusted-ca-file`).
//!
//! Members dial `https://` peers with [`TlsFlags::dial_config`]: the peer's server certificate is
//! checked against `--peer-trusted-ca-file` for the host of its URL, and this member's own
//! `--peer-cert-file` is its client certificate (`net::dial` does the handshake). Every PEM file
//! is read by the same three loaders for both ports. Real sockets only: not compiled in the
//! simulator.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::conn_info::{CertHost, ClientConnInfo};
pub use crate::config::{TlsFlags, TlsPort};

/// Why a TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS key/cert (--{p}cert-file, --{p}key-file) must be provided for {kind} url {url} with HTTPS scheme", p = .port.flag_prefix(), kind = .port.url_kind())]
    Missing { port: TlsPort, url: String },
    #[error("--{p}client-cert-auth needs --{p}trusted-ca-file", p = .0.flag_prefix())]
    NoTrustedCa(TlsPort),
    #[error("--{p}cert-file and --{p}key-file must be given together", p = .0.flag_prefix())]
    HalfPair(TlsPort),
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Every certificate of the PEM file at `path` (at least one).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of the PEM file at `path`.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The CA certificates of the PEM file at `path` as a trust store (at least one).
fn load_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))? {
        let ca = ca.map_err(|e| pem_error(path, e))?;
        roots.add(ca).map_err(|e| pem_error(path, e))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "CA certificate",
        });
    }
    Ok(Arc::new(roots))
}

fn rustls_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

impl TlsFlags {
    /// Whether certificates were given at all.
    pub fn is_configured(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// This member's own certificate chain and key, if both were given.
    fn identity(
        &self,
        port: TlsPort,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => {
                Ok(Some((load_certs(cert_file)?, load_key(key_file)?)))
            }
            (None, None) => Ok(None),
            _ => Err(TlsError::HalfPair(port)),
        }
    }

    /// The rustls server configuration the flags describe for a listener of `port`. `url` names
    /// the listener (for the error when the certificate or key is missing).
    pub fn server_config(
        &self,
        port: TlsPort,
        url: &str,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let Some((certs, key)) = self.identity(port)? else {
            return Err(TlsError::Missing {
                port,
                url: url.to_string(),
            });
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?;
        let builder = if self.client_cert_auth {
            let Some(ca_file) = &self.trusted_ca_file else {
                return Err(TlsError::NoTrustedCa(port));
            };
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                load_roots(ca_file)?,
                provider,
            )
            .build()
            .map_err(rustls_error)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).map_err(rustls_error)?;
        config.alpn_protocols = match port {
            // rustls picks the first of ours the client offers: gRPC clients offer only `h2`;
            // curl and browsers offer both and get HTTP/1.1, where `/health`, `/metrics` and the
            // JSON gateway live (etcd routes HTTP/2 requests by content type instead; we tell
            // connections apart, not requests).
            TlsPort::Client => vec![b"http/1.1".to_vec(), b"h2".to_vec()],
            // Members speak only gRPC to each other.
            TlsPort::Peer => vec![b"h2".to_vec()],
        };
        Ok(Arc::new(config))
    }

    /// The rustls client configuration for dialing `https://` peers: their server certificates
    /// must chain to `--peer-trusted-ca-file`; `--peer-cert-file`/`--peer-key-file`, when given,
    /// are presented as this member's client certificate (what `--peer-client-cert-auth` on the
    /// other side asks for). `None` without a trusted CA: then no https peer can be verified.
    pub fn dial_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
        let Some(ca_file) = &self.trusted_ca_file else {
            return Ok(None);
        };
        let roots = load_roots(ca_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_root_certificates(roots);
        let mut config = match self.identity(TlsPort::Peer)? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(rustls_error)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// An accepted connection (client or peer port), in the clear or inside TLS.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ServerStream {
    /// The connection's TCP socket.
    fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(s) => s,
            ServerStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for ServerStream {
    type ConnectInfo = ClientConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let leaf = match self {
            ServerStream::Plain(_) => None,
            ServerStream::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| x509_parser::parse_x509_certificate(cert.as_ref()).ok()),
        };
        let (common_name, hosts) = match leaf {
            Some((_, cert)) => (common_name(&cert), cert_hosts(&cert)),
            None => (None, Vec::new()),
        };
        ClientConnInfo {
            tcp: self.tcp().connect_info(),
            common_name,
            hosts,
            write_gate: None,
        }
    }
}

/// The subject common name of a certificate.
fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The DNS names and IP addresses a certificate's subject alternative names carry.
fn cert_hosts(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<CertHost> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(CertHost::Dns(dns.to_string())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| CertHost::Ip(b.into())),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| CertHost::Ip(b.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::CertHost;

    #[test]
    fn host_names_match_as_go_verify_hostname_does() {
        let dns = |n: &str| CertHost::Dns(n.into());
        assert!(dns("member.example").matches("member.example"));
        assert!(dns("Member.Example.").matches("member.EXAMPLE"));
        assert!(!dns("member.example").matches("other.example"));
        assert!(dns("*.example").matches("a.example"));
        assert!(!dns("*.example").matches("a.b.example"), "one label only");
        assert!(!dns("*.example").matches("example"));
        assert!(!dns("*.example").matches(".example"));
        let ip = CertHost::Ip("127.0.0.1".parse().unwrap());
        assert!(ip.matches("127.0.0.1"));
        assert!(!ip.matches("127.0.0.2"));
        assert!(
            !dns("127.0.0.1").matches("127.0.0.1"),
            "an address needs an address SAN"
        );
        assert!(CertHost::Ip("::1".parse().unwrap()).matches("[::1]"));
    }
}
