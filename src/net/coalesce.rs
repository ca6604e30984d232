//! A connection's writes gathered so that the responses finished together leave in one socket
//! write.
//!
//! The HTTP/2 connection task writes and flushes whatever its streams have ready each time it
//! runs, and it runs as soon as any one response is ready: the runtime schedules a task woken by
//! another one next on the same worker. So with many requests in flight on a connection every
//! response cost a `writev` of its own (100,000 serializable ranges from 64 clients over 8
//! connections: 92,784 `writev`s, a quarter of the member's CPU time), while the handlers of the
//! responses that would have followed it were waiting behind it to run.
//!
//! [`Coalesced`] takes the connection's writes into a buffer of at most
//! [`limits::COALESCED_WRITE_BYTES`], and the first flush of that buffer yields instead: it wakes
//! the connection's own task and returns pending, which puts the task at the back of its worker's
//! queue. The handlers queued meanwhile finish their responses, the task runs again, adds them to
//! the buffer, and the next flush writes the lot. A lone request waits for nothing but one pass of
//! the scheduler; a buffer that fills is written at once, and a write at least as large as the
//! buffer goes straight to the socket after what was buffered before it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits;

/// A connection whose writes wait, once per flush, for the other tasks ready to run.
pub struct Coalesced<S> {
    inner: S,
    /// Bytes taken from the writer and not yet written to `inner`: `buf[sent..]`. Dropped once
    /// written, so an idle connection holds no buffer.
    buf: Vec<u8>,
    sent: usize,
    /// The buffer's flush has yielded once already: the next flush writes it.
    yielded: bool,
}

