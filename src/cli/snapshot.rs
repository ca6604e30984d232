//! `metastore snapshot restore`: turn a backup (from `etcdctl snapshot save`) into a new data dir.
//! Start a member on it with the usual flags: it founds a new cluster (`--initial-cluster`, state
//! `new`) holding the backup's keys, history and leases. Restore one data dir per member.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::{EngineKind, ServerConfig};

/// `metastore snapshot ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Build a new member data dir from a backup file.
    Restore(RestoreArgs),
}

/// Flags of `snapshot restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (written by `etcdctl snapshot save`).
    pub file: PathBuf,
    /// Human-readable name of the member that will use the data dir.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The data dir to create [default: ${name}.etcd]; it must not exist yet.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Run a `snapshot` subcommand.
pub fn run(command: SnapshotCommand) -> Result<(), String> {
    match command {
        SnapshotCommand::Restore(args) => restore(args),
    }
}

fn restore(args: RestoreArgs) -> Result<(), String> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    if data_dir.exists() {
        return Err(format!(
            "data dir {} already exists; restore into a new one",
            data_dir.display()
        ));
    }
    let backup = std::fs::File::open(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let cfg = ServerConfig {
        name: args.name,
        data_dir: data_dir.clone(),
        engine: EngineKind::RocksDb,
        ..ServerConfig::default()
    };
    let engine = super::serve::open_engine(&cfg)?;
    let records = crate::raft::backup::restore(engine.as_ref(), backup)
        .map_err(|e| format!("cannot restore {}: {e}", args.file.display()))?;
    println!(
        "restored {records} records from {} into {}",
        args.file.display(),
        data_dir.display()
    );
    Ok(())
}
