//! Read-index rounds: one leadership confirmation serves every linearizable read that arrived
//! while the previous one ran, as etcd's read loop does, instead of one confirmation per read.
//!
//! A read index must come from a confirmation (a heartbeat round the leader sent after the read
//! arrived, acknowledged by a quorum). Reads queue here; one task takes every read queued, gets
//! one read index, and gives it to all of them; reads that arrive while it waits form the next
//! round. Each read's round therefore began after the read arrived. On the leader a round is one
//! request to raft's core; on a follower it is one `ReadIndex` call to the leader. Under 64
//! concurrent readers that is one per round instead of one per read.

use std::future::Future;

use openraft::errors::{LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use tokio::sync::{mpsc, oneshot};

use super::routing::LeaderWriteError;
use crate::limits;
use crate::raft::Raft;
use crate::rt;

/// Where a read waits for its round's read index.
type Waiter = oneshot::Sender<Result<u64, LeaderWriteError>>;

/// The queue of reads waiting for a round (the task that runs the rounds comes with it).
pub(super) struct ReadIndexRounds {
    queue: mpsc::Sender<Waiter>,
}

impl ReadIndexRounds {
    /// The queue, and the task that serves it with `round` (one read index per call, within a
    /// deadline of its own: every read of the queue waits for it). The task is to be kept and
    /// aborted with the member.
    pub(super) fn start<F, Fut>(round: F) -> (Self, rt::JoinHandle<()>)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, LeaderWriteError>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(limits::READ_INDEX_QUEUE);
        (Self { queue }, rt::spawn(run_rounds(round, waiting)))
    }

    /// The read index of a round that began after this call: the log index a linearizable read
    /// must see applied. The caller bounds the wait.
    pub(super) async fn read_index(&self) -> Result<u64, LeaderWriteError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(tx)
            .await
            .map_err(|_| LeaderWriteError::Stopped)?;
        rx.await.unwrap_or(Err(LeaderWriteError::Stopped))
    }
}

/// Serve rounds until the member goes: each takes every read queued so far.
async fn run_rounds<F, Fut>(mut round: F, mut waiting: mpsc::Receiver<Waiter>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, LeaderWriteError>>,
{
    while let Some(first) = waiting.recv().await {
        let mut readers = vec![first];
        while let Ok(next) = waiting.try_recv() {
            readers.push(next);
        }
        let index = match rt::timeout(limits::READ_INDEX_ROUND_TIMEOUT, round()).await {
            Ok(index) => index,
            Err(rt::Elapsed) => Err(LeaderWriteError::Failed("read index timed out".into())),
        };
        for reader in readers {
            // A read whose caller gave up (its deadline passed) no longer listens.
            let _ = reader.send(index.clone());
        }
    }
}

/// One leadership confirmation by this leader's raft core: the index a read that arrived before
/// it must see applied.
pub(super) async fn confirm_leadership(raft: Raft) -> Result<u64, LeaderWriteError> {
    match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
        Ok(linearizer) => Ok(linearizer.read_log_id().index()),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
            Err(LeaderWriteError::NotLeader)
        }
        Err(RaftError::APIError(e)) => Err(LeaderWriteError::Failed(e.to_string())),
        Err(RaftError::Fatal(_)) => Err(LeaderWriteError::Stopped),
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Rounds numbered from 1 as they begin, each answering `answer(its number)` after `pause`
    /// (as a quorum's answers take a while), and the count of rounds begun.
    fn numbered_rounds(
        pause: Duration,
        answer: fn(u64) -> Result<u64, LeaderWriteError>,
    ) -> (ReadIndexRounds, rt::JoinHandle<()>, Arc<AtomicU64>) {
        let begun = Arc::new(AtomicU64::new(0));
        let counter = begun.clone();
        let (rounds, task) = ReadIndexRounds::start(move || {
            let round = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(pause).await;
                answer(round)
            }
        });
        (rounds, task, begun)
    }

    /// Every read gets the index of a round that began after it asked (a round answers its own
    /// number), and concurrent reads share rounds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_read_is_served_by_a_round_begun_after_it_and_reads_share_rounds() {
        let (rounds, task, begun) = numbered_rounds(Duration::from_millis(20), Ok);
        let rounds = Arc::new(rounds);
        let mut readers = Vec::new();
        for _ in 0..50 {
            let (rounds, begun) = (rounds.clone(), begun.clone());
            readers.push(tokio::spawn(async move {
                let before = begun.load(Ordering::SeqCst);
                let index = rounds.read_index().await.expect("read index");
                (before, index)
            }));
            if readers.len() % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        }
        for reader in readers {
            let (before, index) = reader.await.expect("reader");
            assert!(
                index > before,
                "a read that asked when {before} rounds had begun was served by round {index}"
            );
        }
        let total = begun.load(Ordering::SeqCst);
        assert!(
            (1..=10).contains(&total),
            "{total} rounds for 50 reads arriving over ~35 ms with 20 ms rounds"
        );
        task.abort();
    }

    /// A round that fails fails every read in it, and the next round serves the reads after it.
    #[tokio::test]
    async fn a_failed_round_fails_its_reads_only() {
        let (rounds, task, _) = numbered_rounds(Duration::ZERO, |round| {
            if round == 1 {
                Err(LeaderWriteError::NotLeader)
            } else {
                Ok(round)
            }
        });
        assert!(matches!(
            rounds.read_index().await,
            Err(LeaderWriteError::NotLeader)
        ));
        assert_eq!(rounds.read_index().await.expect("second round"), 2);
        task.abort();
    }
}
