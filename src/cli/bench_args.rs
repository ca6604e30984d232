//! What a `metastore bench` run is asked (its flags, etcd's `benchmark` names) and what it reports.

use clap::{Args, ValueEnum};

use super::bench_k8s::K8sArgs;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put random keys of the key space.
    Put,
    /// Range-read one key (written once before timing starts).
    Range,
    /// Compare-and-put transactions on random keys of the key space.
    Txn,
    /// Watch event latency: `--streams` × `--watchers-per-stream` watchers, puts at `--put-rate`.
    Watch,
    /// Lease keep-alive round trips on `--clients` streams.
    LeaseKeepalive,
    /// A Kubernetes-shaped mix (optimistic writes, paginated lists, counts, watches with progress
    /// requests, events with leases, compaction): see `bench_k8s`.
    K8s,
    /// Read every key under `--list-prefix` (all keys by default) in one request: one `Range`, or
    /// with `--stream` one `KV.RangeStream` (etcd 3.7), whose chunks are checked to add up to the
    /// final count.
    List,
}

/// Read consistency of `range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// Benchmark flags.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Comma-separated endpoints (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// Concurrent clients (in-flight requests).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys written by put/txn.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// put/txn: the n-th request writes key n (modulo the key space) instead of a random key,
    /// so `--total N --key-space-size N` loads exactly N distinct keys (the scale benchmark).
    #[arg(long)]
    pub sequential_keys: bool,
    /// Range read consistency: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Key read by the range workload.
    #[arg(long, default_value = "bench-range-key")]
    pub range_key: String,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Watch streams (watch workload).
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers per stream (watch workload).
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Puts per second while watching (watch workload).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Prefix read by the list workload (empty: every key).
    #[arg(long, default_value = "")]
    pub list_prefix: String,
    /// List workload: read with `KV.RangeStream` instead of one `Range`.
    #[arg(long)]
    pub stream: bool,
    /// List workload: keys only, no values.
    #[arg(long)]
    pub keys_only: bool,
    #[command(flatten)]
    pub k8s: K8sArgs,
}

/// Latency figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub(super) fn from_latencies(mut lat_us: Vec<u64>, errors: u64, seconds: f64) -> Self {
        lat_us.sort_unstable();
        let pct = |p: f64| {
            if lat_us.is_empty() {
                return 0.0;
            }
            let idx = ((lat_us.len() as f64 * p).ceil() as usize).clamp(1, lat_us.len()) - 1;
            lat_us[idx] as f64 / 1000.0
        };
        Summary {
            ok: lat_us.len() as u64,
            errors,
            seconds,
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: lat_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }

    /// Successful requests per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }
}
