//! Everything a member does about leases beyond the replicated table (`crate::lease`): grants
//! (the id chosen before proposing), revokes, keep-alives and time-to-live queries routed to the
//! leader, the leader's answers from its applied state once caught up in its term, the expiry
//! clock (`clock`) taken up by each new leader, expiry as a replicated revoke, and checkpoints of
//! remaining TTLs.

mod clock;

pub(super) use clock::LeaseClock;

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::ReadPolicy;

use super::{LeaseStatus, Node, NodeError};
use crate::apply::{Applied, ApplyError};
use crate::limits;
use crate::pb::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse,
};
use crate::pb::metastore::{command, LeaseRequest, PeerStatus, Requester};
use crate::rt;

impl Node {
    /// A new leader takes up each lease of the applied state, once per term: from its last
    /// checkpointed remaining TTL (its full TTL if never checkpointed), never below the minimum,
    /// plus one election timeout of grace, as etcd's lessor does on promotion. Only once this
    /// leader has applied its term's first entry (the caller has seen [`Node::leader_caught_up`]
    /// in `term`): every lease granted in an earlier term is in the table then, and every later
    /// grant goes through this leader (`write_as_leader` starts its clock). Before that a grant the
    /// previous leader committed may be missing from the table, and a lease left out here would
    /// never expire.
    pub(super) fn take_up_leases(&self, term: u64) {
        if self.lease_clock.taken_up_in() == Some(term) {
            return;
        }
        let leases = {
            let store = self.state.read();
            let grace = std::time::Duration::from_millis(limits::ELECTION_TIMEOUT_MS);
            store
                .leases()
                .list()
                .into_iter()
                .map(|(id, ttl)| {
                    let left = store
                        .leases()
                        .checkpointed_secs(id)
                        .unwrap_or(ttl)
                        .max(limits::LEASE_MIN_TTL_SECS);
                    (id, std::time::Duration::from_secs(left as u64) + grace)
                })
                .collect()
        };
        // Leadership moved on meanwhile: the next leader takes them up.
        if self.is_leader() && self.current_term() == term {
            self.lease_clock.take_up(term, leases);
        }
    }

