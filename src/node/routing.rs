//! Getting a request to the leader: writes and read indexes are the leader's business (lease
//! requests too: `leases` routes them through [`Node::route_target`]). The leader serves them
//! itself; a follower asks the leader over the peer service and, for writes, waits until it has
//! applied the entry itself (so a client that reads from this member next sees its write), as
//! etcd's followers do. Every loop here runs under the caller's deadline.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use prost::Message;

use super::{Node, NodeError};
use crate::apply::Applied;
use crate::limits;
use crate::pb::metastore::{command, Command, PeerStatus, ReadIndexRequest};
use crate::raft::forwards::{self, Forwarded, LeaderKey, Waiter};
use crate::raft::{PeerNode, RaftCommand};
use crate::rt;

/// Why the leader could not take a command (the forwarded form is [`PeerStatus`]).
#[derive(Debug, Clone)]
pub(crate) enum LeaderWriteError {
    /// This member does not lead; nothing was appended.
    NotLeader,
    /// Appended, then leadership was lost; the entry may or may not commit.
    LeaderChanged,
    Stopped,
    /// No outcome within the request deadline; the entry may still commit.
    Timeout,
    Failed(String),
}

impl From<LeaderWriteError> for NodeError {
    fn from(e: LeaderWriteError) -> Self {
        match e {
            LeaderWriteError::NotLeader => NodeError::NoLeader,
            LeaderWriteError::LeaderChanged => NodeError::LeaderChanged,
            LeaderWriteError::Stopped => NodeError::Stopped,
            LeaderWriteError::Timeout => NodeError::Timeout,
            LeaderWriteError::Failed(msg) => NodeError::Raft(msg),
        }
    }
}

impl Node {
    fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The current leader and its peer URLs, waiting (bounded) while there is none.
    pub(crate) async fn leader(&self) -> Result<(u64, PeerNode), NodeError> {
        let ((_, id), node) = self.leader_key().await?;
        Ok((id, node))
    }

    /// The current leader's id as raft orders leaders (term, member id) and its peer URLs,
    /// waiting (bounded) while there is none.
    async fn leader_key(&self) -> Result<(LeaderKey, PeerNode), NodeError> {
        let metrics = self
            .raft
            .wait(Some(limits::LEADER_WAIT))
            .metrics(
                |m| {
                    m.current_leader
                        .is_some_and(|id| m.membership_config.get_node(&id).is_some())
                },
                "a known leader",
            )
            .await
            .map_err(|_| NodeError::NoLeader)?;
        let id = metrics.current_leader.ok_or(NodeError::NoLeader)?;
        let node = metrics
            .membership_config
            .get_node(&id)
            .cloned()
            .ok_or(NodeError::NoLeader)?;
        Ok(((metrics.current_term, id), node))
    }

    /// Where to send a request: this member when it leads (checked without cloning raft's
    /// metrics: the common case), else the leader it knows of.
    pub(super) async fn route_target(&self) -> Result<(u64, PeerNode), NodeError> {
        if self.is_leader() {
            Ok((self.member_id, PeerNode::default()))
        } else {
            self.leader().await
        }
    }

