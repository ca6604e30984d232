//! Watchers by key: which watchers does a changed key concern, without visiting the others.
//!
//! As etcd's watcher group does, single-key watchers sit in a map from their key and range
//! watchers in an interval tree, so finding the watchers of one event costs a lookup plus a walk
//! of the tree's paths that can hold a match (`O(log n + m)` for `m` matches), whatever the number
//! of watchers. The tree is a treap (a binary search tree by range start, heap-ordered by a random
//! priority, each node knowing the largest end below it); priorities come from the runtime seam's
//! random source, so a client choosing its ranges cannot choose the tree's shape, and a simulation
//! seed still fixes it.

use std::collections::{BTreeMap, BTreeSet};

use crate::mvcc::RangeEnd;

/// Identifies a watcher: the stream it belongs to and its id within that stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatcherKey {
    pub stream: u64,
    pub watch_id: i64,
}

/// The exclusive end of a range watch; `Unbounded` sorts after every key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Before(Vec<u8>),
    Unbounded,
}

impl End {
    fn after(&self, key: &[u8]) -> bool {
        match self {
            End::Before(e) => e.as_slice() > key,
            End::Unbounded => true,
        }
    }
}

struct Node {
    start: Vec<u8>,
    id: WatcherKey,
    end: End,
    priority: u64,
    /// The largest `end` in this subtree.
    max_end: End,
    left: Tree,
    right: Tree,
}

type Tree = Option<Box<Node>>;

impl Node {
    fn fix(&mut self) {
        let mut max = self.end.clone();
        for child in [&self.left, &self.right].into_iter().flatten() {
            if child.max_end > max {
                max = child.max_end.clone();
            }
        }
        self.max_end = max;
    }

    fn order(&self) -> (&[u8], WatcherKey) {
        (&self.start, self.id)
    }
}

/// Split `tree` into the nodes ordered before `at` and the rest.
fn split(tree: Tree, at: (&[u8], WatcherKey)) -> (Tree, Tree) {
    let Some(mut node) = tree else {
        return (None, None);
    };
    if node.order() < at {
        let (l, r) = split(node.right.take(), at);
        node.right = l;
        node.fix();
        (Some(node), r)
    } else {
        let (l, r) = split(node.left.take(), at);
        node.left = r;
        node.fix();
        (l, Some(node))
    }
}

/// Join two trees, every node of `left` ordered before every node of `right`.
fn merge(left: Tree, right: Tree) -> Tree {
    match (left, right) {
        (None, t) | (t, None) => t,
        (Some(mut l), Some(mut r)) => {
            if l.priority >= r.priority {
                l.right = merge(l.right.take(), Some(r));
                l.fix();
                Some(l)
            } else {
                r.left = merge(Some(l), r.left.take());
                r.fix();
                Some(r)
            }
        }
    }
}

fn insert(tree: Tree, mut node: Box<Node>) -> Tree {
    match tree {
        Some(mut t) if t.priority >= node.priority => {
            if node.order() < t.order() {
                t.left = insert(t.left.take(), node);
            } else {
                t.right = insert(t.right.take(), node);
            }
            t.fix();
            Some(t)
        }
        rest => {
            let (l, r) = split(rest, node.order());
            node.left = l;
            node.right = r;
            node.fix();
            Some(node)
        }
    }
}

fn remove(tree: &mut Tree, at: (&[u8], WatcherKey)) -> bool {
    let Some(node) = tree else { return false };
    let ord = at.cmp(&node.order());
    let removed = match ord {
        std::cmp::Ordering::Less => remove(&mut node.left, at),
        std::cmp::Ordering::Greater => remove(&mut node.right, at),
        std::cmp::Ordering::Equal => {
            let (l, r) = (node.left.take(), node.right.take());
            *tree = merge(l, r);
            return true;
        }
    };
    if removed {
        node.fix();
    }
    removed
}

