//! Test harness: starts the real `metastore` binary on a free loopback port and hands out clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The storage engines every behaviour test runs on.
pub const ENGINES: [&str; 2] = ["rocksdb", "memory"];

/// How long a server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metastore"));
    cmd.args([
        "--name",
        "test",
        "--listen-client-urls",
        "http://127.0.0.1:0",
        "--engine",
        engine,
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(extra)
    .env("RUST_LOG", "warn")
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
    let addr = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("metastore did not report its listening address in time");
    (child, format!("http://{addr}"))
}

impl Server {
    /// Start a fresh server with its own temporary data dir.
    pub fn start(engine: &str) -> Server {
        Self::start_with(engine, &[])
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
