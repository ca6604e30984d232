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

/// The outcome of a range read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// Matching records in key order (at most `limit` when a limit was given).
    pub kvs: Vec<KeyValue>,
    /// How many keys matched in total, regardless of the limit.
    pub count: usize,
    /// The store's current revision when read.
    pub rev: i64,
}

/// A range read done in pieces ([`MvccStore::range_step`]), each under the caller's lock on the
/// store, and finished ([`RangeRead::finish`]) without it: what lets a read of any size leave the
/// store to writers for all but one short piece at a time.
///
/// Why it reads exactly the state at its revision `at` although the store moves on between the
/// pieces: writes only add revisions above `at`, and every piece first checks that no compaction
/// passed `at` (`ErrCompacted` if one did), so the key index, which compaction trims only of
/// revisions no read at or above the compaction point needs, still answers for `at` as in the
/// first piece. The records are read through an engine view taken under the lock after such a
/// check: a record that holds a value at `at` is deleted only by a compaction past `at`, so the
/// view has every record the read needs, and nothing deleted after it was taken is lost to it.
pub struct RangeRead {
    /// Where the next piece starts (`None`: the walk is done).
    next: Option<Vec<u8>>,
    end: RangeEnd,
    rev: i64,
    /// The revision read (0 before the first piece).
    at: i64,
    /// The store's head revision at the first piece.
    header_rev: i64,
    limit: usize,
    count_only: bool,
    keys_only: bool,
    pieces: usize,
    count: usize,
    /// The records kept, one vector per piece: a piece never grows (and so copies) what the
    /// pieces before it kept while it holds the store's lock. They are joined in
    /// [`RangeRead::finish`], without the lock.
    kvs: Vec<Vec<KeyValue>>,
    /// How many records `kvs` holds in all.
    kept: usize,
    /// Positions (over all of `kvs`) still to be read from `view`, and their records; one
    /// vector per piece, as `kvs`.
    loads: Vec<Vec<(usize, Revision)>>,
    view: Option<Arc<dyn EngineView>>,
}

