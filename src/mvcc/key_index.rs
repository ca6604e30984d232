//! The in-memory key index: for every key, its life as a list of generations.
//!
//! A generation runs from a creation to a deletion (tombstone). The last generation is the open one;
//! when the key is currently deleted it is empty. Compaction drops whole generations that ended at or
//! before the compaction revision and, inside the surviving generation, every revision older than the
//! newest one at or below it. Rebuilt from the `Kv` keyspace on start.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use smallvec::SmallVec;

use super::revision::Revision;

/// One creation-to-deletion span of a key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Generation {
    /// Main revision of the creation (the key's `create_revision`).
    created: i64,
    /// Version of the newest revision in `revs`.
    ver: i64,
    /// Every modification still kept, oldest first. In a closed generation the last is the tombstone.
    /// Inline while there is one (most keys between compactions, every key after one): a key
    /// costs no allocation of its own beyond its name.
    revs: SmallVec<[Revision; 1]>,
}

/// What the index knows of a key at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision of the record holding the key's value then.
    pub modified: Revision,
    /// `create_revision` of the generation.
    pub created: i64,
    /// `version` then.
    pub version: i64,
}

/// The generations of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyIndex {
    /// Inline while there is one (a key never deleted): see [`Generation::revs`].
    generations: SmallVec<[Generation; 1]>,
}

impl KeyIndex {
    fn open_generation(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    /// Record a modification at `rev` (which must be newer than every recorded one).
    pub fn put(&mut self, rev: Revision) {
        let g = self.open_generation();
        assert!(
            g.revs.last().is_none_or(|last| *last < rev),
            "key index: put {rev:?} is not newer"
        );
        if g.revs.is_empty() {
            g.created = rev.main;
            g.ver = 0;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Rebuild from a stored record: like `put`, but the creation revision and version come from the
    /// record, because compaction may have removed the revisions that would let us count them.
    pub fn restore(&mut self, rev: Revision, created: i64, version: i64) {
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(rev);
        g.ver = version;
    }

    /// Record a deletion at `rev`, closing the open generation. Returns false (and changes nothing) if
    /// the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(|g| g.revs.is_empty()) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// The key as of store revision `at`, or `None` if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let last = self.generations.len().checked_sub(1)?;
        for (gi, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            let n = g.revs.partition_point(|r| r.main <= at);
            let idx = n - 1;
            let closed = gi != last;
            if closed && idx == g.revs.len() - 1 {
                return None; // the newest revision at `at` is the tombstone
            }
            return Some(KeyAt {
                modified: g.revs[idx],
                created: g.created,
                version: g.ver - (g.revs.len() - 1 - idx) as i64,
            });
        }
        None
    }

    /// Drop history at or below `at` that no read at `at` or later can see. The revision still needed
    /// to read the key at `at` goes into `keep`. Returns true when nothing is left of the key.
    pub fn compact(&mut self, at: i64, keep: &mut BTreeSet<Revision>) -> bool {
        // Generations closed by a tombstone at or below `at` are invisible from `at` on.
        let mut drop = 0;
        while drop + 1 < self.generations.len() {
            match self.generations[drop].revs.last() {
                Some(tomb) if tomb.main <= at => drop += 1,
                _ => break,
            }
        }
        self.generations.drain(..drop);
        if let Some(g) = self.generations.first_mut() {
            let n = g.revs.partition_point(|r| r.main <= at);
            if n > 0 {
                keep.insert(g.revs[n - 1]);
                g.revs.drain(..n - 1);
            }
        }
        self.generations.iter().all(|g| g.revs.is_empty())
    }

    /// The newest revision recorded for the key (a put or a tombstone), if any.
    pub fn newest(&self) -> Option<Revision> {
        self.generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
    }

    /// True when the key exists at the head (its open generation has a revision).
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// True when the key has no revisions left at all.
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }
}

/// Where a range ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// Just the one key.
    Single,
    /// Every key at or after the start.
    Unbounded,
    /// Keys before this one (exclusive).
    Before(Vec<u8>),
}

