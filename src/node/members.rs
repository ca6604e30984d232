//! Membership as a member sees and changes it: the member list (raft's membership plus published
//! attributes), publishing this member's attributes, and membership changes run by the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, EntryPayload, Membership, Precondition};

use super::{Node, NodeError};
use crate::cluster::{self, MemberChange, MemberInfo, MembershipError};
use crate::limits;
use crate::pb::metastore::{command, MemberAttributes, RaftPayload};
use crate::raft::{decode, encode, PeerNode, TypeConfig};
use crate::rt;

impl Node {
    /// Every member, in id order, as this member's applied state knows them (their published
    /// attributes read from the engine: a failed read fails the call).
    pub fn members(&self) -> Result<Vec<MemberInfo>, NodeError> {
        let stored = self.stored_membership();
        let membership = stored.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let attrs = cluster::read_attributes(self.state.engine().as_ref())?;
        Ok(membership
            .nodes()
            .map(|(id, node)| {
                let published = attrs.get(id);
                MemberInfo {
                    id: *id,
                    name: published
                        .map(|a| a.name.clone())
                        .unwrap_or_else(|| node.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect())
    }

    /// Raft's current membership (a shared pointer: no copy of the metrics).
    fn stored_membership(&self) -> std::sync::Arc<crate::raft::StoredMembership> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// Whether member `id` is a learner.
    pub fn is_learner(&self, id: u64) -> bool {
        let stored = self.stored_membership();
        let membership = stored.membership();
        membership.get_node(&id).is_some() && !membership.voter_ids().any(|v| v == id)
    }

    /// Make a membership change (on the leader, wherever it was asked), within the request
    /// deadline. Returns the member list afterwards.
    pub async fn change_members(&self, change: MemberChange) -> Result<Vec<MemberInfo>, NodeError> {
        let routed = async {
            loop {
                let (leader_id, leader) = self.leader().await?;
                if leader_id == self.member_id {
                    match self.change_as_leader(change.clone()).await {
                        Err(MembershipError::NoLeader | MembershipError::Busy) => {}
                        other => return other.map_err(NodeError::from),
                    }
                } else {
                    let mut client = self
                        .channels
                        .client_for_member(&leader.name, &leader.peer_urls)?;
                    let data = encode(&change).map_err(NodeError::PeerMessage)?;
                    let reply = client
                        .change_members(RaftPayload { data })
                        .await
                        .map_err(|_| NodeError::LeaderFailed)?;
                    let result: Result<(), MembershipError> =
                        decode(&reply.get_ref().data).map_err(NodeError::PeerMessage)?;
                    match result {
                        Err(MembershipError::NoLeader | MembershipError::Busy) => {}
                        other => return other.map_err(NodeError::from),
                    }
                }
                rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
            }
        };
        match rt::timeout(self.config.request_timeout, routed).await {
            Err(rt::Elapsed) => return Err(NodeError::Timeout),
            Ok(result) => result?,
        };
        match change.clone() {
            // In the log, not committed yet (see `add_voter`): no read index can be had until the
            // new member runs, so wait for the change to reach this member's log instead.
            MemberChange::Add {
                id, learner: false, ..
            } => {
                let _ = self.voter_in_log(id).await;
            }
            // The change is committed; wait until this member applied it, and until raft has
            // published the new membership (its metrics, which the list is read from, follow the
            // answer), so the list shows it.
            _ => {
                let _ = self.read_barrier().await;
                self.until_visible(&change).await;
            }
        }
        self.members()
    }

    /// Wait, within the request deadline, until the membership this member publishes shows
    /// `change` made.
    async fn until_visible(&self, change: &MemberChange) {
        let _ = self
            .raft
            .wait(Some(self.config.request_timeout))
            .metrics(
                |m| {
                    let membership = m.membership_config.membership();
                    let voter = |id: u64| membership.voter_ids().any(|v| v == id);
                    match change {
                        MemberChange::Add { id, learner, .. } => {
                            membership.get_node(id).is_some() && voter(*id) != *learner
                        }
                        MemberChange::Remove { id } => membership.get_node(id).is_none(),
                        MemberChange::Update { id, peer_urls } => membership
                            .get_node(id)
                            .is_some_and(|node| node.peer_urls == *peer_urls),
                        MemberChange::Promote { id } => voter(*id),
                    }
                },
                "membership change visible",
            )
            .await;
    }

    /// The leader's side of a membership change. `NoLeader` means "not the leader (any more)".
    pub(crate) async fn change_as_leader(
        &self,
        change: MemberChange,
    ) -> Result<(), MembershipError> {
        if !self.is_leader() {
            return Err(MembershipError::NoLeader);
        }
        let members = self
            .members()
            .map_err(|e| MembershipError::Other(format!("etcdserver: {e}")))?;
        if self.config.strict_reconfig_check && !enough_started(&members, &change) {
            return Err(MembershipError::NotEnoughStarted);
        }
        let find = |id: u64| members.iter().find(|m| m.id == id).cloned();
        let result = match change {
            MemberChange::Add { id, node, learner } => {
                let taken = members
                    .iter()
                    .any(|m| m.peer_urls.iter().any(|u| node.peer_urls.contains(u)));
                if taken {
                    return Err(MembershipError::PeerUrlExists);
                }
                let learners = members.iter().filter(|m| m.is_learner).count();
                if learner && learners >= crate::limits::MAX_LEARNERS {
                    return Err(MembershipError::TooManyLearners);
                }
                if learner {
                    self.raft.add_learner(id, node, false).await.map(drop)
                } else {
                    return self.add_voter(id, node).await;
                }
            }
            MemberChange::Remove { id } => {
                let member = find(id).ok_or(MembershipError::MemberNotFound)?;
                let change = if member.is_learner {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                };
                self.raft.change_membership(change, false).await.map(drop)
            }
            MemberChange::Update { id, peer_urls } => {
                let member = find(id).ok_or(MembershipError::MemberNotFound)?;
                let taken = members
                    .iter()
                    .any(|m| m.id != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)));
                if taken {
                    return Err(MembershipError::PeerUrlExists);
                }
                let node = PeerNode {
                    name: member.name,
                    peer_urls,
                };
                self.raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
                    .await
                    .map(drop)
            }
            MemberChange::Promote { id } => {
                let member = find(id).ok_or(MembershipError::MemberNotFound)?;
                if !member.is_learner {
                    return Err(MembershipError::NotLearner);
                }
                if !self.learner_caught_up(id) {
                    return Err(MembershipError::LearnerNotReady);
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map(drop)
            }
        };
        result.map_err(change_failed)
    }

    /// Add voter `id` in one step (a single-server change, as etcd makes it), answering once the
    /// change is committed — or, when it cannot commit without the new voter, once it is in this
    /// leader's log.
    ///
    /// etcd answers `member add` once the change is committed under the old configuration, and
    /// the new member is started afterwards with the member list the answer carries (etcdctl
    /// prints it as `ETCD_INITIAL_CLUSTER`). Raft here counts a configuration from the moment it
    /// is appended, so growing one voter to two needs the new voter's acknowledgement, which it
    /// cannot give before it is started: waiting for the commit would hold the answer until the
    /// request deadline and fail it. That change is answered once appended (the new voter counts
    /// in the quorum from then on, as in etcd), and raft commits it once the new member has
    /// started and caught up. Dropping the future does not withdraw the change from the log, and
    /// being one entry (not joint consensus's two) it leaves no half-made configuration behind.
    async fn add_voter(&self, id: u64, node: PeerNode) -> Result<(), MembershipError> {
        let stored = self.stored_membership();
        let current = stored.membership();
        let old_voters = current.voter_ids().count();
        let voters: BTreeSet<u64> = current.voter_ids().chain([id]).collect();
        let mut nodes: BTreeMap<u64, PeerNode> =
            current.nodes().map(|(i, n)| (*i, n.clone())).collect();
        nodes.insert(id, node);
        // The current voters alone are a quorum of the new set: the change commits without it.
        let commits_without_it = old_voters > voters.len() / 2;
        let proposed = Membership::new(vec![voters], nodes)
            .map_err(|e| MembershipError::Other(format!("etcdserver: {e}")))?;
        let append = self.raft.append_membership(
            proposed,
            EntryPayload::Blank,
            [Precondition::LastMembershipLogId {
                last_membership_log_id: *stored.log_id(),
            }],
        );
        if commits_without_it {
            return append.await.map(drop).map_err(change_failed);
        }
        tokio::select! {
            biased;
            done = append => done.map(drop).map_err(change_failed),
            // Past the deadline without it: the change's own outcome decides.
            true = self.voter_in_log(id) => Ok(()),
        }
    }

    /// Wait (within the request deadline) until this member's log has `id` as a voter, committed
    /// or not; false if the deadline passed first.
    async fn voter_in_log(&self, id: u64) -> bool {
        self.raft
            .wait(Some(self.config.request_timeout))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == id)
                },
                "voter in the log",
            )
            .await
            .is_ok()
    }