impl RangeRead {
    /// A read of `[key, end)` as of revision `rev` (`<= 0`: the head at the first piece): at
    /// most `limit` records (`0`: no limit), `count` over the whole range; `count_only` reads no
    /// record, `keys_only` returns records without their values.
    pub fn new(
        key: &[u8],
        end: RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Self {
        Self {
            next: Some(key.to_vec()),
            end,
            rev,
            at: 0,
            header_rev: 0,
            limit,
            count_only,
            keys_only,
            pieces: 0,
            count: 0,
            kvs: Vec::new(),
            kept: 0,
            loads: Vec::new(),
            view: None,
        }
    }

    /// Keep one piece's records.
    fn keep(&mut self, piece: Vec<KeyValue>) {
        if !piece.is_empty() {
            self.kept += piece.len();
            self.kvs.push(piece);
        }
    }

    /// Whether every piece is done (then [`RangeRead::finish`]).
    pub fn walked(&self) -> bool {
        self.next.is_none()
    }

    /// Whether the pieces left records to read from an engine view (a range larger than one piece).
    pub fn has_view(&self) -> bool {
        self.view.is_some()
    }

    /// Read the records the pieces left to the engine view, outside any lock on the store.
    pub fn finish(self) -> Result<RangeResult> {
        let RangeRead {
            kvs: mut pieces,
            kept,
            loads,
            view,
            keys_only,
            count,
            header_rev,
            ..
        } = self;
        let mut kvs = if pieces.len() == 1 {
            pieces.pop().unwrap_or_default()
        } else {
            let mut kvs = Vec::with_capacity(kept);
            pieces.into_iter().for_each(|piece| kvs.extend(piece));
            kvs
        };
        let loads: Vec<(usize, Revision)> = loads.into_iter().flatten().collect();
        if !loads.is_empty() {
            let view = view.ok_or_else(|| {
                MvccError::Invariant("a range left records to read but took no view".into())
            })?;
            read_records(view.as_ref(), loads, &mut kvs)?;
            if keys_only {
                for kv in &mut kvs {
                    kv.value = Vec::new();
                }
            }
        }
        Ok(RangeResult {
            kvs,
            count,
            rev: header_rev,
        })
    }
}

/// What a keys-only read returns for `key`, whose newest record is `k`, built from the key index:
/// the lease comes from `attached`, a cursor over the lease table's attachments in key order
/// (see [`LeaseTable::attached_from`]) that this moves up to `key`.
fn keys_only_record<'a>(
    key: &[u8],
    k: KeyAt,
    attached: &mut std::iter::Peekable<impl Iterator<Item = (&'a [u8], i64)>>,
) -> KeyValue {
    let mut kv = KeyValue::default();
    keys_only_record_into(key, k, attached, &mut kv);
    kv
}

/// [`keys_only_record`] written over `kv`, reusing its key's buffer.
fn keys_only_record_into<'a>(
    key: &[u8],
    k: KeyAt,
    attached: &mut std::iter::Peekable<impl Iterator<Item = (&'a [u8], i64)>>,
    kv: &mut KeyValue,
) {
    while attached.next_if(|(a, _)| *a < key).is_some() {}
    kv.lease = match attached.peek() {
        Some((a, id)) if *a == key => *id,
        _ => 0,
    };
    kv.key.clear();
    kv.key.extend_from_slice(key);
    kv.create_revision = k.created;
    kv.mod_revision = k.modified.main;
    kv.version = k.version;
    kv.value.clear();
}

/// Read the records `loads` names from `view` into their places in `kvs`. When they are many for
/// the span of revisions they cover (a list of most of the keyspace), one scan over that span in
/// revision order, which reads each engine block once, replaces a lookup per record.
fn read_records(
    view: &dyn EngineView,
    mut loads: Vec<(usize, Revision)>,
    kvs: &mut [KeyValue],
) -> Result<()> {
    loads.sort_unstable_by_key(|(_, rev)| *rev);
    let (Some(&(_, first)), Some(&(_, last))) = (loads.first(), loads.last()) else {
        return Ok(());
    };
    let span = u64::try_from(last.main - first.main).unwrap_or(u64::MAX);
    if span / RANGE_SCAN_DENSITY > loads.len() as u64 {
        return read_scattered(|keys| view.get_many(Keyspace::Kv, keys), &loads, kvs);
    }
    let end = Revision::new(last.main + 1, 0).to_bytes();
    let mut wanted = loads.into_iter().peekable();
    let mut failure = None;
    view.scan(Keyspace::Kv, &first.to_bytes(), Some(&end), &mut |k, v| {
        let Some(&(i, rev)) = wanted.peek() else {
            return false;
        };
        // A record key is the revision's bytes (a tombstone's has one more byte).
        match rev.to_bytes().as_slice().cmp(k) {
            // Superseded records, tombstones and other keys' records in the span.
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => match decode_record(rev, v) {
                Ok(kv) => {
                    kvs[i] = kv;
                    wanted.next();
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
            std::cmp::Ordering::Less => {
                failure = Some(missing_record(rev).into());
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    match wanted.next() {
        Some((_, rev)) => Err(missing_record(rev).into()),
        None => Ok(()),
    }
}

/// Reads the records at `loads` (position in `kvs`, revision; in revision order, which is the
/// engine's key order) through `get_many`, in batches of [`crate::limits::ENGINE_GET_MANY_KEYS`]: one
/// batched engine lookup each instead of one lookup per record.
fn read_scattered(
    get_many: impl Fn(&[Vec<u8>]) -> crate::storage::Result<Vec<Option<Vec<u8>>>>,
    loads: &[(usize, Revision)],
    kvs: &mut [KeyValue],
) -> Result<()> {
    debug_assert!(loads.windows(2).all(|w| w[0].1 <= w[1].1));
    for batch in loads.chunks(crate::limits::ENGINE_GET_MANY_KEYS) {
        let keys: Vec<Vec<u8>> = batch.iter().map(|(_, rev)| rev.record_key(false)).collect();
        let values = get_many(&keys)?;
        debug_assert_eq!(values.len(), batch.len());
        for (&(i, rev), raw) in batch.iter().zip(values) {
            let raw = raw.ok_or_else(|| missing_record(rev))?;
            kvs[i] = decode_record(rev, &raw)?;
        }
    }
    Ok(())
}

/// The record at `rev`, decoded from the engine's bytes.
fn decode_record(rev: Revision, raw: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(raw).map_err(|e| MvccError::from(corrupt(format!("record {rev:?}: {e}"))))
}

/// The key index names a record the engine does not have: the store is corrupt.
fn missing_record(rev: Revision) -> StorageError {
    corrupt(format!("index points at missing record {rev:?}"))
}

/// One bounded piece of a range read ([`MvccStore::range_chunk`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeChunk {
    /// Records in key order.
    pub kvs: Vec<KeyValue>,
    /// Their size as the `kvs` field of a `RangeResponse` (tags and lengths included).
    pub bytes: usize,
    /// Whether the range holds more keys after the last of `kvs` (at the revision read).
    pub more: bool,
    /// The store's current revision when read.
    pub rev: i64,
}

/// The size of `kvs` as the `kvs` field of a `RangeResponse` (tags and lengths included): what a
/// [`RangeChunk`] is measured by.
pub fn kvs_encoded_len(kvs: &[KeyValue]) -> usize {
    kvs.iter()
        .map(|kv| prost::encoding::message::encoded_len(2, kv))
        .sum()
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

    /// The changes made since the last call, in revision order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Events of revisions `from..=current` read back from storage, stopping at a revision
    /// boundary once at least `max_events` are gathered. Returns the events and the last revision
    /// fully covered. `from` must not be below the compaction revision.
    pub fn events_since(&self, from: i64, max_events: usize) -> Result<(Vec<Event>, i64)> {
        if from < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut batch = read_events(
            self.engine.as_ref(),
            from,
            self.current_rev,
            EventBudget {
                events: max_events,
                revisions: usize::MAX,
                bytes: usize::MAX,
            },
        )?;
        drop_compacted_tombstones(&mut batch, self.compact_rev);
        Ok((batch.events, batch.covered))
    }

    fn load(&self, rev: Revision) -> Result<KeyValue> {
        if let Some(kv) = self.unflushed.get(&rev) {
            return Ok(kv.clone());
        }
        let raw = self.engine.get(Keyspace::Kv, &rev.record_key(false))?;
        let raw = raw.ok_or_else(|| missing_record(rev))?;
        decode_record(rev, &raw)
    }

    /// Read `[key, end)` as of revision `rev` (`<= 0`: newest). At most `limit` records are loaded
    /// (`0`: no limit); `count` always covers the whole range. `count_only` loads none.
    pub fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult> {
        let at = self.check_read_revision(rev)?;
        self.range_at(key, end, at, limit, count_only, false)
    }

    /// [`MvccStore::range`] at a checked revision; `keys_only` as in [`RangeRead::new`].
    fn range_at(
        &self,
        key: &[u8],
        end: &RangeEnd,
        at: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<RangeResult> {
        let mut read = RangeRead::new(key, end.clone(), at, limit, count_only, keys_only);
        // One piece for the whole range: everything is read under the caller's borrow.
        self.range_step(&mut read, usize::MAX)?;
        read.finish()
    }

    /// One piece of `read` ([`RangeRead`]): at most `max_keys` keys of the key index looked at,
    /// the matching ones counted and kept. A keys-only read takes each key's newest record from
    /// the index and the lease table, without reading it. A range done in its first piece reads
    /// its records here at once; otherwise they are left to [`RangeRead::finish`], through an
    /// engine view taken here. Returns whether the walk is done. Fails with
    /// [`MvccError::Compacted`] once a compaction passed the revision read.
    pub fn range_step(&self, read: &mut RangeRead, max_keys: usize) -> Result<bool> {
        let Some(start) = read.next.take() else {
            return Ok(true);
        };
        if read.pieces == 0 {
            read.at = self.check_read_revision(read.rev)?;
            read.header_rev = self.current_rev;
        } else if read.at < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        read.pieces += 1;
        let from_index = read.keys_only && !self.unattached_leases;
        let mut attached = self.leases.attached_from(&start).peekable();
        let first = read.pieces == 1;
        let (limit, count_only, keys_only) = (read.limit, read.count_only, read.keys_only);
        let kept_before = read.kept;
        let count = &mut read.count;
        let (mut kvs, mut loads) = (Vec::new(), Vec::new());
        read.next = self
            .index
            .visit_piece(&start, &read.end, read.at, max_keys, |key, k, head| {
                *count += 1;
                if count_only || (limit > 0 && kept_before + kvs.len() >= limit) {
                    return;
                }
                if from_index && head {
                    kvs.push(keys_only_record(key, k, &mut attached));
                    return;
                }
                match self.unflushed.get(&k.modified) {
                    // Not a copy of a value only to drop it.
                    Some(kv) if keys_only => kvs.push(KeyValue {
                        key: kv.key.clone(),
                        value: Vec::new(),
                        ..*kv
                    }),
                    Some(kv) => kvs.push(kv.clone()),
                    None => {
                        loads.push((kept_before + kvs.len(), k.modified));
                        kvs.push(KeyValue::default());
                    }
                }
            });
        if loads.is_empty() {
            read.keep(kvs);
            return Ok(read.next.is_none());
        }
        if first && read.next.is_none() {
            // The whole range in one piece: its records are read here, under the caller's hold.
            let mut loads = loads;
            loads.sort_unstable_by_key(|(_, rev)| *rev);
            let engine = &self.engine;
            read_scattered(|keys| engine.get_many(Keyspace::Kv, keys), &loads, &mut kvs)?;
            if keys_only {
                for (i, _) in loads {
                    kvs[i].value = Vec::new();
                }
            }
            read.keep(kvs);
        } else {
            read.keep(kvs);
            read.loads.push(loads);
            if read.view.is_none() {
                read.view = Some(self.engine.view()?);
            }
        }
        Ok(read.next.is_none())
    }

    /// The first records of `[key, end)` as of revision `rev` (`<= 0`: newest), in key order:
    /// at most `limit` (at least 1), and none once their encoded size would pass `bytes_max`
    /// (the first always comes, whatever its size). `keys_only` reads the records without their
    /// values. Memory and time are bounded by the chunk, not by the range: keys after the chunk
    /// are not visited beyond the one that tells whether there are `more`.
    pub fn range_chunk(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        bytes_max: usize,
        keys_only: bool,
    ) -> Result<RangeChunk> {
        let at = self.check_read_revision(rev)?;
        let limit = limit.max(1);
        let mut chunk = RangeChunk {
            rev: self.current_rev,
            ..RangeChunk::default()
        };
        let mut failed = None;
        let mut attached = self.leases.attached_from(key).peekable();
        self.index.visit(key, end, at, |key, k| {
            if chunk.kvs.len() >= limit {
                chunk.more = true;
                return false;
            }
            let kv = match self.record_of(key, k, keys_only, at, &mut attached) {
                Ok(kv) => kv,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            let bytes = kvs_encoded_len(std::slice::from_ref(&kv));
            if !chunk.kvs.is_empty() && chunk.bytes + bytes > bytes_max {
                chunk.more = true;
                return false;
            }
            chunk.bytes += bytes;
            chunk.kvs.push(kv);
            true
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(chunk),
        }
    }

    /// Whether every key of `[key, end)` as of revision `rev` (`<= 0`: newest) satisfies
    /// `holds`; `None` when the range has no key. The keys are visited in order, one record at a
    /// time, and the visit stops at the first that fails: a compare over a range of any size
    /// holds one record, where a range would hold them all. `keys_only` as in [`RangeRead::new`]
    /// (`holds` must not look at the value then).
    pub fn all_hold(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        keys_only: bool,
        mut holds: impl FnMut(&KeyValue) -> bool,
    ) -> Result<Option<bool>> {
        let at = self.check_read_revision(rev)?;
        let (mut any, mut all, mut failed) = (false, true, None);
        let mut attached = self.leases.attached_from(key).peekable();
        // One record, its buffers reused from key to key where it comes from the index.
        let mut kv = KeyValue::default();
        self.index.visit(key, end, at, |key, k| {
            any = true;
            if keys_only && self.is_head(key, k, at) {
                keys_only_record_into(key, k, &mut attached, &mut kv);
            } else {
                match self.loaded_record(k, keys_only) {
                    Ok(record) => kv = record,
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            all = holds(&kv);
            all
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(any.then_some(all)),
        }
    }

    /// The record `k` of `key` (value left out when `keys_only`). As in a keys-only range
    /// (`range_step`), a key's newest record then comes from the index and the lease table
    /// (`attached`, from the visit's first key on), without reading it.
    fn record_of<'a>(
        &self,
        key: &[u8],
        k: KeyAt,
        keys_only: bool,
        at: i64,
        attached: &mut std::iter::Peekable<impl Iterator<Item = (&'a [u8], i64)>>,
    ) -> Result<KeyValue> {
        if keys_only && self.is_head(key, k, at) {
            return Ok(keys_only_record(key, k, attached));
        }
        self.loaded_record(k, keys_only)
    }

    /// The record `k` read from the store (value left out when `keys_only`).
    fn loaded_record(&self, k: KeyAt, keys_only: bool) -> Result<KeyValue> {
        let mut kv = self.load(k.modified)?;
        if keys_only {
            kv.value.clear();
        }
        Ok(kv)
    }

    /// Whether a keys-only read may take `k`, the record of `key` seen at revision `at`, from the
    /// key index and the lease table: it is the key's newest (every record seen at the current
    /// revision is), and the lease table tells every record's lease (`unattached_leases`).
    fn is_head(&self, key: &[u8], k: KeyAt, at: i64) -> bool {
        !self.unattached_leases
            && (at == self.current_rev
                || self
                    .index
                    .get(key, self.current_rev)
                    .is_some_and(|h| h.modified == k.modified))
    }

    /// The live record of `key` at the newest revision.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.index.get(key, self.current_rev) {
            None => Ok(None),
            Some(k) => Ok(Some(self.load(k.modified)?)),
        }
    }

    /// Start a write transaction. Its changes share one new main revision; nothing reaches the
    /// engine until the caller writes the batch from [`WriteTxn::finish`].
    pub fn write_txn(&mut self) -> WriteTxn<'_> {
        let begin_rev = self.current_rev;
        WriteTxn {
            store: self,
            begin_rev,
            sub: 0,
            batch: WriteBatch::new(),
            staged: Staged::default(),
        }
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

/// What a write transaction has changed so far, kept apart from the store until
/// [`WriteTxn::finish`] publishes it. Dropping a transaction drops this, and with it every trace of
/// the transaction: a command refused half-way leaves the store exactly as it was.
#[derive(Default)]
struct Staged {
    /// Each key the transaction wrote, as it stands after those writes (`None`: deleted by it).
    /// Reads inside the transaction see these over the key index.
    keys: BTreeMap<Vec<u8>, Option<KeyAt>>,
    /// The key index changes, in sub-revision order.
    index_ops: Vec<IndexOp>,
    /// The records written, by revision (read back by later reads of the same transaction).
    records: BTreeMap<Revision, KeyValue>,
    /// Lease table changes, in order.
    lease_ops: Vec<LeaseOp>,
    /// The watch events, in order.
    events: Vec<Event>,
}

enum IndexOp {
    Put(Vec<u8>, Revision),
    Tombstone(Vec<u8>, Revision),
}

enum LeaseOp {
    Attach(i64, Vec<u8>),
    Detach(Vec<u8>),
    Revoke(i64),
}

/// A write transaction: puts and deletes at one new main revision. Reads inside it see its own
/// earlier writes, as in etcd. Every change is staged inside the transaction (key index, records,
/// lease attachments, events, the revision counter) and reaches the store only in
/// [`WriteTxn::finish`]: dropping an unfinished transaction changes nothing.
#[must_use = "a write transaction changes nothing until finish() publishes it"]
pub struct WriteTxn<'a> {
    store: &'a mut MvccStore,
    begin_rev: i64,
    sub: i64,
    batch: WriteBatch,
    staged: Staged,
}

impl WriteTxn<'_> {
    /// The revision reads inside the transaction see.
    pub fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.begin_rev + 1
        } else {
            self.begin_rev
        }
    }

    /// The store revision before this transaction.
    pub fn begin_rev(&self) -> i64 {
        self.begin_rev
    }

    /// The store's compaction revision (-1 if none).
    pub fn compact_rev(&self) -> i64 {
        self.store.compact_rev
    }

    /// Whether anything was written so far.
    pub fn has_changes(&self) -> bool {
        self.sub > 0
    }

    fn next_rev(&mut self) -> Revision {
        let rev = Revision::new(self.begin_rev + 1, self.sub);
        self.sub += 1;
        rev
    }

    /// Key state as seen inside the transaction.
    pub fn key_at(&self, key: &[u8]) -> Option<KeyAt> {
        match self.staged.keys.get(key) {
            Some(staged) => *staged,
            None => self.store.index.get(key, self.begin_rev),
        }
    }

    fn load(&self, rev: Revision) -> Result<KeyValue> {
        match self.staged.records.get(&rev) {
            Some(kv) => Ok(kv.clone()),
            None => self.store.load(rev),
        }
    }

    /// The record of `key` as seen inside the transaction.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.key_at(key) {
            None => Ok(None),
            Some(k) => Ok(Some(self.load(k.modified)?)),
        }
    }

    /// [`MvccStore::all_hold`] inside the transaction, at its own view; `None` (nothing decided)
    /// once it has written: the caller reads the range instead.
    pub fn all_hold(
        &self,
        key: &[u8],
        end: &RangeEnd,
        keys_only: bool,
        holds: impl FnMut(&KeyValue) -> bool,
    ) -> Option<Result<Option<bool>>> {
        (self.sub == 0).then(|| {
            self.store
                .all_hold(key, end, self.begin_rev, keys_only, holds)
        })
    }

    /// Range read inside the transaction (`rev <= 0`: the transaction's own view). `keys_only`
    /// lets it leave the values out where it can (the caller must not rely on them either way):
    /// before the transaction has written anything, a keys-only read takes the records from the
    /// key index without reading them (a compare on a version or revision over a large range).
    pub fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<RangeResult> {
        let at = if rev <= 0 { self.read_rev() } else { rev };
        if at > self.read_rev() {
            return Err(MvccError::FutureRevision);
        }
        if at < self.store.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut result = if at > self.begin_rev {
            // The transaction's own revision: the index below, the staged keys over it.
            let mut found = Vec::new();
            let count = collect(&mut found, limit, count_only, |f| {
                self.visit_staged(key, end, f)
            });
            let mut kvs = Vec::with_capacity(found.len());
            for rev in found {
                kvs.push(self.load(rev)?);
            }
            RangeResult { kvs, count, rev: 0 }
        } else {
            self.store
                .range_at(key, end, at, limit, count_only, keys_only)?
        };
        result.rev = self.read_rev();
        Ok(result)
    }

    /// Visit the keys of `[start, end)` as they stand inside the transaction, in key order: the
    /// key index at the revision before it, merged with the keys it wrote.
    fn visit_staged(
        &self,
        start: &[u8],
        end: &RangeEnd,
        mut visit: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        let upper = match end {
            RangeEnd::Single => Bound::Included(start),
            RangeEnd::Before(e) if e.as_slice() <= start => return,
            RangeEnd::Before(e) => Bound::Excluded(e.as_slice()),
            RangeEnd::Unbounded => Bound::Unbounded,
        };
        let mut staged = self
            .staged
            .keys
            .range::<[u8], _>((Bound::Included(start), upper))
            .peekable();
        let mut stopped = false;
        self.store
            .index
            .visit(start, end, self.begin_rev, |key, at| {
                // Keys the transaction wrote that sort before this one (created, or deleted ones
                // the index does not show at this revision anyway).
                while let Some((k, state)) = staged.next_if(|(k, _)| k.as_slice() < key) {
                    if let Some(s) = state {
                        if !visit(k, *s) {
                            stopped = true;
                            return false;
                        }
                    }
                }
                let go = match staged.next_if(|(k, _)| k.as_slice() == key) {
                    Some((_, Some(s))) => visit(key, *s),
                    Some((_, None)) => true, // deleted by the transaction
                    None => visit(key, at),
                };
                stopped = !go;
                go
            });
        if stopped {
            return;
        }
        for (k, state) in staged {
            if let Some(s) = state {
                if !visit(k, *s) {
                    return;
                }
            }
        }
    }

    /// Put `key`; returns the new record.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<KeyValue> {
        let prev = self.key_at(key);
        let rev = self.next_rev();
        // The index must never hold a revision of this key at or above the new one: that would
        // mean the revision counter went back (a corrupt store), and publishing would break the
        // index. Caught here, it stops the member with an error instead.
        if let Some(newest) = self.store.index.newest(key) {
            if newest >= rev {
                return Err(MvccError::Invariant(format!(
                    "put of {key:?} at {rev:?}, but the key index already holds {newest:?}"
                )));
            }
        }
        let (create_revision, version) = match prev {
            Some(p) => (p.created, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.batch
            .put(Keyspace::Kv, rev.record_key(false), kv.encode_to_vec());
        let staged = &mut self.staged;
        staged.keys.insert(
            key.to_vec(),
            Some(KeyAt {
                modified: rev,
                created: create_revision,
                version,
            }),
        );
        staged.index_ops.push(IndexOp::Put(key.to_vec(), rev));
        staged.lease_ops.push(LeaseOp::Attach(lease, key.to_vec()));
        staged.records.insert(rev, kv.clone());
        staged.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: None,
        });
        Ok(kv)
    }

    /// Delete every live key in `[key, end)`; returns the records deleted (their last values).
    pub fn delete_range(&mut self, key: &[u8], end: &RangeEnd) -> Result<Vec<KeyValue>> {
        let doomed = self.range(key, end, 0, 0, false, false)?.kvs;
        for kv in &doomed {
            let rev = self.next_rev();
            let tomb = KeyValue {
                key: kv.key.clone(),
                ..Default::default()
            };
            self.batch
                .put(Keyspace::Kv, rev.record_key(true), tomb.encode_to_vec());
            let staged = &mut self.staged;
            staged.keys.insert(kv.key.clone(), None);
            staged
                .index_ops
                .push(IndexOp::Tombstone(kv.key.clone(), rev));
            staged.lease_ops.push(LeaseOp::Detach(kv.key.clone()));
            staged.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev.main,
                    ..Default::default()
                }),
                prev_kv: None,
            });
        }
        Ok(doomed)
    }

