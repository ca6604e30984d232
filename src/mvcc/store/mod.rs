//! [`MvccStore`]: the key index plus the revision-keyed records in the engine.
//!
//! Layout in the engine:
//! * `Kv` keyspace: `revision(16 bytes)[+'t']` → protobuf `mvccpb.KeyValue` (a tombstone stores only
//!   the key).
//! * `Meta` keyspace: [`META_CURRENT_REV`], [`META_SCHEDULED_COMPACT_REV`] and [`META_COMPACT_REV`]
//!   as big-endian `i64`, written in the same batch as the change they describe.
//!
//! Compaction comes in two halves, as in etcd. Applying a compaction only moves the compaction
//! point (reads below it are refused from then on) and records it as scheduled, in the apply's own
//! batch. The physical half, dropping the superseded history from the key index and the engine,
//! runs later in bounded steps ([`MvccStore::compact_step`]) that a background task calls with
//! pauses in between; the last step records the compaction as finished. A restart (or a snapshot
//! installed) with a scheduled compaction not yet finished starts it again from the beginning.
//! Nothing a client can read depends on how far the physical half got: reads at or above the
//! compaction point never need a superseded record, and `HashKV` and the watch catch-up skip the
//! superseded records a step has not reached yet.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use prost::Message;

use super::key_index::{KeyAt, KeyIndexTree, RangeEnd};
use super::revision::Revision;
use super::{MvccError, Result};
use crate::lease::{self, LeaseTable};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::{Durability, EngineView, Keyspace, SharedEngine, StorageError, WriteBatch};

mod events;
mod read;
#[cfg(test)]
mod tests;
mod write_txn;

pub use events::{drop_compacted_tombstones, read_events, EventBatch, EventBudget};
pub use read::{kvs_encoded_len, RangeChunk, RangeRead, RangeResult};
pub use write_txn::WriteTxn;

/// A range's records are read by one scan over the revisions they span, rather than one lookup
/// each, when they are at least one in this many of those revisions.
const RANGE_SCAN_DENSITY: u64 = 4;

/// A fresh store is at revision 1, so its first write makes revision 2 (as in etcd).
pub const FIRST_REVISION: i64 = 1;

/// Meta key of the current store revision.
pub const META_CURRENT_REV: &[u8] = b"mvcc/current_rev";
/// Meta key of the last finished compaction revision.
pub const META_COMPACT_REV: &[u8] = b"mvcc/compact_rev";
/// Meta key of the last applied compaction revision, whose physical half may still be running
/// (etcd's `scheduledCompactRev`).
pub const META_SCHEDULED_COMPACT_REV: &[u8] = b"mvcc/scheduled_compact_rev";

/// Only the key of a stored `mvccpb.KeyValue`: lets a compaction step or a hash tell which key a
/// record belongs to without copying its value (prost skips the other fields).
#[derive(Clone, PartialEq, prost::Message)]
struct RecordKey {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
}

/// What rebuilding the key index needs of a stored `mvccpb.KeyValue`: its key, creation revision
/// and version, decoded without copying the value (prost skips the fields it does not name).
#[derive(Clone, PartialEq, prost::Message)]
struct RecordHead {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// What one [`MvccStore::compact_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactStep {
    /// No compaction is waiting for its physical half.
    Idle,
    /// A batch of keys of the key index was compacted (memory only, cheap); more steps follow.
    IndexBatch,
    /// A batch of records was looked at and the superseded ones (how many) deleted from the
    /// engine; more steps follow. etcd pauses after each such batch.
    RecordBatch(usize),
    /// The compaction at `revision` is physically done (and recorded so); the last batch deleted
    /// `deleted` records.
    Finished { revision: i64, deleted: usize },
}

/// The physical half of a compaction in progress: which revision, and where the next step starts.
#[derive(Debug, Clone, PartialEq)]
struct CompactJob {
    target: i64,
    phase: CompactPhase,
}

#[derive(Debug, Clone, PartialEq)]
enum CompactPhase {
    /// Dropping old generations from the key index, from this key on.
    Index(Vec<u8>),
    /// Deleting superseded records from the engine, from this record key on.
    Records(Vec<u8>),
}

