//! What the member knows and keeps for each client connection, in every request's extensions: its
//! addresses and the names its certificate is valid for (`net::tls` fills them in), and its write
//! gate (`net::write_gate`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

/// What the client API knows of a connection (in each request's extensions).
#[derive(Debug, Clone)]
pub struct ClientConnInfo {
    /// Its TCP addresses.
    pub tcp: <TcpStream as tonic::transport::server::Connected>::ConnectInfo,
    /// The common name of the client certificate, on a TLS connection whose client presented one
    /// (only asked for, and then verified, with `--client-cert-auth`).
    pub common_name: Option<String>,
    /// The names and addresses that certificate is valid for (its subject alternative names).
    pub hosts: Vec<CertHost>,
    /// Whether the connection's socket takes bytes now (client gRPC connections only).
    pub write_gate: Option<Arc<WriteGate>>,
}

/// One subject alternative name of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertHost {
    Dns(String),
    Ip(std::net::IpAddr),
}

impl CertHost {
    /// Whether a certificate with this name is valid for `host` (a DNS name or an IP address),
    /// by the rules of Go's `VerifyHostname` that etcd applies: an address matches an address
    /// SAN; a name matches a DNS SAN without regard to case or a trailing dot, and `*.` stands
    /// for exactly one leftmost label.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return *self == CertHost::Ip(ip);
        }
        let CertHost::Dns(name) = self else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => host == name,
        }
    }
}

/// Whether a connection's socket takes bytes now, and who waits for it to.
#[derive(Debug, Default)]
pub struct WriteGate {
    closed: AtomicBool,
    waiting: parking_lot::Mutex<Vec<Waker>>,
    /// Set by [`Self::end_connection`]; the connection's next read or write fails.
    ended: AtomicBool,
    /// The connection's task, waiting to read.
    pub(super) reader: futures::task::AtomicWaker,
}

impl WriteGate {
    /// End the connection: its next read or write fails, so its task drops it with every stream
    /// and whatever h2 still buffers for them. For a stream that holds what its client never takes
    /// (an evicted watch stream): h2 keeps what it took for a stream until the client takes it,
    /// and a server cannot reset one stream whose body it is not asked for.
    pub fn end_connection(&self) {
        self.ended.store(true, Ordering::Release);
        self.reader.wake();
        self.open();
    }

    pub(super) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Ready while the socket takes bytes; otherwise wakes `cx` when it does again.
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting.lock();
        // Checked again under the lock: `open` empties the list under it after clearing the flag.
        if !self.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(super) fn open(&self) {
        if self.closed.swap(false, Ordering::AcqRel) {
            let waiting = std::mem::take(&mut *self.waiting.lock());
            for w in waiting {
                w.wake();
            }
        }
    }

    /// Follow what a write (or flush) to the socket did.
    pub(super) fn saw<T>(&self, result: &Poll<io::Result<T>>) {
        match result {
            Poll::Pending => self.close(),
            Poll::Ready(_) => self.open(),
        }
    }
}
