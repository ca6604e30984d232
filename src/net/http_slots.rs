//! HTTP/1.1 connection slots of one listener, shared so that idle connections cannot starve the
//! others.
//!
//! A listener serves at most [`limits::HTTP_MAX_CONNECTIONS`] HTTP/1.1 connections at once. When a
//! new one arrives and every slot is taken, the connection that has waited longest for its client
//! (an idle keep-alive connection, one still dribbling a request's headers, or one whose request
//! body is still arriving) gives up its slot, if it has waited at least
//! [`limits::HTTP_EVICT_IDLE_AFTER`]: it is closed, as an HTTP/1.1 server may close a connection
//! that is not being served. A connection the server is serving (its request read and being
//! handled, or its response still being sent, e.g. a gateway watch) is never evicted; only when
//! every slot is busy that way is the new connection refused. So a thousand slow or idle
//! connections cannot make `/health` unanswerable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::limits;
use crate::rt::{self, Instant};

/// The slots of one listener.
pub struct Slots {
    max: usize,
    table: Mutex<BTreeMap<u64, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
    /// New connections refused so far (every slot busy).
    refused: std::sync::atomic::AtomicU64,
}

struct Entry {
    /// `Some(since)`: waiting for its client since then (no request, or one still arriving);
    /// `None`: being served.
    idle_since: Option<Instant>,
    /// Raised to ask the connection to close (it was evicted).
    evict: Arc<Notify>,
}

/// One connection's slot: freed on drop.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: Arc<Notify>,
}

impl Slots {
    /// Room for `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            table: Mutex::new(BTreeMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            refused: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Counts a refused connection; logged on the first and every 1024th after it: a flood of
    /// connections must not also flood the log.
    fn refuse(&self) {
        let n = self
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 1024 == 0 {
            tracing::warn!(
                "all {} HTTP connections are busy, none idle long enough to give way: closing new \
                 ones ({} so far)",
                self.max,
                n + 1
            );
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection: a free one, or the one of the connection idle longest (which
    /// is told to close); `None` when every connection is busy serving a request or idle only
    /// briefly.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let now = rt::now();
        let mut table = self.table();
        if table.len() >= self.max {
            let victim = table
                .iter()
                .filter_map(|(id, e)| e.idle_since.map(|since| (id, since)))
                .filter(|(_, since)| {
                    now.saturating_duration_since(*since) >= limits::HTTP_EVICT_IDLE_AFTER
                })
                .min_by_key(|(_, since)| *since);
            let Some((&victim, _)) = victim else {
                self.refuse();
                return None;
            };
            if let Some(gone) = table.remove(&victim) {
                // `notify_one` keeps the permit if the connection is not waiting on it yet.
                gone.evict.notify_one();
            }
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        table.insert(
            id,
            Entry {
                idle_since: Some(now),
                evict: evict.clone(),
            },
        );
        Some(Slot {
            slots: self.clone(),
            id,
            evict,
        })
    }

    /// Connections holding a slot.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no connection holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&self, id: u64, idle_since: Option<Instant>) {
        if let Some(e) = self.table().get_mut(&id) {
            e.idle_since = idle_since;
        }
    }
}

impl Slot {
    /// A request's headers arrived. Its body may still be on its way: the connection stays
    /// evictable until the handler calls [`Busy::serving`], and is idle again once [`Busy`]
    /// drops (the response sent).
    pub fn request(&self) -> Busy {
        self.slots.set(self.id, Some(rt::now()));
        Busy {
            slots: self.slots.clone(),
            id: self.id,
        }
    }

    /// Resolves when the connection was evicted and must close.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table().remove(&self.id);
    }
}

/// A request in progress on a connection (kept until its response body is sent or dropped).
pub struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Busy {
    /// The handle a request's handler uses to say it has what it needs from the client.
    pub fn mark(&self) -> ServingMark {
        ServingMark {
            slots: self.slots.clone(),
            id: self.id,
        }
    }
}

/// Marks a request as being served (its body read): its connection can no longer be evicted.
#[derive(Clone)]
pub struct ServingMark {
    slots: Arc<Slots>,
    id: u64,
}

impl ServingMark {
    /// The request has been read; the server now works for it.
    pub fn serving(&self) {
        self.slots.set(self.id, None);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slots.set(self.id, Some(rt::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_connection_gives_way_to_a_new_one() {
        let slots = Slots::new(2);
        let first = slots.admit().expect("free slot");
        tokio::time::advance(Duration::from_millis(10)).await;
        let second = slots.admit().expect("free slot");
        // Both idle, but not for long enough: the newcomer is refused.
        assert!(slots.admit().is_none());
        tokio::time::advance(limits::HTTP_EVICT_IDLE_AFTER).await;
        let third = slots.admit().expect("the longest idle gives way");
        assert_eq!(slots.len(), 2);
        // The evicted connection hears of it, even though it was not waiting yet.
        tokio::time::timeout(Duration::from_millis(1), first.evicted())
            .await
            .expect("first was evicted");
        drop(first); // its connection closes; the table no longer holds it
        assert_eq!(slots.len(), 2);
        drop((second, third));
        assert!(slots.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_serving_a_request_is_never_evicted() {
        let slots = Slots::new(1);
        let serving = slots.admit().expect("free slot");
        let busy = serving.request();
        busy.mark().serving();
        tokio::time::advance(limits::HTTP_EVICT_IDLE_AFTER * 10).await;
        assert!(slots.admit().is_none(), "a busy connection kept its slot");
        drop(busy);
        tokio::time::advance(limits::HTTP_EVICT_IDLE_AFTER).await;
        assert!(slots.admit().is_some(), "idle again: it gives way");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_body_dribbles_in_can_be_evicted() {
        let slots = Slots::new(1);
        let uploading = slots.admit().expect("free slot");
        let _busy = uploading.request();
        tokio::time::advance(limits::HTTP_EVICT_IDLE_AFTER).await;
        assert!(slots.admit().is_some(), "a slow body gives way");
    }
}
