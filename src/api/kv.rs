//! The `etcdserverpb.KV` service.

use super::access::cert_user;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::access::{Access, Caller};
use super::validate;
use crate::apply::Applied;
use crate::auth::{perms, Need};
use crate::limits;
use crate::node::send_budget::{self, Held};
use crate::node::{Node, RangeStreamRead};
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader, TxnRequest,
    TxnResponse,
};
use crate::pb::metastore::command::Op;
use crate::pb::metastore::Requester;

/// The chunks of a `RangeStream`, as the client reads them.
pub type RangeChunkStream =
    Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send + 'static>>;

/// Serves Range, RangeStream, Put, DeleteRange, Txn and Compact.
pub struct KvService {
    node: Arc<Node>,
    access: Arc<Access>,
}

impl KvService {
    /// A KV service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<Access>) -> Self {
        Self { node, access }
    }

    /// The full header for a response whose revision apply or the read path set.
    fn header(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        self.node.complete_header(partial)
    }

    /// A read's preamble: who asks (first: a client with a bad token gets no work proportional
    /// to its request), whether `check` passes the request, and what the node asks of the auth
    /// state the read is served at.
    fn read(
        &self,
        request: Request<RangeRequest>,
        check: fn(&RangeRequest) -> Result<(), validate::ValidationError>,
    ) -> Result<(RangeRequest, Caller, Vec<Need>), Status> {
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        let req = request.into_inner();
        check(&req)?;
        let needs = perms::range_needs(&req);
        Ok((req, caller, needs))
    }

    /// An answer from `read`, counted in the member's send budget when it is large
    /// ([`send_budget`]). One that does not fit beside the answers still on their way is not
    /// kept while it waits (waiting answers would be as unbounded as held ones): it is dropped,
    /// and read again once there is room for its size.
    async fn answer_within_budget<T, F, Fut>(&self, read: F) -> Result<(T, Option<Held>), Status>
    where
        T: Message,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::node::NodeError>>,
    {
        let resp = read().await?;
        let size = resp.encoded_len();
        if !send_budget::counts(size) {
            return Ok((resp, None));
        }
        let budget = self.node.send_budget();
        if let Some(held) = budget.try_hold(size) {
            return Ok((resp, Some(held)));
        }
        drop(resp);
        let mut held = budget.hold(size, limits::LARGE_READ_WAIT).await?;
        let resp = read().await?;
        held.resize(resp.encoded_len());
        Ok((resp, Some(held)))
    }

    async fn propose(&self, op: Op, requester: Requester) -> Result<Applied, Status> {
        Ok(self.node.propose_as(op, Some(requester)).await?)
    }
}

/// A chunk as sent: the final one's header completed (the member's ids and raft term; the
/// revision stays the pinned one).
fn stream_chunk(node: &Node, mut chunk: RangeResponse) -> RangeStreamResponse {
    if chunk.header.is_some() {
        chunk.header = node.complete_header(chunk.header);
    }
    RangeStreamResponse {
        range_response: Some(chunk),
    }
}

/// A chunk on its way, with what counts its bytes among those range streams hold
/// (`Node::range_stream_next`).
type ChunkSent = (Result<RangeStreamResponse, Status>, Option<Held>);

