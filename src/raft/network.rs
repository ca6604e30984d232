//! The peer network: openraft's RPCs over MetaStore's own gRPC `Peer` service (tonic through the
//! seam, so the same code runs in the simulator). Raft messages travel postcard-encoded inside a
//! protobuf frame. Replication runs over one bidirectional stream per session
//! ([`PeerConnection::stream_append`]); snapshots go in chunks of [`limits::SNAPSHOT_CHUNK_BYTES`]
//! read from a frozen view as they are sent.
//!
//! Every request names its sender (`net::peer_channels`), and the receiver serves only members of
//! its own cluster (`api::peer`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use openraft::errors::{Fatal, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::{Deserialize, Serialize};

use super::snapshot::ChunkReader;
use super::state_machine::SnapshotData;
use super::{decode, encode, PeerNode, TypeConfig, Vote};
use crate::limits;
use crate::net::peer_channels::{PeerChannels, PeerRpc};
use crate::net::peer_dial::PeerDialError;
use crate::pb::metastore::{RaftPayload, SnapshotChunk};
use crate::rt;

/// The first chunk of a snapshot transfer: who sends it and what it covers.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: openraft::alias::SnapshotMetaOf<TypeConfig>,
}

/// The network factory handed to openraft.
#[derive(Clone, Default)]
pub struct Network {
    channels: PeerChannels,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Network {
    /// A factory dialing through `channels`, timing replication round trips into `metrics`.
    pub fn new(channels: PeerChannels, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { channels, metrics }
    }
}

/// openraft's connection to one peer.
pub struct PeerConnection {
    target: u64,
    client: Result<PeerRpc, PeerDialError>,
    /// Round trips of replication requests to `target`.
    rtt: Arc<crate::metrics::Histogram>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerConnection {
        PeerConnection {
            target,
            client: self.channels.client_for_member(&node.name, &node.peer_urls),
            rtt: self.metrics.peer_rtt(target),
        }
    }
}

/// openraft's error for an RPC to `target` that took longer than `ttl`.
fn timed_out(target: u64, action: RPCTypes, ttl: Duration) -> Timeout<TypeConfig> {
    Timeout {
        action,
        id: 0,
        target,
        timeout: ttl,
    }
}

/// How long a snapshot transfer that started at `started` may run with `sent` bytes sent:
/// `floor` plus one second per [`limits::SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC`].
pub fn transfer_allowance(floor: Duration, sent: u64) -> Duration {
    floor
        + Duration::from_millis(
            sent.saturating_mul(1000) / limits::SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC,
        )
}

/// Resolves (with the time allowed) once a snapshot transfer has run past its allowance for the
/// bytes it has sent so far (see [`transfer_allowance`]).
async fn transfer_deadline(started: rt::Instant, floor: Duration, sent: &AtomicU64) -> Duration {
    loop {
        let allowed = transfer_allowance(floor, sent.load(Ordering::Relaxed));
        let deadline = started + allowed;
        let now = rt::now();
        if now >= deadline {
            return allowed;
        }
        rt::sleep(deadline.saturating_duration_since(now)).await;
    }
}

fn unreachable(msg: impl ToString) -> Unreachable<TypeConfig> {
    Unreachable::from_string(msg)
}

impl PeerConnection {
    fn client(&self) -> Result<PeerRpc, Unreachable<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    fn timeout(&self, ttl: Duration) -> Timeout<TypeConfig> {
        timed_out(self.target, RPCTypes::AppendEntries, ttl)
    }

