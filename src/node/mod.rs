//! One member: works out its identity (`bootstrap`), wires raft, the state machine, the engine and
//! the background tasks together, builds response headers, shuts down. Each job has its own file:
//! - `proposals`: proposing a command under the request timeout, after `quota`'s check of the
//!   alarms and the storage quota; `routing`: getting proposals, read indexes and lease requests to
//!   the leader; `read_index`: linearizable reads sharing leadership confirmations;
//! - `reads`: ranges and read-only txns served in place, in bounded pieces;
//! - `leases`: everything about leases beyond the replicated table (requests, the leader's clock,
//!   expiry, checkpoints);
//! - `watching`: registering watchers, progress, the catch-up and progress loops;
//! - `maintenance`: hashes, backups (`backup_stream`), defragmentation (`defrag`), status and
//!   scrape figures; `compaction`: the background half of compactions; `snapshot_receive`:
//!   snapshots from the leader;
//! - `members`: membership changes and published attributes; `failover`: replacing a dead leader
//!   at once; `send_budget`: large answers on their way to clients; `range_stream`: `RangeStream`.

mod auto_compaction;
mod backup_stream;
mod bootstrap;
mod compaction;
mod corruption;
mod defrag;
mod failover;
mod forward_batch;
mod gather;
pub mod leases;
mod maintenance;
mod members;
mod proposals;
mod propose_batch;
mod quota;
mod range_stream;
mod read_index;
mod reads;
mod routing;
pub mod send_budget;
mod snapshot_receive;
mod watching;

pub use range_stream::RangeStreamRead;

