//! Telling what a client connection speaks from its first bytes, as etcd serves gRPC and HTTP/1.1
//! on one port: [`sniff`] reads up to four bytes; the HTTP/2 client preface (`PRI * HTTP/2.0`)
//! marks gRPC, anything else is HTTP/1.1. The bytes read to decide are handed back in front of the
//! connection ([`Prefixed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface, whose first bytes mark a gRPC connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of the preface [`sniff`] waits for: no HTTP/1.1 method starts with them.
const SNIFF_BYTES: usize = 4;

/// What a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2: gRPC.
    Grpc,
    /// Anything else: served as HTTP/1.1.
    Http1,
}

/// Read a connection's first bytes (at most [`SNIFF_BYTES`]) and tell what it speaks. Returns the
/// bytes read, which belong in front of the connection. A connection closed before its first byte
/// is an error.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Protocol, Vec<u8>)> {
    let mut seen = Vec::with_capacity(SNIFF_BYTES);
    while seen.len() < SNIFF_BYTES {
        let mut byte = [0u8; SNIFF_BYTES];
        let n = stream.read(&mut byte[..SNIFF_BYTES - seen.len()]).await?;
        if n == 0 {
            if seen.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            break;
        }
        seen.extend_from_slice(&byte[..n]);
        if !H2_PREFACE.starts_with(&seen) {
            return Ok((Protocol::Http1, seen));
        }
    }
    let protocol = if seen.len() == SNIFF_BYTES {
        Protocol::Grpc
    } else {
        Protocol::Http1
    };
    Ok((protocol, seen))
}

/// A connection with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, whose reads first return `prefix`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Prefixed<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniffed(input: &[u8]) -> io::Result<(Protocol, Vec<u8>)> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        rt.block_on(async {
            let mut input = input;
            sniff(&mut input).await
        })
    }

    #[test]
    fn the_h2_preface_is_grpc_and_anything_else_http1() {
        assert_eq!(
            sniffed(H2_PREFACE).unwrap(),
            (Protocol::Grpc, b"PRI ".to_vec())
        );
        for input in [
            &b"GET /health HTTP/1.1\r\n"[..],
            b"POST /v3/kv/range",
            b"PR",
            b"PRIX",
        ] {
            let (protocol, seen) = sniffed(input).unwrap();
            assert_eq!(protocol, Protocol::Http1, "{input:?}");
            assert!(input.starts_with(&seen) && !seen.is_empty() && seen.len() <= SNIFF_BYTES);
        }
        assert!(sniffed(b"").is_err());
    }

    #[test]
    fn prefixed_reads_the_prefix_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let mut p = Prefixed::new(b"PRI ".to_vec(), &b"* HTTP/2.0"[..]);
            let mut out = Vec::new();
            p.read_to_end(&mut out).await.map(|_| out)
        });
        assert_eq!(out.unwrap(), b"PRI * HTTP/2.0");
    }
}
