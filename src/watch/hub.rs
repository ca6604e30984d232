//! The watch hub: every watcher of every stream, the synced/unsynced split, fan-out by key, and
//! catch-up from storage.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, Deref};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use prost::Message;
use tokio::sync::Notify;

use super::budget::WatchBudget;
use super::index::WatcherIndex;
use super::index::WatcherKey;
use super::stream::Sent;
use super::stream::{HubMessage, StreamReceiver, StreamSender};
use crate::limits;
use crate::mvcc::{drop_compacted_tombstones, read_events, EventBudget, MvccStore, RangeEnd};
use crate::pb::mvccpb::{event::EventType, Event};
use crate::rt;

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

/// Whom a new watcher is for, which decides whether the member's watcher limit refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A client's watch create: held to `--max-watchers`.
    Client,
    /// A watcher the server keeps for one request in flight (a Lock waiting for the key ahead of
    /// it, an Election.Observe): not refused, as those are bounded by the requests clients may have
    /// in flight.
    Request,
}

/// Why a watcher was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    /// The stream already has a watcher with this id.
    IdTaken,
    /// The stream has [`limits::WATCH_STREAM_WATCHERS_MAX`] watchers.
    StreamFull,
    /// The member has as many watchers as it may (`--max-watchers`).
    MemberFull,
}

struct Watcher {
    spec: WatchSpec,
    /// The next revision this watcher has not yet been sent. Exact while it is unsynced; a synced
    /// watcher has been sent (or did not want) every revision up to the hub's `head`.
    next_rev: i64,
    synced: bool,
    /// Whether anything was sent since the last progress tick.
    sent_since_tick: bool,
    /// Bytes its next revision needs, once catch-up found its stream could not take them (0:
    /// not known): until its stream has that much room, reading storage for it is no use.
    blocked_on: usize,
    tx: StreamSender,
    /// Set by the hub when it is added.
    serial: u64,
}

#[derive(Default)]
struct HubState {
    watchers: BTreeMap<WatcherKey, Watcher>,
    /// The watchers by key or range, for fan-out.
    index: WatcherIndex,
    /// The keys of the watchers that are not synced.
    unsynced: BTreeSet<WatcherKey>,
    /// Watchers per stream.
    per_stream: BTreeMap<u64, usize>,
    next_stream: u64,
    /// Every revision up to here has gone through `notify` (or was in the store before any
    /// watcher came): a watcher caught up to it is synced.
    head: i64,
    /// Serial number of the next watcher added (never reused, unlike watcher keys).
    next_serial: u64,
}

impl HubState {
    /// The next unsynced watchers after `cursor`: as many as one hold of the hub lock may visit.
    fn unsynced_batch(&self, cursor: Bound<WatcherKey>) -> Vec<WatcherKey> {
        self.unsynced
            .range((cursor, Bound::Unbounded))
            .take(limits::WATCH_CATCHUP_LOCK_BATCH)
            .copied()
            .collect()
    }

    fn insert(&mut self, key: WatcherKey, mut w: Watcher) {
        w.serial = self.next_serial;
        self.next_serial += 1;
        self.index.insert(key, &w.spec.key, &w.spec.end);
        if !w.synced {
            self.unsynced.insert(key);
        }
        *self.per_stream.entry(key.stream).or_default() += 1;
        self.watchers.insert(key, w);
    }

    fn remove(&mut self, key: WatcherKey) -> bool {
        let Some(w) = self.watchers.remove(&key) else {
            return false;
        };
        self.index.remove(key, &w.spec.key, &w.spec.end);
        self.unsynced.remove(&key);
        if let Some(n) = self.per_stream.get_mut(&key.stream) {
            *n -= 1;
            if *n == 0 {
                self.per_stream.remove(&key.stream);
            }
        }
        true
    }

    fn stream_keys(&self, stream: u64) -> impl Iterator<Item = (&WatcherKey, &Watcher)> {
        let first = WatcherKey {
            stream,
            watch_id: i64::MIN,
        };
        let last = WatcherKey {
            stream,
            watch_id: i64::MAX,
        };
        self.watchers.range(first..=last)
    }
}

/// All watchers of a member.
pub struct WatchHub {
    state: Mutex<HubState>,
    /// What all streams' buffers may hold together.
    budget: Arc<WatchBudget>,
    /// How many watchers clients may create on this member, all streams together.
    max_watchers: usize,
    /// Changes when the store under the watchers is replaced (always under the store's write
    /// lock, so a reader of the store reads it with the head it goes with): a catch-up read of the
    /// old store is dropped rather than handed out.
    epoch: AtomicU64,
    /// Wakes the catch-up task when a watcher falls behind or joins behind.
    behind: Notify,
}

