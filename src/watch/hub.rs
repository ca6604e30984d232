//! The watch hub: every watcher of every stream, the synced/unsynced split, and catch-up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};

use crate::limits;
use crate::mvcc::{MvccError, MvccStore, RangeEnd};
use crate::pb::mvccpb::{event::EventType, Event};

/// Identifies a watcher: the stream it belongs to and its id within that stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatcherKey {
    pub stream: u64,
    pub watch_id: i64,
}

/// What a watcher watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub end: RangeEnd,
    pub no_put: bool,
    pub no_delete: bool,
    /// Whether events carry the key's previous value.
    pub prev_kv: bool,
    /// Whether an idle watcher gets periodic progress notifications.
    pub progress_notify: bool,
    /// Whether a response too large for one message may be split into fragments.
    pub fragment: bool,
}

impl WatchSpec {
    /// Every put and delete of `[key, end)`, without previous values, progress or fragments.
    pub fn all_changes(key: Vec<u8>, end: RangeEnd) -> Self {
        WatchSpec {
            key,
            end,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
        }
    }

    fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        if !self.end.contains(&self.key, &kv.key) {
            return false;
        }
        let is_put = ev.r#type == EventType::Put as i32;
        !(is_put && self.no_put || !is_put && self.no_delete)
    }
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

struct Watcher {
    spec: WatchSpec,
    /// The next revision this watcher has not yet been sent.
    next_rev: i64,
    synced: bool,
    /// Whether anything was sent since the last progress tick.
    sent_since_tick: bool,
    tx: mpsc::Sender<HubMessage>,
}

#[derive(Default)]
struct HubState {
    watchers: BTreeMap<WatcherKey, Watcher>,
    next_stream: u64,
}

/// All watchers of a member.
#[derive(Default)]
pub struct WatchHub {
    state: Mutex<HubState>,
    /// Wakes the catch-up task when a watcher falls behind or joins behind.
    behind: Notify,
}

enum Sent {
    Ok,
    Full,
    Closed,
}

fn try_send(tx: &mpsc::Sender<HubMessage>, msg: HubMessage) -> Sent {
    match tx.try_send(msg) {
        Ok(()) => Sent::Ok,
        Err(mpsc::error::TrySendError::Full(_)) => Sent::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
    }
}

