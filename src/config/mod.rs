//! Server configuration: etcd's flag names, defaults and checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits;

pub mod auto_compaction;
pub mod initial_cluster;

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
/// `--client-cert-auth`, or their `--peer-` twins. Paths only; `net::tls` reads the files.
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
    pub initial_cluster: initial_cluster::InitialCluster,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// Storage engine (`--engine`).
    pub engine: EngineKind,
    /// Largest client request in bytes (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations per transaction branch (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Most watchers clients may hold on this member (`--max-watchers`).
    pub max_watchers: usize,
    /// Backend size above which writes are refused (`--quota-backend-bytes`; 0 = default 2 GiB).
    pub quota_backend_bytes: u64,
    /// How long a proposal or a linearizable read may wait (etcd derives it; no flag).
    pub request_timeout: Duration,
    /// Period of progress notifications to idle watchers that asked for them
    /// (`--experimental-watch-progress-notify-interval`).
    pub watch_progress_interval: Duration,
    /// `--grpc-keepalive-min-time`: clients pinging more often lose their connection.
    pub grpc_keepalive_min_time: Duration,
    /// `--grpc-keepalive-interval`: a silent client connection is pinged after this long.
    pub grpc_keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: an unanswered ping closes the connection after this long.
    pub grpc_keepalive_timeout: Duration,
    /// Period of lease remaining-TTL checkpoints (`--experimental-lease-checkpoint-interval`).
    pub lease_checkpoint_interval: Duration,
    /// Applied entries between raft snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Records (and key index entries) one step of a compaction's physical half handles
    /// (`--experimental-compaction-batch-limit`).
    pub compaction_batch_limit: usize,
    /// Pause after each batch of records a compaction deletes
    /// (`--experimental-compaction-sleep-interval`).
    pub compaction_sleep_interval: Duration,
    /// Refuse membership changes that would leave fewer started voters than a quorum
    /// (`--strict-reconfig-check`, etcd's default: on).
    pub strict_reconfig_check: bool,
    /// The leader's own compactions (`--auto-compaction-mode`, `--auto-compaction-retention`).
    pub auto_compaction: Option<auto_compaction::AutoCompaction>,
    /// How members issue and check auth tokens (`--auth-token`).
    pub auth_token: AuthTokenSpec,
    /// How long a simple auth token lives after its last use (`--auth-token-ttl`, seconds in etcd).
    pub auth_token_ttl: Duration,
    /// bcrypt cost of stored password hashes (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// Peer TLS (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
    /// `--peer-client-cert-auth`): serves `https://` listen peer URLs and dials `https://` peers.
    pub peer_tls: TlsFlags,
    /// `--peer-cert-allowed-cn`: when set, only peers whose verified client certificate has this
    /// common name are served (etcd's check; a peer without a certificate is refused).
    pub peer_cert_allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname`: when set, only peers whose verified client certificate is
    /// valid for this host name or address (its subject alternative names, `*.` wildcards
    /// included) are served.
    pub peer_cert_allowed_hostname: Option<String>,
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
    #[error("{0}")]
    AutoCompaction(String),
    #[error("--listen-client-urls must name at least one URL")]
    NoListenUrl,
    #[error("--initial-advertise-peer-urls must name at least one URL")]
    NoPeerUrl,
    #[error("--auth-token {text:?}: {reason}")]
    AuthToken { text: String, reason: String },
    #[error("--engine memory keeps no raft votes or log across a restart, which a member of a {0}-member cluster needs (a restarted member could vote twice or forget acknowledged writes); use --engine rocksdb")]
    MemoryEngineInCluster(usize),
    #[error("--peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive (cn={cn:?}, hostname={hostname:?})")]
    AllowedCnAndHostname { cn: String, hostname: String },
    #[error(transparent)]
    Cluster(#[from] initial_cluster::ClusterConfigError),
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
            initial_cluster: initial_cluster::InitialCluster::new(),
            initial_cluster_state: ClusterState::New,
            engine: EngineKind::RocksDb,
            max_request_bytes: limits::MAX_REQUEST_BYTES_DEFAULT,
            max_txn_ops: limits::MAX_TXN_OPS_DEFAULT,
            max_watchers: limits::MAX_WATCHERS_DEFAULT,
            quota_backend_bytes: 0,
            request_timeout: limits::REQUEST_TIMEOUT,
            watch_progress_interval: limits::WATCH_PROGRESS_INTERVAL_DEFAULT,
            grpc_keepalive_min_time: limits::GRPC_KEEPALIVE_MIN_TIME_DEFAULT,
            grpc_keepalive_interval: limits::GRPC_KEEPALIVE_INTERVAL_DEFAULT,
            grpc_keepalive_timeout: limits::GRPC_KEEPALIVE_TIMEOUT_DEFAULT,
            lease_checkpoint_interval: limits::LEASE_CHECKPOINT_INTERVAL_DEFAULT,
            snapshot_count: limits::SNAPSHOT_COUNT_DEFAULT,
            compaction_batch_limit: limits::COMPACTION_BATCH_LIMIT_DEFAULT,
            compaction_sleep_interval: limits::COMPACTION_SLEEP_INTERVAL_DEFAULT,
            strict_reconfig_check: true,
            auto_compaction: None,
            auth_token: AuthTokenSpec::Simple,
            auth_token_ttl: Duration::from_secs(limits::AUTH_TOKEN_TTL_SECS_DEFAULT),
            bcrypt_cost: limits::BCRYPT_COST_DEFAULT,
            peer_tls: TlsFlags::default(),
            peer_cert_allowed_cn: None,
            peer_cert_allowed_hostname: None,
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
        initial_cluster::check_self(&cluster, &self.name, &self.advertise_peer_urls)?;
        if self.engine == EngineKind::Memory && cluster.len() > 1 {
            return Err(ConfigError::MemoryEngineInCluster(cluster.len()));
        }
        if self.peer_tls.client_cert_auth && self.peer_tls.trusted_ca_file.is_none() {
            return Err(ConfigError::NoTrustedCa(TlsPort::Peer));
        }
        // etcd refuses both at once too: which one would decide is not obvious.
        if let (Some(cn), Some(hostname)) =
            (&self.peer_cert_allowed_cn, &self.peer_cert_allowed_hostname)
        {
            return Err(ConfigError::AllowedCnAndHostname {
                cn: cn.clone(),
                hostname: hostname.clone(),
            });
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
        range("max-watchers", self.max_watchers as u64, 1, u64::MAX)?;
        range(
            "quota-backend-bytes",
            self.quota_backend_bytes,
            0,
            limits::QUOTA_BACKEND_BYTES_MAX,
        )?;
        range("snapshot-count", self.snapshot_count, 1, u64::MAX)?;
        range(
            "experimental-compaction-batch-limit",
            self.compaction_batch_limit as u64,
            1,
            i32::MAX as u64,
        )?;
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
    pub fn initial_cluster_or_self(&self) -> initial_cluster::InitialCluster {
        if self.initial_cluster.is_empty() {
            let mut urls = self.advertise_peer_urls.clone();
            urls.sort();
            initial_cluster::InitialCluster::from([(self.name.clone(), urls)])
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

/// `--auth-token`: which kind of auth token the members issue and accept (etcd's option string
/// `TYPE[,KEY=VALUE...]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthTokenSpec {
    /// Random tokens each member holds in memory (`simple`).
    #[default]
    Simple,
    /// Signed, self-contained JSON Web Tokens (`jwt,sign-method=...,pub-key=...,priv-key=...`).
    Jwt(JwtSpec),
}

