//! The raft state machine: applies committed commands to the MVCC store.
//!
//! Each applied entry's MVCC change and the applied log id go into one engine batch, so after a crash
//! the store is exactly at the last applied entry and openraft replays the rest of the (fsynced) log.
//! Those batches are buffered, not fsynced: the log already made the entries durable.
//!
//! A snapshot is not a copy: it is a frozen engine view taken at a point between two applied
//! batches, read chunk by chunk as it is sent (see [`super::snapshot`]).
//!
//! Applying a compaction only moves the compaction point; its physical half runs in steps a
//! background task takes through [`Shared::compaction_step`], each under the store's write lock
//! alone, so apply waits for at most one step. A view taken between two steps is consistent: it
//! holds the scheduled compaction, and whoever opens it (a member installing the snapshot, a
//! restored backup) finishes the work.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use serde::Deserialize;

use super::forwards::{self, Forwarded, Forwards, Waiter};
use super::{decode, encode, snapshot, CommandResponse, LogId, StoredMembership, TypeConfig};
use crate::apply::{self, Applied, ApplyError};
use crate::auth::tokens::TokenInfo;
use crate::auth::{AuthStore, TokenProvider};
use crate::cluster::version::{VersionState, DOWNGRADE_KEY};
use crate::mvcc::{CompactStep, MvccStore};
use crate::pb::metastore::Command;
use crate::storage::{Durability, EngineView, Keyspace, SharedEngine, WriteBatch};
use crate::watch::WatchHub;

const APPLIED_KEY: &[u8] = b"sm/applied";
const MEMBERSHIP_KEY: &[u8] = b"sm/membership";

/// Snapshot payload.
pub enum SnapshotData {
    /// This member's state frozen at the snapshot's log id: what it sends to a lagging member.
    View(Arc<dyn EngineView>),
    /// A snapshot received from the leader and staged in this member's engine
    /// ([`snapshot::stage`]), ready to install.
    Staged,
}

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

pub use super::forwards::Outcome;

/// State shared between the state machine (owned by openraft) and the read path.
pub struct Shared {
    engine: SharedEngine,
    mvcc: RwLock<MvccStore>,
    /// Users, roles and permissions. Apply takes this lock after the MVCC write lock; a reader
    /// holding it never waits for the MVCC lock.
    auth: RwLock<AuthStore>,
    /// The cluster's downgrade setting. Apply takes this lock after the auth lock; readers hold it
    /// only to copy the state.
    versions: RwLock<VersionState>,
    /// How auth tokens are issued and checked; simple tokens issued through the log are recorded
    /// here (in memory only, as etcd's).
    tokens: TokenProvider,
    watch: Arc<WatchHub>,
    /// This member's id: commands it proposed through the leader carry it.
    member_id: u64,
    /// Requests of this member forwarded to the leader, waiting for their local apply.
    forwards: Arc<Forwards>,
    /// Where apply counts commits and mvcc operations.
    metrics: Arc<crate::metrics::Metrics>,
    /// Raised when a compaction is applied or a store with one pending is opened: wakes the
    /// background compactor (a permit is kept if it is busy, so no wake-up is lost).
    compaction_wanted: tokio::sync::Notify,
    /// Raised after every step of a compaction's physical half: what a `Compact` with
    /// `physical` waits on.
    compaction_progress: tokio::sync::Notify,
}

