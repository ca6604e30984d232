//! How many connections the member holds open at once, so a flood of connections (idle or not)
//! can neither use up the process's file descriptors, which RocksDB needs for new files and the
//! peer port for other members (running out of them would stop the member), nor grow its memory
//! without bound.
//!
//! Every accepted connection takes a slot before anything else is done with it and keeps it until
//! it is closed ([`Admitted`] holds it). A connection accepted when no slot is free is closed at
//! once: the clients already connected keep being served. Client-facing listeners (client URLs
//! and metrics URLs) share one pool, the peer listeners another; both are sized from the
//! process's open-file limit (see [`limits::client_connections_max`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits;

/// A pool of connection slots.
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
    what: &'static str,
}

/// A connection's slot: given back when dropped.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionLimit {
    fn new(max: usize, what: &'static str) -> Self {
        assert!(max > 0, "a connection pool with no slots");
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
            what,
        }
    }

    /// The pool every client-facing listener of this process draws from.
    pub fn clients() -> &'static ConnectionLimit {
        static POOL: OnceLock<ConnectionLimit> = OnceLock::new();
        POOL.get_or_init(|| {
            ConnectionLimit::new(limits::client_connections_max(open_files_limit()), "client")
        })
    }

    /// The pool every peer listener of this process draws from.
    pub fn peers() -> &'static ConnectionLimit {
        static POOL: OnceLock<ConnectionLimit> = OnceLock::new();
        POOL.get_or_init(|| ConnectionLimit::new(limits::PEER_CONNECTIONS_MAX, "peer"))
    }

    /// A slot for a connection just accepted, or `None` (the caller closes it) when all are
    /// taken.
    pub fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Slot(permit)),
            Err(_) => {
                // Logged on the first refusal and every 1024th after it: a flood must not also
                // flood the log.
                let n = self.refused.fetch_add(1, Ordering::Relaxed);
                if n % 1024 == 0 {
                    tracing::warn!(
                        "all {} {} connection slots are taken: closing new connections ({} so far)",
                        self.max,
                        self.what,
                        n + 1
                    );
                }
                None
            }
        }
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Slots in the pool.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// The soft limit on open files of this process (from `/proc/self/limits`), or
/// [`limits::OPEN_FILES_ASSUMED`] if it cannot be read (or is unlimited).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_open_files(&text))
        .unwrap_or(limits::OPEN_FILES_ASSUMED)
}

/// The soft "Max open files" limit in the text of `/proc/self/limits`.
fn parse_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A connection and the slot it holds until it is dropped.
pub struct Admitted<S> {
    inner: S,
    _slot: Slot,
}

impl<S> Admitted<S> {
    pub fn new(inner: S, slot: Slot) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
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

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_open_files_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files(text), Some(1024));
        assert_eq!(
            parse_open_files("Max open files            unlimited            unlimited  files"),
            None
        );
        assert!(open_files_limit() > 0);
    }

    #[test]
    fn a_full_pool_refuses_until_a_slot_is_given_back() {
        let pool = ConnectionLimit::new(2, "test");
        let a = pool.admit().expect("first");
        let _b = pool.admit().expect("second");
        assert!(pool.admit().is_none(), "a third connection is refused");
        assert_eq!(pool.in_use(), 2);
        drop(a);
        assert!(pool.admit().is_some(), "a slot given back is taken again");
    }
}
