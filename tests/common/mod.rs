//! Test harness: starts the real `metastore` binary on a free loopback port and hands out clients.
#![allow(dead_code)]

pub mod abuse;
pub mod certs;
pub mod etcd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The storage engines every behaviour test runs on.
pub const ENGINES: [&str; 2] = ["rocksdb", "memory"];

/// How long a server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary the harness starts: this build's, or `METASTORE_TEST_BIN` (e.g. an older build, to
/// measure what a fix changed with the same tests).
pub fn metastore_bin() -> PathBuf {
    std::env::var_os("METASTORE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_metastore")))
}

/// A running server process; killed (SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    pub endpoint: String,
    pub data_dir: PathBuf,
    pub engine: String,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

fn spawn(engine: &str, data_dir: &Path, extra: &[String]) -> (Child, String) {
    spawn_in(Command::new(metastore_bin()), engine, data_dir, extra)
}

/// [`spawn`] through `cmd`: the server's binary, or a wrapper that runs it.
fn spawn_in(mut cmd: Command, engine: &str, data_dir: &Path, extra: &[String]) -> (Child, String) {
    cmd.args([
        "--name",
        "test",
        "--listen-client-urls",
        "http://127.0.0.1:0",
        // A member alone needs no reachable peer URL; port 0 keeps parallel tests apart.
        "--listen-peer-urls",
        "http://127.0.0.1:0",
        "--engine",
        engine,
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(extra);
    start_process(cmd)
}

/// Run a prepared `metastore` command and wait for its client listening line.
fn start_process(mut cmd: Command) -> (Child, String) {
    // METASTORE_TEST_LOG=info (any RUST_LOG filter) shows more of the servers' logs.
    let log = std::env::var("METASTORE_TEST_LOG").unwrap_or_else(|_| "warn".into());
    cmd.env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn metastore");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("metastore: serving client requests on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let addr = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(addr) => addr,
        Err(e) => {
            // Its own words are on the inherited stderr above; say how it ended.
            let _ = child.kill();
            let status = child.wait();
            panic!("metastore did not report its listening address ({e}); it ended: {status:?}");
        }
    };
    (child, format!("http://{addr}"))
}

/// Wait up to `within` for `child` to exit by itself: its status, or `None` once it has been
/// killed for outliving the wait.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL `child` if it runs and wait for it to die.
fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Server {
    /// Start a fresh server with its own temporary data dir.
    pub fn start(engine: &str) -> Server {
        Self::start_with(engine, &[])
    }

    /// Start a fresh server allowed only `open_files` file descriptors (through util-linux's
    /// `prlimit`, which runs the server in its own process).
    pub fn start_with_open_files(engine: &str, open_files: u64) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={open_files}:{open_files}"))
            .arg("--")
            .arg(metastore_bin());
        let (child, endpoint) = spawn_in(cmd, engine, &data_dir, &[]);
        Server {
            child: Some(child),
            endpoint,
            data_dir,
            engine: engine.into(),
            extra: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    /// Start a fresh server with extra flags.
    pub fn start_with(engine: &str, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, endpoint) = spawn(engine, &data_dir, &extra);
        Server {
            child: Some(child),
            endpoint,
            data_dir,
            engine: engine.into(),
            extra,
            _tmp: Some(tmp),
        }
    }

    /// SIGKILL the process (no shutdown path runs) and wait for it to die.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Start the process again on the same data dir (a new port).
    pub fn restart(&mut self) {
        self.kill9();
        let (child, endpoint) = spawn(&self.engine, &self.data_dir, &self.extra);
        self.child = Some(child);
        self.endpoint = endpoint;
    }

    /// A connected etcd-client.
    pub async fn client(&self) -> etcd_client::Client {
        self.client_with_timeout(Duration::from_secs(20)).await
    }

    /// A connected etcd-client whose requests give up after `timeout` (e.g. once the server is dead).
    pub async fn client_with_timeout(&self, timeout: Duration) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new().with_timeout(timeout);
        etcd_client::Client::connect([self.endpoint.as_str()], Some(opts))
            .await
            .expect("connect")
    }

    /// `host:port` for etcdctl.
    pub fn host_port(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Whether the process is still running (has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The gRPC status of an etcd-client error.
pub fn grpc(err: etcd_client::Error) -> (tonic::Code, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// A free loopback port: bound, then released, and never handed out twice in this process. The
/// kernel may give a just-released port to the next bind, so without the record two members of
/// one cluster could be told the same port (a member refuses such an `--initial-cluster`).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if HANDED_OUT.lock().expect("port record").insert(port) {
            return port;
        }
    }
}

/// One process of a [`TestCluster`].
pub struct ClusterMember {
    child: Option<Child>,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    initial_cluster: String,
    state: &'static str,
    engine: String,
    peer_scheme: &'static str,
    extra: Vec<String>,
}

impl ClusterMember {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    fn spawn(&mut self) {
        let (child, _) = start_process(self.command());
        self.child = Some(child);
    }

    /// The member's command line, as [`ClusterMember::restart`] runs it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(metastore_bin());
        let client = self.endpoint();
        let peer = self.peer_url();
        cmd.args(["--name", &self.name, "--engine", &self.engine])
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", self.state])
            .args(&self.extra)
            .arg("--data-dir")
            .arg(&self.data_dir);
        cmd
    }

    /// Give the member `flag` from its next start on.
    pub fn add_flag(&mut self, flag: &str) {
        self.extra.push(flag.to_string());
    }

    /// Build the member's data dir from `backup` (`metastore snapshot restore`), as a member of
    /// this cluster.
    pub fn restore(&self, backup: &Path) {
        let out = Command::new(metastore_bin())
            .args(["snapshot", "restore"])
            .arg(backup)
            .args(["--name", &self.name])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("metastore snapshot restore");
        assert!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL the process and wait for it to die.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Start the process again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The member's process id (it must be running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the member runs").id()
    }

    /// A connected etcd-client for this member only.
    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
        etcd_client::Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("connect")
    }
}