    /// The keys attached to lease `id` (empty if it has none or does not exist).
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.state.read().leases().keys(id)
    }

    /// Every lease id.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.state
            .read()
            .leases()
            .list()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Grant a lease. `id` 0 lets the server choose; the choice is made here, before proposing, so
    /// apply stays deterministic. The leader starts the lease's clock when it commits.
    pub async fn lease_grant(
        &self,
        id: i64,
        ttl_secs: i64,
    ) -> Result<LeaseGrantResponse, NodeError> {
        let id = if id != 0 {
            id
        } else {
            // Positive and never 0; a clash with a live lease is retried.
            let mut pick = (rt::random_u64() >> 1) as i64;
            while pick == 0 || self.state.read().leases().contains(pick) {
                pick = (rt::random_u64() >> 1) as i64;
            }
            pick
        };
        let req = LeaseGrantRequest { ttl: ttl_secs, id };
        match self.propose(command::Op::LeaseGrant(req)).await? {
            Applied::LeaseGrant(resp) => Ok(resp),
            _ => Err(NodeError::UnexpectedOutcome("lease grant")),
        }
    }

    /// Revoke a lease: its keys are deleted in one revision.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, NodeError> {
        self.lease_revoke_as(id, None).await
    }

    /// [`Node::lease_revoke`] for a client checked as `requester`.
    pub async fn lease_revoke_as(
        &self,
        id: i64,
        requester: Option<Requester>,
    ) -> Result<LeaseRevokeResponse, NodeError> {
        match self
            .propose_as(
                command::Op::LeaseRevoke(LeaseRevokeRequest { id }),
                requester,
            )
            .await?
        {
            Applied::LeaseRevoke(resp) => Ok(resp),
            _ => Err(NodeError::UnexpectedOutcome("lease revoke")),
        }
    }

    /// Renew a lease for its full TTL on the leader; returns the TTL, or 0 if the lease does not
    /// exist (as etcd).
    pub async fn lease_keep_alive(self: &Arc<Self>, id: i64) -> Result<i64, NodeError> {
        match rt::timeout(self.config.request_timeout, self.route_keep_alive(id)).await {
            Err(rt::Elapsed) => Err(NodeError::Timeout),
            Ok(result) => result,
        }
    }

    /// Wait until this leader has applied every entry committed before the call, as etcd waits
    /// for its applied index before a lease lookup: a member that has just become leader may not
    /// have applied a grant its predecessor committed, and must not answer "no such lease" for a
    /// live one (the simulator found this: `TimeToLive` -1, then the lease's key still there).
    /// `false` if this member is not (or no longer) leader, or cannot catch up within the request
    /// timeout; the caller then answers "not leader" and the request is retried.
    pub(super) async fn leader_caught_up(&self) -> bool {
        // The leader lease makes this local (no quorum round): the read log id is what this
        // leader has committed, including the first entry of its term.
        let Ok(linearizer) = self.raft.get_read_linearizer(ReadPolicy::LeaseRead).await else {
            return false;
        };
        let index = linearizer.read_log_id().index();
        self.raft
            .wait(Some(self.config.request_timeout))
            .applied_index_at_least(Some(index), "applied before a lease lookup")
            .await
            .is_ok()
    }

    /// Whether this member leads in `term` and has caught up in it. The first lease request of a
    /// term waits for [`Node::leader_caught_up`] (a round trip to raft's core and a wait on the
    /// applied index); once the lease clock is taken up in `term` (which only happens after that
    /// wait succeeded in `term`), everything an earlier leader committed is applied here, and the
    /// check is local, as etcd's leader answers lease requests from its own applied state.
    pub(super) async fn leads_caught_up(&self, term: u64) -> bool {
        // Leadership lost and won back since `term` was read: this term's first request again.
        if !self.is_leader() || self.current_term() != term {
            return false;
        }
        (self.lease_clock.taken_up_in() == Some(term) && self.leader_lease_valid())
            || self.leader_caught_up().await
    }

    /// Whether no other member can have been elected since this leader last heard from a
    /// quorum: it did within its leader lease (openraft's, the election timeout's upper bound),
    /// or it is the only voter. Read from raft's metrics, with no round trip to its core; metrics
    /// that lag only make this `false` sooner. Without it a leader cut off from the others kept
    /// answering keep-alives from its own applied state after a new leader was elected: "no
    /// such lease" for a lease the new leader had granted (the simulator found this: a client
    /// told its lease was gone, then its key still there).
    pub(super) fn leader_lease_valid(&self) -> bool {
        use openraft::Instant as _;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if only_voter(&m.membership_config, self.member_id) {
            return true;
        }
        let lease = std::time::Duration::from_millis(limits::ELECTION_TIMEOUT_MS * 2);
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|acked| rt::SeamInstant::now() < **acked + lease)
    }

    /// The leader's side of a keep-alive; `None` if this member does not lead. If a lower
    /// remaining TTL was checkpointed, a checkpoint of the full TTL follows, so a restart or a new
    /// leader cannot expire the renewed lease early.
    pub(crate) async fn keep_alive_as_leader(self: &Arc<Self>, id: i64) -> Option<i64> {
        let term = self.current_term();
        if !self.leads_caught_up(term).await {
            return None;
        }
        // Taken up first, so the take-up cannot later overwrite this renewal.
        self.take_up_leases(term);
        let (ttl, checkpointed) = {
            let store = self.state.read();
            (
                store.leases().ttl_secs(id),
                store.leases().checkpointed_secs(id),
            )
        };
        let Some(ttl) = ttl else { return Some(0) };
        self.lease_clock.refresh(id, ttl, term);
        if checkpointed.is_some_and(|c| c < ttl) {
            let node = self.clone();
            rt::spawn(async move {
                let cp = LeaseCheckpoint {
                    id,
                    remaining_ttl: ttl,
                };
                let req = LeaseCheckpointRequest {
                    checkpoints: vec![cp],
                };
                if let Err(e) = node.propose(command::Op::LeaseCheckpoint(req)).await {
                    tracing::warn!("cannot checkpoint renewed lease {id:x}: {e}");
                }
            });
        }
        Some(ttl)
    }

    /// Propose the remaining TTL of every lease (in batches), so a restart resumes from it.
    pub(super) async fn checkpoint_leases(&self) {
        let all = self.lease_clock.remaining_all();
        for chunk in all.chunks(limits::LEASE_CHECKPOINT_BATCH) {
            let checkpoints = chunk
                .iter()
                .map(|(id, left)| LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: *left,
                })
                .collect();
            let req = LeaseCheckpointRequest { checkpoints };
            if let Err(e) = self.propose(command::Op::LeaseCheckpoint(req)).await {
                tracing::warn!("cannot checkpoint leases: {e}");
                return;
            }
        }
    }

    /// `(granted TTL, remaining TTL, attached keys)` of a lease as the leader sees it, or `None`
    /// if it does not exist.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<LeaseStatus>, NodeError> {
        match rt::timeout(self.config.request_timeout, self.route_time_to_live(id)).await {
            Err(rt::Elapsed) => Err(NodeError::Timeout),
            Ok(result) => result,
        }
    }

    /// The leader's side of a time-to-live query; `Err(())` if this member does not lead.
    pub(crate) async fn time_to_live_as_leader(&self, id: i64) -> Result<Option<LeaseStatus>, ()> {
        let term = self.current_term();
        if !self.leads_caught_up(term).await {
            return Err(());
        }
        // The remaining TTL is the clock's: taken up for this term first.
        self.take_up_leases(term);
        let store = self.state.read();
        let Some(granted) = store.leases().ttl_secs(id) else {
            return Ok(None);
        };
        let remaining = self.lease_clock.remaining_secs(id).unwrap_or(granted);
        Ok(Some(LeaseStatus {
            granted,
            remaining,
            keys: store.leases().keys(id),
        }))
    }

    /// Where a keep-alive goes: the leader renews it; a follower asks the leader (a renewal is
    /// safe to repeat).
    pub(super) async fn route_keep_alive(self: &Arc<Self>, id: i64) -> Result<i64, NodeError> {
        loop {
            let (leader_id, leader) = self.route_target().await?;
            if leader_id == self.member_id {
                if let Some(ttl) = self.keep_alive_as_leader(id).await {
                    return Ok(ttl);
                }
            } else {
                let mut client = self
                    .channels
                    .client_for_member(&leader.name, &leader.peer_urls)?;
                if let Ok(reply) = client.lease_keep_alive(LeaseRequest { id }).await {
                    if reply.get_ref().status == PeerStatus::Ok as i32 {
                        return Ok(reply.into_inner().ttl);
                    }
                }
            }
            // A renewal is safe to repeat.
            rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
        }
    }

    /// Where a time-to-live query goes: the leader answers from its clock; a follower asks the
    /// leader.
    pub(super) async fn route_time_to_live(
        &self,
        id: i64,
    ) -> Result<Option<LeaseStatus>, NodeError> {
        loop {
            let (leader_id, leader) = self.route_target().await?;
            if leader_id == self.member_id {
                if let Ok(status) = self.time_to_live_as_leader(id).await {
                    return Ok(status);
                }
            } else {
                let mut client = self
                    .channels
                    .client_for_member(&leader.name, &leader.peer_urls)?;
                if let Ok(reply) = client.lease_time_to_live(LeaseRequest { id }).await {
                    let reply = reply.into_inner();
                    if reply.status == PeerStatus::Ok as i32 {
                        return Ok(reply.found.then_some(LeaseStatus {
                            granted: reply.granted_ttl,
                            remaining: reply.remaining_ttl,
                            keys: reply.keys,
                        }));
                    }
                }
            }
            rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
        }
    }
}

