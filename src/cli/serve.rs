//! `metastore serve`: flags named as etcd names them, then run one member until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::api::{self, Shutdown};
use crate::config::{self, EngineKind, ServerConfig};
use crate::limits;
use crate::net::serve;
use crate::node::Node;

/// Storage engine choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// RocksDB under --data-dir (durable).
    Rocksdb,
    /// In memory only: all data is lost when the process exits.
    Memory,
}

/// `--initial-cluster-state` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterStateArg {
    New,
    Existing,
}

/// Flags of a member, named as etcd names them.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.etcd].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// Comma-separated additional URLs to listen on that serve only /metrics and /health over
    /// HTTP (the client URLs serve them too).
    #[arg(long)]
    pub listen_metrics_urls: Option<String>,
    /// Path to the client server TLS cert file (for https:// client URLs).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file (verifies client certificates).
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication: clients must present a certificate signed by a CA of
    /// --trusted-ca-file.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: bool,
    /// Comma-separated client URLs of this member, as announced to clients.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// Cluster token; part of the member and cluster ids.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Path to the peer server TLS cert file (for https:// peer URLs; also this member's client
    /// certificate when it dials other members).
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file (verifies other members' certificates).
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication: members dialing this one must present a
    /// certificate signed by a CA of --peer-trusted-ca-file.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,
    /// Allowed common name for inter-peer authentication: members whose client certificate
    /// names another (or that present none) are refused.
    #[arg(long)]
    pub peer_cert_allowed_cn: Option<String>,
    /// Allowed TLS host name for inter-peer authentication: members whose client certificate is
    /// not valid for it (or that present none) are refused.
    #[arg(long)]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs of this member, as announced to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: name1=peerURL1,name2=peerURL2,...
    /// [default: this member alone, NAME=INITIAL-ADVERTISE-PEER-URLS]
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: new (found a cluster) or existing (join one, after `member add`).
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterStateArg,
    /// Storage engine.
    #[arg(long, value_enum, default_value = "rocksdb")]
    pub engine: EngineArg,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = limits::MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = limits::MAX_TXN_OPS_DEFAULT)]
    pub max_txn_ops: usize,
    /// Maximum number of watchers clients may hold on this member, all streams together.
    #[arg(long, default_value_t = limits::MAX_WATCHERS_DEFAULT)]
    pub max_watchers: usize,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Period of progress notifications to idle watchers that asked for them (e.g. 10m, 500ms).
    #[arg(long, default_value = "10m", value_parser = config::parse_duration)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
    /// Period of lease remaining-TTL checkpoints through raft (e.g. 5m, 500ms).
    #[arg(long, default_value = "5m", value_parser = config::parse_duration)]
    pub experimental_lease_checkpoint_interval: std::time::Duration,
    /// Minimum interval a client should wait before pinging the server; closer pings (more than
    /// two) close the client's connection.
    #[arg(long, default_value = "5s", value_parser = config::parse_duration)]
    pub grpc_keepalive_min_time: std::time::Duration,
    /// Frequency of server-to-client pings on a silent connection, to check it is alive.
    #[arg(long, default_value = "2h", value_parser = config::parse_duration)]
    pub grpc_keepalive_interval: std::time::Duration,
    /// How long the server waits for a ping's answer before closing an unresponsive connection.
    #[arg(long, default_value = "20s", value_parser = config::parse_duration)]
    pub grpc_keepalive_timeout: std::time::Duration,
    /// Number of committed transactions to trigger a snapshot to disk (and purge the log before it).
    #[arg(long, default_value_t = limits::SNAPSHOT_COUNT_DEFAULT)]
    pub snapshot_count: u64,
    /// Sets the maximum revisions deleted in each compaction batch (0: the default).
    #[arg(long, default_value_t = limits::COMPACTION_BATCH_LIMIT_DEFAULT)]
    pub experimental_compaction_batch_limit: usize,
    /// Sets the sleep interval between each compaction batch (e.g. 10ms; 0ms: the default).
    #[arg(long, default_value = "10ms", value_parser = config::parse_duration)]
    pub experimental_compaction_sleep_interval: std::time::Duration,
    /// Interpretation of --auto-compaction-retention: "periodic" (a duration) or "revision" (a
    /// number of revisions).
    #[arg(long, default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// How much history the leader keeps when it compacts on its own: in periodic mode a duration
    /// ("72h"; a bare number counts hours), in revision mode a number of revisions. 0: never.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Check the store against every other member's before serving (etcd's initial corruption
    /// check): a hash that differs at the same revision and compaction stops the member.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub experimental_initial_corrupt_check: bool,
    /// Reject membership changes that would leave fewer started voting members than a quorum
    /// (`--strict-reconfig-check=false` to allow them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub strict_reconfig_check: bool,
    /// Auth token type and options: "simple" (random tokens every member holds in memory) or
    /// "jwt,sign-method=<method>,pub-key=<path>,priv-key=<path>,ttl=<duration>" (signed JSON Web
    /// Tokens; methods HS256/384/512, RS256/384/512, PS256/384/512, ES256/384; ttl default 5m).
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Time (in seconds) a simple auth token lives after its last use.
    #[arg(long, default_value_t = limits::AUTH_TOKEN_TTL_SECS_DEFAULT)]
    pub auth_token_ttl: u64,
    /// Cost of the bcrypt hashes of auth passwords (4 to 31).
    #[arg(long, default_value_t = limits::BCRYPT_COST_DEFAULT)]
    pub bcrypt_cost: u32,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl ServeArgs {
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`.
    pub fn client_tls(&self) -> config::TlsFlags {
        config::TlsFlags {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        }
    }

    /// `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`, `--peer-client-cert-auth`.
    pub fn peer_tls(&self) -> config::TlsFlags {
        config::TlsFlags {
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
        }
    }

    /// Turn flags into a validated configuration.
    pub fn to_config(&self) -> Result<ServerConfig, config::ConfigError> {
        let cfg = ServerConfig {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name))),
            listen_client_addrs: config::parse_tls_urls(&self.listen_client_urls)?
                .into_iter()
                .map(|(addr, _)| addr)
                .collect(),
            advertise_client_urls: split_tls_urls(&self.advertise_client_urls)?,
            initial_cluster_token: self.initial_cluster_token.clone(),
            listen_peer_addrs: config::parse_tls_urls(&self.listen_peer_urls)?
                .into_iter()
                .map(|(addr, _)| addr)
                .collect(),
            advertise_peer_urls: split_tls_urls(&self.initial_advertise_peer_urls)?,
            initial_cluster: match &self.initial_cluster {
                Some(text) => crate::cluster::parse_initial_cluster(text)?,
                None => crate::cluster::InitialCluster::new(),
            },
            initial_cluster_state: match self.initial_cluster_state {
                ClusterStateArg::New => config::ClusterState::New,
                ClusterStateArg::Existing => config::ClusterState::Existing,
            },
            engine: match self.engine {
                EngineArg::Rocksdb => EngineKind::RocksDb,
                EngineArg::Memory => EngineKind::Memory,
            },
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            max_watchers: self.max_watchers,
            quota_backend_bytes: self.quota_backend_bytes,
            request_timeout: limits::REQUEST_TIMEOUT,
            watch_progress_interval: self.experimental_watch_progress_notify_interval,
            grpc_keepalive_min_time: self.grpc_keepalive_min_time,
            grpc_keepalive_interval: self.grpc_keepalive_interval,
            grpc_keepalive_timeout: self.grpc_keepalive_timeout,
            lease_checkpoint_interval: self.experimental_lease_checkpoint_interval,
            snapshot_count: self.snapshot_count,
            // As etcd's store: 0 means the default.
            compaction_batch_limit: match self.experimental_compaction_batch_limit {
                0 => limits::COMPACTION_BATCH_LIMIT_DEFAULT,
                n => n,
            },
            compaction_sleep_interval: match self.experimental_compaction_sleep_interval {
                d if d.is_zero() => limits::COMPACTION_SLEEP_INTERVAL_DEFAULT,
                d => d,
            },
            strict_reconfig_check: self.strict_reconfig_check,
            auto_compaction: config::auto_compaction::parse_auto_compaction(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )
            .map_err(config::ConfigError::AutoCompaction)?,
            auth_token: config::parse_auth_token(&self.auth_token)?,
            auth_token_ttl: std::time::Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
            peer_tls: self.peer_tls(),
            peer_cert_allowed_cn: self
                .peer_cert_allowed_cn
                .clone()
                .filter(|cn| !cn.is_empty()),
            peer_cert_allowed_hostname: self
                .peer_cert_allowed_hostname
                .clone()
                .filter(|host| !host.is_empty()),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A checked, comma-separated client or peer URL list (`https://` allowed), kept as written
/// (without a trailing slash).
fn split_tls_urls(text: &str) -> Result<Vec<String>, config::ConfigError> {
    config::parse_tls_urls(text)?;
    Ok(keep_as_written(text))
}

fn keep_as_written(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Run a member until it is told to stop. Prints one `serving client requests on ADDR` line per
/// listener on stdout, which scripts and tests wait for.
pub async fn run(args: ServeArgs) -> Result<(), String> {
    // https:// client and peer URLs get their TLS configurations, and the peer channels theirs:
    // every file is read and checked before anything starts. A listener's missing certificate is
    // reported first, in etcd's words.
    let (client_listeners, peer_listeners) = (
        serve::listen_urls(
            &args.listen_client_urls,
            &args.client_tls(),
            config::TlsPort::Client,
        )?,
        serve::listen_urls(
            &args.listen_peer_urls,
            &args.peer_tls(),
            config::TlsPort::Peer,
        )?,
    );
    let cfg = args.to_config().map_err(|e| e.to_string())?;
    let channels =
        crate::net::peer_channels::PeerChannels::new(&cfg.peer_tls).map_err(|e| e.to_string())?;
    let metrics_addrs = match &args.listen_metrics_urls {
        Some(urls) => config::parse_urls(urls).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    // The client and metrics ports are bound before the store opens (which reads every record),
    // as etcd does: a client connecting meanwhile waits in the kernel's queue and is answered as
    // soon as the member serves, instead of being refused and retrying after its own backoff. A
    // port in use is reported at once. The peer port is bound only once the member serves: a
    // refused peer port is how other members tell that a leader's process is gone
    // (`node::failover`), and a restarted leader still opening its store is gone as a leader.
    let (client_listeners, metrics_listeners) = {
        let bind = |listeners| serve::bind(listeners).map_err(|e| e.to_string());
        let metrics_urls = metrics_addrs.iter().copied().map(serve::ListenUrl::plain);
        (bind(client_listeners)?, bind(metrics_urls.collect())?)
    };
    let engine = crate::storage::open(cfg.engine, &cfg.data_dir)?;
    tracing::info!(name = %cfg.name, engine = engine.kind(), data_dir = %cfg.data_dir.display(), "starting member");
    let node = match Node::start_with_peers(cfg.clone(), engine.clone(), channels).await {
        Ok(node) => node,
        Err(e) => {
            engine.close();
            return Err(format!("cannot start member: {e}"));
        }
    };
    tracing::info!(
        member_id = format!("{:x}", node.member_id()),
        cluster_id = format!("{:x}", node.cluster_id()),
        "member started"
    );
    // As etcd: before this member serves its peers or clients.
    if args.experimental_initial_corrupt_check {
        if let Err(e) = node.check_initial_hash_kv().await {
            tracing::error!("{e}");
            let _ = crate::rt::timeout(limits::SHUTDOWN_GRACE, node.shutdown()).await;
            engine.close();
            return Err(e);
        }
    }
    let shutdown = Shutdown::new();
    let stopper = shutdown.clone();
    crate::rt::spawn(async move {
        crate::rt::stop_signal().await;
        stopper.trigger();
    });
    let peers = {
        let (node, shutdown) = (node.clone(), shutdown.clone());
        crate::rt::spawn(async move {
            let listeners = serve::bind(peer_listeners)?;
            api::server::serve_peer_listeners(node, listeners, shutdown, |addr| {
                println!("metastore: serving peer traffic on {addr}");
            })
            .await
        })
    };
    // Extra HTTP listeners for /metrics and /health; a bind failure stops the member like any
    // other listener's.
    let metrics = {
        let node = node.clone();
        let shutdown = shutdown.clone();
        async move {
            if metrics_addrs.is_empty() {
                return futures::future::pending::<std::io::Result<()>>().await;
            }
            api::server::serve_metrics(node, metrics_listeners, shutdown, |addr| {
                println!("metastore: serving metrics on {addr}");
            })
            .await
        }
    };
    let serving =
        api::server::serve_clients(node.clone(), client_listeners, shutdown.clone(), |addr| {
            println!("metastore: serving client requests on {addr}");
        });
    // After the stop signal, connections get a bounded grace period to finish; then we stop anyway.
    let grace_over = async {
        shutdown.wait().await;
        crate::rt::sleep(limits::SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        biased;
        served = serving => served.map_err(|e| format!("client server failed: {e}")),
        metrics = metrics => metrics.map_err(|e| format!("metrics listener failed: {e}")),
        peers = peers => match peers {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("peer server failed: {e}")),
            Err(e) => Err(format!("peer server failed: {e}")),
        },
        _ = grace_over => {
            tracing::warn!("clients still connected after the shutdown grace period; stopping anyway");
            Ok(())
        }
        fatal = node.stopped() => {
            tracing::error!("raft stopped: {fatal}; the member stops");
            Err(format!("raft stopped: {fatal}"))
        }
    };
    if crate::rt::timeout(limits::SHUTDOWN_GRACE, node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not stop within the shutdown grace period");
    }
    shutdown.trigger();
    engine.close();
    served
}