    /// Whether lease `id` exists (as seen inside the transaction).
    pub fn lease_exists(&self, id: i64) -> bool {
        let revoked = self
            .staged
            .lease_ops
            .iter()
            .any(|op| matches!(op, LeaseOp::Revoke(r) if *r == id));
        !revoked && self.store.leases.contains(id)
    }

    /// Revoke lease `id`: delete every key attached to it (at this transaction's revision) and drop
    /// the lease. Returns false if the lease does not exist. Must be the transaction's only work
    /// (a revoke is a command of its own), so the attachments are the store's.
    pub fn lease_revoke(&mut self, id: i64) -> Result<bool> {
        if !self.lease_exists(id) {
            return Ok(false);
        }
        if self.has_changes() {
            return Err(MvccError::Invariant(format!(
                "lease {id} revoked inside a transaction that already wrote"
            )));
        }
        for key in self.store.leases.keys(id) {
            self.delete_range(&key, &RangeEnd::Single)?;
        }
        self.staged.lease_ops.push(LeaseOp::Revoke(id));
        self.batch.delete(Keyspace::Meta, lease::record_key(id));
        Ok(true)
    }

    /// End the transaction: publish every staged change to the store, and return the batch to
    /// write (with the new current revision, if anything changed) and the store revision after
    /// it. Nothing here can fail: every check ran while the changes were staged.
    pub fn finish(self) -> (WriteBatch, i64) {
        self.publish(true)
    }

