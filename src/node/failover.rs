//! Replacing a dead leader sooner than raft's election timeout.
//!
//! Raft alone notices a leader is gone only when a follower's election timeout (1–2 s) passes
//! without a heartbeat, and openraft's followers then still refuse every vote for as long as
//! their leader lease runs (the election timeout's upper bound, 2 s): a killed leader cost about
//! 3.6 s of refused writes. Most leaders that stop are processes that died (killed, crashed,
//! restarted) on a machine that is still up, and their peer port then refuses connections at once.
//! A follower that has not heard from its leader for [`limits::LEADER_SILENCE`] asks that port;
//! refused means nobody is there, and the follower starts an election at once, as if the leader
//! had handed leadership over to it (a transfer's vote requests are granted despite the lease).
//! A leader that is alive but silent (a partition, a pause) answers or lets the probe time out,
//! and raft's own timeouts decide as before. The survivors start in member-id order, each
//! [`limits::FAILOVER_STAGGER`] after the previous, so that they do not split the vote.
//!
//! This changes only when an election starts, never how it is won: a candidate still needs a
//! quorum of votes and the most complete log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use openraft::ServerState;

use super::Node;
use crate::limits;
use crate::pb::metastore::MembersRequest;
use crate::raft::Vote;
use crate::rt;

/// When this member last heard from a leader (any append or heartbeat it received).
pub(crate) struct LeaderContact {
    since: rt::Instant,
    /// Milliseconds after `since` of the last contact.
    last_ms: AtomicU64,
}

impl LeaderContact {
    pub(crate) fn new() -> Self {
        Self {
            since: rt::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A leader's append or heartbeat arrived.
    pub(crate) fn touch(&self) {
        let ms = rt::now().saturating_duration_since(self.since).as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> std::time::Duration {
        let last =
            self.since + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        rt::now().saturating_duration_since(last)
    }
}

/// What this member knows of a leader it may have lost.
struct Suspect {
    leader: u64,
    /// The leader's vote as this member holds it: the election starts only if it is unchanged.
    vote: Vote,
    /// This member's place among the voters that survive the leader (0: first to stand).
    rank: u32,
}

/// Watches the leader for the member's lifetime (it ends when the member goes away).
pub(super) async fn run_failover_watch(node: Weak<Node>) {
    loop {
        rt::sleep(limits::FORWARD_RETRY_INTERVAL).await;
        let Some(member) = node.upgrade() else { return };
        let Some(suspect) = member.silent_leader() else {
            continue;
        };
        if !member.leader_process_gone(suspect.leader).await {
            // Alive but quiet, or unreachable: raft's election timeout decides.
            continue;
        }
        let suspect = if suspect.rank == 0 {
            suspect
        } else {
            // The survivors before this one go first; stand only if none has won meanwhile.
            drop(member);
            rt::sleep(limits::FAILOVER_STAGGER * suspect.rank).await;
            let Some(member) = node.upgrade() else { return };
            match member.silent_leader() {
                Some(now) if now.vote == suspect.vote => now,
                _ => continue,
            }
        };
        let Some(member) = node.upgrade() else { return };
        member.stand_for(suspect).await;
        drop(member);
        // The election runs on raft's clock from here: let it finish before looking again.
        rt::sleep(std::time::Duration::from_millis(
            limits::ELECTION_TIMEOUT_MS,
        ))
        .await;
    }
}

impl Node {
    /// The leader this member follows, if it has been silent for [`limits::LEADER_SILENCE`] and
    /// this member is a voter that could replace it.
    fn silent_leader(&self) -> Option<Suspect> {
        if self.leader_contact.silent_for() < limits::LEADER_SILENCE {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != ServerState::Follower || !m.vote.is_committed() {
            return None;
        }
        let leader = m.current_leader.filter(|&id| id != self.member_id)?;
        let membership = m.membership_config.membership();
        if !membership.voter_ids().any(|id| id == self.member_id) {
            return None;
        }
        let rank = membership
            .voter_ids()
            .filter(|&id| id != leader && id < self.member_id)
            .count() as u32;
        Some(Suspect {
            leader,
            vote: m.vote,
            rank,
        })
    }

    /// Whether the leader's peer port refuses connections: its process is not there.
    async fn leader_process_gone(&self, leader: u64) -> bool {
        let node = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config.membership().get_node(&leader).cloned()
        };
        let Some(node) = node else { return false };
        let Ok(mut client) = self.channels.client_for_member(&node.name, &node.peer_urls) else {
            return false;
        };
        match rt::timeout(
            limits::LEADER_PROBE_TIMEOUT,
            client.members(MembersRequest {}),
        )
        .await
        {
            Ok(Err(status)) => crate::net::peer_dial::never_sent(&status),
            _ => false,
        }
    }

    /// Start an election now, as the leader in `suspect` would have us do in a transfer.
    async fn stand_for(&self, suspect: Suspect) {
        tracing::info!(
            "leader {:x} is gone (its peer port refuses connections): standing for election",
            suspect.leader
        );
        let request = TransferLeaderRequest::new(suspect.vote, self.member_id, None);
        if let Err(e) = self.raft.handle_transfer_leader(request).await {
            tracing::warn!("cannot start an election: {e}");
        }
    }
}
