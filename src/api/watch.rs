//! The `etcdserverpb.Watch` service: one bidirectional stream, many watchers.
//!
//! Each stream has one bounded channel (the hub writes events into it, the request loop writes
//! created/canceled/progress replies into it), so a watcher's `created` reply always precedes its
//! events and a slow client costs at most the channel. When the client goes away, the request loop
//! ends and removes every watcher of the stream at once.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::limits;
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::watch::{HubMessage, WatchSpec, WatcherKey};

/// etcd's id for "no watcher" (a refused create, a progress notification).
const INVALID_WATCH_ID: i64 = -1;

/// Serves Watch.
pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    /// A watch service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// The response side of the stream is gone (the client left).
struct ResponsesGone;

/// The per-stream request loop's state.
struct StreamState {
    node: Arc<Node>,
    stream: u64,
    tx: mpsc::Sender<HubMessage>,
    /// Next id to hand out when the client lets the server choose (etcd starts at 0).
    next_auto_id: i64,
    /// Ids in use on this stream.
    ids: BTreeSet<i64>,
}

impl StreamState {
    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), ResponsesGone> {
        // etcd: an empty key means "\0", the smallest key; range_end "\0" means every key >= key.
        let key = if req.key.is_empty() { vec![0] } else { req.key };
        let end = RangeEnd::from_etcd(&req.range_end);
        let head = self.node.current_revision();
        if let RangeEnd::Before(e) = &end {
            if key.as_slice() >= e.as_slice() {
                let reason = Some("mvcc: watcher range is empty".to_string());
                return self
                    .tx
                    .send(HubMessage::Created {
                        watch_id: INVALID_WATCH_ID,
                        revision: head,
                        reason,
                    })
                    .await
                    .map_err(|_| ResponsesGone);
            }
        }
        let watch_id = if req.watch_id != 0 {
            req.watch_id
        } else {
            while self.ids.contains(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        if self.ids.contains(&watch_id) {
            let reason = Some("mvcc: duplicate watch ID provided on the WatchStream".to_string());
            return self
                .tx
                .send(HubMessage::Created {
                    watch_id: INVALID_WATCH_ID,
                    revision: head,
                    reason,
                })
                .await
                .map_err(|_| ResponsesGone);
        }
        let spec = WatchSpec {
            key,
            end,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
        };
        // Reserve a slot for `created` first, so it is queued before any event of the watcher.
        let permit = self.tx.reserve().await.map_err(|_| ResponsesGone)?;
        let key = WatcherKey {
            stream: self.stream,
            watch_id,
        };
        let (added, revision) =
            self.node
                .add_watcher(key, spec, req.start_revision, self.tx.clone());
        debug_assert!(added, "ids are unique per stream");
        self.ids.insert(watch_id);
        permit.send(HubMessage::Created {
            watch_id,
            revision,
            reason: None,
        });
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
                if self.node.watch_hub().remove(key) {
                    self.ids.remove(&c.watch_id);
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

fn to_response(node: &Node, msg: HubMessage) -> WatchResponse {
    let header = |rev| Some(node.header(rev));
    match msg {
        HubMessage::Events {
            watch_id,
            mut events,
            revision,
            prev_kv,
        } => {
            if prev_kv {
                for ev in &mut events {
                    if let Some(kv) = &ev.kv {
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
        HubMessage::Compacted {
            watch_id,
            compact_revision,
            revision,
        } => WatchResponse {
            header: header(revision),
            watch_id,
            compact_revision,
            canceled: true,
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(limits::WATCH_STREAM_BUFFER);
        let stream = self.node.watch_hub().new_stream();
        let mut state = StreamState {
            node: self.node.clone(),
            stream,
            tx,
            next_auto_id: 0,
            ids: BTreeSet::new(),
        };
        crate::rt::spawn(async move {
            // Ends when the client closes its side or goes away (error), or when the response side
            // is gone (send fails); either way every watcher of the stream goes with it.
            while let Ok(Some(req)) = requests.message().await {
                if state.handle(req).await.is_err() {
                    break;
                }
            }
            state.node.watch_hub().remove_stream(state.stream);
        });
        let node = self.node.clone();
        let responses = futures::stream::unfold((rx, node), |(mut rx, node)| async move {
            let msg = rx.recv().await?;
            let resp = to_response(&node, msg);
            Some((Ok(resp), (rx, node)))
        });
        Ok(Response::new(Box::pin(responses)))
    }
}