/// The options of `--auth-token jwt,...`, as etcd 3.4 names them. The key files are read when the
/// member starts (`auth::jwt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSpec {
    /// `sign-method=` (required).
    pub sign_method: JwtSignMethod,
    /// `pub-key=`: a PEM public key that verifies tokens (RSA and ECDSA methods).
    pub pub_key: Option<PathBuf>,
    /// `priv-key=`: a PEM private key that signs tokens; for the HMAC methods, the shared secret.
    pub priv_key: Option<PathBuf>,
    /// `ttl=`: how long a token is valid from its issue (Go duration; default 5m).
    pub ttl: Duration,
}

/// A JWT signature method (`sign-method=`): etcd 3.4's list but ES512, whose curve (P-521) our
/// crypto backend lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtSignMethod {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

impl JwtSignMethod {
    const ALL: [JwtSignMethod; 11] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
    ];

    /// The method's JWT `alg` name, as written in `sign-method=`.
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    /// Whether the method signs with a shared secret (the `priv-key` file's bytes) rather than a
    /// key pair.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

/// Parse `--auth-token` as etcd does: a type, then `key=value` options separated by commas; an
/// option given twice or not of the form `key=value` is refused, an unknown one only warned about.
pub fn parse_auth_token(text: &str) -> Result<AuthTokenSpec, ConfigError> {
    let refuse = |reason: String| ConfigError::AuthToken {
        text: text.to_string(),
        reason,
    };
    let mut parts = text.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut options: Vec<(&str, &str)> = Vec::new();
    for part in parts {
        let Some((key, value)) = part.split_once('=').filter(|(_, v)| !v.contains('=')) else {
            return Err(refuse(format!(
                "invalid auth options: {part:?} is not key=value"
            )));
        };
        if options.iter().any(|(k, _)| *k == key) {
            return Err(refuse(format!(
                "invalid auth options: {key:?} is given twice"
            )));
        }
        options.push((key, value));
    }
    let option = |name: &str| {
        options
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    };
    match kind {
        "simple" => {
            if !options.is_empty() {
                tracing::warn!(%text, "simple auth tokens take no options; ignored");
            }
            Ok(AuthTokenSpec::Simple)
        }
        "jwt" => {
            const KNOWN: [&str; 4] = ["sign-method", "pub-key", "priv-key", "ttl"];
            let unknown: Vec<&str> = options
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| !KNOWN.contains(k))
                .collect();
            if !unknown.is_empty() {
                tracing::warn!(?unknown, "unknown JWT options; ignored");
            }
            let method = option("sign-method").unwrap_or_default();
            let sign_method = JwtSignMethod::ALL
                .into_iter()
                .find(|m| m.name() == method)
                .ok_or_else(|| {
                    let names: Vec<&str> = JwtSignMethod::ALL.iter().map(|m| m.name()).collect();
                    refuse(format!(
                        "invalid auth signature method {method:?} (sign-method= one of {})",
                        names.join(", ")
                    ))
                })?;
            let ttl = match option("ttl") {
                None => limits::AUTH_JWT_TTL_DEFAULT,
                Some(ttl) => parse_duration(ttl)
                    .map_err(|e| refuse(format!("invalid auth options: ttl: {e}")))?,
            };
            if !(limits::AUTH_JWT_TTL_MIN..=limits::AUTH_JWT_TTL_MAX).contains(&ttl) {
                return Err(refuse(format!(
                    "invalid auth options: ttl must be between {}s and {}s",
                    limits::AUTH_JWT_TTL_MIN.as_secs(),
                    limits::AUTH_JWT_TTL_MAX.as_secs()
                )));
            }
            let spec = JwtSpec {
                sign_method,
                pub_key: option("pub-key").map(PathBuf::from),
                priv_key: option("priv-key").map(PathBuf::from),
                ttl,
            };
            // etcd: an HMAC method needs the secret; a key pair method one of its halves (a public
            // key alone verifies tokens some other member signed).
            let missing = if sign_method.is_hmac() {
                spec.priv_key.is_none()
            } else {
                spec.priv_key.is_none() && spec.pub_key.is_none()
            };
            if missing {
                let want = if sign_method.is_hmac() {
                    "priv-key= (the shared secret)"
                } else {
                    "priv-key= and/or pub-key="
                };
                return Err(refuse(format!(
                    "missing key data: sign-method={} needs {want}",
                    sign_method.name()
                )));
            }
            Ok(AuthTokenSpec::Jwt(spec))
        }
        other => Err(refuse(format!(
            "invalid auth options: unknown token type {other:?} (simple or jwt)"
        ))),
    }
}

