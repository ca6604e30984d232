//! Commands this member forwarded to the leader, waiting for their local apply.
//!
//! A follower forwards a client's write to the leader and answers the client once its own state
//! machine applies the entry (as etcd's followers do). If the leader dies meanwhile, the entry may
//! or may not commit, so it must not simply be sent again. Each forwarded command therefore
//! carries a fence: the leader id (term, member) it was sent to. Apply runs it only from an entry
//! of that leader ([`fenced_out`]). Leader ids only grow along the log, so once this member
//! applies an entry of a later leader, every entry of the fence's leader that will ever commit
//! has been applied: a forward still waiting then can never apply, and is handed back as
//! [`Forwarded::Lost`] to be sent again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::LogId;
use crate::pb::metastore::{Command, LeaderFence};

/// The outcome of one applied command.
pub type Outcome = Result<crate::apply::Applied, crate::apply::ApplyError>;

/// A raft leader id as `(term, member id)`, ordered as openraft orders them.
pub type LeaderKey = (u64, u64);

/// The leader that wrote `log_id`'s entry.
pub fn leader_of(log_id: &LogId) -> LeaderKey {
    (log_id.leader_id.term, log_id.leader_id.node_id)
}

/// Whether `cmd` must not run from the entry at `log_id`: it was forwarded to another leader than
/// the one that appended it.
pub fn fenced_out(cmd: &Command, log_id: &LogId) -> bool {
    cmd.forwarded_to
        .as_ref()
        .is_some_and(|f| (f.term, f.leader_id) != leader_of(log_id))
}

/// The fence for a command forwarded to `leader`.
pub fn fence(leader: LeaderKey) -> LeaderFence {
    LeaderFence {
        term: leader.0,
        leader_id: leader.1,
    }
}

/// What became of a forwarded command.
#[derive(Debug)]
pub enum Forwarded {
    /// This member applied its entry: the outcome.
    Applied(Outcome),
    /// It can never apply (an entry of a later leader came first, or its entry was fenced out):
    /// sending it again cannot apply it twice.
    Lost,
}

struct Pending {
    fence: LeaderKey,
    tx: oneshot::Sender<Forwarded>,
}

#[derive(Default)]
struct Inner {
    /// By the proposer's sequence number.
    pending: BTreeMap<u64, Pending>,
    /// The leader of the last entry applied.
    applied_leader: LeaderKey,
}

/// The forwarded commands of one member.
#[derive(Default)]
pub struct Forwards {
    inner: Mutex<Inner>,
}

impl Forwards {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for the local apply of the command with sequence number `seq` sent to `leader`.
    /// Register before sending it, so its apply cannot slip by unseen.
    pub fn register(self: &Arc<Self>, seq: u64, leader: LeaderKey) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if leader < inner.applied_leader {
            // A later leader's entry is already applied: this one is lost before it is sent.
            let _ = tx.send(Forwarded::Lost);
        } else {
            let previous = inner.pending.insert(seq, Pending { fence: leader, tx });
            debug_assert!(previous.is_none(), "sequence number {seq} reused");
        }
        Waiter {
            forwards: self.clone(),
            seq,
            rx,
        }
    }

    /// An entry of `leader` is being applied: every forward fenced to an earlier leader is lost.
    pub fn entry_applied(&self, leader: LeaderKey) {
        let mut inner = self.lock();
        if leader <= inner.applied_leader {
            return;
        }
        inner.applied_leader = leader;
        let lost: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(_, p)| p.fence < leader)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in lost {
            if let Some(p) = inner.pending.remove(&seq) {
                let _ = p.tx.send(Forwarded::Lost);
            }
        }
    }

    /// Hand the waiter of `seq` what became of its command. Gives `what` back if nobody waits.
    pub fn deliver(&self, seq: u64, what: Forwarded) -> Option<Forwarded> {
        match self.lock().pending.remove(&seq) {
            Some(p) => {
                // The request may have given up meanwhile; then nobody wants it.
                let _ = p.tx.send(what);
                None
            }
            None => Some(what),
        }
    }

    /// A snapshot replaced the state up to the entry of `leader`: the forwards it may cover will
    /// never be applied one by one, and this member cannot tell which it covers, so every wait
    /// ends without an outcome.
    pub fn snapshot_installed(&self, leader: LeaderKey) {
        let mut inner = self.lock();
        inner.pending.clear();
        inner.applied_leader = inner.applied_leader.max(leader);
    }
}

/// A registered wait for the local apply of a forwarded command; unregisters itself when dropped.
pub struct Waiter {
    forwards: Arc<Forwards>,
    seq: u64,
    rx: oneshot::Receiver<Forwarded>,
}

impl Waiter {
    /// What became of the command. `None` if this member cannot tell: a snapshot covered it, or
    /// the state machine went away.
    pub async fn outcome(&mut self) -> Option<Forwarded> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.forwards.lock().pending.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(w: &mut Waiter) -> Option<Option<Forwarded>> {
        match w.rx.try_recv() {
            Ok(f) => Some(Some(f)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(None),
        }
    }

    #[test]
    fn a_later_leaders_entry_loses_the_forwards_to_earlier_leaders_only() {
        let f = Arc::new(Forwards::default());
        f.entry_applied((2, 1));
        let mut to_old = f.register(1, (2, 1));
        let mut to_new = f.register(2, (3, 2));
        // Same leader again, and an earlier one: nothing changes.
        f.entry_applied((2, 1));
        f.entry_applied((1, 5));
        assert!(now(&mut to_old).is_none());
        // A later candidate of the same term counts as a later leader.
        f.entry_applied((2, 3));
        assert!(matches!(now(&mut to_old), Some(Some(Forwarded::Lost))));
        assert!(now(&mut to_new).is_none());
        assert!(f
            .deliver(
                2,
                Forwarded::Applied(Err(crate::apply::ApplyError::EmptyCommand))
            )
            .is_none());
        assert!(matches!(
            now(&mut to_new),
            Some(Some(Forwarded::Applied(Err(_))))
        ));
        // Sent to a leader already overtaken: lost at once.
        let mut late = f.register(3, (2, 2));
        assert!(matches!(now(&mut late), Some(Some(Forwarded::Lost))));
        drop(late);
        assert!(f.lock().pending.is_empty());
    }

    #[test]
    fn a_snapshot_ends_every_wait_without_an_outcome() {
        let f = Arc::new(Forwards::default());
        let mut w = f.register(1, (4, 1));
        f.snapshot_installed((5, 2));
        assert!(matches!(now(&mut w), Some(None)));
        assert!(matches!(
            now(&mut f.register(2, (4, 2))),
            Some(Some(Forwarded::Lost))
        ));
    }

    #[test]
    fn the_fence_admits_only_the_leader_named() {
        let log_id = |term, node_id, index| LogId {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id },
            index,
        };
        let mut cmd = Command::default();
        assert!(!fenced_out(&cmd, &log_id(3, 1, 10)));
        cmd.forwarded_to = Some(fence((3, 1)));
        assert!(!fenced_out(&cmd, &log_id(3, 1, 10)));
        assert!(fenced_out(&cmd, &log_id(3, 2, 10)));
        assert!(fenced_out(&cmd, &log_id(4, 1, 10)));
    }
}