/// Read the chunks after the first into `tx`, one at a time, each only once the buffer has room:
/// a client that stops reading stops the reads, and one that goes away ends the task at once.
async fn send_rest(node: Arc<Node>, mut read: RangeStreamRead, tx: mpsc::Sender<ChunkSent>) {
    while !read.is_done() {
        let permit = tokio::select! {
            biased;
            _ = tx.closed() => return,
            permit = tx.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        match node.range_stream_next(&mut read) {
            Ok((chunk, held)) => permit.send((Ok(stream_chunk(&node, chunk)), Some(held))),
            Err(e) => {
                // As etcd: the stream ends with the error (`ErrCompacted` when a compaction
                // passed the pinned revision).
                permit.send((Err(e.into()), None));
                return;
            }
        }
    }
}

/// The chunks in `rx` as the client reads them. A chunk's bytes count until the next one is
/// asked for: HTTP/2 asks for the next only once it has room to send, so by then all but the
/// last bytes of the one before have left for the socket.
fn chunks_sent(rx: mpsc::Receiver<ChunkSent>) -> RangeChunkStream {
    let chunks = futures::stream::unfold((rx, None), |(mut rx, _sent)| async move {
        let (chunk, held) = rx.recv().await?;
        Some((chunk, (rx, held)))
    });
    Box::pin(chunks)
}

/// A response's [`Held`] bytes, carried in its extensions from the handler to what sends the
/// answer: the client router's layer (`api::held_body`) or the JSON gateway (extensions must be
/// `Clone`; the first to take them wins). Elsewhere (the simulator's transport hands messages
/// over whole) they go with the response.
#[derive(Clone)]
pub struct HeldAnswer(Arc<parking_lot::Mutex<Option<Held>>>);

impl HeldAnswer {
    /// The bytes, unless taken already.
    pub fn into_held(self) -> Option<Held> {
        self.0.lock().take()
    }
}

/// `resp` as a response, counted as `held` until the client has taken it.
fn held_response<T>(resp: T, held: Option<Held>) -> Response<T> {
    let mut response = Response::new(resp);
    if let Some(held) = held {
        response
            .extensions_mut()
            .insert(HeldAnswer(Arc::new(parking_lot::Mutex::new(Some(held)))));
    }
    response
}

fn unexpected(what: &str) -> Status {
    super::status::unexpected_apply(what)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let (req, caller, needs) = self.read(request, validate::range)?;
        let read = || {
            self.node
                .range_checked(&req, |auth| caller.check_in(auth, &needs))
        };
        let (mut resp, held) = self.answer_within_budget(read).await?;
        resp.header = self.header(resp.header);
        Ok(held_response(resp, held))
    }

    type RangeStreamStream = RangeChunkStream;

    async fn range_stream(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeChunkStream>, Status> {
        let (req, caller, needs) = self.read(request, validate::range_stream)?;
        // The read barrier, the permission check and the first chunk come before the stream
        // opens: a failure there is the call's answer, as etcd's before its first send.
        let (read, first, held) = self
            .node
            .range_stream(req, |auth| caller.check_in(auth, &needs))
            .await?;
        let (tx, rx) = mpsc::channel(limits::RANGE_STREAM_BUFFER);
        let sent = tx.try_send((Ok(stream_chunk(&self.node, first)), Some(held)));
        debug_assert!(
            sent.is_ok(),
            "a new stream's buffer has room for its first chunk"
        );
        if !read.is_done() {
            crate::rt::spawn(send_rest(self.node.clone(), read, tx));
        }
        Ok(Response::new(chunks_sent(rx)))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::put(request.get_ref())?;
        let needs = self.access.put_needs(request.get_ref());
        let requester =
            self.access
                .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        match self
            .propose(Op::Put(request.into_inner()), requester)
            .await?
        {
            Applied::Put(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::delete_range(request.get_ref())?;
        let needs = perms::delete_needs(request.get_ref());
        let requester =
            self.access
                .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        match self
            .propose(Op::DeleteRange(request.into_inner()), requester)
            .await?
        {
            Applied::DeleteRange(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        // Who is asking is settled first (a token lookup), then what they may touch, and only
        // then is the request examined in full: a client with a bad token or without the
        // permissions gets no work done for it beyond the permission walk itself. etcd validates
        // before it checks permissions, so a txn both invalid and not permitted gets a different
        // error from it (README, "Where MetaStore differs from etcd on purpose"). The operation
        // count is checked first as etcd does (it reads three lengths), so an oversized txn gets
        // etcd's answer and the walk below is bounded by the op limit at the top level.
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        let max_txn_ops = self.node.config().max_txn_ops;
        validate::txn_op_count(request.get_ref(), max_txn_ops)?;
        let needs = perms::txn_needs(request.get_ref());
        let requester = self.access.check(&caller, &needs)?;
        validate::txn(request.get_ref(), max_txn_ops)?;
        if crate::apply::is_read_only(request.get_ref()) {
            // Served as a read, as etcd serves it (its permissions checked again at the auth
            // state it is read at).
            let req = request.into_inner();
            let read = || {
                self.node
                    .read_only_txn_checked(&req, |auth| caller.check_in(auth, &needs))
            };
            let (mut resp, held) = self.answer_within_budget(read).await?;
            resp.header = self.header(resp.header);
            return Ok(held_response(resp, held));
        }
        match self
            .propose(Op::Txn(request.into_inner()), requester)
            .await?
        {
            Applied::Txn(mut resp) => {
                resp.header = self.header(resp.header);
                // Applied already: it goes whatever else is held, but counts until it is taken.
                let size = resp.encoded_len();
                let held =
                    send_budget::counts(size).then(|| self.node.send_budget().hold_anyway(size));
                Ok(held_response(resp, held))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd 3.4 checks no permission for a compaction; here the caller must at least be an
        // authenticated user (Kubernetes' apiserver compacts as its own, non-root user).
        let requester = self
            .access
            .authenticated(request.metadata(), cert_user(request.extensions()))?;
        let (revision, physical) = (request.get_ref().revision, request.get_ref().physical);
        match self
            .propose(Op::Compaction(request.into_inner()), requester)
            .await?
        {
            Applied::Compaction(mut resp) => {
                if physical {
                    // As etcd: answered once the superseded records are gone from this member.
                    self.node.wait_compacted(revision).await?;
                }
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
