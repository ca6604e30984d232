//! Reading the store: ranges whole, in steps or in chunks, compares that stop at the first key
//! that fails, and the record lookups under them (one scan over dense revisions, batched lookups
//! over scattered ones).

use super::*;

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
    pub(super) fn keep(&mut self, piece: Vec<KeyValue>) {
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
pub(super) fn keys_only_record<'a>(
    key: &[u8],
    k: KeyAt,
    attached: &mut std::iter::Peekable<impl Iterator<Item = (&'a [u8], i64)>>,
) -> KeyValue {
    let mut kv = KeyValue::default();
    keys_only_record_into(key, k, attached, &mut kv);
    kv
}

/// [`keys_only_record`] written over `kv`, reusing its key's buffer.
pub(super) fn keys_only_record_into<'a>(
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
pub(super) fn read_records(
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
pub(super) fn read_scattered(
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
pub(super) fn decode_record(rev: Revision, raw: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(raw).map_err(|e| MvccError::from(corrupt(format!("record {rev:?}: {e}"))))
}

/// The key index names a record the engine does not have: the store is corrupt.
pub(super) fn missing_record(rev: Revision) -> StorageError {
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

/// Gather the revisions a range visit offers: at most `limit` (0: all) unless `count_only`; returns
/// how many keys were offered in all.
pub(super) fn collect(
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

impl MvccStore {
    pub(super) fn load(&self, rev: Revision) -> Result<KeyValue> {
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
    pub(super) fn range_at(
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
    pub(super) fn record_of<'a>(
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
    pub(super) fn loaded_record(&self, k: KeyAt, keys_only: bool) -> Result<KeyValue> {
        let mut kv = self.load(k.modified)?;
        if keys_only {
            kv.value.clear();
        }
        Ok(kv)
    }

    /// Whether a keys-only read may take `k`, the record of `key` seen at revision `at`, from the
    /// key index and the lease table: it is the key's newest (every record seen at the current
    /// revision is), and the lease table tells every record's lease (`unattached_leases`).
    pub(super) fn is_head(&self, key: &[u8], k: KeyAt, at: i64) -> bool {
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
}