impl Shared {
    /// Read access to the MVCC store. Apply holds the write side only while it changes the index
    /// and writes the matching engine batch, so a reader never sees one without the other.
    pub fn read(&self) -> RwLockReadGuard<'_, MvccStore> {
        self.mvcc.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Read access to the auth state, as of the last applied entry.
    pub fn auth(&self) -> RwLockReadGuard<'_, AuthStore> {
        self.auth.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster's version state, as of the last applied entry.
    pub fn versions(&self) -> VersionState {
        *self.versions.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The auth tokens this member issues and accepts.
    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// The engine under the store.
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// One step of the physical half of a pending compaction ([`MvccStore::compact_step`]),
    /// holding the store's write lock for that step only.
    pub fn compaction_step(&self, limit: usize) -> io::Result<CompactStep> {
        let step = {
            let mut mvcc = self.mvcc.write().unwrap_or_else(|e| e.into_inner());
            mvcc.compact_step(limit).map_err(io::Error::other)?
        };
        match step {
            CompactStep::Idle => return Ok(step),
            CompactStep::IndexBatch => {}
            CompactStep::RecordBatch(deleted) | CompactStep::Finished { deleted, .. } => {
                self.metrics.db_compaction_keys.add(deleted as u64)
            }
        }
        self.compaction_progress.notify_waiters();
        Ok(step)
    }

    /// Wait until a compaction is applied (or was pending when the state machine opened, or a
    /// snapshot installed brought one).
    pub async fn compaction_wanted(&self) {
        self.compaction_wanted.notified().await
    }

    /// Wait until the physical half of the compaction at `rev` (or a later one) is done, as
    /// etcd's `Compact` with `physical` does. Gives up when no step is taken for `stall`: the
    /// compaction is still applied, only its end was not seen.
    pub async fn wait_compacted(
        &self,
        rev: i64,
        stall: std::time::Duration,
    ) -> Result<(), crate::rt::Elapsed> {
        loop {
            let progress = self.compaction_progress.notified();
            tokio::pin!(progress);
            // Registered before the check, so a step between the check and the wait is seen.
            progress.as_mut().enable();
            if self.read().finished_compact_revision() >= rev {
                return Ok(());
            }
            crate::rt::timeout(stall, progress).await?;
        }
    }

    /// Wait for the local apply of the command this member forwards with sequence number `seq` to
    /// `leader` (see [`forwards`]). Register before sending the command, so the apply cannot slip
    /// by unseen.
    pub fn register(&self, seq: u64, leader: forwards::LeaderKey) -> Waiter {
        self.forwards.register(seq, leader)
    }

    /// Hand what became of `cmd` to this member's waiter for it, if it has one; otherwise give
    /// the outcome back.
    fn deliver(&self, proposer_id: u64, seq: u64, what: Forwarded) -> Option<Outcome> {
        let unclaimed = if proposer_id != self.member_id || seq == 0 {
            Some(what)
        } else {
            self.forwards.deliver(seq, what)
        };
        match unclaimed {
            Some(Forwarded::Applied(outcome)) => Some(outcome),
            Some(Forwarded::Lost) | None => None,
        }
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Open the state machine on `engine` (rebuilding the MVCC index); applied changes go to `watch`,
    /// engine commit times and mvcc operation counts to `metrics`; auth tokens are made and checked
    /// by `tokens`.
    pub fn open(
        engine: SharedEngine,
        watch: Arc<WatchHub>,
        member_id: u64,
        tokens: TokenProvider,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> io::Result<Self> {
        if let Some(records) = snapshot::finish_interrupted_install(engine.as_ref())? {
            tracing::info!(records, "finished a snapshot install a restart interrupted");
        }
        let mvcc = MvccStore::open(engine.clone()).map_err(io::Error::other)?;
        let auth = AuthStore::load(engine.as_ref()).map_err(io::Error::other)?;
        let versions = VersionState::load(engine.as_ref()).map_err(io::Error::other)?;
        let compaction_wanted = tokio::sync::Notify::new();
        if mvcc.compaction_pending() {
            // Interrupted by the restart: the compactor takes it up again as soon as it runs.
            tracing::info!(
                revision = mvcc.compact_revision(),
                "resuming a compaction a restart interrupted"
            );
            compaction_wanted.notify_one();
        }
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                mvcc: RwLock::new(mvcc),
                auth: RwLock::new(auth),
                versions: RwLock::new(versions),
                tokens,
                watch,
                member_id,
                forwards: Arc::default(),
                metrics,
                compaction_wanted,
                compaction_progress: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The state shared with readers.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn read_meta<T: for<'a> Deserialize<'a>>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.shared.engine.get(Keyspace::Meta, key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes)?)),
        }
    }
}

/// Keys of the `Meta` keyspace that belong to one cluster's raft state, not to the data a backup
/// carries into a new cluster (a restored cluster starts without a downgrade, as a new one).
pub(crate) const CLUSTER_BOUND_META: [&[u8]; 5] = [
    APPLIED_KEY,
    MEMBERSHIP_KEY,
    b"member/",
    b"alarm/",
    DOWNGRADE_KEY,
];