fn stab(tree: &Tree, key: &[u8], found: &mut impl FnMut(WatcherKey)) {
    let Some(node) = tree else { return };
    if !node.max_end.after(key) {
        return; // every range below ends at or before `key`
    }
    stab(&node.left, key, found);
    if node.start.as_slice() <= key {
        if node.end.after(key) {
            found(node.id);
        }
        // Only ranges that start at or before `key` can hold it.
        stab(&node.right, key, found);
    }
}

/// Every watcher's key or range, for finding the watchers of a changed key.
#[derive(Default)]
pub(super) struct WatcherIndex {
    single: BTreeMap<Vec<u8>, BTreeSet<WatcherKey>>,
    ranges: Tree,
}

impl WatcherIndex {
    /// Index watcher `id` over `[key, end)`.
    pub fn insert(&mut self, id: WatcherKey, key: &[u8], end: &RangeEnd) {
        let end = match end {
            RangeEnd::Single => {
                self.single.entry(key.to_vec()).or_default().insert(id);
                return;
            }
            RangeEnd::Unbounded => End::Unbounded,
            RangeEnd::Before(e) => End::Before(e.clone()),
        };
        let node = Box::new(Node {
            start: key.to_vec(),
            id,
            max_end: end.clone(),
            end,
            priority: crate::rt::random_u64(),
            left: None,
            right: None,
        });
        self.ranges = insert(self.ranges.take(), node);
    }

    /// Forget watcher `id`, indexed over `[key, end)`.
    pub fn remove(&mut self, id: WatcherKey, key: &[u8], end: &RangeEnd) {
        if let RangeEnd::Single = end {
            if let Some(set) = self.single.get_mut(key) {
                set.remove(&id);
                if set.is_empty() {
                    self.single.remove(key);
                }
            }
            return;
        }
        let removed = remove(&mut self.ranges, (key, id));
        debug_assert!(removed, "watcher {id:?} was indexed");
    }

    /// Call `found` with every watcher whose key or range holds `key` (each once, in no
    /// particular order).
    pub fn matching(&self, key: &[u8], mut found: impl FnMut(WatcherKey)) {
        if let Some(set) = self.single.get(key) {
            set.iter().copied().for_each(&mut found);
        }
        stab(&self.ranges, key, &mut found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> WatcherKey {
        WatcherKey {
            stream: 1,
            watch_id: n,
        }
    }

    fn found(index: &WatcherIndex, key: &[u8]) -> Vec<i64> {
        let mut out = Vec::new();
        index.matching(key, |k| out.push(k.watch_id));
        out.sort_unstable();
        out
    }

    /// The index agrees with checking every watcher's range, through inserts and removals.
    #[test]
    fn finds_exactly_the_watchers_whose_range_holds_the_key() {
        let mut index = WatcherIndex::default();
        let mut all: Vec<(i64, Vec<u8>, RangeEnd)> = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8 % 12
        };
        for n in 0..400 {
            let start = vec![b'a' + next()];
            let end = match next() % 3 {
                0 => RangeEnd::Single,
                1 => RangeEnd::Unbounded,
                _ => RangeEnd::Before(vec![start[0] + 1 + next() % 4]),
            };
            index.insert(id(n), &start, &end);
            all.push((n, start, end));
            if n % 3 == 0 {
                let (gone, start, end) = all.remove(usize::from(next()) % all.len());
                index.remove(id(gone), &start, &end);
            }
        }
        for c in b'a'..=b'z' {
            for key in [vec![c], vec![c, 0], vec![c, b'x']] {
                let mut want: Vec<i64> = all
                    .iter()
                    .filter(|(_, s, e)| e.contains(s, &key))
                    .map(|(n, _, _)| *n)
                    .collect();
                want.sort_unstable();
                assert_eq!(found(&index, &key), want, "key {key:?}");
            }
        }
        for (n, start, end) in all {
            index.remove(id(n), &start, &end);
        }
        assert!(index.single.is_empty() && index.ranges.is_none());
    }
}
