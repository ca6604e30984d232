//! One memory budget for the events waiting in every watch stream of a member.
//!
//! A stream's buffer is bounded in bytes, but a connection may open a thousand streams, and
//! clients that never read would each fill theirs: 256 such streams on one connection took a
//! member from 140 MB to 990 MB. So every stream draws on one budget
//! ([`limits::WATCH_BUFFERED_BYTES_TOTAL`]): a stream may hold its fair share of it (the budget
//! divided among the open streams, within [`limits::WATCH_STREAM_SHARE_MIN`] and
//! [`limits::WATCH_STREAM_BUFFER_BYTES`]), and nothing is queued past the budget, with two
//! exceptions for an idle stream: while any of the budget is left it takes one message of any
//! size (a revision can be larger than the whole budget: a delete of a big prefix), so the budget
//! is passed by at most one message; and past the budget it still takes one small message
//! ([`limits::WATCH_STREAM_SMALL_MESSAGE_BYTES`]), so readers that hold the budget cannot stop
//! small events reaching everyone else, as long as such messages together stay within
//! [`limits::WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES`] (without that bound, 10,000 streams whose
//! clients let one message through and then stopped reading held one each: 308 MB). What does
//! not fit waits in storage: its watcher falls behind and is caught up once its reader drains.
//!
//! A message counts from when it is queued until its stream asks for the next one. By then the
//! transport has taken the previous response within the client's flow-control window, so the
//! budget also covers the response each stream has in flight.
//!
//! A budget held by streams whose clients take nothing would keep everyone else's events in
//! storage for as long as those clients stay (a client may read its socket and never open its
//! HTTP/2 windows). So while the budget is spent, a stream that holds bytes and has taken none
//! for [`limits::WATCH_STREAM_STALL`] (longer the more it holds) is evicted
//! ([`WatchBudget::evict_stalled`]): the API layer ends it, with its watchers and, for gRPC, its
//! connection, and its bytes come back. Its client reconnects and resumes from its last revision
//! (etcd's Go client does so by itself); a client that does not resume loses the stream, which
//! is the price of everyone else's events getting through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::rt::Instant;
use crate::{limits, rt};

/// The member's budget for buffered watch events.
#[derive(Debug)]
pub struct WatchBudget {
    total: usize,
    queued: AtomicUsize,
    streams: AtomicUsize,
    /// Every open stream, for [`Self::evict_stalled`].
    open: parking_lot::Mutex<BTreeMap<u64, Weak<StreamBytes>>>,
    next_stream: AtomicU64,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    /// When streams were last searched for stalled ones.
    last_sweep: AtomicU64,
    evicted: AtomicU64,
    /// Wakes those waiting for room ([`StreamBytes::room_freed`]) when bytes come back.
    freed: Notify,
    /// How many wait for room: bytes coming back wake them only if any do.
    waiting_for_room: AtomicUsize,
}

impl WatchBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            queued: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            open: parking_lot::Mutex::default(),
            next_stream: AtomicU64::new(0),
            epoch: rt::now(),
            last_sweep: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            freed: Notify::new(),
            waiting_for_room: AtomicUsize::new(0),
        })
    }

    fn wake_those_waiting(&self) {
        if self.waiting_for_room.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Streams evicted so far (a counter).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Acquire)
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes queued or in flight in all streams now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A new stream's account.
    pub(super) fn open_stream(self: &Arc<Self>) -> Arc<StreamBytes> {
        self.streams.fetch_add(1, Ordering::AcqRel);
        let id = self.next_stream.fetch_add(1, Ordering::AcqRel);
        let stream = Arc::new(StreamBytes {
            budget: self.clone(),
            id,
            queued: AtomicUsize::new(0),
            since: AtomicU64::new(self.millis(rt::now())),
            evicted: AtomicBool::new(false),
            on_evict: Notify::new(),
            ender: parking_lot::Mutex::new(None),
        });
        self.open.lock().insert(id, Arc::downgrade(&stream));
        stream
    }

    /// While the budget is spent, evict every stream that holds bytes of it and has taken none for
    /// longer than [`StreamBytes::may_stall`] allows: whoever holds it that way takes nothing, and
    /// everyone else's events (large ones at least) wait in storage meanwhile. Searches at most
    /// once per [`limits::WATCH_STALL_SWEEP_INTERVAL`]; returns how many streams it evicted.
    pub(super) fn evict_stalled(&self, now: Instant) -> usize {
        if self.queued() < self.total {
            return 0;
        }
        let now = self.millis(now);
        let last = self.last_sweep.load(Ordering::Acquire);
        let interval = limits::WATCH_STALL_SWEEP_INTERVAL.as_millis() as u64;
        if last != 0 && now < last.saturating_add(interval)
            || self
                .last_sweep
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return 0;
        }
        let stalled: Vec<Arc<StreamBytes>> = self
            .open
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|s| s.stalled(now))
            .collect();
        for stream in &stalled {
            stream.evict();
        }
        self.evicted
            .fetch_add(stalled.len() as u64, Ordering::AcqRel);
        stalled.len()
    }

    /// What one stream may hold while `streams` are open.
    fn share(&self) -> usize {
        let streams = self.streams.load(Ordering::Acquire).max(1);
        (self.total / streams).clamp(
            limits::WATCH_STREAM_SHARE_MIN,
            limits::WATCH_STREAM_BUFFER_BYTES,
        )
    }
}

