//! A client connection whose socket takes no more bytes stops taking responses.
//!
//! HTTP/2 sends a response only as far as the client's flow-control windows allow, and the
//! member's budgets (`watch::WatchBudget`, `node::send_budget`) count a response until the
//! transport takes it. But h2 takes whatever fits in the windows into its own buffers, and a
//! client may grant huge windows and then never read its socket: h2 then kept everything every
//! stream of the connection produced (10,000 watch streams with 2 GiB windows and three 60 KiB
//! puts: 2.2 GB, as etcd 3.5.1). So every client connection has a [`WriteGate`]: it closes when a
//! write to the socket would block and opens at the next write that goes through (or flush that
//! finds nothing left to write). While it is closed no response body of the connection is asked
//! for more ([`GatedBody`]), so what the streams would send waits where the budgets count it, and
//! h2 holds only what it took before the socket filled. Nothing else waits on it: a connection
//! whose socket is full can send nothing anyway. A socket that takes nothing for
//! [`limits::CLIENT_WRITE_STALL`] ends its connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http;

use super::conn_info::{ClientConnInfo, WriteGate};
use crate::{limits, rt};

/// A client connection with its [`WriteGate`], handed to the request handlers in the
/// connection's [`ClientConnInfo`]. A connection whose socket takes nothing for
/// [`limits::CLIENT_WRITE_STALL`] is closed: its client is gone or frozen (an HTTP/2 client reads
/// its socket whatever its application does), and its streams would hold their budgets meanwhile.
pub struct Gated<S> {
    inner: S,
    gate: Arc<WriteGate>,
    /// Runs while writes are blocked; the connection ends when it fires.
    stall: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S> Gated<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            gate: Arc::default(),
            stall: None,
        }
    }

    /// Follow a write's (or flush's) outcome: a blocked one arms the stall deadline (polled here,
    /// so the connection's task wakes when it passes), any other disarms it.
    fn saw<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.gate.saw(&result);
        if result.is_ready() {
            self.stall = None;
            return result;
        }
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(rt::sleep(limits::CLIENT_WRITE_STALL)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::info!(
                    "a client took no bytes for {:?}; connection closed",
                    limits::CLIENT_WRITE_STALL
                );
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Drop for Gated<S> {
    fn drop(&mut self) {
        // The connection is gone: whatever still waits ends (its body then finds its stream gone).
        self.gate.open();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gate.reader.register(cx.waker());
        if this.gate.is_ended() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.gate.is_ended() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.saw(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.saw(cx, flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.gate.is_ended() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.saw(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> tonic::transport::server::Connected for Gated<S>
where
    S: tonic::transport::server::Connected<ConnectInfo = ClientConnInfo>,
{
    type ConnectInfo = ClientConnInfo;

    fn connect_info(&self) -> ClientConnInfo {
        ClientConnInfo {
            write_gate: Some(self.gate.clone()),
            ..self.inner.connect_info()
        }
    }
}

/// A response body asked for more only while its connection's socket takes bytes.
pub struct GatedBody<B> {
    inner: B,
    gate: Arc<WriteGate>,
}

impl<B> Body for GatedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        std::task::ready!(this.gate.poll_open(cx));
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type HttpResponse = http::Response<tonic::body::Body>;

/// The client router's outermost layer: every response body of a connection with a
/// [`WriteGate`] goes out through a [`GatedBody`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GateLayer;

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService { inner }
    }
}

/// See [`GateLayer`].
#[derive(Clone, Debug)]
pub struct GateService<S> {
    inner: S,
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for GateService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let gate = request
            .extensions()
            .get::<ClientConnInfo>()
            .and_then(|info| info.write_gate.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match gate {
                Some(gate) => {
                    response.map(|inner| tonic::body::Body::new(GatedBody { inner, gate }))
                }
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_closed_gate_wakes_its_waiters_once_a_write_goes_through() {
        let gate = WriteGate::default();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(gate.poll_open(&mut cx).is_ready());

        gate.saw::<usize>(&Poll::Pending);
        assert!(gate.poll_open(&mut cx).is_pending());
        // The same waiter is kept once however often it asks.
        assert!(gate.poll_open(&mut cx).is_pending());
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);

        gate.saw(&Poll::Ready(Ok(10usize)));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(gate.poll_open(&mut cx).is_ready());
        // An error ends the connection: nothing may wait on it any more either.
        gate.saw::<usize>(&Poll::Pending);
        gate.saw::<usize>(&Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())));
        assert!(gate.poll_open(&mut cx).is_ready());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }
}
