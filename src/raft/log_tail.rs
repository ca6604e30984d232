//! The newest entries of the raft log, kept in memory beside the engine.
//!
//! openraft reads back what it has just appended: the state machine's worker reads each committed
//! entry from the log before applying it, and replication reads the entries it sends. From the
//! engine that is an iterator per read (RocksDB: a seek through the memtable, the table files and
//! the range deletions that purges leave), 7% of a member's CPU per single-client put. The tail
//! answers those reads from memory when it holds the whole range asked for; anything else goes to
//! the engine, so the tail only has to hold a contiguous run of the log's newest entries, which
//! the log store keeps equal to the engine's by updating both on every append, truncation and
//! purge. Its size is bounded in bytes ([`limits::RAFT_LOG_TAIL_BYTES`]).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use super::Entry;
use crate::limits;

/// A contiguous run of the log's newest entries, each with its encoded size.
#[derive(Default)]
pub struct LogTail {
    inner: Mutex<Run>,
}

#[derive(Default)]
struct Run {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Run {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }
}

impl LogTail {
    fn run(&self) -> MutexGuard<'_, Run> {
        // Nothing panics while holding the lock; a poisoned tail is still a consistent one.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries just written to the engine, in index order, with their encoded sizes. A run that
    /// does not continue the tail replaces it (the log was truncated or purged past it elsewhere).
    pub fn appended(&self, entries: Vec<(Entry, usize)>) {
        let mut run = self.run();
        for (entry, size) in entries {
            if run
                .last_index()
                .is_some_and(|last| last + 1 != entry.log_id.index)
            {
                run.clear();
            }
            run.bytes += size;
            run.entries.push_back((entry, size));
        }
        while run.bytes > limits::RAFT_LOG_TAIL_BYTES {
            run.pop_front();
        }
    }

    /// The log keeps entries up to `last` (inclusive; `None`: none at all).
    pub fn truncated_after(&self, last: Option<u64>) {
        let mut run = self.run();
        while run.last_index().is_some_and(|i| Some(i) > last) {
            run.pop_back();
        }
    }

    /// The log no longer has entries up to `upto` (inclusive).
    pub fn purged_upto(&self, upto: u64) {
        let mut run = self.run();
        while run.first_index().is_some_and(|i| i <= upto) {
            run.pop_front();
        }
    }

    /// Entries `start..end` (`end` exclusive; `None`: through the last), if the tail holds every
    /// one of them; `None` sends the caller to the engine.
    pub fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let run = self.run();
        let first = run.first_index()?;
        let last = run.last_index()?;
        let end = end.unwrap_or(last + 1);
        if start < first || end > last + 1 {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        let out: Vec<Entry> = run
            .entries
            .range(from..to)
            .map(|(e, _)| e.clone())
            .collect();
        debug_assert!(out
            .iter()
            .zip(start..)
            .all(|(e, index)| e.log_id.index == index));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{LogId, RaftCommand};
    use openraft::entry::RaftEntry;

    fn entry(index: u64) -> (Entry, usize) {
        let log_id = LogId {
            leader_id: openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        };
        let e = Entry::new_normal(
            log_id,
            RaftCommand {
                bytes: vec![0; 100],
            },
        );
        (e, 100)
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let tail = LogTail::default();
        assert_eq!(indexes(tail.get(1, Some(2))), None, "empty");
        tail.appended((5..=9).map(entry).collect());
        assert_eq!(indexes(tail.get(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(tail.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(tail.get(7, Some(7))), Some(vec![]));
        assert_eq!(
            indexes(tail.get(4, Some(6))),
            None,
            "starts before the tail"
        );
        assert_eq!(indexes(tail.get(8, Some(11))), None, "ends past the tail");
    }

    #[test]
    fn follows_truncation_purge_and_gaps() {
        let tail = LogTail::default();
        tail.appended((1..=6).map(entry).collect());
        tail.truncated_after(Some(4));
        assert_eq!(indexes(tail.get(1, None)), Some(vec![1, 2, 3, 4]));
        tail.appended(vec![entry(5)]);
        tail.purged_upto(2);
        assert_eq!(indexes(tail.get(3, None)), Some(vec![3, 4, 5]));
        assert_eq!(indexes(tail.get(2, None)), None);
        // A run that does not continue the tail replaces it.
        tail.appended(vec![entry(9)]);
        assert_eq!(indexes(tail.get(9, None)), Some(vec![9]));
        assert_eq!(indexes(tail.get(5, None)), None);
        tail.truncated_after(None);
        assert_eq!(indexes(tail.get(9, None)), None);
    }

    #[test]
    fn keeps_within_its_byte_bound() {
        let tail = LogTail::default();
        let n = (limits::RAFT_LOG_TAIL_BYTES / 100) as u64 + 50;
        tail.appended((1..=n).map(entry).collect());
        let run = tail.run();
        assert!(run.bytes <= limits::RAFT_LOG_TAIL_BYTES);
        assert_eq!(run.last_index(), Some(n));
        assert_eq!(run.first_index(), Some(n - run.entries.len() as u64 + 1));
    }
}
