//! The `etcdserverpb.Watch` service: one bidirectional stream, many watchers.
//!
//! Each stream has one buffer, bounded in messages and bytes (the hub writes events into it, the
//! request loop writes created/canceled/progress replies into it), so a watcher's `created` reply
//! always precedes its events and a slow client costs at most the buffer. A stream holds at most
//! [`crate::limits::WATCH_STREAM_WATCHERS_MAX`] watchers; a create beyond it is refused as etcd refuses a
//! create it cannot serve (`created` and `canceled`, with the reason). When the client goes away, the request loop
//! ends and removes every watcher of the stream at once; a client that only closes its sending
//! side keeps its watchers, as with etcd. A stream that holds part of the member's spent watch
//! budget while its client takes nothing is evicted (`watch::WatchBudget::evict_stalled`): it
//! ends with its watchers and its connection (the client resumes from its last revision), or,
//! where there is no gRPC connection to close (the JSON gateway), with `Unavailable`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::pb::mvccpb::event::EventType;
use crate::watch::{AddError, HubMessage, StreamSender, WatchSpec, WatcherKey};

/// etcd's id for "no watcher" (a refused create, a progress notification).
const INVALID_WATCH_ID: i64 = -1;

/// Serves Watch.
pub struct WatchService {
    node: Arc<Node>,
    access: Arc<super::access::Access>,
}

impl WatchService {
    /// A watch service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<super::access::Access>) -> Self {
        Self { node, access }
    }
}

/// The response side of the stream is gone (the client left).
struct ResponsesGone;

/// The per-stream request loop's state.
struct StreamState {
    node: Arc<Node>,
    access: Arc<super::access::Access>,
    /// The stream's metadata: its token is checked again at every create request (it may expire
    /// while the stream lives), as etcd does.
    metadata: tonic::metadata::MetadataMap,
    /// The user its verified client certificate names (`--client-cert-auth`), if any.
    cert_user: Option<String>,
    stream: u64,
    tx: StreamSender,
    /// Next id to hand out when the client lets the server choose (etcd starts at 0).
    next_auto_id: i64,
    /// Ids in use on this stream.
    ids: BTreeSet<i64>,
}

impl StreamState {
    /// Answer a create request that cannot be served: `created` and `canceled`, with etcd's reason.
    async fn refuse(&self, head: i64, reason: &str) -> Result<(), ResponsesGone> {
        self.refuse_as(INVALID_WATCH_ID, head, reason).await
    }

