//! Receiving a snapshot from the leader: one transfer at a time, a newer one makes an abandoned
//! one give way, staged chunk by chunk off the async workers.

use super::{blocking_io, Node, NodeError};
use crate::limits;
use crate::rt;

impl Node {
    /// Start receiving a snapshot from the leader. A transfer still waiting for chunks is told to
    /// make way (its sender may have gone away without closing the stream, or a newer leader
    /// sends); one that is installing is waited for, at most
    /// [`limits::SNAPSHOT_CHUNK_RECEIVE_TIMEOUT`]: `None` if it is still in progress then. Whatever
    /// an earlier, unfinished transfer staged is dropped. The number returned is this transfer's,
    /// for [`Node::snapshot_superseded`].
    pub async fn begin_snapshot_receive(
        &self,
    ) -> Result<Option<(tokio::sync::MutexGuard<'_, ()>, u64)>, NodeError> {
        use std::sync::atomic::Ordering;
        let number = self.snapshot_receives.fetch_add(1, Ordering::SeqCst) + 1;
        self.snapshot_superseded.notify_waiters();
        let Ok(guard) = rt::timeout(
            limits::SNAPSHOT_CHUNK_RECEIVE_TIMEOUT,
            self.snapshot_receive.lock(),
        )
        .await
        else {
            return Ok(None);
        };
        let engine = self.state.engine().clone();
        blocking_io(move || crate::raft::snapshot::clear_staging(engine.as_ref())).await?;
        Ok(Some((guard, number)))
    }

    /// Resolves once a transfer begun after transfer `number` wants its place.
    pub async fn snapshot_superseded(&self, number: u64) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.snapshot_superseded.notified();
            tokio::pin!(notified);
            // Registered before the check: a newer transfer cannot slip in between unnoticed.
            notified.as_mut().enable();
            if self.snapshot_receives.load(Ordering::SeqCst) != number {
                return;
            }
            notified.await;
        }
    }

    /// Stage one chunk of the snapshot being received (hold the guard from
    /// [`Node::begin_snapshot_receive`]). Fails on a malformed chunk.
    pub async fn stage_snapshot_chunk(&self, chunk: Vec<u8>) -> Result<usize, NodeError> {
        let engine = self.state.engine().clone();
        blocking_io(move || crate::raft::snapshot::stage(engine.as_ref(), &chunk)).await
    }
}
