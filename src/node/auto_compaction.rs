//! The leader's own compactions (`--auto-compaction-mode`, `--auto-compaction-retention`), as
//! etcd 3.5's compactors make them. Every member samples its revision; only the leader proposes,
//! so a leader change carries the schedule on. A compaction is an ordinary proposal (the same
//! command a client's `Compact` sends, not physical), so its physical half runs in background
//! batches (`compaction`) and never stalls writes.
//!
//! - Periodic, retention `p`: the revision is sampled every `min(p, 1h) / 10`; once `p` has passed
//!   since the last compaction (the first time) and then every `min(p, 1h)`, the history is
//!   compacted to the oldest sample kept, the revision of about `p` ago.
//! - Revision, retention `r`: every 5 minutes, compacted to the current revision less `r`.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use super::{Node, NodeError};
use crate::apply::ApplyError;
use crate::config::auto_compaction::AutoCompaction;
use crate::limits;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::pb::metastore::command::Op;
use crate::rt;

/// The revisions a periodic compactor keeps, oldest first, and when it compacts.
#[derive(Debug)]
pub struct PeriodicWindow {
    period: Duration,
    samples: VecDeque<i64>,
    since_last: Duration,
    first_done: bool,
}

impl PeriodicWindow {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            samples: VecDeque::new(),
            since_last: Duration::ZERO,
            first_done: false,
        }
    }

    /// How often the revision is sampled: a tenth of the compaction interval.
    pub fn sample_every(&self) -> Duration {
        (self.interval() / limits::AUTO_COMPACTION_SAMPLES_PER_INTERVAL)
            .max(Duration::from_millis(1))
    }

    /// At most an hour between compactions, however long the retention.
    fn interval(&self) -> Duration {
        self.period.min(limits::AUTO_COMPACTION_MAX_INTERVAL)
    }

    /// How many samples span the retention.
    fn kept(&self) -> usize {
        (self.period.as_nanos() / self.sample_every().as_nanos()) as usize + 1
    }

    /// Record `revision`, one sampling period after the last; the revision to compact to, when
    /// it is time.
    pub fn sample(&mut self, revision: i64) -> Option<i64> {
        self.samples.push_back(revision);
        while self.samples.len() > self.kept() {
            self.samples.pop_front();
        }
        self.since_last += self.sample_every();
        let due = if self.first_done {
            self.interval()
        } else {
            self.period
        };
        (self.since_last >= due).then(|| self.samples[0])
    }

    /// The compaction was made (or found made already).
    pub fn compacted(&mut self) {
        self.since_last = Duration::ZERO;
        self.first_done = true;
    }
}

/// Run `setting` for `node` until the node is gone.
pub(super) async fn run_auto_compaction(node: Weak<Node>, setting: AutoCompaction) {
    match setting {
        AutoCompaction::Periodic(period) => {
            let mut window = PeriodicWindow::new(period);
            loop {
                rt::sleep(window.sample_every()).await;
                let Some(node) = node.upgrade() else { return };
                if let Some(revision) = window.sample(node.current_revision()) {
                    if compact_as_leader(&node, revision).await {
                        window.compacted();
                    }
                }
            }
        }
        AutoCompaction::Revision(retention) => {
            let mut last = 0;
            loop {
                rt::sleep(limits::AUTO_COMPACTION_REVISION_INTERVAL).await;
                let Some(node) = node.upgrade() else { return };
                let revision = node.current_revision() - retention;
                if revision > 0 && revision != last && compact_as_leader(&node, revision).await {
                    last = revision;
                }
            }
        }
    }
}

/// Compact to `revision` if this member leads: whether it is compacted there now.
async fn compact_as_leader(node: &Node, revision: i64) -> bool {
    if !node.is_leader() {
        return false;
    }
    if node.state.read().compact_revision() >= revision {
        return true;
    }
    let op = Op::Compaction(CompactionRequest {
        revision,
        physical: false,
    });
    match node.propose(op).await {
        Ok(_) | Err(NodeError::Apply(ApplyError::Compacted)) => {
            tracing::info!(revision, "auto compaction");
            true
        }
        Err(e) => {
            tracing::warn!(revision, "auto compaction failed: {e}; retrying later");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_window_compacts_to_the_revision_of_one_retention_ago() {
        // Retention 10 s: a sample every second, eleven kept.
        let mut w = PeriodicWindow::new(Duration::from_secs(10));
        assert_eq!(w.sample_every(), Duration::from_secs(1));
        let mut due = Vec::new();
        for second in 1..=25 {
            // One revision per second: the revision is the second.
            if let Some(rev) = w.sample(second) {
                due.push((second, rev));
                w.compacted();
            }
        }
        assert_eq!(due, vec![(10, 1), (20, 10)]);
        // A retention past an hour compacts hourly, to the revision of one retention ago.
        let mut w = PeriodicWindow::new(Duration::from_secs(3 * 3_600));
        assert_eq!(w.sample_every(), Duration::from_secs(360));
        let mut due = Vec::new();
        for tick in 1..=60 {
            if let Some(rev) = w.sample(tick) {
                due.push((tick, rev));
                w.compacted();
            }
        }
        assert_eq!(due, vec![(30, 1), (40, 10), (50, 20), (60, 30)]);
    }
}