    /// Hand leadership to voter `to` and wait (bounded) until it leads. Only the leader can.
    pub async fn move_leader(&self, to: u64) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(MembershipError::NotLeader.into());
        }
        let is_voter = self.members()?.iter().any(|m| m.id == to && !m.is_learner);
        if !is_voter {
            return Err(MembershipError::BadLeaderTransferee.into());
        }
        if to == self.member_id {
            return Ok(());
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|_| NodeError::Stopped)?;
        self.raft
            .wait(Some(self.config.request_timeout))
            .metrics(|m| m.current_leader == Some(to), "leadership moved")
            .await
            .map_err(|_| NodeError::Timeout)?;
        Ok(())
    }

    /// A learner may be promoted once it is within [`limits::LEARNER_PROMOTE_MAX_LAG`] entries of
    /// the leader's log (etcd asks for 90% of the leader's progress).
    fn learner_caught_up(&self, id: u64) -> bool {
        let (last, matched) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|log_id| log_id.index)
                .unwrap_or(0);
            (m.last_log_index.unwrap_or(0), matched)
        };
        matched + limits::LEARNER_PROMOTE_MAX_LAG >= last && matched > 0
    }

    /// Publish this member's name and client URLs once (they change only with flags).
    async fn publish_attributes(&self) -> Result<(), NodeError> {
        let ours = MemberAttributes {
            member_id: self.member_id,
            name: self.config.name.clone(),
            client_urls: self.config.advertise_client_urls.clone(),
        };
        let published = cluster::read_attributes(self.state.engine().as_ref())?;
        if published.get(&self.member_id) == Some(&ours) {
            return Ok(());
        }
        self.propose(command::Op::Publish(ours)).await.map(|_| ())
    }

    /// The member list as the Members peer call returns it.
    pub(crate) fn members_payload(&self) -> Result<Vec<u8>, String> {
        let members = self.members().map_err(|e| e.to_string())?;
        encode(&(self.cluster_id, members)).map_err(|e| e.to_string())
    }
}