impl WatchHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Self::with_limits(
            limits::WATCH_BUFFERED_BYTES_TOTAL,
            limits::MAX_WATCHERS_DEFAULT,
        )
    }

    /// An empty hub whose streams may buffer `bytes` together, and which takes at most
    /// `max_watchers` watchers from clients.
    pub fn with_limits(bytes: usize, max_watchers: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            budget: WatchBudget::new(bytes),
            max_watchers,
            epoch: AtomicU64::new(0),
            behind: Notify::new(),
        })
    }

    /// Bytes queued or in flight in all streams (a gauge).
    pub fn buffered_bytes(&self) -> usize {
        self.budget.queued()
    }

    /// Streams evicted so far for holding the spent budget without their clients taking any of it
    /// (a counter).
    pub fn evicted_streams(&self) -> u64 {
        self.budget.evicted()
    }

    /// While the member's watch budget is spent, evict the streams that hold some of it and whose
    /// clients took none for too long (`WatchBudget::evict_stalled`): their owners end them,
    /// watchers and all, and the budget comes back for everyone else. Returns how many it evicted.
    pub fn evict_stalled_streams(&self) -> usize {
        self.budget.evict_stalled(crate::rt::now())
    }

    /// A new stream's buffer, drawing on this hub's budget.
    pub fn stream_channel(&self) -> (StreamSender, StreamReceiver) {
        self.stream_channel_with_capacity(limits::WATCH_STREAM_BUFFER)
    }

    /// A stream buffer of `messages` messages (tests and fuzzing use small ones to make watchers
    /// fall behind).
    pub fn stream_channel_with_capacity(&self, messages: usize) -> (StreamSender, StreamReceiver) {
        super::stream::channel(messages, self.budget.open_stream())
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock()
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
    /// them.
    pub fn add(
        &self,
        key: WatcherKey,
        spec: WatchSpec,
        start_rev: i64,
        current_rev: i64,
        tx: StreamSender,
    ) -> Result<(), AddError> {
        let watcher = (key, spec, start_rev, current_rev, tx);
        self.admit(watcher, Admission::Client, |_| {})
    }

    /// As [`Self::add`] (`watcher`: its key, spec, start and current revisions and stream), held
    /// to the member's watcher limit as `admission` says, and calling `answered` with the outcome
    /// before any other message can reach the watcher's stream: under the hub's lock, which
    /// `notify` and catch-up hold to queue anything. The stream's `created` reply goes there, so it
    /// precedes the watcher's events (a slot reserved in the stream's buffer does not fix the
    /// order; the send does).
    pub fn admit(
        &self,
        watcher: (WatcherKey, WatchSpec, i64, i64, StreamSender),
        admission: Admission,
        answered: impl FnOnce(&Result<(), AddError>),
    ) -> Result<(), AddError> {
        let (key, spec, start_rev, current_rev, tx) = watcher;
        let max_watchers = match admission {
            Admission::Client => self.max_watchers,
            Admission::Request => usize::MAX,
        };
        let mut state = self.lock();
        // Under the store lock every revision up to `current_rev` has been through `notify`.
        state.head = state.head.max(current_rev);
        let refused = if state.watchers.contains_key(&key) {
            Some(AddError::IdTaken)
        } else if state.per_stream.get(&key.stream).copied().unwrap_or(0)
            >= limits::WATCH_STREAM_WATCHERS_MAX
        {
            Some(AddError::StreamFull)
        } else if state.watchers.len() >= max_watchers {
            Some(AddError::MemberFull)
        } else {
            None
        };
        if let Some(e) = refused {
            let refused = Err(e);
            answered(&refused);
            return refused;
        }
        answered(&Ok(()));
        let synced = start_rev > current_rev;
        state.insert(
            key,
            Watcher {
                spec,
                next_rev: start_rev,
                synced,
                sent_since_tick: false,
                tx,
                serial: 0,
                blocked_on: 0,
            },
        );
        drop(state);
        if !synced {
            self.behind.notify_one();
        }
        Ok(())
    }

    /// Remove one watcher; false if it did not exist.
    pub fn remove(&self, key: WatcherKey) -> bool {
        self.lock().remove(key)
    }

    /// Remove every watcher of `stream`; returns how many there were.
    pub fn remove_stream(&self, stream: u64) -> usize {
        let mut state = self.lock();
        let keys: Vec<WatcherKey> = state.stream_keys(stream).map(|(k, _)| *k).collect();
        for key in &keys {
            state.remove(*key);
        }
        keys.len()
    }

    /// Whether every watcher of `stream` is at the head (for progress notifications).
    pub fn stream_synced(&self, stream: u64) -> bool {
        self.lock().stream_keys(stream).all(|(_, w)| w.synced)
    }

    /// Hand the events of newly applied revisions to synced watchers. Called by the state machine
    /// while it still holds the store's write lock, right after the revisions became readable.
    /// `events` are in revision order; each response carries its own revision in the header. Only
    /// the watchers whose key or range holds a changed key are visited.
    pub fn notify(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut fell_behind = false;
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut rev_start = 0;
        while rev_start < events.len() {
            let rev = revision_of(&events[rev_start]);
            let mut rev_end = rev_start;
            while rev_end < events.len() && revision_of(&events[rev_end]) == rev {
                rev_end += 1;
            }
            // Each interested watcher's part of this revision, in event order (as positions in
            // `events`: a watcher's copy is made only once its stream has room for it, or ten
            // thousand full streams would each copy a large value just to drop it).
            let mut mine: BTreeMap<WatcherKey, Vec<usize>> = BTreeMap::new();
            for (at, ev) in events.iter().enumerate().take(rev_end).skip(rev_start) {
                let Some(kv) = &ev.kv else { continue };
                state.index.matching(&kv.key, |key| {
                    if let Some(w) = state.watchers.get(&key) {
                        if w.synced && rev >= w.next_rev && w.spec.wants(ev) {
                            mine.entry(key).or_default().push(at);
                        }
                    }
                });
            }
            for (key, positions) in mine {
                let Some(w) = state.watchers.get_mut(&key) else {
                    continue;
                };
                let size = HubMessage::FIXED_BYTES
                    + positions
                        .iter()
                        .map(|&at| events[at].encoded_len())
                        .sum::<usize>();
                let sent = if size <= w.tx.room() {
                    w.tx.try_send_sized(
                        HubMessage::Events {
                            watch_id: key.watch_id,
                            events: positions.iter().map(|&at| events[at].clone()).collect(),
                            revision: rev,
                            prev_kv: w.spec.prev_kv,
                            fragment: w.spec.fragment,
                        },
                        size,
                    )
                } else if w.tx.is_closed() {
                    Sent::Closed
                } else {
                    Sent::Full
                };
                match sent {
                    Sent::Ok => {
                        w.sent_since_tick = true;
                        w.next_rev = rev + 1;
                    }
                    Sent::Full => {
                        // Never block apply: fall back to catching up from storage, from here.
                        w.synced = false;
                        w.next_rev = rev;
                        state.unsynced.insert(key);
                        fell_behind = true;
                    }
                    Sent::Closed => {
                        state.remove(key);
                    }
                }
            }
            state.head = state.head.max(rev);
            rev_start = rev_end;
        }
        drop(guard);
        if fell_behind {
            self.behind.notify_one();
        }
    }

    /// Move every watcher to the unsynced group: the store under them was replaced (a snapshot was
    /// installed), so the revisions in between reach them from storage, in order, or — if the new
    /// store has compacted them — as a compaction cancel.
    pub fn all_behind(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let head = state.head;
        let mut any = false;
        for (key, w) in state.watchers.iter_mut() {
            if std::mem::replace(&mut w.synced, false) {
                // A synced watcher has had every revision up to the head.
                w.next_rev = w.next_rev.max(head + 1);
                state.unsynced.insert(*key);
                any = true;
            }
        }
        drop(guard);
        if any {
            self.behind.notify_one();
        }
    }

    /// One catch-up round, as etcd's `syncWatchers`: one storage read, from the lowest next
    /// revision of the unsynced watchers whose streams have room, serves all of them. The read is
    /// bounded ([`limits::WATCH_CATCHUP_REVISIONS`], [`limits::WATCH_CATCHUP_BYTES`]) and runs
    /// with neither the store lock (`read` takes it briefly before and after) nor the hub lock
    /// held, and the hub lock is taken for at most [`limits::WATCH_CATCHUP_LOCK_BATCH`] watchers
    /// or events at a time, so apply goes on meanwhile however many watchers there are. What the
    /// read found is handed out only if the store was neither replaced nor compacted past its
    /// start in the meantime. A watcher whose catch-up reaches the hub's head joins the synced
    /// group atomically with respect to `notify`. Returns whether another round right away would
    /// make progress.
    pub fn catch_up<G: Deref<Target = MvccStore>>(&self, read: impl Fn() -> G) -> bool {
        let (store_head, compact, epoch, engine) = {
            let store = read();
            // Under the store lock: no snapshot install is under way, so this epoch goes with
            // this head.
            (
                store.current_revision(),
                store.compact_revision(),
                self.epoch.load(Ordering::Acquire),
                store.engine().clone(),
            )
        };
        // Plan: who is behind, from where.
        let mut from: Option<i64> = None;
        let mut cursor = Bound::Unbounded;
        loop {
            let mut guard = self.lock();
            let state = &mut *guard;
            if self.epoch.load(Ordering::Acquire) != epoch {
                return true; // the store was replaced: plan again on the new one
            }
            // Every revision up to the store's head has been through `notify`.
            state.head = state.head.max(store_head);
            let head = state.head;
            let keys = state.unsynced_batch(cursor);
            for key in &keys {
                let Some(w) = state.watchers.get_mut(key) else {
                    continue;
                };
                if w.next_rev > head {
                    w.synced = true;
                    state.unsynced.remove(key);
                    continue;
                }
                if !w.tx.has_room() || w.blocked_on > w.tx.room() {
                    continue; // its reader is slow: it does not hold the others back
                }
                if w.next_rev < compact {
                    let msg = HubMessage::Compacted {
                        watch_id: key.watch_id,
                        compact_revision: compact,
                        revision: head,
                    };
                    match w.tx.try_send(msg) {
                        Sent::Full => {}
                        Sent::Ok | Sent::Closed => {
                            state.remove(*key);
                        }
                    }
                    continue;
                }
                from = Some(from.map_or(w.next_rev, |f| f.min(w.next_rev)));
            }
            let more = keys.len() == limits::WATCH_CATCHUP_LOCK_BATCH;
            yield_to_apply(guard);
            match keys.last() {
                Some(last) if more => cursor = Bound::Excluded(*last),
                _ => break,
            }
        }
        let Some(from) = from else { return false };

        // The read: no lock held.
        let budget = EventBudget {
            events: usize::MAX,
            revisions: limits::WATCH_CATCHUP_REVISIONS,
            bytes: limits::WATCH_CATCHUP_BYTES,
        };
        let mut batch = match read_events(engine.as_ref(), from, store_head, budget) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!("watch catch-up cannot read the store: {e}");
                return false;
            }
        };
        // Records are only ever removed by compaction: if it did not pass `from`, the read is whole
        // but for the deletions at the compaction point itself, which its background deletion may
        // or may not have reached: they are compacted history either way.
        let compact_now = read().compact_revision();
        if compact_now > from {
            return true; // the next plan cancels the watchers it passed
        }
        drop_compacted_tombstones(&mut batch, compact_now);
        let covered = batch.covered;

        // Which watcher wants which event, as positions in the batch. Only watchers that exist
        // when this starts take part: one added later may have missed an earlier part of it.
        let mut mine: BTreeMap<WatcherKey, Vec<usize>> = BTreeMap::new();
        let mut serial_limit = None;
        for (chunk, events) in batch
            .events
            .chunks(limits::WATCH_CATCHUP_LOCK_BATCH)
            .enumerate()
        {
            let guard = self.lock();
            if self.epoch.load(Ordering::Acquire) != epoch {
                return true;
            }
            let limit = *serial_limit.get_or_insert(guard.next_serial);
            for (i, ev) in events.iter().enumerate() {
                let Some(kv) = &ev.kv else { continue };
                guard.index.matching(&kv.key, |key| {
                    if let Some(w) = guard.watchers.get(&key) {
                        if w.serial < limit && w.spec.wants(ev) {
                            let position = chunk * limits::WATCH_CATCHUP_LOCK_BATCH + i;
                            mine.entry(key).or_default().push(position);
                        }
                    }
                });
            }
            yield_to_apply(guard);
        }
        let serial_limit = serial_limit.unwrap_or(u64::MAX);

        // Hand out: every unsynced watcher whose next revision the read covered gets its part.
        let mut still_behind = false;
        let mut cursor = Bound::Unbounded;
        loop {
            let mut guard = self.lock();
            let state = &mut *guard;
            if self.epoch.load(Ordering::Acquire) != epoch {
                return true;
            }
            let head = state.head;
            let keys = state.unsynced_batch(cursor);
            for key in &keys {
                let Some(w) = state.watchers.get_mut(key) else {
                    continue;
                };
                if w.serial >= serial_limit || w.next_rev < from || w.next_rev > covered {
                    continue;
                }
                let wanted: Vec<&Event> = mine
                    .remove(key)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| &batch.events[i])
                    .filter(|ev| revision_of(ev) >= w.next_rev)
                    .collect();
                // What the stream may take now: whole revisions up to it, the rest next round.
                // Only what goes is copied.
                let cut = fit_revisions(&wanted, w.tx.room());
                let reached = match wanted.get(cut) {
                    Some(first_left) => revision_of(first_left) - 1,
                    None => covered,
                };
                let needs = if cut == 0 {
                    first_revision_bytes(&wanted)
                } else {
                    0
                };
                let events: Vec<Event> = wanted[..cut].iter().map(|ev| (*ev).clone()).collect();
                let sent = if reached < w.next_rev {
                    // Not even its next revision fits: wait for that much room.
                    w.blocked_on = needs;
                    Sent::Full
                } else if events.is_empty() {
                    Sent::Ok
                } else {
                    let msg = HubMessage::Events {
                        watch_id: key.watch_id,
                        events,
                        revision: head,
                        prev_kv: w.spec.prev_kv,
                        fragment: w.spec.fragment,
                    };
                    let sent = w.tx.try_send(msg);
                    w.sent_since_tick |= matches!(sent, Sent::Ok);
                    sent
                };
                match sent {
                    Sent::Ok => {
                        w.blocked_on = 0;
                        w.next_rev = reached + 1;
                        if w.next_rev > head {
                            w.synced = true;
                            state.unsynced.remove(key);
                        } else {
                            still_behind = true;
                        }
                    }
                    Sent::Full => {}
                    Sent::Closed => {
                        state.remove(*key);
                    }
                }
            }
            let more = keys.len() == limits::WATCH_CATCHUP_LOCK_BATCH;
            yield_to_apply(guard);
            match keys.last() {
                Some(last) if more => cursor = Bound::Excluded(*last),
                _ => break,
            }
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
                let _ = w.tx.try_send(msg);
            }
        }
    }

    /// Wait until some watcher may be behind (or at most `max_wait`).
    pub async fn wait_behind(&self, max_wait: std::time::Duration) {
        let _ = crate::rt::timeout(max_wait, self.behind.notified()).await;
    }
}

