//! Server configuration: etcd's flag names, defaults and checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits;

/// Which storage engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// RocksDB under `--data-dir` (durable; the default).
    RocksDb,
    /// Memory only: everything is lost when the process exits.
    Memory,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Found a new cluster with the members of `--initial-cluster`.
    New,
    /// Join a running cluster that already lists this member (added with `member add`).
    Existing,
}

/// Which port a set of TLS flags serves: their names in errors differ (`--cert-file` or
/// `--peer-cert-file`), and so do the protocols offered (the client port also speaks HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPort {
    Client,
    Peer,
}

impl TlsPort {
    /// The prefix of this port's flag names (`peer-` for `--peer-cert-file`).
    pub fn flag_prefix(self) -> &'static str {
        match self {
            TlsPort::Client => "",
            TlsPort::Peer => "peer-",
        }
    }

    /// What etcd calls the URLs of this port in its errors.
    pub fn url_kind(self) -> &'static str {
        match self {
            TlsPort::Client => "client",
            TlsPort::Peer => "peer",
        }
    }
}

/// One port's TLS flags, as etcd's `TLSInfo`: `--cert-file`, `--key-file`, `--trusted-ca-file`,
/// `--client-cert-auth`, or their `--peer-` twins. Paths only; `api::tls` reads the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    /// The certificate chain this member presents (PEM): as a server, and on the peer port also
    /// as a client when it dials other members.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CAs (PEM) that sign the certificates this member accepts: client certificates, and on the
    /// peer port the other members' server certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by a CA of `trusted_ca_file`.
    pub client_cert_auth: bool,
}

/// Everything one member needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Human-readable member name (`--name`).
    pub name: String,
    /// Where the engine keeps its files (`--data-dir`).
    pub data_dir: PathBuf,
    /// Addresses to serve clients on (`--listen-client-urls`).
    pub listen_client_addrs: Vec<SocketAddr>,
    /// URLs announced to clients (`--advertise-client-urls`).
    pub advertise_client_urls: Vec<String>,
    /// Cluster token (`--initial-cluster-token`): part of the member and cluster identity.
    pub initial_cluster_token: String,
    /// Addresses to serve peers on (`--listen-peer-urls`).
    pub listen_peer_addrs: Vec<SocketAddr>,
    /// This member's peer URLs as announced to the cluster (`--initial-advertise-peer-urls`).
    pub advertise_peer_urls: Vec<String>,
    /// The founding members (`--initial-cluster`); empty means this member alone.
    pub initial_cluster: crate::cluster::InitialCluster,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// Storage engine (`--engine`).
    pub engine: EngineKind,
    /// Largest client request in bytes (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations per transaction branch (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Backend size above which writes are refused (`--quota-backend-bytes`; 0 = default 2 GiB).
    pub quota_backend_bytes: u64,
    /// How long a proposal or a linearizable read may wait (etcd derives it; no flag).
    pub request_timeout: Duration,
    /// Period of progress notifications to idle watchers that asked for them
    /// (`--experimental-watch-progress-notify-interval`).
    pub watch_progress_interval: Duration,
    /// Period of lease remaining-TTL checkpoints (`--experimental-lease-checkpoint-interval`).
    pub lease_checkpoint_interval: Duration,
    /// Applied entries between raft snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Refuse membership changes that would leave fewer started voters than a quorum
    /// (`--strict-reconfig-check`, etcd's default: on).
    pub strict_reconfig_check: bool,
    /// How long an auth token lives after its last use (`--auth-token-ttl`, seconds in etcd).
    pub auth_token_ttl: Duration,
    /// bcrypt cost of stored password hashes (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// Peer TLS (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
    /// `--peer-client-cert-auth`): serves `https://` listen peer URLs and dials `https://` peers.
    pub peer_tls: TlsFlags,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid URL {0:?}: expected http://HOST:PORT (https:// for client and peer URLs) with an IP address or localhost")]
    BadUrl(String),
    #[error(
        "https URL {0} is not served here (client and peer URLs may be https, metrics URLs not)"
    )]
    TlsUnsupported(String),
    #[error("--{}client-cert-auth needs --{}trusted-ca-file", .0.flag_prefix(), .0.flag_prefix())]
    NoTrustedCa(TlsPort),
    #[error("--peer-trusted-ca-file must be given to verify the https peer URL {0} (the system's CA store is not used)")]
    NoPeerCa(String),
    #[error("--{flag} must be between {min} and {max}, got {got}")]
    OutOfRange {
        flag: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("--name must not be empty")]
    EmptyName,
    #[error("--listen-client-urls must name at least one URL")]
    NoListenUrl,
    #[error("--initial-advertise-peer-urls must name at least one URL")]
    NoPeerUrl,
    #[error("--auth-token {0:?} is not supported: only \"simple\" tokens are served")]
    AuthToken(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterConfigError),
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            data_dir: PathBuf::from("default.etcd"),
            listen_client_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 2379))],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            initial_cluster_token: "etcd-cluster".into(),
            listen_peer_addrs: vec![SocketAddr::from(([127, 0, 0, 1], 2380))],
            advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: crate::cluster::InitialCluster::new(),
            initial_cluster_state: ClusterState::New,
            engine: EngineKind::RocksDb,
            max_request_bytes: limits::MAX_REQUEST_BYTES_DEFAULT,
            max_txn_ops: limits::MAX_TXN_OPS_DEFAULT,
            quota_backend_bytes: 0,
            request_timeout: limits::REQUEST_TIMEOUT,
            watch_progress_interval: limits::WATCH_PROGRESS_INTERVAL_DEFAULT,
            lease_checkpoint_interval: limits::LEASE_CHECKPOINT_INTERVAL_DEFAULT,
            snapshot_count: limits::SNAPSHOT_COUNT_DEFAULT,
            strict_reconfig_check: true,
            auth_token_ttl: Duration::from_secs(limits::AUTH_TOKEN_TTL_SECS_DEFAULT),
            bcrypt_cost: limits::BCRYPT_COST_DEFAULT,
            peer_tls: TlsFlags::default(),
        }
    }
}

