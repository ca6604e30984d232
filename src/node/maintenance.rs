//! The member's side of `Maintenance` and `Status`: hashes of the store (off the async workers, in
//! bounded places), backups as etcd snapshot files, defragmentation, the cluster's version state,
//! raft's figures and the ones `/metrics` scrapes.

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use super::{backup_stream, blocking_io, wait_for_place, Node, NodeError, RaftStatus};
use crate::apply::Applied;
use crate::limits;
use crate::metrics::Scrape;
use crate::pb::metastore::command;
use crate::rt;
use crate::storage::Keyspace;

impl Node {
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
            let mut fed = 0;
            for ks in [Keyspace::Meta, Keyspace::Kv] {
                view.scan_uncached(ks, &[], None, &mut |k, v| {
                    hasher.feed(k);
                    hasher.feed(v);
                    // The view holds no lock: the core is offered to others now and then.
                    fed += k.len() + v.len();
                    if fed >= limits::HASH_PIECE_BYTES {
                        fed = 0;
                        rt::yield_thread();
                    }
                    true
                })?;
            }
            drop(place);
            Ok(hasher.finish())
        })
        .await
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
            _ => Err(NodeError::UnexpectedOutcome("downgrade")),
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
        let failed = NodeError::Work;
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

    /// Give the engine's free space back (etcd's defragment) on this member: by a
    /// defragmentation that starts after this call, shared with the calls that wait for it (see
    /// `defrag`).
    pub async fn defragment(&self) -> Result<(), NodeError> {
        let engine = self.state.engine().clone();
        self.defrags
            .defragment(engine, self.metrics.clone())
            .await
            .map_err(NodeError::Defrag)?;
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
        .map_err(NodeError::Work)?;
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
            range_stream_held_bytes: self.range_stream_bytes.held() as u64,
            revision,
            compact_revision,
            leases,
            alive_tasks: rt::alive_tasks(),
            // The API layer knows the version it reports; it fills this in.
            version: "",
        }
    }
}
