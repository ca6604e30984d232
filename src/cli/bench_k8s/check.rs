//! The workload's consistency checks: a watcher's events against its progress notifications and
//! the writes the workload saw acknowledged.

use super::*;

/// Violations of a check: the first few described, all counted.
#[derive(Debug, Default, Clone)]
pub(crate) struct Violations {
    pub(crate) count: u64,
    pub(crate) first: Vec<String>,
}

impl Violations {
    pub(super) fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < VIOLATIONS_KEPT {
            self.first.push(what);
        }
    }

    pub(super) fn merge(&mut self, other: Violations) {
        self.count += other.count;
        for v in other.first {
            if self.first.len() < VIOLATIONS_KEPT {
                self.first.push(v);
            }
        }
    }
}

/// The consistency check of one watcher, fed its events and progress notifications in the order
/// they arrive.
#[derive(Debug)]
pub(crate) struct WatchCheck {
    start: i64,
    last: Option<(i64, Vec<u8>)>,
    progress: i64,
    /// Every event's revision and arrival, for the delivery latencies of the report.
    pub(super) received: Vec<(i64, rt::Instant)>,
    pub(crate) violations: Violations,
}

impl WatchCheck {
    /// A watcher created with `start_revision` `start`.
    pub(crate) fn new(start: i64) -> WatchCheck {
        WatchCheck {
            start,
            last: None,
            progress: 0,
            received: Vec::new(),
            violations: Violations::default(),
        }
    }

    /// An event at `rev` on `key`, arrived `at`.
    pub(crate) fn event(&mut self, rev: i64, key: &[u8], at: rt::Instant) {
        let shown = String::from_utf8_lossy(key);
        if rev < self.start {
            self.violations.add(format!(
                "event at revision {rev} ({shown}) before the start revision {}",
                self.start
            ));
        }
        if rev <= self.progress {
            self.violations.add(format!(
                "event at revision {rev} ({shown}) after a progress notification at {}",
                self.progress
            ));
        }
        if let Some((last_rev, last_key)) = &self.last {
            if rev < *last_rev {
                self.violations.add(format!(
                    "event at revision {rev} ({shown}) after one at {last_rev}"
                ));
            } else if rev == *last_rev && key == last_key.as_slice() {
                self.violations
                    .add(format!("event at revision {rev} ({shown}) delivered twice"));
            }
        }
        if self.last.as_ref().is_none_or(|(r, _)| rev >= *r) {
            self.last = Some((rev, key.to_vec()));
        }
        self.received.push((rev, at));
    }

    /// A progress notification: every event up to `rev` has been delivered.
    pub(crate) fn progress(&mut self, rev: i64) {
        self.progress = self.progress.max(rev);
    }

    /// The revision up to which this watcher has seen everything.
    pub(crate) fn through(&self) -> i64 {
        let last = self.last.as_ref().map_or(0, |(r, _)| *r);
        self.progress.max(last)
    }

    /// Of `acked` revisions (writes on this watcher's prefix), those it never delivered.
    pub(crate) fn missing(&self, acked: impl IntoIterator<Item = i64>) -> Vec<i64> {
        let got: BTreeSet<i64> = self.received.iter().map(|(r, _)| *r).collect();
        acked
            .into_iter()
            .filter(|r| *r >= self.start && !got.contains(r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_in_order_and_complete_passes() {
        let t = rt::now();
        let mut c = WatchCheck::new(10);
        c.event(10, b"a", t);
        c.event(11, b"a", t);
        // Two keys of one revision (one Txn) are fine.
        c.event(12, b"a", t);
        c.event(12, b"b", t);
        c.progress(15);
        c.event(16, b"c", t);
        assert_eq!(c.violations.count, 0, "{:?}", c.violations.first);
        assert_eq!(c.through(), 16);
        // Revisions before the watcher's start are not its to deliver.
        assert!(c.missing([5, 10, 11, 12, 16]).is_empty());
    }

    #[test]
    fn an_event_out_of_order_is_a_violation() {
        let t = rt::now();
        let mut c = WatchCheck::new(1);
        c.event(5, b"a", t);
        c.event(4, b"b", t);
        assert_eq!(c.violations.count, 1);
        assert!(c.violations.first[0].contains("after one at 5"));
        assert_eq!(c.through(), 5);
    }

    #[test]
    fn an_event_after_a_progress_notification_covering_it_is_a_violation() {
        let t = rt::now();
        let mut c = WatchCheck::new(1);
        c.event(3, b"a", t);
        c.progress(8);
        c.event(7, b"b", t);
        assert_eq!(c.violations.count, 1);
        assert!(c.violations.first[0].contains("progress notification at 8"));
    }

    #[test]
    fn a_duplicate_or_early_event_is_a_violation() {
        let t = rt::now();
        let mut c = WatchCheck::new(10);
        c.event(9, b"a", t);
        c.event(11, b"a", t);
        c.event(11, b"a", t);
        assert_eq!(c.violations.count, 2, "{:?}", c.violations.first);
        assert!(c.violations.first[0].contains("before the start revision 10"));
        assert!(c.violations.first[1].contains("delivered twice"));
    }

    #[test]
    fn a_missing_acknowledged_write_is_reported() {
        let t = rt::now();
        let mut c = WatchCheck::new(3);
        c.event(3, b"a", t);
        c.event(5, b"b", t);
        assert_eq!(c.missing([3, 4, 5, 6]), vec![4, 6]);
    }

    #[test]
    fn violations_keep_the_first_few_and_count_all() {
        let mut v = Violations::default();
        for i in 0..(VIOLATIONS_KEPT + 5) {
            v.add(format!("{i}"));
        }
        assert_eq!(v.count, (VIOLATIONS_KEPT + 5) as u64);
        assert_eq!(v.first.len(), VIOLATIONS_KEPT);
    }
}