impl Shared {
    /// The replicated state frozen now, with the snapshot meta it is at (read from the same view,
    /// so they agree: apply writes the applied log id in the same batch as the data).
    pub fn frozen(&self) -> io::Result<(SnapshotMeta, Arc<dyn EngineView>)> {
        let view = self.engine.view()?;
        let read =
            |key: &[u8]| -> io::Result<Option<Vec<u8>>> { Ok(view.get(Keyspace::Meta, key)?) };
        let last_log_id = match read(APPLIED_KEY)? {
            Some(b) => decode::<Option<LogId>>(&b)?,
            None => None,
        };
        let last_membership = match read(MEMBERSHIP_KEY)? {
            Some(b) => decode(&b)?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        Ok((meta, view))
    }
}

/// Apply one command, turning a panic inside it (an invariant assertion: no request can reach one,
/// but a corrupt store might) into a fail-stop error naming the log entry. The in-memory state may
/// then be half-changed, so the member must stop: the error stops the raft core, and nothing of
/// the entry's batch is written.
fn apply_guarded(
    mvcc: &mut MvccStore,
    auth: &mut AuthStore,
    versions: &mut VersionState,
    cmd: Command,
    log_id: &LogId,
) -> io::Result<Result<(Applied, WriteBatch), ApplyError>> {
    let run = std::panic::AssertUnwindSafe(|| apply::apply(mvcc, auth, versions, cmd));
    std::panic::catch_unwind(run).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(index = log_id.index, %what, "apply broke an invariant; the member stops");
        io::Error::other(format!(
            "applying log entry {}: invariant broken: {what}",
            log_id.index
        ))
    })
}

fn apply_one(
    shared: &Shared,
    mvcc: &mut MvccStore,
    auth: &mut AuthStore,
    versions: &mut VersionState,
    payload: EntryPayload<super::RaftCommand, u64, super::PeerNode>,
    log_id: &LogId,
    batch: &mut WriteBatch,
) -> io::Result<CommandResponse> {
    // First: forwards to earlier leaders can no longer apply (this entry's may, below).
    shared.forwards.entry_applied(forwards::leader_of(log_id));
    let outcome = match payload {
        EntryPayload::Normal(cmd) => {
            let (outcome, proposer, seq) = match Command::decode(cmd.bytes.as_slice()) {
                Ok(cmd) if forwards::fenced_out(&cmd, log_id) => {
                    // Sent to another leader than the one that appended it (which proposed it in
                    // a later term): it runs nowhere, and its proposer may send it again.
                    tracing::debug!(index = log_id.index, "forwarded command fenced out");
                    return Ok(CommandResponse {
                        outcome: shared.deliver(cmd.proposer_id, cmd.request_seq, Forwarded::Lost),
                    });
                }
                Ok(cmd) => {
                    let (proposer, seq) = (cmd.proposer_id, cmd.request_seq);
                    (
                        apply_guarded(mvcc, auth, versions, cmd, log_id)?,
                        proposer,
                        seq,
                    )
                }
                Err(_) => (Err(ApplyError::EmptyCommand), 0, 0),
            };
            let outcome = match outcome {
                Ok((applied, changes)) => {
                    count_applied(&shared.metrics, &applied);
                    batch.append(changes);
                    if let Applied::TokenIssued {
                        user,
                        token,
                        password_hash,
                        auth_revision,
                        ..
                    } = &applied
                    {
                        // Member-local memory, like the watch hub: every member learns the token
                        // and runs its own TTL clock for it.
                        shared.tokens.record(
                            token.clone(),
                            TokenInfo {
                                user: user.clone(),
                                password_hash: password_hash.clone(),
                                revision: *auth_revision,
                            },
                        );
                    }
                    Ok(applied)
                }
                Err(e) if e.is_fatal() => {
                    tracing::error!(index = log_id.index, error = %e, "apply failed; the member stops");
                    return Err(io::Error::other(format!(
                        "applying log entry {}: {e}",
                        log_id.index
                    )));
                }
                Err(e) => Err(e),
            };
            shared.deliver(proposer, seq, Forwarded::Applied(outcome))
        }
        EntryPayload::Membership(m) => {
            // Members that left take their published attributes with them.
            let attrs = crate::cluster::read_attributes(shared.engine.as_ref())
                .map_err(io::Error::other)?;
            for id in attrs.keys() {
                if !m.nodes().any(|(n, _)| n == id) {
                    crate::cluster::delete_attributes(batch, *id);
                }
            }
            let stored = StoredMembership::new(Some(*log_id), m);
            batch.put(Keyspace::Meta, MEMBERSHIP_KEY, encode(&stored)?);
            None
        }
        EntryPayload::Blank => None,
    };
    Ok(CommandResponse { outcome })
}

