//! One member: works out its identity (`bootstrap`), wires raft, the state machine and the engine
//! together; routes proposals, read indexes and lease liveness to the leader with a deadline
//! (`routing`), changes membership (`members`), serves reads (serializable or linearizable), builds
//! response headers, runs the lease clock (on the leader), the watch catch-up and the background
//! compaction (`compaction`), shuts down.

mod backup_stream;
mod bootstrap;
mod compaction;
mod defrag;
mod failover;
pub mod leases;
mod members;
mod range_stream;
mod read_index;
mod routing;
pub mod send_budget;

pub use range_stream::RangeStreamRead;

pub(crate) use members::membership_reply;
pub(crate) use routing::LeaderWriteError;

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::ReadPolicy;
use openraft::{Config, ServerState, SnapshotPolicy};
use prost::Message;

use crate::apply::{self, Applied, ApplyError};
use crate::auth::{AuthError, AuthStore};
use crate::config::ServerConfig;
use crate::limits;
use crate::metrics::{Metrics, Scrape};
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::{AlarmRequest, AlarmResponse, AlarmType};
use crate::pb::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, RangeRequest, RangeResponse, ResponseHeader,
    TxnRequest, TxnResponse,
};
use crate::pb::metastore::{command, Command, Requester};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, PeerChannels};
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::Raft;
use crate::rt;
use crate::storage::{Keyspace, SharedEngine, StorageError};
use crate::watch::{WatchHub, WatchSpec, WatcherKey};

/// Why a request could not be served. `api::status` maps each to etcd's gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("request is too large")]
    RequestTooLarge,
    #[error("request timed out")]
    Timeout,
    #[error("no leader")]
    NoLeader,
    #[error("leader changed")]
    LeaderChanged,
    #[error("request timed out, possibly due to previous leader failure")]
    LeaderFailed,
    #[error(transparent)]
    Membership(#[from] crate::cluster::MembershipError),
    #[error("server stopped")]
    Stopped,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: writes are refused until it is cleared.
    #[error("corrupt cluster")]
    Corrupt,
    /// A call waited its whole time for a place among a bounded number (snapshot streams,
    /// [`limits::SNAPSHOT_STREAMS_MAX`]; password work and full scans of the store,
    /// [`limits::heavy_work_places`]).
    #[error("too many requests")]
    TooManyRequests,
    /// A `Maintenance.Snapshot` stream whose client took no piece for
    /// [`limits::SNAPSHOT_STREAM_STALL`]: ended, its place and view given back.
    #[error(
        "snapshot stream stalled: no piece taken for {0:?}",
        limits::SNAPSHOT_STREAM_STALL
    )]
    SnapshotStalled,
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("peer TLS: {0}")]
    PeerTls(String),
    /// A configuration value the member cannot start with (only when starting).
    #[error("{0}")]
    Config(String),
}

/// Raft's figures for `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
}

/// A lease as `LeaseTimeToLive` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub granted: i64,
    pub remaining: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The backend size and the alarms as last read, refreshed at most every
/// [`limits::QUOTA_SIZE_REFRESH`].
struct SizeCache {
    bytes: std::sync::atomic::AtomicU64,
    nospace: std::sync::atomic::AtomicBool,
    corrupt: std::sync::atomic::AtomicBool,
    refreshed_at: std::sync::Mutex<Option<rt::Instant>>,
}

/// A running member.
pub struct Node {
    /// Itself, weakly: for background work a request starts and does not wait for.
    this: std::sync::Weak<Node>,
    raft: Raft,
    state: Arc<Shared>,
    watch: Arc<WatchHub>,
    catch_up: rt::JoinHandle<()>,
    progress: rt::JoinHandle<()>,
    /// Deletes what compactions superseded, in the background.
    compactor: rt::JoinHandle<()>,
    lease_clock: Arc<leases::LeaseClock>,
    /// When a leader's append or heartbeat last arrived (what the failover watch looks at).
    leader_contact: failover::LeaderContact,
    /// Linearizable reads waiting for this leader's next read-index round (reads here and
    /// followers' `ReadIndex` calls).
    leader_rounds: read_index::ReadIndexRounds,
    /// Linearizable reads here waiting for this follower's next `ReadIndex` call to the leader.
    follower_rounds: read_index::ReadIndexRounds,
    /// Background tasks that hold the node weakly (lease expiry, publishing attributes).
    background: std::sync::Mutex<Vec<rt::JoinHandle<()>>>,
    member_id: u64,
    cluster_id: u64,
    config: ServerConfig,
    backend_size: SizeCache,
    channels: PeerChannels,
    /// Sequence numbers of proposals this member forwards to the leader (random start per boot).
    next_seq: std::sync::atomic::AtomicU64,
    /// Held while a snapshot from the leader is being staged: one transfer at a time.
    snapshot_receive: tokio::sync::Mutex<()>,
    /// Places for `Maintenance.Snapshot` streams ([`limits::SNAPSHOT_STREAMS_MAX`]): a stream
    /// holds one until it ends or its client goes away.
    backups: Arc<tokio::sync::Semaphore>,
    /// Places for full scans of the store (`Hash`, `HashKV`): [`limits::heavy_work_places`].
    full_scans: Arc<tokio::sync::Semaphore>,
    /// Places for ranges larger than one piece being read ([`limits::heavy_work_places`]): a read
    /// keeps what it has read until it is answered, so reads at once bound the member's memory.
    large_reads: Arc<tokio::sync::Semaphore>,
    /// Large answers on their way to clients ([`send_budget`]).
    send_budget: Arc<send_budget::SendBudget>,
    /// Defragmentations: one at a time, shared by the calls that wait for it.
    defrags: defrag::Defrags,
    /// `KV.RangeStream`s open now: their chunks shrink as more are open.
    range_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Transfers begun so far: a transfer whose number is no longer the newest stops waiting for
    /// chunks and makes way (woken through `snapshot_superseded`).
    snapshot_receives: std::sync::atomic::AtomicU64,
    snapshot_superseded: tokio::sync::Notify,
    /// Raised when the engine fails an fsync: the member must stop.
    disk_failure: crate::storage::DiskFailure,
    /// This member's counters (the `/metrics` endpoint renders them).
    metrics: Arc<Metrics>,
}