/// Publishes this member's attributes, retrying until it works (or the member goes away).
pub(super) async fn run_publish(node: Weak<Node>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        match node.publish_attributes().await {
            Ok(()) => return,
            Err(e) => tracing::debug!("cannot publish member attributes yet: {e}"),
        }
        drop(node);
        rt::sleep(limits::PUBLISH_RETRY_INTERVAL).await;
    }
}

/// Map raft's refusal or failure of a membership change to etcd's terms. Refusals that wrote
/// nothing because another change is still on its way (or the membership moved since it was
/// read) are `Busy`: the caller tries again within its deadline, as etcd's conf changes queue.
fn change_failed(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MembershipError::NoLeader,
        RaftError::APIError(
            ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_)
                | ChangeMembershipError::UncommittedLeaderLog(_),
            )
            | ClientWriteError::PreconditionFailed(_),
        ) => MembershipError::Busy,
        RaftError::APIError(e) => MembershipError::Other(format!("etcdserver: {e}")),
        RaftError::Fatal(e) => MembershipError::Other(format!("etcdserver: {e}")),
    }
}

/// Map a leader-side membership result to the peer reply.
pub(crate) fn membership_reply(result: Result<(), MembershipError>) -> RaftPayload {
    let data = encode(&result).unwrap_or_default();
    RaftPayload { data }
}