/// On the leader: revokes expired leases through raft and checkpoints remaining TTLs. A member
/// that leads takes up every lease once it has applied its own term's first entry (see
/// [`Node::take_up_leases`]); one that stops leading forgets its clock. Holds the node weakly so
/// it never keeps it alive.
pub(super) async fn run_lease_expiry(
    node: std::sync::Weak<Node>,
    checkpoint_every: std::time::Duration,
) {
    let mut last_checkpoint = rt::now();
    loop {
        rt::sleep(limits::LEASE_EXPIRY_CHECK_INTERVAL).await;
        let Some(node) = node.upgrade() else { return };
        if !node.is_leader() {
            if node.lease_clock.taken_up_in().is_some() {
                node.lease_clock.clear();
            }
            continue;
        }
        // A new term (leadership won, or lost and won back between two checks: another leader
        // may have granted leases meanwhile) is taken up once caught up; until then, or if this
        // member cannot catch up within the request timeout, nothing expires and the next check
        // tries again.
        let term = node.current_term();
        if node.lease_clock.taken_up_in() != Some(term) {
            if !node.leader_caught_up().await {
                continue;
            }
            node.take_up_leases(term);
            if node.lease_clock.taken_up_in() != Some(term) {
                continue;
            }
            last_checkpoint = rt::now();
        }
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = rt::now();
            node.checkpoint_leases().await;
        }
        // Revokes that failed this check: retried at the next (e.g. while there is no leader, or
        // while a CORRUPT alarm refuses writes), and logged once a check, not once a lease.
        let mut failed: Option<(usize, i64, NodeError)> = None;
        for id in node.lease_clock.expired(limits::LEASE_REVOKES_PER_CHECK) {
            match node.lease_revoke(id).await {
                Ok(_) | Err(NodeError::Apply(ApplyError::LeaseNotFound)) => {
                    node.lease_clock.remove(id)
                }
                Err(e) => match &mut failed {
                    Some((n, _, _)) => *n += 1,
                    None => failed = Some((1, id, e)),
                },
            }
        }
        if let Some((n, first, e)) = failed {
            tracing::warn!("cannot revoke {n} expired lease(s), {first:x} first: {e}");
        }
    }
}

/// Whether `membership` (either half of a joint one included) has `id` as its one voter.
pub(super) fn only_voter(membership: &crate::raft::StoredMembership, id: u64) -> bool {
    let mut voters = membership.membership().voter_ids();
    voters.next() == Some(id) && voters.next().is_none()
}
