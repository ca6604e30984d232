//! [`WriteTxn`]: the changes of one applied command, staged apart from the store and published
//! together with the engine batch, or dropped without a trace.

use super::read::collect;
use super::*;

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

impl<'a> WriteTxn<'a> {
    /// A transaction over `store` at its current revision, with nothing staged.
    pub(super) fn new(store: &'a mut MvccStore) -> Self {
        let begin_rev = store.current_rev;
        WriteTxn {
            store,
            begin_rev,
            sub: 0,
            batch: WriteBatch::new(),
            staged: Staged::default(),
        }
    }
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

    pub(super) fn next_rev(&mut self) -> Revision {
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

    pub(super) fn load(&self, rev: Revision) -> Result<KeyValue> {
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
    pub(super) fn visit_staged(
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

    pub(super) fn publish(self, bump: bool) -> (WriteBatch, i64) {
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