    /// The deliberately broken behaviour of the `sim-bug-partial-txn` build: what a refused
    /// transaction had done so far reaches the in-memory state, though its batch is never written
    /// and the revision never moves (the simulation must catch this).
    #[cfg(feature = "sim-bug-partial-txn")]
    pub fn leak_unfinished(self) {
        drop(self.publish(false));
    }

    fn publish(self, bump: bool) -> (WriteBatch, i64) {
        let WriteTxn {
            store,
            begin_rev,
            sub,
            mut batch,
            staged,
        } = self;
        // With nothing written these are empty but for a revoke of a lease without keys, which
        // still drops the lease.
        for op in staged.index_ops {
            match op {
                IndexOp::Put(key, rev) => store.index.put(&key, rev),
                IndexOp::Tombstone(key, rev) => {
                    let was_live = store.index.tombstone(&key, rev);
                    debug_assert!(was_live, "a staged delete of a key that is not live");
                }
            }
        }
        for op in staged.lease_ops {
            match op {
                LeaseOp::Attach(id, key) => store.leases.attach(id, &key),
                LeaseOp::Detach(key) => store.leases.detach(&key),
                LeaseOp::Revoke(id) => drop(store.leases.revoke(id)),
            }
        }
        store.unflushed.extend(staged.records);
        store.events.extend(staged.events);
        if sub > 0 && bump {
            store.current_rev = begin_rev + 1;
            batch.put(
                Keyspace::Meta,
                META_CURRENT_REV,
                store.current_rev.to_be_bytes().to_vec(),
            );
        }
        (batch, store.current_rev)
    }
}