impl Node {
    /// Open the member's state on `engine` and start raft. A member alone in its cluster waits
    /// until it leads; a member of a larger cluster returns at once (its peers may not be up yet)
    /// and requests wait for a leader within their deadline. Serve peers right after.
    pub async fn start(config: ServerConfig, engine: SharedEngine) -> Result<Arc<Node>, NodeError> {
        let channels = PeerChannels::new(&config.peer_tls).map_err(NodeError::PeerTls)?;
        Self::start_with_peers(config, engine, channels).await
    }

    /// [`Node::start`] with the peer channels made already (from `config.peer_tls`: the server
    /// builds them before it opens anything, so a bad certificate file stops it first).
    pub async fn start_with_peers(
        config: ServerConfig,
        engine: SharedEngine,
        channels: PeerChannels,
    ) -> Result<Arc<Node>, NodeError> {
        // Unusable JWT keys stop the start before the member touches its storage or its peers.
        let tokens = crate::auth::TokenProvider::open(&config.auth_token, config.auth_token_ttl)
            .map_err(|e| NodeError::Config(format!("--auth-token: {e}")))?;
        // Everything below writes through the fail-stop wrapper: one failed fsync stops the member.
        let (engine, disk_failure) = crate::storage::FailStop::wrap(engine);
        let identity = bootstrap::identify(&config, &engine, &channels).await?;
        let member_id = identity.member_id;
        channels.set_identity(member_id, identity.cluster_id);

        let raft_config = Config {
            cluster_name: "metastore".into(),
            heartbeat_interval: limits::HEARTBEAT_INTERVAL_MS,
            election_timeout_min: limits::ELECTION_TIMEOUT_MS,
            // `Node::leader_lease_valid` assumes openraft's leader lease is this.
            election_timeout_max: limits::ELECTION_TIMEOUT_MS * 2,
            max_payload_entries: limits::RAFT_MAX_PAYLOAD_ENTRIES,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: limits::RAFT_LOGS_KEPT_AFTER_SNAPSHOT
                .min(config.snapshot_count / 2),
            // A restarted leader must win a new election, as in etcd, never resume in its old
            // term: it replicates entries before its own fsync completes, so a power cut can take
            // entries from its log that followers already hold; resuming in the same term, it would
            // reuse those indexes for new entries with the same term, and followers, matching on
            // (term, index), would keep the old ones. The simulator found this (seed 30 of the
            // chaos scenario: members with equal raft indexes and different data).
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let metrics = Metrics::new();
        let watch = WatchHub::with_limits(limits::WATCH_BUFFERED_BYTES_TOTAL, config.max_watchers);
        let state_machine = StateMachine::open(
            engine.clone(),
            watch.clone(),
            member_id,
            tokens,
            metrics.clone(),
        )
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let state = state_machine.shared();
        let alone = identity
            .founding
            .as_ref()
            .is_some_and(|f| f.len() == 1 && f.contains_key(&member_id));
        let log_store = if alone {
            LogStore::new(engine, metrics.clone())
        } else {
            LogStore::with_background_sync(engine, metrics.clone(), &config.name)
                .map_err(|e| NodeError::Raft(format!("cannot start the log syncer: {e}")))?
        };
        let raft = Raft::new(
            member_id,
            Arc::new(raft_config),
            Network::new(channels.clone(), metrics.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        // A member of a larger founding set initializes in the background, in its turn (see
        // `bootstrap::initialize_in_turn`): its peers must be able to reach it meanwhile, and the
        // peer service starts only once this returns.
        let mut founding_turn = None;
        if let Some(founding) = identity.founding {
            if !raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
            {
                if alone {
                    raft.initialize(founding)
                        .await
                        .map_err(|e| NodeError::Raft(e.to_string()))?;
                } else {
                    founding_turn = Some(rt::spawn(bootstrap::initialize_in_turn(
                        raft.clone(),
                        member_id,
                        founding,
                    )));
                }
            }
        }
        if alone {
            raft.wait(Some(limits::STARTUP_LEADER_TIMEOUT))
                .state(ServerState::Leader, "single member becomes leader")
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        }

        let catch_up = rt::spawn(run_catch_up(watch.clone(), state.clone()));
        let progress = rt::spawn(run_progress_ticks(
            watch.clone(),
            state.clone(),
            config.watch_progress_interval,
        ));
        let compactor = rt::spawn(compaction::run_compactor(
            state.clone(),
            config.compaction_batch_limit,
            config.compaction_sleep_interval,
        ));
        let leader_raft = raft.clone();
        let (leader_rounds, leader_rounds_task) = read_index::ReadIndexRounds::start(move || {
            read_index::confirm_leadership(leader_raft.clone())
        });
        let mut follower_rounds_task = None;
        let node = Arc::new_cyclic(|this: &std::sync::Weak<Node>| {
            let this_node = this.clone();
            let (follower_rounds, task) = read_index::ReadIndexRounds::start(move || {
                let node = this_node.clone();
                async move {
                    match node.upgrade() {
                        Some(node) => node.read_index_from_leader().await,
                        None => Err(routing::LeaderWriteError::Stopped),
                    }
                }
            });
            follower_rounds_task = Some(task);
            Node {
                this: this.clone(),
                leader_rounds,
                follower_rounds,
                compactor,
                snapshot_receive: tokio::sync::Mutex::new(()),
                backups: Arc::new(tokio::sync::Semaphore::new(limits::SNAPSHOT_STREAMS_MAX)),
                full_scans: Arc::new(tokio::sync::Semaphore::new(limits::heavy_work_places())),
                large_reads: Arc::new(tokio::sync::Semaphore::new(limits::heavy_work_places())),
                send_budget: send_budget::SendBudget::new(limits::SEND_BUDGET_BYTES),
                defrags: defrag::Defrags::default(),
                range_streams: Arc::default(),
                snapshot_receives: std::sync::atomic::AtomicU64::new(0),
                snapshot_superseded: tokio::sync::Notify::new(),
                disk_failure,
                raft,
                state,
                watch,
                catch_up,
                progress,
                lease_clock: Arc::new(leases::LeaseClock::default()),
                leader_contact: failover::LeaderContact::new(),
                background: std::sync::Mutex::new(Vec::new()),
                member_id,
                cluster_id: identity.cluster_id,
                config,
                backend_size: SizeCache {
                    bytes: std::sync::atomic::AtomicU64::new(0),
                    nospace: std::sync::atomic::AtomicBool::new(false),
                    corrupt: std::sync::atomic::AtomicBool::new(false),
                    refreshed_at: std::sync::Mutex::new(None),
                },
                channels,
                // A random start, not 1: entries this member proposed before a restart can still be
                // applied after it (re-applied from the log, or committed late), and their outcome
                // goes to whoever waits on (this member, seq); a counter restarting at 1 handed a new
                // request the outcome (and revision) of an old one. The simulator found this: an
                // acknowledged put that was never written. Half the range: no wrap to 0 ("no waiter").
                next_seq: std::sync::atomic::AtomicU64::new((rt::random_u64() >> 1) | 1),
                metrics: metrics.clone(),
            }
        });
        // The expiry task takes up the leases itself once this member leads and has applied its
        // term's first entry (see `run_lease_expiry`).
        let expiry = rt::spawn(run_lease_expiry(
            Arc::downgrade(&node),
            node.config.lease_checkpoint_interval,
        ));
        let publish = rt::spawn(members::run_publish(Arc::downgrade(&node)));
        let failover = rt::spawn(failover::run_failover_watch(Arc::downgrade(&node)));
        let leaders = rt::spawn(count_leader_changes(node.raft.clone(), metrics));
        node.background_lock()
            .extend([expiry, publish, leaders, failover, leader_rounds_task]);
        node.background_lock().extend(follower_rounds_task);
        node.background_lock().extend(founding_turn);
        Ok(node)
    }

    fn background_lock(&self) -> std::sync::MutexGuard<'_, Vec<rt::JoinHandle<()>>> {
        self.background.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A leader's append or heartbeat arrived over the peer service.
    pub(crate) fn leader_contacted(&self) {
        self.leader_contact.touch();
    }

    /// Whether this member currently leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// A new leader takes up each lease of the applied state, once per term: from its last
    /// checkpointed remaining TTL (its full TTL if never checkpointed), never below the minimum,
    /// plus one election timeout of grace, as etcd's lessor does on promotion. Only once this
    /// leader has applied its term's first entry (the caller has seen [`Node::leader_caught_up`]
    /// in `term`): every lease granted in an earlier term is in the table then, and every later
    /// grant goes through this leader (`write_as_leader` starts its clock). Before that a grant the
    /// previous leader committed may be missing from the table, and a lease left out here would
    /// never expire.
    fn take_up_leases(&self, term: u64) {
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

    /// Raft's current term.
    fn current_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// Whether member `id` may send raft messages and forwarded requests to this member: it is in
    /// the membership raft knows (voter or learner, in either half of a joint change), or raft
    /// knows none yet (a member that joined and awaits its first entries from the leader, which
    /// its cluster id already vouches for). A member removed from the cluster is refused.
    pub(crate) fn admits_peer(&self, id: u64) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let members = &m.membership_config;
        members.get_node(&id).is_some() || members.nodes().next().is_none()
    }

    /// The raft handle (for the peer service).
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The configuration the member runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The member's budget for large answers on their way to clients ([`send_budget`]).
    pub fn send_budget(&self) -> &Arc<send_budget::SendBudget> {
        &self.send_budget
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let raft_term = self.raft.metrics().borrow_watched().current_term;
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term,
        }
    }

    /// The full header for a response whose revision apply or the read path set (`partial`), or
    /// the current revision when none was set.
    pub fn complete_header(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = partial
            .map(|h| h.revision)
            .unwrap_or_else(|| self.current_revision());
        Some(self.header(revision))
    }

    /// `(backend size, NOSPACE raised, CORRUPT raised)`, at most [`limits::QUOTA_SIZE_REFRESH`]
    /// old.
    fn quota_state(&self) -> (u64, bool, bool) {
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
            let alarms = self.alarms();
            let raised = |t: AlarmType| alarms.iter().any(|(_, a)| *a == t as i32);
            self.backend_size
                .nospace
                .store(raised(AlarmType::Nospace), Ordering::SeqCst);
            self.backend_size
                .corrupt
                .store(raised(AlarmType::Corrupt), Ordering::SeqCst);
            *refreshed_at = Some(now);
        }
        (
            self.backend_size.bytes.load(Ordering::SeqCst),
            self.backend_size.nospace.load(Ordering::SeqCst),
            self.backend_size.corrupt.load(Ordering::SeqCst),
        )
    }

    /// Raise this member's NOSPACE alarm (in the background: the refused write does not wait).
    fn raise_nospace(&self) {
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
    fn refresh_quota_state(&self) {
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

    /// A hash of all replicated state (every record of the `Meta` and `Kv` keyspaces), for
    /// `Maintenance.Hash`: read from one engine view (apply writes both keyspaces in one batch, so
    /// they agree), off the async workers, in one of the places for full scans.
    pub async fn hash_all(&self) -> Result<u32, NodeError> {
        let place = wait_for_place(&self.full_scans, self.config.request_timeout).await?;
        let engine = self.state.engine().clone();
        // The place goes with the work: a caller that leaves cannot stop the scan once it runs.
        blocking_io(move || {
            let view = engine.view()?;
            let mut hasher = crate::mvcc::RecordHasher::default();
            for ks in [Keyspace::Meta, Keyspace::Kv] {
                view.scan_uncached(ks, &[], None, &mut |k, v| {
                    hasher.feed(k);
                    hasher.feed(v);
                    true
                })?;
            }
            drop(place);
            Ok(hasher.finish())
        })
        .await
    }

    /// Every raised alarm as `(member id, alarm type)`.
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        crate::cluster::read_alarms(self.state.engine().as_ref()).unwrap_or_default()
    }

    /// The cluster's version state (its downgrade setting), as this member last applied it.
    pub fn versions(&self) -> crate::cluster::version::VersionState {
        self.state.versions()
    }

    /// Enable a downgrade to `target` (`Some`) or cancel the one enabled (`None`) through raft;
    /// apply checks it against the state it meets. Returns the cluster version before the change.
    pub async fn change_downgrade(
        &self,
        target: Option<crate::cluster::version::Version>,
    ) -> Result<crate::cluster::version::Version, NodeError> {
        let change = crate::pb::etcdserverpb::DowngradeInfo {
            enabled: target.is_some(),
            target_version: target.map(|v| v.to_string()).unwrap_or_default(),
        };
        match self.propose(command::Op::Downgrade(change)).await? {
            Applied::Downgrade { before, .. } => Ok(before),
            other => Err(NodeError::Raft(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// Raise or clear an alarm through raft.
    pub async fn change_alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, NodeError> {
        let applied = self.propose(command::Op::Alarm(req)).await;
        self.refresh_quota_state();
        match applied? {
            Applied::Alarm(resp) => Ok(resp),
            other => Err(NodeError::Raft(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// A consistent backup of this member's replicated state as etcd's snapshot file, produced
    /// piece by piece as the stream is read (see `raft::etcd_snapshot::writer`); with its total
    /// size in bytes. At most [`limits::SNAPSHOT_STREAMS_MAX`] run at once; a later call waits
    /// for a place up to [`limits::SNAPSHOT_STREAM_WAIT`], then fails with
    /// [`NodeError::TooManyRequests`].
    pub async fn backup(
        &self,
    ) -> Result<(u64, impl futures::Stream<Item = Result<Vec<u8>, NodeError>>), NodeError> {
        use crate::raft::etcd_snapshot::writer::SnapshotWriter;
        let failed = |e: std::io::Error| NodeError::Raft(e.to_string());
        // A place first: a call waiting for one holds no view and has read nothing.
        let place = wait_for_place(&self.backups, limits::SNAPSHOT_STREAM_WAIT).await?;
        let (_, view) = self.state.frozen().map_err(failed)?;
        // The first pass over the view lays the file out: off the async workers. The place goes
        // with it (a caller that leaves cannot stop the pass once it runs), then with the writer:
        // freed when the pass fails, the stream ends or is dropped, or its client stalls (see
        // `backup_stream`).
        let (writer, place) =
            blocking_io(move || SnapshotWriter::new(view).map(|writer| (writer, place))).await?;
        let total = writer.total_bytes();
        let backup = backup_stream::Backup::watched(writer, place);
        let pieces = futures::stream::unfold(Some(backup), move |backup| async move {
            let backup = backup?;
            // Taken out while a piece is read: the watchdog finds nothing to drop meanwhile.
            let Some((mut writer, place)) = backup.take() else {
                return Some((Err(NodeError::SnapshotStalled), None));
            };
            // Each piece reads up to a chunk from the engine: off the async workers. A writer
            // that died ends the stream with an error, never quietly (the client would keep a
            // truncated file).
            let joined = rt::spawn_blocking(move || {
                let piece = writer.next_piece();
                (writer, piece)
            })
            .await;
            let (writer, piece) = match joined {
                Ok(done) => done,
                Err(e) => return Some((Err(failed(e)), None)),
            };
            match piece {
                Ok(Some(piece)) => {
                    backup.put_back(writer, place);
                    Some((Ok(piece), Some(backup)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(failed(e)), None)),
            }
        });
        Ok((total, pieces))
    }

    /// Start receiving a snapshot from the leader. A transfer still waiting for chunks is told to
    /// make way (its sender may have gone away without closing the stream, or a newer leader
    /// sends); one that is installing is waited for, at most
    /// [`limits::SNAPSHOT_CHUNK_RECEIVE_TIMEOUT`]: `None` if it is still in progress then. Whatever
    /// an earlier, unfinished transfer staged is dropped. The number returned is this transfer's,
    /// for [`Node::snapshot_superseded`].
    pub async fn begin_snapshot_receive(
        &self,
    ) -> Result<Option<(tokio::sync::MutexGuard<'_, ()>, u64)>, NodeError> {
        use std::sync::atomic::Ordering;
        let number = self.snapshot_receives.fetch_add(1, Ordering::SeqCst) + 1;
        self.snapshot_superseded.notify_waiters();
        let Ok(guard) = rt::timeout(
            limits::SNAPSHOT_CHUNK_RECEIVE_TIMEOUT,
            self.snapshot_receive.lock(),
        )
        .await
        else {
            return Ok(None);
        };
        let engine = self.state.engine().clone();
        blocking_io(move || crate::raft::snapshot::clear_staging(engine.as_ref())).await?;
        Ok(Some((guard, number)))
    }

    /// Resolves once a transfer begun after transfer `number` wants its place.
    pub async fn snapshot_superseded(&self, number: u64) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.snapshot_superseded.notified();
            tokio::pin!(notified);
            // Registered before the check: a newer transfer cannot slip in between unnoticed.
            notified.as_mut().enable();
            if self.snapshot_receives.load(Ordering::SeqCst) != number {
                return;
            }
            notified.await;
        }
    }

    /// Stage one chunk of the snapshot being received (hold the guard from
    /// [`Node::begin_snapshot_receive`]). Fails on a malformed chunk.
    pub async fn stage_snapshot_chunk(&self, chunk: Vec<u8>) -> Result<usize, NodeError> {
        let engine = self.state.engine().clone();
        blocking_io(move || crate::raft::snapshot::stage(engine.as_ref(), &chunk)).await
    }

    /// Give the engine's free space back (etcd's defragment) on this member: by a
    /// defragmentation that starts after this call, shared with the calls that wait for it (see
    /// `defrag`).
    pub async fn defragment(&self) -> Result<(), NodeError> {
        let engine = self.state.engine().clone();
        self.defrags
            .defragment(engine, self.metrics.clone())
            .await
            .map_err(NodeError::Raft)?;
        self.refresh_quota_state();
        Ok(())
    }

    /// Raft's view of this member, for `Status`.
    pub fn raft_status(&self) -> RaftStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        RaftStatus {
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        }
    }

    /// `(hash, hash revision, compact revision)` of the key-value history up to `revision`: off
    /// the async workers, in one of the places for full scans, read in pieces without holding the
    /// store's lock (see `mvcc::hash`), so writes go on while a large store is hashed.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), NodeError> {
        let place = wait_for_place(&self.full_scans, self.config.request_timeout).await?;
        let state = self.state.clone();
        // The place goes with the work: a caller that leaves cannot stop the scan once it runs.
        let hashed = rt::spawn_blocking(move || {
            let hashed = crate::mvcc::MvccStore::hash_kv_in_pieces(
                || state.read(),
                revision,
                limits::HASH_PIECE_BYTES,
            );
            drop(place);
            hashed
        })
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        hashed.map_err(|e| NodeError::Apply(e.into()))
    }

    /// Wait until the physical half of the compaction at `revision` (applied on this member) is
    /// done, as etcd's `Compact` with `physical` does; a timeout if the compaction makes no step
    /// for a while.
    pub async fn wait_compacted(&self, revision: i64) -> Result<(), NodeError> {
        let stall = limits::COMPACTION_PHYSICAL_STALL_MAX + self.config.compaction_sleep_interval;
        self.state
            .wait_compacted(revision, stall)
            .await
            .map_err(|_| NodeError::Timeout)
    }

    /// The newest applied store revision.
    pub fn current_revision(&self) -> i64 {
        self.state.read().current_revision()
    }

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
        // What the alarms stop, as etcd's appliers do. CORRUPT: every write (read-only txns are
        // served as reads, as etcd serves them). NOSPACE: puts, lease grants and txns with a put
        // of their own (etcd's quota counts a txn's top-level puts only: a txn that deletes, as
        // Kubernetes deletes, goes through while the alarm is raised, so keys can be removed
        // before the alarm is cleared). Puts, grants and txns are also refused while the backend
        // is past the quota.
        let (quota_checked, costs) = match &op {
            command::Op::Put(_) | command::Op::LeaseGrant(_) => (true, true),
            command::Op::Txn(t) => (true, crate::apply::has_top_level_put(t)),
            _ => (false, false),
        };
        let corrupt_refuses = match &op {
            command::Op::Put(_)
            | command::Op::DeleteRange(_)
            | command::Op::Compaction(_)
            | command::Op::LeaseGrant(_)
            | command::Op::LeaseRevoke(_) => true,
            command::Op::Txn(t) => !crate::apply::is_read_only(t),
            _ => false,
        };
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
        if corrupt_refuses || quota_checked {
            let (backend, nospace, corrupt) = self.quota_state();
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

    /// Serve a range. Linearizable reads first confirm, through a read index obtained from the
    /// leader, that nothing newer has committed, and wait until this member applied it;
    /// serializable reads are served from local state at once.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, NodeError> {
        self.range_checked(req, |_| Ok(())).await
    }

    /// [`Node::range`] that first asks `permitted` about the auth state the read is served at
    /// (after the read index, as etcd checks a read's permissions).
    pub async fn range_checked(
        &self,
        req: &RangeRequest,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<RangeResponse, NodeError> {
        let checked_at = self.read_gate(req.serializable, permitted).await?;
        self.metrics.mvcc_range.inc();
        let resp = self
            .read_in_place(|may_grow| apply::range_in_pieces(|| self.state.read(), req, may_grow))
            .await?;
        self.auth_unchanged(checked_at)?;
        Ok(resp)
    }

    /// Serve a read-only transaction ([`apply::is_read_only`]) as a read, without raft, as etcd
    /// does: behind the read barrier unless every range in it is serializable, then pinned at
    /// one revision and read in pieces (see [`apply::read_only_txn_in_pieces`]). Before, it went
    /// through the log and apply read it whole under the store's write lock, so a flood of
    /// large read-only transactions held up every write.
    pub async fn read_only_txn_checked(
        &self,
        req: &TxnRequest,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<TxnResponse, NodeError> {
        let checked_at = self
            .read_gate(apply::is_serializable(req), permitted)
            .await?;
        let resp = self
            .read_in_place(|may_grow| {
                apply::read_only_txn_in_pieces(|| self.state.read(), req, may_grow)
            })
            .await?;
        self.auth_unchanged(checked_at)?;
        // Counted as apply counts a transaction: once, and once more for its ranges.
        self.metrics.mvcc_txn.inc();
        if !resp.responses.is_empty() {
            self.metrics.mvcc_range.inc();
        }
        Ok(resp)
    }

    /// Run `read`, a read in pieces that stops past its first piece (returning `None`) when the
    /// `may_grow` it is given says no. A read larger than one piece goes on only in a place of
    /// `large_reads`; when none is free it stops there (keeping nothing), waits for one (at most
    /// `LARGE_READ_WAIT`, then "too many requests") and starts over in it. Writes go on between
    /// the pieces whatever the read's size.
    async fn read_in_place<T>(
        &self,
        read: impl Fn(&dyn Fn() -> bool) -> Result<Option<T>, ApplyError>,
    ) -> Result<T, NodeError> {
        let place = parking_lot::Mutex::new(None);
        let may_grow = || {
            let mut place = place.lock();
            if place.is_none() {
                *place = self.large_reads.clone().try_acquire_owned().ok();
            }
            place.is_some()
        };
        loop {
            if let Some(done) = read(&may_grow)? {
                return Ok(done);
            }
            let waited = wait_for_place(&self.large_reads, limits::LARGE_READ_WAIT).await?;
            *place.lock() = Some(waited);
        }
    }

    /// What every read passes before it reads: a linearizable one the read barrier, then
    /// `permitted` with the auth state it is served at. Returns the auth revision checked (`None`
    /// with auth off) for [`Node::auth_unchanged`].
    async fn read_gate(
        &self,
        serializable: bool,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<Option<u64>, NodeError> {
        if !serializable {
            match rt::timeout(self.config.request_timeout, self.read_barrier()).await {
                Err(rt::Elapsed) => return Err(NodeError::Timeout),
                Ok(result) => result?,
            }
        }
        let auth = self.auth();
        permitted(&auth).map_err(ApplyError::Auth)?;
        Ok(auth.enabled().then(|| auth.revision()))
    }

    /// Refuse a read whose permissions were checked at auth revision `checked_at` when auth has
    /// changed since: they may no longer hold (etcd's check after a serialized read).
    fn auth_unchanged(&self, checked_at: Option<u64>) -> Result<(), NodeError> {
        if checked_at.is_some_and(|rev| rev != self.auth().revision()) {
            return Err(ApplyError::Auth(AuthError::AuthOldRevision).into());
        }
        Ok(())
    }

    /// Wait (at most the request timeout) until this member has applied everything committed
    /// before the call, so what it reads next is linearizable (auth queries go through raft in
    /// etcd).
    pub async fn linearize(&self) -> Result<(), NodeError> {
        match rt::timeout(self.config.request_timeout, self.read_barrier()).await {
            Err(rt::Elapsed) => Err(NodeError::Timeout),
            Ok(result) => result,
        }
    }

    /// How this member issues and checks auth tokens (simple ones come through the log, so every
    /// member knows each).
    pub fn tokens(&self) -> &crate::auth::TokenProvider {
        self.state.tokens()
    }

    /// The keys attached to lease `id` (empty if it has none or does not exist).
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.state.read().leases().keys(id)
    }

    /// The auth state as of the last applied entry. Do not wait on anything while holding it.
    pub fn auth(&self) -> std::sync::RwLockReadGuard<'_, AuthStore> {
        self.state.auth()
    }

    /// This member's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The figures `/metrics` reads from the member when scraped.
    pub fn scrape(&self) -> Scrape {
        let (revision, compact_revision, keys, leases) = {
            let store = self.state.read();
            (
                store.current_revision(),
                store.compact_revision(),
                store.live_keys() as u64,
                store.leases().len() as u64,
            )
        };
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        Scrape {
            member_id: self.member_id,
            has_leader: m.current_leader.is_some(),
            is_leader: m.state == ServerState::Leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            db_size_bytes: self.db_size_bytes(),
            db_size_in_use_bytes: self.db_size_in_use_bytes(),
            quota_bytes: self.config.quota_bytes(),
            cluster_version: self.versions().cluster_version().short(),
            keys,
            watchers: self.watch.watcher_count() as u64,
            watch_buffered_bytes: self.watch.buffered_bytes() as u64,
            watch_streams_evicted: self.watch.evicted_streams(),
            send_held_bytes: self.send_budget.held() as u64,
            revision,
            compact_revision,
            leases,
            alive_tasks: rt::alive_tasks(),
            // The API layer knows the version it reports; it fills this in.
            version: "",
        }
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
            other => Err(NodeError::Raft(format!(
                "unexpected apply result {other:?}"
            ))),
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
            other => Err(NodeError::Raft(format!(
                "unexpected apply result {other:?}"
            ))),
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
    async fn leader_caught_up(&self) -> bool {
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
    async fn leads_caught_up(&self, term: u64) -> bool {
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
    fn leader_lease_valid(&self) -> bool {
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
    async fn checkpoint_leases(&self) {
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

    /// The member's watchers.
    pub fn watch_hub(&self) -> &Arc<WatchHub> {
        &self.watch
    }

    /// Register a watcher that starts at `start_revision` (0: the next revision). Returns whether it
    /// was added (or why not) and the revision for the `created` header, which `answered` also
    /// gets before any event can reach the watcher's stream (`WatchHub::admit`).
    /// The store lock is held across reading the head and registering, so no revision slips by.
    pub fn add_watcher(
        &self,
        key: WatcherKey,
        spec: WatchSpec,
        start_revision: i64,
        tx: crate::watch::StreamSender,
        admission: crate::watch::Admission,
        answered: impl FnOnce(&Result<(), crate::watch::AddError>, i64),
    ) -> (Result<(), crate::watch::AddError>, i64) {
        let store = self.state.read();
        let head = store.current_revision();
        // As etcd: 0 means "from the next revision"; a negative start below the compaction
        // revision (-1 before any compaction) is answered as compacted; the one negative start
        // that is not (-1 on a store never compacted) reads nothing of the past in etcd (its
        // catch-up scan starts past every revision) and so also starts at the next revision.
        let start = if start_revision == 0
            || (start_revision < 0 && start_revision >= store.compact_revision())
        {
            head + 1
        } else {
            start_revision
        };
        let watcher = (key, spec, start, head, tx);
        (
            self.watch
                .admit(watcher, admission, |added| answered(added, head)),
            head,
        )
    }

    /// The revision a progress notification for `stream` may carry: `None` while some watcher of the
    /// stream is still catching up (its events up to the head have not all been sent yet).
    pub fn watch_progress(&self, stream: u64) -> Option<i64> {
        let store = self.state.read();
        self.watch
            .stream_synced(stream)
            .then(|| store.current_revision())
    }

    /// The value `key` had at `revision` (for watch events' `prev_kv`); `None` if it did not exist
    /// or that revision is compacted.
    pub fn value_at(&self, key: &[u8], revision: i64) -> Option<crate::pb::mvccpb::KeyValue> {
        let store = self.state.read();
        let result = store
            .range(key, &crate::mvcc::RangeEnd::Single, revision, 1, false)
            .ok()?;
        result.kvs.into_iter().next()
    }

    /// Resolves when raft has stopped on its own with a fatal error (a storage write or fsync
    /// failed, say), with that error. A member must then stop serving rather than carry on with
    /// state it can no longer trust (no "fsyncgate"): the server exits on it.
    pub async fn stopped(&self) -> String {
        // Raft's core drops its metrics channels when it stops. The server metrics change only
        // with the vote, the role or the membership; the full metrics change several times per
        // write, and waking this waiter (the main thread) for each cost a put ~3 thread switches.
        let mut server = self.raft.server_metrics();
        let all = self.raft.metrics();
        let raft_fatal = async {
            loop {
                if let Err(fatal) = &all.borrow_watched().running_state {
                    return fatal.to_string();
                }
                if server.changed().await.is_err() {
                    return match &all.borrow_watched().running_state {
                        Err(fatal) => fatal.to_string(),
                        Ok(()) => "raft stopped".to_string(),
                    };
                }
            }
        };
        // `biased;`: a random branch order would draw from tokio's own RNG, outside the
        // simulator's seed.
        tokio::select! {
            biased;
            fatal = raft_fatal => fatal,
            _ = self.disk_failure.wait() => "an fsync failed".to_string(),
        }
    }

    /// Stop raft. Requests in flight fail with [`NodeError::Stopped`].
    pub async fn shutdown(&self) {
        self.catch_up.abort();
        self.progress.abort();
        self.compactor.abort();
        for task in self.background_lock().drain(..) {
            task.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// One of the bounded `places` for some kind of work, waited for up to `wait`; then the request
/// is refused with [`NodeError::TooManyRequests`]. The place is held until the permit is dropped:
/// move it into blocking work that a caller leaving cannot stop.
pub(crate) async fn wait_for_place(
    places: &Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, NodeError> {
    match rt::timeout(wait, places.clone().acquire_owned()).await {
        Ok(Ok(place)) => Ok(place),
        Ok(Err(_closed)) => Err(NodeError::Stopped),
        Err(rt::Elapsed) => Err(NodeError::TooManyRequests),
    }
}

/// Run blocking engine work off the async workers; its I/O error fails the request.
async fn blocking_io<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NodeError> {
    let failed = |e: std::io::Error| NodeError::Raft(e.to_string());
    rt::spawn_blocking(work)
        .await
        .map_err(failed)?
        .map_err(failed)
}

/// Feeds watchers that are behind from storage until they reach the head. Sleeps while none is.
async fn run_catch_up(watch: Arc<WatchHub>, state: Arc<Shared>) {
    loop {
        watch.wait_behind(limits::WATCH_CATCHUP_INTERVAL).await;
        loop {
            // Streams that hold the spent budget while their clients take nothing would keep the
            // watchers behind (and everyone's new events) waiting for as long as they stay.
            let evicted = watch.evict_stalled_streams();
            if evicted > 0 {
                tracing::info!("{evicted} watch streams evicted: their clients took no events");
            }
            // A round takes the store's read lock only briefly, before and after its storage
            // read; the read itself is blocking work, kept off the async workers that serve
            // requests and apply.
            let (hub, shared) = (watch.clone(), state.clone());
            let started = rt::now();
            let again = rt::spawn_blocking(move || hub.catch_up(|| shared.read()))
                .await
                .unwrap_or(false);
            if !again {
                break;
            }
            // Be fair to apply and requests, as etcd's sync loop is: before the next round, wait
            // as long as this one took, so catch-up takes at most about half of a core however
            // many watchers are behind.
            rt::sleep(started.elapsed()).await;
        }
    }
}

/// On the leader: revokes expired leases through raft and checkpoints remaining TTLs. A member
/// that leads takes up every lease once it has applied its own term's first entry (see
/// [`Node::take_up_leases`]); one that stops leading forgets its clock. Holds the node weakly so
/// it never keeps it alive.
async fn run_lease_expiry(node: std::sync::Weak<Node>, checkpoint_every: std::time::Duration) {
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

/// Counts leader changes as etcd does: each time raft reports a leader different from the last
/// one seen (the first election included). Ends when raft stops.
async fn count_leader_changes(raft: Raft, metrics: Arc<Metrics>) {
    // The server metrics: they change with the leader, not with every write.
    let mut watched = raft.server_metrics();
    let mut last = None;
    loop {
        let leader = watched.borrow_watched().current_leader;
        if leader.is_some() && leader != last {
            metrics.leader_changes.inc();
            last = leader;
        }
        if watched.changed().await.is_err() {
            return;
        }
    }
}

/// Sends periodic progress notifications to idle watchers that asked for them.
async fn run_progress_ticks(watch: Arc<WatchHub>, state: Arc<Shared>, every: std::time::Duration) {
    loop {
        rt::sleep(every).await;
        let store = state.read();
        watch.progress_tick(store.current_revision());
    }
}

/// Whether `membership` (either half of a joint one included) has `id` as its one voter.
fn only_voter(membership: &crate::raft::StoredMembership, id: u64) -> bool {
    let mut voters = membership.membership().voter_ids();
    voters.next() == Some(id) && voters.next().is_none()
}

impl Drop for Node {
    fn drop(&mut self) {
        self.catch_up.abort();
        self.progress.abort();
        self.compactor.abort();
        for task in self.background_lock().drain(..) {
            task.abort();
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod group_commit_tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::pb::etcdserverpb::PutRequest;
    use crate::storage::{Durability, Engine, Keyspace, MemoryEngine, Visitor, WriteBatch};

    /// Counts synced writes on the way to a memory engine; can make them stall like a dying disk.
    struct CountingEngine {
        inner: MemoryEngine,
        synced_writes: AtomicU64,
        stall: std::sync::atomic::AtomicBool,
    }

    impl CountingEngine {
        fn new() -> Self {
            Self {
                inner: MemoryEngine::new(),
                synced_writes: AtomicU64::new(0),
                stall: std::sync::atomic::AtomicBool::new(false),
            }
        }
    }

    impl Engine for CountingEngine {
        fn get(&self, ks: Keyspace, key: &[u8]) -> crate::storage::Result<Option<Vec<u8>>> {
            self.inner.get(ks, key)
        }
        fn scan_ordered(
            &self,
            ks: Keyspace,
            s: &[u8],
            e: Option<&[u8]>,
            o: crate::storage::Order,
            v: &mut Visitor<'_>,
        ) -> crate::storage::Result<()> {
            self.inner.scan_ordered(ks, s, e, o, v)
        }
        fn view(&self) -> crate::storage::Result<Arc<dyn crate::storage::EngineView>> {
            self.inner.view()
        }
        fn write(&self, batch: WriteBatch, durability: Durability) -> crate::storage::Result<()> {
            if durability == Durability::Sync {
                if self.stall.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(1500));
                }
                self.synced_writes.fetch_add(1, Ordering::SeqCst);
                // Make an fsync cost something, as on a disk, so that proposals pile up behind it.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            self.inner.write(batch, durability)
        }
        fn sync(&self) -> crate::storage::Result<()> {
            self.inner.sync()
        }
        fn keyspace_bytes(&self, ks: Keyspace) -> u64 {
            self.inner.keyspace_bytes(ks)
        }
        fn defragment(&self) -> crate::storage::Result<()> {
            self.inner.defragment()
        }
        fn kind(&self) -> &'static str {
            "counting"
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_fsyncs() {
        let engine = Arc::new(CountingEngine::new());
        let config = ServerConfig {
            engine: crate::config::EngineKind::Memory,
            ..ServerConfig::default()
        };
        let node = Node::start(config, engine.clone()).await.expect("start");
        let before = engine.synced_writes.load(Ordering::SeqCst);
        const WRITES: u64 = 400;
        let mut tasks = Vec::new();
        for i in 0..WRITES {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let put = PutRequest {
                    key: format!("k{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                };
                node.propose(command::Op::Put(put)).await.is_ok()
            }));
        }
        for t in tasks {
            assert!(t.await.expect("join"), "every write is acknowledged");
        }
        let fsyncs = engine.synced_writes.load(Ordering::SeqCst) - before;
        assert!(
            fsyncs * 4 <= WRITES,
            "{WRITES} concurrent writes took {fsyncs} fsyncs: no group commit"
        );
        assert_eq!(node.current_revision(), 1 + WRITES as i64);
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_cannot_commit_times_out() {
        let engine = Arc::new(CountingEngine::new());
        let config = ServerConfig {
            engine: crate::config::EngineKind::Memory,
            request_timeout: std::time::Duration::from_millis(300),
            ..ServerConfig::default()
        };
        let node = Node::start(config, engine.clone()).await.expect("start");
        engine.stall.store(true, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let result = node.propose(command::Op::Put(put)).await;
        assert!(matches!(result, Err(NodeError::Timeout)), "got {result:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1200),
            "the deadline, not the disk, ended the wait"
        );
        engine.stall.store(false, Ordering::SeqCst);
        node.shutdown().await;
    }
}