/// Count an applied command as etcd's mvcc counts its operations: once per kind a command
/// (or the branch a transaction took) contains.
fn count_applied(metrics: &crate::metrics::Metrics, applied: &Applied) {
    use crate::pb::etcdserverpb::response_op::Response;
    match applied {
        Applied::Put(_) => metrics.mvcc_put.inc(),
        Applied::DeleteRange(_) => metrics.mvcc_delete.inc(),
        Applied::Txn(txn) => {
            metrics.mvcc_txn.inc();
            let has = |f: fn(&Response) -> bool| {
                txn.responses
                    .iter()
                    .any(|r| r.response.as_ref().is_some_and(f))
            };
            if has(|r| matches!(r, Response::ResponsePut(_))) {
                metrics.mvcc_put.inc();
            }
            if has(|r| matches!(r, Response::ResponseDeleteRange(_))) {
                metrics.mvcc_delete.inc();
            }
            if has(|r| matches!(r, Response::ResponseRange(_))) {
                metrics.mvcc_range.inc();
            }
        }
        _ => {}
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.read_meta::<Option<LogId>>(APPLIED_KEY)?.flatten();
        let membership = self.read_meta(MEMBERSHIP_KEY)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Gather first: the MVCC write lock is a plain lock and must not be held across an await.
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        // A slow apply: committed entries pile up behind it, reads wait for it.
        crate::rt::buggify::delay("apply-slow", std::time::Duration::from_millis(100)).await;
        let mut responses = Vec::with_capacity(entries.len());
        {
            let mut mvcc = self.shared.mvcc.write().unwrap_or_else(|e| e.into_inner());
            let mut auth = self.shared.auth.write().unwrap_or_else(|e| e.into_inner());
            let mut versions = self
                .shared
                .versions
                .write()
                .unwrap_or_else(|e| e.into_inner());
            // One engine batch for all entries; later entries read earlier ones through the
            // store's unflushed overlay until it is written.
            let mut batch = WriteBatch::new();
            let mut last = None;
            for (entry, responder) in entries {
                let response = apply_one(
                    &self.shared,
                    &mut mvcc,
                    &mut auth,
                    &mut versions,
                    entry.payload,
                    &entry.log_id,
                    &mut batch,
                )?;
                last = Some(entry.log_id);
                responses.push((responder, response));
            }
            if let Some(last) = last {
                batch.put(Keyspace::Meta, APPLIED_KEY, encode(&Some(last))?);
                let started = crate::rt::now();
                self.shared.engine.write(batch, Durability::Buffered)?;
                self.shared
                    .metrics
                    .backend_commit
                    .observe(started.elapsed());
            }
            mvcc.mark_flushed();
            // Still under the write lock: watchers see each revision right as it becomes readable,
            // and the catch-up task (which reads under the read lock) cannot interleave.
            self.shared.watch.notify(&mvcc.take_events());
            if mvcc.compaction_pending() {
                self.shared.compaction_wanted.notify_one();
            }
        }
        for (responder, response) in responses {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let SnapshotData::Staged = snapshot else {
            return Err(io::Error::other(
                "only a snapshot received from the leader can be installed",
            ));
        };
        let last = vec![
            (APPLIED_KEY.to_vec(), encode(&meta.last_log_id)?),
            (MEMBERSHIP_KEY.to_vec(), encode(&meta.last_membership)?),
        ];
        let mut mvcc = self.shared.mvcc.write().unwrap_or_else(|e| e.into_inner());
        let records = snapshot::install_staged(self.shared.engine.as_ref(), last)?;
        tracing::info!(records, last_log_id = ?meta.last_log_id, "installed a snapshot");
        *mvcc = MvccStore::open(self.shared.engine.clone()).map_err(io::Error::other)?;
        if mvcc.compaction_pending() {
            // The leader's state was frozen mid-compaction: finish it here.
            self.shared.compaction_wanted.notify_one();
        }
        *self.shared.auth.write().unwrap_or_else(|e| e.into_inner()) =
            AuthStore::load(self.shared.engine.as_ref()).map_err(io::Error::other)?;
        *self
            .shared
            .versions
            .write()
            .unwrap_or_else(|e| e.into_inner()) =
            VersionState::load(self.shared.engine.as_ref()).map_err(io::Error::other)?;
        // Watchers were fed revision by revision; the ones the snapshot skipped come from storage.
        self.shared.watch.all_behind();
        // Forwarded writes waiting for entries the snapshot covers will never see them applied one
        // by one: end their waits now (their outcome is unknown to this member).
        let covered = meta.last_log_id.as_ref().map(forwards::leader_of);
        self.shared
            .forwards
            .snapshot_installed(covered.unwrap_or_default());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        // The current state is always a valid snapshot: it covers everything applied, and the log
        // is only ever purged below what was applied. Nothing to keep, and nothing lost on restart.
        let (meta, view) = self.shared.frozen()?;
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::View(view),
        }))
    }
}

/// Builds a snapshot: freezes the state as it is.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, view) = self.shared.frozen()?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::View(view),
        })
    }
}
