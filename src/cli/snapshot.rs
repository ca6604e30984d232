//! `metastore snapshot restore`: turn a backup into a new data dir. Two formats are read, told
//! apart by their first bytes: etcd's snapshot file (what `etcdctl snapshot save` writes against
//! etcd 3.4 or 3.5, and against MetaStore, [`crate::raft::etcd_snapshot`]) and MetaStore's older
//! backup format (what it wrote against MetaStore before, [`crate::raft::backup`]). Start a member
//! on the data dir with the usual flags: it
//! founds a new cluster (`--initial-cluster`, state `new`) holding the backup's keys, history,
//! leases and users. Restore one data dir per member, as with etcdutl.
//!
//! The data dir is built under a temporary name beside it and renamed into place only once the
//! whole file has been read and the result opens: a refused or interrupted restore leaves no data
//! dir a member could start on.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::config::{EngineKind, ServerConfig};
use crate::raft::{backup, etcd_snapshot};

/// `metastore snapshot ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Build a new member data dir from a backup file (ours or etcd's).
    Restore(RestoreArgs),
}

/// Flags of `snapshot restore` (etcdutl's names).
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (written by `etcdctl snapshot save` against MetaStore or etcd, or an older
    /// MetaStore backup).
    pub file: PathBuf,
    /// Human-readable name of the member that will use the data dir.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The data dir to create [default: ${name}.etcd]; it must not exist yet.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The cluster the restored members will found (checked against --name and
    /// --initial-advertise-peer-urls; start each member with the same flags).
    #[arg(long, default_value = "")]
    pub initial_cluster: String,
    /// Accepted for etcdutl's command lines: the token is given to `serve`, which derives the new
    /// cluster's ids from it.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs, comma-separated (checked against --initial-cluster).
    #[arg(long, default_value = "")]
    pub initial_advertise_peer_urls: String,
    /// Restore an etcd database without the SHA-256 trailer of a snapshot file (a `member/snap/db`
    /// copied from an etcd data dir).
    #[arg(long)]
    pub skip_hash_check: bool,
}

/// Run a `snapshot` subcommand.
pub fn run(command: SnapshotCommand) -> Result<(), String> {
    match command {
        SnapshotCommand::Restore(args) => restore(args),
    }
}

/// The formats `restore` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    MetaStore,
    Etcd,
}

fn format_of(file: &Path) -> Result<Format, String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(128);
    std::fs::File::open(file)
        .and_then(|f| f.take(128).read_to_end(&mut head))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if head.starts_with(backup::MAGIC) {
        Ok(Format::MetaStore)
    } else if etcd_snapshot::looks_like(&head) {
        Ok(Format::Etcd)
    } else {
        Err(format!(
            "{} is neither a MetaStore backup nor an etcd snapshot (no known header)",
            file.display()
        ))
    }
}

fn check_cluster_flags(args: &RestoreArgs) -> Result<(), String> {
    if args.initial_cluster.is_empty() {
        return Ok(());
    }
    let cluster =
        crate::cluster::parse_initial_cluster(&args.initial_cluster).map_err(|e| e.to_string())?;
    let advertised: Vec<String> = args
        .initial_advertise_peer_urls
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if advertised.is_empty() {
        if cluster.contains_key(&args.name) {
            return Ok(());
        }
        return Err(crate::cluster::ClusterConfigError::NameMissing(args.name.clone()).to_string());
    }
    crate::cluster::check_self(&cluster, &args.name, &advertised).map_err(|e| e.to_string())
}

fn restore(args: RestoreArgs) -> Result<(), String> {
    check_cluster_flags(&args)?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    if data_dir.exists() {
        return Err(format!(
            "data dir {} already exists; restore into a new one",
            data_dir.display()
        ));
    }
    let format = format_of(&args.file)?;
    let mut staging = data_dir.clone().into_os_string();
    staging.push(".restoring");
    let staging = PathBuf::from(staging);
    if staging.exists() {
        // Left by an interrupted restore of this same data dir: it never became a data dir.
        std::fs::remove_dir_all(&staging)
            .map_err(|e| format!("cannot remove {}: {e}", staging.display()))?;
    }
    let built = build(&args, format, &staging);
    let summary = match built {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::rename(&staging, &data_dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        format!("cannot move {} into place: {e}", staging.display())
    })?;
    println!(
        "restored {summary} from {} into {}",
        args.file.display(),
        data_dir.display()
    );
    Ok(())
}

/// Restore `args.file` into a data dir at `dir`; the engine is closed when this returns.
fn build(args: &RestoreArgs, format: Format, dir: &Path) -> Result<String, String> {
    let cfg = ServerConfig {
        name: args.name.clone(),
        data_dir: dir.to_path_buf(),
        engine: EngineKind::RocksDb,
        ..ServerConfig::default()
    };
    let engine = crate::storage::open(cfg.engine, &cfg.data_dir)?;
    let file = std::fs::File::open(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let failed = |e: &dyn std::fmt::Display| format!("cannot restore {}: {e}", args.file.display());
    match format {
        Format::MetaStore => {
            let records = backup::restore(engine.as_ref(), file).map_err(|e| failed(&e))?;
            Ok(format!("{records} records (MetaStore backup)"))
        }
        Format::Etcd => {
            let len = file
                .metadata()
                .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?
                .len();
            let r = etcd_snapshot::restore(&engine, &file, len, args.skip_hash_check)
                .map_err(|e| failed(&e))?;
            Ok(format!(
                "etcd snapshot at revision {} (compacted at {}): {} records, {} leases, {} users, \
                 {} roles, auth {}",
                r.revision,
                r.compact_revision,
                r.records,
                r.leases,
                r.users,
                r.roles,
                if r.auth_enabled {
                    "enabled"
                } else {
                    "disabled"
                }
            ))
        }
    }
}
