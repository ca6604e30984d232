//! Forwarded commands travel to the leader in batches.
//!
//! A follower's clients send their commands at about the same moment (a connection delivers
//! several requests per read). Forwarding each in its own `Propose` call cost a whole peer round
//! trip per command: HTTP/2 frames and a socket write each way, a task on each side, and a log
//! append of its own on the leader. With 64 clients spread over three members, a put sent to a
//! follower cost the cluster about 110 µs more CPU than one sent to the leader.
//!
//! So a forwarding caller puts its command in a queue, lets the other ready tasks run once, and
//! then sends whatever is waiting (`gather`): all commands for the same leader in one `ProposeMany` call,
//! from a task of its own (a caller that gives up must not cut the others' call short). Each
//! caller waits for its own result, which is what `Propose` would have answered. A caller that
//! finds its command already taken by another just waits.

use std::time::Duration;

use tonic::Status;

use super::gather::Gathering;
use crate::limits;
use crate::metrics::Metrics;
use crate::net::peer_channels::PeerRpc;
use crate::net::peer_dial;
use crate::pb::metastore::{ProposeManyRequest, ProposeRequest, ProposeResponse};
use crate::raft::forwards::LeaderKey;
use crate::rt;

type Reply = tokio::sync::oneshot::Sender<Result<ProposeResponse, ForwardFailure>>;

/// Why a forwarded command got no answer from the leader.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ForwardFailure {
    /// The call failed (the status keeps its source: see [`ForwardFailure::never_sent`]).
    #[error("{0}")]
    Call(Status),
    #[error("the leader did not answer forwarded commands in time")]
    Late,
    #[error("the leader answered {answered} of {sent} forwarded commands")]
    Short { answered: usize, sent: usize },
    /// The sending task ended without an answer: it cannot, short of the runtime stopping.
    #[error("the forwarded batch was dropped")]
    Dropped,
}

impl ForwardFailure {
    /// Whether the command certainly never left this member ([`peer_dial::never_sent`]).
    pub(crate) fn never_sent(&self) -> bool {
        matches!(self, ForwardFailure::Call(status) if peer_dial::never_sent(status))
    }
}

/// A command waiting to be forwarded.
struct Waiting {
    leader: LeaderKey,
    client: PeerRpc,
    command: Vec<u8>,
    reply: Reply,
}

/// Commands going to one leader in one call.
struct Batch {
    leader: LeaderKey,
    client: PeerRpc,
    commands: Vec<Vec<u8>>,
    replies: Vec<Reply>,
    bytes: usize,
}

/// The queue of commands this member is about to forward.
#[derive(Default)]
pub(super) struct ForwardQueue {
    waiting: Gathering<Waiting>,
}

impl ForwardQueue {
    /// Forward `command` (an encoded `Command`) to `leader` through `client`, with others that
    /// are waiting; the call is given `timeout` (and counted in `metrics`). Answers as a
    /// `Propose` call would.
    pub(super) async fn propose(
        &self,
        metrics: &Metrics,
        leader: LeaderKey,
        client: PeerRpc,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<ProposeResponse, ForwardFailure> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let waiting = Waiting {
            leader,
            client,
            command,
            reply,
        };
        for batch in batches(self.waiting.gather(waiting).await) {
            metrics.forwarded_batches.inc();
            metrics.forwarded_commands.add(batch.commands.len() as u64);
            rt::spawn(send(batch, timeout));
        }
        result.await.unwrap_or(Err(ForwardFailure::Dropped))
    }
}

/// `waiting` grouped by leader, in order, each batch bounded by [`limits::FORWARD_BATCH_COMMANDS`]
/// and (past its first command) [`limits::FORWARD_BATCH_BYTES`].
fn batches(waiting: Vec<Waiting>) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for w in waiting {
        let size = w.command.len();
        let open = batches.iter_mut().rev().find(|b| b.leader == w.leader);
        match open {
            Some(b)
                if b.commands.len() < limits::FORWARD_BATCH_COMMANDS
                    && b.bytes + size <= limits::FORWARD_BATCH_BYTES =>
            {
                b.bytes += size;
                b.commands.push(w.command);
                b.replies.push(w.reply);
            }
            _ => batches.push(Batch {
                leader: w.leader,
                client: w.client,
                commands: vec![w.command],
                replies: vec![w.reply],
                bytes: size,
            }),
        }
    }
    batches
}

