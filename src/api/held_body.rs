//! Large answers on their way out, counted until the client has taken them
//! ([`crate::node::send_budget`]).
//!
//! A gRPC handler whose answer counts attaches its [`Held`] bytes to the response
//! ([`HeldAnswer`]); the client router's layer ([`layer`]) wraps such a response's body in a
//! [`HeldBody`]; the JSON gateway wraps its large answers itself ([`HeldBody::cut_short`]). The body hands the answer
//! out in pieces of [`limits::SEND_PIECE_BYTES`], each a copy, only as the connection asks for
//! them (HTTP/2 once the client's window has room, HTTP/1.1 once its write buffer has): so the
//! whole answer's memory is referenced by nothing but this body, and is freed (and uncounted) as
//! soon as the last piece is handed over, or when a watchdog cuts the answer at
//! [`limits::send_deadline`] for its size. The client then loses the stream (HTTP/2 resets it
//! when it next asks for a piece) or the connection (HTTP/1.1: the body ends short of its length).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};
use tonic::codegen::http;

use super::kv::HeldAnswer;
use crate::limits;
use crate::node::send_budget::Held;
use crate::rt;

type HttpResponse = http::Response<tonic::body::Body>;

/// The client router's layer: every response with [`Held`] bytes attached goes out through a
/// [`HeldBody`].
pub type HoldLayer = tower::util::MapResponseLayer<fn(HttpResponse) -> HttpResponse>;

/// See [`HoldLayer`].
pub fn layer() -> HoldLayer {
    tower::util::MapResponseLayer::new(hold_until_sent as fn(HttpResponse) -> HttpResponse)
}

fn hold_until_sent(mut response: HttpResponse) -> HttpResponse {
    let held = response
        .extensions_mut()
        .remove::<HeldAnswer>()
        .and_then(HeldAnswer::into_held);
    match held {
        Some(held) => response.map(|body| {
            let cut = || Some(super::status::answer_not_taken());
            tonic::body::Body::new(HeldBody::new(body, held, cut))
        }),
        None => response,
    }
}

/// What the body and its watchdog share.
struct Sending {
    /// What is left of a data frame larger than a piece.
    rest: Option<Bytes>,
    /// The answer's count in the budget, until it is all handed over or cut.
    held: Option<Held>,
    /// The watchdog cut the answer.
    cut: bool,
}

/// A response body handed out in copied pieces, counted until handed over (module docs).
pub struct HeldBody<B: Body> {
    inner: B,
    sending: Arc<parking_lot::Mutex<Sending>>,
    /// Dropped when the body is done or dropped: the watchdog ends with it.
    ended: Option<tokio::sync::oneshot::Sender<()>>,
    /// What a cut answer ends with: an error, or (`None`) its end, short of its length.
    cut: fn() -> Option<B::Error>,
}

impl<B: Body> HeldBody<B> {
    /// A body whose cut answer simply ends, short of its length (HTTP/1.1 then closes the
    /// connection): for bodies that cannot fail.
    pub fn cut_short(inner: B, held: Held) -> Self {
        Self::new(inner, held, || None)
    }

    /// `inner` counted as `held`, cut at [`limits::send_deadline`] for that size.
    fn new(inner: B, held: Held, cut: fn() -> Option<B::Error>) -> Self {
        let deadline = limits::send_deadline(held.bytes());
        let sending = Arc::new(parking_lot::Mutex::new(Sending {
            rest: None,
            held: Some(held),
            cut: false,
        }));
        let (ended, on_end) = tokio::sync::oneshot::channel::<()>();
        let watched = sending.clone();
        rt::spawn(async move {
            tokio::select! {
                biased;
                _ = on_end => {}
                _ = rt::sleep(deadline) => {
                    let mut s = watched.lock();
                    if s.held.is_some() {
                        s.cut = true;
                        let dropped = (s.rest.take(), s.held.take());
                        drop(s);
                        drop(dropped);
                        tracing::warn!(
                            "a client took less than its answer within {deadline:?}; stream cut"
                        );
                    }
                }
            }
        });
        Self {
            inner,
            sending,
            ended: Some(ended),
            cut,
        }
    }

    /// All handed over (or failed): nothing is counted any more, and the watchdog ends.
    fn finish(&mut self) {
        let held = self.sending.lock().held.take();
        drop(held);
        self.ended = None;
    }
}