impl WatchHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh stream id.
    pub fn new_stream(&self) -> u64 {
        let mut state = self.lock();
        state.next_stream += 1;
        state.next_stream
    }

    /// Number of watchers on all streams (a gauge).
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Whether `key` is taken.
    pub fn contains(&self, key: WatcherKey) -> bool {
        self.lock().watchers.contains_key(&key)
    }

    /// Register a watcher that must next receive revision `start_rev`. `current_rev` is the store
    /// revision the caller read under the store lock it still holds, so no revision can slip between
    /// them. Returns false if the key is taken.
    pub fn add(
        &self,
        key: WatcherKey,
        spec: WatchSpec,
        start_rev: i64,
        current_rev: i64,
        tx: mpsc::Sender<HubMessage>,
    ) -> bool {
        let mut state = self.lock();
        if state.watchers.contains_key(&key) {
            return false;
        }
        let synced = start_rev > current_rev;
        state.watchers.insert(
            key,
            Watcher {
                spec,
                next_rev: start_rev,
                synced,
                sent_since_tick: false,
                tx,
            },
        );
        drop(state);
        if !synced {
            self.behind.notify_one();
        }
        true
    }

    /// Remove one watcher; false if it did not exist.
    pub fn remove(&self, key: WatcherKey) -> bool {
        self.lock().watchers.remove(&key).is_some()
    }

    /// Remove every watcher of `stream`; returns how many there were.
    pub fn remove_stream(&self, stream: u64) -> usize {
        let mut state = self.lock();
        let before = state.watchers.len();
        state.watchers.retain(|k, _| k.stream != stream);
        before - state.watchers.len()
    }

    /// Whether every watcher of `stream` is at the head (for progress notifications).
    pub fn stream_synced(&self, stream: u64) -> bool {
        self.lock()
            .watchers
            .iter()
            .filter(|(k, _)| k.stream == stream)
            .all(|(_, w)| w.synced)
    }

    /// Hand the events of newly applied revisions to synced watchers. Called by the state machine
    /// while it still holds the store's write lock, right after the revisions became readable.
    /// `events` are in revision order; each response carries its own revision in the header.
    pub fn notify(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut fell_behind = false;
        let mut state = self.lock();
        let mut closed = Vec::new();
        for (key, w) in state.watchers.iter_mut() {
            if !w.synced {
                continue;
            }
            let mut rev_start = 0;
            while rev_start < events.len() {
                let rev = revision_of(&events[rev_start]);
                let mut rev_end = rev_start;
                while rev_end < events.len() && revision_of(&events[rev_end]) == rev {
                    rev_end += 1;
                }
                if rev >= w.next_rev {
                    let mine: Vec<Event> = events[rev_start..rev_end]
                        .iter()
                        .filter(|e| w.spec.wants(e))
                        .cloned()
                        .collect();
                    if !mine.is_empty() {
                        let msg = HubMessage::Events {
                            watch_id: key.watch_id,
                            events: mine,
                            revision: rev,
                            prev_kv: w.spec.prev_kv,
                            fragment: w.spec.fragment,
                        };
                        match try_send(&w.tx, msg) {
                            Sent::Ok => w.sent_since_tick = true,
                            Sent::Full => {
                                // Never block apply: fall back to catching up from storage.
                                w.synced = false;
                                fell_behind = true;
                                break;
                            }
                            Sent::Closed => {
                                closed.push(*key);
                                break;
                            }
                        }
                    }
                    w.next_rev = rev + 1;
                }
                rev_start = rev_end;
            }
        }
        for key in closed {
            state.watchers.remove(&key);
        }
        drop(state);
        if fell_behind {
            self.behind.notify_one();
        }
    }

    /// Move every watcher to the unsynced group: the store under them was replaced (a snapshot was
    /// installed), so the revisions in between reach them from storage, in order, or — if the new
    /// store has compacted them — as a compaction cancel.
    pub fn all_behind(&self) {
        let mut state = self.lock();
        let mut any = false;
        for w in state.watchers.values_mut() {
            any |= std::mem::replace(&mut w.synced, false);
        }
        drop(state);
        if any {
            self.behind.notify_one();
        }
    }

    /// One catch-up round: for each unsynced watcher, send its next batch from storage (or cancel
    /// it if its revisions were compacted). Runs under the store's read lock so apply cannot move
    /// the head meanwhile; a watcher that reaches the head joins the synced group atomically.
    /// Returns whether some watcher is still behind although its stream had room (so another round
    /// right away makes progress).
    pub fn catch_up(&self, store: &MvccStore) -> bool {
        let head = store.current_revision();
        let mut state = self.lock();
        let mut done = Vec::new();
        let mut still_behind = false;
        for (key, w) in state.watchers.iter_mut() {
            if w.synced {
                continue;
            }
            if w.next_rev > head {
                w.synced = true;
                continue;
            }
            if w.tx.capacity() == 0 {
                continue; // its reader is slow: do not re-read storage for nothing
            }
            match store.events_since(w.next_rev, limits::WATCH_CATCHUP_EVENTS) {
                Err(MvccError::Compacted) => {
                    let msg = HubMessage::Compacted {
                        watch_id: key.watch_id,
                        compact_revision: store.compact_revision(),
                        revision: head,
                    };
                    match try_send(&w.tx, msg) {
                        Sent::Full => {}
                        Sent::Ok | Sent::Closed => done.push(*key),
                    }
                }
                Err(e) => {
                    tracing::error!("watch catch-up cannot read the store: {e}");
                }
                Ok((events, covered)) => {
                    let mine: Vec<Event> = events.into_iter().filter(|e| w.spec.wants(e)).collect();
                    let sent = if mine.is_empty() {
                        Sent::Ok
                    } else {
                        try_send(
                            &w.tx,
                            HubMessage::Events {
                                watch_id: key.watch_id,
                                events: mine,
                                revision: head,
                                prev_kv: w.spec.prev_kv,
                                fragment: w.spec.fragment,
                            },
                        )
                    };
                    match sent {
                        Sent::Ok => {
                            w.sent_since_tick = true;
                            w.next_rev = covered + 1;
                            w.synced = w.next_rev > head;
                            still_behind |= !w.synced;
                        }
                        Sent::Full => {}
                        Sent::Closed => done.push(*key),
                    }
                }
            }
        }
        for key in done {
            state.watchers.remove(&key);
        }
        still_behind
    }

    /// Send a progress notification (no events, header at `head`) to every synced watcher that asked
    /// for them and was sent nothing since the previous tick. Called under the store's read lock, so
    /// every event up to `head` is already queued ahead of it.
    pub fn progress_tick(&self, head: i64) {
        let mut state = self.lock();
        for (key, w) in state.watchers.iter_mut() {
            let idle = !std::mem::replace(&mut w.sent_since_tick, false);
            if w.synced && w.spec.progress_notify && idle {
                let msg = HubMessage::Events {
                    watch_id: key.watch_id,
                    events: Vec::new(),
                    revision: head,
                    prev_kv: false,
                    fragment: false,
                };
                // A full stream has events queued: the client is not idle, skip this tick.
                let _ = try_send(&w.tx, msg);
            }
        }
    }

    /// Wait until some watcher may be behind (or at most `max_wait`).
    pub async fn wait_behind(&self, max_wait: std::time::Duration) {
        let _ = crate::rt::timeout(max_wait, self.behind.notified()).await;
    }
}