/// Send `batch` and hand each caller its result (an error as the call failed, with its source,
/// which tells whether the request can have left this member).
async fn send(batch: Batch, timeout: Duration) {
    let Batch {
        client,
        commands,
        replies,
        ..
    } = batch;
    let count = commands.len();
    let results = match rt::timeout(timeout, forward(client, commands)).await {
        Ok(results) => results,
        Err(rt::Elapsed) => vec![Err(ForwardFailure::Late); count],
    };
    debug_assert_eq!(results.len(), count);
    for (reply, result) in replies.into_iter().zip(results) {
        // A caller that gave up no longer listens.
        let _ = reply.send(result);
    }
}

/// One result per command of `commands`, in order.
async fn forward(
    mut client: PeerRpc,
    commands: Vec<Vec<u8>>,
) -> Vec<Result<ProposeResponse, ForwardFailure>> {
    let count = commands.len();
    let request = ProposeManyRequest {
        commands: commands.clone(),
    };
    let failed = |failure: ForwardFailure| vec![Err(failure); count];
    match client.propose_many(request).await {
        Ok(response) => {
            let results = response.into_inner().results;
            if results.len() == count {
                results.into_iter().map(Ok).collect()
            } else {
                failed(ForwardFailure::Short {
                    answered: results.len(),
                    sent: count,
                })
            }
        }
        // A leader of an earlier version (during a rolling upgrade) knows only `Propose`.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            let one_by_one = commands.into_iter().map(|command| {
                let mut client = client.clone();
                async move {
                    let reply = client.propose(ProposeRequest { command }).await;
                    reply
                        .map(tonic::Response::into_inner)
                        .map_err(ForwardFailure::Call)
                }
            });
            futures::future::join_all(one_by_one).await
        }
        Err(status) => failed(ForwardFailure::Call(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(leader: LeaderKey, size: usize) -> Waiting {
        let (reply, _) = tokio::sync::oneshot::channel();
        let channels = crate::net::peer_channels::PeerChannels::default();
        let client = channels
            .client_for_member("m", &["http://127.0.0.1:1".to_string()])
            .expect("a lazy client");
        Waiting {
            leader,
            client,
            command: vec![0; size],
            reply,
        }
    }

    fn shape(batches: &[Batch]) -> Vec<(LeaderKey, usize)> {
        batches
            .iter()
            .map(|b| (b.leader, b.commands.len()))
            .collect()
    }

    #[tokio::test]
    async fn commands_are_grouped_by_leader_in_order() {
        let items = [(1, 1), (1, 2), (1, 1), (2, 2), (1, 2)]
            .map(|leader| waiting(leader, 10))
            .into_iter()
            .collect();
        let got = batches(items);
        assert_eq!(shape(&got), vec![((1, 1), 2), ((1, 2), 2), ((2, 2), 1)]);
    }

    #[tokio::test]
    async fn batches_are_bounded_by_count_and_bytes() {
        let n = limits::FORWARD_BATCH_COMMANDS + 3;
        let items = (0..n).map(|_| waiting((1, 1), 1)).collect();
        assert_eq!(
            shape(&batches(items)),
            vec![((1, 1), limits::FORWARD_BATCH_COMMANDS), ((1, 1), 3)]
        );
        let half = limits::FORWARD_BATCH_BYTES / 2;
        let sizes = [half, half, 1, limits::FORWARD_BATCH_BYTES * 2, 1];
        let items = sizes
            .map(|size| waiting((1, 1), size))
            .into_iter()
            .collect();
        // Two halves fill a batch; an oversized command travels alone.
        assert_eq!(
            shape(&batches(items)),
            vec![((1, 1), 2), ((1, 1), 1), ((1, 1), 1), ((1, 1), 1)]
        );
    }

    #[tokio::test]
    async fn a_command_whose_caller_left_before_it_was_sent_stays_unsent() {
        let queue = ForwardQueue::default();
        let metrics = Metrics::default();
        let client = waiting((1, 1), 1).client;
        let call = queue.propose(&metrics, (1, 1), client, vec![1], Duration::from_secs(1));
        // Polled once (it queues its command and lets others join), then dropped.
        assert!(futures::FutureExt::now_or_never(call).is_none());
        assert!(queue.waiting.is_empty());
        assert_eq!(metrics.forwarded_batches.get(), 0);
    }
}