/// etcd's strict reconfiguration check: after `change`, the started voters must still be a quorum
/// of the voters (a change that would make the cluster lose quorum the moment it commits is
/// refused). Learners never count, and adding or removing one is always allowed. A member is
/// started once it has a name (etcd's `IsStarted`): founding members from the start, added
/// members once they run and publish it.
fn enough_started(members: &[MemberInfo], change: &MemberChange) -> bool {
    let voters = || members.iter().filter(|m| !m.is_learner);
    let started_voters = || voters().filter(|m| !m.name.is_empty());
    let (voters_after, started_after) = match change {
        MemberChange::Add { learner: true, .. } | MemberChange::Update { .. } => return true,
        MemberChange::Remove { id } => {
            if members.iter().any(|m| m.id == *id && m.is_learner) {
                return true;
            }
            let others = voters().filter(|m| m.id != *id).count();
            let started_others = started_voters().filter(|m| m.id != *id).count();
            (others, started_others)
        }
        MemberChange::Add { learner: false, .. } => {
            let (n, s) = (voters().count() + 1, started_voters().count());
            // Adding a second member to a one-member cluster (restoring a cluster) is allowed.
            if n == 2 && s == 1 {
                return true;
            }
            (n, s)
        }
        // The learner counts as started: it is running, that is how it caught up.
        MemberChange::Promote { .. } => (voters().count() + 1, started_voters().count() + 1),
    };
    // A quorum is more than half.
    started_after > voters_after / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members `1..=voters` (voters) then learners; the ids in `absent` never started.
    fn cluster(voters: u64, learners: u64, absent: &[u64]) -> Vec<MemberInfo> {
        (1..=voters + learners)
            .map(|id| MemberInfo {
                id,
                name: if absent.contains(&id) {
                    String::new()
                } else {
                    format!("m{id}")
                },
                peer_urls: vec![format!("http://127.0.0.1:{id}")],
                client_urls: Vec::new(),
                is_learner: id > voters,
            })
            .collect()
    }

    fn add(learner: bool) -> MemberChange {
        MemberChange::Add {
            id: 99,
            node: PeerNode::default(),
            learner,
        }
    }

    #[test]
    fn strict_reconfig_counts_started_voters_as_etcd_does() {
        let remove = |id| MemberChange::Remove { id };
        let promote = |id| MemberChange::Promote { id };
        // 3 started of 3: a fourth voter leaves 3 of 4 started, a quorum.
        assert!(enough_started(&cluster(3, 0, &[]), &add(false)));
        // 2 started of 3: a fourth voter would leave 2 of 4 started, below a quorum of 3.
        assert!(!enough_started(&cluster(3, 0, &[3]), &add(false)));
        // Learners are always fine.
        assert!(enough_started(&cluster(3, 0, &[3]), &add(true)));
        // Removing a started voter while one never started leaves 1 of 2 started: refused.
        assert!(!enough_started(&cluster(3, 0, &[3]), &remove(1)));
        // Removing the one that never started leaves 2 of 2: fine.
        assert!(enough_started(&cluster(3, 0, &[3]), &remove(3)));
        // A one-member cluster may add its second member.
        assert!(enough_started(&cluster(1, 0, &[]), &add(false)));
        // Promoting a learner counts it as started.
        assert!(enough_started(&cluster(3, 1, &[3]), &promote(4)));
        assert!(!enough_started(&cluster(3, 1, &[2, 3]), &promote(4)));
        assert!(enough_started(&cluster(3, 1, &[2, 3]), &remove(4)));
    }
}