impl ServerConfig {
    /// Check every value; the error names the flag at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.listen_client_addrs.is_empty() {
            return Err(ConfigError::NoListenUrl);
        }
        if self.advertise_peer_urls.is_empty() {
            return Err(ConfigError::NoPeerUrl);
        }
        for url in &self.advertise_peer_urls {
            parse_tls_url(url)?;
        }
        let cluster = self.initial_cluster_or_self();
        crate::cluster::check_self(&cluster, &self.name, &self.advertise_peer_urls)?;
        if self.peer_tls.client_cert_auth && self.peer_tls.trusted_ca_file.is_none() {
            return Err(ConfigError::NoTrustedCa(TlsPort::Peer));
        }
        // A member dials every other member of --initial-cluster, and the others dial it at its
        // advertised URLs: an https one must be verifiable against a CA we were given.
        if self.peer_tls.trusted_ca_file.is_none() {
            let peer_urls = cluster.values().flatten().chain(&self.advertise_peer_urls);
            if let Some(url) = peer_urls.into_iter().find(|u| u.starts_with("https://")) {
                return Err(ConfigError::NoPeerCa(url.clone()));
            }
        }
        let range = |flag, got: u64, min: u64, max: u64| {
            if got < min || got > max {
                Err(ConfigError::OutOfRange {
                    flag,
                    min,
                    max,
                    got,
                })
            } else {
                Ok(())
            }
        };
        // Room for the gRPC overhead must stay below what an HTTP/2 frame length can say.
        range(
            "max-request-bytes",
            self.max_request_bytes as u64,
            1,
            (i32::MAX as usize - limits::GRPC_OVERHEAD_BYTES) as u64,
        )?;
        range(
            "max-txn-ops",
            self.max_txn_ops as u64,
            1,
            limits::MAX_TXN_OPS_LIMIT as u64,
        )?;
        range(
            "quota-backend-bytes",
            self.quota_backend_bytes,
            0,
            limits::QUOTA_BACKEND_BYTES_MAX,
        )?;
        range("snapshot-count", self.snapshot_count, 1, u64::MAX)?;
        range(
            "auth-token-ttl",
            self.auth_token_ttl.as_secs(),
            1,
            limits::AUTH_TOKEN_TTL_SECS_MAX,
        )?;
        range(
            "bcrypt-cost",
            u64::from(self.bcrypt_cost),
            u64::from(limits::BCRYPT_COST_MIN),
            u64::from(limits::BCRYPT_COST_MAX),
        )?;
        range(
            "experimental-watch-progress-notify-interval (ms)",
            self.watch_progress_interval.as_millis() as u64,
            limits::WATCH_PROGRESS_INTERVAL_MIN.as_millis() as u64,
            u64::from(u32::MAX),
        )?;
        Ok(())
    }

    /// `--initial-cluster`, or this member alone when it is empty.
    pub fn initial_cluster_or_self(&self) -> crate::cluster::InitialCluster {
        if self.initial_cluster.is_empty() {
            let mut urls = self.advertise_peer_urls.clone();
            urls.sort();
            crate::cluster::InitialCluster::from([(self.name.clone(), urls)])
        } else {
            self.initial_cluster.clone()
        }
    }

    /// The effective backend quota.
    pub fn quota_bytes(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            limits::QUOTA_BACKEND_BYTES_DEFAULT
        } else {
            self.quota_backend_bytes
        }
    }
}