    /// One unary raft RPC: encode, send with the hard deadline, decode `Result<Resp, Fatal>` (a
    /// member whose raft has stopped cannot answer: unreachable, as when it is down).
    async fn call<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        send: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: for<'a> Deserialize<'a>,
        F: FnOnce(PeerRpc, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self.client()?;
        let data = encode(req).map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let reply = match rt::timeout(ttl, send(client, RaftPayload { data })).await {
            Err(rt::Elapsed) => return Err(RPCError::Timeout(self.timeout(ttl))),
            Ok(Err(status)) => return Err(RPCError::Unreachable(unreachable(status.message()))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, Fatal<TypeConfig>> =
            decode(&reply.data).map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        result.map_err(|fatal| RPCError::Unreachable(unreachable(fatal)))
    }
}

/// Send times of the requests of one replication stream still waiting for their response.
struct Outstanding {
    sent: Mutex<VecDeque<rt::Instant>>,
    /// Signalled on every send, so a wait with nothing outstanding starts its clock.
    more: tokio::sync::Notify,
    /// Where each request's round trip goes when its response arrives.
    rtt: Arc<crate::metrics::Histogram>,
}

impl Outstanding {
    fn new(rtt: Arc<crate::metrics::Histogram>) -> Self {
        Self {
            sent: Mutex::new(VecDeque::new()),
            more: tokio::sync::Notify::new(),
            rtt,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<rt::Instant>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Aborts the task reading a replication stream's responses when the stream is dropped, which
/// drops the gRPC call and with it the request stream.
struct AbortOnDrop(rt::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type StreamAppendItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The next response of a replication stream: an error if the oldest request outstanding has
/// waited `ttl`, `None` once the stream ended.
async fn next_stream_response(
    responses: &mut tokio::sync::mpsc::Receiver<Result<RaftPayload, tonic::Status>>,
    outstanding: &Outstanding,
    ttl: Duration,
    target: u64,
) -> Option<StreamAppendItem> {
    let received = loop {
        let oldest = outstanding.lock().front().copied();
        match oldest {
            // Nothing owed yet: wait for a request to go out (or the stream to end).
            None => {
                // `biased;` keeps the simulated run deterministic (no random branch order).
                tokio::select! {
                    biased;
                    received = responses.recv() => break received,
                    _ = outstanding.more.notified() => continue,
                }
            }
            Some(sent_at) => {
                let left = (sent_at + ttl).saturating_duration_since(rt::now());
                match rt::timeout(left, responses.recv()).await {
                    Ok(received) => break received,
                    Err(rt::Elapsed) => {
                        return Some(Err(RPCError::Timeout(timed_out(
                            target,
                            RPCTypes::AppendEntries,
                            ttl,
                        ))))
                    }
                }
            }
        }
    };
    let payload = match received? {
        Ok(payload) => payload,
        Err(status) => return Some(Err(RPCError::Unreachable(unreachable(status.message())))),
    };
    if let Some(sent_at) = outstanding.lock().pop_front() {
        outstanding
            .rtt
            .observe(rt::now().saturating_duration_since(sent_at));
    }
    let result: Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>> =
        match decode(&payload.data) {
            Ok(result) => result,
            Err(e) => return Some(Err(RPCError::Unreachable(unreachable(e)))),
        };
    Some(result.map_err(|fatal| RPCError::Unreachable(unreachable(fatal))))
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    /// Replication over one long-lived gRPC stream per session (no call set-up per batch of
    /// entries). Each request must be answered within `option`'s TTL of being sent.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamAppendItem>, RPCError<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            let ttl = option.soft_ttl();
            let target = self.target;
            let outstanding = Arc::new(Outstanding::new(self.rtt.clone()));
            let sending = outstanding.clone();
            let requests = input.map(move |req| {
                sending.lock().push_back(rt::now());
                sending.more.notify_one();
                // Encoding our own request cannot fail; if it did, the peer refuses the empty
                // payload and ends the stream, which replication treats as unreachable.
                RaftPayload {
                    data: encode(&req).unwrap_or_default(),
                }
            });
            let mut inbound = match rt::timeout(ttl, client.append_stream(requests)).await {
                Err(rt::Elapsed) => return Err(RPCError::Timeout(self.timeout(ttl))),
                Ok(Err(status)) => {
                    // raft opens the next session at once: a peer that is down would be dialed
                    // in a tight loop (tens of thousands of attempts a second) without a pause.
                    rt::sleep(limits::PEER_REDIAL_PAUSE).await;
                    return Err(RPCError::Unreachable(unreachable(status.message())));
                }
                Ok(Ok(response)) => response.into_inner(),
            };
            // A task drains the responses into a channel, so waiting for one can time out
            // without cancelling a read of the gRPC stream half-way.
            let (tx, rx) = tokio::sync::mpsc::channel(limits::RAFT_STREAM_WINDOW);
            let reader = rt::spawn(async move {
                loop {
                    let next = match inbound.message().await {
                        Ok(Some(payload)) => Ok(payload),
                        Ok(None) => return,
                        Err(status) => Err(status),
                    };
                    let failed = next.is_err();
                    if tx.send(next).await.is_err() || failed {
                        return;
                    }
                }
            });
            let state = (rx, outstanding, AbortOnDrop(reader));
            let responses = futures::stream::unfold(Some(state), move |state| async move {
                let (mut rx, outstanding, reader) = state?;
                let item = next_stream_response(&mut rx, &outstanding, ttl, target).await?;
                // After an error the stream ends: replication starts a new session.
                let next = matches!(item, Ok(Ok(_))).then_some((rx, outstanding, reader));
                Some((item, next))
            });
            Ok(Box::pin(responses) as BoxStream<'s, StreamAppendItem>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.soft_ttl(), |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, option.soft_ttl(), |mut c, p| async move {
            c.vote(p).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, option.soft_ttl(), |mut c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header = encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
        })
        .map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
        let SnapshotData::View(view) = snapshot.snapshot else {
            return Err(StreamingError::Unreachable(unreachable(
                "a staged snapshot is not sent on",
            )));
        };
        // Chunks are read from the frozen view as the stream is polled, one at a time; the last
        // one says so, so a stream cut short (or a read error here) is never taken as complete.
        let reader = ChunkReader::new(view);
        let failure = Arc::new(Mutex::new(None::<std::io::Error>));
        let failed = failure.clone();
        // Bytes handed to the transport so far: the transfer's deadline grows with them.
        let sent = Arc::new(AtomicU64::new(0));
        let counted = sent.clone();
        let chunks = futures::stream::unfold(Some((reader, true)), move |state| {
            let failed = failed.clone();
            let counted = counted.clone();
            let header = header.clone();
            async move {
                let (mut reader, first) = state?;
                let header = if first { header } else { Vec::new() };
                match reader.next_chunk() {
                    Ok(Some(data)) => {
                        counted.fetch_add(data.len() as u64, Ordering::Relaxed);
                        Some((
                            SnapshotChunk {
                                header,
                                data,
                                last: false,
                            },
                            Some((reader, false)),
                        ))
                    }
                    Ok(None) => Some((
                        SnapshotChunk {
                            header,
                            data: Vec::new(),
                            last: true,
                        },
                        None,
                    )),
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        None
                    }
                }
            }
        });
        let floor = option.soft_ttl().max(limits::SNAPSHOT_TRANSFER_TIMEOUT_MIN);
        let started = rt::now();
        let send = client.install_snapshot(chunks);
        let reply = tokio::select! {
            biased;
            closed = cancel => return Err(StreamingError::Closed(closed)),
            allowed = transfer_deadline(started, floor, &sent) => {
                return Err(StreamingError::Timeout(timed_out(
                    self.target,
                    RPCTypes::InstallSnapshot,
                    allowed,
                )))
            }
            reply = send => reply,
        };
        let reply = match reply {
            Err(status) => {
                let local = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
                let why = match local {
                    Some(e) => format!("reading the snapshot failed: {e}"),
                    None => status.message().to_string(),
                };
                return Err(StreamingError::Unreachable(unreachable(why)));
            }
            Ok(reply) => reply.into_inner(),
        };
        let result: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
            decode(&reply.data).map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
        result.map_err(|fatal| StreamingError::Unreachable(unreachable(fatal)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_gets_time_in_proportion_to_what_it_sent() {
        let floor = limits::SNAPSHOT_TRANSFER_TIMEOUT_MIN;
        assert_eq!(transfer_allowance(floor, 0), floor);
        // A store of 800 MiB: 200 s more at the slowest rate allowed.
        let big = 800 * 1024 * 1024;
        assert_eq!(
            transfer_allowance(floor, big),
            floor + Duration::from_secs(big / limits::SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC)
        );
        assert_eq!(
            transfer_allowance(floor, u64::MAX),
            floor + Duration::from_millis(u64::MAX / limits::SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC),
            "no overflow"
        );
    }
}
