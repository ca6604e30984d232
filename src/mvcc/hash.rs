//! Hashes of stored records, for `Maintenance.HashKV` (the key-value history up to a revision)
//! and `Maintenance.Hash` (everything replicated): members that applied the same log and
//! compactions agree on them.
//!
//! `HashKV` reads the whole history, so it never holds the store's lock for its length: it reads
//! pieces of about `piece_bytes` from an engine view taken when it began, takes the store's lock
//! only briefly after each one, and offers its core to other threads between pieces
//! ([`rt::yield_thread`]). The view holds no lock of the engine's while it is read (the memory
//! engine's own `scan` holds its map's lock for a whole piece, so a write waited for the piece's
//! copy). Checking the compaction revision after each piece keeps the hash sound: a compaction
//! moves it (under the lock) before its physical half deletes anything, and the key index the
//! pieces are checked against is the one of the compaction the hash began at. Holding the store's
//! lock while reading each piece (about a millisecond, then taken again at once) made every put
//! wait about 100 ms.
//!
//! Measured under a flood of `HashKV` on the memory engine (debug build, two cores, the put p99 of
//! a concurrent writer, `tests/abuse.rs`): 4-6 ms, over 10 ms in one run of twenty, with neither
//! the view nor the yield (2 ms without the flood); 2 ms with the yield alone, but 5.7-10.6 ms in
//! three runs of twelve; with both, 1.5-5 ms in 113 runs of 115 (twice about 30 ms, with neither
//! apply nor the hash's holds of the store slow then: cause not found).

use std::ops::Deref;

use super::revision::Revision;
use super::store::MvccStore;
use super::{MvccError, Result};
use crate::limits;
use crate::rt;
use crate::storage::{EngineView, Keyspace, StorageError};

/// FNV-1a (64 bits) over length-prefixed byte strings, folded to 32 bits: the length prefix keeps
/// `("ab", "c")` and `("a", "bc")` apart.
#[derive(Debug, Clone)]
pub struct RecordHasher(u64);

impl Default for RecordHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl RecordHasher {
    /// Add one byte string.
    pub fn feed(&mut self, bytes: &[u8]) {
        for b in (bytes.len() as u64).to_be_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u32 {
        (self.0 ^ (self.0 >> 32)) as u32
    }
}

/// Times a hash starts over because a compaction landed while it ran, before it gives up as if
/// the compaction had passed the hashed revision.
const ATTEMPTS: usize = 3;

impl MvccStore {
    /// A hash of the stored records (key, value, revision) up to `rev` (0: the newest), for
    /// `HashKV`: members that applied the same log and compactions agree on it. `rev` must be
    /// above the compaction revision. As etcd's `HashByRev`, a record at or below the compaction
    /// point counts only if it still holds its key's value at `rev`, so the hash is the same
    /// before, during and after the compaction's physical half.
    pub fn hash_kv(&self, rev: i64) -> Result<u32> {
        Self::hash_kv_in_pieces(|| self, rev, limits::HASH_PIECE_BYTES).map(|(hash, _, _)| hash)
    }