/// One stream's bytes in the budget. Shared by the stream's sending and receiving sides; the last
/// of them to go gives back whatever was still queued.
pub(super) struct StreamBytes {
    budget: Arc<WatchBudget>,
    id: u64,
    queued: AtomicUsize,
    /// When (in the budget's milliseconds) the stream last gave bytes back, or took some while it
    /// held none: since then its client has taken nothing.
    since: AtomicU64,
    evicted: AtomicBool,
    on_evict: Notify,
    /// What ends the stream's transport when it is evicted (see [`Self::when_evicted`]).
    ender: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for StreamBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBytes")
            .field("id", &self.id)
            .field("queued", &self.queued)
            .field("evicted", &self.evicted)
            .finish_non_exhaustive()
    }
}

impl StreamBytes {
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// How long a stream holding `queued` bytes may go without its client taking any, while the
    /// member's budget is spent.
    fn may_stall(queued: usize) -> Duration {
        let draining = Duration::from_millis(
            (queued as u64).saturating_mul(1000) / limits::WATCH_STREAM_MIN_BYTES_PER_SEC,
        );
        limits::WATCH_STREAM_STALL + draining
    }

    /// Whether the stream holds bytes and has taken none for longer than it may (`now` in the
    /// budget's milliseconds).
    fn stalled(&self, now: u64) -> bool {
        let queued = self.queued();
        let since = self.since.load(Ordering::Acquire);
        queued > 0
            && !self.is_evicted()
            && u128::from(now.saturating_sub(since)) >= Self::may_stall(queued).as_millis()
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.on_evict.notify_waiters();
        if let Some(end) = self.ender.lock().take() {
            end();
        }
    }

    /// Call `end` when the stream is evicted (at once if it was): it ends what the stream's
    /// reader cannot end by itself, such as a connection whose transport no longer polls the
    /// stream.
    pub(super) fn when_evicted(&self, end: impl FnOnce() + Send + 'static) {
        let mut ender = self.ender.lock();
        if self.is_evicted() {
            drop(ender);
            end();
        } else {
            *ender = Some(Box::new(end));
        }
    }

    /// Whether the stream was evicted (it is to end; its client took nothing for too long).
    pub(super) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Resolves once the stream is evicted.
    pub(super) async fn evicted(&self) {
        let notified = self.on_evict.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_evicted() {
            return;
        }
        notified.await
    }

    /// Whether reading storage for a watcher of this stream is worth it: the stream is idle, or it
    /// holds at most half its share and the member's budget has room for a catch-up batch.
    pub(super) fn has_room(&self) -> bool {
        let queued = self.queued();
        queued == 0
            || (queued <= self.budget.share() / 2
                && self.budget.queued() + limits::WATCH_CATCHUP_BYTES <= self.budget.total)
    }

    /// The largest message this stream may take now: up to its share, within what is left of the
    /// member's budget. An idle stream takes one message of any size while any of the budget is
    /// left, so every revision can be delivered however large, and a small one even past it, while
    /// the small messages past it stay within [`limits::WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES`].
    pub(super) fn room(&self) -> usize {
        let queued = self.queued();
        let all = self.budget.queued();
        let left = self.budget.total.saturating_sub(all);
        if queued == 0 {
            if left > 0 {
                usize::MAX
            } else {
                let past = all - self.budget.total;
                limits::WATCH_STREAM_SMALL_MESSAGE_BYTES
                    .min(limits::WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES.saturating_sub(past))
            }
        } else {
            left.min(self.budget.share().saturating_sub(queued))
        }
    }

