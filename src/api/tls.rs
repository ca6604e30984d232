//! TLS on the client port (etcd's `--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`), with rustls.
//!
//! A listener whose URL is `https://` completes a TLS handshake on each connection before
//! anything else; what runs inside is told apart as on a plain listener (the HTTP/2 preface is
//! gRPC, anything else HTTP/1.1), so gRPC, the JSON gateway, `/health` and `/metrics` all work
//! over TLS on one port, as with etcd. ALPN prefers `http/1.1` and offers `h2` (what gRPC
//! clients ask for). With `--client-cert-auth`, a client must present a certificate signed by a
//! CA of `--trusted-ca-file`. Real sockets only: not compiled in the simulator.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The client TLS flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `--cert-file`: the server's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// `--key-file`: its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: CAs that sign client certificates (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: require a client certificate signed by a trusted CA.
    pub client_cert_auth: bool,
}

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS key/cert (--cert-file, --key-file) must be provided for client url {0} with HTTPS scheme")]
    Missing(String),
    #[error("--client-cert-auth needs --trusted-ca-file")]
    NoTrustedCa,
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn pem_error(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl ClientTls {
    /// Whether certificates were given at all.
    pub fn is_configured(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The rustls server configuration the flags describe. `url` names the listener (for the
    /// error when the certificate or key is missing).
    pub fn server_config(&self, url: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            return Err(TlsError::Missing(url.to_string()));
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| pem_error(cert_file, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(cert_file, e))?;
        if certs.is_empty() {
            return Err(TlsError::Empty {
                path: cert_file.display().to_string(),
                what: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_error(key_file, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = if self.client_cert_auth {
            let Some(ca_file) = &self.trusted_ca_file else {
                return Err(TlsError::NoTrustedCa);
            };
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(ca_file).map_err(|e| pem_error(ca_file, e))? {
                let ca = ca.map_err(|e| pem_error(ca_file, e))?;
                roots.add(ca).map_err(|e| pem_error(ca_file, e))?;
            }
            if roots.is_empty() {
                return Err(TlsError::Empty {
                    path: ca_file.display().to_string(),
                    what: "CA certificate",
                });
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        // rustls picks the first of ours the client offers: gRPC clients offer only `h2`;
        // curl and browsers offer both and get HTTP/1.1, where `/health`, `/metrics` and the
        // JSON gateway live (etcd routes HTTP/2 requests by content type instead; we tell
        // connections apart, not requests).
        config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An accepted client connection, in the clear or inside TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The connection's TCP socket.
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What the client API knows of a connection (in each request's extensions).
#[derive(Debug, Clone)]
pub struct ClientConnInfo {
    /// Its TCP addresses.
    pub tcp: <TcpStream as tonic::transport::server::Connected>::ConnectInfo,
    /// The common name of the client certificate, on a TLS connection whose client presented one
    /// (only asked for, and then verified, with `--client-cert-auth`).
    pub common_name: Option<String>,
}

impl tonic::transport::server::Connected for ClientStream {
    type ConnectInfo = ClientConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let common_name = match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| common_name(cert.as_ref())),
        };
        ClientConnInfo {
            tcp: self.tcp().connect_info(),
            common_name,
        }
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