/// Parse a Go-style duration: a whole number followed by ms, s, m or h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("invalid duration {text:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
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
    fn auth_token_options_parse_like_etcd() {
        assert_eq!(parse_auth_token("simple").unwrap(), AuthTokenSpec::Simple);
        let spec = parse_auth_token("jwt,pub-key=/k.pub,priv-key=/k,sign-method=ES256").unwrap();
        assert_eq!(
            spec,
            AuthTokenSpec::Jwt(JwtSpec {
                sign_method: JwtSignMethod::ES256,
                pub_key: Some("/k.pub".into()),
                priv_key: Some("/k".into()),
                ttl: Duration::from_secs(300),
            })
        );
        let spec = parse_auth_token("jwt,priv-key=/s,sign-method=HS512,ttl=2s,extra=1").unwrap();
        assert!(
            matches!(spec, AuthTokenSpec::Jwt(JwtSpec { ttl, pub_key: None, .. })
            if ttl == Duration::from_secs(2))
        );
        let reason = |text: &str| match parse_auth_token(text) {
            Err(ConfigError::AuthToken { reason, .. }) => reason,
            other => panic!("{text}: {other:?}"),
        };
        assert!(reason("oauth").contains("unknown token type"));
        assert!(reason("jwt").contains("invalid auth signature method \"\""));
        assert!(
            reason("jwt,sign-method=ES512,pub-key=/k").contains("invalid auth signature method")
        );
        assert!(reason("jwt,sign-method=none,pub-key=/k").contains("invalid auth signature method"));
        assert!(reason("jwt,sign-method=ES256").contains("missing key data"));
        assert!(reason("jwt,sign-method=HS256,pub-key=/k").contains("missing key data"));
        assert!(reason("jwt,sign-method=ES256,pub-key").contains("not key=value"));
        assert!(reason("jwt,sign-method=ES256,ttl=1s,ttl=2s,pub-key=/k").contains("twice"));
        assert!(reason("jwt,sign-method=ES256,pub-key=/k,ttl=5x").contains("ttl"));
        assert!(reason("jwt,sign-method=ES256,pub-key=/k,ttl=500ms").contains("between"));
        assert!(reason("jwt,sign-method=ES256,pub-key=/k,ttl=25h").contains("between"));
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
    fn a_memory_engine_serves_a_single_member_only() {
        let alone = ServerConfig {
            engine: EngineKind::Memory,
            ..Default::default()
        };
        assert_eq!(alone.validate(), Ok(()));
        let cluster = ServerConfig {
            engine: EngineKind::Memory,
            initial_cluster: initial_cluster::parse_initial_cluster(
                "default=http://localhost:2380,b=http://127.0.0.1:3380",
            )
            .unwrap(),
            ..Default::default()
        };
        assert_eq!(
            cluster.validate(),
            Err(ConfigError::MemoryEngineInCluster(2))
        );
    }

    #[test]
    fn allowed_cn_and_hostname_exclude_each_other() {
        let both = ServerConfig {
            peer_cert_allowed_cn: Some("member".into()),
            peer_cert_allowed_hostname: Some("member.example".into()),
            ..Default::default()
        };
        assert_eq!(
            both.validate(),
            Err(ConfigError::AllowedCnAndHostname {
                cn: "member".into(),
                hostname: "member.example".into()
            })
        );
        let one = ServerConfig {
            peer_cert_allowed_hostname: Some("member.example".into()),
            ..Default::default()
        };
        assert_eq!(one.validate(), Ok(()));
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
            initial_cluster: initial_cluster::parse_initial_cluster(
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
