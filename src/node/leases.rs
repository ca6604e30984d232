//! When leases expire: the leader's clock. The lease table itself is replicated state (in the MVCC
//! store); this only remembers, per lease, the instant it runs out, refreshed by grants and
//! keep-alives. Expiry is carried out as a replicated revoke, so every member deletes the same keys
//! at the same revision.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::rt::{self, Instant};

/// Lease id → the instant it expires.
#[derive(Default)]
pub struct LeaseClock {
    expiry: Mutex<BTreeMap<i64, Instant>>,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Instant>> {
        self.expiry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lease `id` lives `ttl_secs` from now.
    pub fn refresh(&self, id: i64, ttl_secs: i64) {
        let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
        self.lock().insert(id, rt::now() + ttl);
    }

    /// Lease `id` lives `left` from now.
    pub fn refresh_for(&self, id: i64, left: Duration) {
        self.lock().insert(id, rt::now() + left);
    }

    /// Every lease the clock knows, with the whole seconds it has left (rounded up).
    pub fn remaining_all(&self) -> Vec<(i64, i64)> {
        let now = rt::now();
        self.lock()
            .iter()
            .map(|(id, at)| {
                (
                    *id,
                    at.saturating_duration_since(now).as_millis().div_ceil(1000) as i64,
                )
            })
            .collect()
    }

    /// Forget every lease (this member no longer leads).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Forget lease `id`.
    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Whole seconds left for lease `id`, rounded up (etcd's `remaining TTL`); `None` if unknown.
    pub fn remaining_secs(&self, id: i64) -> Option<i64> {
        let at = *self.lock().get(&id)?;
        let left = at.saturating_duration_since(rt::now());
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases whose time is up, at most `limit` of them.
    pub fn expired(&self, limit: usize) -> Vec<i64> {
        let now = rt::now();
        self.lock()
            .iter()
            .filter(|(_, at)| **at <= now)
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
        clock.refresh(1, 2);
        clock.refresh(2, 10);
        assert_eq!(clock.remaining_secs(1), Some(2));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.remaining_secs(1), Some(1), "rounded up");
        assert!(clock.expired(10).is_empty());
        clock.refresh(1, 2); // keep-alive
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            clock.expired(10).is_empty(),
            "the keep-alive moved the deadline"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(clock.expired(10), vec![1]);
        clock.remove(1);
        assert_eq!(clock.remaining_secs(1), None);
    }
}
