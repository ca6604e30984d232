//! What the alarms and the storage quota let through, as etcd's appliers do, decided before a
//! command is proposed (a refused write leaves no trace): the backend size and the raised alarms,
//! cached for at most [`limits::QUOTA_SIZE_REFRESH`]; raising NOSPACE when a write would pass the
//! quota; changing alarms through raft.

use std::sync::atomic::{AtomicBool, AtomicU64};

use super::{Node, NodeError};
use crate::apply::Applied;
use crate::limits;
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::{AlarmRequest, AlarmResponse, AlarmType};
use crate::pb::metastore::command;
use crate::rt;
use crate::storage::Keyspace;

/// The backend size and the alarms as last read, refreshed at most every
/// [`limits::QUOTA_SIZE_REFRESH`].
pub(super) struct SizeCache {
    bytes: AtomicU64,
    nospace: AtomicBool,
    corrupt: AtomicBool,
    refreshed_at: std::sync::Mutex<Option<rt::Instant>>,
}

impl SizeCache {
    /// Nothing read yet: the first write reads the size and the alarms.
    pub(super) fn new() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            nospace: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            refreshed_at: std::sync::Mutex::new(None),
        }
    }
}

impl Node {
    /// Whether `op`, `size` bytes encoded, may be proposed now. What the alarms stop, as etcd's
    /// appliers do. CORRUPT: every write (read-only txns are served as reads, as etcd serves
    /// them). NOSPACE: puts, lease grants and txns with a put of their own (etcd's quota counts a
    /// txn's top-level puts only: a txn that deletes, as Kubernetes deletes, goes through while
    /// the alarm is raised, so keys can be removed before the alarm is cleared). Puts, grants and
    /// txns are also refused while the backend is past the quota.
    pub(super) fn admit_write(&self, op: &command::Op, size: usize) -> Result<(), NodeError> {
        let (quota_checked, costs) = match op {
            command::Op::Put(_) | command::Op::LeaseGrant(_) => (true, true),
            command::Op::Txn(t) => (true, crate::apply::has_top_level_put(t)),
            _ => (false, false),
        };
        let corrupt_refuses = match op {
            command::Op::Put(_)
            | command::Op::DeleteRange(_)
            | command::Op::Compaction(_)
            | command::Op::LeaseGrant(_)
            | command::Op::LeaseRevoke(_) => true,
            command::Op::Txn(t) => !crate::apply::is_read_only(t),
            _ => false,
        };
        if !corrupt_refuses && !quota_checked {
            return Ok(());
        }
        let (backend, nospace, corrupt) = self.quota_state()?;
        if corrupt && corrupt_refuses {
            return Err(NodeError::Corrupt);
        }
        if nospace && costs {
            return Err(NodeError::NoSpace);
        }
        let cost = if costs { size as u64 } else { 0 };
        if quota_checked && backend + cost > self.config.quota_bytes() {
            self.raise_nospace();
            return Err(NodeError::NoSpace);
        }
        Ok(())
    }

    /// `(backend size, NOSPACE raised, CORRUPT raised)`, at most [`limits::QUOTA_SIZE_REFRESH`]
    /// old. A failed read of the alarms fails the write (nothing is cached from it): a member that
    /// cannot read its alarms cannot tell whether CORRUPT forbids the write.
    pub(super) fn quota_state(&self) -> Result<(u64, bool, bool), NodeError> {
        use std::sync::atomic::Ordering;
        let mut refreshed_at = self
            .backend_size
            .refreshed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = rt::now();
        if refreshed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= limits::QUOTA_SIZE_REFRESH)
        {
            self.backend_size
                .bytes
                .store(self.db_size_bytes(), Ordering::SeqCst);
            let alarms = self.alarms()?;
            let raised = |t: AlarmType| alarms.iter().any(|(_, a)| *a == t as i32);
            self.backend_size
                .nospace
                .store(raised(AlarmType::Nospace), Ordering::SeqCst);
            self.backend_size
                .corrupt
                .store(raised(AlarmType::Corrupt), Ordering::SeqCst);
            *refreshed_at = Some(now);
        }
        Ok((
            self.backend_size.bytes.load(Ordering::SeqCst),
            self.backend_size.nospace.load(Ordering::SeqCst),
            self.backend_size.corrupt.load(Ordering::SeqCst),
        ))
    }

    /// Raise this member's NOSPACE alarm (in the background: the refused write does not wait).
    pub(super) fn raise_nospace(&self) {
        let Some(node) = self.this.upgrade() else {
            return;
        };
        rt::spawn(async move {
            let req = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: node.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            if let Err(e) = node.change_alarm(req).await {
                tracing::warn!("cannot raise the NOSPACE alarm: {e}");
            }
        });
    }

    /// Forget the cached quota state (after a defragment or an alarm change).
    pub(super) fn refresh_quota_state(&self) {
        *self
            .backend_size
            .refreshed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The backend's size in bytes, read now: the replicated state (keys, history, leases,
    /// members), not the raft log, as etcd's db size does not count its WAL.
    pub fn db_size_bytes(&self) -> u64 {
        let engine = self.state.engine();
        engine.keyspace_bytes(Keyspace::Meta) + engine.keyspace_bytes(Keyspace::Kv)
    }

    /// The part of [`Node::db_size_bytes`] that holds live records.
    pub fn db_size_in_use_bytes(&self) -> u64 {
        let engine = self.state.engine();
        engine.keyspace_live_bytes(Keyspace::Meta) + engine.keyspace_live_bytes(Keyspace::Kv)
    }

    /// Every raised alarm as `(member id, alarm type)`.
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>, NodeError> {
        Ok(crate::cluster::read_alarms(self.state.engine().as_ref())?)
    }

    /// Raise or clear an alarm through raft.
    pub async fn change_alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, NodeError> {
        let applied = self.propose(command::Op::Alarm(req)).await;
        self.refresh_quota_state();
        match applied? {
            Applied::Alarm(resp) => Ok(resp),
            _ => Err(NodeError::UnexpectedOutcome("alarm")),
        }
    }
}