    /// [`MvccStore::hash_kv`] read in pieces of about `piece_bytes` bytes of records (at least
    /// one record) from an engine view, each followed by a brief hold of the store (`lock`), so
    /// writes go on while a large store is hashed; with the revision hashed and the compaction
    /// revision it was hashed at. If a compaction is applied meanwhile the hash starts over (a few times at most, then
    /// `Compacted`, as if it had passed `rev`).
    pub fn hash_kv_in_pieces<G: Deref<Target = MvccStore>>(
        lock: impl Fn() -> G,
        rev: i64,
        piece_bytes: usize,
    ) -> Result<(u32, i64, i64)> {
        for _ in 0..ATTEMPTS {
            let (rev, compact_rev, view) = {
                let store = lock();
                let (current, compacted) = (store.current_revision(), store.compact_revision());
                // As etcd: a revision at or below the compaction is gone (the hash would no
                // longer cover what that revision's history held), one past the head is in the
                // future. 0 is the head, even when the head is the compaction revision.
                if rev > 0 && rev <= compacted {
                    return Err(MvccError::Compacted);
                }
                if rev > current {
                    return Err(MvccError::FutureRevision);
                }
                let rev = if rev <= 0 { current } else { rev };
                // Taken under the lock: the view holds exactly the records up to `current`.
                (rev, compacted, store.engine().view()?)
            };
            let attempt = HashAttempt {
                view,
                rev,
                compact_rev,
                piece_bytes: piece_bytes.max(1),
            };
            if let Some(hash) = attempt.run(&lock)? {
                return Ok((hash, rev, compact_rev));
            }
        }
        Err(MvccError::Compacted)
    }
}

/// One attempt at a `HashKV`, begun at compaction revision `compact_rev`.
struct HashAttempt {
    view: std::sync::Arc<dyn EngineView>,
    rev: i64,
    compact_rev: i64,
    piece_bytes: usize,
}

impl HashAttempt {
    /// The hash, or `None` if the compaction revision moved while it ran. Records come in
    /// revision order (their engine keys are revisions): first those at or below the compaction
    /// point, each of which counts only if the key index says it still holds its key's value at
    /// `rev` (checked under one hold of the lock per piece); then the rest. Every piece is
    /// followed by a look at the compaction revision: the last one is what makes the hash sound
    /// (the revision only grows), the others start over early.
    fn run<G: Deref<Target = MvccStore>>(&self, lock: &impl Fn() -> G) -> Result<Option<u32>> {
        let compacted_end = Revision::new(self.compact_rev.min(self.rev) + 1, 0).to_bytes();
        let end = Revision::new(self.rev + 1, 0).to_bytes();
        let mut hasher = RecordHasher::default();
        let mut piece = Piece::default();
        let mut from = Vec::new();
        loop {
            rt::yield_thread();
            let next = self.read_piece(&from, &compacted_end, &mut piece)?;
            let store = lock();
            if store.compact_revision() != self.compact_rev {
                return Ok(None);
            }
            for (k, v) in piece.records() {
                let (r, tombstone) = decode_record_key(k)?;
                if store.holds_value_at(r, tombstone, v, self.rev)? {
                    hasher.feed(k);
                    hasher.feed(v);
                }
            }
            drop(store);
            match next {
                Some(key) => from = key,
                None => break,
            }
        }
        from = compacted_end.to_vec();
        loop {
            rt::yield_thread();
            let next = self.read_piece(&from, &end, &mut piece)?;
            for (k, v) in piece.records() {
                hasher.feed(k);
                hasher.feed(v);
            }
            if lock().compact_revision() != self.compact_rev {
                return Ok(None);
            }
            match next {
                Some(key) => from = key,
                None => return Ok(Some(hasher.finish())),
            }
        }
    }

    /// Copy the records in `[from, end)` into `piece`, up to about `piece_bytes` bytes (at least
    /// one record); the engine key to go on from, if any are left. Copied, not hashed in place:
    /// the records at or below the compaction point are checked under the store's lock, which a
    /// copy lets the hash take once per piece, not once per record.
    fn read_piece(
        &self,
        from: &[u8],
        end: &[u8],
        piece: &mut Piece,
    ) -> std::result::Result<Option<Vec<u8>>, StorageError> {
        piece.clear();
        let mut next = None;
        // Every record up to a revision, read once: around the block cache.
        self.view
            .scan_uncached(Keyspace::Kv, from, Some(end), &mut |k, v| {
                if piece.bytes.len() >= self.piece_bytes {
                    next = Some(k.to_vec());
                    return false;
                }
                piece.push(k, v);
                true
            })?;
        Ok(next)
    }
}

/// Records copied out of the engine: their bytes one after another, and where each key and value
/// ends. The buffers are reused from piece to piece.
#[derive(Default)]
struct Piece {
    bytes: Vec<u8>,
    /// `(key end, value end)` offsets into `bytes`, one pair per record.
    ends: Vec<(usize, usize)>,
}

impl Piece {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((key_end, self.bytes.len()));
    }

    /// `(key, value)` of each record, in the order pushed.
    fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, value_end)| {
            let record = (&self.bytes[start..key_end], &self.bytes[key_end..value_end]);
            start = value_end;
            record
        })
    }
}

fn decode_record_key(k: &[u8]) -> Result<(Revision, bool)> {
    Revision::from_record_key(k).ok_or_else(|| {
        StorageError::Corrupt {
            ks: Keyspace::Kv,
            reason: format!("undecodable record key {k:?}"),
        }
        .into()
    })
}
