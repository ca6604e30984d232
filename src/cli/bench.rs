//! `metastore bench`: a load generator for any etcd-compatible endpoint.

use clap::Args;

/// Benchmark flags (filled in below).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {}

/// Run a benchmark.
pub async fn run(_args: BenchArgs) -> Result<(), String> {
    Err("bench: not built yet".into())
}