/// Gather the revisions a range visit offers: at most `limit` (0: all) unless `count_only`; returns
/// how many keys were offered in all.
fn collect(
    found: &mut Vec<Revision>,
    limit: usize,
    count_only: bool,
    visit: impl FnOnce(&mut dyn FnMut(&[u8], KeyAt) -> bool),
) -> usize {
    let mut count = 0usize;
    visit(&mut |_, k| {
        count += 1;
        if !count_only && (limit == 0 || found.len() < limit) {
            found.push(k.modified);
        }
        true
    });
    count
}

/// How much one [`read_events`] call may gather before it stops, at the next revision boundary
/// (so a revision's events are never split, and at least one revision is always read).
#[derive(Debug, Clone, Copy)]
pub struct EventBudget {
    pub events: usize,
    pub revisions: usize,
    /// Encoded bytes of the events' key-values.
    pub bytes: usize,
}

/// Events read back from storage by [`read_events`].
#[derive(Debug, Default)]
pub struct EventBatch {
    /// In revision order.
    pub events: Vec<Event>,
    /// The last revision read whole (`from - 1` if none was).
    pub covered: i64,
}

/// Drop the deletions at or below `compact_rev` from `batch`. A read from the compaction point
/// itself may still find the tombstones compaction removes there (the background deletion may
/// not have reached them yet); they are compacted history, whether or not they are gone yet.
/// Everything else at the compaction point is each key's value there, which compaction keeps.
pub fn drop_compacted_tombstones(batch: &mut EventBatch, compact_rev: i64) {
    batch.events.retain(|ev| {
        let compacted_delete = ev.r#type == EventType::Delete as i32
            && ev
                .kv
                .as_ref()
                .is_some_and(|kv| kv.mod_revision <= compact_rev);
        !compacted_delete
    });
}