    /// Take `size` bytes for a message if [`Self::room`] allows it.
    pub(super) fn try_take(&self, size: usize) -> bool {
        let fits = size <= self.room();
        if fits {
            self.take(size);
        }
        fits
    }

    /// Take `size` bytes whatever the limits (a stream's own small replies: created, canceled,
    /// progress, one per client request and bounded by the stream's message slots).
    pub(super) fn take(&self, size: usize) {
        if self.queued.fetch_add(size, Ordering::AcqRel) == 0 {
            self.since
                .store(self.budget.millis(rt::now()), Ordering::Release);
        }
        self.budget.queued.fetch_add(size, Ordering::AcqRel);
    }

    /// Give back `size` bytes of a message its client took: the stream is not stalled.
    pub(super) fn give_back(&self, size: usize) {
        if size == 0 {
            return;
        }
        self.release(size);
        self.since
            .store(self.budget.millis(rt::now()), Ordering::Release);
    }

    /// Give back `size` bytes taken before, without saying the client took anything (a hold cut
    /// to what was needed).
    pub(super) fn release(&self, size: usize) {
        let before = self.queued.fetch_sub(size, Ordering::AcqRel);
        debug_assert!(before >= size, "a stream gave back more than it took");
        self.budget.queued.fetch_sub(size, Ordering::AcqRel);
        self.budget.wake_those_waiting();
    }

    /// Resolves once some bytes of the member's budget may have come back (wakes spuriously).
    pub(super) async fn room_freed(&self) {
        let budget = &self.budget;
        let freed = budget.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        budget.waiting_for_room.fetch_add(1, Ordering::AcqRel);
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&budget.waiting_for_room);
        freed.await
    }
}

