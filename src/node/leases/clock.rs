//! When leases expire: the leader's clock. The lease table itself is replicated state (in the MVCC
//! store); this only remembers, per lease, the instant it runs out, refreshed by grants and
//! keep-alives. Expiry is carried out as a replicated revoke, so every member deletes the same keys
//! at the same revision.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::rt::{self, Instant};

/// Lease id → the instant it expires (and the raft term in which that was set), and the term the
/// clock was taken up in.
#[derive(Default)]
pub struct LeaseClock {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    expiry: BTreeMap<i64, (Instant, u64)>,
    /// The term in which this leader filled the clock from the applied lease table; `None` while
    /// it does not lead (or has not yet).
    term: Option<u64>,
}

impl LeaseClock {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The term the clock was taken up in, if any.
    pub fn taken_up_in(&self) -> Option<u64> {
        self.inner().term
    }

    /// Take up `leases` (id, time left) as the whole clock for `term`, unless the clock was
    /// already taken up in that term; whether it was done now. A lease this leader already set in
    /// `term` (granted or renewed before the take-up) keeps its time: it is the newer news.
    pub fn take_up(&self, term: u64, leases: Vec<(i64, Duration)>) -> bool {
        let now = rt::now();
        let mut inner = self.inner();
        if inner.term == Some(term) {
            return false;
        }
        let expiry = leases
            .into_iter()
            .map(|(id, left)| match inner.expiry.get(&id) {
                Some(&(at, set_in)) if set_in == term => (id, (at, set_in)),
                _ => (id, (now + left, term)),
            })
            .collect();
        inner.expiry = expiry;
        inner.term = Some(term);
        true
    }

    /// Lease `id` lives `ttl_secs` from now (a grant or a renewal by the leader of `term`).
    pub fn refresh(&self, id: i64, ttl_secs: i64, term: u64) {
        let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
        self.inner().expiry.insert(id, (rt::now() + ttl, term));
    }

    /// Every lease the clock knows, with the whole seconds it has left, rounded up: what a
    /// checkpoint records (as etcd's do), so a restart never shortens a lease.
    pub fn remaining_all(&self) -> Vec<(i64, i64)> {
        let now = rt::now();
        self.inner()
            .expiry
            .iter()
            .map(|(id, (at, _))| {
                (
                    *id,
                    at.saturating_duration_since(now).as_millis().div_ceil(1000) as i64,
                )
            })
            .collect()
    }

    /// Forget every lease (this member no longer leads).
    pub fn clear(&self) {
        let mut inner = self.inner();
        inner.expiry.clear();
        inner.term = None;
    }

    /// Forget lease `id`.
    pub fn remove(&self, id: i64) {
        self.inner().expiry.remove(&id);
    }

    /// Whole seconds left for lease `id`, rounded down, as etcd's `LeaseTimeToLive` answers (a
    /// lease of 10 s asked at once has 9 left); `None` if unknown. A lease past its time whose
    /// revoke is still on its way has 0 left: etcd would answer a negative TTL there, and -1 is
    /// what clients read as "no such lease" while its keys are still in place.
    pub fn remaining_secs(&self, id: i64) -> Option<i64> {
        let (at, _) = *self.inner().expiry.get(&id)?;
        let left = at.saturating_duration_since(rt::now());
        Some(i64::try_from(left.as_secs()).unwrap_or(i64::MAX))
    }

    /// Leases whose time is up, at most `limit` of them.
    pub fn expired(&self, limit: usize) -> Vec<i64> {
        let now = rt::now();
        self.inner()
            .expiry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .take(limit)
            .collect()
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_refreshes() {
        let clock = LeaseClock::default();
        clock.refresh(1, 2, 1);
        clock.refresh(2, 10, 1);
        assert_eq!(clock.remaining_secs(1), Some(2));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(clock.remaining_secs(1), Some(1), "rounded down, as etcd");
        assert_eq!(clock.remaining_all()[0], (1, 2), "checkpoints round up");
        tokio::time::advance(Duration::from_millis(1499)).await;
        assert_eq!(clock.remaining_secs(1), Some(0), "half a second left");
        assert!(clock.expired(10).is_empty());
        clock.refresh(1, 2, 1); // keep-alive
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            clock.expired(10).is_empty(),
            "the keep-alive moved the deadline"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(clock.expired(10), vec![1]);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.remaining_secs(1), Some(0), "overdue: 0, never -1");
        clock.remove(1);
        assert_eq!(clock.remaining_secs(1), None);
    }
}

#[cfg(all(test, not(madsim)))]
mod take_up_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_take_up_keeps_what_this_term_set_and_replaces_the_rest() {
        let clock = LeaseClock::default();
        clock.refresh(1, 60, 4); // set in an earlier term: stale
        clock.refresh(2, 60, 5); // granted in this term before the take-up
        let left = Duration::from_secs(11);
        assert!(clock.take_up(5, vec![(1, left), (2, left), (3, left)]));
        assert_eq!(clock.remaining_secs(1), Some(11));
        assert_eq!(
            clock.remaining_secs(2),
            Some(60),
            "this term's grant is newer news"
        );
        assert_eq!(
            clock.remaining_secs(3),
            Some(11),
            "a lease the clock did not know"
        );
        assert!(!clock.take_up(5, vec![]), "once per term");
        assert_eq!(clock.taken_up_in(), Some(5));
        clock.clear();
        assert_eq!(clock.taken_up_in(), None);
        assert_eq!(clock.remaining_secs(3), None);
    }
}