impl<S> Coalesced<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Take `bufs` whole into the buffer (the caller checked they fit).
    fn take(&mut self, bufs: &[io::IoSlice<'_>], len: usize) -> usize {
        debug_assert!(self.buffered() + len <= limits::COALESCED_WRITE_BYTES);
        if self.buf.capacity() == 0 {
            self.buf.reserve(len.max(COALESCED_FIRST_ALLOCATION_BYTES));
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        len
    }
}

/// What a connection's first buffered write allocates, at least: a few responses' worth, so that
/// gathering them does not grow the buffer several times.
const COALESCED_FIRST_ALLOCATION_BYTES: usize = 4096;

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Write everything buffered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf = Vec::new();
        self.sent = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Take `bufs` (`len` bytes in all) into the buffer, or, when they do not fit, write what is
    /// buffered first and then, if they still do not fit, pass them straight to `inner`.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buffered() + len > limits::COALESCED_WRITE_BYTES {
            ready!(self.poll_drain(cx))?;
            if len > limits::COALESCED_WRITE_BYTES {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        Poll::Ready(Ok(self.take(bufs, len)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_take(cx, &[io::IoSlice::new(buf)], buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.get_mut().poll_take(cx, bufs, len)
    }

    /// Copying the pieces into the buffer costs less than writing them one at a time.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered() > 0 && !this.yielded {
            // Woken by itself, the task goes to the back of its worker's queue (not to the slot
            // that runs a woken task next): the handlers queued before it run first.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A socket that records each write it takes, and takes at most `room` bytes before blocking.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        room: usize,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.room);
            if n == 0 {
                return Poll::Pending;
            }
            this.room -= n;
            this.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn context() -> (Arc<Count>, Waker) {
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        (woken.clone(), Waker::from(woken))
    }

    fn write(conn: &mut Coalesced<Socket>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<usize> {
        Pin::new(conn).poll_write(cx, bytes).map(|r| r.unwrap())
    }

    fn flush(conn: &mut Coalesced<Socket>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(conn).poll_flush(cx).map(|r| r.unwrap())
    }

    #[test]
    fn writes_before_a_yielded_flush_and_after_it_leave_in_one_socket_write() {
        let (woken, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut conn = Coalesced::new(Socket {
            room: usize::MAX,
            ..Socket::default()
        });

        assert_eq!(write(&mut conn, &mut cx, b"one "), Poll::Ready(4));
        // The first flush yields: the task woke itself, nothing reached the socket.
        assert_eq!(flush(&mut conn, &mut cx), Poll::Pending);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(conn.inner.writes.is_empty());
        // What the task writes when it runs again joins the first write.
        let two = [io::IoSlice::new(b"two "), io::IoSlice::new(b"three")];
        let taken = Pin::new(&mut conn).poll_write_vectored(&mut cx, &two);
        assert!(matches!(taken, Poll::Ready(Ok(9))));
        assert_eq!(flush(&mut conn, &mut cx), Poll::Ready(()));
        assert_eq!(conn.inner.writes, vec![b"one two three".to_vec()]);
        assert_eq!(conn.inner.flushes, 1);
        // Nothing is held once written; a flush with nothing buffered does not yield.
        assert_eq!(conn.buf.capacity(), 0);
        assert_eq!(flush(&mut conn, &mut cx), Poll::Ready(()));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        // The next burst yields once again.
        assert_eq!(write(&mut conn, &mut cx, b"four"), Poll::Ready(4));
        assert_eq!(flush(&mut conn, &mut cx), Poll::Pending);
        assert_eq!(flush(&mut conn, &mut cx), Poll::Ready(()));
        assert_eq!(conn.inner.writes.len(), 2);
    }

    #[test]
    fn the_buffer_never_holds_more_than_its_bound_and_large_writes_pass_straight_through() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut conn = Coalesced::new(Socket {
            room: usize::MAX,
            ..Socket::default()
        });
        let bound = limits::COALESCED_WRITE_BYTES;

        let small = vec![1u8; bound - 10];
        assert_eq!(write(&mut conn, &mut cx, &small), Poll::Ready(bound - 10));
        assert!(conn.inner.writes.is_empty());
        // 20 more bytes would pass the bound: the buffer is written first, then they are taken.
        assert_eq!(write(&mut conn, &mut cx, &[2u8; 20]), Poll::Ready(20));
        assert_eq!(conn.inner.writes.len(), 1);
        assert_eq!(conn.inner.writes[0].len(), bound - 10);
        assert_eq!(conn.buffered(), 20);
        // A write larger than the bound: what was buffered, then the write itself.
        let large = vec![3u8; bound + 1];
        assert_eq!(write(&mut conn, &mut cx, &large), Poll::Ready(bound + 1));
        assert_eq!(conn.inner.writes.len(), 3);
        assert_eq!(conn.inner.writes[1], vec![2u8; 20]);
        assert_eq!(conn.inner.writes[2].len(), bound + 1);
        assert_eq!(conn.buffered(), 0);
    }

    #[test]
    fn a_full_socket_holds_the_writer_back_and_keeps_every_byte_in_order() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut conn = Coalesced::new(Socket {
            room: 5,
            ..Socket::default()
        });
        let bound = limits::COALESCED_WRITE_BYTES;

        let first: Vec<u8> = (0..bound).map(|i| i as u8).collect();
        assert_eq!(write(&mut conn, &mut cx, &first), Poll::Ready(bound));
        assert_eq!(flush(&mut conn, &mut cx), Poll::Pending);
        // The socket takes 5 bytes, then blocks: the flush and any write that does not fit wait.
        assert_eq!(flush(&mut conn, &mut cx), Poll::Pending);
        assert_eq!(write(&mut conn, &mut cx, b"xxxxxx"), Poll::Pending);
        assert_eq!(conn.buffered(), bound - 5);
        conn.inner.room = usize::MAX;
        assert_eq!(write(&mut conn, &mut cx, b"xxxxxx"), Poll::Ready(6));
        // Written to make room, the old buffer is gone; the new one's flush yields once.
        assert_eq!(flush(&mut conn, &mut cx), Poll::Pending);
        assert_eq!(flush(&mut conn, &mut cx), Poll::Ready(()));
        let all: Vec<u8> = conn.inner.writes.concat();
        assert_eq!(&all[..bound], &first[..]);
        assert_eq!(&all[bound..], b"xxxxxx");
    }

    #[test]
    fn shutdown_writes_what_is_buffered_first() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut conn = Coalesced::new(Socket {
            room: usize::MAX,
            ..Socket::default()
        });
        assert_eq!(write(&mut conn, &mut cx, b"goaway"), Poll::Ready(6));
        let shut = Pin::new(&mut conn).poll_shutdown(&mut cx);
        assert!(matches!(shut, Poll::Ready(Ok(()))));
        assert_eq!(conn.inner.writes, vec![b"goaway".to_vec()]);
    }
}