/// A copy of every piece of [`MvccStore`]'s in-memory state, to compare two moments (a refused
/// command must leave it equal). Costs a clone of the whole index: for tests and fuzzing.
#[derive(Debug, Clone, PartialEq)]
pub struct MvccFingerprint {
    index: KeyIndexTree,
    current_rev: i64,
    compact_rev: i64,
    finished_compact_rev: i64,
    compaction: Option<CompactJob>,
    unflushed: BTreeMap<Revision, KeyValue>,
    events: Vec<Event>,
    leases: LeaseTable,
}

/// The MVCC store.
pub struct MvccStore {
    engine: SharedEngine,
    index: KeyIndexTree,
    current_rev: i64,
    /// The compaction point: reads below it are refused. Moves when a compaction is applied.
    compact_rev: i64,
    /// The last compaction whose physical half is done (-1: none).
    finished_compact_rev: i64,
    /// The physical half of the compaction in progress, if a step started it.
    compaction: Option<CompactJob>,
    /// Records written by transactions whose batches the caller has not yet written to the engine.
    /// Lets the state machine apply many entries and write them in one engine batch.
    unflushed: BTreeMap<Revision, KeyValue>,
    /// Changes made by write transactions since the last [`MvccStore::take_events`], in revision
    /// order: what the watch hub fans out.
    events: Vec<Event>,
    /// Leases and their keys: a put attaches, a delete detaches (as etcd's store calls its lessor).
    leases: LeaseTable,
    /// Some live record names a lease the table does not hold (a store restored from an etcd
    /// snapshot can have them): then a key's attachment does not tell its record's lease, and a
    /// keys-only read must read the records.
    unattached_leases: bool,
}

fn corrupt(reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        ks: Keyspace::Kv,
        reason: reason.into(),
    }
}

fn read_i64(engine: &SharedEngine, key: &[u8]) -> Result<Option<i64>> {
    match engine.get(Keyspace::Meta, key)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("bad meta integer"))?;
            Ok(Some(i64::from_be_bytes(bytes)))
        }
    }
}