impl Drop for StreamBytes {
    fn drop(&mut self) {
        self.budget
            .queued
            .fetch_sub(*self.queued.get_mut(), Ordering::AcqRel);
        self.budget.streams.fetch_sub(1, Ordering::AcqRel);
        self.budget.open.lock().remove(&self.id);
        self.budget.wake_those_waiting();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn streams_share_the_budget_and_give_it_back_when_they_go() {
        let budget = WatchBudget::new(8 * MIB);
        let streams: Vec<Arc<StreamBytes>> = (0..4).map(|_| budget.open_stream()).collect();
        // Four streams: 2 MiB each. An idle stream takes a message bigger than its share.
        assert!(streams[0].try_take(3 * MIB));
        assert!(!streams[0].try_take(1), "past its share");
        assert!(!streams[0].has_room());
        assert!(streams[1].try_take(MIB));
        assert!(streams[1].try_take(MIB));
        assert!(!streams[1].try_take(1), "its share is full");
        assert_eq!(budget.queued(), 5 * MIB);
        // The third takes the rest of the budget; then the budget, not the share, stops the fourth.
        assert!(streams[2].try_take(3 * MIB));
        assert_eq!(budget.queued(), 8 * MIB);
        assert!(!streams[3].try_take(2 * MIB), "past the member's budget");
        assert!(
            streams[3].try_take(limits::WATCH_STREAM_SMALL_MESSAGE_BYTES),
            "one small message into an idle stream, even past the budget"
        );
        assert!(!streams[3].try_take(1));
        streams[1].give_back(MIB);
        assert!(streams[1].try_take(1));
        // Some of the budget is left: an idle stream takes one message larger than the whole
        // budget (a revision can be), and then none may pass it again.
        let fifth = budget.open_stream();
        assert!(fifth.try_take(20 * MIB));
        let sixth = budget.open_stream();
        assert!(!sixth.try_take(MIB));
        drop((streams, fifth, sixth));
        assert_eq!(budget.queued(), 0, "every stream gave back what it held");
        assert_eq!(budget.streams.load(Ordering::Acquire), 0);
    }

    #[test]
    fn small_messages_past_the_budget_stay_within_their_own_bound() {
        let budget = WatchBudget::new(MIB);
        let full = budget.open_stream();
        assert!(full.try_take(MIB));
        let small = limits::WATCH_STREAM_SMALL_MESSAGE_BYTES;
        let fit = limits::WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES / small;
        let idle: Vec<Arc<StreamBytes>> = (0..fit + 1).map(|_| budget.open_stream()).collect();
        for s in &idle[..fit] {
            assert!(
                s.try_take(small),
                "an idle stream takes a small message past the budget"
            );
        }
        assert!(
            !idle[fit].try_take(1),
            "not once such messages fill their bound"
        );
        assert_eq!(
            budget.queued(),
            MIB + limits::WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES
        );
        // A reader that takes its message gives the room back to the next.
        idle[0].give_back(small);
        assert!(idle[fit].try_take(small));
        drop((full, idle));
        assert_eq!(budget.queued(), 0);
    }

    #[test]
    fn streams_that_hold_the_spent_budget_and_take_nothing_are_evicted() {
        let budget = WatchBudget::new(MIB);
        let start = rt::now();
        let ms = |d: u64| Duration::from_millis(d);
        let first = budget.open_stream();
        let second = budget.open_stream();
        let reading = budget.open_stream();
        let idle = budget.open_stream();
        first.take(MIB / 4);
        second.take(MIB / 4);
        reading.take(MIB / 4);
        // Budget not spent: nobody is evicted however long they hold.
        assert_eq!(budget.evict_stalled(start + ms(60_000)), 0);
        reading.take(MIB / 4);
        assert_eq!(budget.queued(), MIB);
        // A stream may hold its bytes 1 s, plus what it holds at 1 MiB/s, without taking any.
        assert_eq!(StreamBytes::may_stall(MIB / 4), ms(1250));
        assert_eq!(
            budget.evict_stalled(start + ms(1200)),
            0,
            "not for long enough"
        );
        // The reader takes a message, so its clock starts again; the second stream took its
        // bytes later than the first.
        let at = start + ms(1500);
        reading.since.store(budget.millis(at), Ordering::Release);
        second
            .since
            .store(budget.millis(start + ms(400)), Ordering::Release);
        assert_eq!(budget.evict_stalled(at), 1);
        assert!(first.is_evicted());
        assert!(
            futures::FutureExt::now_or_never(first.evicted()).is_some(),
            "its owner learns at once"
        );
        // The second has stalled too by now, but streams are searched once per interval.
        assert_eq!(
            budget.evict_stalled(at + ms(200)),
            0,
            "searched too recently"
        );
        let at = at + limits::WATCH_STALL_SWEEP_INTERVAL;
        assert_eq!(budget.evict_stalled(at), 1);
        assert!(second.is_evicted());
        assert!(!reading.is_evicted() && !idle.is_evicted());
        assert_eq!(budget.evicted(), 2);
        // What ends a stream's transport runs once, when it is evicted, or at once if it was.
        let ended = Arc::new(AtomicUsize::new(0));
        let count = |ended: &Arc<AtomicUsize>| {
            let ended = ended.clone();
            move || {
                ended.fetch_add(1, Ordering::AcqRel);
            }
        };
        reading.when_evicted(count(&ended));
        first.when_evicted(count(&ended));
        assert_eq!(ended.load(Ordering::Acquire), 1, "the evicted one at once");
        // Evicted once: not again. Their bytes come back when they go.
        assert_eq!(budget.evict_stalled(at + ms(10_000)), 1, "the reader, now");
        assert_eq!(
            ended.load(Ordering::Acquire),
            2,
            "the reader's on its eviction"
        );
        drop((first, second));
        assert_eq!(budget.queued(), MIB / 2);
        assert_eq!(
            budget.open.lock().len(),
            2,
            "a stream that goes leaves the search"
        );
    }

    #[test]
    fn the_share_stays_within_its_bounds() {
        let budget = WatchBudget::new(limits::WATCH_BUFFERED_BYTES_TOTAL);
        let one = budget.open_stream();
        assert_eq!(budget.share(), limits::WATCH_STREAM_BUFFER_BYTES);
        let many: Vec<Arc<StreamBytes>> = (0..100_000).map(|_| budget.open_stream()).collect();
        assert_eq!(budget.share(), limits::WATCH_STREAM_SHARE_MIN);
        drop((one, many));
    }
}