/// Parse one `http://host:port` URL into a socket address (`localhost` means 127.0.0.1); `https`
/// is refused (see [`parse_tls_url`] for the listeners that serve it).
pub fn parse_url(url: &str) -> Result<SocketAddr, ConfigError> {
    let url = url.trim();
    if url.starts_with("https://") || url.starts_with("unixs://") {
        return Err(ConfigError::TlsUnsupported(url.to_string()));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ConfigError::BadUrl(url.to_string()))?;
    let rest = rest.trim_end_matches('/');
    let rest = match rest.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => rest.to_string(),
    };
    rest.parse()
        .map_err(|_| ConfigError::BadUrl(url.to_string()))
}

/// Parse one `http://` or `https://` URL (client and peer URLs): its address, and whether it is
/// `https` (served and dialed with TLS).
pub fn parse_tls_url(url: &str) -> Result<(SocketAddr, bool), ConfigError> {
    match url.trim().strip_prefix("https://") {
        Some(rest) => parse_url(&format!("http://{rest}"))
            .map(|a| (a, true))
            .map_err(|_| ConfigError::BadUrl(url.to_string())),
        None => parse_url(url).map(|a| (a, false)),
    }
}

/// Parse etcd's comma-separated client or peer URL list: each address, and whether it is
/// `https://` (served with TLS).
pub fn parse_tls_urls(urls: &str) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
    urls.split(',')
        .filter(|u| !u.trim().is_empty())
        .map(parse_tls_url)
        .collect()
}

/// Parse etcd's comma-separated URL list.
pub fn parse_urls(urls: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    urls.split(',')
        .filter(|u| !u.trim().is_empty())
        .map(parse_url)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_etcd() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(
            parse_url("http://localhost:12379").unwrap(),
            "127.0.0.1:12379".parse().unwrap()
        );
        assert_eq!(
            parse_urls("http://127.0.0.1:1,http://[::1]:2")
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(
            parse_url("127.0.0.1:2379"),
            Err(ConfigError::BadUrl(_))
        ));
        assert!(matches!(
            parse_url("https://127.0.0.1:2379"),
            Err(ConfigError::TlsUnsupported(_))
        ));
        assert!(matches!(
            parse_url("http://example:2379"),
            Err(ConfigError::BadUrl(_))
        ));
        assert!(matches!(
            parse_tls_url("https://example:2379"),
            Err(ConfigError::BadUrl(u)) if u == "https://example:2379"
        ));
        assert_eq!(
            parse_tls_urls("https://127.0.0.1:2379,http://localhost:2380").unwrap(),
            vec![
                ("127.0.0.1:2379".parse().unwrap(), true),
                ("127.0.0.1:2380".parse().unwrap(), false)
            ]
        );
    }

    #[test]
    fn validation_names_the_flag() {
        let c = ServerConfig {
            max_txn_ops: 0,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                flag: "max-txn-ops",
                ..
            })
        ));
        assert!(ServerConfig::default().validate().is_ok());
        assert_eq!(
            ServerConfig::default().quota_bytes(),
            limits::QUOTA_BACKEND_BYTES_DEFAULT
        );
    }

    #[test]
    fn peer_tls_needs_a_ca() {
        let https = ServerConfig {
            advertise_peer_urls: vec!["https://127.0.0.1:2380".into()],
            ..Default::default()
        };
        assert_eq!(
            https.validate(),
            Err(ConfigError::NoPeerCa("https://127.0.0.1:2380".into()))
        );
        let cluster = ServerConfig {
            initial_cluster: crate::cluster::parse_initial_cluster(
                "default=http://localhost:2380,b=https://127.0.0.1:3380",
            )
            .unwrap(),
            ..Default::default()
        };
        assert_eq!(
            cluster.validate(),
            Err(ConfigError::NoPeerCa("https://127.0.0.1:3380".into()))
        );
        let auth_without_ca = ServerConfig {
            peer_tls: TlsFlags {
                client_cert_auth: true,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            auth_without_ca.validate(),
            Err(ConfigError::NoTrustedCa(TlsPort::Peer))
        );
        assert_eq!(
            ConfigError::NoTrustedCa(TlsPort::Peer).to_string(),
            "--peer-client-cert-auth needs --peer-trusted-ca-file"
        );
        let with_ca = ServerConfig {
            peer_tls: TlsFlags {
                trusted_ca_file: Some("ca.pem".into()),
                client_cert_auth: true,
                ..Default::default()
            },
            ..https
        };
        assert!(with_ca.validate().is_ok());
    }
}
