//! A watch stream's buffer: what the hub sends down it ([`HubMessage`]), bounded in messages and
//! in bytes by the stream's share of the member's watch budget, with the reader's side counting
//! the message on its way to the client until it asks for the next.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;

use super::budget::StreamBytes;
use crate::pb::mvccpb::Event;

/// A stream's buffer of `messages` messages, counted in `bytes` (the stream's share of the
/// budget).
pub(super) fn channel(messages: usize, bytes: Arc<StreamBytes>) -> (StreamSender, StreamReceiver) {
    let (tx, rx) = mpsc::channel(messages);
    (
        StreamSender {
            tx,
            bytes: bytes.clone(),
        },
        StreamReceiver {
            rx,
            bytes,
            in_flight: 0,
        },
    )
}

/// What a non-waiting send did.
pub(super) enum Sent {
    Ok,
    Full,
    Closed,
}

/// What the hub sends down a stream's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// Events of one or more whole revisions for one watcher; `revision` is the store revision the
    /// response header carries.
    Events {
        watch_id: i64,
        events: Vec<Event>,
        revision: i64,
        prev_kv: bool,
        fragment: bool,
    },
    /// A watcher was created (`reason: None`) or refused; sent before any of its events.
    Created {
        watch_id: i64,
        revision: i64,
        reason: Option<String>,
    },
    /// A watcher was cancelled at the client's request.
    Canceled { watch_id: i64, revision: i64 },
    /// Every event up to `revision` has been sent on this stream.
    Progress { revision: i64 },
    /// The watcher's start revision was compacted away: it is cancelled.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
        revision: i64,
    },
}

impl HubMessage {
    /// What the message holds in memory while it waits in a stream's buffer, roughly: its events'
    /// encoded size plus a fixed cost.
    pub(super) fn queued_bytes(&self) -> usize {
        match self {
            HubMessage::Events { events, .. } => {
                Self::FIXED_BYTES + events.iter().map(|e| e.encoded_len()).sum::<usize>()
            }
            HubMessage::Created {
                reason: Some(reason),
                ..
            } => Self::FIXED_BYTES + reason.len(),
            _ => Self::FIXED_BYTES,
        }
    }

    /// What any message counts for besides its events.
    pub(super) const FIXED_BYTES: usize = 64;
}

/// The hub's side of one stream's buffer: bounded in messages ([`limits::WATCH_STREAM_BUFFER`])
/// and in bytes, by the stream's share of the member's [`WatchBudget`]. The hub never waits on it:
/// a watcher whose stream is full falls behind and is caught up from storage once the reader
/// drains it.
#[derive(Clone)]
pub struct StreamSender {
    tx: mpsc::Sender<HubMessage>,
    bytes: Arc<StreamBytes>,
}

/// The reading side of a stream's buffer (see [`WatchHub::stream_channel`]). The message it
/// returned last still counts in the budget until it is asked for the next one: until then the
/// response is on its way to the client.
pub struct StreamReceiver {
    rx: mpsc::Receiver<HubMessage>,
    bytes: Arc<StreamBytes>,
    in_flight: usize,
}

/// A slot reserved in a stream's buffer (see [`StreamSender::reserve`]).
pub struct StreamPermit<'a> {
    permit: mpsc::Permit<'a, HubMessage>,
    bytes: &'a StreamBytes,
}

/// The reader is gone.
#[derive(Debug)]
pub struct StreamClosed;

impl StreamSender {
    /// Whether a watcher of this stream is worth reading storage for: a message slot is free and
    /// the budget has room for a catch-up batch (see [`StreamBytes::has_room`]).
    pub(super) fn has_room(&self) -> bool {
        self.tx.capacity() > 0 && self.bytes.has_room()
    }

    /// The largest message the stream's buffer would take now (0 without a free message slot).
    pub(super) fn room(&self) -> usize {
        if self.tx.capacity() == 0 {
            return 0;
        }
        self.bytes.room()
    }

    /// Whether the reader is gone.
    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queue `msg` if the buffer has room for it in messages and bytes.
    pub(super) fn try_send(&self, msg: HubMessage) -> Sent {
        let size = msg.queued_bytes();
        self.try_send_sized(msg, size)
    }