impl<B: Body> Drop for HeldBody<B> {
    fn drop(&mut self) {
        // At once, not when the watchdog next runs: a client that went away frees its answer now.
        let dropped = {
            let mut s = self.sending.lock();
            (s.rest.take(), s.held.take())
        };
        drop(dropped);
    }
}

impl<B> Body for HeldBody<B>
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
        loop {
            {
                let mut s = this.sending.lock();
                if s.cut {
                    return Poll::Ready((this.cut)().map(Err));
                }
                if let Some(rest) = s.rest.as_mut() {
                    if rest.has_remaining() {
                        let n = rest.len().min(limits::SEND_PIECE_BYTES);
                        let piece = Bytes::copy_from_slice(&rest[..n]);
                        rest.advance(n);
                        return Poll::Ready(Some(Ok(Frame::data(piece))));
                    }
                    // The whole answer is handed over: its memory goes now.
                    let done = (s.rest.take(), s.held.take());
                    drop(s);
                    drop(done);
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() <= limits::SEND_PIECE_BYTES => {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(data) => this.sending.lock().rest = Some(data),
                    Err(trailers) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                },
                Some(Err(e)) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.finish();
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.sending.lock();
        !s.cut && s.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.sending.lock().rest {
            Some(rest) => {
                let mut hint = self.inner.size_hint();
                hint.set_lower(hint.lower() + rest.len() as u64);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + rest.len() as u64);
                }
                hint
            }
            None => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::send_budget::SendBudget;
    use http_body_util::BodyExt;
    use tonic::Status;

    fn grpc_cut() -> Option<Status> {
        Some(Status::deadline_exceeded("cut"))
    }

    fn answer(bytes: usize) -> tonic::body::Body {
        tonic::body::Body::new(http_body_util::Full::new(Bytes::from(vec![7u8; bytes])))
    }

    #[tokio::test]
    async fn an_answer_goes_out_in_pieces_and_is_uncounted_once_handed_over() {
        let budget = SendBudget::new(1 << 30);
        let size = 3 * limits::SEND_PIECE_BYTES + 5;
        let mut body = HeldBody::new(answer(size), budget.hold_anyway(size), grpc_cut);
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            assert!(data.len() <= limits::SEND_PIECE_BYTES);
            pieces.push(data);
        }
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.iter().map(Bytes::len).sum::<usize>(), size);
        assert!(pieces.iter().all(|p| p.iter().all(|b| *b == 7)));
        assert_eq!(budget.held(), 0, "uncounted once handed over");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_not_taken_in_time_is_cut_and_freed() {
        let budget = SendBudget::new(1 << 30);
        let size = 4 * limits::SEND_PIECE_BYTES;
        let mut body = HeldBody::new(answer(size), budget.hold_anyway(size), grpc_cut);
        let first = body.frame().await.expect("a piece").expect("frame");
        assert_eq!(
            first.into_data().expect("data").len(),
            limits::SEND_PIECE_BYTES
        );
        assert_eq!(
            budget.held(),
            size,
            "counted while the client has not taken it"
        );
        tokio::time::sleep(limits::send_deadline(size) + std::time::Duration::from_secs(1)).await;
        assert_eq!(budget.held(), 0, "the watchdog gave the bytes back");
        assert!(body.sending.lock().rest.is_none(), "and dropped the rest");
        let next = body.frame().await.expect("an error");
        assert_eq!(next.expect_err("cut").code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_cannot_fail_ends_short_when_cut() {
        let budget = SendBudget::new(1 << 30);
        let size = 4 * limits::SEND_PIECE_BYTES;
        let full = http_body_util::Full::new(Bytes::from(vec![1u8; size]));
        let mut body = HeldBody::cut_short(full, budget.hold_anyway(size));
        assert_eq!(body.size_hint().exact(), Some(size as u64));
        let first = body.frame().await.expect("a piece").expect("frame");
        assert_eq!(
            first.into_data().expect("data").len(),
            limits::SEND_PIECE_BYTES
        );
        tokio::time::sleep(limits::send_deadline(size) + std::time::Duration::from_secs(1)).await;
        assert_eq!(budget.held(), 0);
        assert!(body.frame().await.is_none(), "ends, short of its length");
    }

    #[tokio::test]
    async fn a_dropped_body_gives_its_bytes_back() {
        let budget = SendBudget::new(1 << 30);
        let body = HeldBody::new(answer(1 << 20), budget.hold_anyway(1 << 20), grpc_cut);
        assert_eq!(budget.held(), 1 << 20);
        drop(body);
        assert_eq!(budget.held(), 0);
    }
}