impl RangeEnd {
    /// etcd's encoding: empty = single key, `"\0"` = unbounded, anything else = exclusive end.
    pub fn from_etcd(range_end: &[u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    /// Whether `key` lies in the range that starts at `start`.
    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < end.as_slice(),
        }
    }
}

/// Every key's index, ordered by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyIndexTree {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    /// How many keys exist at the head, kept as puts and deletions go by so that counting them
    /// (`/metrics` scrapes it) costs nothing instead of a walk over every key under the store's
    /// lock. Compaction never changes it: it drops only history no head read sees.
    live: usize,
}

impl KeyIndexTree {
    /// Record a put of `key` at `rev`.
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        match self.keys.get_mut(key) {
            Some(ki) => {
                if !ki.is_live() {
                    self.live += 1;
                }
                ki.put(rev);
            }
            None => {
                let mut ki = KeyIndex::default();
                ki.put(rev);
                self.keys.insert(key.to_vec(), ki);
                self.live += 1;
            }
        }
    }

    /// Rebuild one stored record (see [`KeyIndex::restore`]). Takes the key owned: the caller
    /// decoded it into a buffer of its own, which becomes the index's copy if the key is new.
    pub fn restore(&mut self, key: Vec<u8>, rev: Revision, created: i64, version: i64) {
        let ki = self.keys.entry(key).or_default();
        if !ki.is_live() {
            self.live += 1;
        }
        ki.restore(rev, created, version);
    }

    /// Record a deletion of `key` at `rev`; false if the key was not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        let deleted = self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev));
        if deleted {
            self.live -= 1;
        }
        deleted
    }

    /// The newest revision recorded for `key` (a put or a tombstone), if any.
    pub fn newest(&self, key: &[u8]) -> Option<Revision> {
        self.keys.get(key)?.newest()
    }

    /// Number of keys that exist at the head revision.
    pub fn live(&self) -> usize {
        self.live
    }

    /// `key` as of revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    /// Visit the keys of `[start, end)` that exist at `at`, in key order; `visit` returns false to stop.
    pub fn visit(
        &self,
        start: &[u8],
        end: &RangeEnd,
        at: i64,
        mut visit: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        if let RangeEnd::Single = end {
            if let Some(k) = self.get(start, at) {
                visit(start, k);
            }
            return;
        }
        let upper = match end {
            RangeEnd::Before(e) if e.as_slice() <= start => return,
            RangeEnd::Before(e) => Bound::Excluded(e.as_slice()),
            _ => Bound::Unbounded,
        };
        for (key, ki) in self.keys.range::<[u8], _>((Bound::Included(start), upper)) {
            if let Some(k) = ki.get(at) {
                if !visit(key, k) {
                    return;
                }
            }
        }
    }

    /// One bounded piece of a range walk: visit the keys of `[start, end)` that exist at `at`, in
    /// key order, looking at no more than `max_keys` (at least one) keys of the index, live at
    /// `at` or not. `visit` also learns whether the revision it gets is the key's newest and the
    /// key exists at the head (then the key's current lease attachment is that record's lease).
    /// Returns the key the next piece starts at, or `None` once the range is done.
    pub fn visit_piece(
        &self,
        start: &[u8],
        end: &RangeEnd,
        at: i64,
        max_keys: usize,
        mut visit: impl FnMut(&[u8], KeyAt, bool),
    ) -> Option<Vec<u8>> {
        let head = |ki: &KeyIndex, k: &KeyAt| ki.is_live() && ki.newest() == Some(k.modified);
        if let RangeEnd::Single = end {
            if let Some(ki) = self.keys.get(start) {
                if let Some(k) = ki.get(at) {
                    visit(start, k, head(ki, &k));
                }
            }
            return None;
        }
        let upper = match end {
            RangeEnd::Before(e) if e.as_slice() <= start => return None,
            RangeEnd::Before(e) => Bound::Excluded(e.as_slice()),
            _ => Bound::Unbounded,
        };
        let keys = self.keys.range::<[u8], _>((Bound::Included(start), upper));
        for (looked, (key, ki)) in keys.enumerate() {
            if looked >= max_keys.max(1) {
                return Some(key.clone());
            }
            if let Some(k) = ki.get(at) {
                visit(key, k, head(ki, &k));
            }
        }
        None
    }

    /// Compact at most `limit` keys (at least one), in key order from `from` (inclusive), at
    /// `at`: one bounded step of a compaction that runs in the background. Returns the key to
    /// continue from, or `None` once the last key was compacted. Reads at `at` or later see the
    /// same before and after, so a compaction half done is invisible to them.
    pub fn compact_batch(&mut self, from: &[u8], at: i64, limit: usize) -> Option<Vec<u8>> {
        let mut batch: Vec<Vec<u8>> = self
            .keys
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .take(limit.max(1).saturating_add(1))
            .map(|(k, _)| k.clone())
            .collect();
        let next = if batch.len() > limit.max(1) {
            batch.pop()
        } else {
            None
        };
        let mut scratch = BTreeSet::new();
        for key in batch {
            let Some(ki) = self.keys.get_mut(&key) else {
                continue;
            };
            let was_live = ki.is_live();
            if ki.compact(at, &mut scratch) {
                self.keys.remove(&key);
            }
            debug_assert_eq!(
                was_live,
                self.keys.get(&key).is_some_and(|ki| ki.is_live()),
                "compaction changed whether {key:?} exists at the head"
            );
            scratch.clear();
        }
        next
    }

    /// Compact every key at `at`; returns the revisions at or below `at` that must be kept.
    pub fn compact(&mut self, at: i64) -> BTreeSet<Revision> {
        let mut keep = BTreeSet::new();
        self.keys.retain(|_, ki| !ki.compact(at, &mut keep));
        debug_assert_eq!(
            self.live,
            self.keys.values().filter(|ki| ki.is_live()).count(),
            "compaction changed which keys exist at the head"
        );
        keep
    }

    /// Number of keys with any history left.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key has history left.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put@2 put@4 del@6 put@8 put@10
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        ki
    }

    #[test]
    fn get_walks_generations() {
        let ki = sample();
        assert_eq!(ki.get(1), None);
        assert_eq!(
            ki.get(2),
            Some(KeyAt {
                modified: r(2),
                created: 2,
                version: 1
            })
        );
        assert_eq!(
            ki.get(5),
            Some(KeyAt {
                modified: r(4),
                created: 2,
                version: 2
            })
        );
        assert_eq!(ki.get(6), None, "deleted at 6");
        assert_eq!(ki.get(7), None);
        assert_eq!(
            ki.get(8),
            Some(KeyAt {
                modified: r(8),
                created: 8,
                version: 1
            })
        );
        assert_eq!(
            ki.get(100),
            Some(KeyAt {
                modified: r(10),
                created: 8,
                version: 2
            })
        );
    }

    #[test]
    fn tombstone_of_a_dead_key_is_refused() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(2)));
        ki.put(r(3));
        assert!(ki.tombstone(r(4)));
        assert!(!ki.tombstone(r(5)));
        assert_eq!(ki.get(5), None);
    }

    #[test]
    fn compaction_inside_a_generation_keeps_the_visible_revision() {
        let mut ki = sample();
        let mut keep = BTreeSet::new();
        assert!(!ki.compact(5, &mut keep));
        assert_eq!(keep.into_iter().collect::<Vec<_>>(), vec![r(4)]);
        assert_eq!(
            ki.get(5),
            Some(KeyAt {
                modified: r(4),
                created: 2,
                version: 2
            })
        );
        assert_eq!(ki.get(100).map(|k| k.version), Some(2));
    }

    #[test]
    fn compaction_at_a_tombstone_drops_the_generation() {
        let mut ki = sample();
        let mut keep = BTreeSet::new();
        assert!(!ki.compact(6, &mut keep));
        assert!(
            keep.is_empty(),
            "nothing of the first generation is visible at 6"
        );
        assert_eq!(ki.get(6), None);
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: r(8),
                created: 8,
                version: 1
            })
        );
        let mut keep = BTreeSet::new();
        assert!(!ki.compact(9, &mut keep));
        assert_eq!(keep.into_iter().collect::<Vec<_>>(), vec![r(8)]);
    }

    #[test]
    fn compaction_of_a_deleted_key_empties_it() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        let mut keep = BTreeSet::new();
        assert!(!ki.compact(2, &mut keep), "still visible at 2");
        assert!(ki.compact(3, &mut keep));
        assert!(ki.is_empty());
    }

    #[test]
    fn restore_uses_the_record_counts() {
        let mut ki = KeyIndex::default();
        // After compaction only revision 9 (version 4, created at 3) is left on disk.
        ki.restore(r(9), 3, 4);
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: r(9),
                created: 3,
                version: 4
            })
        );
        ki.put(r(11));
        assert_eq!(
            ki.get(11),
            Some(KeyAt {
                modified: r(11),
                created: 3,
                version: 5
            })
        );
    }

    #[test]
    fn tree_visit_respects_range_end_and_revision() {
        let mut t = KeyIndexTree::default();
        t.put(b"a", r(2));
        t.put(b"b", r(3));
        t.put(b"c", r(4));
        assert!(t.tombstone(b"b", r(5)));
        let keys = |end: RangeEnd, at: i64| {
            let mut out = Vec::new();
            t.visit(b"a", &end, at, |k, _| {
                out.push(k.to_vec());
                true
            });
            out
        };
        assert_eq!(keys(RangeEnd::Single, 10), vec![b"a".to_vec()]);
        assert_eq!(
            keys(RangeEnd::Unbounded, 10),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(RangeEnd::Unbounded, 4),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(RangeEnd::Before(b"c".to_vec()), 4),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(keys(RangeEnd::Before(b"a".to_vec()), 4).is_empty());
        assert_eq!(RangeEnd::from_etcd(b""), RangeEnd::Single);
        assert_eq!(RangeEnd::from_etcd(b"\0"), RangeEnd::Unbounded);
        let keep = t.compact(5);
        assert_eq!(keep.len(), 2, "a@2 and c@4 stay; b's generation ended at 5");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn compaction_in_batches_ends_like_compaction_at_once() {
        let mut whole = KeyIndexTree::default();
        for (i, key) in [b"a", b"b", b"c", b"d", b"e"].iter().enumerate() {
            let base = 2 + 10 * i as i64;
            whole.put(*key, r(base));
            whole.put(*key, r(base + 1));
            if i % 2 == 0 {
                assert!(whole.tombstone(*key, r(base + 2)));
            }
        }
        let mut batched = whole.clone();
        whole.compact(40);
        let mut from = Vec::new();
        let mut steps = 0;
        while let Some(next) = batched.compact_batch(&from, 40, 2) {
            assert!(next > from, "the cursor moves forward");
            from = next;
            steps += 1;
        }
        assert_eq!(steps, 2, "five keys, two per batch: three batches");
        assert_eq!(batched, whole);
        assert_eq!(batched.len(), 3, "a and c ended before 40, e after it");
    }

    #[test]
    fn the_live_count_follows_puts_deletes_restores_and_compaction() {
        let mut t = KeyIndexTree::default();
        t.put(b"a", r(2));
        t.put(b"a", r(3));
        t.put(b"b", r(4));
        assert_eq!(t.live(), 2, "a second put of a does not count it twice");
        assert!(t.tombstone(b"a", r(5)));
        assert!(!t.tombstone(b"a", r(6)));
        assert!(!t.tombstone(b"zz", r(6)));
        assert_eq!(t.live(), 1, "only a real deletion counts");
        t.put(b"a", r(7));
        assert_eq!(t.live(), 2, "a key put again after its deletion is back");
        assert!(t.tombstone(b"b", r(8)));
        t.compact(8);
        assert_eq!(t.live(), 1);
        assert_eq!(t.len(), 1, "b is gone entirely");

        // Rebuilt from records in revision order, as on start.
        let mut restored = KeyIndexTree::default();
        restored.restore(b"a".to_vec(), r(2), 2, 1);
        restored.restore(b"a".to_vec(), r(3), 2, 2);
        restored.restore(b"b".to_vec(), r(4), 4, 1);
        assert!(restored.tombstone(b"a", r(5)));
        restored.restore(b"a".to_vec(), r(7), 7, 1);
        assert_eq!(restored.live(), 2);
    }
}