fn revision_of(ev: &Event) -> i64 {
    ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mvcc::WriteTxn;
    use crate::storage::{Durability, MemoryEngine};

    fn commit(s: &mut MvccStore, hub: &WatchHub, f: impl FnOnce(&mut WriteTxn<'_>)) {
        let mut txn = s.write_txn();
        f(&mut txn);
        let (batch, _) = txn.finish();
        s.engine().write(batch, Durability::Sync).unwrap();
        s.mark_flushed();
        hub.notify(&s.take_events());
    }

    fn spec(key: &str, end: RangeEnd) -> WatchSpec {
        WatchSpec::all_changes(key.into(), end)
    }

    fn revs(msg: &HubMessage) -> Vec<i64> {
        match msg {
            HubMessage::Events { events, .. } => events.iter().map(revision_of).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn synced_watchers_get_matching_events_and_slow_ones_catch_up() {
        let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        let hub = WatchHub::new();
        let (fast_tx, mut fast) = mpsc::channel(16);
        let (slow_tx, mut slow) = mpsc::channel(1);
        let k = |id| WatcherKey {
            stream: 1,
            watch_id: id,
        };
        assert!(hub.add(k(1), spec("a", RangeEnd::Unbounded), 2, 1, fast_tx.clone()));
        assert!(
            !hub.add(k(1), spec("a", RangeEnd::Single), 2, 1, fast_tx),
            "duplicate id"
        );
        assert!(hub.add(k(2), spec("b", RangeEnd::Single), 2, 1, slow_tx));
        for i in 0..3u8 {
            commit(&mut s, &hub, |t| {
                t.put(b"a", vec![i], 0).unwrap();
                t.put(b"b", vec![i], 0).unwrap();
            });
        }
        for want in [2, 3, 4] {
            assert_eq!(
                revs(&fast.try_recv().unwrap()),
                vec![want, want],
                "both keys of one revision together"
            );
        }
        // The slow watcher's channel held one message; it fell behind instead of blocking.
        assert_eq!(revs(&slow.try_recv().unwrap()), vec![2]);
        assert!(slow.try_recv().is_err());
        assert!(!hub.catch_up(&s), "one round reaches the head");
        assert_eq!(
            revs(&slow.try_recv().unwrap()),
            vec![3, 4],
            "caught up from storage, in order, no gap"
        );
        commit(&mut s, &hub, |t| {
            t.put(b"b", vec![9], 0).unwrap();
        });
        assert_eq!(
            revs(&slow.try_recv().unwrap()),
            vec![5],
            "synced again: live events, no duplicate"
        );
        assert_eq!(hub.watcher_count(), 2);
        assert_eq!(hub.remove_stream(1), 2);
        assert_eq!(hub.watcher_count(), 0);
    }

    #[test]
    fn after_a_store_is_replaced_watchers_catch_up_from_it() {
        let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        let hub = WatchHub::new();
        let (tx, mut rx) = mpsc::channel(16);
        let key = WatcherKey {
            stream: 3,
            watch_id: 0,
        };
        assert!(hub.add(key, spec("k", RangeEnd::Single), 2, 1, tx));
        for i in 0..3u8 {
            commit(&mut s, &hub, |t| {
                t.put(b"k", vec![i], 0).unwrap();
            });
        }
        for want in [2, 3, 4] {
            assert_eq!(revs(&rx.try_recv().unwrap()), vec![want]);
        }
        // Another store that went further (as an installed snapshot does): its revisions 5..=7
        // never passed through this hub.
        let mut installed = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        let elsewhere = WatchHub::new();
        for i in 0..6u8 {
            commit(&mut installed, &elsewhere, |t| {
                t.put(b"k", vec![i], 0).unwrap();
            });
        }
        hub.all_behind();
        assert!(!hub.catch_up(&installed));
        assert_eq!(
            revs(&rx.try_recv().unwrap()),
            vec![5, 6, 7],
            "the skipped revisions, in order, none twice"
        );
    }

    #[test]
    fn compacted_start_is_cancelled_and_filters_apply() {
        let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        let hub = WatchHub::new();
        for i in 0..4u8 {
            commit(&mut s, &hub, |t| {
                t.put(b"k", vec![i], 0).unwrap();
            });
        }
        commit(&mut s, &hub, |t| {
            drop(t.delete_range(b"k", &RangeEnd::Single).unwrap())
        });
        let mut batch = crate::storage::WriteBatch::new();
        s.compact(4, &mut batch).unwrap();
        s.engine().write(batch, Durability::Sync).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        assert!(hub.add(
            WatcherKey {
                stream: 7,
                watch_id: 0
            },
            spec("k", RangeEnd::Single),
            2,
            6,
            tx.clone()
        ));
        let no_put = WatchSpec {
            no_put: true,
            ..spec("k", RangeEnd::Single)
        };
        assert!(hub.add(
            WatcherKey {
                stream: 7,
                watch_id: 1
            },
            no_put,
            4,
            6,
            tx
        ));
        hub.catch_up(&s);
        let mut got = [rx.try_recv().unwrap(), rx.try_recv().unwrap()];
        got.sort_by_key(|m| match m {
            HubMessage::Events { watch_id, .. } | HubMessage::Compacted { watch_id, .. } => {
                *watch_id
            }
            _ => -1,
        });
        assert_eq!(
            got[0],
            HubMessage::Compacted {
                watch_id: 0,
                compact_revision: 4,
                revision: 6
            }
        );
        assert_eq!(revs(&got[1]), vec![6], "NOPUT leaves only the delete");
        assert_eq!(hub.watcher_count(), 1, "the compacted watcher is gone");
    }
}
