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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::limits;

/// The member's budget for buffered watch events.
#[derive(Debug)]
pub struct WatchBudget {
    total: usize,
    queued: AtomicUsize,
    streams: AtomicUsize,
}

impl WatchBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            queued: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
        })
    }

    /// Bytes queued or in flight in all streams now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A new stream's account.
    pub(super) fn open_stream(self: &Arc<Self>) -> StreamBytes {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamBytes {
            budget: self.clone(),
            queued: AtomicUsize::new(0),
        }
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
#[derive(Debug)]
pub(super) struct StreamBytes {
    budget: Arc<WatchBudget>,
    queued: AtomicUsize,
}

impl StreamBytes {
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
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
        self.queued.fetch_add(size, Ordering::AcqRel);
        self.budget.queued.fetch_add(size, Ordering::AcqRel);
    }

    /// Give back `size` bytes taken before.
    pub(super) fn give_back(&self, size: usize) {
        let before = self.queued.fetch_sub(size, Ordering::AcqRel);
        debug_assert!(before >= size, "a stream gave back more than it took");
        self.budget.queued.fetch_sub(size, Ordering::AcqRel);
    }
}

impl Drop for StreamBytes {
    fn drop(&mut self) {
        self.budget
            .queued
            .fetch_sub(*self.queued.get_mut(), Ordering::AcqRel);
        self.budget.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn streams_share_the_budget_and_give_it_back_when_they_go() {
        let budget = WatchBudget::new(8 * MIB);
        let streams: Vec<StreamBytes> = (0..4).map(|_| budget.open_stream()).collect();
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
        let idle: Vec<StreamBytes> = (0..fit + 1).map(|_| budget.open_stream()).collect();
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
    fn the_share_stays_within_its_bounds() {
        let budget = WatchBudget::new(limits::WATCH_BUFFERED_BYTES_TOTAL);
        let one = budget.open_stream();
        assert_eq!(budget.share(), limits::WATCH_STREAM_BUFFER_BYTES);
        let many: Vec<StreamBytes> = (0..100_000).map(|_| budget.open_stream()).collect();
        assert_eq!(budget.share(), limits::WATCH_STREAM_SHARE_MIN);
        drop((one, many));
    }
}