/// How many of `events` (in revision order) a message of at most `room` bytes can carry, cut at
/// a revision boundary: a revision's events travel together.
fn fit_revisions(events: &[&Event], room: usize) -> usize {
    let mut size = HubMessage::FIXED_BYTES;
    let mut fits = 0;
    for (i, ev) in events.iter().enumerate() {
        if i > 0 && revision_of(ev) != revision_of(events[i - 1]) {
            fits = i; // every event before this one is of a revision that fits whole
        }
        size += ev.encoded_len();
        if size > room {
            return fits;
        }
    }
    events.len()
}

/// The bytes a message carrying just the first revision of `events` counts for.
fn first_revision_bytes(events: &[&Event]) -> usize {
    let Some(first) = events.first() else {
        return 0;
    };
    HubMessage::FIXED_BYTES
        + events
            .iter()
            .take_while(|ev| revision_of(ev) == revision_of(first))
            .map(|ev| ev.encoded_len())
            .sum::<usize>()
}

/// Ends one of catch-up's holds of the hub lock, handing the lock straight to a thread waiting
/// for it, if any. Apply's [`WatchHub::notify`] waits for it while holding the store's write lock;
/// with a plain unlock the catch-up thread, still running, takes the lock back for its next batch
/// before the woken waiter does, and apply waited up to 15 ms per commit behind a round over
/// 20,000 watchers (put p99 2.8 ms quiet, 16 ms during the catch-up, debug build). The core is
/// offered too ([`rt::yield_thread`]): catch-up is CPU-bound work that never sleeps. Measured with
/// `tests/abuse_watch.rs`' 20,000 watchers over 100,000 revisions (debug build, two cores): put
/// p99 1.2-2.9 ms quiet, 6.7-7.4 ms during the catch-up without the yield (3,200 puts meanwhile),
/// 2.0-2.7 ms with it (4,800 puts; the catch-up took 4.1-4.3 s instead of 3.3-3.8 s).
fn yield_to_apply(guard: MutexGuard<'_, HubState>) {
    MutexGuard::unlock_fair(guard);
    rt::yield_thread();
}

fn revision_of(ev: &Event) -> i64 {
    ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
