//! The `metastore` command line: `serve` (the default), `bench` and `snapshot restore`.

pub mod bench;
mod bench_args;
pub mod bench_k8s;
mod bench_streams;
pub mod env;
pub mod serve;
pub mod snapshot;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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

/// The command line, a member's flags also read from etcd's `ETCD_*` variables (`env`); exits
/// with clap's message on a malformed one. Returns what the environment set, to be logged, or
/// why it cannot be used.
pub fn parse() -> (Cli, Result<env::EnvReport, String>) {
    let command = env::read_from_env(Cli::command()).mut_subcommand("serve", env::read_from_env);
    let matches = command.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let report = match matches.subcommand() {
        None => env::check(&command, &matches, &vars),
        Some(("serve", serve)) => match command.find_subcommand("serve") {
            Some(args) => env::check(args, serve, &vars),
            None => Ok(env::EnvReport::default()),
        },
        // The load generator and the offline tools are not configured by etcd's variables.
        Some(_) => Ok(env::EnvReport::default()),
    };
    (cli, report)
}
