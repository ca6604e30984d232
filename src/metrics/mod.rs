//! The member's metrics registry and its Prometheus text exposition (format 0.0.4).
//!
//! Counters, gauges and histograms are plain atomics, updated on the hot paths (proposals, log
//! fsyncs, engine commits, replication round trips) without locks or allocation. Figures that
//! other layers already keep (leader, indexes, database size, key and watcher counts) are read
//! when `/metrics` is scraped and handed to [`Metrics::render`] as a [`Scrape`]. Names, help texts,
//! types and histogram buckets follow etcd 3.4 wherever etcd has the metric; figures etcd lacks
//! are prefixed `metastore_`. No threads and no clock: it compiles and runs in the simulator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod grpc;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtract one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (in nanoseconds) of etcd's disk latency buckets: `ExponentialBuckets(0.001, 2, 14)`,
/// 1 ms to 8.192 s (`etcd_disk_wal_fsync_duration_seconds`, `etcd_disk_backend_commit_duration_seconds`).
pub const DISK_BUCKETS_NS: [u64; 14] = exponential_ns(1_000_000);

/// Upper bounds (in nanoseconds) of etcd's defragmentation buckets: `ExponentialBuckets(0.1, 2,
/// 13)`, 100 ms to 409.6 s (`etcd_disk_backend_defrag_duration_seconds`).
pub const DEFRAG_BUCKETS_NS: [u64; 13] = exponential_ns(100_000_000);

/// Upper bounds (in nanoseconds) of etcd's peer round-trip buckets: `ExponentialBuckets(0.0001, 2,
/// 16)`, 0.1 ms to 3.2768 s (`etcd_network_peer_round_trip_time_seconds`).
pub const RTT_BUCKETS_NS: [u64; 16] = exponential_ns(100_000);

/// `N` bucket bounds starting at `start_ns`, each twice the one before.
const fn exponential_ns<const N: usize>(start_ns: u64) -> [u64; N] {
    let mut out = [0u64; N];
    let mut i = 0;
    let mut bound = start_ns;
    while i < N {
        out[i] = bound;
        bound *= 2;
        i += 1;
    }
    out
}

const _: () = assert!(DISK_BUCKETS_NS[13] == 8_192_000_000);
const _: () = assert!(RTT_BUCKETS_NS[15] == 3_276_800_000);
const _: () = assert!(DEFRAG_BUCKETS_NS[12] == 409_600_000_000);