/// Events of revisions `from..=to` read straight from `engine`, without the store (and so without
/// its lock): the watch catch-up reads here while apply goes on. It is the caller's job to know
/// that `to` is written and that nothing in `from..=to` was compacted before or during the read
/// (the records of a revision never change once written; compaction only removes them).
pub fn read_events(
    engine: &dyn crate::storage::Engine,
    from: i64,
    to: i64,
    budget: EventBudget,
) -> Result<EventBatch> {
    let from = from.max(1);
    let mut batch = EventBatch {
        events: Vec::new(),
        covered: from - 1,
    };
    if from > to {
        batch.covered = to.max(from - 1);
        return Ok(batch);
    }
    let start = Revision::new(from, 0).to_bytes();
    let end = Revision::new(to + 1, 0).to_bytes();
    let (mut revisions, mut bytes) = (0usize, 0usize);
    let mut last_rev = from - 1;
    let mut stopped = false;
    let mut failure = None;
    engine.scan(Keyspace::Kv, &start, Some(&end), &mut |k, v| {
        let decoded = Revision::from_record_key(k).zip(KeyValue::decode(v).ok());
        let Some(((rev, tombstone), mut kv)) = decoded else {
            failure = Some(corrupt(format!("undecodable record {k:?}")));
            return false;
        };
        if rev.main > last_rev {
            let full = batch.events.len() >= budget.events
                || revisions >= budget.revisions
                || bytes >= budget.bytes;
            if full && revisions > 0 {
                stopped = true;
                return false; // a new revision starts and the batch is full
            }
            revisions += 1;
            last_rev = rev.main;
        }
        bytes += v.len();
        let kind = if tombstone {
            kv.mod_revision = rev.main;
            EventType::Delete
        } else {
            EventType::Put
        };
        batch.events.push(Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        true
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    // Stopped early: the last revision read was read whole. Otherwise everything up to `to` was.
    batch.covered = if stopped { last_rev } else { to };
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::{Durability, MemoryEngine};

    fn store() -> MvccStore {
        MvccStore::open(Arc::new(MemoryEngine::new())).expect("open")
    }

    fn commit(s: &mut MvccStore, f: impl FnOnce(&mut WriteTxn<'_>)) -> i64 {
        let mut txn = s.write_txn();
        f(&mut txn);
        let (batch, rev) = txn.finish();
        s.engine().write(batch, Durability::Sync).expect("write");
        s.mark_flushed();
        rev
    }

    #[test]
    fn revisions_versions_and_reads_at_past_revisions() {
        let mut s = store();
        assert_eq!(s.current_revision(), 1);
        assert_eq!(
            commit(&mut s, |t| {
                t.put(b"a", b"1".to_vec(), 0).unwrap();
            }),
            2
        );
        assert_eq!(
            commit(&mut s, |t| {
                t.put(b"a", b"2".to_vec(), 0).unwrap();
            }),
            3
        );
        let kv = s.get(b"a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        let old = s.range(b"a", &RangeEnd::Single, 2, 0, false).unwrap();
        assert_eq!(old.kvs[0].value, b"1");
        assert_eq!(old.rev, 3, "header revision is the current one");
        assert!(matches!(
            s.range(b"a", &RangeEnd::Single, 4, 0, false),
            Err(MvccError::FutureRevision)
        ));
        // Deleting nothing does not bump the revision.
        assert_eq!(
            commit(&mut s, |t| assert!(t
                .delete_range(b"zz", &RangeEnd::Single)
                .unwrap()
                .is_empty())),
            3
        );
        assert_eq!(
            commit(&mut s, |t| assert_eq!(
                t.delete_range(b"a", &RangeEnd::Single).unwrap().len(),
                1
            )),
            4
        );
        assert_eq!(s.get(b"a").unwrap(), None);
        let kv = commit(&mut s, |t| {
            let kv = t.put(b"a", b"3".to_vec(), 0).unwrap();
            assert_eq!((kv.create_revision, kv.version), (5, 1));
        });
        assert_eq!(kv, 5);
    }

    #[test]
    fn all_hold_stops_at_the_first_key_that_fails_and_agrees_with_a_range() {
        let mut s = store();
        let mut batch = WriteBatch::new();
        assert!(s.lease_grant(7, 60, &mut batch));
        s.engine().write(batch, Durability::Sync).expect("write");
        // Keys k0..k9 written over several revisions, some twice, one deleted, some on a lease.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move |n: u32| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 16) % n
        };
        for round in 0..30 {
            commit(&mut s, |t| {
                let key = format!("k{}", next(10));
                if round % 7 == 6 {
                    t.delete_range(key.as_bytes(), &RangeEnd::Single).unwrap();
                } else {
                    let lease = if next(3) == 0 { 7 } else { 0 };
                    let value = format!("v{}", next(4)).into_bytes();
                    t.put(key.as_bytes(), value, lease).unwrap();
                }
            });
        }
        let current = s.current_revision();
        let ranges = [
            (b"k".to_vec(), RangeEnd::Before(b"l".to_vec())),
            (b"k3".to_vec(), RangeEnd::Before(b"k7".to_vec())),
            (b"k5".to_vec(), RangeEnd::Single),
            (b"k".to_vec(), RangeEnd::Unbounded),
            (b"x".to_vec(), RangeEnd::Unbounded),
        ];
        for (key, end) in &ranges {
            for rev in [0, current - 10, current] {
                let whole = s.range(key, end, rev, 0, false).unwrap().kvs;
                for keys_only in [false, true] {
                    // Every record it visits is the one a range returns, in order, without its
                    // value when keys-only.
                    let mut seen = Vec::new();
                    let all = s
                        .all_hold(key, end, rev, keys_only, |kv| {
                            seen.push(kv.clone());
                            true
                        })
                        .unwrap();
                    let mut want = whole.clone();
                    if keys_only {
                        want.iter_mut().for_each(|kv| kv.value.clear());
                    }
                    assert_eq!(seen, want, "{key:?} {end:?} at {rev}");
                    assert_eq!(all, (!whole.is_empty()).then_some(true));
                    // A predicate that fails on the n-th key is asked n times, and decides.
                    for n in 1..=whole.len() {
                        let mut asked = 0;
                        let all = s
                            .all_hold(key, end, rev, keys_only, |_| {
                                asked += 1;
                                asked < n
                            })
                            .unwrap();
                        assert_eq!((all, asked), (Some(false), n));
                    }
                    // And a real one answers as the whole range does.
                    let newer = |kv: &KeyValue| kv.mod_revision > current - 12;
                    let all = s.all_hold(key, end, rev, keys_only, newer).unwrap();
                    let want = (!whole.is_empty()).then(|| whole.iter().all(newer));
                    assert_eq!(all, want);
                }
            }
        }
        assert!(matches!(
            s.all_hold(b"k", &RangeEnd::Unbounded, current + 1, true, |_| true),
            Err(MvccError::FutureRevision)
        ));
    }

    #[test]
    fn limit_and_count() {
        let mut s = store();
        commit(&mut s, |t| {
            for k in ["a", "b", "c", "d"] {
                t.put(k.as_bytes(), vec![], 0).unwrap();
            }
        });
        let r = s.range(b"a", &RangeEnd::Unbounded, 0, 2, false).unwrap();
        assert_eq!((r.kvs.len(), r.count), (2, 4));
        let r = s
            .range(b"b", &RangeEnd::Before(b"d".to_vec()), 0, 0, true)
            .unwrap();
        assert_eq!((r.kvs.len(), r.count), (0, 2));
        assert_eq!(s.current_revision(), 2, "one txn, one revision");
    }

    #[test]
    fn txn_reads_its_own_writes() {
        let mut s = store();
        commit(&mut s, |t| {
            t.put(b"k", b"v".to_vec(), 0).unwrap();
            let r = t
                .range(b"k", &RangeEnd::Single, 0, 0, false, false)
                .unwrap();
            assert_eq!(r.kvs[0].value, b"v");
            assert_eq!(r.rev, 2);
            let deleted = t.delete_range(b"k", &RangeEnd::Single).unwrap();
            assert_eq!(deleted.len(), 1);
            assert!(t.get(b"k").unwrap().is_none());
        });
    }

    #[test]
    fn events_live_and_from_storage_agree() {
        let mut s = store();
        commit(&mut s, |t| {
            t.put(b"a", b"1".to_vec(), 0).unwrap();
        });
        commit(&mut s, |t| {
            t.put(b"b", b"2".to_vec(), 0).unwrap();
            t.put(b"c", b"3".to_vec(), 0).unwrap();
        });
        commit(&mut s, |t| {
            drop(t.delete_range(b"a", &RangeEnd::Single).unwrap())
        });
        let live = s.take_events();
        assert_eq!(live.len(), 4);
        assert!(s.take_events().is_empty());
        let (stored, covered) = s.events_since(2, 100).unwrap();
        assert_eq!((stored.clone(), covered), (live.clone(), 4));
        assert_eq!(
            stored[3].kv.as_ref().unwrap().mod_revision,
            4,
            "a delete event carries its revision"
        );
        // A batch limit cuts only between revisions: revision 3 has two events.
        let (part, covered) = s.events_since(3, 1).unwrap();
        assert_eq!((part.len(), covered), (2, 3));
        let (none, covered) = s.events_since(5, 10).unwrap();
        assert_eq!((none.len(), covered), (0, 4));
        let mut batch = WriteBatch::new();
        s.compact(3, &mut batch).unwrap();
        s.engine().write(batch, Durability::Sync).unwrap();
        assert!(matches!(s.events_since(2, 10), Err(MvccError::Compacted)));
    }

    fn records(engine: &SharedEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        engine
            .scan(Keyspace::Kv, &[], None, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn unflushed_overlay_serves_reads_until_written_and_compaction_waits_for_it() {
        let engine: SharedEngine = Arc::new(MemoryEngine::new());
        let mut s = MvccStore::open(engine.clone()).unwrap();
        // Three transactions applied back to back; their batches are written only at the end.
        let mut all = WriteBatch::new();
        for f in [
            |t: &mut WriteTxn<'_>| {
                t.put(b"a", b"1".to_vec(), 0).unwrap();
            },
            |t: &mut WriteTxn<'_>| {
                t.put(b"a", b"2".to_vec(), 0).unwrap();
            },
            |t: &mut WriteTxn<'_>| drop(t.delete_range(b"a", &RangeEnd::Single).unwrap()),
        ] {
            let mut txn = s.write_txn();
            f(&mut txn);
            assert!(txn.has_changes());
            all.append(txn.finish().0);
        }
        assert_eq!(
            s.range(b"a", &RangeEnd::Single, 3, 0, false).unwrap().kvs[0].value,
            b"2"
        );
        s.compact(4, &mut all).unwrap();
        assert!(
            matches!(s.compact_step(10), Err(MvccError::Invariant(_))),
            "a step must not run before the records it would judge are written"
        );
        engine.write(all, Durability::Sync).unwrap();
        s.mark_flushed();
        assert_eq!(
            records(&engine).len(),
            3,
            "the physical half has not run yet"
        );
        s.finish_compaction().unwrap();
        assert!(
            records(&engine).is_empty(),
            "superseded puts and the tombstone are compacted"
        );
        let reopened = MvccStore::open(engine).unwrap();
        assert_eq!(
            (
                reopened.current_revision(),
                reopened.compact_revision(),
                reopened.finished_compact_revision()
            ),
            (4, 4, 4)
        );
        assert_eq!(reopened.indexed_keys(), 0);
    }

    /// Keys `k0..k9` written `rounds` times each (one transaction per write), every third key
    /// deleted after each round but the last.
    fn history(s: &mut MvccStore, rounds: u8) {
        for round in 0..rounds {
            for k in 0..10u8 {
                commit(s, |t| {
                    drop(t.put(&[b'k', b'0' + k], vec![round], 0).unwrap())
                });
            }
            if round + 1 < rounds {
                for k in (0..10u8).step_by(3) {
                    commit(s, |t| {
                        drop(
                            t.delete_range(&[b'k', b'0' + k], &RangeEnd::Single)
                                .unwrap(),
                        )
                    });
                }
            }
        }
    }

    fn compact_at(s: &mut MvccStore, rev: i64) {
        let mut batch = WriteBatch::new();
        s.compact(rev, &mut batch).unwrap();
        s.engine().write(batch, Durability::Sync).unwrap();
    }

    #[test]
    fn a_hash_in_pieces_starts_over_when_a_compaction_lands_meanwhile() {
        // The same history twice; `later` was compacted further. The lock hands out `earlier`
        // for the first `k` holds, then `later`, as if the compaction were applied between two
        // pieces: for every `k`, the hash is `later`'s unless the whole attempt saw `earlier`,
        // never a mix.
        let mut earlier = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        let mut later = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        history(&mut earlier, 5);
        history(&mut later, 5);
        let head = earlier.current_revision();
        compact_at(&mut earlier, head - 12);
        compact_at(&mut later, head - 6);
        later.finish_compaction().unwrap();
        let (want_earlier, want_later) =
            (earlier.hash_kv(head).unwrap(), later.hash_kv(head).unwrap());
        assert_ne!(want_earlier, want_later, "the two states hash apart");
        let holds = std::cell::Cell::new(0);
        let counted = || {
            holds.set(holds.get() + 1);
            &earlier
        };
        MvccStore::hash_kv_in_pieces(counted, head, 2).unwrap();
        let attempt = holds.get();
        assert!(attempt > 10, "pieces of two records: {attempt} holds");
        for k in 1..=attempt {
            holds.set(0);
            let lock = || {
                holds.set(holds.get() + 1);
                if holds.get() <= k {
                    &earlier
                } else {
                    &later
                }
            };
            let (hash, rev, compact) = MvccStore::hash_kv_in_pieces(lock, head, 2).unwrap();
            let want = if k == attempt {
                (want_earlier, head, head - 12)
            } else {
                (want_later, head, head - 6)
            };
            assert_eq!(
                (hash, rev, compact),
                want,
                "switched after {k} of {attempt} holds"
            );
        }
        // A compaction that keeps landing: refused as compacted after a few attempts.
        let flip = std::cell::Cell::new(false);
        let flapping = || {
            flip.set(!flip.get());
            if flip.get() {
                &earlier
            } else {
                &later
            }
        };
        assert!(matches!(
            MvccStore::hash_kv_in_pieces(flapping, head, 2),
            Err(MvccError::Compacted)
        ));
    }

    #[test]
    fn nothing_readable_depends_on_how_far_the_physical_half_got() {
        let engine: SharedEngine = Arc::new(MemoryEngine::new());
        let mut s = MvccStore::open(engine.clone()).unwrap();
        history(&mut s, 5);
        let head = s.current_revision();
        let at = head - 12;
        let readable = |s: &MvccStore| {
            let mut seen = Vec::new();
            for rev in at..=head {
                let r = s.range(b"k", &RangeEnd::Unbounded, rev, 0, false).unwrap();
                let hash = s.hash_kv(rev.max(at + 1)).unwrap();
                // Read in pieces, the hash is the same.
                for piece in [1, 5, 300] {
                    let (pieces, _, _) =
                        MvccStore::hash_kv_in_pieces(|| s, rev.max(at + 1), piece).unwrap();
                    assert_eq!(pieces, hash, "pieces of {piece} at {rev}");
                }
                seen.push((r.kvs, hash));
            }
            (seen, s.events_since(at, usize::MAX).unwrap())
        };
        compact_at(&mut s, at);
        assert!(matches!(
            s.range(b"k", &RangeEnd::Unbounded, at - 1, 0, false),
            Err(MvccError::Compacted)
        ));
        assert!(matches!(s.hash_kv(at), Err(MvccError::Compacted)));
        // (The hash above the point does change with the point itself, as etcd's does: it
        // covers only what a read at or above the point can see. It must not change with the
        // progress of the physical half, checked below.)
        let want = readable(&s);
        let mut steps = 0;
        loop {
            match s.compact_step(3).unwrap() {
                CompactStep::Finished { revision, .. } => {
                    assert_eq!(revision, at);
                    break;
                }
                CompactStep::IndexBatch | CompactStep::RecordBatch(_) => steps += 1,
                CompactStep::Idle => panic!("a pending compaction went idle"),
            }
            assert_eq!(readable(&s), want, "after step {steps}");
            if steps % 4 == 0 {
                // A restart half-way: the compaction point holds, the work starts again.
                let reopened = MvccStore::open(engine.clone()).unwrap();
                assert_eq!(reopened.compact_revision(), at);
                assert!(reopened.compaction_pending());
                assert_eq!(readable(&reopened), want, "reopened after step {steps}");
            }
        }
        assert!(steps > 10, "three keys or records a step: {steps} steps");
        assert_eq!(s.compact_step(3).unwrap(), CompactStep::Idle);
        assert_eq!(readable(&s), want);
        // Only the records that hold a value at the compaction point or later are left.
        let mut full = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
        history(&mut full, 5);
        compact_at(&mut full, at);
        full.finish_compaction().unwrap();
        assert_eq!(records(&engine), records(full.engine()));
        assert_eq!(s.fingerprint().index, full.fingerprint().index);
    }

    #[test]
    fn a_restart_mid_compaction_resumes_it_and_a_later_compaction_waits_its_turn() {
        let engine: SharedEngine = Arc::new(MemoryEngine::new());
        let mut s = MvccStore::open(engine.clone()).unwrap();
        history(&mut s, 4);
        let first = s.current_revision() - 20;
        compact_at(&mut s, first);
        for _ in 0..6 {
            assert_ne!(s.compact_step(2).unwrap(), CompactStep::Idle);
        }
        drop(s);
        let mut s = MvccStore::open(engine.clone()).unwrap();
        assert_eq!(
            (s.compact_revision(), s.finished_compact_revision()),
            (first, -1)
        );
        history(&mut s, 1);
        assert_eq!(s.compact_step(2).unwrap(), CompactStep::IndexBatch);
        let second = s.current_revision() - 5;
        compact_at(&mut s, second);
        assert!(matches!(
            s.range(b"k", &RangeEnd::Unbounded, second - 1, 0, false),
            Err(MvccError::Compacted)
        ));
        let mut finished = Vec::new();
        loop {
            match s.compact_step(2).unwrap() {
                CompactStep::Finished { revision, .. } => finished.push(revision),
                CompactStep::IndexBatch | CompactStep::RecordBatch(_) => {}
                CompactStep::Idle => break,
            }
        }
        assert_eq!(finished, vec![first, second], "one after the other");
        let reopened = MvccStore::open(engine.clone()).unwrap();
        assert_eq!(
            (
                reopened.compact_revision(),
                reopened.finished_compact_revision()
            ),
            (second, second)
        );
        assert!(!reopened.compaction_pending());
        assert!(records(&engine)
            .iter()
            .all(
                |(k, _)| Revision::from_record_key(k).unwrap().0.main > second
                    || !k.ends_with(b"t")
            ));
    }

    #[test]
    fn compaction_drops_superseded_records_and_survives_reopen() {
        let engine: SharedEngine = Arc::new(MemoryEngine::new());
        let mut s = MvccStore::open(engine.clone()).unwrap();
        for v in 0..3 {
            commit(&mut s, |t| {
                t.put(b"a", vec![v], 0).unwrap();
            });
        }
        commit(&mut s, |t| {
            t.put(b"b", b"x".to_vec(), 0).unwrap();
        });
        commit(&mut s, |t| {
            drop(t.delete_range(b"b", &RangeEnd::Single).unwrap())
        });
        assert_eq!(s.current_revision(), 6);
        let mut batch = WriteBatch::new();
        s.compact(6, &mut batch).unwrap();
        engine.write(batch, Durability::Sync).unwrap();
        s.finish_compaction().unwrap();
        let mut records = 0;
        engine
            .scan(Keyspace::Kv, &[], None, &mut |_, _| {
                records += 1;
                true
            })
            .unwrap();
        assert_eq!(records, 1, "only a@4 is left");
        assert!(matches!(
            s.range(b"a", &RangeEnd::Single, 5, 0, false),
            Err(MvccError::Compacted)
        ));
        assert!(matches!(
            s.compact(6, &mut WriteBatch::new()),
            Err(MvccError::Compacted)
        ));
        // As etcd: HashKV at the compacted revision is refused, at 0 (the head) it is not.
        assert!(matches!(s.hash_kv(6), Err(MvccError::Compacted)));
        assert!(s.hash_kv(0).is_ok());
        let reopened = MvccStore::open(engine).unwrap();
        assert_eq!(reopened.compact_revision(), 6);
        assert_eq!(reopened.current_revision(), 6);
        let kv = reopened.get(b"a").unwrap().unwrap();
        assert_eq!(
            (
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.value.clone()
            ),
            (2, 4, 3, vec![2])
        );
        assert_eq!(reopened.get(b"b").unwrap(), None);
        assert_eq!(reopened.indexed_keys(), 1);
    }

    #[test]
    fn an_unfinished_txn_changes_nothing() {
        let mut s = store();
        commit(&mut s, |t| {
            t.put(b"a", b"1".to_vec(), 0).unwrap();
        });
        s.take_events();
        let before = s.fingerprint();
        {
            let mut txn = s.write_txn();
            txn.put(b"a", b"2".to_vec(), 0).unwrap();
            txn.put(b"b", b"1".to_vec(), 0).unwrap();
            assert_eq!(txn.delete_range(b"a", &RangeEnd::Single).unwrap().len(), 1);
            let seen = txn
                .range(b"a", &RangeEnd::Unbounded, 0, 0, false, false)
                .unwrap();
            assert_eq!(seen.kvs.len(), 1, "the txn sees its own writes: only b");
            // Dropped here, unfinished.
        }
        assert_eq!(s.fingerprint(), before);
        assert_eq!(
            commit(&mut s, |t| drop(t.put(b"a", b"3".to_vec(), 0).unwrap())),
            3
        );
    }

    #[test]
    fn reads_inside_a_txn_merge_its_writes_in_key_order() {
        let mut s = store();
        commit(&mut s, |t| {
            for k in ["b", "d", "f"] {
                t.put(k.as_bytes(), b"old".to_vec(), 0).unwrap();
            }
        });
        let mut txn = s.write_txn();
        for k in ["a", "d", "e", "g"] {
            txn.put(k.as_bytes(), b"new".to_vec(), 0).unwrap();
        }
        txn.delete_range(b"f", &RangeEnd::Single).unwrap();
        let r = txn
            .range(b"a", &RangeEnd::Unbounded, 0, 0, false, false)
            .unwrap();
        let got: Vec<(&[u8], &[u8])> = r
            .kvs
            .iter()
            .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
            .collect();
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"a", b"new"),
            (b"b", b"old"),
            (b"d", b"new"),
            (b"e", b"new"),
            (b"g", b"new"),
        ];
        assert_eq!((got, r.count, r.rev), (want, 5, 3));
        let limited = txn
            .range(b"b", &RangeEnd::Before(b"g".to_vec()), 0, 2, false, false)
            .unwrap();
        assert_eq!((limited.kvs.len(), limited.count), (2, 3));
        let past = txn
            .range(b"a", &RangeEnd::Unbounded, 2, 0, false, false)
            .unwrap();
        assert_eq!(
            past.kvs.len(),
            3,
            "the revision before the txn shows none of its writes"
        );
        let d = txn.get(b"d").unwrap().unwrap();
        assert_eq!((d.version, d.create_revision, d.mod_revision), (2, 2, 3));
        drop(txn.finish());
        assert_eq!(s.live_keys(), 5);
    }

    #[test]
    fn a_corrupt_revision_counter_is_an_invariant_error_not_a_panic() {
        let engine: SharedEngine = Arc::new(MemoryEngine::new());
        let mut s = MvccStore::open(engine.clone()).unwrap();
        for v in 0..4u8 {
            commit(&mut s, |t| drop(t.put(b"k", vec![v], 0).unwrap()));
        }
        // The counter claims revision 2, but the key already has records up to revision 5.
        let mut batch = WriteBatch::new();
        batch.put(
            Keyspace::Meta,
            META_CURRENT_REV,
            2i64.to_be_bytes().to_vec(),
        );
        engine.write(batch, Durability::Sync).unwrap();
        let mut s = MvccStore::open(engine).unwrap();
        let before = s.fingerprint();
        let mut txn = s.write_txn();
        assert!(matches!(
            txn.put(b"k", b"x".to_vec(), 0),
            Err(MvccError::Invariant(_))
        ));
        drop(txn);
        assert_eq!(s.fingerprint(), before);
    }
}
