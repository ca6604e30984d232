//! The leader's proposals reach raft's core together.
//!
//! Raft's core appends whatever proposals are waiting in its queue when it runs. But it runs as
//! soon as the first one is queued: the runtime schedules a task woken by another next on the
//! same worker, ahead of the request handlers still waiting to propose. So a leader whose fsync
//! runs in the background (a member of a cluster) appended its own clients' writes one or two at
//! a time, each append with its own replication messages to every follower, however many clients
//! were writing at once.
//!
//! So a proposer puts its command in a queue and lets the other ready tasks run once (`gather`);
//! then whoever resumes first hands everything waiting to raft in one message
//! (`Raft::client_write_many`, at most [`limits::PROPOSE_BATCH_COMMANDS`] each), from a task of
//! its own (a proposer that gives up must not cut the others' proposals short). Each proposer
//! waits for its own outcome, as it did proposing alone. A proposer that leaves before its command
//! was handed over takes it out of the queue: it is never proposed, as before.

use std::time::Duration;

use futures::StreamExt;
use openraft::errors::{ClientWriteError, Fatal, RaftError};
use openraft::raft::WriteResponse;

use super::gather::Gathering;
use crate::limits;
use crate::metrics::Metrics;
use crate::raft::{Raft, RaftCommand, TypeConfig};
use crate::rt;

/// What raft answers a proposal: its entry's response once applied, or why not.
pub(super) type Outcome<W = WriteResponse<TypeConfig>> =
    Result<W, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

struct Waiting {
    command: RaftCommand,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// The proposals this member, as leader, is about to hand to raft.
#[derive(Default)]
pub(super) struct ProposeQueue {
    waiting: Gathering<Waiting>,
}

impl ProposeQueue {
    /// Propose `command` to `raft` with the others waiting (counted in `metrics`); what
    /// `Raft::client_write` would answer, or `None` if no outcome came within `timeout` (the
    /// request deadline: the hand-over waits no longer, and no proposer does either).
    pub(super) async fn propose(
        &self,
        metrics: &Metrics,
        raft: &Raft,
        command: RaftCommand,
        timeout: Duration,
    ) -> Option<Outcome> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let mut waiting = self
            .waiting
            .gather(Waiting { command, reply })
            .await
            .into_iter()
            .peekable();
        while waiting.peek().is_some() {
            let batch: Vec<Waiting> = waiting
                .by_ref()
                .take(limits::PROPOSE_BATCH_COMMANDS)
                .collect();
            metrics.leader_proposal_batches.inc();
            metrics.leader_proposals.add(batch.len() as u64);
            rt::spawn(rt::timeout(timeout, hand_over(raft.clone(), batch)));
        }
        // The handing task answers everyone it took (raft stopping included) unless the outcome
        // takes longer than any proposer waits: then the reply is dropped unanswered. That is a
        // timeout, not a stop, even when this proposer's own deadline has not quite fired yet.
        outcome.await.ok()
    }
}

/// Hand every command in `batch` to raft in one message, and each outcome to its proposer.
async fn hand_over(raft: Raft, batch: Vec<Waiting>) {
    let (commands, replies): (Vec<RaftCommand>, Vec<_>) =
        batch.into_iter().map(|w| (w.command, w.reply)).unzip();
    let outcomes = match raft.client_write_many(commands).await {
        Ok(outcomes) => outcomes,
        Err(fatal) => {
            for reply in replies {
                let _ = reply.send(Err(RaftError::Fatal(fatal.clone())));
            }
            return;
        }
    };
    answer_in_order(replies, outcomes).await;
}

/// What raft's stream of outcomes yields for one proposal.
type Streamed<W> = Result<Result<W, ClientWriteError<TypeConfig>>, Fatal<TypeConfig>>;

/// Hand each proposer, in the order proposed (the order they commit in), the next of `outcomes`.
/// The stream ends early when raft stops (after one `Fatal`, and must not be polled again then):
/// everyone left gets `Stopped`.
async fn answer_in_order<W>(
    replies: Vec<tokio::sync::oneshot::Sender<Outcome<W>>>,
    outcomes: impl futures::Stream<Item = Streamed<W>>,
) {
    let mut outcomes = std::pin::pin!(outcomes.fuse());
    for reply in replies {
        let outcome = match outcomes.next().await {
            Some(Ok(Ok(response))) => Ok(response),
            Some(Ok(Err(refused))) => Err(RaftError::APIError(refused)),
            Some(Err(fatal)) => Err(RaftError::Fatal(fatal)),
            None => Err(RaftError::Fatal(Fatal::Stopped)),
        };
        // A proposer that went away meanwhile no longer waits for its outcome.
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raft's stream ends after the first `Fatal` and panics if polled after its end, as
    /// `futures::stream::unfold` does: every proposer still gets an answer.
    #[tokio::test]
    async fn every_proposer_is_answered_when_raft_stops_mid_batch() {
        let (replies, receivers): (Vec<_>, Vec<_>) =
            (0..4).map(|_| tokio::sync::oneshot::channel()).unzip();
        let outcomes = futures::stream::unfold(0u32, |n| async move {
            match n {
                0 => Some((Ok(Ok(7u32)), 1)),
                1 => Some((Err(Fatal::Stopped), 2)),
                _ => None,
            }
        });
        answer_in_order(replies, outcomes).await;
        let mut answers = Vec::new();
        for rx in receivers {
            answers.push(rx.await.expect("every proposer is answered"));
        }
        assert!(matches!(answers[0], Ok(7)), "{:?}", answers[0]);
        for answer in &answers[1..] {
            assert!(
                matches!(answer, Err(RaftError::Fatal(Fatal::Stopped))),
                "{answer:?}"
            );
        }
    }
}