/// A latency histogram over fixed bucket bounds, in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_ns: &'static [u64],
    /// Observations per bucket (not cumulative); the last slot counts those above every bound.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds_ns` (ascending).
    pub fn new(bounds_ns: &'static [u64]) -> Self {
        Self {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let slot = self.bounds_ns.partition_point(|bound| *bound < ns);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds_ns.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                seconds(*bound)
            );
        }
        cumulative += self.buckets[self.bounds_ns.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Nanoseconds as decimal seconds without float noise (`1000000` → `0.001`).
fn seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The counters and histograms the member updates as it works.
#[derive(Debug)]
pub struct Metrics {
    /// Leader changes this member has seen (a first election counts, as in etcd).
    pub leader_changes: Counter,
    /// Proposals that failed (timed out, no leader, refused by the quota or the leader).
    pub proposals_failed: Counter,
    /// Proposals waiting to be applied.
    pub proposals_pending: Gauge,
    /// `ProposeMany` calls this member made to forward commands to the leader.
    pub forwarded_batches: Counter,
    /// Commands this member forwarded to the leader.
    pub forwarded_commands: Counter,
    /// Messages in which this member, as leader, handed proposals to raft's core.
    pub leader_proposal_batches: Counter,
    /// Proposals this member, as leader, handed to raft's core.
    pub leader_proposals: Counter,
    /// Raft log fsyncs.
    pub wal_fsync: Histogram,
    /// Engine commits of applied entries.
    pub backend_commit: Histogram,
    /// Defragmentations run (one may answer many concurrent `Defragment` calls).
    pub backend_defrag: Histogram,
    /// Puts applied (inside transactions too), as etcd's mvcc counts them.
    pub mvcc_put: Counter,
    /// Delete-ranges applied (inside transactions too).
    pub mvcc_delete: Counter,
    /// Ranges served (inside transactions too).
    pub mvcc_range: Counter,
    /// Transactions applied.
    pub mvcc_txn: Counter,
    /// Records deleted by compactions' physical halves.
    pub db_compaction_keys: Counter,
    /// Requests served by the HTTP JSON gateway.
    pub gateway_requests: Counter,
    /// `/health` checks answered healthy.
    pub health_success: Counter,
    /// `/health` checks answered unhealthy.
    pub health_failures: Counter,
    /// Calls of the client API's gRPC methods (`grpc_server_*`, as etcd's go-grpc-prometheus).
    pub grpc: grpc::GrpcMetrics,
    /// Round trips of replication requests, by peer id.
    peer_rtt: Mutex<BTreeMap<u64, Arc<Histogram>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            leader_changes: Counter::default(),
            proposals_failed: Counter::default(),
            proposals_pending: Gauge::default(),
            forwarded_batches: Counter::default(),
            forwarded_commands: Counter::default(),
            leader_proposal_batches: Counter::default(),
            leader_proposals: Counter::default(),
            wal_fsync: Histogram::new(&DISK_BUCKETS_NS),
            backend_commit: Histogram::new(&DISK_BUCKETS_NS),
            backend_defrag: Histogram::new(&DEFRAG_BUCKETS_NS),
            mvcc_put: Counter::default(),
            mvcc_delete: Counter::default(),
            mvcc_range: Counter::default(),
            mvcc_txn: Counter::default(),
            db_compaction_keys: Counter::default(),
            gateway_requests: Counter::default(),
            health_success: Counter::default(),
            health_failures: Counter::default(),
            grpc: grpc::GrpcMetrics::default(),
            peer_rtt: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Figures read from the member when it is scraped.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub member_id: u64,
    pub has_leader: bool,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub db_size_bytes: u64,
    pub db_size_in_use_bytes: u64,
    pub quota_bytes: u64,
    pub keys: u64,
    pub watchers: u64,
    /// Bytes of watch events queued or in flight in all streams (`watch::WatchBudget`).
    pub watch_buffered_bytes: u64,
    /// Watch streams evicted for holding the spent watch budget while their clients took nothing.
    pub watch_streams_evicted: u64,
    /// Bytes of large answers not yet taken by their clients (`node::send_budget`).
    pub send_held_bytes: u64,
    /// Bytes of `KV.RangeStream` chunks read and not yet sent (`node::range_stream`).
    pub range_stream_held_bytes: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub leases: u64,
    pub alive_tasks: u64,
    /// The server version (`etcd_server_version`).
    pub version: &'static str,
    /// The cluster version as major.minor (`etcd_cluster_version`): the downgrade target while a
    /// downgrade is enabled.
    pub cluster_version: String,
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The round-trip histogram towards peer `to` (created on first use; a handful of peers).
    pub fn peer_rtt(&self, to: u64) -> Arc<Histogram> {
        self.peer_rtt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(to)
            .or_insert_with(|| Arc::new(Histogram::new(&RTT_BUCKETS_NS)))
            .clone()
    }

    /// Everything in the Prometheus text format, metrics sorted by name as etcd's registry
    /// writes them.
    pub fn render(&self, s: &Scrape) -> String {
        let mut out = String::with_capacity(160 * 1024);
        let b = u64::from;
        gauge_labeled(
            &mut out,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            &format!("cluster_version=\"{}\"", s.cluster_version),
            1,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            s.compact_revision.max(0),
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            s.revision,
        );
        counter(
            &mut out,
            "etcd_debugging_mvcc_db_compaction_keys_total",
            "Total number of db keys compacted.",
            self.db_compaction_keys.get(),
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            s.keys,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            s.watchers,
        );
        histogram(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.backend_commit,
        );
        histogram(
            &mut out,
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
            &self.backend_defrag,
        );
        histogram(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.wal_fsync,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            s.db_size_bytes,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            s.db_size_in_use_bytes,
        );
        counter(
            &mut out,
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            self.mvcc_delete.get(),
        );
        counter(
            &mut out,
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            self.mvcc_put.get(),
        );
        counter(
            &mut out,
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            self.mvcc_range.get(),
        );
        counter(
            &mut out,
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            self.mvcc_txn.get(),
        );
        {
            let peers = self.peer_rtt.lock().unwrap_or_else(|e| e.into_inner());
            if !peers.is_empty() {
                header(
                    &mut out,
                    "etcd_network_peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                    "histogram",
                );
                for (to, h) in peers.iter() {
                    h.write(
                        &mut out,
                        "etcd_network_peer_round_trip_time_seconds",
                        &format!("To=\"{to:x}\""),
                    );
                }
            }
        }
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            b(s.has_leader),
        );
        counter(
            &mut out,
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self.health_failures.get(),
        );
        counter(
            &mut out,
            "etcd_server_health_success",
            "The total number of successful health checks",
            self.health_success.get(),
        );
        gauge_labeled(
            &mut out,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            &format!("server_id=\"{:x}\"", s.member_id),
            1,
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            b(s.is_leader),
        );
        counter(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes.get(),
        );
        // etcd declares these two as gauges (they are raft indexes, which a snapshot can move).
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            s.applied_index,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            s.committed_index,
        );
        counter(
            &mut out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.proposals_pending.get().max(0),
        );
        gauge(
            &mut out,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            s.quota_bytes,
        );
        gauge_labeled(
            &mut out,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &format!("server_version=\"{}\"", s.version),
            1,
        );
        self.grpc.render(&mut out);
        counter(
            &mut out,
            "metastore_forwarded_batches_total",
            "Calls that forwarded commands to the leader (each carries those waiting at the time).",
            self.forwarded_batches.get(),
        );
        counter(
            &mut out,
            "metastore_forwarded_commands_total",
            "Commands forwarded to the leader.",
            self.forwarded_commands.get(),
        );
        counter(
            &mut out,
            "metastore_gateway_requests_total",
            "Requests served by the HTTP JSON gateway.",
            self.gateway_requests.get(),
        );
        counter(
            &mut out,
            "metastore_leader_proposal_batches_total",
            "Messages that handed proposals to raft on the leader (each carries those waiting at the time).",
            self.leader_proposal_batches.get(),
        );
        counter(
            &mut out,
            "metastore_leader_proposals_total",
            "Proposals handed to raft on the leader.",
            self.leader_proposals.get(),
        );
        gauge(
            &mut out,
            "metastore_lease_total",
            "Leases currently granted.",
            s.leases,
        );
        gauge(
            &mut out,
            "metastore_raft_last_log_index",
            "Index of the last entry in this member's raft log.",
            s.last_log_index,
        );
        gauge(
            &mut out,
            "metastore_raft_term",
            "This member's current raft term.",
            s.term,
        );
        gauge(
            &mut out,
            "metastore_range_stream_held_bytes",
            "Bytes of KV.RangeStream chunks read and not yet sent.",
            s.range_stream_held_bytes,
        );
        gauge(
            &mut out,
            "metastore_runtime_alive_tasks",
            "Tasks alive on the member's async runtime.",
            s.alive_tasks,
        );
        gauge(
            &mut out,
            "metastore_send_held_bytes",
            "Bytes of large answers encoded and not yet taken by their clients.",
            s.send_held_bytes,
        );
        gauge(
            &mut out,
            "metastore_watch_buffered_bytes",
            "Bytes of watch events queued or in flight in all watch streams.",
            s.watch_buffered_bytes,
        );
        counter(
            &mut out,
            "metastore_watch_streams_evicted_total",
            "Watch streams ended because they held the spent watch budget while their clients took nothing.",
            s.watch_streams_evicted,
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge_labeled(out: &mut String, name: &str, help: &str, labels: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, help, "histogram");
    h.write(out, name, "");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_print_as_etcd_prints_them() {
        let bounds: Vec<String> = DISK_BUCKETS_NS.iter().map(|b| seconds(*b)).collect();
        assert_eq!(bounds[0], "0.001");
        assert_eq!(bounds[3], "0.008");
        assert_eq!(bounds[10], "1.024");
        assert_eq!(bounds[13], "8.192");
        assert_eq!(seconds(RTT_BUCKETS_NS[0]), "0.0001");
        assert_eq!(seconds(RTT_BUCKETS_NS[15]), "3.2768");
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&DISK_BUCKETS_NS);
        h.observe(Duration::from_micros(500)); // first bucket
        h.observe(Duration::from_millis(1)); // on the bound: still the first (le is inclusive)
        h.observe(Duration::from_millis(3)); // 0.004
        h.observe(Duration::from_secs(60)); // +Inf only
        let mut out = String::new();
        h.write(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.002\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8.192\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum 60.0045\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn the_exposition_names_every_metric_once_with_its_type() {
        let m = Metrics::new();
        m.mvcc_put.inc();
        m.peer_rtt(0xabc).observe(Duration::from_micros(150));
        let text = m.render(&Scrape {
            member_id: 0x8e9e05c52164694d,
            has_leader: true,
            version: "3.5.0",
            cluster_version: "3.5".into(),
            ..Scrape::default()
        });
        assert!(text.contains("# TYPE etcd_mvcc_put_total counter\netcd_mvcc_put_total 1\n"));
        assert!(text.contains("etcd_server_id{server_id=\"8e9e05c52164694d\"} 1\n"));
        assert!(text.contains("etcd_server_has_leader 1\n"));
        assert!(text.contains("etcd_cluster_version{cluster_version=\"3.5\"} 1\n"));
        assert!(text.contains(
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"abc\",le=\"0.0002\"} 1\n"
        ));
        let names: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(|l| l.split(' ').nth(2).unwrap_or_default())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted by name, each declared once");
    }
}
