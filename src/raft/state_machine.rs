//! The raft state machine: applies committed commands to the MVCC store.
//!
//! Each applied entry's MVCC change and the applied log id go into one engine batch, so after a crash
//! the store is exactly at the last applied entry and openraft replays the rest of the (fsynced) log.
//! Those batches are buffered, not fsynced: the log already made the entries durable.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::{decode, encode, CommandResponse, LogId, StoredMembership, TypeConfig};
use crate::apply::{self, ApplyError};
use crate::mvcc::MvccStore;
use crate::pb::metastore::Command;
use crate::storage::{Durability, Keyspace, SharedEngine, WriteBatch};
use crate::watch::WatchHub;

const APPLIED_KEY: &[u8] = b"sm/applied";
const MEMBERSHIP_KEY: &[u8] = b"sm/membership";

/// Snapshot payload: every record of the `Meta` and `Kv` keyspaces.
pub type SnapshotData = io::Cursor<Vec<u8>>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
}

/// State shared between the state machine (owned by openraft) and the read path.
pub struct Shared {
    engine: SharedEngine,
    mvcc: RwLock<MvccStore>,
    watch: Arc<WatchHub>,
}

impl Shared {
    /// Read access to the MVCC store. Apply holds the write side only while it changes the index
    /// and writes the matching engine batch, so a reader never sees one without the other.
    pub fn read(&self) -> RwLockReadGuard<'_, MvccStore> {
        self.mvcc.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine under the store.
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    shared: Arc<Shared>,
    current_snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

impl StateMachine {
    /// Open the state machine on `engine` (rebuilding the MVCC index); applied changes go to `watch`.
    pub fn open(engine: SharedEngine, watch: Arc<WatchHub>) -> io::Result<Self> {
        let mvcc = MvccStore::open(engine.clone()).map_err(io::Error::other)?;
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                mvcc: RwLock::new(mvcc),
                watch,
            }),
            current_snapshot: None,
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

    fn image(&self) -> io::Result<(Option<LogId>, StoredMembership, Vec<u8>)> {
        // Hold the read lock so the image is one consistent point of the state machine.
        let _guard = self.shared.read();
        let mut image = SnapshotImage {
            meta: Vec::new(),
            kv: Vec::new(),
        };
        self.shared
            .engine
            .scan(Keyspace::Meta, &[], None, &mut |k, v| {
                image.meta.push((k.to_vec(), v.to_vec()));
                true
            })?;
        self.shared
            .engine
            .scan(Keyspace::Kv, &[], None, &mut |k, v| {
                image.kv.push((k.to_vec(), v.to_vec()));
                true
            })?;
        let applied = self.read_meta::<Option<LogId>>(APPLIED_KEY)?.flatten();
        let membership = self.read_meta(MEMBERSHIP_KEY)?.unwrap_or_default();
        Ok((applied, membership, encode(&image)?))
    }
}

fn apply_one(
    mvcc: &mut MvccStore,
    payload: EntryPayload<super::RaftCommand, u64, openraft::impls::BasicNode>,
    log_id: &LogId,
    batch: &mut WriteBatch,
) -> io::Result<CommandResponse> {
    let outcome = match payload {
        EntryPayload::Normal(cmd) => {
            let outcome = match Command::decode(cmd.bytes.as_slice()) {
                Ok(cmd) => apply::apply(mvcc, cmd),
                Err(_) => Err(ApplyError::EmptyCommand),
            };
            match outcome {
                Ok((applied, changes)) => {
                    batch.append(changes);
                    Some(Ok(applied))
                }
                Err(ApplyError::Storage(e)) => return Err(io::Error::other(e)),
                Err(e) => Some(Err(e)),
            }
        }
        EntryPayload::Membership(m) => {
            let stored = StoredMembership::new(Some(*log_id), m);
            batch.put(Keyspace::Meta, MEMBERSHIP_KEY, encode(&stored)?);
            None
        }
        EntryPayload::Blank => None,
    };
    Ok(CommandResponse { outcome })
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
        let mut responses = Vec::with_capacity(entries.len());
        {
            let mut mvcc = self.shared.mvcc.write().unwrap_or_else(|e| e.into_inner());
            // One engine batch for all entries; later entries read earlier ones through the
            // store's unflushed overlay until it is written.
            let mut batch = WriteBatch::new();
            let mut last = None;
            for (entry, responder) in entries {
                let response = apply_one(&mut mvcc, entry.payload, &entry.log_id, &mut batch)?;
                last = Some(entry.log_id);
                responses.push((responder, response));
            }
            if let Some(last) = last {
                batch.put(Keyspace::Meta, APPLIED_KEY, encode(&Some(last))?);
                self.shared.engine.write(batch, Durability::Buffered)?;
            }
            mvcc.mark_flushed();
            // Still under the write lock: watchers see each revision right as it becomes readable,
            // and the catch-up task (which reads under the read lock) cannot interleave.
            self.shared.watch.notify(&mvcc.take_events());
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
        let bytes = snapshot.into_inner();
        let image: SnapshotImage = decode(&bytes)?;
        let mut mvcc = self.shared.mvcc.write().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::new();
        for ks in [Keyspace::Meta, Keyspace::Kv] {
            self.shared.engine.scan(ks, &[], None, &mut |k, _| {
                batch.delete(ks, k.to_vec());
                true
            })?;
        }
        for (k, v) in image.meta {
            batch.put(Keyspace::Meta, k, v);
        }
        for (k, v) in image.kv {
            batch.put(Keyspace::Kv, k, v);
        }
        batch.put(Keyspace::Meta, APPLIED_KEY, encode(&meta.last_log_id)?);
        batch.put(
            Keyspace::Meta,
            MEMBERSHIP_KEY,
            encode(&meta.last_membership)?,
        );
        self.shared.engine.write(batch, Durability::Sync)?;
        *mvcc = MvccStore::open(self.shared.engine.clone()).map_err(io::Error::other)?;
        self.current_snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .current_snapshot
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: io::Cursor::new(bytes.clone()),
            }))
    }
}

/// Builds a snapshot image of the state machine.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let sm = StateMachine {
            shared: self.shared.clone(),
            current_snapshot: None,
        };
        let (applied, membership, bytes) = sm.image()?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
        };
        Ok(Snapshot {
            meta,
            snapshot: io::Cursor::new(bytes),
        })
    }
}
