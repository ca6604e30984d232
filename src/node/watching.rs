//! The member's watch wiring: registering watchers at the right start revision under the store
//! lock, progress notifications, `prev_kv` lookups, and the two background loops (catch-up from
//! storage for watchers behind, periodic progress ticks).

use std::sync::Arc;

use super::Node;
use crate::limits;
use crate::raft::state_machine::Shared;
use crate::rt;
use crate::watch::{WatchHub, WatchSpec, WatcherKey};

impl Node {
    /// The member's watchers.
    pub fn watch_hub(&self) -> &Arc<WatchHub> {
        &self.watch
    }

    /// Register a watcher that starts at `start_revision` (0: the next revision). Returns whether it
    /// was added (or why not) and the revision for the `created` header, which `answered` also
    /// gets before any event can reach the watcher's stream (`WatchHub::admit`).
    /// The store lock is held across reading the head and registering, so no revision slips by.
    pub fn add_watcher(
        &self,
        key: WatcherKey,
        spec: WatchSpec,
        start_revision: i64,
        tx: crate::watch::StreamSender,
        admission: crate::watch::Admission,
        answered: impl FnOnce(&Result<(), crate::watch::AddError>, i64),
    ) -> (Result<(), crate::watch::AddError>, i64) {
        let store = self.state.read();
        let head = store.current_revision();
        // As etcd: 0 means "from the next revision"; a negative start below the compaction
        // revision (-1 before any compaction) is answered as compacted; the one negative start
        // that is not (-1 on a store never compacted) reads nothing of the past in etcd (its
        // catch-up scan starts past every revision) and so also starts at the next revision.
        let start = if start_revision == 0
            || (start_revision < 0 && start_revision >= store.compact_revision())
        {
            head + 1
        } else {
            start_revision
        };
        let watcher = (key, spec, start, head, tx);
        (
            self.watch
                .admit(watcher, admission, |added| answered(added, head)),
            head,
        )
    }

    /// The revision a progress notification for `stream` may carry: `None` while some watcher of the
    /// stream is still catching up (its events up to the head have not all been sent yet).
    pub fn watch_progress(&self, stream: u64) -> Option<i64> {
        let store = self.state.read();
        self.watch
            .stream_synced(stream)
            .then(|| store.current_revision())
    }

    /// The value `key` had at `revision` (for watch events' `prev_kv`); `None` if it did not exist
    /// or that revision is compacted.
    pub fn value_at(&self, key: &[u8], revision: i64) -> Option<crate::pb::mvccpb::KeyValue> {
        let store = self.state.read();
        let result = store
            .range(key, &crate::mvcc::RangeEnd::Single, revision, 1, false)
            .ok()?;
        result.kvs.into_iter().next()
    }
}

/// Feeds watchers that are behind from storage until they reach the head. Sleeps while none is.
pub(super) async fn run_catch_up(watch: Arc<WatchHub>, state: Arc<Shared>) {
    loop {
        watch.wait_behind(limits::WATCH_CATCHUP_INTERVAL).await;
        loop {
            // Streams that hold the spent budget while their clients take nothing would keep the
            // watchers behind (and everyone's new events) waiting for as long as they stay.
            let evicted = watch.evict_stalled_streams();
            if evicted > 0 {
                tracing::info!("{evicted} watch streams evicted: their clients took no events");
            }
            // A round takes the store's read lock only briefly, before and after its storage
            // read; the read itself is blocking work, kept off the async workers that serve
            // requests and apply.
            let (hub, shared) = (watch.clone(), state.clone());
            let started = rt::now();
            let again = rt::spawn_blocking(move || hub.catch_up(|| shared.read()))
                .await
                .unwrap_or(false);
            if !again {
                break;
            }
            // Be fair to apply and requests, as etcd's sync loop is: before the next round, wait
            // as long as this one took, so catch-up takes at most about half of a core however
            // many watchers are behind.
            rt::sleep(started.elapsed()).await;
        }
    }
}

/// Sends periodic progress notifications to idle watchers that asked for them.
pub(super) async fn run_progress_ticks(
    watch: Arc<WatchHub>,
    state: Arc<Shared>,
    every: std::time::Duration,
) {
    loop {
        rt::sleep(every).await;
        let store = state.read();
        watch.progress_tick(store.current_revision());
    }
}