    /// Answer a create with `created` and `canceled` for `reason`, under `watch_id`.
    async fn refuse_as(&self, watch_id: i64, head: i64, reason: &str) -> Result<(), ResponsesGone> {
        let msg = HubMessage::Created {
            watch_id,
            revision: head,
            reason: Some(reason.to_string()),
        };
        self.tx.send(msg).await.map_err(|_| ResponsesGone)
    }

    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), ResponsesGone> {
        let head = self.node.current_revision();
        let needs = crate::auth::perms::watch_needs(&req);
        if self
            .access
            .permit(&self.metadata, self.cert_user.as_deref(), &needs)
            .is_err()
        {
            // etcd asks only whether the watch is permitted: whatever the reason (no user, a
            // stale token, a missing permission) it answers "permission denied", under the id
            // the request asked for (0 when it asked for none).
            let reason =
                super::status::watch_cancel_reason(crate::auth::AuthError::PermissionDenied);
            return self.refuse_as(req.watch_id, head, &reason).await;
        }
        let spec = match watch_spec(&req) {
            Ok(spec) => spec,
            Err(reason) => return self.refuse(head, reason).await,
        };
        let watch_id = if req.watch_id != 0 {
            req.watch_id
        } else {
            while self.ids.contains(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        if self.ids.contains(&watch_id) {
            return self
                .refuse(head, "mvcc: duplicate watch ID provided on the WatchStream")
                .await;
        }
        // A slot for `created` first: it is queued while the hub admits the watcher, before any
        // of its events can be (the hub calls back under its lock).
        let permit = self.tx.reserve().await.map_err(|_| ResponsesGone)?;
        let key = WatcherKey {
            stream: self.stream,
            watch_id,
        };
        let max_watchers = self.node.config().max_watchers;
        let answer = move |added: &Result<(), AddError>, revision: i64| {
            let reason = match added {
                Ok(()) => None,
                // Answered as etcd answers a create it cannot serve, so clients end that watch
                // with the reason and keep the stream's others.
                Err(AddError::StreamFull) => Some(super::status::watch_stream_full_reason()),
                Err(AddError::MemberFull) => {
                    Some(super::status::watch_member_full_reason(max_watchers))
                }
                Err(AddError::IdTaken) => {
                    debug_assert!(false, "ids are unique per stream");
                    Some("mvcc: duplicate watch ID provided on the WatchStream".to_string())
                }
            };
            permit.send(HubMessage::Created {
                watch_id: if reason.is_some() {
                    INVALID_WATCH_ID
                } else {
                    watch_id
                },
                revision,
                reason,
            });
        };
        let (added, _) = self.node.add_watcher(
            key,
            spec,
            req.start_revision,
            self.tx.clone(),
            crate::watch::Admission::Client,
            answer,
        );
        if added.is_ok() {
            self.ids.insert(watch_id);
        }
        Ok(())
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), ResponsesGone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                let key = WatcherKey {
                    stream: self.stream,
                    watch_id: c.watch_id,
                };
                // Confirmed for any id the stream handed out and has not canceled yet, also one
                // the hub already dropped (cancelled as compacted), as etcd's watch stream does.
                let in_hub = self.node.watch_hub().remove(key);
                if self.ids.remove(&c.watch_id) || in_hub {
                    let revision = self.node.current_revision();
                    self.tx
                        .send(HubMessage::Canceled {
                            watch_id: c.watch_id,
                            revision,
                        })
                        .await
                        .map_err(|_| ResponsesGone)?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Only when every watcher is at the head: the revision must not run ahead of events
                // still to be sent. Otherwise the client asks again later, as with etcd.
                if let Some(revision) = self.node.watch_progress(self.stream) {
                    self.tx
                        .send(HubMessage::Progress { revision })
                        .await
                        .map_err(|_| ResponsesGone)?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Split an event response larger than `max_bytes` into fragments, as etcd does for watchers that
/// asked for it: every part but the last has `fragment` set, each holds at least one event, and a
/// client reassembles them before handing the revision over.
fn fragments(mut resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.encoded_len() <= max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let events = std::mem::take(&mut resp.events);
    // `resp` is now the empty shell every part starts from (header, watch id).
    let base = resp.encoded_len();
    let mut parts = Vec::new();
    let mut current = resp.clone();
    let mut size = base;
    for ev in events {
        // An event costs its bytes plus a tag and a length prefix.
        let ev_size = ev.encoded_len() + 8;
        if !current.events.is_empty() && size + ev_size > max_bytes {
            parts.push(std::mem::replace(&mut current, resp.clone()));
            size = base;
        }
        size += ev_size;
        current.events.push(ev);
    }
    parts.push(current);
    let last = parts.len() - 1;
    for (i, part) in parts.iter_mut().enumerate() {
        part.fragment = i != last;
    }
    parts
}

fn to_responses(node: &Node, msg: HubMessage) -> Vec<WatchResponse> {
    let fragment = matches!(msg, HubMessage::Events { fragment: true, .. });
    let resp = to_response(node, msg);
    if fragment {
        fragments(resp, node.config().max_request_bytes)
    } else {
        vec![resp]
    }
}

fn to_response(node: &Node, msg: HubMessage) -> WatchResponse {
    let header = |rev| Some(node.header(rev));
    match msg {
        HubMessage::Events {
            watch_id,
            mut events,
            revision,
            prev_kv,
            ..
        } => {
            if prev_kv {
                for ev in &mut events {
                    // A put that created the key has no previous value, even when the same
                    // revision deleted an older one (etcd skips create events).
                    let created = ev.r#type == EventType::Put as i32
                        && ev
                            .kv
                            .as_ref()
                            .is_some_and(|kv| kv.create_revision == kv.mod_revision);
                    if let (Some(kv), false) = (&ev.kv, created) {
                        ev.prev_kv = node.value_at(&kv.key, kv.mod_revision - 1);
                    }
                }
            }
            WatchResponse {
                header: header(revision),
                watch_id,
                events,
                ..Default::default()
            }
        }
        // etcd's watchable store sends a compacted watcher's response without a revision, so its
        // header carries revision 0.
        HubMessage::Compacted {
            watch_id,
            compact_revision,
            ..
        } => WatchResponse {
            header: header(0),
            watch_id,
            compact_revision,
            // etcd marks the response canceled by a non-zero compaction revision: after a
            // compaction at 0 a negative start is dropped without saying so.
            canceled: compact_revision != 0,
            ..Default::default()
        },
        HubMessage::Created {
            watch_id,
            revision,
            reason,
        } => WatchResponse {
            header: header(revision),
            watch_id,
            created: true,
            canceled: reason.is_some(),
            cancel_reason: reason.unwrap_or_default(),
            ..Default::default()
        },
        HubMessage::Canceled { watch_id, revision } => WatchResponse {
            header: header(revision),
            watch_id,
            canceled: true,
            ..Default::default()
        },
        HubMessage::Progress { revision } => WatchResponse {
            header: header(revision),
            watch_id: INVALID_WATCH_ID,
            ..Default::default()
        },
    }
}

/// The responses of one watch stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        self.watch_requests(request).await
    }
}

impl WatchService {
    /// Serve one watch stream whose requests come from any source: a gRPC stream, or the JSON
    /// gateway (which hands over the request's metadata the same way).
    pub async fn watch_requests<S>(
        &self,
        request: Request<S>,
    ) -> Result<Response<WatchStream>, Status>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let metadata = request.metadata().clone();
        let cert_user = super::access::cert_user(request.extensions()).map(str::to_string);
        let end_connection = super::connection_ender(request.extensions());
        let mut requests = request.into_inner();
        let (tx, rx) = self.node.watch_hub().stream_channel();
        // Evicted, the stream goes with its gRPC connection: h2 keeps what it took for a stream
        // until the client takes it, and does not ask a stream whose window is shut for more.
        tx.when_evicted(end_connection);
        let stream = self.node.watch_hub().new_stream();
        let mut state = StreamState {
            node: self.node.clone(),
            access: self.access.clone(),
            metadata,
            cert_user,
            stream,
            tx,
            next_auto_id: 0,
            ids: BTreeSet::new(),
        };
        crate::rt::spawn(async move {
            loop {
                // The response side going away (the client reset the call or its connection
                // died) ends the stream even while the request side stays silent.
                let next = tokio::select! {
                    biased;
                    _ = state.tx.closed() => break,
                    // Its client took nothing for too long while the budget was spent.
                    _ = state.tx.evicted() => break,
                    next = requests.next() => next,
                };
                match next {
                    Some(Ok(req)) => {
                        if state.handle(req).await.is_err() {
                            break;
                        }
                    }
                    // A broken request stream: the client is gone or sent garbage.
                    Some(Err(_)) => break,
                    // The client closed its sending side only. etcd keeps such a stream's
                    // watchers and goes on sending their events until the client leaves, which
                    // drops the response side.
                    None => {
                        state.tx.closed().await;
                        break;
                    }
                }
            }
            // Every watcher of the stream goes with it.
            state.node.watch_hub().remove_stream(state.stream);
        });
        let node = self.node.clone();
        let responses = futures::stream::unfold(Some((rx, node)), |state| async move {
            let (mut rx, node) = state?;
            // An evicted stream's request loop ends and takes its watchers, so a wait here ends too.
            let msg = match rx.recv().await {
                Some(msg) if !rx.is_evicted() => msg,
                // An evicted stream ends at once with its reason: nothing it still holds goes out.
                _ if rx.is_evicted() => {
                    let end = vec![Err(super::status::watch_stream_evicted())];
                    return Some((futures::stream::iter(end).chain(taken_first(false)), None));
                }
                // Every sender is gone: the stream ends.
                _ => return None,
            };
            // A client that is slow to take its responses (the hub's buffers fill behind it).
            crate::rt::buggify::delay("watch-send-stall", Duration::from_millis(500)).await;
            // The last of the messages queued now waits for the transport (see `taken_first`);
            // those before it go to the encoder together, as one write.
            let last = rx.is_empty();
            let parts: Vec<_> = to_responses(&node, msg).into_iter().map(Ok).collect();
            let parts = futures::stream::iter(parts).chain(taken_first(last));
            Some((parts, Some((rx, node))))
        })
        .flatten();
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Ends a message's responses: when it is the `last` one queued, says "not yet" once (waking its
/// task at once), so that the encoder hands what it holds to the transport before the next
/// message is asked for.
///
/// A message counts in the watch budget until the next one is asked for (`StreamReceiver`).
/// The gRPC encoder asks for more as soon as it has encoded one, to fill its buffer, so without
/// this pause a message stopped counting before the transport had taken it: a client whose
/// HTTP/2 window stays closed left each of its streams idle, and each took one more message past
/// the budget (10,000 such streams and one 30 KiB put: 308 MB counted as buffered, +314 MB RSS).
/// With it, the transport asks for the next message only once it has taken this one, and a
/// stream whose client takes nothing is never idle. Messages queued together (one revision for
/// several watchers of the stream) still go out as one write: pausing after each cost 0.15-0.2
/// ms of delivery latency with 10 watchers per stream.
pub(super) fn taken_first<T>(last: bool) -> impl Stream<Item = Result<T, Status>> {
    let mut paused = !last;
    futures::stream::poll_fn(move |cx| {
        if paused {
            return std::task::Poll::Ready(None);
        }
        paused = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}

/// What a create request asks to watch, or etcd's reason for refusing it.
pub fn watch_spec(req: &WatchCreateRequest) -> Result<WatchSpec, &'static str> {
    // etcd: an empty key means "\0", the smallest key; range_end "\0" means every key >= key.
    let key = if req.key.is_empty() {
        vec![0]
    } else {
        req.key.clone()
    };
    let end = RangeEnd::from_etcd(&req.range_end);
    if let RangeEnd::Before(e) = &end {
        if key.as_slice() >= e.as_slice() {
            return Err("mvcc: watcher range is empty");
        }
    }
    Ok(WatchSpec {
        key,
        end,
        no_put: req.filters.contains(&(FilterType::Noput as i32)),
        no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: req.prev_kv,
        progress_notify: req.progress_notify,
        fragment: req.fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{Event, KeyValue};

    #[test]
    fn large_responses_split_into_ordered_fragments_within_the_limit() {
        let events: Vec<Event> = (0..10)
            .map(|i| Event {
                kv: Some(KeyValue {
                    key: format!("k{i}").into_bytes(),
                    value: vec![b'x'; 1000],
                    mod_revision: 5,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let resp = WatchResponse {
            watch_id: 3,
            events: events.clone(),
            ..Default::default()
        };
        let parts = fragments(resp.clone(), 4096);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert!(parts
            .iter()
            .all(|p| p.encoded_len() <= 4096 && p.watch_id == 3));
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, events);
        assert_eq!(
            fragments(resp.clone(), 1 << 20),
            vec![resp],
            "small enough: untouched"
        );
    }
}
