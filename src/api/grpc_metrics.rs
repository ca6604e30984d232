//! The client router's layer that counts every gRPC call as etcd's go-grpc-prometheus
//! interceptors do (`metrics::grpc`): started when its request arrives; each message of the
//! request and of the response as its frame's header passes; handled with the status the
//! call ends with: from the response headers (an error answered at once), from the trailers
//! (a stream, or an answer), or `Canceled` when the call or its response body is dropped before
//! either (the client went away).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tonic::codegen::http;

use crate::metrics::grpc::{MethodId, CANCELED};
use crate::metrics::Metrics;

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct CountLayer {
    metrics: Arc<Metrics>,
}

impl CountLayer {
    /// Counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = CountService<S>;

    fn layer(&self, inner: S) -> CountService<S> {
        CountService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`CountLayer`].
#[derive(Clone, Debug)]
pub struct CountService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<HttpRequest> for CountService<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let Some(id) = self.metrics.grpc.find(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let call = Call::start(self.metrics.clone(), id);
        let counted = Counted {
            metrics: self.metrics.clone(),
            id,
        };
        let request = request.map(|inner| {
            tonic::body::Body::new(Received {
                inner,
                frames: Frames::default(),
                counted,
            })
        });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            match status_of(response.headers()) {
                Some(code) => {
                    call.end(code);
                    Ok(response)
                }
                None => Ok(response.map(|inner| {
                    tonic::body::Body::new(Sent {
                        inner,
                        frames: Frames::default(),
                        call: Some(call),
                    })
                })),
            }
        })
    }
}

/// The `grpc-status` a header map carries, if any (an unreadable one counts as `Unknown`).
fn status_of(headers: &http::HeaderMap) -> Option<u32> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX),
    )
}

/// Where a call's counts go.
#[derive(Clone)]
struct Counted {
    metrics: Arc<Metrics>,
    id: MethodId,
}

/// A started call, until its status is counted; dropped before that, it ends `Canceled`.
struct Call {
    counted: Counted,
    ended: bool,
}

impl Call {
    fn start(metrics: Arc<Metrics>, id: MethodId) -> Self {
        metrics.grpc.method(id).started();
        Self {
            counted: Counted { metrics, id },
            ended: false,
        }
    }

    fn end(mut self, code: u32) {
        self.count_end(code);
    }

    fn count_end(&mut self, code: u32) {
        if !self.ended {
            self.ended = true;
            let Counted { metrics, id } = &self.counted;
            metrics.grpc.method(*id).handled(code);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.count_end(CANCELED);
    }
}

/// Where a gRPC body stands in its length-prefixed messages (a flag byte and a 4-byte length,
/// then the message), whatever pieces the transport cuts it into.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current message's 5-byte prefix seen so far.
    prefix_seen: u8,
    /// The length being read from the prefix.
    length: u64,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Frames {
    /// Take `data`; returns how many messages began in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut began = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            // The flag byte is skipped; the next four are the length, big-endian.
            if self.prefix_seen > 0 {
                self.length = (self.length << 8) | u64::from(data[0]);
            }
            data = &data[1..];
            self.prefix_seen += 1;
            if self.prefix_seen == 5 {
                began += 1;
                self.remaining = self.length;
                self.prefix_seen = 0;
                self.length = 0;
            }
        }
        began
    }
}

/// A request body whose messages are counted as received.
struct Received {
    inner: tonic::body::Body,
    frames: Frames,
    counted: Counted,
}

impl Body for Received {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let began = data.map_or(0, |d| this.frames.feed(d));
            if began > 0 {
                let Counted { metrics, id } = &this.counted;
                metrics.grpc.method(*id).received(began);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose messages are counted as sent, and whose trailers end the call.
struct Sent {
    inner: tonic::body::Body,
    frames: Frames,
    /// Until the trailers are seen.
    call: Option<Call>,
}

impl Body for Sent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let began = this.frames.feed(data);
                    if let (true, Some(call)) = (began > 0, &this.call) {
                        let Counted { metrics, id } = &call.counted;
                        metrics.grpc.method(*id).sent(began);
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    if let Some(call) = this.call.take() {
                        call.end(status_of(trailers).unwrap_or(u32::MAX));
                    }
                }
            }
            // The body failed (tonic turns a status into trailers; this is the transport).
            Some(Err(status)) => {
                if let Some(call) = this.call.take() {
                    call.end(status.code() as u32);
                }
            }
            // Ended without trailers: gRPC requires them.
            None => {
                if let Some(call) = this.call.take() {
                    call.end(u32::MAX);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len as usize));
        out
    }

    #[test]
    fn messages_are_counted_however_the_body_is_cut() {
        let mut body = Vec::new();
        for len in [0u32, 1, 5, 300, 70_000, 4] {
            body.extend(message(len));
        }
        for piece in [1usize, 2, 3, 5, 7, 64, 1_000, body.len()] {
            let mut frames = Frames::default();
            let counted: u64 = body.chunks(piece).map(|c| frames.feed(c)).sum();
            assert_eq!(counted, 6, "pieces of {piece} bytes");
            assert_eq!((frames.prefix_seen, frames.remaining), (0, 0));
        }
    }
}