    /// [`Self::try_send`] for a message whose [`HubMessage::queued_bytes`] is `size`.
    pub(super) fn try_send_sized(&self, msg: HubMessage, size: usize) -> Sent {
        debug_assert_eq!(size, msg.queued_bytes());
        if !self.bytes.try_take(size) {
            return Sent::Full;
        }
        match self.tx.try_send(msg) {
            Ok(()) => Sent::Ok,
            Err(e) => {
                self.bytes.give_back(size);
                match e {
                    mpsc::error::TrySendError::Full(_) => Sent::Full,
                    mpsc::error::TrySendError::Closed(_) => Sent::Closed,
                }
            }
        }
    }

    /// Queue a reply of the stream itself (created, canceled, progress), waiting for a message
    /// slot. These are small and one per client request, so only the message bound holds them.
    pub async fn send(&self, msg: HubMessage) -> Result<(), StreamClosed> {
        self.reserve().await?.send(msg);
        Ok(())
    }

    /// Reserve a message slot, so that what is sent through it precedes anything the hub queues
    /// after.
    pub async fn reserve(&self) -> Result<StreamPermit<'_>, StreamClosed> {
        let permit = self.tx.reserve().await.map_err(|_| StreamClosed)?;
        Ok(StreamPermit {
            permit,
            bytes: &self.bytes,
        })
    }

    /// Resolves when the reader is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Resolves once the stream is evicted: while the member's watch budget was spent, it held
    /// some and its client took none for too long (see [`WatchHub::evict_stalled_streams`]). Its
    /// owner ends it, with its watchers.
    pub async fn evicted(&self) {
        self.bytes.evicted().await
    }

    /// Call `end` when the stream is evicted (see [`Self::evicted`]): what ends its transport,
    /// which may no longer poll the stream at all.
    pub fn when_evicted(&self, end: impl FnOnce() + Send + 'static) {
        self.bytes.when_evicted(end)
    }
}

impl StreamPermit<'_> {
    /// Queue `msg` in the reserved slot.
    pub fn send(self, msg: HubMessage) {
        self.bytes.take(msg.queued_bytes());
        self.permit.send(msg);
    }
}

impl StreamReceiver {
    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<HubMessage, mpsc::error::TryRecvError> {
        self.delivered();
        let msg = self.rx.try_recv()?;
        self.in_flight = msg.queued_bytes();
        Ok(msg)
    }

    /// Whether the stream was evicted: what it still holds is not to be sent.
    pub fn is_evicted(&self) -> bool {
        self.bytes.is_evicted()
    }

    /// Resolves once the stream is evicted (see [`StreamSender::evicted`]).
    pub fn eviction(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let bytes = self.bytes.clone();
        async move { bytes.evicted().await }
    }

    /// Whether no message is queued now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<HubMessage> {
        self.delivered();
        let msg = self.rx.recv().await?;
        self.in_flight = msg.queued_bytes();
        Some(msg)
    }

    /// The message returned last, and what [`Self::try_hold`] counted, has been taken by the
    /// transport: its bytes go back. `recv` and `try_recv` do this first.
    pub fn delivered(&mut self) {
        self.bytes.give_back(std::mem::take(&mut self.in_flight));
    }

    /// Count `bytes` of a response the stream's owner made itself (from what the hub sent) as in
    /// flight, until the next [`Self::delivered`], if the budget has room for them as for a hub
    /// message (see `StreamBytes::room`).
    pub fn try_hold(&mut self, bytes: usize) -> bool {
        let fits = self.bytes.try_take(bytes);
        if fits {
            self.in_flight += bytes;
        }
        fits
    }

    /// Count what is held as in flight as `bytes` instead (a response made once room was held
    /// for it came out larger or smaller), whatever the limits: at most one response per stream.
    pub fn hold_exactly(&mut self, bytes: usize) {
        if bytes > self.in_flight {
            self.bytes.take(bytes - self.in_flight);
        } else {
            self.bytes.release(self.in_flight - bytes);
        }
        self.in_flight = bytes;
    }

    /// Resolves once some of the member's budget may have come back (it may wake for nothing).
    pub async fn room_freed(&self) {
        self.bytes.room_freed().await
    }
}
