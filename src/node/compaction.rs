//! The background half of compaction: the task that deletes what a compaction superseded, in
//! bounded steps, as etcd's scheduled compaction does.
//!
//! Apply only moves the compaction point (reads below it are refused from then on). This task
//! takes the physical work in steps of `--experimental-compaction-batch-limit` keys of the key
//! index or records of the engine, each under the store's write lock alone, pausing
//! `--experimental-compaction-sleep-interval` after every batch of records (the key index steps
//! are memory only: it just lets apply and readers in between them). It sleeps while nothing is
//! pending and wakes when a compaction is applied; a restart or an installed snapshot with a
//! compaction pending wakes it too, so an interrupted compaction always finishes.

use std::sync::Arc;
use std::time::Duration;

use crate::mvcc::CompactStep;
use crate::raft::state_machine::Shared;
use crate::rt;

/// Run compactions' physical halves on `state` for as long as the member runs.
pub(super) async fn run_compactor(state: Arc<Shared>, batch_limit: usize, pause: Duration) {
    loop {
        loop {
            // A step reads and writes the engine under the store's write lock: off the async
            // workers, so requests and raft keep both of them while it runs.
            let stepper = state.clone();
            let step = rt::spawn_blocking(move || stepper.compaction_step(batch_limit))
                .await
                .and_then(|step| step);
            match step {
                Ok(CompactStep::Idle) => break,
                Ok(CompactStep::IndexBatch) => rt::yield_now().await,
                Ok(CompactStep::RecordBatch(_)) => rt::sleep(pause).await,
                Ok(CompactStep::Finished { revision, .. }) => {
                    tracing::info!(revision, "finished scheduled compaction");
                    rt::yield_now().await;
                }
                Err(e) => {
                    // The engine failed: apply fails on it too and stops the member; until then
                    // the compaction point holds and the superseded records stay.
                    tracing::error!(error = %e, "compaction stopped");
                    return;
                }
            }
        }
        state.compaction_wanted().await;
    }
}
