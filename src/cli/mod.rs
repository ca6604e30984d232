//! The `metastore` command line: `serve` (the default), `bench` and `snapshot restore`.

pub mod bench;
mod bench_args;
pub mod bench_k8s;
mod bench_streams;
pub mod serve;
pub mod snapshot;

use clap::{Parser, Subcommand};

/// MetaStore: an etcd-v3-compatible, Raft-replicated metadata store.
///
/// Run without a subcommand to start a member (same flags as `metastore serve`).
#[derive(Debug, Parser)]
#[command(
    name = "metastore",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: serve::ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a member (the default when no subcommand is given).
    Serve(Box<serve::ServeArgs>),
    /// Load-test any etcd-compatible endpoint (modelled on etcd's `benchmark` tool).
    Bench(bench::BenchArgs),
    /// Backups: `snapshot restore FILE --data-dir DIR` builds a data dir from `etcdctl snapshot save`.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}
