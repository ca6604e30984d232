//! Proposing a command: checked against the request size, the alarms and the quota (see `quota`),
//! routed to the leader (see `routing`) and waited for under the request timeout, counted in
//! etcd's proposal metrics.

use prost::Message;

use super::{Node, NodeError};
use crate::apply::Applied;
use crate::metrics::Metrics;
use crate::pb::metastore::{command, Command, Requester};
use crate::rt;

impl Node {
    /// Replicate `op` and wait (at most the configured request timeout) until this member has
    /// applied it. A follower forwards the command to the leader. If the caller is dropped (client
    /// gone) the wait ends with it; the entry may still commit.
    pub async fn propose(&self, op: command::Op) -> Result<Applied, NodeError> {
        self.propose_as(op, None).await
    }

    /// [`Node::propose`] for a client: `requester` names its user and the auth revision its
    /// permissions were checked at, so apply can refuse it if auth changed meanwhile.
    pub async fn propose_as(
        &self,
        op: command::Op,
        requester: Option<Requester>,
    ) -> Result<Applied, NodeError> {
        let cmd = Command {
            op: Some(op),
            proposer_id: 0,
            request_seq: 0,
            requester,
            forwarded_to: None,
        };
        let size = cmd.encoded_len();
        if size > self.config.max_request_bytes {
            return Err(NodeError::RequestTooLarge);
        }
        if let Some(op) = &cmd.op {
            self.admit_write(op, size)?;
        }
        // Counted as etcd counts them: pending from here until the outcome (or the caller gives
        // up), failed when raft did not deliver one in time; a refusal above, or by apply, is not
        // a failed proposal.
        let pending = PendingProposal::new(&self.metrics);
        let deadline = rt::now() + self.config.request_timeout;
        let routed = self.route_proposal(cmd, deadline);
        let result = match rt::timeout(self.config.request_timeout, routed).await {
            Err(rt::Elapsed) => Err(NodeError::Timeout),
            Ok(result) => result,
        };
        if matches!(&result, Err(e) if !matches!(e, NodeError::Apply(_))) {
            pending.failed();
        }
        result
    }
}

/// One proposal in `etcd_server_proposals_pending` while it lives (a dropped request included).
struct PendingProposal<'a>(&'a Metrics);

impl<'a> PendingProposal<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.proposals_pending.inc();
        Self(metrics)
    }

    fn failed(&self) {
        self.0.proposals_failed.inc();
    }
}

impl Drop for PendingProposal<'_> {
    fn drop(&mut self) {
        self.0.proposals_pending.dec();
    }
}