    /// Propose `cmd` on this member, which must lead. Runs the leader's side effects of the
    /// outcome (the lease clock) before returning.
    pub(crate) async fn write_as_leader(
        &self,
        cmd: &Command,
    ) -> Result<Option<Result<Applied, crate::apply::ApplyError>>, LeaderWriteError> {
        if !self.is_leader() {
            return Err(LeaderWriteError::NotLeader);
        }
        if let Some(to) = &cmd.forwarded_to {
            // Forwarded to this member as the leader of another term: apply would fence it out.
            if (to.term, to.leader_id) != (self.current_term(), self.member_id) {
                return Err(LeaderWriteError::NotLeader);
            }
        }
        let bytes = cmd.encode_to_vec();
        match self
            .proposing
            .propose(
                &self.metrics,
                &self.raft,
                RaftCommand { bytes },
                self.config.request_timeout,
            )
            .await
        {
            None => Err(LeaderWriteError::Timeout),
            Some(Ok(resp)) => {
                let outcome = resp.response.outcome;
                match (&cmd.op, &outcome) {
                    (Some(command::Op::LeaseGrant(_)), Some(Ok(Applied::LeaseGrant(g)))) => {
                        self.lease_clock.refresh(g.id, g.ttl, self.current_term())
                    }
                    (Some(command::Op::LeaseRevoke(r)), Some(Ok(_))) => {
                        self.lease_clock.remove(r.id)
                    }
                    _ => {}
                }
                Ok(outcome)
            }
            Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(LeaderWriteError::NotLeader)
            }
            Some(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(LeaderWriteError::LeaderChanged)
            }
            Some(Err(RaftError::APIError(e))) => Err(LeaderWriteError::Failed(e.to_string())),
            Some(Err(RaftError::Fatal(_))) => Err(LeaderWriteError::Stopped),
        }
    }

    /// Route a command to the leader and return this member's outcome of applying it, by
    /// `deadline` (the caller's own timeout ends the wait then too).
    ///
    /// While the leader is being replaced, a forwarded command waits for the next one instead of
    /// failing at once, as a write to etcd does: a command that never reached the dead leader (no
    /// connection: [`crate::net::peer_dial::never_sent`]) goes to whoever leads next. One that may have reached
    /// it is fenced to that leader ([`forwards`]): its outcome comes if the new leader commits it,
    /// and it is sent again once this member applies an entry of a later leader without it.
    pub(super) async fn route_proposal(
        &self,
        mut cmd: Command,
        deadline: rt::Instant,
    ) -> Result<Applied, NodeError> {
        // The leader a forward was last lost with: if raft still names it, wait before resending.
        let mut lost_with = None;
        loop {
            // The common case first, without waiting on (and cloning) raft's metrics.
            let local = self.is_leader();
            let (leader_key, leader) = if local {
                ((0, self.member_id), PeerNode::default())
            } else {
                self.leader_key().await?
            };
            let leader_id = leader_key.1;
            if leader_id == self.member_id {
                if !local {
                    // Raft names us leader but we are not (yet) serving as one.
                    rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
                    continue;
                }
                cmd.proposer_id = 0;
                cmd.request_seq = 0;
                cmd.forwarded_to = None;
                match self.write_as_leader(&cmd).await {
                    Ok(Some(Ok(applied))) => return Ok(applied),
                    Ok(Some(Err(e))) => return Err(NodeError::Apply(e)),
                    Ok(None) => {
                        return Err(NodeError::UnexpectedOutcome(
                            "a command (no outcome came back)",
                        ))
                    }
                    // Leadership moved before the entry was appended: route it again.
                    Err(LeaderWriteError::NotLeader) => {
                        rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if lost_with == Some(leader_key) {
                rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
                lost_with = None;
                continue;
            }
            cmd.proposer_id = self.member_id;
            cmd.request_seq = self.next_seq();
            cmd.forwarded_to = Some(forwards::fence(leader_key));
            let mut waiter = self.state.register(cmd.request_seq, leader_key);
            let client = self
                .channels
                .client_for_member(&leader.name, &leader.peer_urls)?;
            let reply = self
                .forwarding
                .propose(
                    &self.metrics,
                    leader_key,
                    client,
                    cmd.encode_to_vec(),
                    self.config.request_timeout,
                )
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                // The leader is gone (or unreachable) and never saw it: route it again once
                // another member leads (`leader` waits for one, the failover watch hurries it).
                Err(failure) if failure.never_sent() => {
                    tracing::debug!("leader {leader_id:x} unreachable, routing again: {failure}");
                    drop(waiter);
                    rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
                    continue;
                }
                // The leader may or may not have received it: this member's apply tells.
                Err(failure) => {
                    tracing::debug!("forwarding to leader {leader_id:x} failed: {failure}");
                    match settled(&mut waiter, deadline).await? {
                        Some(applied) => return Ok(applied),
                        None => {
                            lost_with = Some(leader_key);
                            continue;
                        }
                    }
                }
            };
            match PeerStatus::try_from(reply.status) {
                Ok(PeerStatus::Ok) => {
                    return match waiter.outcome().await {
                        Some(Forwarded::Applied(Ok(applied))) => Ok(applied),
                        Some(Forwarded::Applied(Err(e))) => Err(NodeError::Apply(e)),
                        // Fenced out (the leader had moved on to a later term when it proposed it).
                        Some(Forwarded::Lost) => {
                            lost_with = Some(leader_key);
                            continue;
                        }
                        // Committed, but this member took it in through a snapshot (or is stopping):
                        // the outcome is unknown here, which etcd reports as a timeout.
                        None => Err(NodeError::Timeout),
                    };
                }
                Ok(PeerStatus::NotLeader) => {
                    rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
                }
                // Appended, then the leader lost its place: it commits or is lost with it.
                Ok(PeerStatus::LeaderChanged) => match settled(&mut waiter, deadline).await? {
                    Some(applied) => return Ok(applied),
                    None => lost_with = Some(leader_key),
                },
                Ok(PeerStatus::Timeout) => return Err(NodeError::Timeout),
                Ok(PeerStatus::NoSpace) => return Err(NodeError::NoSpace),
                Ok(PeerStatus::Stopped) => return Err(NodeError::LeaderFailed),
                Ok(PeerStatus::Failed) | Err(_) => return Err(NodeError::Raft(reply.message)),
            }
        }
    }

    /// The leader's side of a read index: confirm leadership with a quorum and return the log
    /// index a linearizable read must wait for. Concurrent reads share one confirmation
    /// ([`super::read_index`]).
    pub(crate) async fn read_index_as_leader(&self) -> Result<u64, LeaderWriteError> {
        self.leader_rounds.read_index().await
    }

    /// A follower's round ([`super::read_index`]): one `ReadIndex` call to the leader, within
    /// the request deadline. `NotLeader` if this member leads now (its reader takes the leader's
    /// rounds next) or the leader could not answer.
    pub(super) async fn read_index_from_leader(&self) -> Result<u64, LeaderWriteError> {
        let (leader_id, leader) = self
            .route_target()
            .await
            .map_err(|_| LeaderWriteError::NotLeader)?;
        if leader_id == self.member_id {
            return Err(LeaderWriteError::NotLeader);
        }
        let mut client = self
            .channels
            .client_for_member(&leader.name, &leader.peer_urls)
            .map_err(|e| LeaderWriteError::Failed(e.to_string()))?;
        match client.read_index(ReadIndexRequest {}).await {
            Ok(reply) if reply.get_ref().status == PeerStatus::Ok as i32 => {
                Ok(reply.into_inner().index)
            }
            _ => Err(LeaderWriteError::NotLeader),
        }
    }

    /// Whether this member is the cluster's only voter, leads it, and has applied an entry of its
    /// own term: then what it has applied is a linearizable state with no round trip to raft's
    /// core. No other member can commit anything (there is no quorum without this one), every
    /// acknowledged write was applied here before its answer went out, and the entry of its own
    /// term means every entry an earlier term committed is applied too (after a restart the
    /// engine may hold less than the log did). A membership with a second voter (joint, or in the
    /// log uncommitted) makes this false, and reads go through the read index again. Without
    /// this, every linearizable read of a member alone queued in raft's core behind the fsync of
    /// each log append (then done in place there): `bench k8s` ran 7,800 operations/s instead of
    /// 9,480, `bench range` (64 clients) 39-49k reads/s instead of 79k.
    fn reads_alone(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        super::leases::only_voter(&m.membership_config, self.member_id)
            && m.state == openraft::ServerState::Leader
            && m.current_leader == Some(self.member_id)
            && m.last_applied
                .as_ref()
                .is_some_and(|applied| applied.leader_id.term == m.current_term)
    }

    /// Wait until this member has applied everything committed before the call began.
    pub(super) async fn read_barrier(&self) -> Result<(), NodeError> {
        if cfg!(feature = "sim-bug-stale-read") {
            // Deliberately broken: whatever this member has applied is served as linearizable.
            return Ok(());
        }
        if self.reads_alone() {
            return Ok(());
        }
        loop {
            let (leader_id, _) = self.route_target().await?;
            let rounds = if leader_id == self.member_id {
                &self.leader_rounds
            } else {
                &self.follower_rounds
            };
            let index = match rounds.read_index().await {
                Ok(index) => index,
                Err(LeaderWriteError::Stopped) => return Err(NodeError::Stopped),
                // Not (or no longer) leader, no quorum answered in time, the leader could not
                // be asked: reads are safe to repeat.
                Err(_) => {
                    rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
                    continue;
                }
            };
            // The read index is old news by the time this member waits for it: writes that began
            // after it may commit meanwhile and must not be missed or half-seen.
            rt::buggify::delay("read-index-late", Duration::from_millis(200)).await;
            // Usually applied already: seen without registering a wait (which clones raft's
            // metrics on every change until it is satisfied).
            let applied = self.raft.metrics().borrow_watched().last_applied;
            if applied.is_some_and(|a| a.index >= index) {
                return Ok(());
            }
            self.raft
                .wait(Some(self.config.request_timeout))
                .applied_index_at_least(Some(index), "applied up to the read index")
                .await
                .map_err(|_| NodeError::Timeout)?;
            return Ok(());
        }
    }
}

/// What became of a forward the leader may or may not have appended, by `deadline`: its outcome,
/// or `None` once it can never apply (send it again). Past the deadline (or when this member
/// cannot tell), etcd's answer for a proposal lost with its leader.
async fn settled(waiter: &mut Waiter, deadline: rt::Instant) -> Result<Option<Applied>, NodeError> {
    let left = deadline.saturating_duration_since(rt::now());
    match rt::timeout(left, waiter.outcome()).await {
        Ok(Some(Forwarded::Applied(Ok(applied)))) => Ok(Some(applied)),
        Ok(Some(Forwarded::Applied(Err(e)))) => Err(NodeError::Apply(e)),
        Ok(Some(Forwarded::Lost)) => Ok(None),
        Ok(None) | Err(rt::Elapsed) => Err(NodeError::LeaderFailed),
    }
}