impl Drop for ClusterMember {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How a [`TestCluster`]'s members are started.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// `--engine` of every member.
    pub engine: String,
    /// The scheme of the peer URLs: `http`, or `https` (then the flags must give peer TLS).
    pub peer_scheme: &'static str,
    /// Flags for every member, those that join later too.
    pub extra: Vec<String>,
    /// Flags for the founding member `i` only (after `extra`); members beyond the list get none.
    pub member_extra: Vec<Vec<String>>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            engine: "rocksdb".into(),
            peer_scheme: "http",
            extra: Vec::new(),
            member_extra: Vec::new(),
        }
    }
}

/// Real member processes on loopback ports (RocksDB each unless the spec says otherwise),
/// founded together.
pub struct TestCluster {
    pub members: Vec<ClusterMember>,
    tmp: tempfile::TempDir,
    spec: ClusterSpec,
}

impl TestCluster {
    /// Start `n` members named m0, m1, ... as one new cluster.
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, &[])
    }

    /// Start `n` members with extra flags (given to members that join later too).
    pub fn start_with(n: usize, extra: &[&str]) -> TestCluster {
        let spec = ClusterSpec {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..ClusterSpec::default()
        };
        Self::start_from(n, spec, None)
    }

    /// Start `n` members as `spec` says.
    pub fn start_spec(n: usize, spec: ClusterSpec) -> TestCluster {
        Self::start_from(n, spec, None)
    }

    /// Start `n` members, each on a data dir restored from `backup` first (`metastore snapshot
    /// restore`).
    pub fn start_restored(n: usize, backup: &Path) -> TestCluster {
        Self::start_from(n, ClusterSpec::default(), Some(backup))
    }

    fn start_from(n: usize, spec: ClusterSpec, backup: Option<&Path>) -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={}://127.0.0.1:{peer}", spec.peer_scheme))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<ClusterMember> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| ClusterMember {
                child: None,
                name: format!("m{i}"),
                client_port: *client,
                peer_port: *peer,
                data_dir: tmp.path().join(format!("m{i}")),
                initial_cluster: initial_cluster.clone(),
                state: "new",
                engine: spec.engine.clone(),
                peer_scheme: spec.peer_scheme,
                extra: spec
                    .extra
                    .iter()
                    .chain(spec.member_extra.get(i).into_iter().flatten())
                    .cloned()
                    .collect(),
            })
            .collect();
        for m in &mut members {
            if let Some(backup) = backup {
                m.restore(backup);
            }
            m.spawn();
        }
        TestCluster { members, tmp, spec }
    }

    /// Start a process for a member that `member add` put into the cluster: `--initial-cluster`
    /// lists the running members plus this one, state `existing`.
    pub fn start_joining(&mut self, name: &str, peer_port: u16) -> usize {
        let mut initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        initial.push(format!(
            "{name}={}://127.0.0.1:{peer_port}",
            self.spec.peer_scheme
        ));
        let mut m = ClusterMember {
            child: None,
            name: name.to_string(),
            client_port: free_port(),
            peer_port,
            data_dir: self.tmp.path().join(name),
            initial_cluster: initial.join(","),
            state: "existing",
            engine: self.spec.engine.clone(),
            peer_scheme: self.spec.peer_scheme,
            extra: self.spec.extra.clone(),
        };
        m.spawn();
        self.members.push(m);
        self.members.len() - 1
    }

    /// Every running member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.endpoint())
            .collect()
    }

    /// `host:port,...` of the running members for etcdctl.
    pub fn etcdctl_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.host_port())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether no running member that answers Status names another leader than `leader` (a fresh cluster's first
    /// leader can still lose to a higher vote while the others have not heard of it).
    async fn all_follow(&self, leader: u64) -> bool {
        for m in self.members.iter().filter(|m| m.is_running()) {
            let mut c = m.client().await;
            if let Ok(status) = c.status().await {
                // A member cut off from the rest (it knows no leader) does not hold this up.
                if status.leader() != 0 && status.leader() != leader {
                    return false;
                }
            }
        }
        true
    }

    /// The index of the member that leads now, as the running members report it (bounded wait).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for (i, m) in self.members.iter().enumerate() {
                if !m.is_running() {
                    continue;
                }
                let mut c = m.client().await;
                match c.status().await {
                    Ok(status) => {
                        let leader = status.leader();
                        if leader != 0
                            && status.header().map(|h| h.member_id()) == Some(leader)
                            && self.all_follow(leader).await
                        {
                            return i;
                        }
                    }
                    // With auth enabled Status needs a user; `/metrics` answers anyone.
                    Err(_) => {
                        if is_leader_by_metrics(&m.host_port()).await {
                            return i;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no member reported itself leader within 30 s");
    }
}

/// Whether the member serving HTTP on `host_port` says `etcd_server_is_leader 1` in `/metrics`
/// (false if it cannot be asked).
async fn is_leader_by_metrics(host_port: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(host_port).await.ok()?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.ok()?;
        Some(answer.lines().any(|l| l == "etcd_server_is_leader 1"))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Run `etcdctl` (v3 API) against `endpoints` (`host:port,...`); returns success and stdout+stderr.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .output()
        .expect("etcdctl is installed (Debian package etcd-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