impl MvccStore {
    /// Open the store on `engine`, rebuilding the key index from the stored records.
    pub fn open(engine: SharedEngine) -> Result<Self> {
        let current_rev = read_i64(&engine, META_CURRENT_REV)?.unwrap_or(FIRST_REVISION);
        // As in etcd, "no compaction yet" is -1, so compacting at revision 0 is allowed (a no-op).
        let finished_compact_rev = read_i64(&engine, META_COMPACT_REV)?.unwrap_or(-1);
        // A compaction applied before the restart whose physical half did not finish: refused
        // below it at once, and carried out again by the steps.
        let compact_rev = read_i64(&engine, META_SCHEDULED_COMPACT_REV)?
            .unwrap_or(-1)
            .max(finished_compact_rev);
        let mut index = KeyIndexTree::default();
        // The lease each key's newest record names (records come in revision order, so the last
        // one seen for a key wins): attachments are rebuilt from this one pass.
        let mut attached: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let mut failure = None;
        // Every record, read once: around the block cache, which would otherwise start out full
        // of the oldest ones.
        engine.scan_uncached(Keyspace::Kv, &[], None, &mut |k, v| {
            let decoded = Revision::from_record_key(k).zip(RecordHead::decode(v).ok());
            let Some(((rev, tombstone), head)) = decoded else {
                failure = Some(corrupt(format!("undecodable record {k:?}")));
                return false;
            };
            if tombstone || head.lease == 0 {
                if !attached.is_empty() {
                    attached.remove(&head.key);
                }
            } else {
                attached.insert(head.key.clone(), head.lease);
            }
            if tombstone {
                index.tombstone(&head.key, rev);
            } else {
                index.restore(head.key, rev, head.create_revision, head.version);
            }
            true
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let mut store = Self {
            engine,
            index,
            current_rev,
            compact_rev,
            finished_compact_rev,
            compaction: None,
            unflushed: BTreeMap::new(),
            events: Vec::new(),
            leases: LeaseTable::default(),
            unattached_leases: false,
        };
        store.restore_leases(attached)?;
        Ok(store)
    }

    /// Rebuild the lease table from its records, and attach each key in `attached` (key → the
    /// lease its newest record names) to its lease.
    fn restore_leases(&mut self, attached: BTreeMap<Vec<u8>, i64>) -> Result<()> {
        let mut granted = Vec::new();
        let mut failure = None;
        self.engine.scan(
            Keyspace::Meta,
            lease::LEASE_RECORD_PREFIX,
            None,
            &mut |k, v| {
                let Some(id) = lease::id_of_record(k) else {
                    return false;
                };
                match lease::decode_record(v) {
                    Some((ttl, remaining)) => granted.push((id, ttl, remaining)),
                    None => failure = Some(corrupt(format!("undecodable lease record {k:?}"))),
                }
                true
            },
        )?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        for (id, ttl, remaining) in granted {
            self.leases.grant(id, ttl);
            if let Some(r) = remaining {
                self.leases.checkpoint(id, r);
            }
        }
        for (key, lease) in attached {
            // A record naming a lease the table lacks (an etcd snapshot restored with it): the
            // key index cannot stand in for such records in keys-only reads.
            if !self.leases.contains(lease) {
                self.unattached_leases = true;
            }
            self.leases.attach(lease, &key);
        }
        Ok(())
    }

    /// A copy of the whole in-memory state (see [`MvccFingerprint`]).
    pub fn fingerprint(&self) -> MvccFingerprint {
        MvccFingerprint {
            index: self.index.clone(),
            current_rev: self.current_rev,
            compact_rev: self.compact_rev,
            finished_compact_rev: self.finished_compact_rev,
            compaction: self.compaction.clone(),
            unflushed: self.unflushed.clone(),
            events: self.events.clone(),
            leases: self.leases.clone(),
        }
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Grant lease `id` into `batch`; false if it exists.
    pub fn lease_grant(&mut self, id: i64, ttl_secs: i64, batch: &mut WriteBatch) -> bool {
        if !self.leases.grant(id, ttl_secs) {
            return false;
        }
        batch.put(
            Keyspace::Meta,
            lease::record_key(id),
            lease::encode_record(ttl_secs, None),
        );
        true
    }

    /// Checkpoint lease `id`'s remaining TTL into `batch`; false if the lease does not exist.
    pub fn lease_checkpoint(
        &mut self,
        id: i64,
        remaining_secs: i64,
        batch: &mut WriteBatch,
    ) -> bool {
        let Some(ttl) = self.leases.ttl_secs(id) else {
            return false;
        };
        self.leases.checkpoint(id, remaining_secs);
        batch.put(
            Keyspace::Meta,
            lease::record_key(id),
            lease::encode_record(ttl, Some(remaining_secs)),
        );
        true
    }

    /// The newest revision.
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The revision of the last compaction (-1 if none): reads below it are refused, though its
    /// physical half may still be running.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// The revision of the last compaction whose physical half is done (-1 if none).
    pub fn finished_compact_revision(&self) -> i64 {
        self.finished_compact_rev
    }

    /// Whether a compaction still waits for (the rest of) its physical half.
    pub fn compaction_pending(&self) -> bool {
        self.compact_rev > self.finished_compact_rev
    }

    /// Whether the record `rev` (a tombstone or not; `value` is its stored bytes) is the one that
    /// holds its key's value as of revision `at`. A record at or below the compaction point that
    /// is not is superseded: a compaction step deletes it, and until then nothing reads it.
    pub(super) fn holds_value_at(
        &self,
        rev: Revision,
        tombstone: bool,
        value: &[u8],
        at: i64,
    ) -> Result<bool> {
        if tombstone {
            return Ok(false);
        }
        let key = RecordKey::decode(value)
            .map_err(|e| corrupt(format!("record {rev:?}: {e}")))?
            .key;
        Ok(self.index.get(&key, at).is_some_and(|k| k.modified == rev))
    }

    /// The engine under the store.
    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// Number of keys with history (live or awaiting compaction).
    pub fn indexed_keys(&self) -> usize {
        self.index.len()
    }

    /// Number of keys that exist at the current revision (kept up to date; no walk).
    pub fn live_keys(&self) -> usize {
        self.index.live()
    }

    fn check_read_revision(&self, rev: i64) -> Result<i64> {
        let at = if rev <= 0 { self.current_rev } else { rev };
        if at > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        if at < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        Ok(at)
    }

    /// The caller has written every batch returned so far: forget the records kept for reading them
    /// back before they reached the engine.
    pub fn mark_flushed(&mut self) {
        self.unflushed.clear();
    }

    /// Start a write transaction. Its changes share one new main revision; nothing reaches the
    /// engine until the caller writes the batch from [`WriteTxn::finish`].
    pub fn write_txn(&mut self) -> WriteTxn<'_> {
        WriteTxn::new(self)
    }

    /// Compact history at or below `rev`: from now on reads below `rev` fail with
    /// [`MvccError::Compacted`]. Only the compaction point goes into `batch` (as scheduled); the
    /// superseded records stay until [`MvccStore::compact_step`] deletes them.
    pub fn compact(&mut self, rev: i64, batch: &mut WriteBatch) -> Result<()> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        self.compact_rev = rev;
        batch.put(
            Keyspace::Meta,
            META_SCHEDULED_COMPACT_REV,
            rev.to_be_bytes().to_vec(),
        );
        Ok(())
    }

    /// One bounded step of the physical half of the pending compaction, written to the engine
    /// before it returns: at most `limit` keys of the key index compacted, or `limit` records
    /// below the compaction point looked at (those superseded deleted), as etcd's
    /// `--experimental-compaction-batch-limit`. The step that finds nothing left records the
    /// compaction as finished. A compaction applied while another is in progress starts when that
    /// one finishes. Must not run while batches of applied transactions are unwritten.
    pub fn compact_step(&mut self, limit: usize) -> Result<CompactStep> {
        if !self.unflushed.is_empty() {
            return Err(MvccError::Invariant(
                "a compaction step while applied records are not yet written".into(),
            ));
        }
        let limit = limit.max(1);
        let job = match self.compaction.take() {
            Some(job) => job,
            None if self.compaction_pending() => CompactJob {
                target: self.compact_rev,
                phase: CompactPhase::Index(Vec::new()),
            },
            None => return Ok(CompactStep::Idle),
        };
        let target = job.target;
        match job.phase {
            CompactPhase::Index(from) => {
                let phase = match self.index.compact_batch(&from, target, limit) {
                    Some(next) => CompactPhase::Index(next),
                    None => CompactPhase::Records(Vec::new()),
                };
                self.compaction = Some(CompactJob { target, phase });
                Ok(CompactStep::IndexBatch)
            }
            CompactPhase::Records(from) => {
                let end = Revision::new(target + 1, 0).to_bytes();
                let mut batch = WriteBatch::new();
                let mut seen = 0usize;
                let mut deleted = 0usize;
                let mut last: Option<Vec<u8>> = None;
                let mut failure: Option<MvccError> = None;
                // Each superseded record is read once, here: not through the block cache.
                self.engine
                    .scan_uncached(Keyspace::Kv, &from, Some(&end), &mut |k, v| {
                        let Some((rev, tombstone)) = Revision::from_record_key(k) else {
                            failure = Some(corrupt(format!("undecodable record key {k:?}")).into());
                            return false;
                        };
                        match self.holds_value_at(rev, tombstone, v, target) {
                            Ok(true) => {}
                            Ok(false) => {
                                batch.delete(Keyspace::Kv, k.to_vec());
                                deleted += 1;
                            }
                            Err(e) => {
                                failure = Some(e);
                                return false;
                            }
                        }
                        seen += 1;
                        last = Some(k.to_vec());
                        seen < limit
                    })?;
                if let Some(e) = failure {
                    return Err(e);
                }
                if seen < limit {
                    batch.put(
                        Keyspace::Meta,
                        META_COMPACT_REV,
                        target.to_be_bytes().to_vec(),
                    );
                    self.engine.write(batch, Durability::Buffered)?;
                    self.finished_compact_rev = target;
                    return Ok(CompactStep::Finished {
                        revision: target,
                        deleted,
                    });
                }
                self.engine.write(batch, Durability::Buffered)?;
                // The smallest key after the last one looked at.
                let mut next = last.unwrap_or_default();
                next.push(0);
                self.compaction = Some(CompactJob {
                    target,
                    phase: CompactPhase::Records(next),
                });
                Ok(CompactStep::RecordBatch(deleted))
            }
        }
    }

    /// Run the physical half of every pending compaction to its end at once (tests, tools).
    pub fn finish_compaction(&mut self) -> Result<()> {
        while self.compact_step(usize::MAX)? != CompactStep::Idle {}
        Ok(())
    }
}