pub(crate) use members::membership_reply;
pub(crate) use routing::LeaderWriteError;

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::apply::ApplyError;
use crate::auth::AuthStore;
use crate::config::ServerConfig;
use crate::limits;
use crate::metrics::Metrics;
use crate::net::peer_channels::PeerChannels;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::{Shared, StateMachine};
use crate::raft::Raft;
use crate::rt;
use crate::storage::{SharedEngine, StorageError};
use crate::watch::WatchHub;

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
    /// Raft failed the request, in openraft's words (here, or on the leader it was forwarded to,
    /// whose reply carries them).
    #[error("raft: {0}")]
    Raft(String),
    /// No channel to the leader could be made (its URL or this member's peer TLS settings).
    #[error(transparent)]
    PeerDial(#[from] crate::net::peer_dial::PeerDialError),
    /// A message to or from a peer could not be encoded or decoded.
    #[error("peer message: {0}")]
    PeerMessage(#[source] std::io::Error),
    /// Work run off the async workers failed: the engine's I/O, or the work's thread ended
    /// before it answered.
    #[error("{0}")]
    Work(#[source] std::io::Error),
    /// The engine could not be defragmented (the same words for every caller that waited for
    /// that defragmentation).
    #[error("defragment: {0}")]
    Defrag(String),
    /// A command was applied but its outcome is of another kind than the command's (a bug).
    #[error("unexpected apply result for {0}")]
    UnexpectedOutcome(&'static str),
}

/// Why a member could not start: fatal, the server exits with it (request errors are
/// [`NodeError`]s).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value the member cannot start with.
    #[error("{0}")]
    Config(String),
    #[error("peer TLS: {0}")]
    PeerTls(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A member started with `--initial-cluster-state existing` could not learn its identity
    /// from the cluster.
    #[error("joining the cluster: {0}")]
    Join(String),
    /// Raft could not be configured, opened or initialized.
    #[error("raft: {0}")]
    Raft(String),
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
    backend_size: quota::SizeCache,
    channels: PeerChannels,
    /// Sequence numbers of proposals this member forwards to the leader (random start per boot).
    next_seq: std::sync::atomic::AtomicU64,
    forwarding: forward_batch::ForwardQueue,
    proposing: propose_batch::ProposeQueue,
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
    /// Bytes of `KV.RangeStream` chunks read and not yet sent (`api::kv` counts a chunk until its
    /// stream asks for the next): chunks shrink as this nears the limit (it never refuses).
    range_stream_bytes: Arc<send_budget::SendBudget>,
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
    pub async fn start(
        config: ServerConfig,
        engine: SharedEngine,
    ) -> Result<Arc<Node>, StartError> {
        let channels = PeerChannels::new(&config.peer_tls).map_err(StartError::PeerTls)?;
        Self::start_with_peers(config, engine, channels).await
    }

    /// [`Node::start`] with the peer channels made already (from `config.peer_tls`: the server
    /// builds them before it opens anything, so a bad certificate file stops it first).
    pub async fn start_with_peers(
        config: ServerConfig,
        engine: SharedEngine,
        channels: PeerChannels,
    ) -> Result<Arc<Node>, StartError> {
        // Unusable JWT keys stop the start before the member touches its storage or its peers.
        let tokens = crate::auth::TokenProvider::open(&config.auth_token, config.auth_token_ttl)
            .map_err(|e| StartError::Config(format!("--auth-token: {e}")))?;
        // Everything below writes through the fail-stop wrapper: one failed fsync stops the member.
        let (engine, disk_failure) = crate::storage::FailStop::wrap(engine);
        let identity = bootstrap::identify(&config, &engine, &channels).await?;
        let member_id = identity.member_id;
        channels.set_identity(member_id, identity.cluster_id);

        let raft_config = bootstrap::raft_config(config.snapshot_count)?;

        let metrics = Metrics::new();
        let watch = WatchHub::with_limits(limits::WATCH_BUFFERED_BYTES_TOTAL, config.max_watchers);
        let state_machine = StateMachine::open(
            engine.clone(),
            watch.clone(),
            member_id,
            tokens,
            metrics.clone(),
        )
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let state = state_machine.shared();
        let alone = identity
            .founding
            .as_ref()
            .is_some_and(|f| f.len() == 1 && f.contains_key(&member_id));
        let log_store = LogStore::new(engine, metrics.clone(), &config.name)
            .map_err(|e| StartError::Raft(format!("cannot start the log syncer: {e}")))?;
        let raft = Raft::new(
            member_id,
            Arc::new(raft_config),
            Network::new(channels.clone(), metrics.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        // A member of a larger founding set initializes in the background, in its turn (see
        // `bootstrap::initialize_in_turn`): its peers must be able to reach it meanwhile, and the
        // peer service starts only once this returns.
        let mut founding_turn = None;
        if let Some(founding) = identity.founding {
            if !raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?
            {
                if alone {
                    raft.initialize(founding)
                        .await
                        .map_err(|e| StartError::Raft(e.to_string()))?;
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
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }

        let catch_up = rt::spawn(watching::run_catch_up(watch.clone(), state.clone()));
        let progress = rt::spawn(watching::run_progress_ticks(
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
                range_stream_bytes: send_budget::SendBudget::new(
                    limits::RANGE_STREAM_BUFFERED_BYTES_TOTAL,
                ),
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
                backend_size: quota::SizeCache::new(),
                channels,
                // A random start, not 1: entries this member proposed before a restart can still be
                // applied after it (re-applied from the log, or committed late), and their outcome
                // goes to whoever waits on (this member, seq); a counter restarting at 1 handed a new
                // request the outcome (and revision) of an old one. The simulator found this: an
                // acknowledged put that was never written. Half the range: no wrap to 0 ("no waiter").
                next_seq: std::sync::atomic::AtomicU64::new((rt::random_u64() >> 1) | 1),
                forwarding: Default::default(),
                proposing: Default::default(),
                metrics: metrics.clone(),
            }
        });
        // The expiry task takes up the leases itself once this member leads and has applied its
        // term's first entry (see `leases::run_lease_expiry`).
        let expiry = rt::spawn(leases::run_lease_expiry(
            Arc::downgrade(&node),
            node.config.lease_checkpoint_interval,
        ));
        let publish = rt::spawn(members::run_publish(Arc::downgrade(&node)));
        let failover = rt::spawn(failover::run_failover_watch(Arc::downgrade(&node)));
        let auto = node.config.auto_compaction.map(|setting| {
            rt::spawn(auto_compaction::run_auto_compaction(
                Arc::downgrade(&node),
                setting,
            ))
        });
        let leaders = rt::spawn(count_leader_changes(node.raft.clone(), metrics));
        node.background_lock()
            .extend([expiry, publish, leaders, failover, leader_rounds_task]);
        node.background_lock().extend(follower_rounds_task);
        node.background_lock().extend(founding_turn);
        node.background_lock().extend(auto);
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

    /// The newest applied store revision.
    pub fn current_revision(&self) -> i64 {
        self.state.read().current_revision()
    }

    /// How this member issues and checks auth tokens (simple ones come through the log, so every
    /// member knows each).
    pub fn tokens(&self) -> &crate::auth::TokenProvider {
        self.state.tokens()
    }

    /// The auth state as of the last applied entry. Do not wait on anything while holding it.
    pub fn auth(&self) -> std::sync::RwLockReadGuard<'_, AuthStore> {
        self.state.auth()
    }

    /// This member's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
    rt::spawn_blocking(work)
        .await
        .map_err(NodeError::Work)?
        .map_err(NodeError::Work)
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
mod group_commit_tests;
